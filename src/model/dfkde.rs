//! The DFKDE classifier: PCA → feature scaling → Gaussian KDE → sigmoid score.
//! anomalib's `KDEClassifier`, in f64, without its float32 underflow cliff.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::ModelError;
use super::kde::{GaussianKde, KdeEval};
use super::pca::Pca;

/// How PCA scores are scaled before the KDE (anomalib's `FeatureScalingMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scaling {
    /// Divide every row by ℓ_max, the largest training row norm after PCA.
    Scale,
    /// Divide every row by its own norm (discards magnitude).
    Norm,
}

impl Scaling {
    pub fn as_str(self) -> &'static str {
        match self {
            Scaling::Scale => "scale",
            Scaling::Norm => "norm",
        }
    }
}

impl std::str::FromStr for Scaling {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scale" => Ok(Scaling::Scale),
            "norm" => Ok(Scaling::Norm),
            other => Err(ModelError::InvalidParameter(format!(
                "unknown feature scaling '{other}' (expected 'scale' or 'norm')"
            ))),
        }
    }
}

/// Fit parameters (anomalib's defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    /// k, default 16.
    pub n_components: usize,
    pub scaling: Scaling,
    /// M, default 40 000; subsample only when N > M (strict, as anomalib).
    pub max_training_points: usize,
    /// Seed of the subsampling RNG (ChaCha8), stored in the artifact.
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            n_components: 16,
            scaling: Scaling::Scale,
            max_training_points: 40_000,
            seed: 0x05EE_DD0F_CAFE,
        }
    }
}

/// Facts about a fit, stored with the model.
#[derive(Debug, Clone, PartialEq)]
pub struct FitInfo {
    /// N, rows offered.
    pub n_input: usize,
    /// n, rows the model was fitted on (min(N, M)).
    pub n_fit: usize,
    pub seed: u64,
    pub subsampled: bool,
}

/// A fitted DFKDE model. Immutable; scoring needs a [`Workspace`] per thread.
#[derive(Debug, Clone, PartialEq)]
pub struct Dfkde {
    pub pca: Pca,
    pub scaling: Scaling,
    /// ℓ_max (stored for both methods, used by `Scale` only).
    pub max_length: f64,
    pub kde: GaussianKde,
    pub info: FitInfo,
}

/// One frame's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// s = ln p(q): the primary, unbounded score (lower = more anomalous).
    pub log_density: f64,
    /// anomalib's `pred_score = sigmoid(0.6 − 0.05 s)` (higher = more anomalous).
    pub pred_score: f64,
    pub eval: KdeEval,
}

/// Per-thread scratch so that scoring never allocates.
#[derive(Debug, Clone)]
pub struct Workspace {
    y: Vec<f64>,
    u: Vec<f64>,
    dist: Vec<f64>,
}

/// anomalib's fixed sigmoid: `1 / (1 + exp(0.05 (s − 12)))`; −∞ ↦ 1.
pub fn pred_score(log_density: f64) -> f64 {
    1.0 / (1.0 + (0.05 * (log_density - 12.0)).exp())
}

