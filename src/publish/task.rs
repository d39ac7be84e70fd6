//! Pieces shared by the two rumqttc event-loop tasks (the plain publisher and the
//! Sparkplug node): the task handle and one interruptible poll.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rumqttc::{ConnectionError, Event, EventLoop};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The event-loop task; aborted when dropped without [`TaskHandle::join`] (no DISCONNECT:
/// the broker publishes the Will).
pub(crate) struct TaskHandle(Mutex<Option<JoinHandle<()>>>);

impl TaskHandle {
    pub fn new(handle: JoinHandle<()>) -> TaskHandle {
        TaskHandle(Mutex::new(Some(handle)))
    }

    /// Waits up to `limit` for the task to end by itself, else aborts it. `what` names it
    /// in the logs.
    pub async fn join(&self, limit: Duration, what: &str) {
        let handle = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(mut handle) = handle else {
            return;
        };
        match tokio::time::timeout(limit, &mut handle).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "{what} task ended abnormally"),
            Err(_) => {
                tracing::error!("{what} task did not stop in time; aborted");
                handle.abort();
            }
        }
    }
}

impl Drop for TaskHandle {
    fn drop(&mut self) {
        if let Some(h) = self.0.lock().unwrap_or_else(PoisonError::into_inner).take() {
            h.abort();
        }
    }
}

/// What one [`poll`] came back with.
pub(crate) enum Polled {
    Done(Result<Event, ConnectionError>),
    /// `wake` fired while connecting (a shutdown started): poll again.
    Woken,
    /// The shutdown deadline passed.
    Deadline,
}

/// One `EventLoop::poll`. Connecting (no session state yet) may be interrupted by `wake`
/// (a shutdown); a live connection is only interrupted at the shutdown `deadline`.
pub(crate) async fn poll(el: &mut EventLoop, wake: &Notify, deadline: Option<Instant>) -> Polled {
    if el.network.is_none() || deadline.is_some() {
        let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        tokio::select! {
            r = el.poll() => Polled::Done(r),
            _ = wake.notified(), if deadline.is_none() => Polled::Woken,
            _ = tokio::time::sleep_until(until), if deadline.is_some() => Polled::Deadline,
        }
    } else {
        Polled::Done(el.poll().await)
    }
}
