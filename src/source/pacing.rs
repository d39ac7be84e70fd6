//! Frame pacing on the monotonic clock, interruptible from another thread.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Interrupter, SourceError};

/// A sticky "interrupted" flag with a condvar, so a pacing sleep wakes at once.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    interrupted: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub(crate) fn interrupt(&self) {
        *self
            .interrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.cv.notify_all();
    }

    pub(crate) fn clear(&self) {
        *self
            .interrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = false;
    }

    /// Takes a pending interrupt.
    pub(crate) fn check(&self) -> Result<(), SourceError> {
        let mut flag = self
            .interrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if std::mem::take(&mut *flag) {
            Err(SourceError::Interrupted)
        } else {
            Ok(())
        }
    }

    /// Sleeps until `deadline` unless interrupted first.
    pub(crate) fn sleep_until(&self, deadline: Instant) -> Result<(), SourceError> {
        let mut flag = self
            .interrupted
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if std::mem::take(&mut *flag) {
                return Err(SourceError::Interrupted);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            flag = self
                .cv
                .wait_timeout(flag, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Emits frames on a fixed grid `t0, t0 + T, t0 + 2T, ...` of the monotonic clock (no
/// drift from the time spent producing a frame). When the consumer falls a whole period
/// behind, the grid is re-anchored instead of bursting to catch up.
#[derive(Debug)]
pub(crate) struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
    wake: Arc<Wake>,
}

impl Pacer {
    /// `fps = 0` (or not finite) disables pacing.
    pub(crate) fn new(fps: f64) -> Self {
        let period = (fps.is_finite() && fps > 0.0)
            .then(|| Duration::try_from_secs_f64(1.0 / fps).ok())
            .flatten();
        Pacer {
            period,
            next: None,
            wake: Arc::new(Wake::default()),
        }
    }

    /// Starts a new grid at the next frame and drops a pending interrupt (on open).
    pub(crate) fn reset(&mut self) {
        self.next = None;
        self.wake.clear();
    }

    pub(crate) fn interrupter(&self) -> Interrupter {
        let wake = Arc::clone(&self.wake);
        Interrupter::new(move || wake.interrupt())
    }

    /// Blocks until the next frame is due.
    pub(crate) fn wait(&mut self) -> Result<(), SourceError> {
        let Some(period) = self.period else {
            return self.wake.check();
        };
        let due = self.next.unwrap_or_else(Instant::now);
        self.wake.sleep_until(due)?;
        let now = Instant::now();
        self.next = match due.checked_add(period) {
            Some(next) if next > now => Some(next),
            _ => now.checked_add(period),
        };
        Ok(())
    }
}
