//! Versioned model store of one camera: `<state_dir>/models/<camera>/<model-id>.safetensors`
//! plus a `current` pointer file holding the id in service (written atomically: temp file,
//! fsync, rename). A calibration adds a version and moves the pointer; `vigil model
//! rollback` moves it back to the previous version (by creation time). The last
//! `keep` versions are kept; the one in service is never removed.
//!
//! When a camera has no `current` pointer yet, it serves its configured model
//! (`[[camera]] model`, default `<state_dir>/models/<id>.safetensors`); the first
//! calibration imports that model into the store so that a rollback can return to it.

use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::artifact::{write_atomic, Artifact, ArtifactError};
use crate::config::CameraConfig;

/// Name of the pointer file inside a camera's store.
pub const CURRENT: &str = "current";
/// Advisory lock (`flock`) taken around every change of a store, by the CLI and the
/// daemon alike.
pub const LOCK: &str = ".lock";
const EXT: &str = "safetensors";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("model store {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model store {path}: the `current` pointer names `{id}`, which is not a stored model")]
    DanglingPointer { path: PathBuf, id: String },
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("camera {camera}: no earlier model to roll back to ({reason})")]
    NothingToRollBack { camera: String, reason: String },
    #[error("model id `{id}` is not 12 lowercase hex digits: refused as a file name in the store")]
    InvalidId { id: String },
    #[error("camera {camera}: no model `{id}` in {path}")]
    UnknownModel {
        camera: String,
        id: String,
        path: PathBuf,
    },
}

/// Whether `id` has the shape of a vigil model id (12 lowercase hex digits).
pub fn is_model_id(id: &str) -> bool {
    id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One stored model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredModel {
    pub id: String,
    pub path: PathBuf,
    pub created: String,
    pub created_unix_ms: u64,
    pub n_train: usize,
    /// Log-density threshold recorded in the artifact.
    pub threshold: f64,
    /// The `current` pointer names it.
    pub current: bool,
}

/// An exclusive hold on a camera's store; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
}

/// The store of one camera.
#[derive(Debug, Clone)]
pub struct ModelStore {
    camera: String,
    dir: PathBuf,
}

