//! Backbones turn a preprocessed CHW tensor into one pooled feature vector per image.
//!
//! [`tract::TractBackbone`] is the default (CPU, SIMD kernels of the host: AVX2/FMA on
//! x86-64, NEON on ARM). Any single-input NCHW float ONNX works: a 2-D output `[B, C]` is
//! the feature vector, a 4-D output `[B, C, H, W]` is mean-pooled over H×W, and several
//! outputs are concatenated **along channels** (anomalib concatenates layers along the
//! batch axis, which is broken for more than one layer; vigil deliberately does not).

pub mod select;
pub mod tract;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

pub use self::select::{AdapterChoice, AnyBackbone, BackendKind, BackendOptions};
pub use self::tract::TractBackbone;
#[cfg(feature = "wgpu")]
pub use self::wgpu::WgpuBackbone;

#[derive(Debug, Error)]
pub enum BackboneError {
    #[error("cannot read backbone {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("backbone {path} is not a usable ONNX model: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("backbone {path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    /// The graph has nodes whose ONNX operator this build cannot run (listed once each).
    #[error("backbone {path} uses ONNX operators this build of vigil cannot run: {}; {hint}", .ops.join(", "))]
    Operators {
        path: PathBuf,
        ops: Vec<String>,
        /// What to do about it: rebuild with `onnx-all-ops`, or re-export the model.
        hint: &'static str,
    },
    #[error("input tensor has {got} values, the backbone expects {expected} ({batch}×3×{height}×{width})")]
    InputSize {
        got: usize,
        expected: usize,
        batch: usize,
        height: usize,
        width: usize,
    },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("no wgpu adapter for adapter = {choice:?} (found: {found})")]
    NoAdapter { choice: String, found: String },
}

/// What a loaded backbone is, for the artifact and for logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackboneInfo {
    pub path: PathBuf,
    /// Hex SHA-256 of the ONNX file: the artifact refuses a different backbone.
    pub sha256: String,
    pub input_width: u32,
    pub input_height: u32,
    pub feature_dim: usize,
    /// Images per run (the tensor's leading dimension).
    pub batch: usize,
    /// Output names used, in concatenation order.
    pub outputs: Vec<String>,
}

/// A feature extractor. One instance per inference thread (it owns its buffers).
impl BackboneInfo {
    /// Checks the buffers of an `extract(input, images, out)` call against this backbone.
    pub fn check_extract(
        &self,
        input: usize,
        images: usize,
        out: usize,
    ) -> Result<(), BackboneError> {
        let (b, h, w) = (
            self.batch,
            self.input_height as usize,
            self.input_width as usize,
        );
        let per = 3 * h * w;
        if images == 0 || images > b || input != images * per || out != images * self.feature_dim {
            return Err(BackboneError::InputSize {
                got: input,
                expected: b * per,
                batch: b,
                height: h,
                width: w,
            });
        }
        Ok(())
    }
}

pub trait Backbone: Send {
    fn info(&self) -> &BackboneInfo;

    /// Run on `images` preprocessed images laid out NCHW in `input`
    /// (`images × 3 × H × W`, `images ≤ batch`), writing `images × feature_dim` to `out`.
    fn extract(
        &mut self,
        input: &[f32],
        images: usize,
        out: &mut [f32],
    ) -> Result<(), BackboneError>;

    /// One image → a fresh feature vector.
    fn extract_one(&mut self, input: &[f32]) -> Result<Vec<f32>, BackboneError> {
        let mut out = vec![0.0; self.info().feature_dim];
        self.extract(input, 1, &mut out)?;
        Ok(out)
    }
}

/// The shipped backbone, relative to the working directory.
pub const DEFAULT_BACKBONE: &str = "models/efficientnet_lite0_pooled.onnx";
/// Where packages install it.
pub const SYSTEM_BACKBONE: &str = "/usr/share/vigil/models/efficientnet_lite0_pooled.onnx";

/// The default backbone: the installed one if present, else [`DEFAULT_BACKBONE`] relative
/// to the working directory, else the source tree's copy (development builds).
pub fn default_backbone_path() -> PathBuf {
    default_model_path("efficientnet_lite0_pooled.onnx")
}

/// A shipped model file (`models/<file>`): the installed copy under /usr/share/vigil/models
/// if present, else `models/<file>` relative to the working directory, else the source
/// tree's copy (development builds).
pub fn default_model_path(file: &str) -> PathBuf {
    let rel = Path::new("models").join(file);
    [
        Path::new("/usr/share/vigil/models").join(file),
        rel.clone(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join(&rel),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or(rel)
}

/// Hex SHA-256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> Result<String, BackboneError> {
    let bytes = std::fs::read(path).map_err(|source| BackboneError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(sha256_hex(&bytes))
}
