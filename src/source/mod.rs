//! Frame sources: where a camera's frames come from, and the machinery that keeps them
//! coming.
//!
//! * [`SourceConfig`] — one `[camera.source]` TOML table per camera, tagged by `type`:
//!   [`folder`](FolderConfig), [`synthetic`](SyntheticConfig), [`video`](VideoConfig)
//!   (alias `stream`) and [`v4l2`](V4l2Config).
//! * [`FrameSource`] — the blocking pull interface every source implements; [`build`]
//!   turns a config into one.
//! * [`FrameSlot`] — the bounded-latency hand-off between capture and inference: holds at
//!   most one frame, a newer frame replaces an unconsumed one (counted as dropped).
//! * [`Capture`] — one supervisor thread per camera: open → read → put into the slot; on
//!   errors close and reopen with exponential backoff, detect stalls and force a reopen,
//!   report [`CaptureHealth`].
//!
//! Example (`vigil.toml`):
//!
//! ```toml
//! [camera.source]
//! type = "video"
//! url = "rtsp://10.0.0.12:554/stream1"
//! fps = 5.0
//! extra_args = ["-rtsp_transport", "tcp"]
//! ```

mod capture;
mod folder;
mod pacing;
mod slot;
mod synthetic;
mod v4l2;
mod video;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::frame::Pixels;

pub use capture::{Capture, CaptureHandle, CaptureHealth, CaptureOptions, HealthState};
pub use folder::FolderSource;
pub use slot::FrameSlot;
pub use synthetic::{SyntheticSource, ORIGIN_DEFECT, ORIGIN_NORMAL};
pub use v4l2::V4l2Source;
pub use video::{redact_url, VideoSource};

/// Errors of the frame sources.
#[derive(Debug, Error)]
pub enum SourceError {
    /// The source's configuration is invalid (never fixed by retrying).
    #[error("invalid source configuration: {0}")]
    Config(String),
    /// The source cannot work in this build (never fixed by retrying).
    #[error("unsupported source: {0}")]
    Unsupported(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no image files (jpg, jpeg, png) match {0}")]
    NoImages(String),
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    /// ffmpeg exited with an error; `stderr` holds its last lines.
    #[error("ffmpeg exited with {status}: {stderr}")]
    Ffmpeg { status: String, stderr: String },
    /// A live stream ended (ffmpeg exited cleanly); live streams are reopened.
    #[error("stream {0} ended")]
    StreamEnded(String),
    #[error("truncated frame: got {got} of {need} bytes")]
    Truncated { got: usize, need: usize },
    /// A blocking call was interrupted through the source's [`Interrupter`].
    #[error("interrupted")]
    Interrupted,
    #[error("source is not open")]
    NotOpen,
    #[error("camera error: {0}")]
    Camera(String),
    #[error("cannot start the capture thread: {0}")]
    Thread(std::io::Error),
}

impl SourceError {
    /// Errors that reopening cannot fix (bad configuration, unsupported build): the capture
    /// supervisor reports them and stops instead of retrying forever.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SourceError::Config(_) | SourceError::Unsupported(_))
    }
}

/// Where one camera's frames come from: the `[camera.source]` table, tagged by `type`.
/// Unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    /// `type = "folder"`: image files of a directory or a glob pattern, in name order.
    Folder(FolderConfig),
    /// `type = "synthetic"`: a generated textured surface with injected defects (demo,
    /// tests, soak runs).
    Synthetic(SyntheticConfig),
    /// `type = "video"` (alias `type = "stream"`, the natural name for network URLs): a
    /// video file or network stream (RTSP, HTTP MJPEG, ...) decoded by an `ffmpeg`
    /// subprocess.
    #[serde(alias = "stream")]
    Video(VideoConfig),
    /// `type = "v4l2"`: a USB/UVC camera (needs the `v4l2` Cargo feature).
    V4l2(V4l2Config),
}

impl SourceConfig {
    /// The nominal frame rate when the config fixes one (used to keep the stall timeout
    /// above a few frame intervals).
    pub fn nominal_fps(&self) -> Option<f64> {
        let fps = match self {
            SourceConfig::Folder(c) => c.fps,
            SourceConfig::Synthetic(c) => c.fps,
            SourceConfig::Video(c) => c.fps?,
            SourceConfig::V4l2(c) => f64::from(c.fps),
        };
        (fps.is_finite() && fps > 0.0).then_some(fps)
    }

