//! The wgpu backend against the tract backend on the shipped models and real images
//! (`$VIGIL_SHARED/data/magnetic_tile`), on whatever adapter `auto` finds (lavapipe in CI:
//! `scripts/wgpu.sh` installs it). Fails, never skips, without an adapter or the data.
#![cfg(feature = "wgpu")]

mod common;

use std::path::PathBuf;

use vigil::backbone::wgpu::AdapterChoice;
use vigil::backbone::{
    AnyBackbone, Backbone, BackboneError, BackendKind, BackendOptions, TractBackbone, WgpuBackbone,
};
use vigil::preprocess::{PreprocessConfig, Preprocessor};

/// `n` real images (train/good, then test/crack): sorted, deterministic.
fn images(n: usize) -> Vec<PathBuf> {
    let root = common::shared_dir().join("data/magnetic_tile");
    let mut out = Vec::new();
    for dir in ["train/good", "test/crack"] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("{}: {e}", root.join(dir).display()))
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        out.extend(v.into_iter().take(n.div_ceil(2)));
    }
    out.truncate(n);
    assert_eq!(out.len(), n, "not enough images under {}", root.display());
    out
}

fn batch_input(paths: &[PathBuf]) -> Vec<f32> {
    let mut pre = Preprocessor::new(PreprocessConfig::imagenet(224, 224));
    paths
        .iter()
        .flat_map(|p| pre.file(p).expect("preprocess"))
        .collect()
}

