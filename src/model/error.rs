use thiserror::Error;

/// Everything that can make a fit or a score refuse to produce a model or a number.
///
/// vigil never builds a silently useless model (anomalib does, for a float or zero
/// component count or too few rows): each of these is a hard error with the numbers.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ModelError {
    #[error("n_pca_components must be an integer in 1..={max} (feature dim {dim}, {rows} training rows), got {got}")]
    InvalidComponents {
        got: String,
        max: usize,
        dim: usize,
        rows: usize,
    },
    #[error("need at least {required} training vectors (2 × n_pca_components), got {got}")]
    TooFewSamples { got: usize, required: usize },
    #[error("max_training_points must be at least 1 (0 does not mean 'disabled')")]
    ZeroMaxTrainingPoints,
    #[error("feature matrix is {rows}×{cols} but its buffer holds {len} values")]
    BadShape {
        rows: usize,
        cols: usize,
        len: usize,
    },
    #[error("non-finite feature value {value} at row {row}, column {col}")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("feature vector has {got} values, the model expects {expected}")]
    DimensionMismatch { expected: usize, got: usize },
    #[error("training row {row} has zero length after PCA: 'norm' scaling is undefined for it")]
    ZeroLengthRow { row: usize },
    #[error("query has zero length after PCA: 'norm' scaling is undefined for it")]
    ZeroLengthQuery,
    #[error("covariance is singular or not positive definite ({0}): the training features are (near-)degenerate, e.g. identical frames")]
    SingularCovariance(String),
    #[error("{0}")]
    InvalidParameter(String),
}
