//! Small dense linear algebra on row-major `f64` buffers (k×k with k ≈ 16).
//!
//! The large operations (D×D scatter matrix, its top eigenpairs) live in [`super::pca`] and
//! [`super::eigen`]; these helpers cover the KDE's tiny matrices.

/// Cholesky factorisation `A = L Lᵀ` of a symmetric positive-definite `n×n` matrix
/// (row-major). Returns the lower-triangular `L` (upper part zero), or `None` when a
/// pivot is not strictly positive relative to `rel_tol · max(diag(A))`.
pub fn cholesky_lower(a: &[f64], n: usize, rel_tol: f64) -> Option<Vec<f64>> {
    debug_assert_eq!(a.len(), n * n);
    let max_diag = (0..n).map(|i| a[i * n + i]).fold(0.0_f64, f64::max);
    if max_diag.is_nan() || max_diag <= 0.0 || !max_diag.is_finite() {
        return None;
    }
    let floor = rel_tol * max_diag;
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let mut d = a[j * n + j];
        for p in 0..j {
            d -= l[j * n + p] * l[j * n + p];
        }
        if d.is_nan() || d <= floor || !d.is_finite() {
            return None;
        }
        let ljj = d.sqrt();
        l[j * n + j] = ljj;
        for i in (j + 1)..n {
            let mut s = a[i * n + j];
            for p in 0..j {
                s -= l[i * n + p] * l[j * n + p];
            }
            l[i * n + j] = s / ljj;
        }
    }
    Some(l)
}

/// Inverse of a symmetric positive-definite matrix from its lower Cholesky factor `L`:
/// `A⁻¹ = L⁻ᵀ L⁻¹`, symmetrised.
pub fn spd_inverse_from_cholesky(l: &[f64], n: usize) -> Vec<f64> {
    // W = L⁻¹ (lower triangular), by forward substitution on the identity.
    let mut w = vec![0.0; n * n];
    for c in 0..n {
        for i in c..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for p in c..i {
                s -= l[i * n + p] * w[p * n + c];
            }
            w[i * n + c] = s / l[i * n + i];
        }
    }
    // A⁻¹ = Wᵀ W.
    let mut inv = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = 0.0;
            for p in i.max(j)..n {
                s += w[p * n + i] * w[p * n + j];
            }
            inv[i * n + j] = s;
            inv[j * n + i] = s;
        }
    }
    inv
}

/// `C = A B` for row-major `A` (r×m) and `B` (m×c).
pub fn matmul(a: &[f64], b: &[f64], r: usize, m: usize, c: usize) -> Vec<f64> {
    let mut out = vec![0.0; r * c];
    for i in 0..r {
        let row = &mut out[i * c..(i + 1) * c];
        for p in 0..m {
            let aip = a[i * m + p];
            if aip != 0.0 {
                for (o, bv) in row.iter_mut().zip(&b[p * c..(p + 1) * c]) {
                    *o += aip * bv;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_and_inverse_round_trip() {
        let a = [4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
        let l = cholesky_lower(&a, 3, 1e-14).expect("spd");
        let llt = matmul(&l, &transpose(&l, 3, 3), 3, 3, 3);
        for (x, y) in llt.iter().zip(&a) {
            assert!((x - y).abs() < 1e-12);
        }
        let inv = spd_inverse_from_cholesky(&l, 3);
        let eye = matmul(&a, &inv, 3, 3, 3);
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((eye[i * 3 + j] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn cholesky_rejects_singular_and_indefinite() {
        let singular = [1.0, 2.0, 2.0, 4.0];
        assert!(cholesky_lower(&singular, 2, 1e-12).is_none());
        let indefinite = [1.0, 3.0, 3.0, 1.0];
        assert!(cholesky_lower(&indefinite, 2, 1e-12).is_none());
        assert!(cholesky_lower(&[f64::NAN], 1, 1e-12).is_none());
    }

    fn transpose(a: &[f64], r: usize, c: usize) -> Vec<f64> {
        let mut t = vec![0.0; r * c];
        for i in 0..r {
            for j in 0..c {
                t[j * r + i] = a[i * c + j];
            }
        }
        t
    }
}
