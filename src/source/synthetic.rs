//! `type = "synthetic"`: a generated brushed-metal-like surface with natural per-frame
//! variation and periodically injected dark defects.
//!
//! Everything is a pure function of `(seed, frame index)`: the texture comes from ChaCha8
//! stream 0 of the seed, frame `i`'s variation from stream `i + 1`, injection `k`'s defect
//! from stream `2^63 + k`.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::pacing::Pacer;
use super::{FrameSource, Interrupter, SourceError, SyntheticConfig};
use crate::frame::Pixels;

/// `origin` of a frame without an injected defect.
pub const ORIGIN_NORMAL: &str = "synthetic:normal";
/// `origin` of a frame with an injected defect.
pub const ORIGIN_DEFECT: &str = "synthetic:defect";

/// Horizontal vibration amplitude in pixels (the texture is rendered this much wider on
/// each side so a shifted frame never shows an edge).
const JITTER: usize = 2;

/// Generates frames (see [`SyntheticConfig`]).
#[derive(Debug)]
pub struct SyntheticSource {
    cfg: SyntheticConfig,
    /// Surface brightness in [0, 1], `(width + 2·JITTER) × height`, row-major.
    texture: Vec<f32>,
    stride: usize,
    pacer: Pacer,
    index: u64,
    open: bool,
    last_defect: bool,
}

#[derive(Debug, Clone, Copy)]
enum Defect {
    /// A dark line segment (a scratch).
    Scratch {
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        half_width: f32,
    },
    /// A dark ellipse-like blob (a stain, a dent's shadow).
    Blob { cx: f32, cy: f32, rx: f32, ry: f32 },
}

impl SyntheticSource {
    pub fn new(cfg: SyntheticConfig) -> Result<Self, SourceError> {
        cfg.validate()?;
        let stride = cfg.width as usize + 2 * JITTER;
        let texture = make_texture(stride, cfg.height as usize, cfg.seed);
        let pacer = Pacer::new(cfg.fps);
        Ok(SyntheticSource {
            cfg,
            texture,
            stride,
            pacer,
            index: 0,
            open: false,
            last_defect: false,
        })
    }

    /// Whether frame `index` (from 0) carries an injected defect.
    pub fn is_defect_frame(cfg: &SyntheticConfig, index: u64) -> bool {
        let every = u64::from(cfg.defect_every);
        every > 0 && index >= every && index % every < u64::from(cfg.defect_frames)
    }

    /// Renders frame `index` (independent of pacing and of the frames before it).
    pub fn render(&self, index: u64) -> (Vec<u8>, bool) {
        let (w, h) = (self.cfg.width as usize, self.cfg.height as usize);
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream(index.wrapping_add(1));
        // Vibration: a shift of −JITTER..=JITTER px; illumination: slow drift + flicker.
        let shift = (rng.next_u32() % (2 * JITTER as u32 + 1)) as usize;
        let phase = index as f32 * std::f32::consts::TAU / 60.0;
        let gain = 1.0 + 0.04 * phase.sin() + 0.01 * (unit(rng.next_u32()) - 0.5);

        let defect = Self::is_defect_frame(&self.cfg, index).then(|| {
            let every = u64::from(self.cfg.defect_every);
            self.defect(index / every, (index % every) as f32, shift)
        });

        let mut out = vec![0u8; w * h * 3];
        let mut noise = 0u32;
        for y in 0..h {
            let row = &self.texture[y * self.stride + shift..y * self.stride + shift + w];
            let out_row = &mut out[y * w * 3..(y + 1) * w * 3];
            for (x, (&t, px)) in row.iter().zip(out_row.chunks_exact_mut(3)).enumerate() {
                if x % 4 == 0 {
                    noise = rng.next_u32();
                }
                // Sensor noise: ±4 grey levels, one byte of the random word per pixel.
                let n = ((noise >> ((x % 4) * 8)) & 0xff) as f32 / 255.0 * 8.0 - 4.0;
                let mut v = t * gain;
                if let Some(d) = &defect {
                    v *= d.shade(x as f32 + 0.5, y as f32 + 0.5);
                }
                let v = v * 255.0 + n;
                // A faint cool tint, like steel under daylight LEDs.
                px[0] = (v * 0.96).clamp(0.0, 255.0) as u8;
                px[1] = (v * 0.98).clamp(0.0, 255.0) as u8;
                px[2] = (v * 1.02).clamp(0.0, 255.0) as u8;
            }
        }
        (out, defect.is_some())
    }

    /// The defect of injection `k`, drifting a little over its frames (`age` from 0) as the
    /// part moves, and shaking with the surface.
    fn defect(&self, k: u64, age: f32, shift: usize) -> Defect {
        let (w, h) = (self.cfg.width as f32, self.cfg.height as f32);
        let m = w.min(h);
        let mut rng = ChaCha8Rng::seed_from_u64(self.cfg.seed);
        rng.set_stream((1u64 << 63) | k);
        let mut u = || unit(rng.next_u32());
        let cx = w * (0.15 + 0.7 * u()) + age * m * 0.01 - (shift as f32 - JITTER as f32);
        let cy = h * (0.15 + 0.7 * u());
        if u() < 0.5 {
            let angle = u() * std::f32::consts::PI;
            let half_len = m * (0.08 + 0.14 * u());
            let (s, c) = angle.sin_cos();
            Defect::Scratch {
                x0: cx - c * half_len,
                y0: cy - s * half_len,
                x1: cx + c * half_len,
                y1: cy + s * half_len,
                half_width: (m / 160.0 * (1.0 + 1.5 * u())).max(1.0),
            }
        } else {
            Defect::Blob {
                cx,
                cy,
                rx: (m * (0.03 + 0.05 * u())).max(2.0),
                ry: (m * (0.03 + 0.05 * u())).max(2.0),
            }
        }
    }
}

