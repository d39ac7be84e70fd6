//! Gaussian KDE with full covariance and Scott's bandwidth, as anomalib's `GaussianKDE`
//! (and `scipy.stats.gaussian_kde`) define it, evaluated in f64 by log-sum-exp.

use super::error::ModelError;
use super::linalg::{cholesky_lower, matmul, spd_inverse_from_cholesky};

/// `−ln(2⁻¹⁵⁰)`: above this half squared distance a float32 `exp(−x)` rounds to 0.
/// anomalib's density underflows to 0 (log-density −∞) once the *nearest* kernel does.
pub const F32_KERNEL_UNDERFLOW: f64 = 103.972_077_083_991_8;

/// Relative pivot floor for the Cholesky factorisations: below it the covariance is
/// treated as singular rather than producing a meaningless bandwidth.
const SINGULAR_REL_TOL: f64 = 1e-12;

#[derive(Debug, Clone, PartialEq)]
pub struct GaussianKde {
    /// d, the dimension.
    pub dim: usize,
    /// n, the number of stored points.
    pub n: usize,
    /// L, lower-triangular d×d row-major, `L Lᵀ = Σ⁻¹ / h²` (anomalib's `bw_transform`).
    pub bw_transform: Vec<f64>,
    /// Z = (Y − m) L, n×d row-major (anomalib's `dataset`).
    pub dataset: Vec<f64>,
    /// ln c = Σ ln L_jj − (d/2) ln 2π (anomalib stores c itself, which overflows f32).
    pub log_norm: f64,
    /// m, the mean of the fitted rows (baked into `dataset`, kept for reference).
    pub center: Vec<f64>,
    /// Scott's factor h = n^(−1/(d+4)).
    pub scott_factor: f64,
}

/// Result of evaluating one query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KdeEval {
    /// s = ln p(u), finite for every finite query (no underflow cliff).
    pub log_density: f64,
    /// ½ · min_j ‖u − Z_j‖²: distance to the nearest kernel centre, in bandwidth units.
    pub min_half_sq_dist: f64,
}

impl KdeEval {
    /// anomalib's float32 value: −∞ where its density underflows, `log_density` elsewhere.
    /// (Inside the denormal band just before the cliff anomalib's value is itself imprecise.)
    pub fn anomalib_f32_compat(&self) -> f64 {
        if self.min_half_sq_dist > F32_KERNEL_UNDERFLOW {
            f64::NEG_INFINITY
        } else {
            self.log_density
        }
    }
}

/// Scott's factor `n^(−1/(d+4))`, with n the number of rows actually used.
pub fn scott_factor(n: usize, d: usize) -> f64 {
    (n as f64).powf(-1.0 / (d as f64 + 4.0))
}

