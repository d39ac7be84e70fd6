//! The capture supervisor: one OS thread per camera pulls frames from its source into the
//! camera's [`FrameSlot`], and a small watchdog thread per camera detects stalls and
//! interrupts blocked reads.
//!
//! Life of a camera:
//!
//! ```text
//! Starting ──frame──▶ Ok ◀──frame── Stalled        (no frame for stall_timeout:
//!    │                 │ ▲              ▲            the watchdog interrupts the source,
//!    │ error           │ └────frame─────┤            which is reopened at once)
//!    ▼                 ▼ error          │
//! Offline ◀────────────┘    (close; reopen after backoff_min · 2^k, capped at backoff_max,
//!    │                       reset by a frame)
//!    ▼ end of a finite source: Ended (the thread exits)
//! ```
//!
//! Errors that retrying cannot fix ([`SourceError::is_permanent`]) leave the camera
//! `Offline` and end the thread.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::{build, FrameSlot, FrameSource, Interrupter, SourceConfig, SourceError};
use crate::frame::Frame;

/// Supervision settings of one camera.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaptureOptions {
    /// `stall_timeout` (default 10 s): no frame for this long (including right after an
    /// open) → health `stalled` and the source is forcibly reopened. Raised automatically to
    /// three frame intervals of the source's configured fps.
    pub stall_timeout: Duration,
    /// `backoff_min` (default 0.5 s): wait before the first reopen after an error; doubles
    /// on each further failure.
    pub backoff_min: Duration,
    /// `backoff_max` (default 30 s): cap of the reopen wait.
    pub backoff_max: Duration,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            stall_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// A camera's capture state (published as the health `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    /// Opening, no frame yet.
    Starting,
    /// Frames are flowing.
    Ok,
    /// No frame for the stall timeout; the source is being reopened.
    Stalled,
    /// The source failed; reopening with backoff (or given up on a permanent error).
    Offline,
    /// A finite source (a folder without `loop`, a video file) reached its end.
    Ended,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Ok => "ok",
            HealthState::Stalled => "stalled",
            HealthState::Offline => "offline",
            HealthState::Ended => "ended",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a camera's capture health.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureHealth {
    pub state: HealthState,
    /// Wall-clock time of the last frame.
    pub last_frame_at: Option<SystemTime>,
    /// Frames captured since the start.
    pub frames: u64,
    /// The most recent error (kept after recovery; show it when `state` is not `Ok`).
    pub last_error: Option<String>,
    /// Reopens so far (after errors and stalls).
    pub reopen_count: u64,
}

#[derive(Debug)]
struct Inner {
    health: CaptureHealth,
    /// While the source is opening or open: the last sign of life (the open or the last
    /// frame), watched for stalls. `None` while backing off and after the end.
    alive_at: Option<Instant>,
    stopping: bool,
    done: bool,
}