impl Defect {
    /// Brightness multiplier at a pixel centre: 0.3 in the core, soft edge, 1 outside.
    fn shade(&self, x: f32, y: f32) -> f32 {
        // d ≤ 1 inside the defect, soft falloff over one more unit.
        let d = match *self {
            Defect::Scratch {
                x0,
                y0,
                x1,
                y1,
                half_width,
            } => {
                let (dx, dy) = (x1 - x0, y1 - y0);
                let len2 = (dx * dx + dy * dy).max(1e-6);
                let t = (((x - x0) * dx + (y - y0) * dy) / len2).clamp(0.0, 1.0);
                let (px, py) = (x0 + t * dx - x, y0 + t * dy - y);
                (px * px + py * py).sqrt() / half_width
            }
            Defect::Blob { cx, cy, rx, ry } => {
                let (nx, ny) = ((x - cx) / rx, (y - cy) / ry);
                (nx * nx + ny * ny).sqrt()
            }
        };
        if d >= 2.0 {
            return 1.0;
        }
        let a = if d <= 1.0 {
            1.0
        } else {
            let t = 2.0 - d; // 1 at the core's edge, 0 outside
            t * t * (3.0 - 2.0 * t)
        };
        1.0 - 0.7 * a
    }
}

/// A uniform value in [0, 1) from 32 random bits.
fn unit(r: u32) -> f32 {
    (r >> 8) as f32 / (1u32 << 24) as f32
}

/// Brushed metal: long horizontal streaks (noise box-blurred along x), a slow 2-D
/// shading, faint row banding. Mean 0.5, all values within about [0.3, 0.7].
fn make_texture(w: usize, h: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(0);
    let mut u = move || unit(rng.next_u32()) * 2.0 - 1.0;

    // Streaks: uniform noise averaged over a (2r+1)-wide window, renormalised to σ ≈ 1.
    let r = 12usize;
    let norm = (3.0 * (2 * r + 1) as f32).sqrt() / (2 * r + 1) as f32;
    let mut streaks = vec![0f32; w * h];
    let mut raw = vec![0f32; w];
    let wrap = |i: isize| i.rem_euclid(w as isize) as usize;
    let ri = r as isize;
    for y in 0..h {
        raw.iter_mut().for_each(|v| *v = u());
        // Window [x − r, x + r], wrapping around the row.
        let mut acc: f32 = (-ri..=ri).map(|i| raw[wrap(i)]).sum();
        for x in 0..w as isize {
            streaks[y * w + x as usize] = acc * norm;
            acc += raw[wrap(x + ri + 1)] - raw[wrap(x - ri)];
        }
    }
    let rows: Vec<f32> = (0..h).map(|_| u()).collect();

    // Slow shading: value noise on a coarse grid, smoothstep-interpolated.
    let cell = 96.0f32;
    let (gw, gh) = (
        (w as f32 / cell) as usize + 2,
        (h as f32 / cell) as usize + 2,
    );
    let grid: Vec<f32> = (0..gw * gh).map(|_| u()).collect();
    let smooth = |t: f32| t * t * (3.0 - 2.0 * t);

    let mut tex = vec![0f32; w * h];
    for y in 0..h {
        let gy = y as f32 / cell;
        let (iy, fy) = (gy as usize, smooth(gy.fract()));
        for x in 0..w {
            let gx = x as f32 / cell;
            let (ix, fx) = (gx as usize, smooth(gx.fract()));
            let g = |i: usize, j: usize| grid[j * gw + i];
            let top = g(ix, iy) + (g(ix + 1, iy) - g(ix, iy)) * fx;
            let bottom = g(ix, iy + 1) + (g(ix + 1, iy + 1) - g(ix, iy + 1)) * fx;
            let shade = top + (bottom - top) * fy;
            let v = 0.5 + 0.035 * streaks[y * w + x] + 0.06 * shade + 0.02 * rows[y];
            tex[y * w + x] = v.clamp(0.3, 0.7);
        }
    }
    tex
}

impl FrameSource for SyntheticSource {
    fn open(&mut self) -> Result<(), SourceError> {
        self.pacer.reset();
        self.open = true;
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Option<Pixels>, SourceError> {
        if !self.open {
            return Err(SourceError::NotOpen);
        }
        self.pacer.wait()?;
        let (data, defect) = self.render(self.index);
        self.index += 1;
        self.last_defect = defect;
        Ok(Some(Pixels::Rgb8 {
            width: self.cfg.width,
            height: self.cfg.height,
            data,
        }))
    }

    fn close(&mut self) {
        self.open = false;
    }

    fn describe(&self) -> String {
        format!(
            "synthetic {}×{} at {} fps, seed {}, defect every {} frames",
            self.cfg.width, self.cfg.height, self.cfg.fps, self.cfg.seed, self.cfg.defect_every
        )
    }

    fn last_origin(&self) -> Option<String> {
        Some(
            if self.last_defect {
                ORIGIN_DEFECT
            } else {
                ORIGIN_NORMAL
            }
            .to_string(),
        )
    }

    fn interrupter(&self) -> Option<Interrupter> {
        Some(self.pacer.interrupter())
    }
}
