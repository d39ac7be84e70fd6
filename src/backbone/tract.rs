//! The tract-onnx backbone.

use std::path::Path;
use std::sync::Arc;

use std::borrow::Cow;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{DimLike, Factoid};

use super::{sha256_hex, Backbone, BackboneError, BackboneInfo};

type Plan = TypedSimplePlan;
type State = TypedSimpleState;

/// How each model output becomes part of the feature vector.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pool {
    /// `[B, C]`: used as is.
    Flat { channels: usize },
    /// `[B, C, H, W]`: spatial mean.
    Mean { channels: usize, spatial: usize },
}

impl Pool {
    pub(crate) fn channels(self) -> usize {
        match self {
            Pool::Flat { channels } | Pool::Mean { channels, .. } => channels,
        }
    }
}

pub struct TractBackbone {
    info: BackboneInfo,
    plan: Arc<Plan>,
    state: State,
    pools: Vec<Pool>,
}

/// The ONNX operators of `model` that tract-onnx left as placeholders (no builder for that
/// `op_type` in this build), each once, with what to do about them. tract itself would only
/// fail later, typing the graph, with "Operator can not be made a TypedOp".
fn check_operators(model: &InferenceModel) -> Result<(), (Vec<String>, &'static str)> {
    use tract_onnx::tract_hir::ops::unimpl::UnimplementedOp;
    let mut ops: Vec<String> = model
        .nodes()
        .iter()
        .filter(|n| n.op_is::<UnimplementedOp>())
        .map(|n| {
            let name = n.op.name();
            name.strip_prefix("Unimplemented(")
                .and_then(|s| s.strip_suffix(')'))
                .unwrap_or(&name)
                .to_string()
        })
        .collect();
    if ops.is_empty() {
        return Ok(());
    }
    ops.sort();
    ops.dedup();
    let left_out = !cfg!(feature = "onnx-all-ops")
        && ops
            .iter()
            .any(|op| tract_onnx::ops::ALL_OPS_ONLY.contains(&op.as_str()));
    let hint = if left_out {
        "vigil is built with tract-onnx's CNN operator set only: rebuild it with \
         `--features onnx-all-ops` for the rest (crates/tract-onnx/VIGIL.md)"
    } else {
        "tract-onnx 0.23 does not implement them: re-export the model with other operators \
         (models/README.md)"
    };
    Err((ops, hint))
}

impl TractBackbone {
    /// Load an ONNX backbone for batches of `batch` images. The input size comes from the
    /// model when its spatial dims are fixed, else from `size` (width, height).
    pub fn load(
        path: &Path,
        batch: usize,
        size: Option<(u32, u32)>,
    ) -> Result<TractBackbone, BackboneError> {
        let (typed, info, pools) = load_typed(path, batch, size)?;
        let load_err = |e: TractError| BackboneError::Load {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        };
        // vigil's x86_64 kernels (crates/vigil-kernels) are registered with tract before it
        // optimises: with a channel-inner depthwise kernel on the host, tract's optimiser
        // moves depthwise convolutions channel-last (as it does on aarch64 with its NEON one).
        let kernels = vigil_kernels::registered();
        tracing::debug!(?kernels, "vigil kernels tract resolves to on this host");
        let plan = typed
            .into_optimized()
            .map_err(load_err)?
            .into_runnable()
            .map_err(load_err)?;
        let state = plan.spawn().map_err(load_err)?;
        Ok(TractBackbone {
            info,
            plan,
            state,
            pools,
        })
    }
}

