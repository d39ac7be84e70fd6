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

use crate::backbone::AnyBackbone;
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
    backbone: Mutex<AnyBackbone>,
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
        backbone: AnyBackbone,
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
            // A job that published its end is over even if its thread is still unwinding
            // (joined just below): a client that saw `done`/`failed` may start the next one.
            let now = rx.borrow().clone();
            if !j.handle.is_finished() && !now.is_terminal() {
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
        // The camera's frames go to the job from now on, before `start` returns: a reload
        // or rollback arriving next sees the camera calibrating.
        let tap = Arc::new(FrameSlot::new());
        cam.begin_calibration(tap.clone(), self.sink.as_ref());
        // From here on the guard gives the frames back and reports `failed` unless the job
        // reports its own end (also when the thread cannot start, or panics).
        let guard = JobGuard {
            calibrator: Arc::clone(self),
            cam: Arc::clone(&cam),
            model_id: cam
                .current_model()
                .map(|m| m.artifact.meta.model_id.clone()),
            finished: false,
        };
        let me = Arc::clone(self);
        let c2 = Arc::clone(&cancel);
        // The job waits for `go` so that `collecting 0/N` is published before its progress.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let frames = params.frames;
        let interval_s = params.interval.as_secs_f64();
        let quantile = params.quantile;
        let handle = std::thread::Builder::new()
            .name(format!("vigil-calib-{id}"))
            .spawn(move || {
                if go_rx.recv().is_ok() {
                    me.run(guard, tap, probe, bb, params, &c2);
                }
            })
            .map_err(|e| format!("cannot start the calibration thread: {e}"))?;
        self.set(
            &id,
            CalibStatus::Collecting {
                collected: 0,
                frames,
            },
        );
        tracing::info!(camera = %id, frames, interval_s, quantile, "calibration started");
        let _ = go_tx.send(());
        jobs.insert(id, Job { cancel, handle });
        Ok(rx)
    }

    fn run(
        &self,
        mut guard: JobGuard,
        tap: Arc<FrameSlot>,
        probe: CaptureProbe,
        mut bb: AnyBackbone,
        mut params: crate::calibrate::CalibrationParams,
        cancel: &AtomicBool,
    ) {
        let cam = Arc::clone(&guard.cam);
        let id = cam.cfg.id.clone();
        let t0 = Instant::now();
        let old = cam.current_model();
        let old_id = old.as_ref().map(|m| m.artifact.meta.model_id.clone());
        let pre = match &old {
            // Same preprocessing, same backbone, same feature preset as the model it
            // replaces.
            Some(old) => {
                params.features =
                    crate::preset::FeaturePreset::from_artifact_name(&old.artifact.meta.features);
                old.artifact.meta.preprocessing
            }
            // The camera's first model: the preset of the daemon's backbone.
            None => {
                let info = crate::backbone::Backbone::info(&bb);
                params.features = crate::preset::FeaturePreset::for_backbone(&info.path);
                crate::preprocess::PreprocessConfig {
                    normalization: params.features.normalization(),
                    ..crate::preprocess::PreprocessConfig::imagenet(
                        info.input_width,
                        info.input_height,
                    )
                }
            }
        };
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
                old.as_ref()
                    .map_or(Ok(()), |old| store.import(&old.artifact, &old.path))
                    .and_then(|()| store.add(&cal.artifact, self.defaults.keep_models))
                    .map(|path| (cal, path))
                    .map_err(|e| (format!("saving the model: {e}"), false))
            });
        // The fit's feature matrices and hold-out scores are freed: give the pages back.
        crate::mem::release_free_heap();
        let status = match result {
            Ok((cal, path)) => {
                let m = &cal.artifact.meta;
                let st = CalibStatus::Done {
                    model_id: m.model_id.clone(),
                    previous_model_id: old_id.clone(),
                    threshold: m.threshold.log_density,
                    frames: cal.checks.usable,
                    duration_s: t0.elapsed().as_secs_f64(),
                };
                tracing::info!(camera = %id, old = old_id.as_deref().unwrap_or("none"), new = %m.model_id, path = %path.display(), "calibrated model swapped in");
                // Swap before the frames go back to scoring: the first scored frame uses it.
                cam.swap_model(LoadedModel {
                    artifact: cal.artifact,
                    path,
                });
                *lock(&cam.threshold_override) = None;
                st
            }
            Err((reason, refused)) => {
                tracing::warn!(camera = %id, %reason, refused, model_id = old_id.as_deref().unwrap_or("none"), "calibration failed: the current model keeps serving");
                CalibStatus::Failed {
                    reason,
                    refused,
                    model_id: old_id.clone(),
                }
            }
        };
        guard.finished = true;
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

