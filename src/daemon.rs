//! `vigil run` / `check-config`: wires config → sources → inference workers → detector →
//! MQTT, with systemd notify/watchdog, SIGHUP reload and a clean SIGTERM shutdown.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::artifact::Artifact;
use crate::backbone::{file_sha256, AnyBackbone, Backbone};
use crate::calibrator::{Calibrator, CaptureProbe};
use crate::config::{CameraConfig, Config};
use crate::control;
use crate::detector::Detector;
use crate::messages::{timestamp, Event, Health, KnobState, State, SCHEMA_HEALTH, SCHEMA_KNOB};
use crate::pipeline::{lock, spawn_workers, CameraRuntime, LoadedModel, Pipeline, Sink, Worker};
use crate::publish::{Command, Publisher};
use crate::source::{Capture, CaptureHandle, CaptureOptions, FrameSlot};
use crate::sparkplug::SparkplugNode;

/// Exit status for configuration errors (sysexits EX_CONFIG); the unit file lists it in
/// `RestartPreventExitStatus=` so systemd does not restart into the same mistake.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Debug, Error)]
pub enum DaemonError {
    /// Wrong or inconsistent configuration, missing/mismatched model or backbone.
    #[error("{0}")]
    Config(String),
    /// Anything else (I/O, broker client, threads).
    #[error("{0}")]
    Runtime(String),
}

impl DaemonError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) => EXIT_CONFIG,
            DaemonError::Runtime(_) => 1,
        }
    }
}

fn cfg_err(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Config(e.to_string())
}

/// Load one camera's model (the model store's `current` version, else the configured file)
/// and check it against the backbone in use.
pub fn load_camera_model(
    cam: &CameraConfig,
    state_dir: &Path,
    backbone: &Path,
    sha: &str,
) -> Result<LoadedModel, DaemonError> {
    let path = crate::store::camera_model_path(cam, state_dir)
        .map_err(|e| cfg_err(format!("camera {}: {e}", cam.id)))?;
    let artifact = Artifact::load(&path).map_err(|e| cfg_err(format!("camera {}: {e}", cam.id)))?;
    artifact
        .check_backbone(&path, sha, backbone)
        .map_err(|e| cfg_err(format!("camera {}: {e}", cam.id)))?;
    Ok(LoadedModel { artifact, path })
}

/// [`load_camera_model`], except that a camera with nothing to load — no model store
/// pointer, no `model` key, no file at the default path — is `None`: it has not been
/// calibrated yet and waits for its first calibration. A configured `model` that does not
/// exist, or a file that exists but is corrupt or mismatched, is still an error.
pub fn load_camera_model_if_any(
    cam: &CameraConfig,
    state_dir: &Path,
    backbone: &Path,
    sha: &str,
) -> Result<Option<LoadedModel>, DaemonError> {
    let path = crate::store::camera_model_path(cam, state_dir)
        .map_err(|e| cfg_err(format!("camera {}: {e}", cam.id)))?;
    if cam.model.is_none() && !path.exists() && path == cam.model_path(state_dir) {
        return Ok(None);
    }
    load_camera_model(cam, state_dir, backbone, sha).map(Some)
}

/// The configured `[[camera]] threshold` to run with the model `served_id`, if any. It
/// applies to the camera's configured model only: once the store's `current` pointer
/// names another version (one a calibration produced), the calibrated threshold runs and
/// the configured one is ignored, with a warning. A rollback to the configured model
/// brings it back.
pub fn configured_threshold(cam: &CameraConfig, state_dir: &Path, served_id: &str) -> Option<f64> {
    let t = cam.threshold?;
    let store = crate::store::ModelStore::new(state_dir, &cam.id);
    if matches!(store.current_id(), Ok(None)) {
        return Some(t); // no calibration yet: the configured model serves
    }
    let configured = Artifact::load(&cam.model_path(state_dir))
        .ok()
        .map(|a| a.meta.model_id);
    if configured.as_deref() == Some(served_id) {
        return Some(t);
    }
    tracing::warn!(
        camera = %cam.id,
        configured_threshold = t,
        model_id = served_id,
        "the configured threshold is ignored: the camera serves a calibrated model, whose own threshold applies (remove `threshold` from [[camera]], or roll back to the configured model to use it)"
    );
    None
}

