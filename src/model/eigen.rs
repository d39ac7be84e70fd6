//! The largest eigenpairs of a dense symmetric matrix (PCA's D×D scatter matrix, D up to a
//! few thousand), in `f64`, without a linear-algebra dependency:
//!
//! 1. Householder reduction to tridiagonal form `A = Q T Qᵀ` (LAPACK `dsytd2`, unblocked);
//! 2. every eigenvalue of `T` by the implicit QL method with Wilkinson shifts (`dsterf`'s
//!    role), sorted;
//! 3. eigenvectors of `T` for the `k` largest only, by inverse iteration with partial
//!    pivoting, re-orthogonalised within clusters of close eigenvalues (`dstein`);
//! 4. back-transformation `v = Q z` with the stored reflectors (`dormtr`).
//!
//! Steps 2–4 are O(n²) or O(n²k); step 1's 4n³/3 multiply-adds dominate (row-major, contiguous
//! inner loops the compiler vectorises). Pure math: no I/O, no allocation beyond O(n²).

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum EigenError {
    #[error("matrix is {len} values, not {n}×{n}")]
    Shape { len: usize, n: usize },
    #[error("{k} eigenpairs requested from a {n}×{n} matrix")]
    TooMany { k: usize, n: usize },
    #[error("matrix has a non-finite entry")]
    NotFinite,
    #[error("the QL iteration did not converge for eigenvalue {index}")]
    NoConvergence { index: usize },
}

/// The `k` largest eigenvalues of the symmetric `n×n` row-major matrix `a` (descending) and
/// their orthonormal eigenvectors, as the columns of an `n×k` row-major matrix. Only the lower
/// triangle of `a` is read.
pub fn symmetric_top_k(a: &[f64], n: usize, k: usize) -> Result<(Vec<f64>, Vec<f64>), EigenError> {
    if a.len() != n * n {
        return Err(EigenError::Shape { len: a.len(), n });
    }
    if k > n {
        return Err(EigenError::TooMany { k, n });
    }
    if k == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    // Symmetric copy from the lower triangle: the reduction works on full rows.
    let mut m = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let x = a[i * n + j];
            if !x.is_finite() {
                return Err(EigenError::NotFinite);
            }
            m[i * n + j] = x;
            m[j * n + i] = x;
        }
    }
    let tri = tridiagonalize(&mut m, n);
    let mut values = tri.d.clone();
    tridiagonal_eigenvalues(&mut values, &tri.e)?;
    values.sort_by(|x, y| y.total_cmp(x));
    values.truncate(k);
    let z = tridiagonal_eigenvectors(&tri.d, &tri.e, &values);
    let mut vectors = vec![0.0f64; n * k];
    let mut col = vec![0.0f64; n];
    for c in 0..k {
        col.copy_from_slice(&z[c * n..(c + 1) * n]);
        tri.apply_q(&m, &mut col);
        for (i, &x) in col.iter().enumerate() {
            vectors[i * k + c] = x;
        }
    }
    Ok((values, vectors))
}

/// `A = Q T Qᵀ`: the diagonal `d` and off-diagonal `e` of `T`; the reflectors' vectors stay in
/// the strict lower part of the reduced matrix (row `j`'s reflector in column `j`, below the
/// sub-diagonal, leading 1 implicit), their scales in `tau`.
struct Tridiagonal {
    d: Vec<f64>,
    e: Vec<f64>,
    tau: Vec<f64>,
    n: usize,
}

impl Tridiagonal {
    /// `x ← Q x` with `Q = H₀ H₁ ⋯ H_{n−2}`.
    fn apply_q(&self, m: &[f64], x: &mut [f64]) {
        let n = self.n;
        for j in (0..n.saturating_sub(1)).rev() {
            let tau = self.tau[j];
            if tau == 0.0 {
                continue;
            }
            // v = (1, m[j+2][j], …, m[n−1][j]) acts on x[j+1..].
            let mut s = x[j + 1];
            for i in j + 2..n {
                s += m[i * n + j] * x[i];
            }
            let s = tau * s;
            x[j + 1] -= s;
            for i in j + 2..n {
                x[i] -= s * m[i * n + j];
            }
        }
    }
}

