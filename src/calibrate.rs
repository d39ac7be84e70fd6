//! On-device calibration: collect normal frames from a camera, check that they can make a
//! model (enough, not frozen, not black or saturated, not degenerate), fit with the same
//! preprocessing and backbone as the daemon, set the threshold from held-out frames (the
//! quantile rule of [`crate::fit`]), and validate the candidate before anyone serves it.
//!
//! Used by `vigil calibrate` (frames from a source it opens itself) and by the daemon
//! (frames forwarded from the camera's running capture); persisting the result is the
//! caller's job ([`crate::store::ModelStore::add`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::artifact::Artifact;
use crate::backbone::Backbone;
use crate::config::CalibrationConfig;
use crate::features::{decode_pixels, FeatureError, FeatureExtractor};
use crate::fit::{fit_with_threshold, make_artifact, ThresholdConfig};
use crate::frame::Frame;
use crate::model::{FitConfig, ModelError};
use crate::preprocess::{PreprocessConfig, RgbF32};
use crate::source::{
    Capture, CaptureHandle, CaptureOptions, FolderConfig, FrameSlot, FrameSource, SourceConfig,
    SyntheticConfig, V4l2Config, VideoConfig,
};

/// A frame whose 99th luma percentile is below this is black (lens cap, dead light).
pub const BLACK_P99: f32 = 0.06;
/// A frame whose 1st luma percentile is above this is saturated (blown out).
pub const SATURATED_P1: f32 = 0.94;
/// More black or saturated frames than this fraction refuse the calibration (fewer are
/// left out of the fit).
pub const MAX_BAD_FRACTION: f64 = 0.05;
/// Two consecutive frames whose mean absolute luma difference (on a 96×96 sample grid,
/// values in [0, 1]) is below this are the same picture: a frozen camera.
pub const FROZEN_MEAN_ABS_DIFF: f32 = 5e-4;
/// More repeated consecutive frames than this fraction refuse the calibration.
pub const MAX_REPEAT_FRACTION: f64 = 0.1;
/// Total feature variance below this fraction of the mean squared feature norm: the
/// frames are near-identical to the backbone.
pub const MIN_RELATIVE_SPREAD: f64 = 1e-6;
/// The candidate may flag at most this fraction of its own calibration frames.
pub const MAX_SELF_FLAGGED: f64 = 0.1;

const GRID: usize = 96;

/// Why a calibration did not produce a model. Refusals ([`CalibrateError::is_refusal`]) are
/// about the frames; the model in service is kept in every case.
#[derive(Debug, Error)]
pub enum CalibrateError {
    #[error("too few frames: {got} usable, at least {need} needed{detail}")]
    TooFewFrames {
        got: usize,
        need: usize,
        detail: String,
    },
    #[error("camera frozen: {repeats} of {pairs} consecutive frames are identical")]
    Frozen { repeats: usize, pairs: usize },
    #[error("frames are near-identical (feature spread {spread:.2e}): nothing varies in front of the camera")]
    NearIdentical { spread: f64 },
    #[error("{bad} of {seen} frames are {what}: check the light and the lens")]
    BadExposure {
        what: &'static str,
        bad: usize,
        seen: usize,
    },
    #[error("{bad} of {seen} frames could not be decoded (last: {last})")]
    Unreadable {
        bad: usize,
        seen: usize,
        last: String,
    },
    #[error("covariance is singular: {0}")]
    Singular(String),
    #[error("candidate model failed validation: {0}")]
    Validation(String),
    #[error("no frame from the camera for {0:.0} s")]
    NoFrames(f64),
    #[error("frame source: {0}")]
    Source(String),
    #[error("cancelled")]
    Cancelled,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Features(#[from] FeatureError),
    #[error("fit: {0}")]
    Model(ModelError),
}

impl CalibrateError {
    /// The frames cannot make a model (as opposed to an I/O or configuration problem).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            CalibrateError::TooFewFrames { .. }
                | CalibrateError::Frozen { .. }
                | CalibrateError::NearIdentical { .. }
                | CalibrateError::BadExposure { .. }
                | CalibrateError::Unreadable { .. }
                | CalibrateError::Singular(_)
                | CalibrateError::Validation(_)
        )
    }
}

impl From<ModelError> for CalibrateError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::SingularCovariance(m) => CalibrateError::Singular(m),
            ModelError::TooFewSamples { got, required } => CalibrateError::TooFewFrames {
                got,
                need: required,
                detail: " for the PCA".into(),
            },
            other => CalibrateError::Model(other),
        }
    }
}

