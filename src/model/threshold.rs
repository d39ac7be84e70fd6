//! Thresholds from normal data only, and anomalib's post-processor (F1-adaptive
//! threshold, min-max normalisation, strict `>` label) for parity and evaluation.

use super::error::ModelError;

/// Quantile with linear interpolation between order statistics (numpy's default,
/// Hyndman–Fan type 7). `values` need not be sorted; NaNs are rejected.
pub fn quantile(values: &[f64], q: f64) -> Result<f64, ModelError> {
    if values.is_empty() {
        return Err(ModelError::InvalidParameter(
            "quantile of an empty set".into(),
        ));
    }
    if !(0.0..=1.0).contains(&q) {
        return Err(ModelError::InvalidParameter(format!(
            "quantile {q} outside [0, 1]"
        )));
    }
    if values.iter().any(|v| v.is_nan()) {
        return Err(ModelError::InvalidParameter(
            "quantile of a set containing NaN".into(),
        ));
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    Ok(if lo == hi {
        v[lo]
    } else {
        v[lo] + (v[hi] - v[lo]) * frac
    })
}

/// vigil's threshold rule: the anomaly score is `a = −log_density`; the threshold is the
/// `q` quantile of the hold-out normal frames' `a`, returned as a log-density:
/// a frame is anomalous iff `log_density < threshold` (strict, like anomalib's `>` on scores).
pub fn log_density_threshold(holdout_log_densities: &[f64], q: f64) -> Result<f64, ModelError> {
    let a: Vec<f64> = holdout_log_densities.iter().map(|s| -s).collect();
    Ok(-quantile(&a, q)?)
}

/// anomalib's post-processor state, fitted on a validation set of raw `pred_score`s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostProcessor {
    pub threshold: f64,
    pub min: f64,
    pub max: f64,
}

impl PostProcessor {
    /// F1-adaptive threshold (torchmetrics' exact PR curve: thresholds are the distinct
    /// scores; a sample is positive if `score ≥ t`; the first maximum of
    /// `F1 = 2PR/(P+R+1e−10)` wins, i.e. the lowest threshold among ties), plus min/max.
    /// No anomalous sample → `t = max`; no normal sample → `t = min` (anomalib 2.7.0).
    pub fn fit(scores: &[f64], labels: &[bool]) -> Result<PostProcessor, ModelError> {
        if scores.is_empty() || scores.len() != labels.len() {
            return Err(ModelError::InvalidParameter(format!(
                "post-processor needs as many labels as scores ({} vs {})",
                scores.len(),
                labels.len()
            )));
        }
        let min = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let n_pos = labels.iter().filter(|&&l| l).count();
        if n_pos == 0 {
            return Ok(PostProcessor {
                threshold: max,
                min,
                max,
            });
        }
        if n_pos == labels.len() {
            return Ok(PostProcessor {
                threshold: min,
                min,
                max,
            });
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a])); // descending
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut best_f1 = f64::NEG_INFINITY;
        let mut best_t = max;
        let mut i = 0;
        // Walk thresholds from the highest score down; ">" keeps the lowest threshold on ties.
        while i < order.len() {
            let t = scores[order[i]];
            while i < order.len() && scores[order[i]] == t {
                if labels[order[i]] {
                    tp += 1;
                } else {
                    fp += 1;
                }
                i += 1;
            }
            let precision = tp as f64 / (tp + fp) as f64;
            let recall = tp as f64 / n_pos as f64;
            let mut f1 = 2.0 * precision * recall / (precision + recall + 1e-10);
            if f1.is_nan() {
                f1 = 0.0;
            }
            if f1 >= best_f1 {
                best_f1 = f1;
                best_t = t;
            }
        }
        Ok(PostProcessor {
            threshold: best_t,
            min,
            max,
        })
    }

    /// `clamp((score − t)/(max − min) + 0.5, 0, 1)`, with 2.7.0's `max == min` rule.
    pub fn normalize(&self, score: f64) -> f64 {
        let t = if self.threshold.is_nan() {
            (self.max + self.min) / 2.0
        } else {
            self.threshold
        };
        if self.max == self.min {
            return if score > t {
                1.0
            } else if score < t {
                0.0
            } else {
                0.5
            };
        }
        ((score - t) / (self.max - self.min) + 0.5).clamp(0.0, 1.0)
    }

    /// `pred_label = normalised > 1 − sensitivity` (default sensitivity 0.5), strict.
    pub fn label(&self, score: f64) -> bool {
        self.normalize(score) > 0.5
    }
}
