//! The tract backbone against onnxruntime on stored input/output pairs, and clear errors
//! for unusable model files.

mod common;

use vigil::backbone::{Backbone, BackboneError, TractBackbone};

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn efficientnet_lite0_matches_onnxruntime() {
    let mut bb = TractBackbone::load(
        &common::repo_path("models/efficientnet_lite0_pooled.onnx"),
        1,
        None,
    )
    .expect("load");
    let info = bb.info().clone();
    assert_eq!(
        (info.input_width, info.input_height, info.feature_dim),
        (224, 224, 1280)
    );
    assert_eq!(info.sha256.len(), 64);
    let input = common::read_npy(&common::repo_path("tests/fixtures/effnet_input.npy"));
    let want = common::read_npy(&common::repo_path("tests/fixtures/effnet_output_ort.npy"));
    let got = bb.extract_one(&input.f32()).expect("run");
    let d = max_diff(&got, &want.data);
    eprintln!("EfficientNet-Lite0 tract vs onnxruntime: max |Δ| = {d:.2e}");
    assert!(d <= 1e-4, "max |Δ| {d}");
}

#[test]
fn depthwise_convolutions_run_channel_inner_with_a_vectorised_kernel() {
    // tract moves depthwise convolutions of 16+ channels channel-last when the host has a
    // channel-inner kernel: its NEON one on aarch64, vigil's AVX2 one (crates/vigil-kernels)
    // on x86_64. Without it (before vigil registered one) they ran [C, H, W] through a
    // scalar loop at ~5 GFLOP/s.
    #[cfg(target_arch = "x86_64")]
    assert!(
        vigil_kernels::registered().contains(&"vigil_avx2_depthwise_c_f32"),
        "AVX2 depthwise kernel not resolved on this host: {:?}",
        vigil_kernels::registered()
    );
    let bb = TractBackbone::load(
        &common::repo_path("models/efficientnet_lite0_pooled.onnx"),
        1,
        None,
    )
    .expect("load");
    let model = bb.plan().model();
    let shapes: Vec<Vec<usize>> = model
        .nodes
        .iter()
        .filter(|n| n.op().name() == "DepthWiseConv")
        .map(|n| {
            let fact = model.outlet_fact(n.id.into()).expect("fact");
            fact.shape.as_concrete().expect("concrete").to_vec()
        })
        .collect();
    assert_eq!(
        shapes.len(),
        16,
        "EfficientNet-Lite0 has 16 depthwise convolutions"
    );
    // Square feature maps: [H, W, C] ends in C ≠ W, [C, H, W] ends in H = W. All but the
    // first (32 channels at 112², which tract keeps W-inner) run channel-last.
    let channel_last = shapes
        .iter()
        .filter(|s| s[s.len() - 1] != s[s.len() - 2])
        .count();
    assert!(
        channel_last >= 15,
        "{channel_last} of 16 channel-last: {shapes:?}"
    );
}