/// Everything `check-config` verifies without opening a camera or the network.
pub struct Checked {
    pub config: Config,
    /// Per camera; `None`: not calibrated yet.
    pub models: Vec<Option<LoadedModel>>,
    pub backbone_sha: String,
}

pub fn check_config(path: &Path) -> Result<Checked, DaemonError> {
    let config = Config::load(path).map_err(cfg_err)?;
    let bb = &config.inference.backbone;
    let sha = file_sha256(bb).map_err(|e| cfg_err(format!("inference.backbone: {e}")))?;
    let mut models = Vec::new();
    for cam in &config.cameras {
        let m = load_camera_model_if_any(cam, &config.state_dir, bb, &sha)?;
        let Some(m) = m else {
            tracing::warn!(camera = %cam.id, path = %cam.model_path(&config.state_dir).display(), "camera not calibrated yet: it waits for `vigil calibrate` (or MQTT calibrate/set)");
            models.push(None);
            continue;
        };
        let pre = m.artifact.meta.preprocessing;
        if let Some(first) = models
            .iter()
            .flatten()
            .next()
            .map(|f: &LoadedModel| f.artifact.meta.preprocessing)
        {
            if first != pre {
                return Err(cfg_err(format!("camera {}: model preprocessing differs from the other cameras' (one backbone input per daemon)", cam.id)));
            }
        }
        models.push(Some(m));
    }
    Ok(Checked {
        config,
        models,
        backbone_sha: sha,
    })
}

/// [`Sink`] that publishes over MQTT.
pub struct MqttSink(pub Arc<Publisher>);

impl Sink for MqttSink {
    fn event(&self, camera: &str, event: &Event) {
        if let Err(e) = self.0.publish_event(camera, event) {
            tracing::error!(camera, event_id = %event.id, error = %e, "event not queued");
        }
    }
    fn state(&self, camera: &str, state: &State) {
        if let Err(e) = self.0.publish_state(camera, state) {
            tracing::debug!(camera, error = %e, "state not published");
        }
    }
    fn snapshot(&self, camera: &str, jpeg: Vec<u8>) {
        if let Err(e) = self.0.publish_snapshot(camera, jpeg) {
            tracing::debug!(camera, error = %e, "snapshot not published");
        }
    }
    fn health(&self, camera: &str, health: &Health) {
        if let Err(e) = self.0.publish_health(camera, health) {
            tracing::debug!(camera, error = %e, "health not published");
        }
    }
}

/// [`Sink`] that hands everything to each of several sinks (`[mqtt] profile = "both"`).
pub struct FanoutSink(pub Vec<Arc<dyn Sink>>);

impl Sink for FanoutSink {
    fn event(&self, camera: &str, event: &Event) {
        self.0.iter().for_each(|s| s.event(camera, event));
    }
    fn state(&self, camera: &str, state: &State) {
        self.0.iter().for_each(|s| s.state(camera, state));
    }
    fn snapshot(&self, camera: &str, jpeg: Vec<u8>) {
        if let Some((last, rest)) = self.0.split_last() {
            rest.iter().for_each(|s| s.snapshot(camera, jpeg.clone()));
            last.snapshot(camera, jpeg);
        }
    }
    fn health(&self, camera: &str, health: &Health) {
        self.0.iter().for_each(|s| s.health(camera, health));
    }
}

/// The next command of an optional channel (never ready when there is none).
async fn next_command(rx: &mut Option<tokio::sync::mpsc::Receiver<Command>>) -> Option<Command> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A running pipeline: captures feeding slots, workers scoring them.
pub struct Running {
    pub pipeline: Arc<Pipeline>,
    captures: Vec<CaptureHandle>,
    workers: Vec<Worker>,
    pub started: Instant,
    /// SHA-256 of the backbone the workers run (a reload cannot change it).
    pub backbone_sha: String,
    /// A fork of the workers' backbone for calibrations (taken by the daemon).
    pub spare_backbone: Option<AnyBackbone>,
}

