//! vigil: on-device visual anomaly detection (anomalib's DFKDE on a tract ONNX backbone).
//!
//! Layering (data flows one way): [`preprocess`] → [`backbone`] → [`model`] (pure math)
//! → [`artifact`] (the versioned model file).

pub mod artifact;
pub mod backbone;
pub mod bench;
pub mod calibrate;
pub mod calibrator;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod detector;
pub mod eval;
pub mod features;
pub mod fit;
pub mod frame;
pub mod logging;
pub mod mem;
pub mod messages;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod plots;
pub mod preprocess;
pub mod preset;
pub mod publish;
pub mod source;
pub mod sparkplug;
pub mod store;
