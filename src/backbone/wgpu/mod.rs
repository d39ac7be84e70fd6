//! The wgpu backend (`--features wgpu`, `[inference] backend = "wgpu"`): tract parses and
//! types the ONNX graph (input shape made concrete, constants folded), then every node runs
//! as a WGSL compute kernel on a wgpu adapter (Vulkan or GL: a GPU, or lavapipe on the CPU).
//!
//! * Kernels: direct convolution (groups, so depthwise too; strides, dilations, asymmetric
//!   padding, bias, a fused ReLU / ReLU6 clamp), broadcasting binary ops (Add, Sub, Mul,
//!   Div, Max, Min: Relu and Clip arrive as Max / Min with a constant), max pooling,
//!   reductions over contiguous axes (the global average pool), and shape-only ops as
//!   aliases. Any other op is refused at load time: `unsupported op <name> (<op>) at node
//!   <id>`.
//! * Speed on lavapipe (llvmpipe runs 8 invocations per SIMD vector): a storage-buffer load
//!   there is a loop over the lanes with a bounds-check branch each, a uniform-buffer load a
//!   plain gather, and one at a constant offset a single scalar load. So every kernel reads
//!   its parameters from a uniform buffer at constant offsets; the pointwise, group-1 and
//!   depthwise convolutions read their weights from 64 KiB uniform buffers (one step per
//!   chunk of output channels that fits one) and compute several outputs per activation
//!   load (4 pixels × up to 32 channels; 4 rows × 8 columns for depthwise, each input row read
//!   once). Convolutions whose weights do not fit (grouped, or an 8 × C × KH × KW block
//!   over 64 KiB) keep the plain storage-buffer kernels.
//! * Weights are uploaded once at load time and shared by [`WgpuBackbone::fork`]ed
//!   instances; activation buffers are allocated once per instance for the whole batch and
//!   reused between nodes whose values are no longer needed. Per frame: one
//!   `queue.write_buffer` of the input, the dispatches, one copy of the outputs into a
//!   mapped staging buffer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, MaxPool, PoolSpec};
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer};
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::optim::Optimizer;
use tract_onnx::tract_hir::internal::DimLike;

pub use super::select::AdapterChoice;
use super::tract::{load_typed, Pool};
use super::{Backbone, BackboneError, BackboneInfo};

const WORKGROUP: u32 = 64;
const MAX_GROUPS_X: u32 = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Conv = 0,
    Binary = 1,
    MaxPool = 2,
    Reduce = 3,
    /// Convolution, one group, 4 output channels per invocation.
    Conv4 = 4,
    /// 1×1 stride-1 unpadded convolution, one group: 4 pixels × 16 output channels per
    /// invocation, weights in a uniform buffer (one step per chunk of output channels).
    Pointwise = 5,
    /// The same with 8 output channels per invocation (more input channels per chunk).
    Pointwise8 = 6,
    /// Depthwise convolution: 8 outputs of a row per invocation, weights in a uniform buffer.
    Depthwise = 7,
    /// Convolution, one group: 4 pixels × 16 output channels per invocation, weights in a
    /// uniform buffer.
    Direct = 8,
    /// The same with 8 output channels per invocation.
    Direct8 = 9,
    /// Pointwise with 32 output channels per invocation (input channels ≤ 512).
    Pointwise32 = 10,
}