struct Shared {
    camera: String,
    inner: Mutex<Inner>,
    /// Signalled on stop and when the capture thread finishes.
    cv: Condvar,
    interrupter: Option<Interrupter>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.lock().stopping
    }

    /// Changes the state (logging the change) and records `error` if given.
    fn set_state(&self, inner: &mut Inner, state: HealthState, error: Option<String>) {
        let old = inner.health.state;
        let error_changed = error.is_some() && error != inner.health.last_error;
        if let Some(e) = error {
            inner.health.last_error = Some(e);
        }
        inner.health.state = state;
        if old == state && !error_changed {
            return;
        }
        let camera = self.camera.as_str();
        let error = inner.health.last_error.as_deref().unwrap_or("");
        match state {
            HealthState::Ok => tracing::info!(camera, from = %old, "camera ok: frames flowing"),
            HealthState::Stalled => tracing::warn!(camera, error, "camera stalled"),
            HealthState::Offline => tracing::warn!(camera, error, "camera offline"),
            HealthState::Ended => tracing::info!(camera, "camera source ended"),
            HealthState::Starting => tracing::info!(camera, "camera starting"),
        }
    }

    /// Sleeps for `d` unless stopped first; false when stopping.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now().checked_add(d);
        let mut inner = self.lock();
        loop {
            if inner.stopping {
                return false;
            }
            let now = Instant::now();
            let left = match deadline {
                Some(d) if now >= d => return true,
                Some(d) => d - now,
                None => Duration::from_secs(3600),
            };
            inner = self
                .cv
                .wait_timeout(inner, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Starts capture threads; see the module docs.
#[derive(Debug)]
pub struct Capture;

impl Capture {
    /// Builds the source `cfg` describes and starts capturing it into `slot`. Fails only
    /// on an invalid configuration or when threads cannot be created; source errors show
    /// up in [`CaptureHandle::health`].
    pub fn spawn(
        camera_id: String,
        cfg: SourceConfig,
        opts: CaptureOptions,
        slot: Arc<FrameSlot>,
    ) -> Result<CaptureHandle, SourceError> {
        let source = build(&cfg)?;
        let mut opts = opts;
        if let Some(fps) = cfg.nominal_fps() {
            let three_frames = Duration::try_from_secs_f64(3.0 / fps).unwrap_or(Duration::MAX);
            opts.stall_timeout = opts.stall_timeout.max(three_frames);
        }
        Self::spawn_source(camera_id, source, opts, slot)
    }

    /// Like [`spawn`](Self::spawn) for an already built source (used as given).
    pub fn spawn_source(
        camera_id: String,
        source: Box<dyn FrameSource>,
        opts: CaptureOptions,
        slot: Arc<FrameSlot>,
    ) -> Result<CaptureHandle, SourceError> {
        let shared = Arc::new(Shared {
            camera: camera_id.clone(),
            inner: Mutex::new(Inner {
                health: CaptureHealth {
                    state: HealthState::Starting,
                    last_frame_at: None,
                    frames: 0,
                    last_error: None,
                    reopen_count: 0,
                },
                alive_at: None,
                stopping: false,
                done: false,
            }),
            cv: Condvar::new(),
            interrupter: source.interrupter(),
        });
        let mut handle = CaptureHandle {
            camera: camera_id.clone(),
            shared: Arc::clone(&shared),
            threads: Vec::new(),
        };
        let s = Arc::clone(&shared);
        let capture = std::thread::Builder::new()
            .name(format!("vigil-cap-{camera_id}"))
            .spawn(move || capture_loop(&s, source, opts, &slot))
            .map_err(SourceError::Thread)?;
        handle.threads.push(capture);
        let s = Arc::clone(&shared);
        let watchdog = std::thread::Builder::new()
            .name(format!("vigil-wd-{camera_id}"))
            .spawn(move || watchdog_loop(&s, opts.stall_timeout))
            .map_err(SourceError::Thread)?; // dropping `handle` stops and joins the capture
        handle.threads.push(watchdog);
        Ok(handle)
    }
}

fn capture_loop(
    shared: &Shared,
    mut source: Box<dyn FrameSource>,
    opts: CaptureOptions,
    slot: &FrameSlot,
) {
    let camera = shared.camera.as_str();
    tracing::info!(camera, source = %source.describe(), "capture starting");
    let mut backoff = opts.backoff_min;
    let mut seq = 0u64;
    let mut first = true;
    loop {
        {
            let mut inner = shared.lock();
            if inner.stopping {
                break;
            }
            if !first {
                inner.health.reopen_count += 1;
            }
            inner.alive_at = Some(Instant::now());
        }
        first = false;
        let outcome = source.open().and_then(|()| loop {
            if shared.stopping() {
                return Ok(false);
            }
            match source.next_frame()? {
                Some(pixels) => {
                    slot.put(Frame::new(seq, pixels, source.last_origin()));
                    seq += 1;
                    backoff = opts.backoff_min;
                    let mut inner = shared.lock();
                    inner.health.frames += 1;
                    inner.health.last_frame_at = Some(SystemTime::now());
                    inner.alive_at = Some(Instant::now());
                    if inner.health.state != HealthState::Ok {
                        shared.set_state(&mut inner, HealthState::Ok, None);
                    }
                }
                None => return Ok(true),
            }
        });
        source.close();
        let mut inner = shared.lock();
        inner.alive_at = None;
        if inner.stopping {
            break;
        }
        match outcome {
            Ok(true) => {
                shared.set_state(&mut inner, HealthState::Ended, None);
                break;
            }
            Ok(false) => break,
            // Only the watchdog interrupts a running source (stop is handled above): it was
            // stalled and is reopened at once.
            Err(SourceError::Interrupted) => {
                tracing::debug!(camera, "reopening the stalled source");
            }
            Err(e) if e.is_permanent() => {
                shared.set_state(&mut inner, HealthState::Offline, Some(e.to_string()));
                tracing::error!(camera, error = %e, "camera source cannot work; not retrying");
                break;
            }
            Err(e) => {
                shared.set_state(&mut inner, HealthState::Offline, Some(e.to_string()));
                tracing::debug!(camera, error = %e, retry_in = ?backoff, "reopening after backoff");
                drop(inner);
                if !shared.sleep(backoff) {
                    break;
                }
                backoff = backoff.saturating_mul(2).min(opts.backoff_max);
            }
        }
    }
    source.close();
    let mut inner = shared.lock();
    inner.alive_at = None;
    inner.done = true;
    drop(inner);
    shared.cv.notify_all();
    tracing::info!(camera, "capture stopped");
}

fn watchdog_loop(shared: &Shared, stall_timeout: Duration) {
    let tick = (stall_timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(50));
    let mut inner = shared.lock();
    loop {
        if inner.done {
            return;
        }
        let mut interrupt = inner.stopping;
        if let Some(alive) = inner.alive_at {
            if !inner.stopping && alive.elapsed() >= stall_timeout {
                // Re-arm: if the reopened source stays silent, it is reopened again.
                inner.alive_at = Some(Instant::now());
                let msg = format!("no frame for {:.1} s", stall_timeout.as_secs_f64());
                shared.set_state(&mut inner, HealthState::Stalled, Some(msg));
                interrupt = true;
            }
        }
        if interrupt {
            if let Some(i) = &shared.interrupter {
                // Outside our lock: the interrupter takes the source's own lock.
                drop(inner);
                i.interrupt();
                inner = shared.lock();
                if inner.done {
                    return;
                }
            }
        }
        // While stopping, keep interrupting every tick: an interrupt that lands between
        // two blocking calls (e.g. before ffmpeg is spawned) is retried.
        inner = shared
            .cv
            .wait_timeout(inner, tick)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// A running camera capture. Dropping it stops and joins the threads.
pub struct CaptureHandle {
    camera: String,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl fmt::Debug for CaptureHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureHandle")
            .field("camera", &self.camera)
            .field("health", &self.health())
            .finish()
    }
}

impl CaptureHandle {
    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// The current health.
    pub fn health(&self) -> CaptureHealth {
        self.shared.lock().health.clone()
    }

    /// A shareable probe of [`CaptureHandle::health`] (for the metrics endpoint).
    pub fn health_probe(&self) -> impl Fn() -> CaptureHealth + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.lock().health.clone()
    }

    /// A `Send` probe reporting why the capture has ended for good (finite source ended,
    /// permanent error), `None` while it runs or retries.
    pub fn shared_health(&self) -> impl Fn() -> Option<String> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        move || {
            let inner = shared.lock();
            if !inner.done {
                return None;
            }
            Some(match (inner.health.state, &inner.health.last_error) {
                (HealthState::Ended, _) => "the source ended".to_string(),
                (_, Some(e)) => e.clone(),
                (s, None) => format!("capture stopped ({s})"),
            })
        }
    }

    /// Whether the capture thread has exited (the source ended, failed permanently, or
    /// was stopped).
    pub fn is_finished(&self) -> bool {
        self.shared.lock().done
    }

    /// Asks the capture to stop, interrupting a blocked read (an ffmpeg child is killed).
    /// Returns at once; [`join`](Self::join) waits for the threads.
    pub fn stop(&self) {
        self.shared.lock().stopping = true;
        self.shared.cv.notify_all();
        if let Some(i) = &self.shared.interrupter {
            i.interrupt();
        }
    }

    /// Waits for the threads to exit: after [`stop`](Self::stop), or when a finite
    /// source ends or fails permanently (otherwise it waits forever).
    pub fn join(mut self) {
        self.join_threads();
    }

    fn join_threads(&mut self) {
        // The capture thread first: the watchdog exits once it is done.
        for t in std::mem::take(&mut self.threads) {
            if t.join().is_err() {
                tracing::error!(camera = %self.camera, "a capture thread panicked");
                // Let the watchdog go even though the capture thread never set `done`.
                let mut inner = self.shared.lock();
                inner.done = true;
                inner.stopping = true;
                drop(inner);
                self.shared.cv.notify_all();
            }
        }
    }
}

impl Drop for CaptureHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
            self.join_threads();
        }
    }
}