    /// Checks values serde cannot (ranges, non-empty strings).
    pub fn validate(&self) -> Result<(), SourceError> {
        match self {
            SourceConfig::Folder(c) => c.validate(),
            SourceConfig::Synthetic(c) => c.validate(),
            SourceConfig::Video(c) => c.validate(),
            SourceConfig::V4l2(c) => c.validate(),
        }
    }
}

/// `type = "folder"`: reads image files (`.jpg`, `.jpeg`, `.png`, any case) sorted by file
/// name and emits their bytes as [`Pixels::Encoded`] with `origin` = the file's path. The
/// list is re-read at every (re)open and at every wrap-around, so files added later are
/// picked up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderConfig {
    /// `path` (required): a directory (its image files, not recursive), a single image
    /// file, or a glob pattern in the file-name part, e.g. `"/data/line3/*.jpg"`
    /// (`*`, `?` and `[...]` classes; the directory part must be literal; a path that
    /// exists is always taken literally).
    pub path: String,
    /// `fps` (default `2.0`): frames per second (≥ 0.001); `0` = as fast as possible.
    #[serde(default = "default_folder_fps")]
    pub fps: f64,
    /// `loop` (default `true`): start again after the last file; `false` ends the source
    /// (camera health `ended`).
    #[serde(rename = "loop", default = "default_true")]
    pub looping: bool,
}

impl FolderConfig {
    /// A folder config with the defaults (`fps = 2.0`, `loop = true`).
    pub fn new(path: impl Into<String>) -> Self {
        FolderConfig {
            path: path.into(),
            fps: default_folder_fps(),
            looping: true,
        }
    }

    fn validate(&self) -> Result<(), SourceError> {
        if self.path.trim().is_empty() {
            return Err(SourceError::Config("folder: `path` is empty".into()));
        }
        check_fps("folder", self.fps)
    }
}

/// `type = "synthetic"`: a generated brushed-metal-like surface (deterministic given
/// `seed`) with natural frame-to-frame variation (sensor noise, illumination drift, small
/// vibration) and, periodically, an injected dark scratch or blob. Emits [`Pixels::Rgb8`];
/// `origin` is `"synthetic:normal"` or `"synthetic:defect"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// `width` (default `640`): frame width in pixels.
    pub width: u32,
    /// `height` (default `480`): frame height in pixels.
    pub height: u32,
    /// `fps` (default `5.0`): frames per second (≥ 0.001); `0` = as fast as possible.
    pub fps: f64,
    /// `defect_every` (default `0` = never): inject a defect every N frames — injection `k`
    /// (k ≥ 1) starts at frame `k·N`.
    pub defect_every: u32,
    /// `defect_frames` (default `3`): consecutive defective frames per injection (must be
    /// less than `defect_every`).
    pub defect_frames: u32,
    /// `seed` (default `1`): the texture, the per-frame variation and the defects are a
    /// pure function of the seed and the frame index.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            width: 640,
            height: 480,
            fps: 5.0,
            defect_every: 0,
            defect_frames: 3,
            seed: 1,
        }
    }
}

impl SyntheticConfig {
    fn validate(&self) -> Result<(), SourceError> {
        check_size("synthetic", self.width, self.height)?;
        check_fps("synthetic", self.fps)?;
        if self.defect_every > 0
            && (self.defect_frames == 0 || self.defect_frames >= self.defect_every)
        {
            return Err(SourceError::Config(format!(
                "synthetic: `defect_frames` ({}) must be in 1..defect_every ({})",
                self.defect_frames, self.defect_every
            )));
        }
        Ok(())
    }
}