#[test]
fn symbolic_batch_runs_several_images_at_once() {
    let mut bb = TractBackbone::load(
        &common::repo_path("models/efficientnet_lite0_pooled.onnx"),
        3,
        None,
    )
    .expect("load");
    let inputs: Vec<f32> = ["pre_chelsea", "pre_magnetic_tile", "pre_elpv"]
        .iter()
        .flat_map(|n| {
            let pre = common::read_npy(&common::repo_path(&format!("tests/fixtures/{n}.npy")));
            let mean = [0.485, 0.456, 0.406];
            let std = [0.229, 0.224, 0.225];
            pre.data
                .iter()
                .enumerate()
                .map(move |(i, v)| ((v - mean[i / (224 * 224)]) / std[i / (224 * 224)]) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let want = common::read_npy(&common::repo_path(
        "tests/fixtures/effnet_output_ort_pre3.npy",
    ));
    let mut out = vec![0.0f32; 3 * 1280];
    bb.extract(&inputs, 3, &mut out).expect("run");
    assert!(max_diff(&out, &want.data) <= 1e-4);
    // A partial batch (2 of 3) gives the same rows.
    let mut two = vec![0.0f32; 2 * 1280];
    bb.extract(&inputs[..2 * 3 * 224 * 224], 2, &mut two)
        .expect("run");
    assert!(max_diff(&two, &want.data[..2 * 1280]) <= 1e-4);
    assert!(matches!(
        bb.extract(&inputs[..10], 1, &mut two[..1280]),
        Err(BackboneError::InputSize { .. })
    ));
}

#[test]
fn resnet18_layer4_runs_with_the_same_ops_as_onnxruntime() {
    let mut bb = TractBackbone::load(
        &common::repo_path("models/resnet18_layer4_random.onnx"),
        1,
        None,
    )
    .expect("load");
    assert_eq!(bb.info().feature_dim, 512);
    let input = common::read_npy(&common::repo_path("tests/fixtures/effnet_input.npy"));
    let want = common::read_npy(&common::repo_path("tests/fixtures/resnet18_output_ort.npy"));
    let got = bb.extract_one(&input.f32()).expect("run");
    let scale = want
        .data
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1.0);
    let d = max_diff(&got, &want.data);
    eprintln!("resnet18 tract vs onnxruntime: max |Δ| = {d:.2e} (max |y| {scale:.2})");
    assert!(d <= 1e-4 * scale, "max |Δ| {d}");
}

#[test]
fn corrupt_truncated_or_missing_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let good =
        std::fs::read(common::repo_path("models/efficientnet_lite0_pooled.onnx")).expect("read");
    let truncated = dir.path().join("truncated.onnx");
    std::fs::write(&truncated, &good[..good.len() / 3]).expect("write");
    let err = TractBackbone::load(&truncated, 1, None)
        .err()
        .expect("truncated must fail");
    assert!(matches!(err, BackboneError::Load { .. }), "{err}");
    assert!(err.to_string().contains("truncated.onnx"));

    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"this is not a protobuf").expect("write");
    assert!(TractBackbone::load(&garbage, 1, None).is_err());

    let err = TractBackbone::load(&dir.path().join("missing.onnx"), 1, None)
        .err()
        .expect("missing");
    assert!(matches!(err, BackboneError::Read { .. }));
    let err = TractBackbone::load(
        &common::repo_path("models/efficientnet_lite0_pooled.onnx"),
        1,
        Some((256, 256)),
    )
    .err()
    .expect("size");
    assert!(err.to_string().contains("224"), "{err}");
}

#[test]
fn four_d_outputs_are_mean_pooled_and_outputs_concatenate_along_channels() {
    // stage [N, 8, 16, 20] (pooled by vigil) ++ pooled [N, 16] → 24 features per image.
    let path = common::repo_path("tests/fixtures/multi_output.onnx");
    let mut bb = TractBackbone::load(&path, 2, None).expect("load");
    assert_eq!((bb.info().input_width, bb.info().input_height), (40, 32));
    assert_eq!(bb.info().feature_dim, 24);
    assert_eq!(bb.info().outputs.len(), 2);
    let input = common::read_npy(&common::repo_path("tests/fixtures/multi_output_input.npy"));
    let want = common::read_npy(&common::repo_path(
        "tests/fixtures/multi_output_expected.npy",
    ));
    let mut out = vec![0.0f32; 2 * 24];
    bb.extract(&input.f32(), 2, &mut out).expect("run");
    let d = max_diff(&out, &want.data);
    assert!(d <= 1e-5, "max |Δ| {d}");
    // Row 0 and row 1 are not mixed up (anomalib's batch-axis concatenation would be).
    let mut one = vec![0.0f32; 24];
    let mut bb1 = TractBackbone::load(&path, 1, None).expect("load");
    bb1.extract(&input.f32()[3 * 32 * 40..], 1, &mut one)
        .expect("run");
    assert!(max_diff(&one, &want.data[24..]) <= 1e-5);
}

#[test]
fn models_with_two_inputs_are_refused_at_load_time() {
    let err = TractBackbone::load(
        &common::repo_path("tests/fixtures/two_inputs.onnx"),
        1,
        None,
    )
    .err()
    .expect("refused");
    assert!(matches!(err, BackboneError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("one input"), "{err}");
}

#[test]
fn forked_instances_share_the_graph_and_give_identical_features() {
    let bb = TractBackbone::load(
        &common::repo_path("models/efficientnet_lite0_pooled.onnx"),
        1,
        None,
    )
    .expect("load");
    let mut a = bb.fork().expect("fork");
    let mut b = bb;
    assert!(
        std::sync::Arc::ptr_eq(a.plan(), b.plan()),
        "one optimised graph for all workers"
    );
    let input = common::read_npy(&common::repo_path("tests/fixtures/effnet_input.npy")).f32();
    let (fa, fb) = (
        a.extract_one(&input).expect("a"),
        b.extract_one(&input).expect("b"),
    );
    assert_eq!(fa, fb);
}
