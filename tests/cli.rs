//! The `vigil` binary end to end on real images: fit → info → score → eval (JSON + plots),
//! and the errors a user sees for bad input.

mod common;

use std::path::{Path, PathBuf};

use common::{ok, vigil};

fn link_first(src: &Path, dst: &Path, n: usize, skip: usize) {
    std::fs::create_dir_all(dst).expect("mkdir");
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .expect("ls")
        .map(|e| e.expect("e").path())
        .collect();
    files.sort();
    for f in files.iter().skip(skip).take(n) {
        std::os::unix::fs::symlink(f, dst.join(f.file_name().expect("name"))).expect("symlink");
    }
}

/// A small MVTec-layout set made of links into the shared magnetic-tile data.
fn small_dataset(root: &Path) {
    let mt = common::shared_dir().join("data/magnetic_tile");
    link_first(&mt.join("train/good"), &root.join("train/good"), 60, 0);
    link_first(&mt.join("test/good"), &root.join("test/good"), 12, 0);
    link_first(&mt.join("test/fray"), &root.join("test/fray"), 8, 0);
    link_first(&mt.join("test/break"), &root.join("test/break"), 8, 0);
}

#[test]
fn fit_info_score_and_eval_work_end_to_end() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("mt");
    small_dataset(&data);
    let model = dir.path().join("model.safetensors");
    let m = model.to_str().expect("utf8");

    ok(&[
        "fit",
        "--train",
        data.join("train/good").to_str().expect("p"),
        "--out",
        m,
    ]);
    let info: serde_json::Value = serde_json::from_str(&ok(&["info", m])).expect("info json");
    assert_eq!(info["schema_version"], 1);
    assert_eq!(info["n_train"], 60);
    assert_eq!(info["threshold"]["n_holdout"], 12);
    assert_eq!(info["dfkde"]["n_fit"], 60);
    assert_eq!(info["backbone"]["feature_dim"], 1280);
    assert_eq!(info["preprocessing"]["normalization"], "imagenet");

    let good = data.join("test/good");
    let fray = data.join("test/fray");
    let lines = ok(&[
        "score",
        "--model",
        m,
        good.to_str().expect("p"),
        fray.to_str().expect("p"),
    ]);
    let rows: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(rows.len(), 20);
    for r in &rows {
        let s = r["log_density"].as_f64().expect("s");
        let p = r["score"].as_f64().expect("score");
        assert!((p - 1.0 / (1.0 + (0.05 * (s - 12.0)).exp())).abs() < 1e-12);
        assert!(r["anomalous"].is_boolean() && r["path"].is_string());
    }

    let plots = dir.path().join("plots");
    let out = ok(&[
        "eval",
        "--data",
        data.to_str().expect("p"),
        "--model",
        m,
        "--json",
        "--plots",
        plots.to_str().expect("p"),
    ]);
    let rep: serde_json::Value = serde_json::from_str(&out).expect("eval json");
    for key in [
        "auroc",
        "per_defect",
        "f1",
        "threshold",
        "n_train",
        "n_test",
        "precision",
        "recall",
    ] {
        assert!(!rep[key].is_null(), "missing {key}");
    }
    assert_eq!(rep["n_test"], 28);
    assert_eq!(rep["n_train"], 60);
    let per = rep["per_defect"].as_object().expect("per_defect");
    assert_eq!(
        per.keys().cloned().collect::<Vec<_>>(),
        vec!["break".to_string(), "fray".to_string()]
    );
    let auroc = rep["auroc"].as_f64().expect("auroc");
    assert!((0.0..=1.0).contains(&auroc));
    for name in ["roc.png", "histogram.png"] {
        let img = image::open(plots.join(name)).expect("a valid PNG");
        assert!(img.width() > 500 && img.height() > 400);
    }

    // eval without --model fits on train/good itself and agrees on n_train.
    let rep2: serde_json::Value = serde_json::from_str(&ok(&[
        "eval",
        "--data",
        data.to_str().expect("p"),
        "--json",
    ]))
    .expect("json");
    assert_eq!(rep2["n_train"], 60);
    assert!(
        (rep2["auroc"].as_f64().expect("a") - auroc).abs() < 1e-9,
        "same data, same seed, same model"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_a_failing_exit_code() {
    let dir = tempfile::tempdir().expect("tmp");
    // A float or zero component count never builds a model.
    let out = vigil(&[
        "fit",
        "--train",
        "/nonexistent",
        "--out",
        "/tmp/x",
        "--pca",
        "0.95",
    ]);
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pca"));

    let train = dir.path().join("few");
    link_first(
        &common::shared_dir().join("data/magnetic_tile/train/good"),
        &train,
        20,
        0,
    );
    let model = dir.path().join("m.safetensors");
    let out = vigil(&[
        "fit",
        "--train",
        train.to_str().expect("p"),
        "--out",
        model.to_str().expect("p"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 32 training vectors"), "{err}");
    assert!(!model.exists(), "no model written on failure");

    let out = vigil(&[
        "fit",
        "--train",
        train.to_str().expect("p"),
        "--out",
        "/tmp/x",
        "--pca",
        "0",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("n_pca_components"));

    let corrupt = dir.path().join("corrupt.safetensors");
    std::fs::write(&corrupt, b"garbage that is not a model").expect("write");
    let out = vigil(&["score", "--model", corrupt.to_str().expect("p"), "x.png"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = vigil(&[
        "fit",
        "--train",
        dir.path().to_str().expect("p"),
        "--out",
        "/tmp/x",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no images"));
}

#[test]
fn bench_backbone_only_prints_one_json_line_with_the_median_and_the_op_profile() {
    let input = common::repo_path("tests/fixtures/effnet_input.npy");
    let out = ok(&[
        "bench",
        "--backbone-only",
        "--threads",
        "2",
        "--seconds",
        "1",
        "--profile",
        "--json",
        "--input",
        input.to_str().expect("utf-8 path"),
    ]);
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{out}");
    let r: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(r["engine"], "tract");
    assert_eq!(r["threads"], 2);
    assert!(r["frames"].as_u64().expect("frames") >= 2, "{r}");
    let median = r["backbone_ms_median"].as_f64().expect("median");
    assert!(median > 0.0 && median <= r["backbone_ms_p99"].as_f64().expect("p99"));
    // The profile covers the network's multiply-adds (0.39 G for EfficientNet-Lite0).
    let ops = r["profile"].as_array().expect("profile");
    let mfma: f64 = ops.iter().map(|o| o["mfma"].as_f64().unwrap_or(0.0)).sum();
    assert!((350.0..450.0).contains(&mfma), "{mfma} M multiply-adds");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        assert_eq!(r["kernels"][0], "vigil_avx2_depthwise_c_f32");
    }
    // A wrong input tensor is a clear error, not a benchmark of garbage.
    let bad = vigil(&[
        "bench",
        "--backbone-only",
        "--seconds",
        "1",
        "--input",
        common::repo_path("tests/fixtures/effnet_output_ort.npy")
            .to_str()
            .expect("utf-8 path"),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("the backbone takes"));
}