/// `type = "video"` or `type = "stream"`: decoded by the `ffmpeg` binary, run as
/// `ffmpeg -nostdin -loglevel error [-stream_loop -1] [-re] <extra_args> -i <url> -an
/// -vf [fps=<fps>,]scale=<width>:<height> -vsync passthrough -pix_fmt rgb24 -f rawvideo
/// pipe:1`; every `width·height·3` bytes of its output are one [`Pixels::Rgb8`] frame.
///
/// The end of a local file ends the source (health `ended`) unless `loop`; a network
/// stream that ends is reopened. ffmpeg's stderr (last lines) is the error message when it
/// fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VideoConfig {
    /// `url` (required): a file path, or anything ffmpeg opens (`rtsp://`, `http(s)://`
    /// MJPEG, `udp://`, ...). Values with a `scheme://` other than `file://` are network
    /// streams.
    pub url: String,
    /// `fps` (default: none = every decoded frame): resample to this rate (≥ 0.001) with
    /// ffmpeg's `fps` filter.
    #[serde(default)]
    pub fps: Option<f64>,
    /// `width` (default `640`): output width; ffmpeg scales (aspect not kept).
    #[serde(default = "default_width")]
    pub width: u32,
    /// `height` (default `480`): output height.
    #[serde(default = "default_height")]
    pub height: u32,
    /// `loop` (default `false`): replay a local file forever (`-stream_loop -1`); ignored
    /// for network streams.
    #[serde(rename = "loop", default)]
    pub looping: bool,
    /// `realtime` (default `true`): read local files at their native frame rate (`-re`),
    /// as a camera would deliver them, instead of decoding as fast as the CPU allows;
    /// ignored for network streams (live already).
    #[serde(default = "default_true")]
    pub realtime: bool,
    /// `ffmpeg` (default `"ffmpeg"`, looked up in `PATH`): the ffmpeg binary.
    #[serde(default = "default_ffmpeg")]
    pub ffmpeg: String,
    /// `extra_args` (default `[]`): extra ffmpeg *input* options, placed just before
    /// `-i <url>`, e.g. `["-rtsp_transport", "tcp"]` or, for a raw pipe, `["-f",
    /// "rawvideo", "-pix_fmt", "rgb24", "-video_size", "64x48"]`.
    #[serde(default)]
    pub extra_args: Vec<String>,
}

impl VideoConfig {
    /// A video config with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        VideoConfig {
            url: url.into(),
            fps: None,
            width: default_width(),
            height: default_height(),
            looping: false,
            realtime: true,
            ffmpeg: default_ffmpeg(),
            extra_args: Vec::new(),
        }
    }

    /// Whether `url` names a network stream (a `scheme://` other than `file://`).
    pub fn is_network(&self) -> bool {
        match self.url.split_once("://") {
            Some((scheme, _)) => {
                !scheme.eq_ignore_ascii_case("file")
                    && !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            }
            None => false,
        }
    }

    fn validate(&self) -> Result<(), SourceError> {
        if self.url.trim().is_empty() {
            return Err(SourceError::Config("video: `url` is empty".into()));
        }
        if self.ffmpeg.trim().is_empty() {
            return Err(SourceError::Config("video: `ffmpeg` is empty".into()));
        }
        check_size("video", self.width, self.height)?;
        if let Some(fps) = self.fps {
            if !(fps.is_finite() && fps >= MIN_FPS) {
                return Err(SourceError::Config(format!(
                    "video: `fps` must be ≥ {MIN_FPS}, got {fps}"
                )));
            }
        }
        Ok(())
    }
}

/// Pixel format requested from a V4L2 camera.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum V4l2Format {
    /// Motion-JPEG: frames pass through undecoded as [`Pixels::Encoded`] (cheapest on USB
    /// bandwidth and CPU; the worker decodes at reduced scale when it can).
    Mjpeg,
    /// Raw YUYV 4:2:2: converted to [`Pixels::Rgb8`].
    Yuyv,
}

/// `type = "v4l2"`: a USB/UVC camera through nokhwa. Needs the `v4l2` Cargo feature;
/// without it the table still parses (so one config file serves every build) and opening
/// fails with a clear error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct V4l2Config {
    /// `device` (default `"/dev/video0"`): a device path or an index such as `"0"`.
    pub device: String,
    /// `width` (default `640`): requested width (the camera picks the closest it has).
    pub width: u32,
    /// `height` (default `480`): requested height.
    pub height: u32,
    /// `fps` (default `15`): requested frame rate.
    pub fps: u32,
    /// `format` (default `"mjpeg"`): `"mjpeg"` or `"yuyv"`.
    pub format: V4l2Format,
}

