//! Images on disk → pooled feature matrix, through the shared preprocessing and a backbone.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use thiserror::Error;

use crate::backbone::{Backbone, BackboneError};
use crate::frame::Pixels;
use crate::preprocess::{self, PreprocessConfig, PreprocessError, Preprocessor, RgbF32};

#[derive(Debug, Error)]
pub enum FeatureError {
    #[error("cannot list {path}: {source}")]
    List {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no images (.jpg, .jpeg, .png) in {0}")]
    NoImages(PathBuf),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Backbone(#[from] BackboneError),
}

/// Image files directly inside `dir` (JPEG / PNG by extension), sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, FeatureError> {
    let rd = std::fs::read_dir(dir).map_err(|source| FeatureError::List {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| FeatureError::List {
            path: dir.to_path_buf(),
            source,
        })?;
        let p = entry.path();
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if p.is_file() && matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
            out.push(p);
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(FeatureError::NoImages(dir.to_path_buf()));
    }
    Ok(out)
}

/// A progress bar on stderr for jobs longer than a second (hidden when not a terminal).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// Decode a captured frame for a backbone input of `cfg`'s size: the one decode used by
/// the daemon's workers, `calibrate` and `demo` (reduced-DCT JPEG for large frames).
pub fn decode_pixels(
    pixels: &Pixels,
    origin: &str,
    cfg: &PreprocessConfig,
) -> Result<RgbF32, PreprocessError> {
    match pixels {
        Pixels::Encoded { data } => preprocess::decode_for_input(data, origin, cfg),
        Pixels::Rgb8 {
            width,
            height,
            data,
        } => preprocess::from_rgb8(data, *width, *height),
    }
}

/// Frames → pooled features: the shared preprocessing (resize + normalise) and one backbone
/// run per image. Used by `fit` / `eval` / `score` (files), `calibrate` and `demo` (frames).
pub struct FeatureExtractor {
    pre: Preprocessor,
    tensor: Vec<f32>,
}

impl FeatureExtractor {
    pub fn new(preprocess: PreprocessConfig) -> Self {
        FeatureExtractor {
            pre: Preprocessor::new(preprocess),
            tensor: vec![0.0f32; preprocess.tensor_len()],
        }
    }

    pub fn config(&self) -> &PreprocessConfig {
        self.pre.config()
    }

    /// Features of a decoded image into `out` (`feature_dim` values).
    pub fn image(
        &mut self,
        backbone: &mut dyn Backbone,
        img: &RgbF32,
        out: &mut [f32],
    ) -> Result<(), FeatureError> {
        self.pre.run(img, &mut self.tensor)?;
        backbone.extract(&self.tensor, 1, out)?;
        Ok(())
    }

    /// Features of a captured frame (decoded with [`decode_pixels`]) into `out`.
    pub fn pixels(
        &mut self,
        backbone: &mut dyn Backbone,
        pixels: &Pixels,
        origin: &str,
        out: &mut [f32],
    ) -> Result<(), FeatureError> {
        let img = decode_pixels(pixels, origin, self.pre.config())?;
        self.image(backbone, &img, out)
    }
}

/// Extract features of every image: row-major `paths.len() × feature_dim`.
pub fn extract_paths(
    backbone: &mut dyn Backbone,
    preprocess: PreprocessConfig,
    paths: &[PathBuf],
    what: &str,
) -> Result<Vec<f32>, FeatureError> {
    let fd = backbone.info().feature_dim;
    let mut fx = FeatureExtractor::new(preprocess);
    let mut out = vec![0.0f32; paths.len() * fd];
    let pb = progress(paths.len() as u64, what);
    for (i, p) in paths.iter().enumerate() {
        let img = crate::preprocess::decode_file(p)?;
        fx.image(backbone, &img, &mut out[i * fd..(i + 1) * fd])?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}