/// One calibration's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationParams {
    pub frames: usize,
    pub interval: Duration,
    pub quantile: f64,
    pub holdout: f64,
    pub min_frames: usize,
    pub frame_timeout: Duration,
    pub fit: FitConfig,
    /// The feature preset of the model being replaced: a recalibration keeps it (its PCA
    /// size rule decides `fit.n_components`).
    pub features: crate::preset::FeaturePreset,
}

impl CalibrationParams {
    pub fn from_config(c: &CalibrationConfig) -> CalibrationParams {
        CalibrationParams {
            frames: c.frames,
            interval: Duration::from_secs_f64(c.interval_s.clamp(0.0, 3600.0)),
            quantile: c.quantile,
            holdout: c.holdout,
            min_frames: c.min_frames,
            frame_timeout: Duration::from_secs_f64(c.frame_timeout_s.clamp(0.1, 86_400.0)),
            fit: FitConfig::default(),
            features: crate::preset::FeaturePreset::default(),
        }
    }
}

/// Options of a calibration request (`calibrate/set` payload, control socket, CLI flags):
/// every field optional, unknown fields refused.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibrateRequest {
    pub frames: Option<usize>,
    pub interval_s: Option<f64>,
    pub quantile: Option<f64>,
}

impl CalibrateRequest {
    /// Parse a JSON payload (`null` = all defaults).
    pub fn from_json(v: &serde_json::Value) -> Result<CalibrateRequest, CalibrateError> {
        if v.is_null() {
            return Ok(CalibrateRequest::default());
        }
        serde_json::from_value(v.clone()).map_err(|e| {
            CalibrateError::Invalid(format!(
                "{e} (expected {{\"frames\": N, \"interval_s\": S, \"quantile\": Q}}, all optional)"
            ))
        })
    }

    /// The parameters: `defaults` overridden by this request, range-checked.
    pub fn params(
        &self,
        defaults: &CalibrationConfig,
    ) -> Result<CalibrationParams, CalibrateError> {
        let mut c = defaults.clone();
        if let Some(f) = self.frames {
            c.frames = f;
        }
        if let Some(i) = self.interval_s {
            c.interval_s = i;
        }
        if let Some(q) = self.quantile {
            c.quantile = q;
        }
        c.validate().map_err(CalibrateError::Invalid)?;
        Ok(CalibrationParams::from_config(&c))
    }
}

/// Where a calibration stands: the value of the retained `calibrate/state` knob and of each
/// line the control socket streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum CalibStatus {
    Idle,
    Collecting {
        collected: usize,
        frames: usize,
    },
    Fitting {
        frames: usize,
    },
    Done {
        model_id: String,
        previous_model_id: Option<String>,
        threshold: f64,
        frames: usize,
        duration_s: f64,
    },
    Failed {
        reason: String,
        /// The frames were unusable (as opposed to an error).
        refused: bool,
        /// The model still in service.
        model_id: Option<String>,
    },
}

impl CalibStatus {
    pub fn is_terminal(&self) -> bool {
        matches!(self, CalibStatus::Done { .. } | CalibStatus::Failed { .. })
    }

