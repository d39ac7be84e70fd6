//! The daemon's local control socket, `<runtime_dir>/control.sock` (mode 0660): how
//! `vigil calibrate` and `vigil model rollback` reach a running daemon, which owns the
//! cameras.
//!
//! Protocol: newline-delimited JSON. The client sends one request line; the daemon answers
//! with one or more JSON lines and closes the connection.
//!
//! * `{"cmd": "calibrate", "camera": "cam1", "frames": 300, "interval_s": 1, "quantile":
//!   0.995}` (options optional): one line per progress change, the `calibrate/state` value
//!   (`{"state": "collecting", "collected": 12, "frames": 300}`, `{"state": "fitting", ...}`),
//!   ending with `done` or `failed`. Closing the connection does not cancel the calibration.
//! * `{"cmd": "reload", "camera": "cam1"}`: load the camera's model from the store again
//!   (after a rollback) → `{"ok": true, "model_id": "..."}`.
//! * `{"cmd": "rollback", "camera": "cam1"}`: put the camera's previous stored model back in
//!   service: the daemon moves the store's `current` pointer and swaps the model together
//!   (refused while the camera calibrates) → `{"ok": true, "model_id": "...",
//!   "previous_model_id": "...", "created": "..."}`.
//! * `{"cmd": "status"}` → `{"ok": true, "cameras": {"cam1": {"model_id": ..., "calibration":
//!   {...}}}}`.
//!
//! Errors are one line `{"ok": false, "error": "..."}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::calibrate::CalibStatus;

/// File name of the socket inside `runtime_dir`.
pub const SOCKET: &str = "control.sock";

pub fn socket_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join(SOCKET)
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: bad reply `{line}`")]
    BadReply { path: PathBuf, line: String },
    #[error("the daemon refused: {0}")]
    Refused(String),
}

/// A request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Calibrate {
        camera: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frames: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_s: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantile: Option<f64>,
    },
    Reload {
        camera: String,
    },
    Rollback {
        camera: String,
    },
    Status,
}

/// What the daemon answers a request with.
pub enum Reply {
    /// Stream status changes until a terminal one.
    Calibration(watch::Receiver<CalibStatus>),
    /// One line.
    Once(serde_json::Value),
}

/// A request received on the socket, for the daemon's main loop.
pub struct Incoming {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

pub fn error_line(msg: &str) -> serde_json::Value {
    serde_json::json!({"ok": false, "error": msg})
}

/// Bind the socket (replacing a stale file) and serve connections until the task is
/// dropped. Returns the listener task's handle.
pub fn listen(
    path: &Path,
    tx: mpsc::Sender<Incoming>,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if UnixStream::connect(path).is_ok() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another vigil daemon answers on it",
        )));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(io)?;
    }
    tracing::info!(path = %path.display(), "control socket listening");
    // At most MAX_CONNECTIONS clients at once; more are closed at once (a local client
    // cannot pin the daemon's memory or file descriptors).
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!("control socket: too many clients, connection closed");
                        continue;
                    };
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        connection(stream, tx).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }))
}

/// Clients served at once.
const MAX_CONNECTIONS: usize = 16;
/// The longest request line read; a longer one is cut there and fails to parse.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long a client has to send its request line.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn connection(stream: tokio::net::UnixStream, tx: mpsc::Sender<Incoming>) {
    use tokio::io::AsyncReadExt;
    let (rd, mut wr) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(rd.take(MAX_REQUEST_BYTES)).lines();
    let line = match tokio::time::timeout(REQUEST_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(l))) => l,
        _ => return,
    };
    let send = |v: serde_json::Value| {
        let mut s = v.to_string();
        s.push('\n');
        s
    };
    let request: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let _ = wr
                .write_all(send(error_line(&format!("bad request: {e}"))).as_bytes())
                .await;
            return;
        }
    };
    let (rtx, rrx) = oneshot::channel();
    if tx
        .send(Incoming {
            request,
            reply: rtx,
        })
        .await
        .is_err()
    {
        let _ = wr
            .write_all(send(error_line("the daemon is stopping")).as_bytes())
            .await;
        return;
    }
    match rrx.await {
        Ok(Reply::Once(v)) => {
            let _ = wr.write_all(send(v).as_bytes()).await;
        }
        Ok(Reply::Calibration(mut rx)) => loop {
            let st = rx.borrow_and_update().clone();
            if wr.write_all(send(st.to_json()).as_bytes()).await.is_err() {
                return; // the client went away; the calibration goes on
            }
            if st.is_terminal() || rx.changed().await.is_err() {
                return;
            }
        },
        Err(_) => {
            let _ = wr
                .write_all(send(error_line("the daemon is stopping")).as_bytes())
                .await;
        }
    }
}

/// Client side: `Ok(None)` when no daemon answers on `path` (not there, or refused).
pub fn connect(path: &Path, request: &Request) -> Result<Option<Lines>, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(io(e)),
    };
    let mut line = serde_json::to_string(request).map_err(|e| ControlError::BadReply {
        path: path.to_path_buf(),
        line: e.to_string(),
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    Ok(Some(Lines {
        path: path.to_path_buf(),
        reader: BufReader::new(stream),
    }))
}

/// The reply lines of one request.
pub struct Lines {
    path: PathBuf,
    reader: BufReader<UnixStream>,
}

impl Lines {
    /// The next reply line as JSON; `Ok(None)` at the end. `{"ok": false}` lines become
    /// [`ControlError::Refused`].
    pub fn next_value(&mut self) -> Result<Option<serde_json::Value>, ControlError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| ControlError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(None);
        }
        let v: serde_json::Value =
            serde_json::from_str(line.trim()).map_err(|_| ControlError::BadReply {
                path: self.path.clone(),
                line: line.trim().to_string(),
            })?;
        if v.get("ok") == Some(&serde_json::Value::Bool(false)) {
            let msg = v
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown error");
            return Err(ControlError::Refused(msg.to_string()));
        }
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_commands_are_refused() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"calibrate","camera":"c","frames":60}"#).expect("ok");
        assert_eq!(
            r,
            Request::Calibrate {
                camera: "c".into(),
                frames: Some(60),
                interval_s: None,
                quantile: None
            }
        );
        let back: Request =
            serde_json::from_str(&serde_json::to_string(&r).expect("ser")).expect("de");
        assert_eq!(back, r);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format-disk"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reload","camera":"c","x":1}"#).is_err());
    }

    #[tokio::test]
    async fn an_oversized_request_line_is_refused_without_reaching_the_daemon() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("control.sock");
        let (tx, mut rx) = mpsc::channel(4);
        let task = listen(&path, tx).expect("listen");
        let p = path.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = UnixStream::connect(&p).expect("connect");
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
            // A syntactically valid request padded past the cap: cut, it no longer parses.
            let pad = " ".repeat(MAX_REQUEST_BYTES as usize);
            let line = format!("{{\"cmd\":\"status\"{pad}}}\n");
            let _ = s.write_all(line.as_bytes());
            let mut answer = String::new();
            let _ = BufReader::new(s).read_line(&mut answer);
            answer
        })
        .await
        .expect("client");
        assert!(answer.contains("bad request"), "{answer}");
        assert!(rx.try_recv().is_err(), "the daemon saw the request");
        task.abort();
    }
}
