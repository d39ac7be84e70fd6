//! The frame pipeline shared by `run`, `demo` and `bench`: per-camera state (slot, model,
//! detector, counters) and the inference workers (dedicated OS threads, one backbone each),
//! publishing through a [`Sink`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use image::ImageEncoder;

use crate::artifact::Artifact;
use crate::backbone::{AnyBackbone, Backbone};
use crate::config::CameraConfig;
use crate::detector::{Detector, Observation};
use crate::frame::{Frame, Pixels};
use crate::messages::{timestamp, Event, Health, State, SCHEMA_STATE};
use crate::model::Workspace;
use crate::preprocess::{Preprocessor, RgbF32};
use crate::source::FrameSlot;

/// Where the pipeline's output goes (MQTT in the daemon, memory in tests and `bench`).
pub trait Sink: Send + Sync {
    fn event(&self, camera: &str, event: &Event);
    /// Called for every scored frame: the sink rate-limits (the MQTT publisher sends on
    /// change and every `state_interval_s`; Sparkplug reports by exception).
    fn state(&self, camera: &str, state: &State);
    fn snapshot(&self, camera: &str, jpeg: Vec<u8>);
    fn health(&self, camera: &str, health: &Health);
}

/// A model in service for one camera.
#[derive(Debug)]
pub struct LoadedModel {
    pub artifact: Artifact,
    pub path: std::path::PathBuf,
}

/// Per-stage latencies of one frame, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub decode_us: u64,
    pub preprocess_us: u64,
    pub backbone_us: u64,
    pub score_us: u64,
    pub publish_us: u64,
    /// Capture → verdict published.
    pub total_us: u64,
}

#[derive(Debug)]
pub struct CameraCounters {
    pub scored: AtomicU64,
    pub errors: AtomicU64,
    /// Event messages (start, update, end).
    pub events: AtomicU64,
    /// Anomaly events started.
    pub anomalies: AtomicU64,
    /// Backbone time per scored frame (for `/metrics`).
    pub inference_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Capture → verdict published, per scored frame (for `/metrics`).
    pub frame_latency_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Milliseconds since the pipeline's epoch of the last scored frame (0 = never).
    pub last_scored_ms: AtomicU64,
    /// Milliseconds since the pipeline's epoch of the last frame handed to a calibration
    /// (0 = never): the pipeline is alive while a camera calibrates.
    pub last_calibration_frame_ms: AtomicU64,
    /// Milliseconds since the pipeline's epoch of the last frame taken while the camera
    /// had no model yet (0 = never): alive while it waits for its first calibration.
    pub last_uncalibrated_frame_ms: AtomicU64,
}

impl Default for CameraCounters {
    fn default() -> Self {
        CameraCounters {
            scored: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            events: AtomicU64::new(0),
            anomalies: AtomicU64::new(0),
            inference_seconds: crate::metrics::latency_histogram(),
            frame_latency_seconds: crate::metrics::latency_histogram(),
            last_scored_ms: AtomicU64::new(0),
            last_calibration_frame_ms: AtomicU64::new(0),
            last_uncalibrated_frame_ms: AtomicU64::new(0),
        }
    }
}

struct DetectorState {
    det: Detector,
    last_seq: Option<u64>,
    /// The last state published (re-published with `calibrating` set when a calibration
    /// starts).
    last_state: Option<State>,
}

/// One camera's runtime state.
pub struct CameraRuntime {
    pub cfg: CameraConfig,
    pub slot: Arc<FrameSlot>,
    /// The model in service; `None` while the camera waits for its first calibration
    /// (frames are taken and dropped, health says `uncalibrated`).
    pub model: RwLock<Option<Arc<LoadedModel>>>,
    pub threshold_override: Mutex<Option<f64>>,
    /// `[[camera]] threshold` as last (re)loaded: it applies to the configured model only
    /// (see [`crate::daemon::configured_threshold`]).
    pub configured_threshold: Mutex<Option<f64>>,
    pub enabled: AtomicBool,
    pub counters: CameraCounters,
    detector: Mutex<DetectorState>,
    /// Latest (log-density, score) for STATUS= lines.
    pub last_score: Mutex<Option<(f64, f64)>>,
    /// While a calibration runs: where the workers put this camera's frames instead of
    /// scoring them.
    calibration_tap: Mutex<Option<Arc<FrameSlot>>>,
}