/// (max |Δ|, max |feature|) of wgpu vs tract.
fn compare(model: &str, batch: usize) -> (f32, f32) {
    let path = common::repo_path(model);
    let mut tract = TractBackbone::load(&path, batch, None).expect("tract");
    let mut gpu = WgpuBackbone::load(&path, batch, None, AdapterChoice::Auto).expect("wgpu");
    assert_eq!(gpu.info(), tract.info(), "same info, same feature layout");
    let fd = tract.info().feature_dim;
    let input = batch_input(&images(batch));
    let (mut a, mut b) = (vec![0.0f32; batch * fd], vec![0.0f32; batch * fd]);
    tract.extract(&input, batch, &mut a).expect("tract run");
    let t = std::time::Instant::now();
    gpu.extract(&input, batch, &mut b).expect("wgpu run");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = a
        .iter()
        .zip(&b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    eprintln!(
        "{model} ×{batch} on {} ({:?}, {} dispatches): max |Δ| {d:.3e}, max |y| {scale:.3}, {ms:.0} ms",
        gpu.adapter().name,
        gpu.adapter().backend,
        gpu.dispatches()
    );
    // Rows are not mixed up: image 1 differs from image 0.
    assert!(
        (0..fd).any(|i| (b[i] - b[fd + i]).abs() > 1e-3 * scale),
        "rows identical"
    );
    // A partial batch (1 of `batch`) gives the first row again.
    let mut one = vec![0.0f32; fd];
    gpu.extract(&input[..input.len() / batch], 1, &mut one)
        .expect("partial batch");
    let d1 = one
        .iter()
        .zip(&a[..fd])
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(d1 <= 1e-3 * scale, "partial batch max |Δ| {d1}");
    (d, scale)
}

#[test]
fn efficientnet_lite0_on_wgpu_matches_tract_on_real_images() {
    let (d, scale) = compare("models/efficientnet_lite0_pooled.onnx", 3);
    assert!(scale > 0.1, "features all ~0: {scale}");
    assert!(d <= 1e-3 * scale, "max |Δ| {d} > 1e-3 × {scale}");
}

#[test]
fn resnet18_on_wgpu_matches_tract_on_real_images() {
    let (d, scale) = compare("models/resnet18_layer4_random.onnx", 2);
    assert!(scale > 0.1, "features all ~0: {scale}");
    assert!(d <= 1e-3 * scale, "max |Δ| {d} > 1e-3 × {scale}");
}

#[test]
fn mid_stage_backbone_on_wgpu_matches_tract() {
    let (d, scale) = compare("models/efficientnet_lite0_s16.onnx", 2);
    assert!(d <= 1e-3 * scale, "max |Δ| {d} > 1e-3 × {scale}");
}

#[test]
fn four_d_outputs_and_batchnorm_match_onnxruntime() {
    // stage [N, 8, 16, 20] (mean-pooled by vigil) ++ pooled [N, 16]; a real
    // BatchNormalization node (not folded) and a depthwise stride-2 conv.
    let path = common::repo_path("tests/fixtures/multi_output.onnx");
    let mut bb = WgpuBackbone::load(&path, 2, None, AdapterChoice::Auto).expect("load");
    assert_eq!(bb.info().feature_dim, 24);
    let input = common::read_npy(&common::repo_path("tests/fixtures/multi_output_input.npy"));
    let want = common::read_npy(&common::repo_path(
        "tests/fixtures/multi_output_expected.npy",
    ));
    let mut out = vec![0.0f32; 2 * 24];
    bb.extract(&input.f32(), 2, &mut out).expect("run");
    let d = out
        .iter()
        .zip(&want.data)
        .fold(0.0f64, |m, (x, y)| m.max((f64::from(*x) - y).abs()));
    assert!(d <= 1e-4, "max |Δ| {d}");
}

#[test]
fn efficientnet_lite0_on_wgpu_matches_onnxruntime() {
    let mut bb = WgpuBackbone::load(
        &common::repo_path("models/efficientnet_lite0_pooled.onnx"),
        1,
        None,
        AdapterChoice::Auto,
    )
    .expect("load");
    let input = common::read_npy(&common::repo_path("tests/fixtures/effnet_input.npy"));
    let want = common::read_npy(&common::repo_path("tests/fixtures/effnet_output_ort.npy"));
    let got = bb.extract_one(&input.f32()).expect("run");
    let d = got
        .iter()
        .zip(&want.data)
        .fold(0.0f64, |m, (x, y)| m.max((f64::from(*x) - y).abs()));
    eprintln!("EfficientNet-Lite0 wgpu vs onnxruntime: max |Δ| = {d:.2e}");
    assert!(d <= 1e-3, "max |Δ| {d}");
    assert!(matches!(
        bb.extract(&input.f32()[..10], 1, &mut vec![0.0; 1280]),
        Err(BackboneError::InputSize { .. })
    ));
}

#[test]
fn forked_instances_share_weights_and_agree() {
    let bb = WgpuBackbone::load(
        &common::repo_path("models/efficientnet_lite0_pooled.onnx"),
        1,
        None,
        AdapterChoice::Auto,
    )
    .expect("load");
    let mut a = bb.fork().expect("fork");
    let mut b = bb;
    assert!(a.shares_weights_with(&b));
    let input = batch_input(&images(1));
    assert_eq!(
        a.extract_one(&input).expect("a"),
        b.extract_one(&input).expect("b")
    );
}

/// Every `step`-th image of a folder, sorted.
fn every(dir: &str, step: usize) -> Vec<PathBuf> {
    let root = common::shared_dir().join("data/magnetic_tile");
    vigil::features::list_images(&root.join(dir))
        .expect("list")
        .into_iter()
        .step_by(step)
        .collect()
}

/// Features of `paths` from each backbone (same batch size), every batch preprocessed once.
fn features_of_both(mut bbs: [&mut dyn Backbone; 2], paths: &[PathBuf]) -> [Vec<f32>; 2] {
    let (batch, fd) = (bbs[0].info().batch, bbs[0].info().feature_dim);
    assert_eq!(bbs[1].info().batch, batch);
    let mut out = [Vec::new(), Vec::new()];
    for chunk in paths.chunks(batch) {
        let input = batch_input(chunk);
        for (bb, o) in bbs.iter_mut().zip(out.iter_mut()) {
            let mut f = vec![0.0f32; chunk.len() * fd];
            bb.extract(&input, chunk.len(), &mut f).expect("extract");
            o.extend(f);
        }
    }
    out
}

#[test]
fn magnetic_tile_auroc_on_wgpu_matches_tract() {
    // SUBSAMPLE: the whole set (600 + 494 images) takes ~10 min on lavapipe on the 2-core
    // dev VM (~0.55 s per image for both backbones, load average ~4 from other builds), over
    // the 6 min budget of this test target. Every 2nd training image (300) and every 2nd
    // test image of each folder (248: 100 good, 148 defects of all five kinds), the largest
    // halving that fits, took 303 s (the whole target 5 min 10 s). The whole set:
    // `magnetic_tile_auroc_on_wgpu_matches_tract_on_the_whole_set` (ignored, run by hand).
    auroc_parity(2);
}

#[test]
#[ignore = "~10 min on lavapipe: the whole magnetic_tile set, run by hand (--ignored)"]
fn magnetic_tile_auroc_on_wgpu_matches_tract_on_the_whole_set() {
    auroc_parity(1);
}

/// DFKDE fitted on the features of each backbone (every `step`-th image of train/good),
/// AUROC on every `step`-th image of each test folder: both within ±0.002.
fn auroc_parity(step: usize) {
    let train = every("train/good", step);
    let mut test = Vec::new();
    let mut labels = Vec::new();
    for dir in ["good", "blowhole", "break", "crack", "fray", "uneven"] {
        let p = every(&format!("test/{dir}"), step);
        labels.extend(std::iter::repeat_n(dir != "good", p.len()));
        test.extend(p);
    }
    assert!(labels.iter().any(|&l| l) && labels.iter().any(|&l| !l));
    let path = common::repo_path("models/efficientnet_lite0_pooled.onnx");
    let mut tract = TractBackbone::load(&path, 4, None).expect("tract");
    let mut gpu = WgpuBackbone::load(&path, 4, None, AdapterChoice::Auto).expect("wgpu");
    let fd = tract.info().feature_dim;
    // The shipped method: anomalib's defaults (PCA 16, scale, Scott bandwidth).
    let cfg = vigil::model::FitConfig::default();
    let t0 = std::time::Instant::now();
    let f_train = features_of_both([&mut tract, &mut gpu], &train);
    let f_test = features_of_both([&mut tract, &mut gpu], &test);
    let secs = t0.elapsed().as_secs_f64();
    let mut aurocs = Vec::new();
    for (f_train, f_test) in f_train.iter().zip(&f_test) {
        let model = vigil::model::Dfkde::fit(f_train, train.len(), fd, &cfg).expect("fit");
        let anomaly: Vec<f64> = model
            .score_rows(f_test, fd)
            .expect("score")
            .iter()
            .map(|s| -s.log_density)
            .collect();
        aurocs.push(vigil::model::metrics::auroc(&anomaly, &labels).expect("auroc"));
    }
    eprintln!(
        "magnetic_tile ({} train, {} test; features from both backbones in {secs:.0} s): AUROC tract {:.4}, wgpu {:.4}",
        train.len(),
        test.len(),
        aurocs[0],
        aurocs[1]
    );
    assert!(
        aurocs[0] > 0.5,
        "tract AUROC {} (no signal at all?)",
        aurocs[0]
    );
    assert!(
        (aurocs[0] - aurocs[1]).abs() <= 0.002,
        "AUROC tract {} vs wgpu {}",
        aurocs[0],
        aurocs[1]
    );
}

// --- a tiny hand-encoded ONNX model (protobuf wire format) ---------------------------

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(field: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(field) << 3, out);
    varint(v, out);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint((u64::from(field) << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// ValueInfoProto: a float tensor `name` of shape `dims`.
fn value_info(name: &str, dims: &[u64]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        field_varint(1, d, &mut dim); // Dimension.dim_value
        field_bytes(1, &dim, &mut shape); // TensorShapeProto.dim
    }
    let mut tensor = Vec::new();
    field_varint(1, 1, &mut tensor); // elem_type FLOAT
    field_bytes(2, &shape, &mut tensor);
    let mut ty = Vec::new();
    field_bytes(1, &tensor, &mut ty); // TypeProto.tensor_type
    let mut vi = Vec::new();
    field_bytes(1, name.as_bytes(), &mut vi);
    field_bytes(2, &ty, &mut vi);
    vi
}

/// `input [1, 3, 8, 8] -> <op_type> -> features`, opset 17.
fn one_op_model(op_type: &str) -> Vec<u8> {
    let mut node = Vec::new();
    field_bytes(1, b"input", &mut node);
    field_bytes(2, b"features", &mut node);
    field_bytes(3, b"the_odd_one", &mut node);
    field_bytes(4, op_type.as_bytes(), &mut node);
    let mut graph = Vec::new();
    field_bytes(1, &node, &mut graph);
    field_bytes(2, b"g", &mut graph);
    field_bytes(11, &value_info("input", &[1, 3, 8, 8]), &mut graph);
    field_bytes(12, &value_info("features", &[1, 3, 8, 8]), &mut graph);
    let mut opset = Vec::new();
    field_bytes(1, b"", &mut opset);
    field_varint(2, 17, &mut opset);
    let mut model = Vec::new();
    field_varint(1, 8, &mut model); // ir_version
    field_bytes(7, &graph, &mut model);
    field_bytes(8, &opset, &mut model);
    model
}

#[test]
fn an_unsupported_op_is_refused_at_load_time_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sigmoid.onnx");
    std::fs::write(&path, one_op_model("Sigmoid")).expect("write");
    // tract runs it: the model itself is fine.
    let mut t = TractBackbone::load(&path, 1, None).expect("tract loads it");
    assert_eq!(t.extract_one(&vec![0.0; 3 * 64]).expect("run").len(), 3);
    let err = WgpuBackbone::load(&path, 1, None, AdapterChoice::Auto)
        .err()
        .expect("wgpu must refuse Sigmoid");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, BackboneError::Unsupported { .. }), "{msg}");
    assert!(
        msg.contains("unsupported op the_odd_one") && msg.contains("Sigmoid"),
        "{msg}"
    );
    // The same hand-encoded model with a supported op loads (the encoder is not the
    // reason for the refusal).
    let ok = dir.path().join("relu.onnx");
    std::fs::write(&ok, one_op_model("Relu")).expect("write");
    let mut g = WgpuBackbone::load(&ok, 1, None, AdapterChoice::Auto).expect("Relu loads");
    let x: Vec<f32> = (0..3 * 64).map(|i| i as f32 - 96.0).collect();
    let y = g.extract_one(&x).expect("run");
    // Mean over each 8×8 channel of relu(x).
    for (c, v) in y.iter().enumerate() {
        let want: f32 = x[c * 64..(c + 1) * 64]
            .iter()
            .map(|v| v.max(0.0))
            .sum::<f32>()
            / 64.0;
        assert!((v - want).abs() < 1e-4, "channel {c}: {v} vs {want}");
    }
}