/// Kernel, source, values of its WGSL override constants (output channels per invocation:
/// `WIDE` 16 rather than 8, `Q` quads of 4).
type KernelSpec = (Kernel, &'static str, &'static [(&'static str, f64)]);

const KERNELS: [KernelSpec; 11] = [
    (Kernel::Conv, include_str!("conv.wgsl"), &[]),
    (Kernel::Binary, include_str!("binary.wgsl"), &[]),
    (Kernel::MaxPool, include_str!("maxpool.wgsl"), &[]),
    (Kernel::Reduce, include_str!("reduce.wgsl"), &[]),
    (Kernel::Conv4, include_str!("conv4.wgsl"), &[]),
    (
        Kernel::Pointwise,
        include_str!("pointwise.wgsl"),
        &[("Q", 4.0)],
    ),
    (
        Kernel::Pointwise8,
        include_str!("pointwise.wgsl"),
        &[("Q", 2.0)],
    ),
    (Kernel::Depthwise, include_str!("depthwise.wgsl"), &[]),
    (
        Kernel::Direct,
        include_str!("direct.wgsl"),
        &[("WIDE", 1.0)],
    ),
    (
        Kernel::Direct8,
        include_str!("direct.wgsl"),
        &[("WIDE", 0.0)],
    ),
    (
        Kernel::Pointwise32,
        include_str!("pointwise.wgsl"),
        &[("Q", 8.0)],
    ),
];

/// Floats in one uniform weight buffer (`array<vec4<f32>, 4096>` in the kernels: 64 KiB, the
/// WebGPU default `max_uniform_buffer_binding_size`).
const UNIFORM_FLOATS: usize = 16_384;

/// u32 parameters per step (`array<vec4<u32>, 8>` uniform in kernels.wgsl).
const PARAMS: usize = 32;

/// A storage buffer a step binds: an activation (per instance) or a weight (shared).
#[derive(Debug, Clone, Copy)]
enum Slot {
    Act(usize),
    Weight(usize),
}

#[derive(Debug)]
struct Step {
    kernel: Kernel,
    /// Index of the clamp flags in `params` for kernels that can fuse one.
    clamp_at: Option<usize>,
    params: Vec<u32>,
    slots: Vec<Slot>,
    count: u32,
}

impl Step {
    /// 2-D dispatch covering the invocations of the first `images` of `batch` images in
    /// workgroups of 64. Every kernel's element index has the image as its slowest-varying
    /// part (row-major, batch first; shape ops keep that order), so a partial batch runs
    /// only its own rows.
    fn workgroups(&self, images: usize, batch: usize) -> (u32, u32) {
        let (images, batch) = (images as u32, batch as u32);
        let count = if batch > 0 && self.count.is_multiple_of(batch) {
            self.count / batch * images.min(batch)
        } else {
            self.count
        };
        let groups = count.div_ceil(WORKGROUP).max(1);
        let x = groups.min(MAX_GROUPS_X);
        (x, groups.div_ceil(x))
    }
}

/// What every instance shares: device, pipelines, weights, the compiled program.
struct Shared {
    /// The last error wgpu reported outside an error scope (its default handler panics).
    failed: Arc<std::sync::Mutex<Option<String>>>,
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    pipelines: Vec<wgpu::ComputePipeline>,
    weights: Vec<wgpu::Buffer>,
    params: Vec<wgpu::Buffer>,
    steps: Vec<Step>,
    /// Element counts of the activation buffers.
    act_sizes: Vec<u64>,
    input: usize,
    /// (activation buffer, elements) per model output, in output order.
    outputs: Vec<(usize, usize)>,
    pools: Vec<Pool>,
}

/// A backbone running on a wgpu adapter. One instance per inference thread.
pub struct WgpuBackbone {
    info: BackboneInfo,
    shared: Arc<Shared>,
    acts: Vec<wgpu::Buffer>,
    bind_groups: Vec<wgpu::BindGroup>,
    staging: wgpu::Buffer,
    staging_bytes: u64,
    /// Output values read back, reused between frames.
    host_out: Vec<f32>,
    /// The input as bytes, reused between frames.
    scratch: Vec<u8>,
}

fn run_err(e: impl std::fmt::Display) -> BackboneError {
    BackboneError::Run(e.to_string())
}

/// Pick an adapter for `choice`; a clear error listing what exists when none fits.
fn pick_adapter(choice: AdapterChoice) -> Result<wgpu::Adapter, BackboneError> {
    let backends = match choice {
        AdapterChoice::Auto | AdapterChoice::CpuFallback => {
            wgpu::Backends::VULKAN | wgpu::Backends::GL
        }
        AdapterChoice::Vulkan => wgpu::Backends::VULKAN,
        AdapterChoice::Gl => wgpu::Backends::GL,
    };
    let enumerate = |backends: wgpu::Backends| {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        pollster::block_on(instance.enumerate_adapters(backends))
    };
    // Vulkan first: GL (EGL) is only probed when Vulkan has nothing (it is slower, and
    // probing it on a headless box prints display-server errors).
    let mut adapters = enumerate(backends & wgpu::Backends::VULKAN);
    if adapters.is_empty() && backends.contains(wgpu::Backends::GL) {
        adapters = enumerate(wgpu::Backends::GL);
    }
    let rank = |a: &wgpu::Adapter| {
        let info = a.get_info();
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu | wgpu::DeviceType::Other => 2,
            wgpu::DeviceType::Cpu => 3,
        };
        let backend = if info.backend == wgpu::Backend::Vulkan {
            0
        } else {
            1
        };
        (kind, backend)
    };
    let found: Vec<String> = adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
        })
        .collect();
    let best = adapters
        .into_iter()
        .filter(|a| {
            choice != AdapterChoice::CpuFallback
                || a.get_info().device_type == wgpu::DeviceType::Cpu
        })
        .min_by_key(rank);
    match best {
        Some(a) => {
            let info = a.get_info();
            if info.device_type == wgpu::DeviceType::Cpu && choice != AdapterChoice::CpuFallback {
                tracing::warn!(
                    adapter = %info.name,
                    "wgpu: only a software (CPU) adapter is available; tract is usually faster on the CPU"
                );
            }
            Ok(a)
        }
        None => Err(BackboneError::NoAdapter {
            choice: choice.as_str().into(),
            found: if found.is_empty() {
                "none".into()
            } else {
                found.join(", ")
            },
        }),
    }
}

/// Concrete dims of an outlet.
fn dims(model: &TypedModel, outlet: OutletId) -> Result<Vec<usize>, String> {
    let fact = model.outlet_fact(outlet).map_err(|e| format!("{e:#}"))?;
    fact.shape
        .iter()
        .map(|d| {
            d.to_usize()
                .map_err(|e| format!("symbolic dimension {d}: {e:?}"))
        })
        .collect()
}

/// Row-major strides of `shape` broadcast to the 4-D `out` (0 on broadcast axes).
fn broadcast_strides(shape: &[usize], out: &[usize; 4]) -> Option<[u32; 4]> {
    if shape.len() > 4 {
        return None;
    }
    let mut padded = [1usize; 4];
    padded[4 - shape.len()..].copy_from_slice(shape);
    let mut strides = [0u32; 4];
    let mut s = 1usize;
    for d in (0..4).rev() {
        if padded[d] == out[d] && out[d] != 1 {
            strides[d] = u32::try_from(s).ok()?;
        } else if padded[d] != 1 {
            return None;
        }
        s *= padded[d];
    }
    Some(strides)
}

