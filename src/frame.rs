//! A captured frame as it travels from a source to the inference workers.

use std::time::{Instant, SystemTime};

/// Pixel payload: raw RGB8, or an encoded image (JPEG/PNG) decoded by the worker, which
/// can use reduced-scale JPEG decoding when the frame is much larger than the CNN input.
#[derive(Debug, Clone)]
pub enum Pixels {
    /// Interleaved RGB, `3 · width · height` bytes.
    Rgb8 {
        width: u32,
        height: u32,
        data: Vec<u8>,
    },
    /// An encoded still image (e.g. an MJPEG frame or a file's bytes).
    Encoded { data: Vec<u8> },
}

/// One frame with its capture time (travels with it to the event).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Per-camera sequence number, from 0, counting every captured frame.
    pub seq: u64,
    /// Wall-clock capture time (for payloads).
    pub captured_at: SystemTime,
    /// Monotonic capture time (for latency measurements).
    pub captured_mono: Instant,
    pub pixels: Pixels,
    /// Where it came from, when meaningful (a file path for folder sources).
    pub origin: Option<String>,
}

impl Frame {
    pub fn new(seq: u64, pixels: Pixels, origin: Option<String>) -> Frame {
        Frame {
            seq,
            captured_at: SystemTime::now(),
            captured_mono: Instant::now(),
            pixels,
            origin,
        }
    }
}