impl Default for V4l2Config {
    fn default() -> Self {
        V4l2Config {
            device: "/dev/video0".into(),
            width: default_width(),
            height: default_height(),
            fps: 15,
            format: V4l2Format::Mjpeg,
        }
    }
}

impl V4l2Config {
    fn validate(&self) -> Result<(), SourceError> {
        if self.device.trim().is_empty() {
            return Err(SourceError::Config("v4l2: `device` is empty".into()));
        }
        check_size("v4l2", self.width, self.height)?;
        if self.fps == 0 {
            return Err(SourceError::Config("v4l2: `fps` must be > 0".into()));
        }
        Ok(())
    }
}

fn default_folder_fps() -> f64 {
    2.0
}
fn default_true() -> bool {
    true
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_ffmpeg() -> String {
    "ffmpeg".into()
}

/// Slowest pacing accepted: one frame every 1000 s.
const MIN_FPS: f64 = 1e-3;

fn check_fps(what: &str, fps: f64) -> Result<(), SourceError> {
    if fps == 0.0 || (fps.is_finite() && fps >= MIN_FPS) {
        Ok(())
    } else {
        Err(SourceError::Config(format!(
            "{what}: `fps` must be 0 (as fast as possible) or ≥ {MIN_FPS}, got {fps}"
        )))
    }
}

fn check_size(what: &str, width: u32, height: u32) -> Result<(), SourceError> {
    // 16384² · 3 bytes is 805 MB: far beyond any camera, and keeps w·h·3 in range.
    if width == 0 || height == 0 || width > 16384 || height > 16384 {
        return Err(SourceError::Config(format!(
            "{what}: frame size {width}×{height} must be within 1..=16384 on each side"
        )));
    }
    Ok(())
}

/// A frame source. Calls come from one capture thread; only the [`Interrupter`] (from
/// [`FrameSource::interrupter`]) is used from another thread.
pub trait FrameSource: Send {
    /// Opens (or reopens after [`close`](FrameSource::close)) the source.
    fn open(&mut self) -> Result<(), SourceError>;
    /// Blocks until the next frame (paced to the configured fps where the source paces).
    /// `Ok(None)` is the end of a finite source.
    fn next_frame(&mut self) -> Result<Option<Pixels>, SourceError>;
    /// Releases the underlying resource (idempotent).
    fn close(&mut self);
    /// A one-line human description for logs.
    fn describe(&self) -> String;
    /// Where the frame last returned by `next_frame` came from (e.g. a file path), if
    /// meaningful: becomes [`Frame::origin`](crate::frame::Frame::origin).
    fn last_origin(&self) -> Option<String> {
        None
    }
    /// A handle that makes a blocked (or the next) `next_frame` return
    /// [`SourceError::Interrupted`] promptly, from any thread; `open` clears a pending
    /// interrupt. `None` when the source never blocks for long.
    fn interrupter(&self) -> Option<Interrupter> {
        None
    }
}

/// Interrupts a source's blocking call from another thread (see
/// [`FrameSource::interrupter`]).
#[derive(Clone)]
pub struct Interrupter(Arc<dyn Fn() + Send + Sync>);

impl Interrupter {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> Self {
        Interrupter(Arc::new(f))
    }

    pub fn interrupt(&self) {
        (self.0)()
    }
}

impl fmt::Debug for Interrupter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Interrupter")
    }
}

/// Builds the source a config describes (validating it; nothing is opened yet).
pub fn build(cfg: &SourceConfig) -> Result<Box<dyn FrameSource>, SourceError> {
    cfg.validate()?;
    Ok(match cfg {
        SourceConfig::Folder(c) => Box::new(FolderSource::new(c.clone())),
        SourceConfig::Synthetic(c) => Box::new(SyntheticSource::new(c.clone())?),
        SourceConfig::Video(c) => Box::new(VideoSource::new(c.clone())),
        SourceConfig::V4l2(c) => Box::new(V4l2Source::new(c.clone())),
    })
}