/// Householder reduction of the symmetric (full-storage) `m` to tridiagonal form.
fn tridiagonalize(m: &mut [f64], n: usize) -> Tridiagonal {
    let mut d = vec![0.0f64; n];
    let mut e = vec![0.0f64; n.saturating_sub(1)];
    let mut tau = vec![0.0f64; n.saturating_sub(1)];
    let mut v = vec![0.0f64; n];
    let mut w = vec![0.0f64; n];
    for j in 0..n.saturating_sub(1) {
        d[j] = m[j * n + j];
        // The reflector that zeroes row j beyond its super-diagonal (= column j below its
        // sub-diagonal): x = m[j][j+1..].
        let len = n - j - 1;
        let alpha = m[j * n + j + 1];
        let tail: f64 = m[j * n + j + 2..(j + 1) * n].iter().map(|x| x * x).sum();
        if tail == 0.0 {
            e[j] = alpha;
            tau[j] = 0.0;
            for i in j + 2..n {
                m[i * n + j] = 0.0;
            }
            continue;
        }
        let beta = -alpha.signum() * (alpha * alpha + tail).sqrt();
        let t = (beta - alpha) / beta;
        let scale = 1.0 / (alpha - beta);
        e[j] = beta;
        tau[j] = t;
        let v = &mut v[..len];
        v[0] = 1.0;
        for (vi, i) in v[1..].iter_mut().zip(j + 2..n) {
            *vi = m[j * n + i] * scale;
        }
        // Keep the reflector in column j below the sub-diagonal (row j is not read again).
        for (i, &vi) in (j + 2..n).zip(&v[1..]) {
            m[i * n + j] = vi;
        }
        // Trailing block B = m[j+1.., j+1..] ← H B H with H = I − t v vᵀ:
        // p = t B v, w = p − (t/2)(pᵀv) v, B ← B − v wᵀ − w vᵀ.
        let w = &mut w[..len];
        let off = j + 1;
        for (r, wr) in w.iter_mut().enumerate() {
            let row = &m[(off + r) * n + off..(off + r + 1) * n];
            *wr = t * dot(row, v);
        }
        let half = 0.5 * t * dot(w, v);
        for (wr, &vr) in w.iter_mut().zip(v.iter()) {
            *wr -= half * vr;
        }
        for r in 0..len {
            let (vr, wr) = (v[r], w[r]);
            let row = &mut m[(off + r) * n + off..(off + r + 1) * n];
            for ((x, &vc), &wc) in row.iter_mut().zip(v.iter()).zip(w.iter()) {
                *x -= vr * wc + wr * vc;
            }
        }
    }
    if n > 0 {
        d[n - 1] = m[(n - 1) * n + n - 1];
    }
    Tridiagonal { d, e, tau, n }
}

/// Dot product of two equally long slices (shared with [`super::pca`]'s scatter matrix).
pub(super) fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four partial sums: independent FMAs the compiler can keep in vector registers.
    let mut s = [0.0f64; 4];
    let (a4, ar) = a.split_at(a.len() / 4 * 4);
    let (b4, br) = b.split_at(a4.len());
    for (x, y) in a4.chunks_exact(4).zip(b4.chunks_exact(4)) {
        for l in 0..4 {
            s[l] += x[l] * y[l];
        }
    }
    let mut t = (s[0] + s[1]) + (s[2] + s[3]);
    for (x, y) in ar.iter().zip(br) {
        t += x * y;
    }
    t
}