impl ModelStore {
    pub fn new(state_dir: &Path, camera: &str) -> ModelStore {
        ModelStore {
            camera: camera.to_string(),
            dir: state_dir.join("models").join(camera),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of version `id`. Ids become file names, so only what vigil itself mints
    /// (12 lowercase hex digits, see `Artifact`) is accepted: an artifact or pointer file
    /// naming `../x` can never reach outside the store.
    fn version_path(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !is_model_id(id) {
            return Err(StoreError::InvalidId { id: id.to_string() });
        }
        Ok(self.dir.join(format!("{id}.{EXT}")))
    }

    /// The id the `current` pointer names, if there is a pointer.
    pub fn current_id(&self) -> Result<Option<String>, StoreError> {
        let p = self.dir.join(CURRENT);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&p)(e)),
        }
    }

    /// The model file in service according to the store, if it has a pointer.
    pub fn current_path(&self) -> Result<Option<PathBuf>, StoreError> {
        let Some(id) = self.current_id()? else {
            return Ok(None);
        };
        let path = match self.version_path(&id) {
            Ok(p) if p.is_file() => p,
            _ => {
                return Err(StoreError::DanglingPointer {
                    path: self.dir.clone(),
                    id,
                })
            }
        };
        Ok(Some(path))
    }

    /// Every stored version, oldest first (by creation time). Unreadable files are skipped
    /// with a warning.
    pub fn list(&self) -> Result<Vec<StoredModel>, StoreError> {
        let current = self.current_id()?;
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let path = entry.map_err(io(&self.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.') || path.extension().and_then(|e| e.to_str()) != Some(EXT) {
                continue;
            }
            match Artifact::load(&path) {
                Ok(a) => out.push(StoredModel {
                    current: current.as_deref() == Some(a.meta.model_id.as_str()),
                    id: a.meta.model_id,
                    path,
                    created: a.meta.created,
                    created_unix_ms: a.meta.created_unix_ms,
                    n_train: a.meta.n_train,
                    threshold: a.meta.threshold.log_density,
                }),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable model in the store")
                }
            }
        }
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(out)
    }

    fn ensure_dir(&self) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))
    }

    /// Take the store's advisory lock (blocks while another process or thread holds it).
    /// `import`, `add` and `rollback` take it themselves; hold it around
    /// [`ModelStore::previous`] + [`ModelStore::set_current`] to move the pointer.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        self.ensure_dir()?;
        let p = self.dir.join(LOCK);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io(&p))?;
        file.lock().map_err(io(&p))?;
        Ok(StoreLock { _file: file })
    }

    /// Copy an existing model file (the configured one, in service before the first
    /// calibration) into the store unless a version with its id is already there.
    pub fn import(&self, artifact: &Artifact, file: &Path) -> Result<(), StoreError> {
        let dst = self.version_path(&artifact.meta.model_id)?;
        let _lock = self.lock()?;
        if dst.is_file() {
            return Ok(());
        }
        let bytes = std::fs::read(file).map_err(io(file))?;
        write_atomic(&dst, &bytes).map_err(io(&dst))
    }

    /// Write a new version, point `current` at it and prune old versions beyond `keep`.
    /// Returns the new file's path.
    pub fn add(&self, artifact: &Artifact, keep: usize) -> Result<PathBuf, StoreError> {
        let _lock = self.lock()?;
        let path = self.version_path(&artifact.meta.model_id)?;
        artifact.save(&path)?;
        self.set_current(&artifact.meta.model_id)?;
        // The new version is in service: failing to tidy up old ones is not a failure.
        if let Err(e) = self.prune(keep) {
            tracing::warn!(camera = %self.camera, error = %e, "old model versions not pruned");
        }
        Ok(path)
    }

    /// Point `current` at a stored version (the caller holds [`ModelStore::lock`]).
    pub fn set_current(&self, id: &str) -> Result<(), StoreError> {
        if !self.version_path(id).is_ok_and(|p| p.is_file()) {
            return Err(StoreError::UnknownModel {
                camera: self.camera.clone(),
                id: id.to_string(),
                path: self.dir.clone(),
            });
        }
        let p = self.dir.join(CURRENT);
        write_atomic(&p, format!("{id}\n").as_bytes()).map_err(io(&p))
    }

    /// Move `current` to the version before the current one ([`ModelStore::previous`]).
    /// `in_service` is the id served when the store has no pointer yet (the configured
    /// model).
    pub fn rollback(&self, in_service: Option<&str>) -> Result<StoredModel, StoreError> {
        let _lock = self.lock()?;
        let prev = self.previous(in_service)?;
        self.set_current(&prev.id)?;
        Ok(prev)
    }

    /// The version a rollback returns to: the newest created before the current one.
    /// Nothing is changed.
    pub fn previous(&self, in_service: Option<&str>) -> Result<StoredModel, StoreError> {
        let list = self.list()?;
        let current = self
            .current_id()?
            .or_else(|| in_service.map(str::to_string));
        let Some(current) = current else {
            return Err(StoreError::NothingToRollBack {
                camera: self.camera.clone(),
                reason: "no model in service".into(),
            });
        };
        let Some(pos) = list.iter().position(|m| m.id == current) else {
            return Err(StoreError::NothingToRollBack {
                camera: self.camera.clone(),
                reason: format!("the model in service ({current}) is not in the store"),
            });
        };
        if pos == 0 {
            return Err(StoreError::NothingToRollBack {
                camera: self.camera.clone(),
                reason: format!("{current} is the oldest stored model"),
            });
        }
        Ok(StoredModel {
            current: true,
            ..list[pos - 1].clone()
        })
    }

    /// Remove the oldest versions beyond `keep`, never the one in service (the caller holds
    /// the lock).
    fn prune(&self, keep: usize) -> Result<(), StoreError> {
        let list = self.list()?;
        let excess = list.len().saturating_sub(keep.max(1));
        for m in list.iter().filter(|m| !m.current).take(excess) {
            remove_version(&m.path).map_err(io(&m.path))?;
            tracing::info!(camera = %self.camera, model_id = %m.id, "old model version removed");
        }
        Ok(())
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: make removing a stored version fail (on this thread).
    static FAIL_REMOVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn remove_version(path: &Path) -> std::io::Result<()> {
    #[cfg(test)]
    if FAIL_REMOVE.get() {
        return Err(std::io::Error::other("injected removal failure"));
    }
    std::fs::remove_file(path)
}

/// The model file a camera serves: the store's `current` version when there is one, else
/// the configured file.
pub fn camera_model_path(cam: &CameraConfig, state_dir: &Path) -> Result<PathBuf, StoreError> {
    Ok(ModelStore::new(state_dir, &cam.id)
        .current_path()?
        .unwrap_or_else(|| cam.model_path(state_dir)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn a_pointer_to_a_missing_version_is_an_error_not_a_silent_fallback() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ModelStore::new(dir.path(), "cam1");
        assert_eq!(store.current_path().expect("no pointer"), None);
        std::fs::create_dir_all(store.dir()).expect("mkdir");
        std::fs::write(store.dir().join(CURRENT), "abc123\n").expect("write");
        let e = store.current_path().expect_err("dangling");
        assert!(e.to_string().contains("abc123"), "{e}");
        assert!(store.set_current("../x").is_err());
    }

    /// Deterministic pseudo-random values in [0, 1) (splitmix64).
    pub(crate) fn noise(seed: u64, len: usize) -> Vec<f32> {
        let mut x = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        (0..len)
            .map(|_| {
                x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect()
    }

    /// A small model with a distinct id per `seed`.
    pub(crate) fn tiny_artifact(seed: u64) -> Artifact {
        let (n, dim) = (30, 8);
        let feats = noise(seed, n * dim);
        let cfg = crate::model::FitConfig {
            n_components: 4,
            seed,
            ..crate::model::FitConfig::default()
        };
        let th = crate::fit::ThresholdConfig {
            holdout: 0.2,
            quantile: 0.99,
        };
        let (m, t, qs) = crate::fit::fit_with_threshold(&feats, n, dim, &cfg, &th).expect("fit");
        let info = crate::backbone::BackboneInfo {
            path: PathBuf::from("bb.onnx"),
            sha256: "0".repeat(64),
            input_width: 224,
            input_height: 224,
            feature_dim: dim,
            batch: 1,
            outputs: vec!["out".into()],
        };
        let pre = crate::preprocess::PreprocessConfig::imagenet(224, 224);
        crate::fit::make_artifact(m, t, qs, &info, pre, &cfg, n)
    }

    #[test]
    fn model_ids_that_are_not_vigil_ids_never_become_paths() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ModelStore::new(dir.path(), "cam1");
        let mut a = tiny_artifact(3);
        assert!(is_model_id(&a.meta.model_id), "minted ids pass");
        a.meta.model_id = "../../escape".into();
        assert!(matches!(
            store.import(&a, Path::new("/nonexistent")),
            Err(StoreError::InvalidId { .. })
        ));
        for bad in [
            "",
            "ABCDEF012345",
            "abcdef01234",
            "abcdef0123456",
            "abcdef01234/",
        ] {
            assert!(!is_model_id(bad), "{bad:?}");
        }
        // A pointer file naming a path is a dangling pointer, not a file outside the store.
        store.add(&tiny_artifact(4), 5).expect("add");
        std::fs::write(store.dir.join(CURRENT), "../../etc/passwd").expect("write pointer");
        assert!(matches!(
            store.current_path(),
            Err(StoreError::DanglingPointer { .. })
        ));
    }

    #[test]
    fn a_successful_add_is_reported_even_when_pruning_old_versions_fails() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ModelStore::new(dir.path(), "cam1");
        let ids: Vec<String> = (0..3)
            .map(|i| {
                let a = tiny_artifact(i);
                store.add(&a, 2).expect("add");
                a.meta.model_id
            })
            .collect();
        assert_eq!(store.list().expect("list").len(), 2, "pruned to keep = 2");
        FAIL_REMOVE.set(true);
        let a = tiny_artifact(9);
        let path = store.add(&a, 2);
        FAIL_REMOVE.set(false);
        let path = path.expect("the new version is in service: add succeeds");
        assert!(path.is_file());
        assert_eq!(
            store.current_id().expect("id"),
            Some(a.meta.model_id.clone())
        );
        let listed: Vec<String> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert!(listed.contains(&ids[2]), "nothing was pruned: {listed:?}");
        assert_eq!(listed.len(), 3);
    }
}