/// Ends a job that did not report its own end (its thread panicked, or never started):
/// the camera's frames go back to scoring and `calibrate/state` says `failed`.
struct JobGuard {
    calibrator: Arc<Calibrator>,
    cam: Arc<CameraRuntime>,
    /// The model in service when the job started (it keeps serving; `None`: the camera
    /// had none).
    model_id: Option<String>,
    finished: bool,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let id = &self.cam.cfg.id;
        tracing::error!(camera = %id, "calibration ended without a result (internal error): the current model keeps serving");
        self.cam.end_calibration();
        self.calibrator.set(
            id,
            CalibStatus::Failed {
                reason: "internal error: the calibration ended without a result".into(),
                refused: false,
                model_id: self.model_id.clone(),
            },
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::Backbone;
    use crate::messages::{Event, Health, State};

    struct NullSink;
    impl Sink for NullSink {
        fn event(&self, _: &str, _: &Event) {}
        fn state(&self, _: &str, _: &State) {}
        fn snapshot(&self, _: &str, _: Vec<u8>) {}
        fn health(&self, _: &str, _: &Health) {}
    }

    /// A camera serving a small model fitted on random features, and a calibrator.
    fn camera_and_calibrator(state_dir: &std::path::Path) -> (Arc<CameraRuntime>, Arc<Calibrator>) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(crate::backbone::DEFAULT_BACKBONE);
        let bb = crate::backbone::AnyBackbone::from(
            crate::backbone::TractBackbone::load(&path, 1, None).expect("backbone"),
        );
        let dim = bb.info().feature_dim;
        let n = 40;
        let feats = crate::store::tests::noise(1, n * dim);
        let cfg = crate::model::FitConfig::default();
        let th = crate::fit::ThresholdConfig {
            holdout: 0.2,
            quantile: 0.99,
        };
        let (m, t, qs) = crate::fit::fit_with_threshold(&feats, n, dim, &cfg, &th).expect("fit");
        let pre = crate::preprocess::PreprocessConfig::imagenet(224, 224);
        let artifact = crate::fit::make_artifact(m, t, qs, bb.info(), pre, &cfg, n);
        let cam_cfg: crate::config::CameraConfig =
            toml::from_str("id = \"cam1\"\n[source]\ntype = \"synthetic\"\n").expect("camera");
        let sink: Arc<dyn Sink> = Arc::new(NullSink);
        let cam = Arc::new(CameraRuntime::new(
            cam_cfg,
            "n",
            "vigil/n/cam1/snapshot".into(),
            Some(LoadedModel {
                artifact,
                path: state_dir.join("m.safetensors"),
            }),
            Arc::new(FrameSlot::new()),
        ));
        let cal = Arc::new(Calibrator::new(
            "n",
            state_dir.to_path_buf(),
            CalibrationConfig::default(),
            bb,
            None,
            sink,
            &["cam1".to_string()],
        ));
        (cam, cal)
    }

    #[test]
    fn a_panicking_calibration_gives_the_camera_back_and_reports_failed() {
        let dir = tempfile::tempdir().expect("tmp");
        let (cam, cal) = camera_and_calibrator(dir.path());
        // No frame ever arrives: the feed asks the probe, which panics inside the job.
        let probe: CaptureProbe = Box::new(|| panic!("injected fault in the calibration thread"));
        let mut rx = cal
            .start(cam.clone(), probe, &serde_json::json!({"frames": 50}))
            .expect("started");
        assert!(
            cam.is_calibrating(),
            "the camera is calibrating as soon as start() returns"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("rt");
        let end = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                rx.wait_for(CalibStatus::is_terminal),
            )
            .await
            .expect("a terminal state within 30 s")
            .expect("status channel open")
            .clone()
        });
        match end {
            CalibStatus::Failed {
                reason,
                refused,
                model_id,
            } => {
                assert!(reason.contains("internal error"), "{reason}");
                assert!(!refused);
                assert_eq!(
                    model_id,
                    cam.current_model()
                        .map(|m| m.artifact.meta.model_id.clone())
                );
            }
            other => panic!("expected failed, got {other:?}"),
        }
        assert!(!cam.is_calibrating(), "frames go back to scoring");
        // The camera can be calibrated again (the dead job does not block it).
        let probe: CaptureProbe = Box::new(|| Some("capture stopped".into()));
        cal.start(cam.clone(), probe, &serde_json::Value::Null)
            .expect("a new calibration starts");
        cal.shutdown();
        assert!(!cam.is_calibrating());
    }
}
