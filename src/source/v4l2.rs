//! `type = "v4l2"`: a USB/UVC camera through nokhwa (Cargo feature `v4l2`).
//!
//! Thin on purpose: open the device, request the format, return MJPEG frames undecoded
//! ([`Pixels::Encoded`]) and anything else converted to [`Pixels::Rgb8`]. nokhwa's
//! `Camera` is not `Send`, so it lives on a thread of its own that hands frames over a
//! small channel; waits on that channel are interruptible (stall, stop). A camera thread
//! stuck inside the driver is left behind, and reopening reports it until it lets go.

#[cfg(not(feature = "v4l2"))]
use super::SourceError;
use super::{FrameSource, V4l2Config};
use crate::frame::Pixels;

/// A V4L2 camera (see [`V4l2Config`]).
pub struct V4l2Source {
    cfg: V4l2Config,
    #[cfg(feature = "v4l2")]
    state: imp::State,
}

impl std::fmt::Debug for V4l2Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V4l2Source")
            .field("cfg", &self.cfg)
            .finish()
    }
}

impl V4l2Source {
    pub fn new(cfg: V4l2Config) -> Self {
        V4l2Source {
            cfg,
            #[cfg(feature = "v4l2")]
            state: imp::State::default(),
        }
    }

    /// The device index nokhwa's V4L2 backend wants: `"2"`, `"/dev/video2"` or a symlink
    /// to it (e.g. `/dev/v4l/by-id/...`) all give 2.
    pub fn device_index(device: &str) -> Option<u32> {
        if let Ok(i) = device.trim().parse::<u32>() {
            return Some(i);
        }
        let path = std::fs::canonicalize(device).unwrap_or_else(|_| device.into());
        path.file_name()?
            .to_str()?
            .strip_prefix("video")?
            .parse()
            .ok()
    }
}

#[cfg(not(feature = "v4l2"))]
impl FrameSource for V4l2Source {
    fn open(&mut self) -> Result<(), SourceError> {
        Err(SourceError::Unsupported(format!(
            "built without the v4l2 feature, cannot open camera {} (rebuild with \
             `cargo build --features v4l2`, or read the camera through ffmpeg with \
             type = \"video\", url = \"{}\", extra_args = [\"-f\", \"v4l2\"])",
            self.cfg.device, self.cfg.device
        )))
    }

    fn next_frame(&mut self) -> Result<Option<Pixels>, SourceError> {
        Err(SourceError::NotOpen)
    }

    fn close(&mut self) {}

    fn describe(&self) -> String {
        format!(
            "v4l2 camera {} (unavailable in this build)",
            self.cfg.device
        )
    }
}

#[cfg(feature = "v4l2")]
mod imp {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
    use std::sync::Arc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{
        CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
    };
    use nokhwa::Camera;

    use super::super::{Interrupter, SourceError, V4l2Config, V4l2Format};
    use super::{FrameSource, Pixels, V4l2Source};

    /// How often a blocked `open`/`next_frame` looks at the interrupt flag.
    const POLL: Duration = Duration::from_millis(50);
    /// How long `close` waits for the camera thread to release the device.
    const RELEASE_WAIT: Duration = Duration::from_millis(500);

    type FrameResult = Result<Pixels, SourceError>;

    /// The camera thread of an open source.
    #[derive(Debug)]
    pub(super) struct Running {
        frames: Receiver<FrameResult>,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    }

    /// State behind [`V4l2Source`] with the feature on. nokhwa's `Camera` is not `Send`
    /// (unless its `camera-sync-impl` feature is on), so it lives on a thread of its own
    /// and frames come over a channel; this also makes reads interruptible.
    #[derive(Debug, Default)]
    pub(super) struct State {
        running: Option<Running>,
        /// A camera thread that did not release the device in time (stuck in the driver).
        stuck: Option<JoinHandle<()>>,
        interrupted: Arc<AtomicBool>,
    }

    fn cam_err(what: &str, e: nokhwa::NokhwaError) -> SourceError {
        SourceError::Camera(format!("{what}: {e}"))
    }

