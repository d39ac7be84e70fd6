//! Pure model math, no I/O: PCA, feature scaling, Gaussian KDE (log-sum-exp in f64),
//! thresholds, anomalib's post-processor and evaluation metrics.
//!
//! Everything here follows `shared/spec/dfkde.md` and is checked against anomalib
//! 2.7.0's own outputs in `tests/dfkde_parity.rs`. Deliberate differences from anomalib:
//! f64 throughout and log-sum-exp (no float32 underflow cliff: far outliers keep a finite,
//! ordered log-density — see [`kde::KdeEval::anomalib_f32_compat`] for anomalib's value),
//! and hard errors where anomalib would silently build a useless model.

pub mod dfkde;
pub mod eigen;
pub mod error;
pub mod kde;
pub mod linalg;
pub mod metrics;
pub mod pca;
pub mod threshold;

pub use dfkde::{
    pred_score, subsample_indices, Dfkde, FitConfig, FitInfo, Scaling, Score, Workspace,
};
pub use error::ModelError;
pub use kde::{GaussianKde, KdeEval};
pub use pca::Pca;
pub use threshold::{log_density_threshold, quantile, PostProcessor};