impl CameraRuntime {
    pub fn new(
        cfg: CameraConfig,
        node: &str,
        snapshot_topic: String,
        model: Option<LoadedModel>,
        slot: Arc<FrameSlot>,
    ) -> Self {
        let det = Detector::new(cfg.detector.clone(), node, &cfg.id, snapshot_topic);
        CameraRuntime {
            enabled: AtomicBool::new(cfg.enabled),
            threshold_override: Mutex::new(cfg.threshold),
            configured_threshold: Mutex::new(cfg.threshold),
            cfg,
            slot,
            model: RwLock::new(model.map(Arc::new)),
            counters: CameraCounters::default(),
            detector: Mutex::new(DetectorState {
                det,
                last_seq: None,
                last_state: None,
            }),
            calibration_tap: Mutex::new(None),
            last_score: Mutex::new(None),
        }
    }

    /// The model in service (`None`: not calibrated yet).
    pub fn current_model(&self) -> Option<Arc<LoadedModel>> {
        match self.model.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swap in a new model (takes effect from the next scored frame).
    pub fn swap_model(&self, model: LoadedModel) {
        let mut g = match self.model.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Some(Arc::new(model));
    }

    pub fn threshold(&self, model: &LoadedModel) -> f64 {
        lock(&self.threshold_override).unwrap_or(model.artifact.meta.threshold.log_density)
    }

    /// Replace detector settings (an open event is closed first).
    pub fn set_detector(&self, det: Detector, sink: &dyn Sink) {
        let mut d = lock(&self.detector);
        self.force_end(&mut d, sink);
        d.det = det;
    }

    /// Whether a calibration takes this camera's frames.
    pub fn is_calibrating(&self) -> bool {
        lock(&self.calibration_tap).is_some()
    }

    /// Start handing frames to a calibration: an open event is closed, scoring and events
    /// stop, and the last state is re-published with `calibrating: true`.
    pub fn begin_calibration(&self, tap: Arc<FrameSlot>, sink: &dyn Sink) {
        let mut d = lock(&self.detector);
        self.force_end(&mut d, sink);
        *lock(&self.calibration_tap) = Some(tap);
        if let Some(mut st) = d.last_state.clone() {
            let (ts, ts_ms) = timestamp(SystemTime::now());
            st.ts = ts;
            st.ts_ms = ts_ms;
            st.calibrating = true;
            sink.state(&self.cfg.id, &st);
        }
    }

    /// Give the frames back to scoring (after a swap, the first scored frame carries the
    /// new model id).
    pub fn end_calibration(&self) {
        let _d = lock(&self.detector);
        if let Some(tap) = lock(&self.calibration_tap).take() {
            tap.close();
        }
    }

    /// Close an open event (camera disabled or shutting down).
    pub fn end_open_event(&self, sink: &dyn Sink) {
        let mut d = lock(&self.detector);
        self.force_end(&mut d, sink);
    }

    fn force_end(&self, d: &mut DetectorState, sink: &dyn Sink) {
        // No model, no scored frame: no event can be open.
        let Some(model) = self.current_model() else {
            return;
        };
        let (id, threshold) = (&model.artifact.meta.model_id, self.threshold(&model));
        if let Some(ev) = d.det.force_end(SystemTime::now(), id, threshold) {
            sink.event(&self.cfg.id, &ev);
        }
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Shared between workers and the supervisor.
pub struct Pipeline {
    pub node: String,
    pub cameras: Vec<Arc<CameraRuntime>>,
    pub sink: Arc<dyn Sink>,
    pub stop: AtomicBool,
    pub epoch: Instant,
    /// Per-frame stage times for `bench` (None in the daemon: no unbounded growth).
    pub timings: Option<Mutex<Vec<StageTimes>>>,
}

impl Pipeline {
    /// Milliseconds since the pipeline's epoch, never 0 (0 means "never" in the counters).
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis().max(1) as u64
    }

    /// Age of the most recent frame the workers handled on any camera: scored, or handed
    /// to a calibration (the systemd watchdog is fed while this is recent).
    pub fn last_frame_age(&self) -> Option<Duration> {
        let last = self
            .cameras
            .iter()
            .flat_map(|c| {
                [
                    c.counters.last_scored_ms.load(Ordering::Relaxed),
                    c.counters.last_calibration_frame_ms.load(Ordering::Relaxed),
                    c.counters
                        .last_uncalibrated_frame_ms
                        .load(Ordering::Relaxed),
                ]
            })
            .max()
            .unwrap_or(0);
        if last == 0 {
            return None;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        Some(Duration::from_millis(now.saturating_sub(last)))
    }
}

/// A started inference worker.
pub struct Worker {
    pub handle: std::thread::JoinHandle<()>,
}

/// Start `n` workers, each with its own backbone instance.
pub fn spawn_workers(pipeline: &Arc<Pipeline>, backbones: Vec<AnyBackbone>) -> Vec<Worker> {
    backbones
        .into_iter()
        .enumerate()
        .filter_map(|(i, bb)| {
            let p = pipeline.clone();
            std::thread::Builder::new()
                .name(format!("vigil-infer-{i}"))
                .spawn(move || worker_loop(i, &p, bb))
                .ok()
                .map(|handle| Worker { handle })
        })
        .collect()
}

fn worker_loop(index: usize, p: &Pipeline, mut bb: AnyBackbone) {
    let info = bb.info().clone();
    // Built from the first model seen (every model of a daemon has the same preprocessing:
    // one backbone input), rebuilt if a model with another one is swapped in.
    let mut pre: Option<Preprocessor> = None;
    let mut tensor = Vec::new();
    let mut feat = vec![0.0f32; info.feature_dim];
    let mut workspaces: Vec<Option<Workspace>> = p.cameras.iter().map(|_| None).collect();
    let n = p.cameras.len();
    let mut next = index % n.max(1);
    while !p.stop.load(Ordering::Relaxed) {
        // One camera: block on its slot. Several: round-robin with short waits.
        let wait = if n == 1 {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(2)
        };
        let mut got = None;
        for k in 0..n {
            let ci = (next + k) % n;
            if let Some(f) = p.cameras[ci].slot.take(wait) {
                got = Some((ci, f));
                next = (ci + 1) % n;
                break;
            }
        }
        let Some((ci, frame)) = got else { continue };
        let cam = &p.cameras[ci];
        if let Some(tap) = lock(&cam.calibration_tap).as_ref() {
            tap.put(frame);
            cam.counters
                .last_calibration_frame_ms
                .store(p.now_ms(), Ordering::Relaxed);
            continue;
        }
        let Some(model) = cam.current_model() else {
            // Not calibrated yet: nothing to score against.
            cam.counters
                .last_uncalibrated_frame_ms
                .store(p.now_ms(), Ordering::Relaxed);
            continue;
        };
        let want = model.artifact.meta.preprocessing;
        let pre = match &mut pre {
            Some(x) if *x.config() == want => x,
            slot => {
                tensor = vec![0.0f32; want.tensor_len()];
                slot.insert(Preprocessor::new(want))
            }
        };
        if let Err(e) = process(
            p,
            cam,
            &model,
            &frame,
            &mut bb,
            pre,
            &mut tensor,
            &mut feat,
            &mut workspaces[ci],
        ) {
            cam.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(camera = %cam.cfg.id, seq = frame.seq, error = %e, "frame dropped");
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn process(
    p: &Pipeline,
    cam: &CameraRuntime,
    model: &LoadedModel,
    frame: &Frame,
    bb: &mut AnyBackbone,
    pre: &mut Preprocessor,
    tensor: &mut [f32],
    feat: &mut [f32],
    ws: &mut Option<Workspace>,
) -> Result<(), String> {
    let t0 = Instant::now();
    let origin = frame.origin.as_deref().unwrap_or("frame");
    let img: RgbF32 = crate::features::decode_pixels(&frame.pixels, origin, pre.config())
        .map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    pre.run(&img, tensor).map_err(|e| e.to_string())?;
    let t2 = Instant::now();
    bb.extract(tensor, 1, feat).map_err(|e| e.to_string())?;
    let t3 = Instant::now();
    let dfkde = &model.artifact.model;
    let w = ws.get_or_insert_with(|| dfkde.workspace());
    let score = dfkde.score(feat, w).map_err(|e| e.to_string())?;
    let threshold = cam.threshold(model);
    let obs = Observation {
        captured_at: frame.captured_at,
        log_density: score.log_density,
        pred_score: score.pred_score,
        threshold,
    };
    let t4 = Instant::now();
    cam.counters.scored.fetch_add(1, Ordering::Relaxed);
    cam.counters
        .last_scored_ms
        .store(p.now_ms(), Ordering::Relaxed);
    *lock(&cam.last_score) = Some((score.log_density, score.pred_score));
    let model_id = &model.artifact.meta.model_id;
    let enabled = cam.enabled.load(Ordering::Relaxed);
    let anomalous = obs.anomalous();

    let mut d = lock(&cam.detector);
    if lock(&cam.calibration_tap).is_some() {
        return Ok(()); // a calibration started while this frame was being scored
    }
    if d.last_seq.is_some_and(|s| frame.seq < s) {
        return Ok(()); // a later frame already went through another worker
    }
    d.last_seq = Some(frame.seq);
    if enabled {
        let out = d.det.observe(&obs, model_id);
        if let Some(ev) = &out.event {
            cam.counters.events.fetch_add(1, Ordering::Relaxed);
            if ev.r#type == "start" {
                cam.counters.anomalies.fetch_add(1, Ordering::Relaxed);
            }
            // Queued (durably) before it is logged: a logged event is never lost.
            p.sink.event(&cam.cfg.id, ev);
            tracing::info!(camera = %cam.cfg.id, event_id = %ev.id, kind = %ev.r#type, seq = ev.seq, peak = ev.peak_score, "event");
        }
        if out.snapshot {
            if let Some(jpeg) = snapshot_jpeg(frame, &img) {
                p.sink.snapshot(&cam.cfg.id, jpeg);
            }
        }
    }
    // Every scored frame: each sink rate-limits itself (MQTT: on change and every
    // `state_interval_s`; Sparkplug: report by exception with deadbands).
    {
        let (ts, ts_ms) = timestamp(frame.captured_at);
        let state = State {
            schema: SCHEMA_STATE.to_string(),
            node: p.node.clone(),
            camera: cam.cfg.id.clone(),
            ts,
            ts_ms,
            anomalous,
            score: score.pred_score,
            log_density: score.log_density,
            threshold,
            model_id: model_id.clone(),
            enabled,
            calibrating: false,
        };
        p.sink.state(&cam.cfg.id, &state);
        d.last_state = Some(state);
    }
    drop(d);
    let t5 = Instant::now();
    cam.counters
        .inference_seconds
        .observe(t3.duration_since(t2).as_secs_f64());
    cam.counters.frame_latency_seconds.observe(
        t5.saturating_duration_since(frame.captured_mono)
            .as_secs_f64(),
    );
    if let Some(t) = &p.timings {
        let us = |a: Instant, b: Instant| b.duration_since(a).as_micros() as u64;
        lock(t).push(StageTimes {
            decode_us: us(t0, t1),
            preprocess_us: us(t1, t2),
            backbone_us: us(t2, t3),
            score_us: us(t3, t4),
            publish_us: us(t4, t5),
            total_us: t5.duration_since(frame.captured_mono).as_micros() as u64,
        });
    }
    Ok(())
}

/// The frame as JPEG: the source's own bytes when it delivered a JPEG, else encoded.
fn snapshot_jpeg(frame: &Frame, img: &RgbF32) -> Option<Vec<u8>> {
    if let Pixels::Encoded { data } = &frame.pixels {
        if data.starts_with(&[0xFF, 0xD8]) {
            return Some(data.clone());
        }
    }
    let rgb: Vec<u8> = img
        .pixels
        .iter()
        .flat_map(|p| p.0.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
        .collect();
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    enc.write_image(&rgb, img.width, img.height, image::ExtendedColorType::Rgb8)
        .ok()?;
    Some(out)
}
