//! The daemon's configuration: one TOML file layered with `VIGIL__SECTION__KEY`
//! environment overrides (e.g. `VIGIL__MQTT__URL=mqtt://broker:1883`), unknown keys
//! rejected. `config/vigil.toml` documents every key with its default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::detector::DetectorConfig;
use crate::publish::MqttConfig;
use crate::source::SourceConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("configuration {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Top level of `vigil.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node id used in MQTT topics (`<prefix>/<node>/...`). Default: the host name.
    #[serde(default = "default_node")]
    pub node: String,
    /// Where models, their previous versions and the MQTT outbox live.
    /// Default `/var/lib/vigil` (systemd `StateDirectory=vigil`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub inference: InferenceConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub calibration: CalibrationConfig,
    /// Prometheus `/metrics` endpoint (`[metrics]`). Default: off.
    #[serde(default)]
    pub metrics: crate::metrics::MetricsConfig,
    /// Where the daemon's control socket (`<runtime_dir>/control.sock`) lives: `vigil
    /// calibrate` and `vigil model rollback` talk to the running daemon through it.
    /// Default `/run/vigil` (systemd `RuntimeDirectory=vigil`).
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
    /// One `[[camera]]` table per camera.
    #[serde(rename = "camera", default)]
    pub cameras: Vec<CameraConfig>,
}

/// `[inference]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// ONNX backbone. Default `/usr/share/vigil/models/efficientnet_lite0_pooled.onnx`
    /// when it exists, else `models/efficientnet_lite0_pooled.onnx` (relative to the
    /// working directory).
    pub backbone: PathBuf,
    /// Inference worker threads (tract is blocking: dedicated OS threads). Default 1.
    pub workers: usize,
    /// Engine running the backbone: `tract` (CPU SIMD, default) or `wgpu` (WGSL compute
    /// kernels on Vulkan / GL; needs a build with `--features wgpu`). README "Backends".
    pub backend: crate::backbone::BackendKind,
    /// wgpu adapter: `auto` (best GPU, else a software adapter), `vulkan`, `gl` or
    /// `cpu-fallback` (lavapipe). Only read with `backend = "wgpu"`. Default `auto`.
    pub adapter: crate::backbone::AdapterChoice,
    /// With `backend = "wgpu"`: run tract instead (with a warning) when no adapter exists.
    /// Default true.
    pub fallback_to_tract: bool,
}

impl InferenceConfig {
    /// How the daemon loads its backbone.
    pub fn backend_options(&self) -> crate::backbone::BackendOptions {
        crate::backbone::BackendOptions {
            kind: self.backend,
            adapter: self.adapter,
            fallback_to_tract: self.fallback_to_tract,
        }
    }
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            backbone: crate::backbone::default_backbone_path(),
            workers: 1,
            backend: crate::backbone::BackendKind::Tract,
            adapter: crate::backbone::AdapterChoice::Auto,
            fallback_to_tract: true,
        }
    }
}

/// `[health]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Seconds between retained `health` messages (and systemd `STATUS=` updates). Default 5.
    pub interval_s: f64,
    /// A camera with no frame for this long is `stalled` and its source is reopened. Default 10.
    pub stall_timeout_s: f64,
    /// The systemd watchdog is fed only while some camera had a frame scored (or handed to
    /// a running calibration) within this many seconds. Default 30.
    pub watchdog_frame_age_s: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_s: 5.0,
            stall_timeout_s: 10.0,
            watchdog_frame_age_s: 30.0,
        }
    }
}

/// `[calibration]`: defaults of `vigil calibrate` and of remote (`calibrate/set`)
/// calibrations; a request may override `frames`, `interval_s` and `quantile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationConfig {
    /// Normal frames to collect. Default 300.
    pub frames: usize,
    /// Seconds between collected frames, so they span real variation (0 = every frame the
    /// camera delivers). Default 1.
    pub interval_s: f64,
    /// Quantile of the held-out normal anomaly scores used as threshold. Default 0.995.
    pub quantile: f64,
    /// Fraction of the frames held out to set the threshold. Default 0.2.
    pub holdout: f64,
    /// A calibration with fewer usable frames is refused. Default 50.
    pub min_frames: usize,
    /// Calibrated model versions kept per camera (the one in service is never removed).
    /// Default 5.
    pub keep_models: usize,
    /// A calibration fails when the camera delivers no frame for this long. Default 30.
    pub frame_timeout_s: f64,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        CalibrationConfig {
            frames: 300,
            interval_s: 1.0,
            quantile: 0.995,
            holdout: 0.2,
            min_frames: 50,
            keep_models: 5,
            frame_timeout_s: 30.0,
        }
    }
}

