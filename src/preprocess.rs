//! Image → backbone input tensor, the one function used by `fit` and by inference so both
//! see the same pixels: decode (JPEG/PNG; gray, RGB, RGBA, 8/16-bit → RGB in [0, 1]),
//! antialiased bilinear resize straight to the backbone size (no crop, aspect not kept —
//! torchvision `Resize((h, w), antialias=True)`, as anomalib), then per-channel
//! normalisation, laid out CHW.

use std::path::Path;

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::F32x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PreprocessError {
    #[error("cannot read image {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot decode image {path}: {source}")]
    Decode {
        path: String,
        source: image::ImageError,
    },
    #[error("image {path} is empty ({width}×{height})")]
    Empty {
        path: String,
        width: u32,
        height: u32,
    },
    #[error("raw frame buffer has {got} bytes, {width}×{height} RGB needs {need}")]
    BadFrame {
        width: u32,
        height: u32,
        got: usize,
        need: usize,
    },
    #[error("resize failed: {0}")]
    Resize(String),
}

/// Per-channel input normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalization {
    /// `(x − mean) / std` with ImageNet's mean (0.485, 0.456, 0.406) and std
    /// (0.229, 0.224, 0.225), x in [0, 1] (anomalib's default).
    Imagenet,
    /// TF-Lite's native `(255 x − 127) / 128` (EfficientNet-Lite's training convention).
    Tflite,
}

impl Normalization {
    fn mean_std(self) -> ([f32; 3], [f32; 3]) {
        match self {
            Normalization::Imagenet => ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Normalization::Tflite => ([127.0 / 255.0; 3], [128.0 / 255.0; 3]),
        }
    }
}

/// What the backbone expects; stored in the model artifact so fit and inference agree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    pub width: u32,
    pub height: u32,
    pub normalization: Normalization,
    /// Always `"bilinear-antialias"` for now (recorded for the artifact's sake).
    #[serde(default = "default_resize")]
    pub resize: ResizeKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeKind {
    BilinearAntialias,
}

fn default_resize() -> ResizeKind {
    ResizeKind::BilinearAntialias
}

impl PreprocessConfig {
    pub fn imagenet(width: u32, height: u32) -> Self {
        PreprocessConfig {
            width,
            height,
            normalization: Normalization::Imagenet,
            resize: ResizeKind::BilinearAntialias,
        }
    }

    pub fn tensor_len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }
}

/// An RGB image in [0, 1], interleaved, before resizing.
#[derive(Debug, Clone)]
pub struct RgbF32 {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<F32x3>,
}

/// Decode an encoded image (JPEG / PNG) from bytes.
pub fn decode_bytes(bytes: &[u8], name: &str) -> Result<RgbF32, PreprocessError> {
    let img = image::load_from_memory(bytes).map_err(|source| PreprocessError::Decode {
        path: name.to_string(),
        source,
    })?;
    from_dynamic(img, name)
}

/// Decode an image file (format from its content, not its extension).
pub fn decode_file(path: &Path) -> Result<RgbF32, PreprocessError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PreprocessError::Read {
        path: name.clone(),
        source,
    })?;
    decode_bytes(&bytes, &name)
}

fn from_dynamic(img: image::DynamicImage, name: &str) -> Result<RgbF32, PreprocessError> {
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 {
        return Err(PreprocessError::Empty {
            path: name.to_string(),
            width,
            height,
        });
    }
    // 8-bit → v/255, 16-bit → v/65535; gray replicated; alpha dropped (PIL convert("RGB")).
    let rgb = img.to_rgb32f();
    let pixels = rgb.pixels().map(|p| F32x3::new(p.0)).collect();
    Ok(RgbF32 {
        width,
        height,
        pixels,
    })
}

/// Decode a frame for a backbone input of `cfg`'s size. A JPEG at least 4× larger than the
/// input on both sides is decoded at a reduced DCT scale (1/2, 1/4 or 1/8) that keeps it at
/// least 2× the input, so the antialiased resize still averages over real pixels; anything
/// else is decoded in full like [`decode_bytes`].
pub fn decode_for_input(
    bytes: &[u8],
    name: &str,
    cfg: &PreprocessConfig,
) -> Result<RgbF32, PreprocessError> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        if let Some(img) = decode_jpeg_reduced(bytes, cfg) {
            return Ok(img);
        }
    }
    decode_bytes(bytes, name)
}