/// Every eigenvalue of the symmetric tridiagonal matrix (`d` diagonal, `e` off-diagonal),
/// in place in `d` (unordered): implicit QL with Wilkinson shifts.
fn tridiagonal_eigenvalues(d: &mut [f64], e: &[f64]) -> Result<(), EigenError> {
    let n = d.len();
    if n <= 1 {
        return Ok(());
    }
    // e[i] couples i and i+1; one spare zero at the end.
    let mut e: Vec<f64> = e.iter().copied().chain(std::iter::once(0.0)).collect();
    // An off-diagonal entry is negligible relative to its neighbours (the classic test) or to
    // ‖T‖ (moves every eigenvalue by at most ε‖T‖, the reduction's own error): without the
    // second, a rank-deficient scatter matrix's block of ~1e-14 "zero" eigenvalues makes QL
    // crawl (measured: no convergence in 60 iterations for 32 rows of 512-d features).
    let floor = f64::EPSILON
        * (0..n)
            .map(|i| d[i].abs() + e[i].abs() + if i > 0 { e[i - 1].abs() } else { 0.0 })
            .fold(0.0f64, f64::max);
    for l in 0..n {
        let mut iter = 0;
        loop {
            let mut m = l;
            while m < n - 1 {
                let dd = d[m].abs() + d[m + 1].abs();
                if e[m].abs() <= f64::EPSILON * dd || e[m].abs() <= floor {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            iter += 1;
            if iter > 60 {
                return Err(EigenError::NoConvergence { index: l });
            }
            let mut g = (d[l + 1] - d[l]) / (2.0 * e[l]);
            let mut r = g.hypot(1.0);
            g = d[m] - d[l] + e[l] / (g + r.copysign(g));
            let (mut s, mut c, mut p) = (1.0f64, 1.0f64, 0.0f64);
            let mut underflow = false;
            for i in (l..m).rev() {
                let f = s * e[i];
                let b = c * e[i];
                r = f.hypot(g);
                e[i + 1] = r;
                if r == 0.0 {
                    d[i + 1] -= p;
                    e[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = d[i + 1] - p;
                r = (d[i] - g) * s + 2.0 * c * b;
                p = s * r;
                d[i + 1] = g + p;
                g = c * r - b;
            }
            if underflow {
                continue;
            }
            d[l] -= p;
            e[l] = g;
            e[m] = 0.0;
        }
    }
    Ok(())
}

/// Eigenvectors of the tridiagonal matrix for the eigenvalues `values` (descending), by
/// inverse iteration; each `n` long, one after the other.
fn tridiagonal_eigenvectors(d: &[f64], e: &[f64], values: &[f64]) -> Vec<f64> {
    let n = d.len();
    let norm = (0..n)
        .map(|i| {
            d[i].abs()
                + if i > 0 { e[i - 1].abs() } else { 0.0 }
                + if i + 1 < n { e[i].abs() } else { 0.0 }
        })
        .fold(0.0f64, f64::max);
    let mut out = vec![0.0f64; n * values.len()];
    if n == 1 || norm == 0.0 {
        // Every vector is an eigenvector: the unit vectors.
        for (c, col) in out.chunks_exact_mut(n).enumerate() {
            col[c] = 1.0;
        }
        return out;
    }
    // Work on T/‖T‖ (same eigenvectors): the growth factors below then stay far from
    // overflow whatever the matrix's scale.
    let d: Vec<f64> = d.iter().map(|x| x / norm).collect();
    let e: Vec<f64> = e.iter().map(|x| x / norm).collect();
    let (d, e) = (&d[..], &e[..]);
    // dstein's constants: eigenvalues closer than `ortol` form a cluster (their vectors are
    // re-orthogonalised against each other); equal ones are pulled `pert` apart.
    let ortol = 1e-3;
    let pert = 10.0 * f64::EPSILON;
    let mut lu = TriLu::new(n);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut cluster_start = 0;
    let mut prev_lambda = f64::INFINITY;
    for (c, &value) in values.iter().enumerate() {
        let mut lambda = value / norm;
        if c > 0 {
            if prev_lambda - lambda > ortol {
                cluster_start = c;
            } else if prev_lambda - lambda < pert {
                lambda = prev_lambda - pert;
            }
        }
        prev_lambda = lambda;
        lu.factor(d, e, lambda, pert);
        let (done, rest) = out.split_at_mut(c * n);
        let x = &mut rest[..n];
        for xi in x.iter_mut() {
            // xorshift64*: a fixed pseudo-random start, the same on every machine.
            rng ^= rng >> 12;
            rng ^= rng << 25;
            rng ^= rng >> 27;
            *xi =
                (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        }
        normalize(x);
        for _ in 0..5 {
            lu.solve(x);
            for prev in done[cluster_start * n..].chunks_exact(n) {
                let s = dot(prev, x);
                for (xi, &pi) in x.iter_mut().zip(prev) {
                    *xi -= s * pi;
                }
            }
            let grown = normalize(x);
            // The solve multiplies the wanted component by ~1/|λ − λ̂| ≈ 1/(ε‖T‖): once it
            // grows that much, the vector is accurate to working precision.
            if grown * pert >= 1e-3 {
                lu.solve(x);
                for prev in done[cluster_start * n..].chunks_exact(n) {
                    let s = dot(prev, x);
                    for (xi, &pi) in x.iter_mut().zip(prev) {
                        *xi -= s * pi;
                    }
                }
                normalize(x);
                break;
            }
        }
    }
    out
}

/// Scale `x` to unit length; returns its length before.
fn normalize(x: &mut [f64]) -> f64 {
    let len = dot(x, x).sqrt();
    if len > 0.0 && len.is_finite() {
        x.iter_mut().for_each(|v| *v /= len);
    }
    len
}

/// LU factorisation with partial pivoting of the tridiagonal `T − λI` (LAPACK `dgttrf`):
/// `U` has two super-diagonals.
struct TriLu {
    dd: Vec<f64>,
    du: Vec<f64>,
    du2: Vec<f64>,
    dl: Vec<f64>,
    swap: Vec<bool>,
}

impl TriLu {
    fn new(n: usize) -> TriLu {
        TriLu {
            dd: vec![0.0; n],
            du: vec![0.0; n.saturating_sub(1)],
            du2: vec![0.0; n.saturating_sub(2)],
            dl: vec![0.0; n.saturating_sub(1)],
            swap: vec![false; n.saturating_sub(1)],
        }
    }

    /// Factor `T − λI`; a zero pivot becomes `tiny` (inverse iteration wants the nearly
    /// singular system).
    fn factor(&mut self, d: &[f64], e: &[f64], lambda: f64, tiny: f64) {
        let n = d.len();
        for (x, &di) in self.dd.iter_mut().zip(d) {
            *x = di - lambda;
        }
        self.du.copy_from_slice(e);
        self.dl.copy_from_slice(e);
        self.du2.iter_mut().for_each(|x| *x = 0.0);
        for i in 0..n - 1 {
            if self.dd[i].abs() >= self.dl[i].abs() {
                if self.dd[i] == 0.0 {
                    self.dd[i] = tiny;
                }
                let f = self.dl[i] / self.dd[i];
                self.dl[i] = f;
                self.dd[i + 1] -= f * self.du[i];
                self.swap[i] = false;
            } else {
                let f = self.dd[i] / self.dl[i];
                self.dd[i] = self.dl[i];
                self.dl[i] = f;
                let t = self.du[i];
                self.du[i] = self.dd[i + 1];
                self.dd[i + 1] = t - f * self.dd[i + 1];
                if i + 2 < n {
                    self.du2[i] = self.du[i + 1];
                    self.du[i + 1] *= -f;
                }
                self.swap[i] = true;
            }
        }
        if self.dd[n - 1] == 0.0 {
            self.dd[n - 1] = tiny;
        }
    }

    /// `x ← (T − λI)⁻¹ x`.
    fn solve(&self, x: &mut [f64]) {
        let n = x.len();
        for i in 0..n - 1 {
            if self.swap[i] {
                x.swap(i, i + 1);
            }
            x[i + 1] -= self.dl[i] * x[i];
        }
        x[n - 1] /= self.dd[n - 1];
        x[n - 2] = (x[n - 2] - self.du[n - 2] * x[n - 1]) / self.dd[n - 2];
        for i in (0..n.saturating_sub(2)).rev() {
            x[i] = (x[i] - self.du[i] * x[i + 1] - self.du2[i] * x[i + 2]) / self.dd[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers in [−1, 1).
    fn noise(seed: u64, len: usize) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    /// A random orthogonal n×n matrix (Gram–Schmidt on noise), row-major.
    fn orthogonal(n: usize, seed: u64) -> Vec<f64> {
        let mut q = noise(seed, n * n);
        for i in 0..n {
            for p in 0..i {
                let s: f64 = (0..n).map(|c| q[i * n + c] * q[p * n + c]).sum();
                for c in 0..n {
                    q[i * n + c] -= s * q[p * n + c];
                }
            }
            let len: f64 = (0..n).map(|c| q[i * n + c].powi(2)).sum::<f64>().sqrt();
            for c in 0..n {
                q[i * n + c] /= len;
            }
        }
        q
    }

    /// `Qᵀ diag(λ) Q` (rows of Q are the eigenvectors).
    fn with_spectrum(lambdas: &[f64], seed: u64) -> (Vec<f64>, Vec<f64>) {
        let n = lambdas.len();
        let q = orthogonal(n, seed);
        let mut a = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = (0..n)
                    .map(|p| q[p * n + i] * lambdas[p] * q[p * n + j])
                    .sum();
            }
        }
        (a, q)
    }

    fn check(a: &[f64], n: usize, k: usize, values: &[f64], vectors: &[f64]) {
        let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300) * n as f64;
        assert_eq!(values.len(), k);
        assert!(values.windows(2).all(|w| w[0] >= w[1]), "{values:?}");
        for c in 0..k {
            // ‖A v − λ v‖ small relative to ‖A‖.
            let mut res = 0.0f64;
            for i in 0..n {
                let av: f64 = (0..n).map(|j| a[i * n + j] * vectors[j * k + c]).sum();
                res = res.max((av - values[c] * vectors[i * k + c]).abs());
            }
            assert!(
                res <= 1e-11 * scale,
                "residual {res:e} of pair {c} (scale {scale:e})"
            );
            for c2 in 0..=c {
                let s: f64 = (0..n)
                    .map(|i| vectors[i * k + c] * vectors[i * k + c2])
                    .sum();
                let want = if c == c2 { 1.0 } else { 0.0 };
                assert!((s - want).abs() <= 1e-11, "vᵀv [{c},{c2}] = {s}");
            }
        }
    }

    #[test]
    fn random_spectra_give_accurate_orthonormal_top_pairs() {
        for (n, k, seed) in [
            (1, 1, 1),
            (2, 2, 2),
            (3, 1, 3),
            (7, 7, 4),
            (40, 16, 5),
            (160, 16, 6),
            (300, 16, 7),
        ] {
            let lambdas: Vec<f64> = noise(seed + 100, n).iter().map(|x| 10.0 * x).collect();
            let (a, _) = with_spectrum(&lambdas, seed);
            let (values, vectors) = symmetric_top_k(&a, n, k).unwrap();
            let mut want = lambdas.clone();
            want.sort_by(|x, y| y.total_cmp(x));
            for (got, want) in values.iter().zip(&want) {
                assert!(
                    (got - want).abs() <= 1e-11 * 10.0 * n as f64,
                    "{got} vs {want} (n {n})"
                );
            }
            check(&a, n, k, &values, &vectors);
        }
    }

    #[test]
    fn repeated_and_clustered_eigenvalues_still_give_an_orthonormal_basis_of_their_space() {
        // Top five: a triple eigenvalue, a pair 1e-9 apart; then a decaying tail and zeros
        // (a rank-deficient scatter matrix, as with fewer images than feature dimensions).
        let n = 60;
        let mut lambdas = vec![9.0, 9.0, 9.0, 4.0, 4.0 + 1e-9];
        lambdas.extend((0..40).map(|i| 2.0 / (1.0 + i as f64)));
        lambdas.resize(n, 0.0);
        let (a, q) = with_spectrum(&lambdas, 42);
        let k = 5;
        let (values, vectors) = symmetric_top_k(&a, n, k).unwrap();
        check(&a, n, k, &values, &vectors);
        // The span of the first three equals the triple's eigenspace: its projector matches.
        for i in 0..n {
            for j in 0..n {
                let got: f64 = (0..3)
                    .map(|c| vectors[i * k + c] * vectors[j * k + c])
                    .sum();
                let want: f64 = (0..3).map(|p| q[p * n + i] * q[p * n + j]).sum();
                assert!(
                    (got - want).abs() <= 1e-10,
                    "projector [{i},{j}]: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn a_rank_deficient_scatter_matrix_converges_with_the_gram_matrix_spectrum() {
        // Fewer rows than dimensions (32 frames of 300-d features with an offset, centred):
        // 269 eigenvalues are zero up to rounding, and classic QL deflation alone stalls.
        let (rows, n, k) = (32, 300, 16);
        let mut x: Vec<f64> = noise(77, rows * n).iter().map(|v| v + 0.8).collect();
        for j in 0..n {
            let m = (0..rows).map(|r| x[r * n + j]).sum::<f64>() / rows as f64;
            (0..rows).for_each(|r| x[r * n + j] -= m);
        }
        let mut scatter = vec![0.0; n * n];
        let mut gram = vec![0.0; rows * rows];
        for i in 0..n {
            for j in 0..n {
                scatter[i * n + j] = (0..rows).map(|r| x[r * n + i] * x[r * n + j]).sum();
            }
        }
        for a in 0..rows {
            for b in 0..rows {
                gram[a * rows + b] = (0..n).map(|c| x[a * n + c] * x[b * n + c]).sum();
            }
        }
        let (values, vectors) = symmetric_top_k(&scatter, n, k).unwrap();
        check(&scatter, n, k, &values, &vectors);
        let (gram_values, _) = symmetric_top_k(&gram, rows, k).unwrap();
        for (a, b) in values.iter().zip(&gram_values) {
            assert!((a - b).abs() <= 1e-10 * values[0], "{a} vs {b}");
        }
    }

    #[test]
    fn diagonal_zero_and_tridiagonal_inputs_are_handled() {
        let n = 6;
        let mut diag = vec![0.0; n * n];
        for i in 0..n {
            diag[i * n + i] = [3.0, -1.0, 7.0, 0.5, 7.0, 2.0][i];
        }
        let (values, vectors) = symmetric_top_k(&diag, n, 3).unwrap();
        assert_eq!(values, vec![7.0, 7.0, 3.0]);
        check(&diag, n, 3, &values, &vectors);

        let zero = vec![0.0; n * n];
        let (values, vectors) = symmetric_top_k(&zero, n, 2).unwrap();
        assert_eq!(values, vec![0.0, 0.0]);
        check(&zero, n, 2, &values, &vectors);

        // The 1-D Laplacian: λ_j = 2 − 2 cos(jπ/(n+1)).
        let n = 50;
        let mut lap = vec![0.0; n * n];
        for i in 0..n {
            lap[i * n + i] = 2.0;
            if i + 1 < n {
                lap[i * n + i + 1] = -1.0;
                lap[(i + 1) * n + i] = -1.0;
            }
        }
        let (values, vectors) = symmetric_top_k(&lap, n, 4).unwrap();
        for (c, v) in values.iter().enumerate() {
            let j = (n - c) as f64;
            let want = 2.0 - 2.0 * (j * std::f64::consts::PI / (n as f64 + 1.0)).cos();
            assert!((v - want).abs() < 1e-12, "{v} vs {want}");
        }
        check(&lap, n, 4, &values, &vectors);
    }

    #[test]
    fn only_the_lower_triangle_is_read_and_bad_input_is_refused() {
        let (mut a, _) = with_spectrum(&[5.0, 1.0, -2.0, 0.25], 9);
        let full = symmetric_top_k(&a, 4, 2).unwrap();
        for i in 0..4 {
            for j in i + 1..4 {
                a[i * 4 + j] = f64::NAN;
            }
        }
        assert_eq!(symmetric_top_k(&a, 4, 2).unwrap(), full);
        assert_eq!(
            symmetric_top_k(&a, 5, 2),
            Err(EigenError::Shape { len: 16, n: 5 })
        );
        assert_eq!(
            symmetric_top_k(&a, 4, 5),
            Err(EigenError::TooMany { k: 5, n: 4 })
        );
        a[3 * 4] = f64::INFINITY;
        assert_eq!(symmetric_top_k(&a, 4, 2), Err(EigenError::NotFinite));
        assert_eq!(symmetric_top_k(&[], 0, 0).unwrap(), (vec![], vec![]));
    }
}
