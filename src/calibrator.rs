//! Calibration inside the running daemon. A request (MQTT `calibrate/set` or the control
//! socket) starts one job per camera on its own OS thread: the camera's workers hand its
//! frames to the job instead of scoring them (events suspended, health `calibrating`,
//! state `calibrating: true`), the job fits and validates a candidate with a fork of the
//! daemon's backbone, writes it to the camera's model store, and only then swaps it in
//! (the first frame scored afterwards carries the new model id). On any failure the model
//! in service stays. Progress goes to the retained `calibrate/state` knob and to every
//! control-socket client waiting on the camera.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::backbone::TractBackbone;
use crate::calibrate::{calibrate, CalibStatus, CalibrateRequest, SlotFeed};
use crate::config::CalibrationConfig;
use crate::pipeline::{lock, CameraRuntime, LoadedModel, Sink};
use crate::publish::Publisher;
use crate::source::FrameSlot;
use crate::store::ModelStore;

/// How often `collecting n/N` is re-published at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Reports why a camera's capture ended for good (`None` while it runs).
pub type CaptureProbe = Box<dyn Fn() -> Option<String> + Send>;

struct Job {
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// The daemon's calibration jobs.
pub struct Calibrator {
    node: String,
    state_dir: PathBuf,
    defaults: CalibrationConfig,
    /// Forked for each job (shares the workers' optimised graph).
    backbone: Mutex<TractBackbone>,
    publisher: Option<Arc<Publisher>>,
    sink: Arc<dyn Sink>,
    jobs: Mutex<HashMap<String, Job>>,
    status: HashMap<String, watch::Sender<CalibStatus>>,
}

impl Calibrator {
    pub fn new(
        node: &str,
        state_dir: PathBuf,
        defaults: CalibrationConfig,
        backbone: TractBackbone,
        publisher: Option<Arc<Publisher>>,
        sink: Arc<dyn Sink>,
        cameras: &[String],
    ) -> Calibrator {
        let status = cameras
            .iter()
            .map(|c| (c.clone(), watch::channel(CalibStatus::Idle).0))
            .collect();
        Calibrator {
            node: node.to_string(),
            state_dir,
            defaults,
            backbone: Mutex::new(backbone),
            publisher,
            sink,
            jobs: Mutex::new(HashMap::new()),
            status,
        }
    }

    /// Publish every camera's current calibration state (`idle` at start-up).
    pub fn publish_all(&self) {
        for (cam, tx) in &self.status {
            self.publish(cam, &tx.borrow(), None);
        }
    }

    fn publish(&self, camera: &str, st: &CalibStatus, error: Option<String>) {
        if let Some(p) = &self.publisher {
            let k = crate::daemon::knob(&self.node, camera, "calibrate", st.to_json(), error);
            if let Err(e) = p.publish_knob_state(camera, &k) {
                tracing::debug!(camera, error = %e, "calibrate state not published");
            }
        }
    }

    fn set(&self, camera: &str, st: CalibStatus) {
        self.publish(camera, &st, None);
        if let Some(tx) = self.status.get(camera) {
            tx.send_replace(st);
        }
    }

    /// The current status of a camera's calibration, and a receiver of its changes.
    pub fn subscribe(&self, camera: &str) -> Option<watch::Receiver<CalibStatus>> {
        self.status.get(camera).map(watch::Sender::subscribe)
    }

    /// Refuse a request: the reason goes out on `calibrate/state` (its value unchanged).
    pub fn refuse(&self, camera: &str, reason: &str) {
        tracing::warn!(camera, reason, "calibration request refused");
        if let Some(tx) = self.status.get(camera) {
            let st = tx.borrow().clone();
            self.publish(camera, &st, Some(reason.to_string()));
        }
    }