/// Indices of the rows to fit on: all rows when `n ≤ max`, else `max` distinct rows drawn
/// without replacement by a partial Fisher–Yates shuffle on ChaCha8(seed), in draw order.
pub fn subsample_indices(n: usize, max: usize, seed: u64) -> Result<Vec<usize>, ModelError> {
    if max == 0 {
        return Err(ModelError::ZeroMaxTrainingPoints);
    }
    let mut idx: Vec<usize> = (0..n).collect();
    if n <= max {
        return Ok(idx);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..max {
        let span = (n - i) as u64;
        // Lemire-style unbiased bounded draw.
        let zone = u64::MAX - (u64::MAX % span);
        let r = loop {
            let v = rng.next_u64();
            if v < zone {
                break v % span;
            }
        };
        idx.swap(i, i + r as usize);
    }
    idx.truncate(max);
    Ok(idx)
}

impl Dfkde {
    /// Fit on a row-major `n_rows × dim` f32 feature matrix, anomalib's way
    /// (subsample if N > M, then PCA, scaling and KDE on the rows kept).
    pub fn fit(
        data: &[f32],
        n_rows: usize,
        dim: usize,
        cfg: &FitConfig,
    ) -> Result<Dfkde, ModelError> {
        check_matrix(data, n_rows, dim)?;
        let rows = subsample_indices(n_rows, cfg.max_training_points, cfg.seed)?;
        let mut model = Self::fit_rows(data, dim, &rows, cfg)?;
        model.info = FitInfo {
            n_input: n_rows,
            n_fit: rows.len(),
            seed: cfg.seed,
            subsampled: rows.len() < n_rows,
        };
        Ok(model)
    }

    /// Fit on exactly the rows `rows` (in that order) — e.g. anomalib's recorded
    /// `randperm` indices. `cfg.max_training_points` is not applied again.
    pub fn fit_rows(
        data: &[f32],
        dim: usize,
        rows: &[usize],
        cfg: &FitConfig,
    ) -> Result<Dfkde, ModelError> {
        let n_total = data.len().checked_div(dim).unwrap_or(0);
        check_matrix(data, n_total, dim)?;
        if let Some(&bad) = rows.iter().find(|&&r| r >= n_total) {
            return Err(ModelError::InvalidParameter(format!(
                "row index {bad} out of range (N = {n_total})"
            )));
        }
        let n = rows.len();
        let k = cfg.n_components;
        let k_max = dim.min(n.saturating_sub(1));
        if k == 0 || k > dim {
            return Err(ModelError::InvalidComponents {
                got: k.to_string(),
                max: k_max,
                dim,
                rows: n,
            });
        }
        if n < 2 * k {
            return Err(ModelError::TooFewSamples {
                got: n,
                required: 2 * k,
            });
        }
        if k > k_max {
            return Err(ModelError::InvalidComponents {
                got: k.to_string(),
                max: k_max,
                dim,
                rows: n,
            });
        }
        for &r in rows {
            if let Some((c, &v)) = data[r * dim..(r + 1) * dim]
                .iter()
                .enumerate()
                .find(|(_, v)| !v.is_finite())
            {
                return Err(ModelError::NonFinite {
                    row: r,
                    col: c,
                    value: v,
                });
            }
        }

        let pca = Pca::fit(data, dim, rows, k)?;
        let mut y = pca.project_rows(data, rows);
        let max_length = y
            .chunks_exact(k)
            .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
            .fold(0.0f64, f64::max);
        if max_length.is_nan() || max_length <= 0.0 {
            return Err(ModelError::SingularCovariance(
                "all PCA scores are zero".into(),
            ));
        }
        match cfg.scaling {
            Scaling::Scale => y.iter_mut().for_each(|v| *v /= max_length),
            Scaling::Norm => {
                for (i, row) in y.chunks_exact_mut(k).enumerate() {
                    let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                    if norm.is_nan() || norm <= 0.0 {
                        return Err(ModelError::ZeroLengthRow { row: rows[i] });
                    }
                    row.iter_mut().for_each(|v| *v /= norm);
                }
            }
        }
        let kde = GaussianKde::fit(&y, n, k)?;
        Ok(Dfkde {
            pca,
            scaling: cfg.scaling,
            max_length,
            kde,
            info: FitInfo {
                n_input: n,
                n_fit: n,
                seed: cfg.seed,
                subsampled: false,
            },
        })
    }

    pub fn feature_dim(&self) -> usize {
        self.pca.dim
    }

    pub fn n_components(&self) -> usize {
        self.pca.k
    }

    pub fn workspace(&self) -> Workspace {
        Workspace {
            y: vec![0.0; self.pca.k],
            u: vec![0.0; self.pca.k],
            dist: vec![0.0; self.kde.n],
        }
    }

    /// PCA projection + scaling of one query into `out` (length k): the KDE's input space.
    pub fn embed_into(&self, q: &[f32], out: &mut [f64]) -> Result<(), ModelError> {
        if q.len() != self.pca.dim {
            return Err(ModelError::DimensionMismatch {
                expected: self.pca.dim,
                got: q.len(),
            });
        }
        if let Some((c, &v)) = q.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                row: 0,
                col: c,
                value: v,
            });
        }
        self.pca.project_into(q, out);
        match self.scaling {
            Scaling::Scale => out.iter_mut().for_each(|v| *v /= self.max_length),
            Scaling::Norm => {
                let norm = out.iter().map(|v| v * v).sum::<f64>().sqrt();
                if norm.is_nan() || norm <= 0.0 {
                    return Err(ModelError::ZeroLengthQuery);
                }
                out.iter_mut().for_each(|v| *v /= norm);
            }
        }
        Ok(())
    }

    /// Score one pooled feature vector. Allocation-free given a workspace from
    /// [`Dfkde::workspace`].
    pub fn score(&self, q: &[f32], ws: &mut Workspace) -> Result<Score, ModelError> {
        if ws.dist.len() != self.kde.n || ws.y.len() != self.pca.k {
            *ws = self.workspace();
        }
        self.embed_into(q, &mut ws.y)?;
        self.kde.transform_into(&ws.y, &mut ws.u);
        let eval = self.kde.log_density_transformed(&ws.u, &mut ws.dist);
        Ok(Score {
            log_density: eval.log_density,
            pred_score: pred_score(eval.log_density),
            eval,
        })
    }

    /// Score every row of a row-major matrix.
    pub fn score_rows(&self, data: &[f32], dim: usize) -> Result<Vec<Score>, ModelError> {
        let mut ws = self.workspace();
        data.chunks_exact(dim.max(1))
            .map(|q| self.score(q, &mut ws))
            .collect()
    }
}

fn check_matrix(data: &[f32], rows: usize, cols: usize) -> Result<(), ModelError> {
    if cols == 0 || data.len() != rows * cols {
        return Err(ModelError::BadShape {
            rows,
            cols,
            len: data.len(),
        });
    }
    Ok(())
}
