//! `vigil bench --backbone-only`: the tract backbone alone, on a fixed input tensor, with
//! N instances running in parallel (vigil's worker model: one instance per inference
//! thread, sharing the optimised graph). Prints one JSON line (`backbone_ms_median`, …)
//! that `scripts/bench_backbone_side_by_side.sh` sets beside onnxruntime's on the same
//! ONNX file and input, in the same run. `--profile` adds tract's time per operator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;
use tract_onnx::prelude::*;

use crate::backbone::{AnyBackbone, Backbone, BackboneError, BackendOptions, TractBackbone};

#[derive(Debug, Error)]
pub enum BackboneBenchError {
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error("cannot read input tensor {path}: {reason}")]
    Input { path: PathBuf, reason: String },
    #[error("--threads must be at least 1")]
    NoThreads,
    #[error("a benchmark thread failed: {0}")]
    Thread(String),
}

/// Time spent in one operator type per frame (`--profile`).
#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    pub op: String,
    pub nodes: usize,
    pub ms_per_frame: f64,
    pub share: f64,
    /// Multiply-adds per frame (tract's cost model), where the op declares them.
    pub mfma: f64,
    /// Multiply-adds per second while in this op.
    pub gfma_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackboneBench {
    pub model: String,
    pub engine: &'static str,
    pub threads: usize,
    pub frames: usize,
    pub seconds: f64,
    /// Frames per second, all threads together.
    pub fps: f64,
    /// Per-frame time of one instance, median over every frame of every thread.
    pub backbone_ms_median: f64,
    pub backbone_ms_p99: f64,
    pub backbone_ms_min: f64,
    /// vigil's kernels tract resolved to on this host (crates/vigil-kernels).
    pub kernels: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profile: Vec<OpTime>,
}

