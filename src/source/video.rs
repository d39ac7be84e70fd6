//! `type = "video"` / `"stream"`: an `ffmpeg` subprocess decoding to raw RGB24 on its
//! stdout.
//!
//! The child lives in a shared slot so the [`Interrupter`] can kill it from another
//! thread: the blocked read on its stdout then returns (EOF) and `next_frame` reports
//! [`SourceError::Interrupted`]. stderr is drained by a small thread into a bounded buffer
//! (the error message when ffmpeg fails).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{FrameSource, Interrupter, SourceError, VideoConfig};
use crate::frame::Pixels;

/// ffmpeg stderr lines kept for error messages.
const STDERR_LINES: usize = 8;
/// Longest stderr line kept (bytes).
const STDERR_LINE_MAX: usize = 400;
/// How long to wait for ffmpeg to exit once its stdout has closed.
const EXIT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct ChildSlot {
    child: Option<Child>,
    interrupted: bool,
}

type StderrTail = Arc<Mutex<VecDeque<String>>>;

/// Frames decoded by ffmpeg (see [`VideoConfig`]).
#[derive(Debug)]
pub struct VideoSource {
    cfg: VideoConfig,
    child: Arc<Mutex<ChildSlot>>,
    stdout: Option<ChildStdout>,
    stderr_thread: Option<JoinHandle<()>>,
    stderr_tail: StderrTail,
    frame_len: usize,
}

impl VideoSource {
    pub fn new(cfg: VideoConfig) -> Self {
        let frame_len = 3 * cfg.width as usize * cfg.height as usize;
        VideoSource {
            cfg,
            child: Arc::new(Mutex::new(ChildSlot::default())),
            stdout: None,
            stderr_thread: None,
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            frame_len,
        }
    }

