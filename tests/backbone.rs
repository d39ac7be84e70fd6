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

/// A `[1, 3, 8, 8] → [1, 3, 8, 8]` ONNX model that chains `ops`, written with tract-onnx's
/// own protobuf types.
fn chain_model(ops: &[(&str, Vec<tract_onnx::pb::AttributeProto>)]) -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb::{
        tensor_shape_proto::{dimension, Dimension},
        type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
        TypeProto, ValueInfoProto,
    };
    let value = |name: &str| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1, // FLOAT
                shape: Some(TensorShapeProto {
                    dim: [1, 3, 8, 8]
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = ops
        .iter()
        .enumerate()
        .map(|(i, (op, attribute))| NodeProto {
            input: vec![format!("t{i}")],
            output: vec![format!("t{}", i + 1)],
            name: format!("n{i}"),
            op_type: (*op).into(),
            attribute: attribute.clone(),
            ..Default::default()
        })
        .collect();
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        graph: Some(GraphProto {
            name: "chain".into(),
            node,
            input: vec![value("t0")],
            output: vec![value(&format!("t{}", ops.len()))],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

fn load_err(dir: &tempfile::TempDir, name: &str, model: Vec<u8>) -> BackboneError {
    let path = dir.path().join(name);
    std::fs::write(&path, model).expect("write");
    TractBackbone::load(&path, 1, None)
        .err()
        .expect("the model must be refused")
}

#[cfg(not(feature = "onnx-all-ops"))]
#[test]
fn operators_left_out_of_the_build_are_named_with_the_feature_that_adds_them() {
    use tract_onnx::pb::{attribute_proto::AttributeType, AttributeProto};
    let equation = AttributeProto {
        name: "equation".into(),
        r#type: AttributeType::String as i32,
        s: b"nchw->nchw".to_vec(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("tmp");
    let model = chain_model(&[
        ("Relu", vec![]),
        ("Einsum", vec![equation.clone()]),
        ("Einsum", vec![equation]),
        ("CumSum", vec![]),
    ]);
    let err = load_err(&dir, "einsum.onnx", model);
    match &err {
        BackboneError::Operators { ops, .. } => assert_eq!(ops, &["CumSum", "Einsum"]),
        other => panic!("expected BackboneError::Operators, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("einsum.onnx"), "{msg}");
    assert!(msg.contains("CumSum, Einsum"), "{msg}");
    assert!(msg.contains("--features onnx-all-ops"), "{msg}");
}

#[test]
fn operators_tract_does_not_implement_are_named_at_load_time() {
    let dir = tempfile::tempdir().expect("tmp");
    let err = load_err(
        &dir,
        "custom.onnx",
        chain_model(&[("Relu", vec![]), ("NoSuchOperator", vec![])]),
    );
    match &err {
        BackboneError::Operators { ops, .. } => assert_eq!(ops, &["NoSuchOperator"]),
        other => panic!("expected BackboneError::Operators, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("does not implement"), "{msg}");
    assert!(!msg.contains("onnx-all-ops"), "{msg}");
}

#[test]
fn a_chain_of_supported_operators_loads_and_runs() {
    // The same builder with operators of the shipped set: the refusals above are about the
    // operators, not about the hand-written protobuf.
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("ok.onnx");
    std::fs::write(&path, chain_model(&[("Relu", vec![]), ("Sigmoid", vec![])])).expect("write");
    let mut bb = TractBackbone::load(&path, 1, None).expect("load");
    assert_eq!(bb.info().feature_dim, 3);
    let input: Vec<f32> = (0..3 * 64).map(|i| i as f32 / 64.0 - 1.0).collect();
    let out = bb.extract_one(&input).expect("run");
    // Mean over each channel of sigmoid(relu(x)).
    for (c, got) in out.iter().enumerate() {
        let want = input[c * 64..(c + 1) * 64]
            .iter()
            .map(|&x| 1.0 / (1.0 + (-x.max(0.0)).exp()))
            .sum::<f32>()
            / 64.0;
        assert!((got - want).abs() < 1e-6, "channel {c}: {got} vs {want}");
    }
}

#[test]
fn left_out_operator_list_matches_the_gated_registrations() {
    // Every `reg.insert("Op", …)` in tract-onnx's operator modules, split by whether the
    // module (or the registration) sits behind the `all-ops` feature.
    let ops_dir = common::repo_path("crates/tract-onnx/src/ops");
    let mod_rs = std::fs::read_to_string(ops_dir.join("mod.rs")).expect("mod.rs");
    let gated_mods: Vec<String> = mod_rs
        .lines()
        .zip(mod_rs.lines().skip(1))
        .filter(|(a, _)| a.trim() == "#[cfg(feature = \"all-ops\")]")
        .filter_map(|(_, b)| {
            b.trim()
                .trim_start_matches("pub ")
                .strip_prefix("mod ")
                .map(|m| m.trim_end_matches(';').to_string())
        })
        .collect();
    assert!(gated_mods.len() >= 9, "{gated_mods:?}");
    fn inserts(src: &str) -> Vec<String> {
        src.split("reg.insert(\"")
            .skip(1)
            .filter_map(|s| s.split('"').next().map(str::to_string))
            .collect()
    }
    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    rust_files(&ops_dir, &mut files);
    let (mut gated, mut shipped) = (Vec::new(), Vec::new());
    for f in &files {
        let rel = f.strip_prefix(&ops_dir).expect("rel");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_string())
            .expect("name");
        let src = std::fs::read_to_string(f).expect("read");
        if top == "mod" {
            // The registrations inside mod.rs's `#[cfg(feature = "all-ops")]` block.
            let (head, block) = src
                .split_once("#[cfg(feature = \"all-ops\")]\n    {")
                .expect("gated block in register_all_ops");
            let block = block.split("\n    }").next().expect("block end");
            gated.extend(inserts(block));
            shipped.extend(inserts(head));
        } else if gated_mods.contains(&top) {
            gated.extend(inserts(&src));
        } else {
            shipped.extend(inserts(&src));
        }
    }
    gated.sort();
    let mut listed: Vec<String> = tract_onnx::ops::ALL_OPS_ONLY
        .iter()
        .map(|s| s.to_string())
        .collect();
    listed.sort();
    assert_eq!(gated, listed, "ALL_OPS_ONLY vs the gated registrations");
    for op in [
        "Conv",
        "Relu",
        "Clip",
        "GlobalAveragePool",
        "Add",
        "Mul",
        "Sigmoid",
    ] {
        assert!(shipped.iter().any(|s| s == op), "{op} must ship");
    }
    assert!(shipped.iter().all(|s| !listed.contains(s)));
}