#[test]
#[ignore = "timing breakdown, run by hand"]
fn profile_steps_by_hand() {
    let model =
        std::env::var("VIGIL_MODEL").unwrap_or("models/efficientnet_lite0_pooled.onnx".into());
    let mut bb =
        WgpuBackbone::load(&common::repo_path(&model), 1, None, AdapterChoice::Auto).expect("load");
    let input = batch_input(&images(1));
    let steps = bb.profile_steps(&input).expect("profile");
    let total: f64 = steps.iter().map(|s| s.2).sum();
    for (k, n, ms) in &steps {
        eprintln!("{ms:9.1} ms {n:9} {k}");
    }
    eprintln!("total {total:.0} ms");
}

#[test]
fn adapter_choice_is_honoured_or_a_clear_error_with_optional_fallback() {
    let path = common::repo_path("models/efficientnet_lite0_pooled.onnx");
    // The adapter CI has (lavapipe) is a CPU one: cpu-fallback finds it.
    let bb = WgpuBackbone::load(&path, 1, None, AdapterChoice::CpuFallback).expect("lavapipe");
    assert_eq!(bb.adapter().device_type, wgpu::DeviceType::Cpu);
    // GL may or may not exist here: either it loads on GL, or the error says what exists,
    // and with fallback_to_tract the same request gives tract.
    match WgpuBackbone::load(&path, 1, None, AdapterChoice::Gl) {
        Ok(bb) => assert_eq!(bb.adapter().backend, wgpu::Backend::Gl),
        Err(e) => {
            assert!(matches!(e, BackboneError::NoAdapter { .. }), "{e}");
            assert!(e.to_string().contains("\"gl\""), "{e}");
            let opts = BackendOptions {
                kind: BackendKind::Wgpu,
                adapter: AdapterChoice::Gl,
                fallback_to_tract: true,
            };
            let any = AnyBackbone::load(&opts, &path, 1, None).expect("fallback");
            assert_eq!(any.kind(), BackendKind::Tract);
            let strict = BackendOptions {
                fallback_to_tract: false,
                ..opts
            };
            assert!(AnyBackbone::load(&strict, &path, 1, None).is_err());
        }
    }
}