/// Start sources and workers for `config` with already loaded models (`None`: the camera
/// waits for its first calibration).
pub fn start_pipeline(
    config: &Config,
    models: Vec<Option<LoadedModel>>,
    sink: Arc<dyn Sink>,
    snapshot_topic: &dyn Fn(&str) -> String,
    record_timings: bool,
) -> Result<Running, DaemonError> {
    let size = models.iter().flatten().next().map(|m| {
        (
            m.artifact.meta.preprocessing.width,
            m.artifact.meta.preprocessing.height,
        )
    });
    let first = AnyBackbone::load(
        &config.inference.backend_options(),
        &config.inference.backbone,
        1,
        size,
    )
    .map_err(|e| cfg_err(format!("inference.backbone: {e}")))?;
    // The engine actually running (tract after a wgpu fallback).
    tracing::info!(backend = first.kind().as_str(), "backbone engine");
    let mut backbones = Vec::with_capacity(config.inference.workers);
    for _ in 1..config.inference.workers {
        backbones.push(
            first
                .fork()
                .map_err(|e| DaemonError::Runtime(e.to_string()))?,
        );
    }
    let backbone_sha = first.info().sha256.clone();
    let spare_backbone = Some(
        first
            .fork()
            .map_err(|e| DaemonError::Runtime(e.to_string()))?,
    );
    backbones.push(first);
    let mut cameras = Vec::new();
    for (cam, model) in config.cameras.iter().zip(models) {
        let slot = Arc::new(FrameSlot::new());
        let threshold = model
            .as_ref()
            .and_then(|m| configured_threshold(cam, &config.state_dir, &m.artifact.meta.model_id));
        let rt = CameraRuntime::new(
            cam.clone(),
            &config.node,
            snapshot_topic(&cam.id),
            model,
            slot,
        );
        *lock(&rt.threshold_override) = threshold;
        *lock(&rt.configured_threshold) = cam.threshold;
        cameras.push(Arc::new(rt));
    }
    let pipeline = Arc::new(Pipeline {
        node: config.node.clone(),
        cameras,
        sink,
        stop: std::sync::atomic::AtomicBool::new(false),
        epoch: Instant::now(),
        timings: record_timings.then(|| std::sync::Mutex::new(Vec::new())),
    });
    let opts = CaptureOptions {
        stall_timeout: Duration::from_secs_f64(config.health.stall_timeout_s),
        ..CaptureOptions::default()
    };
    let captures = pipeline
        .cameras
        .iter()
        .map(|c| {
            Capture::spawn(c.cfg.id.clone(), c.cfg.source.clone(), opts, c.slot.clone())
                .map_err(|e| cfg_err(format!("camera {}: {e}", c.cfg.id)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The ONNX parse and graph optimisation are done: their garbage leaves the process.
    crate::mem::release_free_heap();
    let workers = spawn_workers(&pipeline, backbones);
    Ok(Running {
        pipeline,
        captures,
        workers,
        started: Instant::now(),
        backbone_sha,
        spare_backbone,
    })
}

impl Running {
    /// Why a camera's capture has ended for good, for calibrations waiting on its frames.
    pub fn capture_probe(&self, camera: &str) -> Option<CaptureProbe> {
        self.captures
            .iter()
            .find(|c| c.camera() == camera)
            .map(|c| Box::new(c.shared_health()) as CaptureProbe)
    }

    /// Health of each camera, as published.
    pub fn health(&self, interval: Duration, last_scored: &mut [u64]) -> Vec<Health> {
        let now = std::time::SystemTime::now();
        let (ts, ts_ms) = timestamp(now);
        self.pipeline
            .cameras
            .iter()
            .zip(&self.captures)
            .enumerate()
            .map(|(i, (c, cap))| {
                let h = cap.health();
                let scored = c.counters.scored.load(Ordering::Relaxed);
                let fps = (scored.saturating_sub(last_scored[i])) as f64
                    / interval.as_secs_f64().max(1e-3);
                last_scored[i] = scored;
                let state = crate::metrics::camera_state(c, &h).to_string();
                Health {
                    schema: SCHEMA_HEALTH.to_string(),
                    node: self.pipeline.node.clone(),
                    camera: c.cfg.id.clone(),
                    ts: ts.clone(),
                    ts_ms,
                    state,
                    fps,
                    last_frame_ts: h.last_frame_at.map(|t| timestamp(t).0),
                    frames_captured: c.slot.captured(),
                    frames_scored: scored,
                    dropped_frames: c.slot.dropped(),
                    error: h.last_error.clone(),
                }
            })
            .collect()
    }

    /// Capture-health probes, one per camera in `pipeline.cameras` order (for `/metrics`).
    pub fn health_probes(&self) -> Vec<crate::metrics::HealthProbe> {
        self.captures
            .iter()
            .map(|c| Box::new(c.health_probe()) as crate::metrics::HealthProbe)
            .collect()
    }

    /// Stop captures and workers, close open events.
    pub fn stop(self) {
        self.pipeline.stop.store(true, Ordering::Relaxed);
        for c in &self.pipeline.cameras {
            c.slot.close();
        }
        for cap in self.captures {
            cap.stop();
            cap.join();
        }
        for w in self.workers {
            let _ = w.handle.join();
        }
        for c in &self.pipeline.cameras {
            c.end_open_event(self.pipeline.sink.as_ref());
        }
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    let _ = sd_notify::notify(states);
}

pub(crate) fn knob(
    node: &str,
    camera: &str,
    name: &str,
    value: serde_json::Value,
    error: Option<String>,
) -> KnobState {
    let (ts, ts_ms) = timestamp(std::time::SystemTime::now());
    KnobState {
        schema: SCHEMA_KNOB.to_string(),
        node: node.to_string(),
        camera: camera.to_string(),
        ts,
        ts_ms,
        knob: name.to_string(),
        value,
        error,
    }
}

/// Apply one remote command.
fn handle_command(
    cmd: Command,
    running: &Running,
    publisher: Option<&Publisher>,
    calibrator: &Arc<Calibrator>,
) {
    let p = &running.pipeline;
    let find = |id: &str| p.cameras.iter().find(|c| c.cfg.id == id).cloned();
    match cmd {
        Command::SetEnabled { camera, enabled } => {
            if let Some(c) = find(&camera) {
                c.enabled.store(enabled, Ordering::Relaxed);
                if !enabled {
                    c.end_open_event(p.sink.as_ref());
                }
                tracing::info!(camera = %camera, enabled, "enabled set remotely");
                if let Some(publisher) = publisher {
                    let _ = publisher.publish_knob_state(
                        &camera,
                        &knob(&p.node, &camera, "enabled", enabled.into(), None),
                    );
                }
            }
        }
        Command::SetThreshold {
            camera,
            log_density,
        } => {
            if let Some(c) = find(&camera) {
                *lock(&c.threshold_override) = Some(log_density);
                tracing::info!(camera = %camera, log_density, "threshold set remotely");
                if let Some(publisher) = publisher {
                    let _ = publisher.publish_knob_state(
                        &camera,
                        &knob(&p.node, &camera, "threshold", log_density.into(), None),
                    );
                }
            }
        }
        Command::Calibrate { camera, payload } => {
            let (c, probe) = match (find(&camera), running.capture_probe(&camera)) {
                (Some(c), Some(probe)) => (c, probe),
                // The MQTT layer only routes configured cameras; one without a running
                // capture (disabled, or its source failed to start) has no frames to give.
                (Some(_), None) => {
                    calibrator.refuse(
                        &camera,
                        "the camera has no running capture to calibrate from",
                    );
                    return;
                }
                (None, _) => return,
            };
            if let Err(reason) = calibrator.start(c, probe, &payload) {
                calibrator.refuse(&camera, &reason);
            }
        }
    }
}

/// Answer one control-socket request.
fn handle_control(
    inc: control::Incoming,
    running: &Running,
    calibrator: &Arc<Calibrator>,
    config: &Config,
) {
    let p = &running.pipeline;
    let find = |id: &str| p.cameras.iter().find(|c| c.cfg.id == id).cloned();
    let unknown =
        |id: &str| control::Reply::Once(control::error_line(&format!("no camera `{id}`")));
    let reply = match inc.request {
        control::Request::Calibrate {
            camera,
            frames,
            interval_s,
            quantile,
        } => match (find(&camera), running.capture_probe(&camera)) {
            (Some(c), Some(probe)) => {
                let req = crate::calibrate::CalibrateRequest {
                    frames,
                    interval_s,
                    quantile,
                };
                let payload = serde_json::to_value(&req).unwrap_or(serde_json::Value::Null);
                match calibrator.start(c, probe, &payload) {
                    Ok(rx) => control::Reply::Calibration(rx),
                    Err(reason) => {
                        calibrator.refuse(&camera, &reason);
                        control::Reply::Once(control::error_line(&reason))
                    }
                }
            }
            _ => unknown(&camera),
        },
        control::Request::Reload { camera } => match find(&camera) {
            None => unknown(&camera),
            Some(c) if c.is_calibrating() => control::Reply::Once(control::error_line(&format!(
                "camera {camera} is calibrating: try again when it is done"
            ))),
            Some(c) => {
                let old = c.current_model();
                let old_pre = old.as_ref().map(|o| o.artifact.meta.preprocessing);
                let old_id = old.as_ref().map(|o| o.artifact.meta.model_id.clone());
                match load_camera_model(
                    &c.cfg,
                    &config.state_dir,
                    &config.inference.backbone,
                    &running.backbone_sha,
                ) {
                    Ok(m) if old_pre.is_some_and(|p| m.artifact.meta.preprocessing != p) => {
                        control::Reply::Once(control::error_line(&format!(
                            "{}: preprocessing differs from the running one's (restart vigil)",
                            m.path.display()
                        )))
                    }
                    Ok(m) => {
                        let id = m.artifact.meta.model_id.clone();
                        tracing::info!(camera = %camera, old = old_id.as_deref().unwrap_or("none"), new = %id, "model reloaded from the store");
                        let mut cfg = c.cfg.clone();
                        cfg.threshold = *lock(&c.configured_threshold);
                        *lock(&c.threshold_override) =
                            configured_threshold(&cfg, &config.state_dir, &id);
                        c.swap_model(m);
                        control::Reply::Once(serde_json::json!({
                            "ok": true,
                            "camera": camera,
                            "model_id": id,
                            "previous_model_id": old_id,
                        }))
                    }
                    Err(e) => control::Reply::Once(control::error_line(&e.to_string())),
                }
            }
        },
        control::Request::Rollback { camera } => match find(&camera) {
            None => unknown(&camera),
            Some(c) if c.is_calibrating() => control::Reply::Once(control::error_line(&format!(
                "camera {camera} is calibrating: try again when it is done"
            ))),
            Some(c) => control::Reply::Once(
                rollback_camera(&c, config, &running.backbone_sha)
                    .unwrap_or_else(|e| control::error_line(&e)),
            ),
        },
        control::Request::Status => {
            let cams: serde_json::Map<String, serde_json::Value> = p
                .cameras
                .iter()
                .map(|c| {
                    let cal = calibrator
                        .subscribe(&c.cfg.id)
                        .map(|rx| rx.borrow().to_json())
                        .unwrap_or(serde_json::Value::Null);
                    (
                        c.cfg.id.clone(),
                        serde_json::json!({
                            "model_id": c.current_model().map(|m| m.artifact.meta.model_id.clone()),
                            "calibration": cal,
                        }),
                    )
                })
                .collect();
            control::Reply::Once(serde_json::json!({"ok": true, "cameras": cams}))
        }
    };
    let _ = inc.reply.send(reply);
}

/// Put a camera's previous stored model in service: under the store's lock, the model is
/// loaded and checked first, then the pointer moves and the model is swapped, so the store
/// and the daemon never disagree. The caller checked that the camera is not calibrating
/// (calibrations start on the same task).
fn rollback_camera(
    c: &CameraRuntime,
    config: &Config,
    backbone_sha: &str,
) -> Result<serde_json::Value, String> {
    let camera = &c.cfg.id;
    let store = crate::store::ModelStore::new(&config.state_dir, camera);
    let old = c
        .current_model()
        .ok_or_else(|| format!("camera {camera} has no model yet: nothing to roll back"))?;
    let old_id = old.artifact.meta.model_id.clone();
    let _lock = store.lock().map_err(|e| e.to_string())?;
    let prev = store.previous(Some(&old_id)).map_err(|e| e.to_string())?;
    let artifact = Artifact::load(&prev.path).map_err(|e| e.to_string())?;
    artifact
        .check_backbone(&prev.path, backbone_sha, &config.inference.backbone)
        .map_err(|e| e.to_string())?;
    if artifact.meta.preprocessing != old.artifact.meta.preprocessing {
        return Err(format!(
            "{}: preprocessing differs from the running one's (restart vigil)",
            prev.path.display()
        ));
    }
    store.set_current(&prev.id).map_err(|e| e.to_string())?;
    tracing::info!(camera = %camera, old = %old_id, new = %prev.id, "rolled back to the previous model");
    let mut cfg = c.cfg.clone();
    cfg.threshold = *lock(&c.configured_threshold);
    *lock(&c.threshold_override) = configured_threshold(&cfg, &config.state_dir, &prev.id);
    c.swap_model(LoadedModel {
        artifact,
        path: prev.path.clone(),
    });
    Ok(serde_json::json!({
        "ok": true,
        "camera": camera,
        "model_id": prev.id,
        "previous_model_id": old_id,
        "created": prev.created,
    }))
}

/// SIGHUP: re-read the file; swap models, thresholds, enabled flags and detector settings
/// in place. Sources, workers and MQTT settings need a restart (logged).
fn reload(path: &Path, running: &Running) {
    let checked = match check_config(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: keeping the running configuration");
            return;
        }
    };
    if checked.backbone_sha != running.backbone_sha {
        tracing::error!(
            running = %running.backbone_sha,
            configured = %checked.backbone_sha,
            "reload refused: the backbone changed (restart vigil to switch backbones)"
        );
        return;
    }
    let p = &running.pipeline;
    for (cam, model) in checked.config.cameras.iter().zip(checked.models) {
        let Some(rt) = p.cameras.iter().find(|c| c.cfg.id == cam.id) else {
            tracing::warn!(camera = %cam.id, "new camera in the configuration: restart vigil to start it");
            continue;
        };
        if rt.is_calibrating() {
            // Its calibration swaps the model and threshold when it ends: reloading now
            // would race it (as the control socket's reload refuses to).
            tracing::warn!(camera = %cam.id, "camera is calibrating: its configuration is not reloaded (send SIGHUP again when the calibration is done)");
            continue;
        }
        if rt.cfg.source != cam.source {
            tracing::warn!(camera = %cam.id, "source changed: restart vigil to apply");
        }
        let old_id = rt.current_model().map(|m| m.artifact.meta.model_id.clone());
        match model {
            Some(model) if old_id.as_deref() != Some(model.artifact.meta.model_id.as_str()) => {
                tracing::info!(camera = %cam.id, old = old_id.as_deref().unwrap_or("none"), new = %model.artifact.meta.model_id, "model swapped");
                rt.swap_model(model);
            }
            Some(_) => {}
            None if old_id.is_some() => {
                tracing::warn!(camera = %cam.id, "its model file is gone: the loaded model keeps serving");
            }
            None => {}
        }
        if let Some(m) = rt.current_model() {
            *lock(&rt.threshold_override) =
                configured_threshold(cam, &checked.config.state_dir, &m.artifact.meta.model_id);
        }
        *lock(&rt.configured_threshold) = cam.threshold;
        rt.enabled.store(cam.enabled, Ordering::Relaxed);
        if rt.cfg.detector != cam.detector {
            let topic = format!(
                "{}/{}/{}/snapshot",
                checked.config.mqtt.prefix, p.node, cam.id
            );
            rt.set_detector(
                Detector::new(cam.detector.clone(), &p.node, &cam.id, topic),
                p.sink.as_ref(),
            );
        }
    }
    tracing::info!(path = %path.display(), "configuration reloaded");
}

/// `vigil run --config FILE`.
pub fn run(path: &Path) -> Result<(), DaemonError> {
    let Checked { config, models, .. } = check_config(path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("vigil-io")
        .build()
        .map_err(|e| DaemonError::Runtime(format!("tokio runtime: {e}")))?;
    rt.block_on(serve(Some(path.to_path_buf()), config, models, None))
}

/// Serve until SIGTERM/SIGINT (or `deadline`). `path` enables SIGHUP reloads.
pub async fn serve(
    path: Option<PathBuf>,
    config: Config,
    models: Vec<Option<LoadedModel>>,
    deadline: Option<Duration>,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let ids: Vec<String> = config.cameras.iter().map(|c| c.id.clone()).collect();
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        DaemonError::Runtime(format!("state_dir {}: {e}", config.state_dir.display()))
    })?;
    let profile = config.mqtt.profile;
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    let (publisher, mut commands) = if profile.plain() {
        let (p, rx) = Publisher::start(&config.mqtt, &config.node, ids.clone(), &config.state_dir)
            .map_err(|e| cfg_err(format!("mqtt: {e}")))?;
        let p = Arc::new(p);
        sinks.push(Arc::new(MqttSink(p.clone())));
        (Some(p), Some(rx))
    } else {
        (None, None)
    };
    let (sparkplug, mut sp_commands) = if profile.sparkplug() {
        let (n, rx) = SparkplugNode::start(
            &config.mqtt,
            &config.mqtt.sparkplug,
            &config.node,
            ids,
            &config.state_dir,
        )
        .map_err(|e| cfg_err(format!("mqtt.sparkplug: {e}")))?;
        let n = Arc::new(n);
        sinks.push(n.clone());
        (Some(n), Some(rx))
    } else {
        (None, None)
    };
    let sink: Arc<dyn Sink> = match sinks.len() {
        1 => sinks.remove(0),
        _ => Arc::new(FanoutSink(sinks)),
    };
    let prefix = config.mqtt.prefix.clone();
    let node = config.node.clone();
    let topic = move |cam: &str| format!("{prefix}/{node}/{cam}/snapshot");
    let mut running = start_pipeline(&config, models, sink.clone(), &topic, false)?;
    let spare = running
        .spare_backbone
        .take()
        .ok_or_else(|| DaemonError::Runtime("no backbone for calibrations".into()))?;
    let cam_ids: Vec<String> = config.cameras.iter().map(|c| c.id.clone()).collect();
    let calibrator = Arc::new(Calibrator::new(
        &config.node,
        config.state_dir.clone(),
        config.calibration.clone(),
        spare,
        publisher.clone(),
        sink.clone(),
        &cam_ids,
    ));
    calibrator.publish_all();
    let metrics = if config.metrics.enabled {
        let listener = crate::metrics::bind(&config.metrics)
            .await
            .map_err(|e| DaemonError::Runtime(e.to_string()))?;
        let registry = Arc::new(crate::metrics::registry(
            running.pipeline.clone(),
            running.health_probes(),
            publisher.as_deref().cloned(),
        ));
        tracing::info!(listen = %config.metrics.listen, "serving Prometheus metrics at /metrics");
        Some(tokio::spawn(crate::metrics::serve(listener, registry)))
    } else {
        None
    };
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel(16);
    let socket = control::socket_path(&config.runtime_dir);
    let listener = match control::listen(&socket, ctl_tx.clone()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!(error = %e, "no control socket: `vigil calibrate` and `vigil model rollback` cannot reach this daemon (MQTT calibrate/set still works)");
            None
        }
    };

    let mut term =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let interval = Duration::from_secs_f64(config.health.interval_s);
    let mut health_tick = tokio::time::interval(interval);
    let wd = sd_notify::watchdog_enabled().unwrap_or(Duration::from_secs(3600));
    let mut wd_tick = tokio::time::interval((wd / 3).max(Duration::from_millis(200)));
    let max_age = Duration::from_secs_f64(config.health.watchdog_frame_age_s);
    let mut last_scored = vec![0u64; running.pipeline.cameras.len()];
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("started, waiting for frames"),
    ]);
    tracing::info!(
        cameras = running.pipeline.cameras.len(),
        workers = config.inference.workers,
        "vigil running"
    );
    let stop_at = tokio::time::sleep(deadline.unwrap_or(Duration::from_secs(u64::from(u32::MAX))));
    tokio::pin!(stop_at);
    loop {
        tokio::select! {
            _ = &mut stop_at => { tracing::info!("demo duration reached: shutting down"); break; }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                if let Some(path) = &path {
                    notify(&[sd_notify::NotifyState::Reloading]);
                    reload(path, &running);
                    notify(&[sd_notify::NotifyState::Ready]);
                }
            }
            Some(cmd) = next_command(&mut commands) => handle_command(cmd, &running, publisher.as_deref(), &calibrator),
            Some(cmd) = next_command(&mut sp_commands) => handle_command(cmd, &running, publisher.as_deref(), &calibrator),
            Some(inc) = ctl_rx.recv() => handle_control(inc, &running, &calibrator, &config),
            _ = health_tick.tick() => {
                // Freed decode/JPEG/JSON buffers of the last interval go back to the OS
                // (glibc keeps fragments resident otherwise: RSS creeps for hours).
                crate::mem::release_free_heap();
                for h in running.health(interval, &mut last_scored) {
                    sink.health(&h.camera, &h);
                }
                let status = running.pipeline.cameras.iter().map(|c| {
                    let last = *lock(&c.last_score);
                    format!("{}: {} frames, last score {}", c.cfg.id, c.counters.scored.load(Ordering::Relaxed),
                        last.map(|(_, s)| format!("{s:.3}")).unwrap_or_else(|| "-".into()))
                }).collect::<Vec<_>>().join("; ");
                notify(&[sd_notify::NotifyState::Status(&status)]);
            }
            _ = wd_tick.tick() => {
                // Feed the watchdog only while frames flow through the workers (scored, or
                // handed to a calibration).
                if running.pipeline.last_frame_age().is_some_and(|a| a <= max_age) {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(h) = metrics {
        h.abort();
        let _ = h.await;
    }
    if let Some(h) = listener {
        h.abort();
        let _ = std::fs::remove_file(&socket);
    }
    drop(ctl_tx);
    let pipeline = running.pipeline.clone();
    let cal = calibrator.clone();
    tokio::task::spawn_blocking(move || {
        cal.shutdown();
        running.stop()
    })
    .await
    .map_err(|e| DaemonError::Runtime(e.to_string()))?;
    drop(pipeline);
    drop(calibrator);
    drop(sink);
    if let Some(publisher) = publisher {
        match Arc::try_unwrap(publisher) {
            Ok(p) => p.shutdown().await,
            Err(_) => tracing::warn!("publisher still shared at shutdown; outbox kept on disk"),
        }
    }
    if let Some(node) = sparkplug {
        match Arc::try_unwrap(node) {
            Ok(n) => n.shutdown().await,
            Err(_) => tracing::warn!("sparkplug node still shared at shutdown; no explicit NDEATH (the broker sends the Will)"),
        }
    }
    Ok(())
}
