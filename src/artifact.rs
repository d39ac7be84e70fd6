//! The model artifact: one versioned safetensors file with everything needed to score
//! (PCA, scaling, KDE, threshold) and to refuse a mismatch (backbone hash, input size,
//! preprocessing, schema version). Written atomically; every load validated.
//!
//! Layout: f64 tensors `pca.mean [D]`, `pca.components [D,k]`, `kde.bw_transform [k,k]`,
//! `kde.dataset [n,k]`, `kde.center [k]`; header metadata `format = "vigil.model"`,
//! `schema_version`, `vigil` (JSON [`ArtifactMeta`]) and `checksum` (SHA-256 over the
//! metadata JSON and every tensor's bytes, so a flipped bit anywhere is caught).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::model::{Dfkde, FitInfo, GaussianKde, ModelError, Pca, Scaling};
use crate::preprocess::PreprocessConfig;

pub const FORMAT: &str = "vigil.model";
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum ArtifactError {
    #[error("cannot read model {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write model {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model {path} is corrupt or truncated: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is not a vigil model file ({reason})")]
    NotAModel { path: PathBuf, reason: String },
    #[error("model {path} has schema version {found}; this vigil reads version {supported} (refit with `vigil fit`)")]
    UnsupportedVersion {
        path: PathBuf,
        found: String,
        supported: u32,
    },
    #[error("model {path}: tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("model {path} was fitted with backbone sha256 {expected}, but the backbone in use is {found} ({backbone}): refit or use the matching ONNX")]
    BackboneMismatch {
        path: PathBuf,
        expected: String,
        found: String,
        backbone: PathBuf,
    },
    #[error("model {path}: {source}")]
    Invalid { path: PathBuf, source: ModelError },
}

/// The backbone a model was fitted with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneMeta {
    /// File name at fit time (informational).
    pub file: String,
    pub sha256: String,
    pub input_width: u32,
    pub input_height: u32,
    pub feature_dim: usize,
    pub outputs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DfkdeMeta {
    pub n_components: usize,
    pub scaling: Scaling,
    pub max_length: f64,
    pub log_norm: f64,
    pub scott_factor: f64,
    pub max_training_points: usize,
    pub seed: u64,
    pub n_input: usize,
    pub n_fit: usize,
    pub subsampled: bool,
}

/// How the threshold was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThresholdRule {
    /// `q` quantile of hold-out normal anomaly scores (vigil's default).
    HoldoutQuantile,
    /// anomalib without validation statistics: `pred_score > 0.5` ⇔ log-density < 12.
    AnomalibDefault,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdMeta {
    pub rule: ThresholdRule,
    /// Anomalous iff log-density < this (strict).
    pub log_density: f64,
    /// The same threshold on anomalib's sigmoid score: anomalous iff pred_score > this.
    pub pred_score: f64,
    pub quantile: Option<f64>,
    pub holdout_fraction: f64,
    pub n_holdout: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactMeta {
    pub schema_version: u32,
    /// Short content hash: changes whenever the model or its threshold does.
    pub model_id: String,
    /// RFC 3339 UTC.
    pub created: String,
    pub created_unix_ms: u64,
    pub vigil_version: String,
    pub backbone: BackboneMeta,
    pub preprocessing: PreprocessConfig,
    /// Feature preset (`"pooled"`: the backbone's outputs, mean-pooled, concatenated).
    pub features: String,
    pub dfkde: DfkdeMeta,
    pub threshold: ThresholdMeta,
    /// Quantiles (q, log-density) of the normal hold-out scores the threshold came from.
    pub normal_log_density_quantiles: Vec<(f64, f64)>,
    /// Normal images used (fit + hold-out).
    pub n_train: usize,
}

/// A model plus its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub meta: ArtifactMeta,
    pub model: Dfkde,
}

