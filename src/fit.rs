//! `vigil fit`: features of normal images → hold-out threshold → refit on all → artifact.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::artifact::{
    now_rfc3339, Artifact, ArtifactMeta, BackboneMeta, DfkdeMeta, ThresholdMeta, ThresholdRule,
};
use crate::backbone::BackboneInfo;
use crate::model::{log_density_threshold, pred_score, quantile, Dfkde, FitConfig, ModelError};
use crate::preprocess::PreprocessConfig;

/// Quantiles of the normal anomaly score recorded in the artifact.
pub const RECORDED_QUANTILES: [f64; 9] = [0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 0.995, 0.999, 1.0];

/// Threshold selection parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdConfig {
    /// Fraction of normal images held out to set the threshold (0 = anomalib's default rule).
    pub holdout: f64,
    /// Quantile of the hold-out anomaly scores (−log-density) used as threshold.
    pub quantile: f64,
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        ThresholdConfig {
            holdout: 0.2,
            quantile: 0.995,
        }
    }
}

/// Rows of the smallest fit of a run of [`fit_with_threshold`] on `n` rows: the hold-out fit.
pub fn smallest_fit(n: usize, holdout: f64) -> usize {
    if holdout <= 0.0 {
        return n;
    }
    n.saturating_sub(((n as f64) * holdout).round() as usize)
}

/// Split `n` rows into (fit, hold-out) by a seeded shuffle; both sorted.
pub fn holdout_split(n: usize, fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let n_hold = ((n as f64) * fraction).round() as usize;
    let mut idx: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0068_6f6c_646f_7574); // "holdout"
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    let mut hold = idx[..n_hold].to_vec();
    let mut fit = idx[n_hold..].to_vec();
    hold.sort_unstable();
    fit.sort_unstable();
    (fit, hold)
}

/// A model, its threshold, and the normal-score quantiles `(q, log-density)` behind it.
pub type FittedWithThreshold = (Dfkde, ThresholdMeta, Vec<(f64, f64)>);

/// Fit a model with a threshold from normal features only, then refit on all of them.
pub fn fit_with_threshold(
    features: &[f32],
    n: usize,
    dim: usize,
    cfg: &FitConfig,
    th: &ThresholdConfig,
) -> Result<FittedWithThreshold, ModelError> {
    if !(0.0..1.0).contains(&th.holdout) {
        return Err(ModelError::InvalidParameter(format!(
            "holdout fraction {} outside [0, 1)",
            th.holdout
        )));
    }
    if !(0.0..=1.0).contains(&th.quantile) {
        return Err(ModelError::InvalidParameter(format!(
            "quantile {} outside [0, 1]",
            th.quantile
        )));
    }
    let (threshold, quantiles) = if th.holdout > 0.0 {
        let (fit_rows, hold_rows) = holdout_split(n, th.holdout, cfg.seed);
        if hold_rows.is_empty() {
            return Err(ModelError::InvalidParameter(format!(
                "hold-out of {} of {n} images is empty: use more images or a larger --holdout",
                th.holdout
            )));
        }
        let sub: Vec<f32> = fit_rows
            .iter()
            .flat_map(|&r| features[r * dim..(r + 1) * dim].iter().copied())
            .collect();
        let model = Dfkde::fit(&sub, fit_rows.len(), dim, cfg)?;
        let mut ws = model.workspace();
        let logd: Vec<f64> = hold_rows
            .iter()
            .map(|&r| {
                model
                    .score(&features[r * dim..(r + 1) * dim], &mut ws)
                    .map(|s| s.log_density)
            })
            .collect::<Result<_, _>>()?;
        let t = log_density_threshold(&logd, th.quantile)?;
        let neg: Vec<f64> = logd.iter().map(|s| -s).collect();
        let qs = RECORDED_QUANTILES
            .iter()
            .map(|&q| quantile(&neg, q).map(|a| (q, -a)))
            .collect::<Result<Vec<_>, _>>()?;
        (
            ThresholdMeta {
                rule: ThresholdRule::HoldoutQuantile,
                log_density: t,
                pred_score: pred_score(t),
                quantile: Some(th.quantile),
                holdout_fraction: th.holdout,
                n_holdout: hold_rows.len(),
            },
            qs,
        )
    } else {
        (
            ThresholdMeta {
                rule: ThresholdRule::AnomalibDefault,
                log_density: 12.0,
                pred_score: 0.5,
                quantile: None,
                holdout_fraction: 0.0,
                n_holdout: 0,
            },
            Vec::new(),
        )
    };
    let model = Dfkde::fit(features, n, dim, cfg)?;
    Ok((model, threshold, quantiles))
}

/// Build the artifact for a fitted model.
pub fn make_artifact(
    model: Dfkde,
    threshold: ThresholdMeta,
    quantiles: Vec<(f64, f64)>,
    backbone: &BackboneInfo,
    preprocessing: PreprocessConfig,
    cfg: &FitConfig,
    n_train: usize,
) -> Artifact {
    let (created, created_unix_ms) = now_rfc3339();
    let meta = ArtifactMeta {
        schema_version: crate::artifact::SCHEMA_VERSION,
        model_id: String::new(),
        created,
        created_unix_ms,
        vigil_version: env!("CARGO_PKG_VERSION").to_string(),
        backbone: BackboneMeta {
            file: backbone
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: backbone.sha256.clone(),
            input_width: backbone.input_width,
            input_height: backbone.input_height,
            feature_dim: backbone.feature_dim,
            outputs: backbone.outputs.clone(),
        },
        preprocessing,
        features: "pooled".to_string(),
        dfkde: DfkdeMeta {
            n_components: model.n_components(),
            scaling: model.scaling,
            max_length: model.max_length,
            log_norm: model.kde.log_norm,
            scott_factor: model.kde.scott_factor,
            max_training_points: cfg.max_training_points,
            seed: model.info.seed,
            n_input: model.info.n_input,
            n_fit: model.info.n_fit,
            subsampled: model.info.subsampled,
        },
        threshold,
        normal_log_density_quantiles: quantiles,
        n_train,
    };
    Artifact::new(meta, model)
}