    pub fn is_running(&self) -> bool {
        matches!(
            self,
            CalibStatus::Collecting { .. } | CalibStatus::Fitting { .. }
        )
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// Where calibration frames come from.
pub trait FrameFeed {
    /// The next frame, waiting up to `timeout`; `Ok(None)` on timeout; `Err` when the
    /// source ended ([`CalibrateError::Source`]) or failed.
    fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, CalibrateError>;
}

/// Frames pulled straight from a source (folders, files, synthetic): none is skipped.
pub struct SourceFeed {
    source: Box<dyn FrameSource>,
    seq: u64,
    ended: bool,
}

impl SourceFeed {
    pub fn open(mut source: Box<dyn FrameSource>) -> Result<SourceFeed, CalibrateError> {
        source
            .open()
            .map_err(|e| CalibrateError::Source(e.to_string()))?;
        Ok(SourceFeed {
            source,
            seq: 0,
            ended: false,
        })
    }
}

impl FrameFeed for SourceFeed {
    fn next(&mut self, _timeout: Duration) -> Result<Option<Frame>, CalibrateError> {
        if self.ended {
            return Err(CalibrateError::Source("the source ended".into()));
        }
        match self.source.next_frame() {
            Ok(Some(px)) => {
                self.seq += 1;
                Ok(Some(Frame::new(self.seq, px, self.source.last_origin())))
            }
            Ok(None) => {
                self.ended = true;
                Err(CalibrateError::Source("the source ended".into()))
            }
            Err(e) => Err(CalibrateError::Source(e.to_string())),
        }
    }
}

impl Drop for SourceFeed {
    fn drop(&mut self) {
        self.source.close();
    }
}

/// Frames from a latest-frame slot (a live camera's capture, in the daemon or the CLI).
pub struct SlotFeed {
    pub slot: Arc<FrameSlot>,
    /// Returns a reason once the capture behind the slot has ended for good.
    pub ended: Box<dyn Fn() -> Option<String> + Send>,
}

impl FrameFeed for SlotFeed {
    fn next(&mut self, timeout: Duration) -> Result<Option<Frame>, CalibrateError> {
        let f = self.slot.take(timeout);
        if f.is_none() {
            if let Some(reason) = (self.ended)() {
                return Err(CalibrateError::Source(reason));
            }
        }
        Ok(f)
    }
}

/// A source named on the command line: `synthetic[:SEED]`, `/dev/videoN` (v4l2), a URL
/// with a scheme (`rtsp://…`, a network stream), a video file (`.mp4 .mkv .avi .mov .webm
/// .mjpeg .h264`), else an image folder, file or glob (every image once, in name order).
pub fn parse_source_spec(spec: &str) -> Result<SourceConfig, CalibrateError> {
    let spec = spec.trim();
    let cfg = if spec == "synthetic" || spec.starts_with("synthetic:") {
        let seed = match spec.strip_prefix("synthetic:") {
            Some(s) => s
                .parse()
                .map_err(|_| CalibrateError::Invalid(format!("bad synthetic seed `{s}`")))?,
            None => 1,
        };
        SourceConfig::Synthetic(SyntheticConfig {
            fps: 0.0,
            seed,
            ..SyntheticConfig::default()
        })
    } else if spec.starts_with("/dev/video") {
        SourceConfig::V4l2(V4l2Config {
            device: spec.to_string(),
            ..V4l2Config::default()
        })
    } else if spec.contains("://")
        || [".mp4", ".mkv", ".avi", ".mov", ".webm", ".mjpeg", ".h264"]
            .iter()
            .any(|e| spec.to_ascii_lowercase().ends_with(e))
    {
        SourceConfig::Video(VideoConfig {
            realtime: false,
            ..VideoConfig::new(spec)
        })
    } else {
        SourceConfig::Folder(FolderConfig {
            fps: 0.0,
            looping: false,
            ..FolderConfig::new(spec)
        })
    };
    cfg.validate()
        .map_err(|e| CalibrateError::Invalid(e.to_string()))?;
    Ok(cfg)
}

/// Live sources (cameras, network streams) are read by a capture thread into a
/// latest-frame slot, so the frames taken at each interval are fresh; finite sources
/// (folders, files, synthetic) are pulled frame by frame, none skipped.
pub fn is_live(cfg: &SourceConfig) -> bool {
    match cfg {
        SourceConfig::V4l2(_) => true,
        SourceConfig::Video(v) => v.is_network(),
        SourceConfig::Folder(_) | SourceConfig::Synthetic(_) => false,
    }
}

/// A feed for a source opened by this process (`vigil calibrate` without a daemon). The
/// returned handle (live sources) must be kept until the calibration ends.
pub fn open_feed(
    camera: &str,
    cfg: &SourceConfig,
) -> Result<(Box<dyn FrameFeed>, Option<CaptureHandle>), CalibrateError> {
    if is_live(cfg) {
        let slot = Arc::new(FrameSlot::new());
        let handle = Capture::spawn(
            camera.to_string(),
            cfg.clone(),
            CaptureOptions::default(),
            slot.clone(),
        )
        .map_err(|e| CalibrateError::Source(e.to_string()))?;
        let health = handle.shared_health();
        let feed = SlotFeed {
            slot,
            ended: Box::new(health),
        };
        Ok((Box::new(feed), Some(handle)))
    } else {
        let src = crate::source::build(cfg).map_err(|e| CalibrateError::Source(e.to_string()))?;
        Ok((Box::new(SourceFeed::open(src)?), None))
    }
}

/// What the frame checks saw.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FrameChecks {
    /// Frames received from the source.
    pub seen: usize,
    pub black: usize,
    pub saturated: usize,
    /// Frames that could not be decoded (skipped, like the scoring pipeline skips them).
    pub corrupt: usize,
    /// Consecutive usable frames that repeat the previous one.
    pub repeats: usize,
    /// Usable frames (features extracted).
    pub usable: usize,
}

/// A validated candidate model.
#[derive(Debug)]
pub struct Calibrated {
    pub artifact: Artifact,
    pub checks: FrameChecks,
    /// Fraction of its own calibration frames the candidate flags as anomalous.
    pub self_flagged: f64,
    pub collect_time: Duration,
    pub fit_time: Duration,
}

/// Luma on a GRID×GRID sample grid (nearest pixels: sensor noise is kept, so a live camera
/// watching a still scene is not mistaken for a frozen one).
fn luma_grid(img: &RgbF32) -> Vec<f32> {
    let (w, h) = (img.width as usize, img.height as usize);
    let mut out = Vec::with_capacity(GRID * GRID);
    for gy in 0..GRID {
        let y = (gy * h + h / 2) / GRID;
        for gx in 0..GRID {
            let x = (gx * w + w / 2) / GRID;
            let [r, g, b] = img.pixels[(y.min(h - 1)) * w + x.min(w - 1)].0;
            out.push(0.299 * r + 0.587 * g + 0.114 * b);
        }
    }
    out
}

fn percentile(sorted: &[f32], q: f64) -> f32 {
    let i = ((sorted.len().saturating_sub(1)) as f64 * q).round() as usize;
    sorted.get(i).copied().unwrap_or(0.0)
}

/// Collect, check, fit, validate. `progress` is called with each status change; `cancel`
/// stops it between frames. The model in service is untouched: nothing is written.
#[allow(clippy::too_many_arguments)]
pub fn calibrate(
    feed: &mut dyn FrameFeed,
    backbone: &mut dyn Backbone,
    preprocess: PreprocessConfig,
    params: &CalibrationParams,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&CalibStatus),
) -> Result<Calibrated, CalibrateError> {
    let t0 = Instant::now();
    let info = backbone.info().clone();
    let dim = info.feature_dim;
    let n_max = params.frames;
    let mut fx = FeatureExtractor::new(preprocess);
    let mut feats = vec![0.0f32; n_max * dim];
    let mut checks = FrameChecks::default();
    let mut prev: Option<Vec<f32>> = None;
    let mut ended: Option<String> = None;
    let mut due: Option<Instant> = None;
    // Outcome already certain: refuse without collecting the rest.
    let max_bad = (MAX_BAD_FRACTION * n_max as f64).floor() as usize;
    let max_repeats = (MAX_REPEAT_FRACTION * n_max.saturating_sub(1) as f64).floor() as usize;
    progress(&CalibStatus::Collecting {
        collected: 0,
        frames: n_max,
    });
    while checks.usable < n_max {
        // Wait for the interval, then take the first frame captured after it.
        if let Some(d) = due {
            while Instant::now() < d {
                if cancel.load(Ordering::Relaxed) {
                    return Err(CalibrateError::Cancelled);
                }
                std::thread::sleep((d - Instant::now()).min(Duration::from_millis(100)));
            }
        }
        let wait_start = Instant::now();
        let frame = loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(CalibrateError::Cancelled);
            }
            if wait_start.elapsed() >= params.frame_timeout {
                return Err(CalibrateError::NoFrames(params.frame_timeout.as_secs_f64()));
            }
            match feed.next(Duration::from_millis(200)) {
                Ok(Some(f)) if due.is_some_and(|d| f.captured_mono < d) => continue,
                Ok(Some(f)) => break Some(f),
                Ok(None) => continue,
                Err(CalibrateError::Source(reason)) => {
                    ended = Some(reason);
                    break None;
                }
                Err(e) => return Err(e),
            }
        };
        let Some(frame) = frame else { break };
        due = Some(frame.captured_mono + params.interval);
        checks.seen += 1;
        let origin = frame.origin.as_deref().unwrap_or("frame");
        let img = match decode_pixels(&frame.pixels, origin, &preprocess) {
            Ok(img) => img,
            Err(e) => {
                // One torn or corrupt frame must not throw away minutes of collection; a
                // source that keeps sending them is refused like black frames are.
                checks.corrupt += 1;
                tracing::warn!(frame = origin, error = %e, "calibration: undecodable frame skipped");
                if checks.corrupt > max_bad {
                    return Err(CalibrateError::Unreadable {
                        bad: checks.corrupt,
                        seen: checks.seen,
                        last: e.to_string(),
                    });
                }
                continue;
            }
        };
        let grid = luma_grid(&img);
        let mut sorted = grid.clone();
        sorted.sort_by(f32::total_cmp);
        if percentile(&sorted, 0.99) < BLACK_P99 {
            checks.black += 1;
        } else if percentile(&sorted, 0.01) > SATURATED_P1 {
            checks.saturated += 1;
        } else {
            if let Some(p) = &prev {
                let mad = p.iter().zip(&grid).map(|(a, b)| (a - b).abs()).sum::<f32>()
                    / grid.len() as f32;
                if mad < FROZEN_MEAN_ABS_DIFF {
                    checks.repeats += 1;
                }
            }
            prev = Some(grid);
            let i = checks.usable;
            fx.image(backbone, &img, &mut feats[i * dim..(i + 1) * dim])?;
            checks.usable += 1;
        }
        if checks.black > max_bad {
            return Err(bad_exposure("black", checks.black, checks.seen));
        }
        if checks.saturated > max_bad {
            return Err(bad_exposure("saturated", checks.saturated, checks.seen));
        }
        if checks.repeats > max_repeats {
            return Err(CalibrateError::Frozen {
                repeats: checks.repeats,
                pairs: checks.usable.saturating_sub(1),
            });
        }
        progress(&CalibStatus::Collecting {
            collected: checks.usable,
            frames: n_max,
        });
    }
    let collect_time = t0.elapsed();
    let n = checks.usable;
    let detail = match &ended {
        Some(r) => format!(" ({r} after {} frames)", checks.seen),
        None => String::new(),
    };
    if n < params.min_frames {
        return Err(CalibrateError::TooFewFrames {
            got: n,
            need: params.min_frames,
            detail,
        });
    }
    // Checks on what was actually collected (the source may have ended early).
    if (checks.black + checks.saturated) as f64 > MAX_BAD_FRACTION * checks.seen as f64 {
        let what = if checks.black >= checks.saturated {
            ("black", checks.black)
        } else {
            ("saturated", checks.saturated)
        };
        return Err(bad_exposure(what.0, what.1, checks.seen));
    }
    if checks.repeats as f64 > MAX_REPEAT_FRACTION * (n - 1) as f64 {
        return Err(CalibrateError::Frozen {
            repeats: checks.repeats,
            pairs: n - 1,
        });
    }
    if let Some(r) = &ended {
        tracing::warn!(collected = n, requested = n_max, reason = %r, "the source ended early: calibrating on what was collected");
    }
    feats.truncate(n * dim);
    let spread = relative_spread(&feats, n, dim);
    if spread < MIN_RELATIVE_SPREAD {
        return Err(CalibrateError::NearIdentical { spread });
    }

    progress(&CalibStatus::Fitting { frames: n });
    let t1 = Instant::now();
    let th = ThresholdConfig {
        holdout: params.holdout,
        quantile: params.quantile,
    };
    let fit = FitConfig {
        n_components: params
            .features
            .n_components(crate::fit::smallest_fit(n, params.holdout)),
        ..params.fit.clone()
    };
    let (model, threshold, qs) = fit_with_threshold(&feats, n, dim, &fit, &th)?;
    let mut candidate = make_artifact(model, threshold, qs, &info, preprocess, &fit, n);
    candidate = crate::artifact::Artifact::new(
        crate::artifact::ArtifactMeta {
            features: params.features.artifact_name().to_string(),
            ..candidate.meta
        },
        candidate.model,
    );
    let (artifact, self_flagged) = validate(&candidate, &feats, n, dim, &info.sha256)?;
    let fit_time = t1.elapsed();
    tracing::info!(
        model_id = %artifact.meta.model_id,
        frames = n,
        threshold = artifact.meta.threshold.log_density,
        self_flagged,
        spread,
        collect_s = collect_time.as_secs_f64(),
        fit_s = fit_time.as_secs_f64(),
        "calibration fitted and validated"
    );
    Ok(Calibrated {
        artifact,
        checks,
        self_flagged,
        collect_time,
        fit_time,
    })
}