impl GaussianKde {
    /// Fit on `y` (n×d row-major).
    pub fn fit(y: &[f64], n: usize, d: usize) -> Result<GaussianKde, ModelError> {
        if n < 2 || d == 0 {
            return Err(ModelError::TooFewSamples {
                got: n,
                required: 2,
            });
        }
        let h = scott_factor(n, d);
        let mut center = vec![0.0; d];
        for row in y.chunks_exact(d) {
            for (c, v) in center.iter_mut().zip(row) {
                *c += v;
            }
        }
        for c in &mut center {
            *c /= n as f64;
        }
        let mut yc = y.to_vec();
        for row in yc.chunks_exact_mut(d) {
            for (v, c) in row.iter_mut().zip(&center) {
                *v -= c;
            }
        }
        // Σ = YcᵀYc / (n − 1)
        let mut cov = vec![0.0; d * d];
        for row in yc.chunks_exact(d) {
            for i in 0..d {
                let ri = row[i];
                for j in 0..=i {
                    cov[i * d + j] += ri * row[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..=i {
                let v = cov[i * d + j] / (n as f64 - 1.0);
                cov[i * d + j] = v;
                cov[j * d + i] = v;
            }
        }
        let chol_cov = cholesky_lower(&cov, d, SINGULAR_REL_TOL).ok_or_else(|| {
            ModelError::SingularCovariance("KDE covariance of the PCA scores".into())
        })?;
        let inv = spd_inverse_from_cholesky(&chol_cov, d);
        let h2 = h * h;
        let precision: Vec<f64> = inv.iter().map(|v| v / h2).collect();
        let l = cholesky_lower(&precision, d, SINGULAR_REL_TOL).ok_or_else(|| {
            ModelError::SingularCovariance("bandwidth precision matrix Σ⁻¹/h²".into())
        })?;
        let dataset = matmul(&yc, &l, n, d, d);
        let log_norm = (0..d).map(|j| l[j * d + j].ln()).sum::<f64>()
            - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln();
        if !log_norm.is_finite() || dataset.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::SingularCovariance(
                "non-finite bandwidth".into(),
            ));
        }
        Ok(GaussianKde {
            dim: d,
            n,
            bw_transform: l,
            dataset,
            log_norm,
            center,
            scott_factor: h,
        })
    }

    /// Rebuild from stored parts (the artifact); validates shapes and finiteness.
    pub fn from_parts(
        dim: usize,
        bw_transform: Vec<f64>,
        dataset: Vec<f64>,
        log_norm: f64,
        center: Vec<f64>,
    ) -> Result<GaussianKde, ModelError> {
        if dim == 0
            || bw_transform.len() != dim * dim
            || !dataset.len().is_multiple_of(dim)
            || center.len() != dim
        {
            return Err(ModelError::InvalidParameter(format!(
                "KDE parts have inconsistent shapes (d = {dim}, L {} values, Z {} values, m {} values)",
                bw_transform.len(),
                dataset.len(),
                center.len()
            )));
        }
        let n = dataset.len() / dim;
        if n < 2 {
            return Err(ModelError::TooFewSamples {
                got: n,
                required: 2,
            });
        }
        let finite = bw_transform
            .iter()
            .chain(&dataset)
            .chain(&center)
            .all(|v| v.is_finite());
        let lower = (0..dim).all(|i| ((i + 1)..dim).all(|j| bw_transform[i * dim + j] == 0.0));
        let pos_diag = (0..dim).all(|i| bw_transform[i * dim + i] > 0.0);
        if !finite || !lower || !pos_diag || !log_norm.is_finite() {
            return Err(ModelError::InvalidParameter(
                "KDE bandwidth factor must be finite, lower triangular with a positive diagonal"
                    .into(),
            ));
        }
        Ok(GaussianKde {
            dim,
            n,
            scott_factor: scott_factor(n, dim),
            bw_transform,
            dataset,
            log_norm,
            center,
        })
    }

    /// `u = y L` (the query is *not* centred: anomalib's quirk, reproduced).
    pub fn transform_into(&self, y: &[f64], u: &mut [f64]) {
        let d = self.dim;
        u.fill(0.0);
        for (i, &yi) in y.iter().enumerate() {
            // L is lower triangular: row i has entries in columns 0..=i.
            for (j, uj) in u.iter_mut().enumerate().take(i + 1) {
                *uj += yi * self.bw_transform[i * d + j];
            }
        }
    }

    /// Log-density of an already transformed query `u`, by log-sum-exp in f64.
    /// `dist` is scratch of length n (owned by the caller's workspace: no allocation).
    pub fn log_density_transformed(&self, u: &[f64], dist: &mut [f64]) -> KdeEval {
        let d = self.dim;
        debug_assert_eq!(dist.len(), self.n);
        let mut min = f64::INFINITY;
        if d == 16 {
            let u16: &[f64; 16] = u.try_into().unwrap_or(&[0.0; 16]);
            for (z, out) in self.dataset.chunks_exact(16).zip(dist.iter_mut()) {
                let z: &[f64; 16] = z.try_into().unwrap_or(&[0.0; 16]);
                let mut s = 0.0;
                for j in 0..16 {
                    let t = u16[j] - z[j];
                    s += t * t;
                }
                *out = s;
                min = min.min(s);
            }
        } else {
            for (z, out) in self.dataset.chunks_exact(d).zip(dist.iter_mut()) {
                let s: f64 = u.iter().zip(z).map(|(a, b)| (a - b) * (a - b)).sum();
                *out = s;
                min = min.min(s);
            }
        }
        // Terms more than e^-40 below the largest cannot move the sum at f64 precision
        // (n·e^-40 < 1e-12 relative for n ≤ 10⁵): skip their exp.
        let cutoff = min + 80.0;
        let mut acc = 0.0;
        for &s in dist.iter() {
            if s < cutoff {
                acc += (-0.5 * (s - min)).exp();
            }
        }
        let log_density = self.log_norm - (self.n as f64).ln() - 0.5 * min + acc.ln();
        KdeEval {
            log_density,
            min_half_sq_dist: 0.5 * min,
        }
    }
}
