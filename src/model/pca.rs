//! PCA as anomalib's `PCA.fit_transform` does it (centre, top-k right singular vectors,
//! no whitening), computed in f64 from the D×D scatter matrix — never an N×N matrix — and
//! its top-k eigenvectors ([`super::eigen`]).

use super::eigen::{dot, symmetric_top_k};
use super::error::ModelError;

/// Rows of the scatter matrix accumulated per block (bounds the transposed f64 copy of the
/// input: D × 64 values, ~0.6 MiB for D = 1280, cache-resident).
const BLOCK_ROWS: usize = 64;

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

        let scatter = scatter_lower(data, dim, rows, &mean);
        let (values, vectors) = symmetric_top_k(&scatter, dim, k).map_err(|e| {
            ModelError::SingularCovariance(format!("eigen-decomposition failed: {e}"))
        })?;
        let top = values.first().copied().unwrap_or(0.0).max(0.0);
        let mut components = vec![0.0f64; dim * k];
        let mut explained = Vec::with_capacity(k);
        for (c, &lambda) in values.iter().enumerate() {
            // A component with (numerically) zero variance means the data span fewer than
            // k dimensions: the KDE covariance would be singular.
            if lambda.is_nan() || lambda <= top * 1e-12 * dim as f64 || top <= 0.0 {
                return Err(ModelError::SingularCovariance(format!(
                    "training features span only {c} of the {k} requested PCA dimensions (eigenvalue {lambda:.3e}, largest {top:.3e})"
                )));
            }
            explained.push(lambda);
            let mut pivot = 0.0f64;
            for i in 0..dim {
                let x = vectors[i * k + c];
                if x.abs() > pivot.abs() {
                    pivot = x;
                }
            }
            let sign = if pivot < 0.0 { -1.0 } else { 1.0 };
            for i in 0..dim {
                components[i * k + c] = sign * vectors[i * k + c];
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
        let (k, dim) = (self.k, self.dim);
        let mut out = vec![0.0f64; rows.len() * k];
        for (o, &r) in out.chunks_exact_mut(k.max(1)).zip(rows) {
            self.project_into(&data[r * dim..(r + 1) * dim], o);
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

/// The lower triangle of the scatter matrix `Σ (x − μ)(x − μ)ᵀ` over `rows` (D×D row-major,
/// upper triangle left zero), in blocks of [`BLOCK_ROWS`] rows; each block's D²/2 dot products
/// are split across the available cores by equal areas of the triangle.
fn scatter_lower(data: &[f32], dim: usize, rows: &[usize], mean: &[f64]) -> Vec<f64> {
    let mut scatter = vec![0.0f64; dim * dim];
    // Block transposed: row i holds dimension i of the block's (centred) rows.
    let mut cols = vec![0.0f64; dim * BLOCK_ROWS];
    let threads = std::thread::available_parallelism()
        .map(|t| t.get())
        .unwrap_or(1)
        .clamp(1, 8)
        .min(dim.max(1));
    // Row i of the triangle costs i + 1 dot products: thread t takes rows up to dim·√(t/T).
    let mut bounds: Vec<usize> = (0..=threads)
        .map(|t| ((dim as f64) * (t as f64 / threads as f64).sqrt()).round() as usize)
        .collect();
    bounds[threads] = dim;
    for chunk in rows.chunks(BLOCK_ROWS) {
        cols.iter_mut().for_each(|x| *x = 0.0);
        for (b, &r) in chunk.iter().enumerate() {
            for (j, (&x, m)) in data[r * dim..(r + 1) * dim].iter().zip(mean).enumerate() {
                cols[j * BLOCK_ROWS + b] = f64::from(x) - m;
            }
        }
        let cols = &cols[..];
        let accumulate = |first: usize, out: &mut [f64]| {
            for (ri, row) in out.chunks_exact_mut(dim).enumerate() {
                let i = first + ri;
                let ci = &cols[i * BLOCK_ROWS..(i + 1) * BLOCK_ROWS];
                for (j, s) in row[..=i].iter_mut().enumerate() {
                    *s += dot(ci, &cols[j * BLOCK_ROWS..(j + 1) * BLOCK_ROWS]);
                }
            }
        };
        if threads == 1 || chunk.len() * dim < 1 << 14 {
            accumulate(0, &mut scatter);
            continue;
        }
        std::thread::scope(|scope| {
            let mut rest = &mut scatter[..];
            for t in 0..threads {
                let (mine, tail) = rest.split_at_mut((bounds[t + 1] - bounds[t]) * dim);
                rest = tail;
                let first = bounds[t];
                if t + 1 == threads {
                    accumulate(first, mine);
                } else {
                    scope.spawn(move || accumulate(first, mine));
                }
            }
        });
    }
    scatter
}
