//! Images on disk → pooled feature matrix, through the shared preprocessing and a backbone.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use thiserror::Error;

use crate::backbone::{Backbone, BackboneError};
use crate::preprocess::{PreprocessConfig, PreprocessError, Preprocessor};

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

/// Extract features of every image: row-major `paths.len() × feature_dim`.
pub fn extract_paths(
    backbone: &mut dyn Backbone,
    preprocess: PreprocessConfig,
    paths: &[PathBuf],
    what: &str,
) -> Result<Vec<f32>, FeatureError> {
    let fd = backbone.info().feature_dim;
    let mut pre = Preprocessor::new(preprocess);
    let mut tensor = vec![0.0f32; preprocess.tensor_len()];
    let mut out = vec![0.0f32; paths.len() * fd];
    let pb = progress(paths.len() as u64, what);
    for (i, p) in paths.iter().enumerate() {
        let img = crate::preprocess::decode_file(p)?;
        pre.run(&img, &mut tensor)?;
        backbone.extract(&tensor, 1, &mut out[i * fd..(i + 1) * fd])?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(out)
}