/// 2-D kernel geometry from a pool spec on an NCHW input:
/// (KH, KW, SH, SW, DH, DW, pad top, pad left, OH, OW).
fn geometry(spec: &PoolSpec, in_dims: &[usize]) -> Result<[usize; 10], String> {
    if spec.data_format != DataFormat::NCHW {
        return Err(format!("data format {:?} (NCHW only)", spec.data_format));
    }
    if spec.kernel_shape.len() != 2 || in_dims.len() != 4 {
        return Err(format!("{}-D kernel (2-D only)", spec.kernel_shape.len()));
    }
    let (s, d) = (spec.strides(), spec.dilations());
    let pads = spec.computed_padding(&in_dims[2..]);
    Ok([
        spec.kernel_shape[0],
        spec.kernel_shape[1],
        s[0],
        s[1],
        d[0],
        d[1],
        pads[0].pad_before,
        pads[1].pad_before,
        pads[0].convoluted,
        pads[1].convoluted,
    ])
}

/// Activation buffer allocation: a buffer returns to the free list once every reader of
/// every value living in it has run.
#[derive(Default)]
struct Alloc {
    sizes: Vec<u64>,
    pending: Vec<usize>,
    free: Vec<usize>,
}

impl Alloc {
    fn take(&mut self, elems: u64, uses: usize) -> usize {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, &b)| self.sizes[b] >= elems)
            .min_by_key(|(_, &b)| self.sizes[b])
            .map(|(i, _)| i);
        let b = match best {
            Some(i) => self.free.swap_remove(i),
            None => {
                // Grow the largest free buffer rather than adding one.
                if let Some((i, _)) = self
                    .free
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, &b)| self.sizes[b])
                {
                    let b = self.free.swap_remove(i);
                    self.sizes[b] = elems;
                    b
                } else {
                    self.sizes.push(elems);
                    self.pending.push(0);
                    self.sizes.len() - 1
                }
            }
        };
        self.pending[b] = uses;
        b
    }

    fn release(&mut self, b: usize) {
        self.pending[b] = self.pending[b].saturating_sub(1);
        if self.pending[b] == 0 {
            self.free.push(b);
        }
    }
}

#[derive(Clone)]
enum Val {
    Act(usize),
    Const(Arc<Tensor>),
}

/// A constant as a weight buffer (uploaded once per outlet).
fn upload(
    weights: &mut Vec<Vec<f32>>,
    uploaded: &mut HashMap<OutletId, usize>,
    o: OutletId,
    t: &Tensor,
) -> Result<usize, String> {
    if let Some(&w) = uploaded.get(&o) {
        return Ok(w);
    }
    let t = t.cast_to::<f32>().map_err(|e| format!("{e:#}"))?;
    let view = t
        .to_plain_array_view::<f32>()
        .map_err(|e| format!("{e:#}"))?;
    // Logical (row-major) order; storage buffers may not be empty.
    let v: Vec<f32> = view.iter().copied().collect();
    weights.push(if v.is_empty() { vec![0.0] } else { v });
    uploaded.insert(o, weights.len() - 1);
    Ok(weights.len() - 1)
}

/// The typed graph compiled to kernel steps.
struct Program {
    steps: Vec<Step>,
    weights: Vec<Vec<f32>>,
    act_sizes: Vec<u64>,
    input: usize,
    outputs: Vec<(usize, usize)>,
}