    /// Start a calibration of `cam` from a JSON request payload. Errors (bad payload, one
    /// already running) are returned as the reason to report.
    pub fn start(
        self: &Arc<Self>,
        cam: Arc<CameraRuntime>,
        probe: CaptureProbe,
        payload: &serde_json::Value,
    ) -> Result<watch::Receiver<CalibStatus>, String> {
        let id = cam.cfg.id.clone();
        let params = CalibrateRequest::from_json(payload)
            .and_then(|r| r.params(&self.defaults))
            .map_err(|e| e.to_string())?;
        let rx = self
            .subscribe(&id)
            .ok_or_else(|| format!("unknown camera `{id}`"))?;
        let mut jobs = lock(&self.jobs);
        if let Some(j) = jobs.get(&id) {
            if !j.handle.is_finished() {
                let now = rx.borrow().clone();
                return Err(format!(
                    "a calibration of {id} is already running ({})",
                    describe(&now)
                ));
            }
        }
        if let Some(j) = jobs.remove(&id) {
            let _ = j.handle.join();
        }
        let bb = lock(&self.backbone)
            .fork()
            .map_err(|e| format!("backbone: {e}"))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let me = Arc::clone(self);
        let c2 = Arc::clone(&cancel);
        self.set(
            &id,
            CalibStatus::Collecting {
                collected: 0,
                frames: params.frames,
            },
        );
        tracing::info!(camera = %id, frames = params.frames, interval_s = params.interval.as_secs_f64(), quantile = params.quantile, "calibration started");
        let handle = std::thread::Builder::new()
            .name(format!("vigil-calib-{id}"))
            .spawn(move || me.run(cam, probe, bb, params, &c2))
            .map_err(|e| format!("cannot start the calibration thread: {e}"))?;
        jobs.insert(id, Job { cancel, handle });
        Ok(rx)
    }

    fn run(
        &self,
        cam: Arc<CameraRuntime>,
        probe: CaptureProbe,
        mut bb: TractBackbone,
        params: crate::calibrate::CalibrationParams,
        cancel: &AtomicBool,
    ) {
        let id = cam.cfg.id.clone();
        let t0 = Instant::now();
        let tap = Arc::new(FrameSlot::new());
        cam.begin_calibration(tap.clone(), self.sink.as_ref());
        let old = cam.current_model();
        let pre = old.artifact.meta.preprocessing;
        let mut feed = SlotFeed {
            slot: tap,
            ended: probe,
        };
        let mut last_pub: Option<Instant> = None;
        let mut progress = |st: &CalibStatus| {
            let publish = match st {
                CalibStatus::Collecting { collected, frames } => {
                    collected == frames || last_pub.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
                }
                _ => true,
            };
            if publish {
                last_pub = Some(Instant::now());
                self.set(&id, st.clone());
            } else if let Some(tx) = self.status.get(&id) {
                tx.send_replace(st.clone());
            }
        };
        let result = calibrate(&mut feed, &mut bb, pre, &params, cancel, &mut progress)
            .map_err(|e| (e.to_string(), e.is_refusal()))
            .and_then(|cal| {
                let store = ModelStore::new(&self.state_dir, &id);
                store
                    .import(&old.artifact, &old.path)
                    .and_then(|()| store.add(&cal.artifact, self.defaults.keep_models))
                    .map(|path| (cal, path))
                    .map_err(|e| (format!("saving the model: {e}"), false))
            });
        let status = match result {
            Ok((cal, path)) => {
                let m = &cal.artifact.meta;
                let st = CalibStatus::Done {
                    model_id: m.model_id.clone(),
                    previous_model_id: Some(old.artifact.meta.model_id.clone()),
                    threshold: m.threshold.log_density,
                    frames: cal.checks.usable,
                    duration_s: t0.elapsed().as_secs_f64(),
                };
                tracing::info!(camera = %id, old = %old.artifact.meta.model_id, new = %m.model_id, path = %path.display(), "calibrated model swapped in");
                // Swap before the frames go back to scoring: the first scored frame uses it.
                cam.swap_model(LoadedModel {
                    artifact: cal.artifact,
                    path,
                });
                *lock(&cam.threshold_override) = None;
                st
            }
            Err((reason, refused)) => {
                tracing::warn!(camera = %id, %reason, refused, model_id = %old.artifact.meta.model_id, "calibration failed: the current model keeps serving");
                CalibStatus::Failed {
                    reason,
                    refused,
                    model_id: Some(old.artifact.meta.model_id.clone()),
                }
            }
        };
        cam.end_calibration();
        self.set(&id, status);
    }

    /// Cancel running calibrations and wait for their threads (shutdown).
    pub fn shutdown(&self) {
        let jobs: Vec<(String, Job)> = lock(&self.jobs).drain().collect();
        for (_, j) in &jobs {
            j.cancel.store(true, Ordering::Relaxed);
        }
        for (id, j) in jobs {
            if j.handle.join().is_err() {
                tracing::error!(camera = %id, "calibration thread panicked");
            }
        }
    }
}

/// `collecting 12/300`, `fitting`, ... for messages.
pub fn describe(st: &CalibStatus) -> String {
    match st {
        CalibStatus::Idle => "idle".into(),
        CalibStatus::Collecting { collected, frames } => format!("collecting {collected}/{frames}"),
        CalibStatus::Fitting { frames } => format!("fitting on {frames} frames"),
        CalibStatus::Done { model_id, .. } => format!("done: model {model_id}"),
        CalibStatus::Failed { reason, .. } => format!("failed: {reason}"),
    }
}