/// Parse and type an ONNX backbone for batches of `batch` images (input shape made
/// concrete, outputs checked): what both backends start from. The graph is typed, not yet
/// optimised.
pub(crate) fn load_typed(
    path: &Path,
    batch: usize,
    size: Option<(u32, u32)>,
) -> Result<(TypedModel, BackboneInfo, Vec<Pool>), BackboneError> {
    let bytes = std::fs::read(path).map_err(|source| BackboneError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let sha256 = sha256_hex(&bytes);
    let load_err = |e: TractError| BackboneError::Load {
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    };
    let unsupported = |reason: String| BackboneError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    if batch == 0 {
        return Err(unsupported("batch must be at least 1".into()));
    }

    // Declared intermediate and output shapes may carry a symbolic batch that conflicts
    // with the concrete input fact set below: let tract infer them instead.
    let mut model = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_read(&mut std::io::Cursor::new(&bytes))
        .map_err(load_err)?;
    check_operators(&model).map_err(|(ops, hint)| BackboneError::Operators {
        path: path.to_path_buf(),
        ops,
        hint,
    })?;
    if model.inputs.len() != 1 {
        return Err(unsupported(format!(
            "expected exactly one input, found {}",
            model.inputs.len()
        )));
    }
    let fact = model.input_fact(0).map_err(load_err)?.clone();
    let (mut width, mut height) = (None, None);
    if let Some(shape) = fact.shape.concretize() {
        if shape.len() != 4 {
            return Err(unsupported(format!(
                "input must be NCHW (rank 4), found rank {}",
                shape.len()
            )));
        }
        if let Ok(c) = shape[1].to_usize() {
            if c != 3 {
                return Err(unsupported(format!(
                    "input must have 3 channels, found {c}"
                )));
            }
        }
        height = shape[2].to_usize().ok().map(|v| v as u32);
        width = shape[3].to_usize().ok().map(|v| v as u32);
    }
    let (w, h) = match (width, height, size) {
        (Some(w), Some(h), Some((sw, sh))) if (w, h) != (sw, sh) => {
            return Err(unsupported(format!(
                "model input is {w}×{h}, configuration asks for {sw}×{sh}"
            )))
        }
        (Some(w), Some(h), _) => (w, h),
        (_, _, Some(s)) => s,
        _ => {
            return Err(unsupported(
                "input size is symbolic: give the input size explicitly".into(),
            ))
        }
    };
    model
        .set_input_fact(0, f32::fact([batch, 3, h as usize, w as usize]).into())
        .map_err(load_err)?;
    let outputs: Vec<String> = model
        .output_outlets()
        .map_err(load_err)?
        .iter()
        .map(|o| model.node(o.node).name.clone())
        .collect();
    let typed = model.into_typed().map_err(load_err)?;
    let mut pools = Vec::new();
    for (i, outlet) in typed.output_outlets().map_err(load_err)?.iter().enumerate() {
        let of = typed.outlet_fact(*outlet).map_err(load_err)?;
        if of.datum_type != f32::datum_type() {
            return Err(unsupported(format!(
                "output {i} is {:?}, expected f32",
                of.datum_type
            )));
        }
        let dims: Vec<usize> = of
            .shape
            .iter()
            .map(|d| d.to_usize())
            .collect::<Result<Vec<usize>, _>>()
            .map_err(|e| unsupported(format!("output {i} has a symbolic shape: {e:?}")))?;
        if dims.first() != Some(&batch) {
            return Err(unsupported(format!(
                "output {i} shape {dims:?} does not lead with the batch {batch}"
            )));
        }
        pools.push(match dims.len() {
            2 => Pool::Flat { channels: dims[1] },
            4 => Pool::Mean {
                channels: dims[1],
                spatial: dims[2] * dims[3],
            },
            _ => {
                return Err(unsupported(format!(
                    "output {i} has shape {dims:?}; expected [B, C] or [B, C, H, W]"
                )))
            }
        });
    }
    let feature_dim = pools.iter().map(|p| p.channels()).sum();
    let info = BackboneInfo {
        path: path.to_path_buf(),
        sha256,
        input_width: w,
        input_height: h,
        feature_dim,
        batch,
        outputs,
    };
    Ok((typed, info, pools))
}

impl TractBackbone {
    /// Another instance sharing this one's optimised graph and weights (one per inference
    /// worker: only the activation buffers are per instance).
    pub fn fork(&self) -> Result<TractBackbone, BackboneError> {
        let state = self
            .plan
            .spawn()
            .map_err(|e| BackboneError::Run(format!("{e:#}")))?;
        Ok(TractBackbone {
            info: self.info.clone(),
            plan: self.plan.clone(),
            state,
            pools: self.pools.clone(),
        })
    }

    /// The optimised tract graph (for profiling and op listings).
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }
}

impl Backbone for TractBackbone {
    fn info(&self) -> &BackboneInfo {
        &self.info
    }

    fn extract(
        &mut self,
        input: &[f32],
        images: usize,
        out: &mut [f32],
    ) -> Result<(), BackboneError> {
        self.info.check_extract(input.len(), images, out.len())?;
        let (b, h, w) = (
            self.info.batch,
            self.info.input_height as usize,
            self.info.input_width as usize,
        );
        let per = 3 * h * w;
        // A full batch is copied once into the tensor; a partial one is zero-padded first
        // (rows are independent in eval mode).
        let padded;
        let data = if images == b {
            input
        } else {
            let mut v = vec![0.0f32; b * per];
            v[..input.len()].copy_from_slice(input);
            padded = v;
            &padded[..]
        };
        let tensor = Tensor::from_shape(&[b, 3, h, w], data)
            .map_err(|e| BackboneError::Run(format!("{e:#}")))?;
        let result = self
            .state
            .run(tvec!(tensor.into()))
            .map_err(|e| BackboneError::Run(format!("{e:#}")))?;
        let fd = self.info.feature_dim;
        let mut offset = 0;
        for (value, pool) in result.iter().zip(&self.pools) {
            let arr = value
                .to_plain_array_view::<f32>()
                .map_err(|e| BackboneError::Run(format!("{e:#}")))?;
            let view: Cow<'_, [f32]> = match arr.as_slice() {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(arr.iter().copied().collect()),
            };
            match *pool {
                Pool::Flat { channels } => {
                    for i in 0..images {
                        out[i * fd + offset..i * fd + offset + channels]
                            .copy_from_slice(&view[i * channels..(i + 1) * channels]);
                    }
                }
                Pool::Mean { channels, spatial } => {
                    for i in 0..images {
                        for c in 0..channels {
                            let base = (i * channels + c) * spatial;
                            let s: f64 = view[base..base + spatial]
                                .iter()
                                .map(|&v| f64::from(v))
                                .sum();
                            out[i * fd + offset + c] = (s / spatial as f64) as f32;
                        }
                    }
                }
            }
            offset += pool.channels();
        }
        Ok(())
    }
}