#[test]
fn score_with_backend_wgpu_matches_backend_tract_on_the_command_line() {
    // Fit with tract on 20 real images (fast), then score 2 test images with each backend.
    let dir = tempfile::tempdir().expect("tmp");
    let train = dir.path().join("train");
    std::fs::create_dir(&train).expect("mkdir");
    for p in every("train/good", 30).iter().take(20) {
        std::fs::copy(p, train.join(p.file_name().expect("name"))).expect("copy");
    }
    let model = dir.path().join("m.safetensors");
    let (train_s, model_s) = (train.to_str().expect("utf8"), model.to_str().expect("utf8"));
    common::ok(&["fit", "--train", train_s, "--out", model_s, "--pca", "8"]);
    let imgs = every("test/crack", 20);
    let imgs: Vec<&str> = imgs
        .iter()
        .take(2)
        .map(|p| p.to_str().expect("utf8"))
        .collect();
    let score = |backend: &str| -> Vec<f64> {
        let mut args = vec!["score", "--model", model_s, "--backend", backend];
        args.extend(&imgs);
        common::ok(&args)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                v["log_density"].as_f64().expect("log_density")
            })
            .collect()
    };
    let (t, g) = (score("tract"), score("wgpu"));
    eprintln!("log-densities tract {t:?} wgpu {g:?}");
    assert_eq!(t.len(), 2);
    for (a, b) in t.iter().zip(&g) {
        assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "{a} vs {b}");
    }
}