fn compile(model: &TypedModel) -> Result<Program, String> {
    let order = model.eval_order().map_err(|e| format!("{e:#}"))?;
    let model_outputs: Vec<OutletId> = model.outputs.clone();
    let uses = |o: OutletId| -> usize {
        model.node(o.node).outputs[o.slot].successors.len()
            + model_outputs.iter().filter(|x| **x == o).count()
    };
    let mut vals: HashMap<OutletId, Val> = HashMap::new();
    let mut alloc = Alloc::default();
    let mut steps: Vec<Step> = Vec::new();
    let mut weights: Vec<Vec<f32>> = Vec::new();
    let mut uploaded: HashMap<OutletId, usize> = HashMap::new();
    // Step that wrote a value (for fusing a following clamp into it).
    let mut producer: HashMap<OutletId, Vec<usize>> = HashMap::new();
    let mut input = None;

    for &id in &order {
        let node = model.node(id);
        let out = OutletId::new(id, 0);
        let unsupported = |why: String| {
            format!(
                "unsupported op {} ({}) at node {id}: {why}",
                node.name,
                node.op().name()
            )
        };
        // Constants (folded by tract): kept on the host until a kernel needs them.
        if !node.outputs.is_empty() && node.outputs.iter().all(|o| o.fact.konst.is_some()) {
            if let Some(k) = &node.outputs[0].fact.konst {
                vals.insert(out, Val::Const(k.clone()));
            }
            continue;
        }
        if node.outputs.len() != 1 {
            return Err(unsupported(format!("{} outputs", node.outputs.len())));
        }
        let fact = &node.outputs[0].fact;
        if fact.datum_type != f32::datum_type() {
            return Err(unsupported(format!(
                "{:?} values (f32 only)",
                fact.datum_type
            )));
        }
        let out_dims = dims(model, out).map_err(|e| unsupported(format!("{e:#}")))?;
        let out_elems: usize = out_dims.iter().product();
        let count = u32::try_from(out_elems).map_err(|_| unsupported("tensor too large".into()))?;
        // Inputs as values.
        let mut ins: Vec<Val> = Vec::new();
        for i in &node.inputs {
            let v = vals
                .get(i)
                .cloned()
                .ok_or_else(|| unsupported(format!("input {i:?} not computed")))?;
            ins.push(v);
        }
        let op = node.op();
        // Values to alias instead of computing (shape-only ops, fused clamps).
        let mut alias: Option<usize> = None;
        let mut new_steps: Vec<Step> = Vec::new();

        if op.downcast_ref::<TypedSource>().is_some() {
            let b = alloc.take(out_elems as u64, uses(out));
            input = Some(b);
            vals.insert(out, Val::Act(b));
            continue;
        } else if let Some(conv) = op.downcast_ref::<Conv>() {
            if conv.q_params.is_some() || conv.kernel_fmt != KernelFormat::OIHW {
                return Err(unsupported("quantised or non-OIHW kernel".into()));
            }
            let in_dims = dims(model, node.inputs[0]).map_err(|e| unsupported(format!("{e:#}")))?;
            let g = geometry(&conv.pool_spec, &in_dims).map_err(&unsupported)?;
            let (Some(Val::Act(x)), Some(Val::Const(k)), Some(Val::Const(bias))) =
                (ins.first(), ins.get(1), ins.get(2))
            else {
                return Err(unsupported(
                    "expects a computed input and constant kernel and bias".into(),
                ));
            };
            let (c, o) = (conv.input_channels(), conv.output_channels());
            if k.len() != o * (c / conv.group) * g[0] * g[1] || in_dims[1] != c {
                return Err(unsupported(format!("kernel shape {:?}", k.shape())));
            }
            let bias_mode = match bias.len() {
                0 => 0,
                1 => 1,
                n if n == o => 2,
                n => return Err(unsupported(format!("bias of {n} values for {o} channels"))),
            };
            let wb =
                upload(&mut weights, &mut uploaded, node.inputs[2], bias).map_err(&unsupported)?;
            let kv = k
                .cast_to::<f32>()
                .and_then(|t| {
                    Ok(t.to_plain_array_view::<f32>()?
                        .iter()
                        .copied()
                        .collect::<Vec<f32>>())
                })
                .map_err(|e| unsupported(format!("{e:#}")))?;
            let kk = g[0] * g[1];
            let (n, h, w) = (in_dims[0], in_dims[2], in_dims[3]);
            let by4 = conv.group == 1 && o % 4 == 0;
            let pointwise = by4
                && g[0] == 1
                && g[1] == 1
                && g[2] == 1
                && g[3] == 1
                && g[8] == h
                && g[9] == w
                && g[6] == 0
                && g[7] == 0;
            let depthwise = conv.group == c
                && o == c
                && g[4] == 1
                && g[5] == 1
                && (g[3] == 1 || g[3] == 2)
                && kk <= UNIFORM_FLOATS;
            // Output channels per invocation of the uniform-weight kernels: the most (32 for
            // pointwise, else 16; then 8) whose block of weights fits a uniform buffer.
            let sizes: &[usize] = if pointwise { &[32, 16, 8] } else { &[16, 8] };
            let block = sizes
                .iter()
                .copied()
                .find(|&s| by4 && c * kk * s <= UNIFORM_FLOATS && (s <= o || s == 8));
            let to_u32 = |v: &[usize]| {
                v.iter()
                    .map(|&v| u32::try_from(v))
                    .collect::<Result<Vec<u32>, _>>()
                    .map_err(|_| unsupported("dimension too large".into()))
            };
            if depthwise {
                // Chunks of channels, weights [channel][KH][KW] in a uniform buffer each.
                let per = UNIFORM_FLOATS / kk;
                let ow8 = g[9].div_ceil(8);
                for c0 in (0..c).step_by(per) {
                    let nc = per.min(c - c0);
                    let mut chunk = vec![0.0f32; UNIFORM_FLOATS];
                    chunk[..nc * kk].copy_from_slice(&kv[c0 * kk..(c0 + nc) * kk]);
                    weights.push(chunk);
                    let cnt = n * nc * g[8].div_ceil(4) * ow8;
                    let params = to_u32(&[
                        cnt, c, h, w, g[8], g[9], g[0], g[1], g[2], g[3], g[6], g[7], c0, nc,
                        bias_mode, 0, 0, 0,
                    ])?;
                    new_steps.push(Step {
                        kernel: Kernel::Depthwise,
                        clamp_at: Some(15),
                        count: params[0],
                        params,
                        slots: vec![
                            Slot::Act(*x),
                            Slot::Weight(weights.len() - 1),
                            Slot::Weight(wb),
                        ],
                    });
                }
            } else if let Some(s) = block {
                // Blocks of `s` output channels (zero weights past O), as many blocks per
                // uniform buffer as fit; weights [block][C][KH][KW][s].
                let blocks = o.div_ceil(s);
                let per = UNIFORM_FLOATS / (c * kk * s);
                for b0 in (0..blocks).step_by(per) {
                    let nb = per.min(blocks - b0);
                    let mut chunk = vec![0.0f32; UNIFORM_FLOATS];
                    for lb in 0..nb {
                        for ci in 0..c {
                            for t in 0..kk {
                                for j in 0..s {
                                    let oc = (b0 + lb) * s + j;
                                    if oc < o {
                                        chunk[((lb * c + ci) * kk + t) * s + j] =
                                            kv[(oc * c + ci) * kk + t];
                                    }
                                }
                            }
                        }
                    }
                    weights.push(chunk);
                    let slots = vec![
                        Slot::Act(*x),
                        Slot::Weight(weights.len() - 1),
                        Slot::Weight(wb),
                    ];
                    let wide = s == 16;
                    new_steps.push(if pointwise {
                        let cnt = n * nb * (h * w).div_ceil(4);
                        let params = to_u32(&[cnt, c, h * w, o, bias_mode, 0, 0, 0, b0, nb])?;
                        Step {
                            kernel: match s {
                                32 => Kernel::Pointwise32,
                                16 => Kernel::Pointwise,
                                _ => Kernel::Pointwise8,
                            },
                            clamp_at: Some(5),
                            count: params[0],
                            params,
                            slots,
                        }
                    } else {
                        let cnt = n * nb * g[8] * g[9].div_ceil(4);
                        let params = to_u32(&[
                            cnt, c, h, w, o, g[8], g[9], g[0], g[1], g[2], g[3], g[4], g[5], g[6],
                            g[7], b0, bias_mode, 0, 0, 0, nb,
                        ])?;
                        Step {
                            kernel: if wide {
                                Kernel::Direct
                            } else {
                                Kernel::Direct8
                            },
                            clamp_at: Some(17),
                            count: params[0],
                            params,
                            slots,
                        }
                    });
                }
            } else {
                // Weights too large for a uniform buffer per block, or groups: the plain
                // storage-buffer kernels.
                let wk = if by4 {
                    let mut packed = vec![0.0f32; kv.len()];
                    for ob in 0..o / 4 {
                        for ci in 0..c {
                            for t in 0..kk {
                                for j in 0..4 {
                                    packed[((ob * c + ci) * kk + t) * 4 + j] =
                                        kv[((ob * 4 + j) * c + ci) * kk + t];
                                }
                            }
                        }
                    }
                    weights.push(packed);
                    weights.len() - 1
                } else {
                    upload(&mut weights, &mut uploaded, node.inputs[1], k).map_err(&unsupported)?
                };
                let mut params = to_u32(&[
                    count as usize,
                    c,
                    h,
                    w,
                    o,
                    g[8],
                    g[9],
                    g[0],
                    g[1],
                    g[2],
                    g[3],
                    g[4],
                    g[5],
                    g[6],
                    g[7],
                    conv.group,
                    bias_mode,
                    0,
                    0,
                    0,
                ])?;
                let slots = vec![Slot::Act(*x), Slot::Weight(wk), Slot::Weight(wb)];
                let kernel = if by4 {
                    params[0] = count / 4;
                    Kernel::Conv4
                } else {
                    Kernel::Conv
                };
                new_steps.push(Step {
                    kernel,
                    clamp_at: Some(17),
                    count: params[0],
                    params,
                    slots,
                });
            }
        } else if let Some(bin) = op.downcast_ref::<TypedBinOp>() {
            let name = bin.0.name();
            let code = match name {
                "Add" => 0u32,
                "Sub" => 1,
                "Mul" => 2,
                "Div" => 3,
                "Max" => 4,
                "Min" => 5,
                _ => return Err(unsupported("binary op not implemented".into())),
            };
            // Max / Min with a scalar constant right after a conv or binary step that
            // nothing else reads: fused into that step as a clamp.
            if code >= 4 {
                let scalar = ins
                    .iter()
                    .position(|v| matches!(v, Val::Const(t) if t.len() == 1));
                if let Some(si) = scalar {
                    let other = 1 - si;
                    if let (Val::Const(t), Val::Act(b)) = (&ins[si], &ins[other]) {
                        let src = node.inputs[other];
                        let c = t
                            .cast_to_scalar::<f32>()
                            .map_err(|e| unsupported(format!("{e:#}")))?;
                        if let Some(ps) = producer.get(&src).cloned() {
                            let single = uses(src) == 1;
                            let st = &steps[ps[0]];
                            if let (true, Some(at)) = (single, st.clamp_at) {
                                let flags = st.params[at];
                                let lo = f32::from_bits(st.params[at + 1]);
                                let hi = f32::from_bits(st.params[at + 2]);
                                let (nlo, nhi) = if code == 4 {
                                    (if flags & 1 != 0 { lo.max(c) } else { c }, hi)
                                } else {
                                    (lo, if flags & 2 != 0 { hi.min(c) } else { c })
                                };
                                let nflags = flags | if code == 4 { 1 } else { 2 };
                                if nflags != 3 || nlo <= nhi {
                                    // Every chunk step of the producer gets the clamp.
                                    for &s in &ps {
                                        let st = &mut steps[s];
                                        st.params[at] = nflags;
                                        st.params[at + 1] = nlo.to_bits();
                                        st.params[at + 2] = nhi.to_bits();
                                    }
                                    alias = Some(*b);
                                    producer.insert(out, ps);
                                }
                            }
                        }
                    }
                }
            }
            if alias.is_none() {
                let mut out4 = [1usize; 4];
                if out_dims.len() > 4 {
                    return Err(unsupported(format!("rank {} (≤ 4 only)", out_dims.len())));
                }
                out4[4 - out_dims.len()..].copy_from_slice(&out_dims);
                let mut params = vec![count, code];
                params.extend(out4.iter().map(|&d| d as u32));
                let mut slots = Vec::new();
                for (k, v) in ins.iter().enumerate() {
                    let d =
                        dims(model, node.inputs[k]).map_err(|e| unsupported(format!("{e:#}")))?;
                    let s = broadcast_strides(&d, &out4).ok_or_else(|| {
                        unsupported(format!("cannot broadcast {d:?} to {out_dims:?}"))
                    })?;
                    params.extend(s);
                    slots.push(match v {
                        Val::Act(b) => Slot::Act(*b),
                        Val::Const(t) => Slot::Weight(
                            upload(&mut weights, &mut uploaded, node.inputs[k], t)
                                .map_err(&unsupported)?,
                        ),
                    });
                }
                params.extend([0, 0, 0]);
                new_steps.push(Step {
                    kernel: Kernel::Binary,
                    clamp_at: Some(14),
                    params,
                    slots,
                    count,
                });
            }
        } else if let Some(mp) = op.downcast_ref::<MaxPool>() {
            if mp.with_index_outputs.is_some() {
                return Err(unsupported("index outputs".into()));
            }
            let in_dims = dims(model, node.inputs[0]).map_err(|e| unsupported(format!("{e:#}")))?;
            let g = geometry(&mp.pool_spec, &in_dims).map_err(&unsupported)?;
            let Some(Val::Act(x)) = ins.first() else {
                return Err(unsupported("constant input".into()));
            };
            let p = [
                count as usize,
                in_dims[1],
                in_dims[2],
                in_dims[3],
                g[8],
                g[9],
                g[0],
                g[1],
                g[2],
                g[3],
                g[4],
                g[5],
                g[6],
                g[7],
            ];
            new_steps.push(Step {
                kernel: Kernel::MaxPool,
                clamp_at: None,
                params: p.iter().map(|&v| v as u32).collect(),
                slots: vec![Slot::Act(*x)],
                count,
            });
        } else if let Some(red) = op.downcast_ref::<Reduce>() {
            let code = match red.reducer {
                Reducer::Sum => 0u32,
                Reducer::Max => 1,
                Reducer::Min => 2,
                _ => return Err(unsupported(format!("reducer {:?}", red.reducer))),
            };
            let in_dims = dims(model, node.inputs[0]).map_err(|e| unsupported(format!("{e:#}")))?;
            let mut axes: Vec<usize> = red.axes.to_vec();
            axes.sort_unstable();
            let (Some(&first), Some(&last)) = (axes.first(), axes.last()) else {
                return Err(unsupported("no axes".into()));
            };
            if last - first + 1 != axes.len() {
                return Err(unsupported(format!("non-contiguous axes {axes:?}")));
            }
            let Some(Val::Act(x)) = ins.first() else {
                return Err(unsupported("constant input".into()));
            };
            let r: usize = in_dims[first..=last].iter().product();
            let inner: usize = in_dims[last + 1..].iter().product();
            new_steps.push(Step {
                kernel: Kernel::Reduce,
                clamp_at: None,
                params: vec![count, r as u32, inner as u32, code],
                slots: vec![Slot::Act(*x)],
                count,
            });
        } else if let Some(axis) = op.downcast_ref::<AxisOp>() {
            match axis {
                AxisOp::Add(_) | AxisOp::Rm(_) | AxisOp::Reshape(..) => {}
                AxisOp::Move(..) => return Err(unsupported("axis permutation".into())),
            }
            let Some(Val::Act(x)) = ins.first() else {
                return Err(unsupported("constant input".into()));
            };
            alias = Some(*x);
            if let Some(ps) = producer.get(&node.inputs[0]).cloned() {
                if uses(node.inputs[0]) == 1 {
                    producer.insert(out, ps);
                }
            }
        } else {
            return Err(unsupported("no wgpu kernel for this op".into()));
        }

        if let Some(b) = alias {
            alloc.pending[b] += uses(out);
            vals.insert(out, Val::Act(b));
        } else if !new_steps.is_empty() {
            let b = alloc.take(out_elems as u64, uses(out));
            let first = steps.len();
            for mut st in new_steps {
                st.slots.push(Slot::Act(b));
                steps.push(st);
            }
            producer.insert(out, (first..steps.len()).collect());
            vals.insert(out, Val::Act(b));
        }
        for v in &ins {
            if let Val::Act(b) = v {
                alloc.release(*b);
            }
        }
    }
    if let Some(st) = steps.iter().find(|s| s.params.len() > PARAMS) {
        return Err(format!(
            "{:?} step with {} parameters",
            st.kernel,
            st.params.len()
        ));
    }
    let mut outputs = Vec::new();
    for o in &model_outputs {
        match vals.get(o) {
            Some(Val::Act(b)) => {
                let n: usize = dims(model, *o)
                    .map_err(|e| format!("{e:#}"))?
                    .iter()
                    .product();
                outputs.push((*b, n));
            }
            _ => return Err(format!("output {o:?} is a constant or missing")),
        }
    }
    Ok(Program {
        steps,
        weights,
        act_sizes: alloc.sizes,
        input: input.ok_or("the graph has no input")?,
        outputs,
    })
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl WgpuBackbone {
    /// Load an ONNX backbone for batches of `batch` images on the adapter `choice` picks.
    /// Unsupported ops are refused here, not at the first frame.
    pub fn load(
        path: &Path,
        batch: usize,
        size: Option<(u32, u32)>,
        choice: AdapterChoice,
    ) -> Result<WgpuBackbone, BackboneError> {
        let (mut typed, info, pools) = load_typed(path, batch, size)?;
        let unsupported = |reason: String| BackboneError::Unsupported {
            path: path.to_path_buf(),
            reason,
        };
        // Fold constant subgraphs (casts, the average pool's divisor) into constants.
        Optimizer::prop_consts()
            .optimize(&mut typed)
            .map_err(|e| BackboneError::Load {
                path: path.to_path_buf(),
                reason: format!("{e:#}"),
            })?;
        let program = compile(&typed).map_err(unsupported)?;
        let adapter = pick_adapter(choice)?;
        let adapter_info = adapter.get_info();
        let limits = adapter.limits();
        let biggest = program
            .act_sizes
            .iter()
            .copied()
            .chain(program.weights.iter().map(|w| w.len() as u64))
            .max()
            .unwrap_or(0)
            * 4;
        if biggest > limits.max_storage_buffer_binding_size || biggest > limits.max_buffer_size {
            return Err(unsupported(format!(
                "a {biggest}-byte buffer exceeds the adapter's limits (lower the batch)"
            )));
        }
        if limits.max_uniform_buffer_binding_size < (UNIFORM_FLOATS * 4) as u64 {
            return Err(unsupported(format!(
                "the adapter's uniform buffers hold {} bytes, the kernels need {}",
                limits.max_uniform_buffer_binding_size,
                UNIFORM_FLOATS * 4
            )));
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("vigil"),
            required_limits: limits,
            ..Default::default()
        }))
        .map_err(|e| BackboneError::NoAdapter {
            choice: choice.as_str().into(),
            found: format!("{} (device request failed: {e})", adapter_info.name),
        })?;
        let failed: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
        {
            let failed = failed.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                tracing::error!(error = %e, "wgpu error");
                if let Ok(mut f) = failed.lock() {
                    *f = Some(e.to_string());
                }
            }));
        }
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipelines = KERNELS
            .iter()
            .map(|(k, src, constants)| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(&format!("{k:?}")),
                    source: wgpu::ShaderSource::Wgsl(
                        format!("{}\n{src}", include_str!("kernels.wgsl")).into(),
                    ),
                });
                device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(&format!("{k:?}")),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        ..Default::default()
                    },
                    cache: None,
                })
            })
            .collect();
        use wgpu::util::DeviceExt;
        let weights = program
            .weights
            .iter()
            .map(|w| {
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("weight"),
                    contents: &f32_bytes(w),
                    // Storage for the plain kernels, uniform for the chunked ones.
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::UNIFORM,
                })
            })
            .collect();
        let params = program
            .steps
            .iter()
            .map(|s| {
                let mut p = s.params.clone();
                p.resize(PARAMS, 0);
                device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("params"),
                    contents: &u32_bytes(&p),
                    usage: wgpu::BufferUsages::UNIFORM,
                })
            })
            .collect();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(BackboneError::Run(format!("wgpu: {e}")));
        }
        tracing::info!(
            adapter = %adapter_info.name,
            backend = ?adapter_info.backend,
            steps = program.steps.len(),
            weights = program.weights.len(),
            activation_buffers = program.act_sizes.len(),
            "wgpu backbone loaded"
        );
        let shared = Arc::new(Shared {
            failed,
            device,
            queue,
            adapter: adapter_info,
            pipelines,
            weights,
            params,
            steps: program.steps,
            act_sizes: program.act_sizes,
            input: program.input,
            outputs: program.outputs,
            pools,
        });
        WgpuBackbone::instance(info, shared)
    }

    /// Per-instance activation buffers, bind groups and staging buffer.
    fn instance(info: BackboneInfo, shared: Arc<Shared>) -> Result<WgpuBackbone, BackboneError> {
        let device = &shared.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let acts: Vec<wgpu::Buffer> = shared
            .act_sizes
            .iter()
            .map(|&n| {
                device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("activation"),
                    size: n.max(1) * 4,
                    usage: wgpu::BufferUsages::STORAGE
                        | wgpu::BufferUsages::COPY_DST
                        | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                })
            })
            .collect();
        let bind_groups = shared
            .steps
            .iter()
            .zip(&shared.params)
            .map(|(s, params)| {
                let pipeline = &shared.pipelines[s.kernel as usize];
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: params.as_entire_binding(),
                }];
                for (i, slot) in s.slots.iter().enumerate() {
                    let buf = match slot {
                        Slot::Act(b) => &acts[*b],
                        Slot::Weight(w) => &shared.weights[*w],
                    };
                    entries.push(wgpu::BindGroupEntry {
                        binding: i as u32 + 1,
                        resource: buf.as_entire_binding(),
                    });
                }
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.get_bind_group_layout(0),
                    entries: &entries,
                })
            })
            .collect();
        let out_elems: usize = shared.outputs.iter().map(|(_, n)| n).sum();
        let staging_bytes = (out_elems * 4) as u64;
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: staging_bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(BackboneError::Run(format!("wgpu: {e}")));
        }
        Ok(WgpuBackbone {
            info,
            shared,
            acts,
            bind_groups,
            staging,
            staging_bytes,
            host_out: vec![0.0; out_elems],
            scratch: Vec::new(),
        })
    }

    /// Another instance sharing this one's device, pipelines and weights (only the
    /// activation buffers are per instance).
    pub fn fork(&self) -> Result<WgpuBackbone, BackboneError> {
        WgpuBackbone::instance(self.info.clone(), self.shared.clone())
    }

    /// The adapter the backbone runs on.
    pub fn adapter(&self) -> &wgpu::AdapterInfo {
        &self.shared.adapter
    }

    /// Number of kernel dispatches per batch.
    pub fn dispatches(&self) -> usize {
        self.shared.steps.len()
    }

    /// Whether two instances share one device and one copy of the weights.
    pub fn shares_weights_with(&self, other: &WgpuBackbone) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Time every dispatch alone (submitted and waited for one by one) on `input` (up to
    /// one batch of images): (kernel and parameters, work items, ms) per step.
    pub fn profile_steps(
        &mut self,
        input: &[f32],
    ) -> Result<Vec<(String, u32, f64)>, BackboneError> {
        let per = 3 * self.info.input_width as usize * self.info.input_height as usize;
        if input.is_empty()
            || !input.len().is_multiple_of(per)
            || input.len() > self.info.batch * per
        {
            return Err(BackboneError::InputSize {
                got: input.len(),
                expected: self.info.batch * per,
                batch: self.info.batch,
                height: self.info.input_height as usize,
                width: self.info.input_width as usize,
            });
        }
        let images = input.len() / per;
        self.run(input, images)?;
        let batch = self.info.batch;
        let sh = &*self.shared;
        let mut out = Vec::new();
        for (s, bg) in sh.steps.iter().zip(&self.bind_groups) {
            let t = std::time::Instant::now();
            let mut enc = sh
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
            {
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                });
                pass.set_pipeline(&sh.pipelines[s.kernel as usize]);
                pass.set_bind_group(0, bg, &[]);
                let (x, y) = s.workgroups(images, batch);
                pass.dispatch_workgroups(x, y, 1);
            }
            sh.queue.submit([enc.finish()]);
            sh.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(run_err)?;
            out.push((
                format!("{:?} {:?}", s.kernel, &s.params[1..s.params.len().min(16)]),
                s.count,
                t.elapsed().as_secs_f64() * 1e3,
            ));
        }
        Ok(out)
    }

    fn run(&mut self, input: &[f32], images: usize) -> Result<(), BackboneError> {
        let batch = self.info.batch;
        let sh = &*self.shared;
        self.scratch.clear();
        self.scratch
            .extend(input.iter().flat_map(|x| x.to_le_bytes()));
        sh.queue
            .write_buffer(&self.acts[sh.input], 0, &self.scratch);
        let mut enc = sh
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: None,
            });
            for (s, bg) in sh.steps.iter().zip(&self.bind_groups) {
                pass.set_pipeline(&sh.pipelines[s.kernel as usize]);
                pass.set_bind_group(0, bg, &[]);
                let (x, y) = s.workgroups(images, batch);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        let mut offset = 0u64;
        for (b, n) in &sh.outputs {
            let len = (*n * 4) as u64;
            enc.copy_buffer_to_buffer(&self.acts[*b], 0, &self.staging, offset, len);
            offset += len;
        }
        sh.queue.submit([enc.finish()]);
        let slice = self.staging.slice(..self.staging_bytes);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        sh.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(run_err)?;
        rx.recv().map_err(run_err)?.map_err(run_err)?;
        if let Some(e) = sh.failed.lock().map_err(run_err)?.take() {
            return Err(BackboneError::Run(format!("wgpu: {e}")));
        }
        {
            let view = slice.get_mapped_range().map_err(run_err)?;
            for (dst, src) in self.host_out.iter_mut().zip(view.chunks_exact(4)) {
                *dst = f32::from_le_bytes([src[0], src[1], src[2], src[3]]);
            }
        }
        self.staging.unmap();
        Ok(())
    }
}

impl Backbone for WgpuBackbone {
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
        // A partial batch computes its own rows only (rows are independent in eval mode).
        self.run(input, images)?;
        let fd = self.info.feature_dim;
        let mut offset = 0;
        let mut base = 0;
        for ((_, n), pool) in self.shared.outputs.iter().zip(&self.shared.pools) {
            let view = &self.host_out[base..base + n];
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
                            let s = (i * channels + c) * spatial;
                            let sum: f64 = view[s..s + spatial].iter().map(|&v| f64::from(v)).sum();
                            out[i * fd + offset + c] = (sum / spatial as f64) as f32;
                        }
                    }
                }
            }
            offset += pool.channels();
            base += n;
        }
        Ok(())
    }
}
