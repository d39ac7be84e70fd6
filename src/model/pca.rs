//! PCA as anomalib's `PCA.fit_transform` does it (centre, top-k right singular vectors,
//! no whitening), computed in f64 from the D×D scatter matrix — never an N×N matrix.

use faer::{Accum, Mat, MatRef, Side};

use super::error::ModelError;

/// Rows of the scatter matrix accumulated per block (bounds the f64 copy of the input).
const BLOCK_ROWS: usize = 1024;

/// A fitted projection: `y = (x − mean) · components`.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    /// μ, length D.
    pub mean: Vec<f64>,
    /// V, D×k row-major (row i = input dimension i), orthonormal columns ordered by
    /// decreasing variance. Each column's largest-magnitude entry is made positive
    /// (anomalib keeps LAPACK's arbitrary sign; only span(V) matters for the scores).
    pub components: Vec<f64>,
    /// Eigenvalues of the scatter matrix `XcᵀXc` for the kept components (= σ², descending).
    pub explained: Vec<f64>,
    pub dim: usize,
    pub k: usize,
}

impl Pca {
    /// Fit on the rows `rows` of the row-major `data` (`n_total × dim`, f32).
    pub fn fit(data: &[f32], dim: usize, rows: &[usize], k: usize) -> Result<Pca, ModelError> {
        let n = rows.len();
        let mut mean = vec![0.0f64; dim];
        for &r in rows {
            for (m, &x) in mean.iter_mut().zip(&data[r * dim..(r + 1) * dim]) {
                *m += f64::from(x);
            }
        }
        for m in &mut mean {
            *m /= n as f64;
        }

        let par = faer::get_global_parallelism();
        let mut scatter = Mat::<f64>::zeros(dim, dim);
        let mut block = Mat::<f64>::zeros(BLOCK_ROWS.min(n), dim);
        for chunk in rows.chunks(BLOCK_ROWS) {
            let b = chunk.len();
            for (bi, &r) in chunk.iter().enumerate() {
                let src = &data[r * dim..(r + 1) * dim];
                for (j, (&x, m)) in src.iter().zip(&mean).enumerate() {
                    block[(bi, j)] = f64::from(x) - m;
                }
            }
            let bv = block.as_ref().subrows(0, b);
            faer::linalg::matmul::matmul(
                scatter.as_mut(),
                Accum::Add,
                bv.transpose(),
                bv,
                1.0,
                par,
            );
        }

        let evd = scatter.self_adjoint_eigen(Side::Lower).map_err(|e| {
            ModelError::SingularCovariance(format!("eigen-decomposition failed: {e:?}"))
        })?;
        let u = evd.U();
        let s = evd.S().column_vector();
        let top = s[dim - 1].max(0.0);
        let mut components = vec![0.0f64; dim * k];
        let mut explained = Vec::with_capacity(k);
        for c in 0..k {
            let src = dim - 1 - c; // eigenvalues come in nondecreasing order
            let lambda = s[src];
            // A component with (numerically) zero variance means the data span fewer than
            // k dimensions: the KDE covariance would be singular.
            if lambda.is_nan() || lambda <= top * 1e-12 * dim as f64 || top <= 0.0 {
                return Err(ModelError::SingularCovariance(format!(
                    "training features span only {c} of the {k} requested PCA dimensions (eigenvalue {lambda:.3e}, largest {top:.3e})"
                )));
            }
            explained.push(lambda);
            let col = u.col(src);
            let mut pivot = 0.0f64;
            for i in 0..dim {
                if col[i].abs() > pivot.abs() {
                    pivot = col[i];
                }
            }
            let sign = if pivot < 0.0 { -1.0 } else { 1.0 };
            for i in 0..dim {
                components[i * k + c] = sign * col[i];
            }
        }
        Ok(Pca {
            mean,
            components,
            explained,
            dim,
            k,
        })
    }

    /// Project one row into `out` (length k). No allocation.
    pub fn project_into(&self, x: &[f32], out: &mut [f64]) {
        debug_assert_eq!(x.len(), self.dim);
        debug_assert_eq!(out.len(), self.k);
        out.fill(0.0);
        for (i, (&xi, m)) in x.iter().zip(&self.mean).enumerate() {
            let c = f64::from(xi) - m;
            let v = &self.components[i * self.k..(i + 1) * self.k];
            for (o, &vij) in out.iter_mut().zip(v) {
                *o += c * vij;
            }
        }
    }

    /// Project many rows (row-major f32, `rows` selects which) into an `rows.len() × k` buffer.
    pub fn project_rows(&self, data: &[f32], rows: &[usize]) -> Vec<f64> {
        let k = self.k;
        let dim = self.dim;
        let mut out = vec![0.0f64; rows.len() * k];
        // Blocked GEMM through faer for the training set (N can be 40 000).
        let v = MatRef::from_row_major_slice(&self.components, dim, k);
        let par = faer::get_global_parallelism();
        let mut block = Mat::<f64>::zeros(BLOCK_ROWS.min(rows.len().max(1)), dim);
        let mut res = Mat::<f64>::zeros(BLOCK_ROWS.min(rows.len().max(1)), k);
        for (ci, chunk) in rows.chunks(BLOCK_ROWS).enumerate() {
            let b = chunk.len();
            for (bi, &r) in chunk.iter().enumerate() {
                for (j, (&x, m)) in data[r * dim..(r + 1) * dim]
                    .iter()
                    .zip(&self.mean)
                    .enumerate()
                {
                    block[(bi, j)] = f64::from(x) - m;
                }
            }
            let mut dst = res.as_mut().subrows_mut(0, b);
            faer::linalg::matmul::matmul(
                dst.as_mut(),
                Accum::Replace,
                block.as_ref().subrows(0, b),
                v,
                1.0,
                par,
            );
            for bi in 0..b {
                let o = &mut out[(ci * BLOCK_ROWS + bi) * k..(ci * BLOCK_ROWS + bi + 1) * k];
                for (j, oj) in o.iter_mut().enumerate() {
                    *oj = dst[(bi, j)];
                }
            }
        }
        out
    }

    /// The orthogonal projector `V Vᵀ` (D×D row-major), basis-independent: what to compare
    /// between implementations.
    pub fn projector(&self) -> Vec<f64> {
        let (d, k) = (self.dim, self.k);
        let mut p = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                let mut s = 0.0;
                for c in 0..k {
                    s += self.components[i * k + c] * self.components[j * k + c];
                }
                p[i * d + j] = s;
            }
        }
        p
    }
}