impl CalibrationConfig {
    /// Range checks (shared by the file and by remote requests).
    pub fn validate(&self) -> Result<(), String> {
        if self.min_frames < 10 {
            return Err(format!(
                "calibration.min_frames must be at least 10, got {}",
                self.min_frames
            ));
        }
        if self.frames < self.min_frames || self.frames > MAX_CALIBRATION_FRAMES {
            return Err(format!(
                "calibration frames must be in {}..={MAX_CALIBRATION_FRAMES} (min_frames..), got {}",
                self.min_frames, self.frames
            ));
        }
        if !(self.interval_s.is_finite() && (0.0..=3600.0).contains(&self.interval_s)) {
            return Err(format!(
                "calibration interval_s must be in 0..=3600 seconds, got {}",
                self.interval_s
            ));
        }
        if !(self.quantile.is_finite() && self.quantile > 0.5 && self.quantile <= 1.0) {
            return Err(format!(
                "calibration quantile must be in (0.5, 1], got {}",
                self.quantile
            ));
        }
        if !(self.holdout.is_finite() && self.holdout >= 0.05 && self.holdout <= 0.5) {
            return Err(format!(
                "calibration.holdout must be in [0.05, 0.5], got {}",
                self.holdout
            ));
        }
        if self.keep_models < 2 {
            return Err(format!(
                "calibration.keep_models must be at least 2 (the model in service and the one to roll back to), got {}",
                self.keep_models
            ));
        }
        if !(self.frame_timeout_s.is_finite() && self.frame_timeout_s > 0.0) {
            return Err(format!(
                "calibration.frame_timeout_s must be a positive number of seconds, got {}",
                self.frame_timeout_s
            ));
        }
        Ok(())
    }
}

/// Upper bound of `frames` (features of 20 000 frames are 100 MB).
pub const MAX_CALIBRATION_FRAMES: usize = 20_000;

/// `[[camera]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera id (topic segment): letters, digits, `-`, `_`.
    pub id: String,
    /// The frame source (`[camera.source]`, `type = "folder" | "synthetic" | "video" |
    /// "stream" | "v4l2"`).
    pub source: SourceConfig,
    /// Model artifact. Default `<state_dir>/models/<id>.safetensors`.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Log-density threshold overriding the artifact's (anomalous iff below). Default: none.
    #[serde(default)]
    pub threshold: Option<f64>,
    /// Start with events enabled. Default true (also settable over MQTT `enabled/set`).
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub detector: DetectorConfig,
}

fn yes() -> bool {
    true
}

fn default_node() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "vigil".to_string())
}

fn default_runtime_dir() -> PathBuf {
    PathBuf::from("/run/vigil")
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vigil")
}

/// A topic segment: non-empty, no MQTT wildcards or separators.
pub fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl CameraConfig {
    /// The configured model file (`model`, or `<state_dir>/models/<id>.safetensors`). A
    /// calibrated model (the model store's `current` pointer) takes precedence: see
    /// [`crate::store::camera_model_path`].
    pub fn model_path(&self, state_dir: &Path) -> PathBuf {
        self.model.clone().unwrap_or_else(|| {
            state_dir
                .join("models")
                .join(format!("{}.safetensors", self.id))
        })
    }
}

impl Config {
    /// Load `path` (TOML) with `VIGIL__…` environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |reason: String| ConfigError::Load {
            path: path.to_path_buf(),
            reason,
        };
        if !path.exists() {
            return Err(err("file not found".into()));
        }
        let built = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("VIGIL")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()
            .map_err(|e| err(e.to_string()))?;
        let cfg: Config = built.try_deserialize().map_err(|e| err(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse a TOML string (no environment layer) — for tests and `demo`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks that need no file, camera or network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if !valid_segment(&self.node) {
            return bad(format!(
                "node id '{}' must be letters, digits, '-' or '_'",
                self.node
            ));
        }
        if self.inference.workers == 0 || self.inference.workers > 64 {
            return bad(format!(
                "inference.workers must be in 1..=64, got {}",
                self.inference.workers
            ));
        }
        if !self.inference.backend.available() {
            return bad(format!(
                "inference.backend = {:?}: this vigil was built without it (cargo build --features {})",
                self.inference.backend.as_str(),
                self.inference.backend.as_str()
            ));
        }
        for (name, v) in [
            ("health.interval_s", self.health.interval_s),
            ("health.stall_timeout_s", self.health.stall_timeout_s),
            (
                "health.watchdog_frame_age_s",
                self.health.watchdog_frame_age_s,
            ),
        ] {
            if !v.is_finite() || v <= 0.0 {
                return bad(format!(
                    "{name} must be a positive number of seconds, got {v}"
                ));
            }
        }
        if let Err(e) = self.metrics.address() {
            return bad(e.to_string());
        }
        if self.cameras.is_empty() {
            return bad("no [[camera]] configured".into());
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.cameras {
            if !valid_segment(&c.id) {
                return bad(format!(
                    "camera id '{}' must be letters, digits, '-' or '_'",
                    c.id
                ));
            }
            if !seen.insert(c.id.clone()) {
                return bad(format!("camera id '{}' is used twice", c.id));
            }
            if let Some(t) = c.threshold {
                if !t.is_finite() {
                    return bad(format!("camera {}: threshold must be finite", c.id));
                }
            }
            c.detector
                .validate()
                .map_err(|m| ConfigError::Invalid(format!("camera {}: {m}", c.id)))?;
            c.source
                .validate()
                .map_err(|e| ConfigError::Invalid(format!("camera {}: {e}", c.id)))?;
        }
        self.calibration.validate().map_err(ConfigError::Invalid)?;
        self.mqtt
            .validate(&self.node)
            .map_err(|m| ConfigError::Invalid(format!("mqtt: {m}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses_and_documents_the_calibration_defaults() {
        let cfg = Config::from_toml(include_str!("../config/vigil.toml")).expect("parses");
        assert_eq!(cfg.calibration, CalibrationConfig::default());
        assert_eq!(cfg.runtime_dir, default_runtime_dir());
        let bad =
            include_str!("../config/vigil.toml").replace("keep_models = 5", "keep_models = 1");
        let e = Config::from_toml(&bad).expect_err("keep_models");
        assert!(e.to_string().contains("keep_models"), "{e}");
    }
}