const T_MEAN: &str = "pca.mean";
const T_COMPONENTS: &str = "pca.components";
const T_BW: &str = "kde.bw_transform";
const T_DATASET: &str = "kde.dataset";
const T_CENTER: &str = "kde.center";

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn checksum(meta_json: &str, tensors: &[(&str, &[u8])]) -> String {
    let mut h = Sha256::new();
    h.update(meta_json.as_bytes());
    for (name, bytes) in tensors {
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl Artifact {
    /// Assemble an artifact and give it its content id.
    pub fn new(mut meta: ArtifactMeta, model: Dfkde) -> Artifact {
        meta.schema_version = SCHEMA_VERSION;
        meta.dfkde.n_components = model.n_components();
        meta.dfkde.n_fit = model.kde.n;
        meta.dfkde.log_norm = model.kde.log_norm;
        meta.dfkde.max_length = model.max_length;
        meta.dfkde.scott_factor = model.kde.scott_factor;
        meta.model_id = String::new();
        let mut h = Sha256::new();
        h.update(serde_json::to_string(&meta).unwrap_or_default().as_bytes());
        for part in [
            &model.pca.mean,
            &model.pca.components,
            &model.kde.bw_transform,
            &model.kde.dataset,
        ] {
            h.update(f64_bytes(part));
        }
        meta.model_id = h
            .finalize()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        Artifact { meta, model }
    }

    /// Serialise to bytes (safetensors).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let m = &self.model;
        let (d, k, n) = (m.pca.dim, m.pca.k, m.kde.n);
        let parts: Vec<(&str, Vec<u8>, Vec<usize>)> = vec![
            (T_MEAN, f64_bytes(&m.pca.mean), vec![d]),
            (T_COMPONENTS, f64_bytes(&m.pca.components), vec![d, k]),
            (T_BW, f64_bytes(&m.kde.bw_transform), vec![k, k]),
            (T_DATASET, f64_bytes(&m.kde.dataset), vec![n, k]),
            (T_CENTER, f64_bytes(&m.kde.center), vec![k]),
        ];
        let meta_json = serde_json::to_string(&self.meta).map_err(|e| e.to_string())?;
        let mut sorted: Vec<(&str, &[u8])> =
            parts.iter().map(|(n, b, _)| (*n, b.as_slice())).collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let sum = checksum(&meta_json, &sorted);
        let views: Vec<(&str, TensorView<'_>)> = parts
            .iter()
            .map(|(name, bytes, shape)| {
                TensorView::new(Dtype::F64, shape.clone(), bytes)
                    .map(|v| (*name, v))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        let info = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("schema_version".to_string(), SCHEMA_VERSION.to_string()),
            ("vigil".to_string(), meta_json),
            ("checksum".to_string(), sum),
        ]);
        safetensors::serialize(views, Some(info)).map_err(|e| e.to_string())
    }

    /// Write atomically: temp file in the same directory, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> Result<(), ArtifactError> {
        let bytes = self.to_bytes().map_err(|reason| ArtifactError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })?;
        write_atomic(path, &bytes).map_err(|source| ArtifactError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn load(path: &Path) -> Result<Artifact, ArtifactError> {
        let bytes = std::fs::read(path).map_err(|source| ArtifactError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parse and validate. `path` is only used in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Artifact, ArtifactError> {
        let p = || path.to_path_buf();
        let corrupt = |reason: String| ArtifactError::Corrupt { path: p(), reason };
        let st = SafeTensors::deserialize(bytes).map_err(|e| corrupt(format!("{e}")))?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(format!("{e}")))?;
        let info = header
            .metadata()
            .as_ref()
            .ok_or_else(|| ArtifactError::NotAModel {
                path: p(),
                reason: "no metadata".into(),
            })?;
        match info.get("format") {
            Some(f) if f == FORMAT => {}
            other => {
                return Err(ArtifactError::NotAModel {
                    path: p(),
                    reason: format!("format is {other:?}, expected '{FORMAT}'"),
                })
            }
        }
        let version = info.get("schema_version").cloned().unwrap_or_default();
        if version != SCHEMA_VERSION.to_string() {
            return Err(ArtifactError::UnsupportedVersion {
                path: p(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        let meta_json = info
            .get("vigil")
            .ok_or_else(|| corrupt("metadata entry 'vigil' missing".into()))?;
        let meta: ArtifactMeta =
            serde_json::from_str(meta_json).map_err(|e| corrupt(format!("metadata: {e}")))?;
        if meta.schema_version != SCHEMA_VERSION {
            return Err(ArtifactError::UnsupportedVersion {
                path: p(),
                found: meta.schema_version.to_string(),
                supported: SCHEMA_VERSION,
            });
        }

        let d = meta.backbone.feature_dim;
        let k = meta.dfkde.n_components;
        let n = meta.dfkde.n_fit;
        let expect = [
            (T_CENTER, vec![k]),
            (T_BW, vec![k, k]),
            (T_DATASET, vec![n, k]),
            (T_MEAN, vec![d]),
            (T_COMPONENTS, vec![d, k]),
        ];
        let mut sorted: Vec<(&str, &[u8])> = Vec::new();
        let mut values: HashMap<&str, Vec<f64>> = HashMap::new();
        for (name, shape) in &expect {
            let t = st
                .tensor(name)
                .map_err(|e| corrupt(format!("tensor '{name}': {e}")))?;
            if t.dtype() != Dtype::F64 {
                return Err(corrupt(format!(
                    "tensor '{name}' is {:?}, expected F64",
                    t.dtype()
                )));
            }
            if t.shape() != shape.as_slice() {
                return Err(ArtifactError::Shape {
                    path: p(),
                    tensor: (*name).to_string(),
                    found: t.shape().to_vec(),
                    expected: shape.clone(),
                });
            }
            sorted.push((name, t.data()));
            values.insert(
                name,
                t.data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
            );
        }
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let sum = checksum(meta_json, &sorted);
        if info.get("checksum") != Some(&sum) {
            return Err(corrupt(
                "checksum mismatch (the file was modified or damaged)".into(),
            ));
        }
        let mut take = |name: &str| values.remove(name).unwrap_or_default();
        let invalid = |source: ModelError| ArtifactError::Invalid { path: p(), source };
        let kde = GaussianKde::from_parts(
            k,
            take(T_BW),
            take(T_DATASET),
            meta.dfkde.log_norm,
            take(T_CENTER),
        )
        .map_err(invalid)?;
        let pca = Pca {
            mean: take(T_MEAN),
            components: take(T_COMPONENTS),
            explained: Vec::new(),
            dim: d,
            k,
        };
        if !(meta.dfkde.max_length > 0.0 && meta.dfkde.max_length.is_finite())
            || pca
                .mean
                .iter()
                .chain(&pca.components)
                .any(|v| !v.is_finite())
        {
            return Err(invalid(ModelError::InvalidParameter(
                "non-finite PCA state or ℓ_max".into(),
            )));
        }
        let model = Dfkde {
            pca,
            scaling: meta.dfkde.scaling,
            max_length: meta.dfkde.max_length,
            kde,
            info: FitInfo {
                n_input: meta.dfkde.n_input,
                n_fit: n,
                seed: meta.dfkde.seed,
                subsampled: meta.dfkde.subsampled,
            },
        };
        Ok(Artifact { meta, model })
    }

    /// Refuse to score features from a different backbone than the one fitted with.
    pub fn check_backbone(
        &self,
        path: &Path,
        sha256: &str,
        backbone: &Path,
    ) -> Result<(), ArtifactError> {
        if self.meta.backbone.sha256 != sha256 {
            return Err(ArtifactError::BackboneMismatch {
                path: path.to_path_buf(),
                expected: self.meta.backbone.sha256.clone(),
                found: sha256.to_string(),
                backbone: backbone.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Is this log-density anomalous under the stored threshold? (strict `<`)
    pub fn is_anomalous(&self, log_density: f64) -> bool {
        log_density < self.meta.threshold.log_density
    }
}

/// Write `bytes` to `path` atomically (same-directory temp file, fsync, rename, dir fsync).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Current time as (RFC 3339 UTC with milliseconds, unix ms).
pub fn now_rfc3339() -> (String, u64) {
    let now = std::time::SystemTime::now();
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (humantime::format_rfc3339_millis(now).to_string(), ms)
}