    /// The ffmpeg arguments (after the program name) for this config.
    pub fn ffmpeg_args(cfg: &VideoConfig) -> Vec<String> {
        let mut args: Vec<String> = ["-nostdin", "-hide_banner", "-loglevel", "error"]
            .into_iter()
            .map(String::from)
            .collect();
        if !cfg.is_network() {
            if cfg.looping {
                args.extend(["-stream_loop".into(), "-1".into()]);
            }
            if cfg.realtime {
                args.push("-re".into());
            }
        }
        args.extend(cfg.extra_args.iter().cloned());
        args.extend(["-i".into(), cfg.url.clone(), "-an".into(), "-sn".into()]);
        let scale = format!("scale={}:{}", cfg.width, cfg.height);
        let filter = match cfg.fps {
            Some(fps) => format!("fps={fps},{scale}"),
            None => scale,
        };
        // `-vsync passthrough`: never duplicate or drop frames to fake a constant rate
        // (the `fps` filter does the resampling when asked). `-vsync` rather than
        // `-fps_mode` keeps ffmpeg 4.x (older Raspberry Pi OS) working.
        args.extend(
            [
                "-vf",
                &filter,
                "-vsync",
                "passthrough",
                "-pix_fmt",
                "rgb24",
                "-f",
                "rawvideo",
                "pipe:1",
            ]
            .into_iter()
            .map(String::from),
        );
        args
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, ChildSlot> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stderr_text(&mut self) -> String {
        if let Some(t) = self.stderr_thread.take() {
            // stderr closes when ffmpeg exits, so this returns promptly after a wait.
            let _ = t.join();
        }
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let text = tail.iter().cloned().collect::<Vec<_>>().join("; ");
        if text.is_empty() {
            "(no message)".into()
        } else {
            text
        }
    }

    /// Waits (bounded) for the child to exit after its stdout closed.
    fn wait_exit(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + EXIT_GRACE;
        loop {
            {
                let mut slot = self.slot();
                let child = slot.child.as_mut()?;
                match child.try_wait() {
                    Ok(Some(status)) => {
                        slot.child = None;
                        return Some(status);
                    }
                    Ok(None) if Instant::now() < deadline => {}
                    Ok(None) | Err(_) => {
                        let _ = child.kill();
                        let status = child.wait().ok();
                        slot.child = None;
                        return status;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// stdout ended after `got` bytes of a frame: the end of the video, a live stream that
    /// stopped, ffmpeg failing, or our own interrupt.
    fn on_eof(&mut self, got: usize) -> Result<Option<Pixels>, SourceError> {
        self.stdout = None;
        let status = self.wait_exit();
        if std::mem::take(&mut self.slot().interrupted) {
            return Err(SourceError::Interrupted);
        }
        let stderr = self.stderr_text();
        match status {
            Some(s) if s.success() => {
                if got > 0 {
                    Err(SourceError::Truncated {
                        got,
                        need: self.frame_len,
                    })
                } else if self.cfg.is_network() {
                    Err(SourceError::StreamEnded(redact_url(&self.cfg.url)))
                } else {
                    Ok(None)
                }
            }
            Some(s) => Err(SourceError::Ffmpeg {
                status: s.to_string(),
                stderr,
            }),
            None => Err(SourceError::Ffmpeg {
                status: "unknown status".into(),
                stderr,
            }),
        }
    }
}

/// `url` with any `user:password@` replaced by `***@`, for logs, origins and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The `user:password` part of a URL, if any.
fn userinfo(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(rest[..at].to_string()).filter(|u| !u.is_empty())
}

fn drain_stderr(stderr: impl Read, tail: StderrTail, secret: Option<String>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let mut text = text.trim().to_string();
        if let Some(secret) = &secret {
            text = text.replace(secret.as_str(), "***");
        }
        if text.is_empty() {
            continue;
        }
        if text.len() > STDERR_LINE_MAX {
            let mut cut = STDERR_LINE_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        tracing::debug!(target: "vigil::source::ffmpeg", "{text}");
        let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() == STDERR_LINES {
            tail.pop_front();
        }
        tail.push_back(text);
    }
}

impl FrameSource for VideoSource {
    fn open(&mut self) -> Result<(), SourceError> {
        self.close();
        if !self.cfg.is_network() {
            let path = self
                .cfg
                .url
                .strip_prefix("file://")
                .unwrap_or(&self.cfg.url);
            std::fs::metadata(path).map_err(|source| SourceError::Io {
                path: path.to_string(),
                source,
            })?;
        }
        let mut child = Command::new(&self.cfg.ffmpeg)
            .args(Self::ffmpeg_args(&self.cfg))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| SourceError::Spawn {
                program: self.cfg.ffmpeg.clone(),
                source,
            })?;
        self.stdout = child.stdout.take();
        self.stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        if let Some(stderr) = child.stderr.take() {
            let tail = Arc::clone(&self.stderr_tail);
            let secret = userinfo(&self.cfg.url);
            let spawned = std::thread::Builder::new()
                .name("vigil-ffmpeg-err".into())
                .spawn(move || drain_stderr(stderr, tail, secret));
            match spawned {
                Ok(t) => self.stderr_thread = Some(t),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.stdout = None;
                    return Err(SourceError::Thread(e));
                }
            }
        }
        let mut slot = self.slot();
        slot.interrupted = false;
        slot.child = Some(child);
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Option<Pixels>, SourceError> {
        let Some(out) = self.stdout.as_mut() else {
            return Err(SourceError::NotOpen);
        };
        let mut data = vec![0u8; self.frame_len];
        match read_full(out, &mut data) {
            Ok(n) if n == self.frame_len => Ok(Some(Pixels::Rgb8 {
                width: self.cfg.width,
                height: self.cfg.height,
                data,
            })),
            Ok(n) => self.on_eof(n),
            Err(source) => {
                if std::mem::take(&mut self.slot().interrupted) {
                    return Err(SourceError::Interrupted);
                }
                Err(SourceError::Io {
                    path: format!("{} (ffmpeg stdout)", redact_url(&self.cfg.url)),
                    source,
                })
            }
        }
    }

    fn close(&mut self) {
        self.stdout = None;
        let child = self.slot().child.take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
    }

    fn describe(&self) -> String {
        let kind = if self.cfg.is_network() {
            "stream"
        } else {
            "video file"
        };
        let fps = self
            .cfg
            .fps
            .map(|f| format!(" at {f} fps"))
            .unwrap_or_default();
        format!(
            "{kind} {} via {} → {}×{}{fps}",
            redact_url(&self.cfg.url),
            self.cfg.ffmpeg,
            self.cfg.width,
            self.cfg.height
        )
    }

    fn last_origin(&self) -> Option<String> {
        Some(redact_url(&self.cfg.url))
    }

    fn interrupter(&self) -> Option<Interrupter> {
        let slot = Arc::clone(&self.child);
        Some(Interrupter::new(move || {
            let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
            slot.interrupted = true;
            if let Some(child) = slot.child.as_mut() {
                // SIGKILL: the blocked read on its stdout returns EOF at once.
                let _ = child.kill();
            }
        }))
    }
}

impl Drop for VideoSource {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::{redact_url, userinfo};

    #[test]
    fn credentials_never_leave_the_url() {
        assert_eq!(
            redact_url("rtsp://admin:s3cret@10.0.0.5:554/live?x=a@b"),
            "rtsp://***@10.0.0.5:554/live?x=a@b"
        );
        assert_eq!(redact_url("/data/clip.mp4"), "/data/clip.mp4");
        assert_eq!(redact_url("http://cam/mjpg"), "http://cam/mjpg");
        assert_eq!(
            userinfo("rtsp://admin:s3cret@10.0.0.5/live").as_deref(),
            Some("admin:s3cret")
        );
        assert_eq!(userinfo("rtsp://10.0.0.5/a@b"), None);
    }
}
