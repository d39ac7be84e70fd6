//! The bounded-latency hand-off between a camera's capture thread and inference: a
//! single-frame mailbox. A newer frame replaces an unconsumed one, so inference always
//! works on the freshest frame and a slow consumer costs dropped frames, never memory or
//! latency.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::frame::Frame;

#[derive(Debug, Default)]
struct Inner {
    frame: Option<Frame>,
    closed: bool,
    captured: u64,
    dropped: u64,
}

/// Holds at most one [`Frame`] (see the module docs). Share it as `Arc<FrameSlot>`.
#[derive(Debug, Default)]
pub struct FrameSlot {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl FrameSlot {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers a frame: replaces (and counts as dropped) a frame nobody took yet. Frames put
    /// after [`close`](Self::close) are discarded (and counted as dropped).
    pub fn put(&self, frame: Frame) {
        let mut inner = self.lock();
        inner.captured += 1;
        if inner.closed {
            inner.dropped += 1;
            return;
        }
        if inner.frame.replace(frame).is_some() {
            inner.dropped += 1;
        }
        drop(inner);
        self.cv.notify_one();
    }

    /// Takes the frame, waiting up to `timeout` for one. `None` on timeout, or once the slot
    /// is closed and empty (a frame put before `close` is still handed out).
    pub fn take(&self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now().checked_add(timeout);
        let mut inner = self.lock();
        loop {
            if let Some(frame) = inner.frame.take() {
                return Some(frame);
            }
            if inner.closed {
                return None;
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    d - now
                }
                // A timeout too large for the clock: wait in long steps.
                None => Duration::from_secs(3600),
            };
            inner = self
                .cv
                .wait_timeout(inner, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Takes the frame if there is one, without waiting.
    pub fn try_take(&self) -> Option<Frame> {
        self.lock().frame.take()
    }

    /// Closes the slot and wakes every waiting taker.
    pub fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Frames put so far.
    pub fn captured(&self) -> u64 {
        self.lock().captured
    }

    /// Frames replaced before anyone took them (or put after `close`).
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}