fn decode_jpeg_reduced(bytes: &[u8], cfg: &PreprocessConfig) -> Option<RgbF32> {
    let mut dec = jpeg_decoder::Decoder::new(std::io::Cursor::new(bytes));
    dec.read_info().ok()?;
    let info = dec.info()?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    if w < 4 * cfg.width || h < 4 * cfg.height {
        return None;
    }
    // Largest DCT scale-down (8, 4, 2) that keeps both sides ≥ 2× the input.
    let scale = [8u32, 4, 2]
        .into_iter()
        .find(|s| w / s >= 2 * cfg.width && h / s >= 2 * cfg.height)?;
    let (sw, sh) = dec
        .scale(w.div_ceil(scale) as u16, h.div_ceil(scale) as u16)
        .ok()?;
    let data = dec.decode().ok()?;
    let (width, height) = (u32::from(sw), u32::from(sh));
    let n = (width * height) as usize;
    let pixels: Vec<F32x3> = match dec.info()?.pixel_format {
        jpeg_decoder::PixelFormat::L8 if data.len() >= n => data[..n]
            .iter()
            .map(|&v| F32x3::new([f32::from(v) / 255.0; 3]))
            .collect(),
        jpeg_decoder::PixelFormat::RGB24 if data.len() >= 3 * n => rgb8_to_f32(&data[..3 * n]),
        _ => return None,
    };
    Some(RgbF32 {
        width,
        height,
        pixels,
    })
}

/// Wrap a raw interleaved RGB8 frame (e.g. from a camera) as [0, 1] floats.
pub fn from_rgb8(data: &[u8], width: u32, height: u32) -> Result<RgbF32, PreprocessError> {
    let need = 3 * width as usize * height as usize;
    if data.len() != need || need == 0 {
        return Err(PreprocessError::BadFrame {
            width,
            height,
            got: data.len(),
            need,
        });
    }
    let pixels = rgb8_to_f32(data);
    Ok(RgbF32 {
        width,
        height,
        pixels,
    })
}

fn rgb8_to_f32(data: &[u8]) -> Vec<F32x3> {
    data.chunks_exact(3)
        .map(|c| {
            F32x3::new([
                f32::from(c[0]) / 255.0,
                f32::from(c[1]) / 255.0,
                f32::from(c[2]) / 255.0,
            ])
        })
        .collect()
}

/// Reusable resize + normalise stage (keeps its buffers between frames).
pub struct Preprocessor {
    cfg: PreprocessConfig,
    resizer: Resizer,
    dst: TypedImage<'static, F32x3>,
}

impl Preprocessor {
    pub fn new(cfg: PreprocessConfig) -> Self {
        Preprocessor {
            cfg,
            resizer: Resizer::new(),
            dst: TypedImage::new(cfg.width, cfg.height),
        }
    }

    pub fn config(&self) -> &PreprocessConfig {
        &self.cfg
    }

    /// Resize only: CHW values in [0, 1] (what the reference fixtures hold).
    pub fn resize_chw(&mut self, img: &RgbF32, out: &mut [f32]) -> Result<(), PreprocessError> {
        let src = TypedImageRef::new(img.width, img.height, &img.pixels)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        let opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        self.resizer
            .resize_typed(&src, &mut self.dst, &opts)
            .map_err(|e| PreprocessError::Resize(e.to_string()))?;
        let plane = (self.cfg.width * self.cfg.height) as usize;
        if out.len() != 3 * plane {
            return Err(PreprocessError::Resize(format!(
                "output buffer {} != {}",
                out.len(),
                3 * plane
            )));
        }
        for (i, p) in self.dst.pixels().iter().enumerate() {
            let [r, g, b] = p.0;
            out[i] = r;
            out[plane + i] = g;
            out[2 * plane + i] = b;
        }
        Ok(())
    }

    /// Resize and normalise into `out` (CHW, length 3·H·W).
    pub fn run(&mut self, img: &RgbF32, out: &mut [f32]) -> Result<(), PreprocessError> {
        self.resize_chw(img, out)?;
        let plane = (self.cfg.width * self.cfg.height) as usize;
        let (mean, std) = self.cfg.normalization.mean_std();
        for c in 0..3 {
            let inv = 1.0 / std[c];
            for v in &mut out[c * plane..(c + 1) * plane] {
                *v = (*v - mean[c]) * inv;
            }
        }
        Ok(())
    }

    /// Convenience: decode a file and preprocess it into a fresh tensor.
    pub fn file(&mut self, path: &Path) -> Result<Vec<f32>, PreprocessError> {
        let img = decode_file(path)?;
        let mut out = vec![0.0; self.cfg.tensor_len()];
        self.run(&img, &mut out)?;
        Ok(out)
    }
}