    fn open_camera(cfg: &V4l2Config) -> Result<Camera, SourceError> {
        let index = V4l2Source::device_index(&cfg.device).ok_or_else(|| {
            SourceError::Config(format!(
                "v4l2: `device` {:?} is neither an index nor a /dev/videoN path",
                cfg.device
            ))
        })?;
        let format = match cfg.format {
            V4l2Format::Mjpeg => FrameFormat::MJPEG,
            V4l2Format::Yuyv => FrameFormat::YUYV,
        };
        let requested = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(
            CameraFormat::new(Resolution::new(cfg.width, cfg.height), format, cfg.fps),
        ));
        let mut camera = Camera::new(CameraIndex::Index(index), requested)
            .map_err(|e| cam_err(&format!("opening {}", cfg.device), e))?;
        camera
            .open_stream()
            .map_err(|e| cam_err(&format!("starting {}", cfg.device), e))?;
        let got = camera.camera_format();
        if got.format() != format {
            tracing::warn!(device = %cfg.device, requested = %format, got = %got.format(),
                "camera does not offer the requested pixel format");
        }
        tracing::info!(device = %cfg.device, format = %got, "v4l2 camera streaming");
        Ok(camera)
    }

    fn read_frame(camera: &mut Camera) -> FrameResult {
        let buffer = camera.frame().map_err(|e| cam_err("reading a frame", e))?;
        if buffer.source_frame_format() == FrameFormat::MJPEG {
            return Ok(Pixels::Encoded {
                data: buffer.buffer().to_vec(),
            });
        }
        let res = buffer.resolution();
        let mut data = vec![0u8; 3 * res.width() as usize * res.height() as usize];
        buffer
            .decode_image_to_buffer::<RgbFormat>(&mut data)
            .map_err(|e| cam_err("converting a frame to RGB", e))?;
        Ok(Pixels::Rgb8 {
            width: res.width(),
            height: res.height(),
            data,
        })
    }

    fn camera_thread(
        cfg: V4l2Config,
        ready: SyncSender<Result<(), SourceError>>,
        frames: SyncSender<FrameResult>,
        stop: Arc<AtomicBool>,
    ) {
        let mut camera = match open_camera(&cfg) {
            Ok(c) => c,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if ready.send(Ok(())).is_err() {
            return;
        }
        while !stop.load(Ordering::SeqCst) {
            let frame = read_frame(&mut camera);
            let failed = frame.is_err();
            // Fails once the source closed the receiver.
            if frames.send(frame).is_err() || failed {
                break;
            }
        }
        if let Err(e) = camera.stop_stream() {
            tracing::debug!(device = %cfg.device, "stopping the stream: {e}");
        }
    }

    impl State {
        fn wait<T>(&self, rx: &Receiver<T>) -> Result<Option<T>, SourceError> {
            loop {
                match rx.recv_timeout(POLL) {
                    Ok(v) => return Ok(Some(v)),
                    Err(RecvTimeoutError::Disconnected) => return Ok(None),
                    Err(RecvTimeoutError::Timeout) => {
                        if self.interrupted.swap(false, Ordering::SeqCst) {
                            return Err(SourceError::Interrupted);
                        }
                    }
                }
            }
        }
    }

    impl FrameSource for V4l2Source {
        fn open(&mut self) -> Result<(), SourceError> {
            self.close();
            if let Some(t) = self.state.stuck.take() {
                if !t.is_finished() {
                    self.state.stuck = Some(t);
                    return Err(SourceError::Camera(format!(
                        "the previous capture of {} is still blocked in the driver",
                        self.cfg.device
                    )));
                }
                let _ = t.join();
            }
            self.state.interrupted.store(false, Ordering::SeqCst);
            let (ready_tx, ready_rx) = sync_channel(1);
            let (frames_tx, frames_rx) = sync_channel(2);
            let stop = Arc::new(AtomicBool::new(false));
            let cfg = self.cfg.clone();
            let thread_stop = Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name("vigil-v4l2".into())
                .spawn(move || camera_thread(cfg, ready_tx, frames_tx, thread_stop))
                .map_err(SourceError::Thread)?;
            self.state.running = Some(Running {
                frames: frames_rx,
                stop,
                thread,
            });
            match self.state.wait(&ready_rx) {
                Ok(Some(Ok(()))) => Ok(()),
                Ok(Some(Err(e))) => {
                    self.close();
                    Err(e)
                }
                Ok(None) => {
                    self.close();
                    Err(SourceError::Camera("the camera thread ended".into()))
                }
                Err(e) => {
                    self.close();
                    Err(e)
                }
            }
        }

        fn next_frame(&mut self) -> Result<Option<Pixels>, SourceError> {
            let Some(running) = self.state.running.as_ref() else {
                return Err(SourceError::NotOpen);
            };
            match self.state.wait(&running.frames)? {
                Some(frame) => frame.map(Some),
                None => Err(SourceError::Camera("the camera thread ended".into())),
            }
        }

        fn close(&mut self) {
            let Some(running) = self.state.running.take() else {
                return;
            };
            running.stop.store(true, Ordering::SeqCst);
            drop(running.frames); // unblocks a pending send
            let deadline = Instant::now() + RELEASE_WAIT;
            while !running.thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if running.thread.is_finished() {
                let _ = running.thread.join();
            } else {
                tracing::warn!(device = %self.cfg.device, "camera thread still blocked in the driver");
                self.state.stuck = Some(running.thread);
            }
        }

        fn describe(&self) -> String {
            format!(
                "v4l2 camera {} {}×{} at {} fps ({:?})",
                self.cfg.device, self.cfg.width, self.cfg.height, self.cfg.fps, self.cfg.format
            )
        }

        fn interrupter(&self) -> Option<Interrupter> {
            let flag = Arc::clone(&self.state.interrupted);
            Some(Interrupter::new(move || flag.store(true, Ordering::SeqCst)))
        }
    }

    impl Drop for V4l2Source {
        fn drop(&mut self) {
            self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::V4l2Source;

    #[test]
    fn device_names_map_to_indices() {
        assert_eq!(V4l2Source::device_index("0"), Some(0));
        assert_eq!(V4l2Source::device_index("/dev/video2"), Some(2));
        assert_eq!(V4l2Source::device_index("/dev/null"), None);
    }
}
