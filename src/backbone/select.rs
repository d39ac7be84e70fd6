//! Backend selection (`[inference] backend`, `--backend`): tract (default, always built) or
//! wgpu (`--features wgpu`), behind one [`AnyBackbone`] type for the daemon, the calibrator
//! and the CLI.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Backbone, BackboneError, BackboneInfo, TractBackbone};

/// Which engine runs the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract on the CPU (SIMD kernels of the host). Always available.
    #[default]
    Tract,
    /// WGSL compute kernels through wgpu (Vulkan / GL). Needs a build with `--features wgpu`.
    Wgpu,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Wgpu => "wgpu",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn available(self) -> bool {
        match self {
            BackendKind::Tract => true,
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
        }
    }
}

/// Which wgpu adapter to run on (`[inference] adapter`, `--adapter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AdapterChoice {
    /// The best hardware adapter (discrete, then integrated GPU; Vulkan before GL), else a
    /// software one (lavapipe) with a warning.
    #[default]
    Auto,
    /// Vulkan adapters only (Pi 5 v3dv, NVIDIA, Mesa).
    Vulkan,
    /// OpenGL (ES) adapters only.
    Gl,
    /// A CPU (software) adapter only: lavapipe / llvmpipe. For tests and CI.
    CpuFallback,
}

impl AdapterChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            AdapterChoice::Auto => "auto",
            AdapterChoice::Vulkan => "vulkan",
            AdapterChoice::Gl => "gl",
            AdapterChoice::CpuFallback => "cpu-fallback",
        }
    }
}

/// How to load a backbone: engine, adapter, fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendOptions {
    pub kind: BackendKind,
    pub adapter: AdapterChoice,
    /// With `kind = wgpu`: load tract instead (with a warning) when no adapter exists.
    pub fallback_to_tract: bool,
}

/// A backbone on either engine.
pub enum AnyBackbone {
    Tract(TractBackbone),
    #[cfg(feature = "wgpu")]
    Wgpu(super::wgpu::WgpuBackbone),
}

impl AnyBackbone {
    /// Load `path` for batches of `batch` on the engine `opts` selects (see
    /// [`TractBackbone::load`] for `size`).
    pub fn load(
        opts: &BackendOptions,
        path: &Path,
        batch: usize,
        size: Option<(u32, u32)>,
    ) -> Result<AnyBackbone, BackboneError> {
        match opts.kind {
            BackendKind::Tract => Ok(AnyBackbone::Tract(TractBackbone::load(path, batch, size)?)),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => {
                match super::wgpu::WgpuBackbone::load(path, batch, size, opts.adapter) {
                    Ok(b) => Ok(AnyBackbone::Wgpu(b)),
                    Err(e @ BackboneError::NoAdapter { .. }) if opts.fallback_to_tract => {
                        tracing::warn!(error = %e, "wgpu backend unavailable: falling back to tract");
                        Ok(AnyBackbone::Tract(TractBackbone::load(path, batch, size)?))
                    }
                    Err(e) => Err(e),
                }
            }
            #[cfg(not(feature = "wgpu"))]
            BackendKind::Wgpu => Err(BackboneError::Unsupported {
                path: path.to_path_buf(),
                reason: "backend \"wgpu\" needs vigil built with `--features wgpu`".into(),
            }),
        }
    }

    /// Another instance sharing this one's graph and weights.
    pub fn fork(&self) -> Result<AnyBackbone, BackboneError> {
        Ok(match self {
            AnyBackbone::Tract(b) => AnyBackbone::Tract(b.fork()?),
            #[cfg(feature = "wgpu")]
            AnyBackbone::Wgpu(b) => AnyBackbone::Wgpu(b.fork()?),
        })
    }

    /// The engine actually running (after a fallback: tract).
    pub fn kind(&self) -> BackendKind {
        match self {
            AnyBackbone::Tract(_) => BackendKind::Tract,
            #[cfg(feature = "wgpu")]
            AnyBackbone::Wgpu(_) => BackendKind::Wgpu,
        }
    }
}

impl From<TractBackbone> for AnyBackbone {
    fn from(b: TractBackbone) -> Self {
        AnyBackbone::Tract(b)
    }
}

impl Backbone for AnyBackbone {
    fn info(&self) -> &BackboneInfo {
        match self {
            AnyBackbone::Tract(b) => b.info(),
            #[cfg(feature = "wgpu")]
            AnyBackbone::Wgpu(b) => b.info(),
        }
    }

    fn extract(
        &mut self,
        input: &[f32],
        images: usize,
        out: &mut [f32],
    ) -> Result<(), BackboneError> {
        match self {
            AnyBackbone::Tract(b) => b.extract(input, images, out),
            #[cfg(feature = "wgpu")]
            AnyBackbone::Wgpu(b) => b.extract(input, images, out),
        }
    }
}
