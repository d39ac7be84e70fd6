//! vigil: on-device visual anomaly detection (anomalib's DFKDE on a tract ONNX backbone).
//!
//! Layering (data flows one way): [`preprocess`] → [`backbone`] → [`model`] (pure math)
//! → [`artifact`] (the versioned model file).

pub mod artifact;
pub mod backbone;
pub mod eval;
pub mod features;
pub mod fit;
pub mod frame;
pub mod messages;
pub mod model;
pub mod plots;
pub mod preprocess;
pub mod source;