/// A float32 `.npy` tensor (C order) or, without one, a fixed pseudo-random image-like
/// tensor for `backbone`'s input shape.
fn input_tensor(path: Option<&Path>, len: usize) -> Result<Vec<f32>, BackboneBenchError> {
    let Some(path) = path else {
        let mut s = 0x2545_F491u32;
        return Ok((0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 4001) as f32 / 1000.0 - 2.0
            })
            .collect());
    };
    let err = |reason: String| BackboneBenchError::Input {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy file".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(err("truncated header".into())),
    };
    let header = bytes
        .get(start..start + header_len)
        .map(String::from_utf8_lossy)
        .ok_or_else(|| err("truncated header".into()))?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(err(format!(
            "expected little-endian float32 in C order, header {header}"
        )));
    }
    let data = &bytes[start + header_len..];
    if data.len() != len * 4 {
        return Err(err(format!(
            "{} values, the backbone takes {len}",
            data.len() / 4
        )));
    }
    Ok(data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Run the backbone on `threads` instances for `seconds` (after one second of warm-up).
pub fn bench_backbone(
    backbone: &Path,
    input: Option<&Path>,
    threads: usize,
    seconds: f64,
    profile: bool,
    backend: &BackendOptions,
) -> Result<BackboneBench, BackboneBenchError> {
    if threads == 0 {
        return Err(BackboneBenchError::NoThreads);
    }
    let first = AnyBackbone::load(backend, backbone, 1, None)?;
    let engine = first.kind().as_str();
    let info = first.info().clone();
    let per = 3 * info.input_width as usize * info.input_height as usize;
    let x = Arc::new(input_tensor(input, per)?);
    let mut instances = vec![first];
    for _ in 1..threads {
        instances.push(instances[0].fork()?);
    }
    let op_times = match &instances[0] {
        AnyBackbone::Tract(bb) if profile => profile_ops(bb, &x, seconds.min(10.0))?,
        _ => Vec::new(),
    };
    let barrier = Arc::new(Barrier::new(threads));
    let warm = Duration::from_secs(1);
    let run_for = Duration::from_secs_f64(seconds);
    let handles: Vec<_> = instances
        .into_iter()
        .map(|mut bb| {
            let (x, barrier) = (x.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<(Vec<f64>, f64), BackboneError> {
                let mut out = vec![0.0f32; bb.info().feature_dim];
                let t = Instant::now();
                while t.elapsed() < warm {
                    bb.extract(&x, 1, &mut out)?;
                }
                barrier.wait();
                let t0 = Instant::now();
                let mut times = Vec::new();
                while t0.elapsed() < run_for {
                    let t = Instant::now();
                    bb.extract(&x, 1, &mut out)?;
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                Ok((times, t0.elapsed().as_secs_f64()))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut elapsed: f64 = 0.0;
    for h in handles {
        let (times, secs) = h
            .join()
            .map_err(|_| BackboneBenchError::Thread("panicked".into()))?
            .map_err(|e| BackboneBenchError::Thread(e.to_string()))?;
        elapsed = elapsed.max(secs);
        all.extend(times);
    }
    all.sort_by(f64::total_cmp);
    Ok(BackboneBench {
        model: backbone.display().to_string(),
        engine,
        threads,
        frames: all.len(),
        seconds: elapsed,
        fps: all.len() as f64 / elapsed,
        backbone_ms_median: percentile(&all, 0.5),
        backbone_ms_p99: percentile(&all, 0.99),
        backbone_ms_min: percentile(&all, 0.0),
        kernels: vigil_kernels::registered(),
        profile: op_times,
    })
}

/// Time per operator type: every node's evaluation timed through tract's
/// `run_plan_with_eval`, for `seconds`.
fn profile_ops(
    bb: &TractBackbone,
    x: &[f32],
    seconds: f64,
) -> Result<Vec<OpTime>, BackboneBenchError> {
    let info = bb.info();
    let run_err =
        |e: TractError| BackboneBenchError::Backbone(BackboneError::Run(format!("{e:#}")));
    let plan = bb.plan().clone();
    let model = plan.model();
    let tensor = Tensor::from_shape(
        &[1, 3, info.input_height as usize, info.input_width as usize],
        x,
    )
    .map_err(run_err)?;
    let mut state = plan.spawn().map_err(run_err)?;
    // Multiply-adds per node, from each op's cost model.
    let mut fma_of = BTreeMap::new();
    for node in &model.nodes {
        let facts = model.node_input_facts(node.id).map_err(run_err)?;
        let fma: f64 = node
            .op
            .cost(&facts)
            .map(|costs| {
                costs
                    .iter()
                    .filter(|(c, _)| matches!(c, tract_onnx::tract_core::ops::Cost::FMA(_)))
                    .filter_map(|(_, n)| n.to_i64().ok())
                    .map(|n| n as f64)
                    .sum()
            })
            .unwrap_or(0.0);
        fma_of.insert(node.id, fma);
    }
    let mut per_node: BTreeMap<usize, f64> = BTreeMap::new();
    let mut frames = 0usize;
    let t0 = Instant::now();
    while frames < 3 || t0.elapsed().as_secs_f64() < seconds {
        state
            .run_plan_with_eval(
                tvec!(tensor.clone().into()),
                |session, op_state, node, inputs| {
                    let t = Instant::now();
                    let r = tract_onnx::tract_core::plan::eval(session, op_state, node, inputs);
                    *per_node.entry(node.id).or_default() += t.elapsed().as_secs_f64();
                    r
                },
            )
            .map_err(run_err)?;
        frames += 1;
    }
    let mut by_op: BTreeMap<String, (usize, f64, f64)> = BTreeMap::new();
    for (id, secs) in &per_node {
        let e = by_op
            .entry(model.node(*id).op().name().to_string())
            .or_default();
        e.0 += 1;
        e.1 += secs / frames as f64;
        e.2 += fma_of.get(id).copied().unwrap_or(0.0);
    }
    let total: f64 = by_op.values().map(|v| v.1).sum();
    let mut rows: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (nodes, secs, fma))| OpTime {
            op,
            nodes,
            ms_per_frame: secs * 1e3,
            share: if total > 0.0 { secs / total } else { 0.0 },
            mfma: fma / 1e6,
            gfma_per_s: if secs > 0.0 { fma / secs / 1e9 } else { 0.0 },
        })
        .collect();
    rows.sort_by(|a, b| b.ms_per_frame.total_cmp(&a.ms_per_frame));
    Ok(rows)
}