fn bad_exposure(what: &'static str, bad: usize, seen: usize) -> CalibrateError {
    CalibrateError::BadExposure { what, bad, seen }
}

/// trace(covariance) / mean squared norm of the rows.
fn relative_spread(feats: &[f32], n: usize, dim: usize) -> f64 {
    let mut mean = vec![0.0f64; dim];
    let mut sq = 0.0f64;
    for row in feats.chunks_exact(dim) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
            sq += f64::from(v) * f64::from(v);
        }
    }
    let nf = n.max(1) as f64;
    let mean_sq_norm = sq / nf;
    let norm_of_mean: f64 = mean.iter().map(|m| (m / nf) * (m / nf)).sum();
    let total_var = (mean_sq_norm - norm_of_mean).max(0.0);
    if mean_sq_norm <= 0.0 {
        0.0
    } else {
        total_var / mean_sq_norm
    }
}

/// The candidate as the daemon would load it (serialised and parsed back, backbone
/// checked), scoring its own frames finitely and flagging few of them.
fn validate(
    candidate: &Artifact,
    feats: &[f32],
    n: usize,
    dim: usize,
    backbone_sha: &str,
) -> Result<(Artifact, f64), CalibrateError> {
    let here = std::path::Path::new("<candidate>");
    let bytes = candidate
        .to_bytes()
        .map_err(|e| CalibrateError::Validation(format!("serialise: {e}")))?;
    let art = Artifact::from_bytes(&bytes, here)
        .map_err(|e| CalibrateError::Validation(e.to_string()))?;
    art.check_backbone(here, backbone_sha, here)
        .map_err(|e| CalibrateError::Validation(e.to_string()))?;
    let t = art.meta.threshold.log_density;
    if !t.is_finite() {
        return Err(CalibrateError::Validation(format!(
            "threshold {t} is not finite"
        )));
    }
    let scores = art
        .model
        .score_rows(feats, dim)
        .map_err(|e| CalibrateError::Validation(e.to_string()))?;
    if let Some(s) = scores.iter().find(|s| !s.log_density.is_finite()) {
        return Err(CalibrateError::Validation(format!(
            "a calibration frame scores a non-finite log-density ({})",
            s.log_density
        )));
    }
    let flagged = scores
        .iter()
        .filter(|s| art.is_anomalous(s.log_density))
        .count();
    let frac = flagged as f64 / n.max(1) as f64;
    if frac > MAX_SELF_FLAGGED {
        return Err(CalibrateError::Validation(format!(
            "it flags {flagged} of its own {n} normal frames as anomalous"
        )));
    }
    Ok((art, frac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_validated_and_unknown_fields_refused() {
        let d = CalibrationConfig::default();
        let ok = |v: serde_json::Value| CalibrateRequest::from_json(&v).and_then(|r| r.params(&d));
        let p = ok(serde_json::Value::Null).expect("defaults");
        assert_eq!(p.frames, 300);
        assert_eq!(p.interval, Duration::from_secs(1));
        let p = ok(serde_json::json!({"frames": 80, "interval_s": 0, "quantile": 0.99}))
            .expect("valid");
        assert_eq!(
            (p.frames, p.interval, p.quantile),
            (80, Duration::ZERO, 0.99)
        );
        for bad in [
            serde_json::json!({"frames": 5}),
            serde_json::json!({"frames": -1}),
            serde_json::json!({"frames": "many"}),
            serde_json::json!({"interval_s": -1.0}),
            serde_json::json!({"quantile": 1.5}),
            serde_json::json!({"quantile": 0.2}),
            serde_json::json!({"frame": 100}),
            serde_json::json!([1, 2]),
            serde_json::json!("go"),
        ] {
            let e = ok(bad.clone()).expect_err("refused");
            assert!(matches!(e, CalibrateError::Invalid(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn status_serialises_with_a_state_tag() {
        let s = CalibStatus::Collecting {
            collected: 3,
            frames: 10,
        };
        assert_eq!(
            s.to_json(),
            serde_json::json!({"state": "collecting", "collected": 3, "frames": 10})
        );
        assert_eq!(
            CalibStatus::Idle.to_json(),
            serde_json::json!({"state": "idle"})
        );
    }

    #[test]
    fn identical_rows_have_zero_spread() {
        let row = [1.0f32, 2.0, 3.0];
        let same: Vec<f32> = row.iter().cycle().take(30).copied().collect();
        assert!(relative_spread(&same, 10, 3) < 1e-12);
        let varied: Vec<f32> = (0..30).map(|i| (i % 7) as f32).collect();
        assert!(relative_spread(&varied, 10, 3) > 1e-3);
    }
}
