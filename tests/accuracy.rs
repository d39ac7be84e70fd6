//! Accuracy gate. With the defaults (EfficientNet-Lite0, scale, 16 components) `vigil eval`
//! reproduces anomalib 2.7.0's KDEClassifier AUROC on the same features within ±0.01.
//! Reference: onnxruntime features of the same head, torchvision antialiased resize to
//! 224², ImageNet mean/std (reproduced independently by `scripts/reference_auroc.py`).

mod common;

use std::process::Command;

fn eval(dataset: &str, extra: &[&str]) -> serde_json::Value {
    let data = common::shared_dir().join("data").join(dataset);
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["eval", "--data", data.to_str().expect("utf8"), "--json"])
        .args(extra)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run vigil");
    assert!(
        out.status.success(),
        "eval {dataset}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    eprintln!("{dataset}: {rep}");
    rep
}

fn check(dataset: &str, want: f64, n_train: u64, n_test: u64) {
    let rep = eval(dataset, &[]);
    let auroc = rep["auroc"].as_f64().expect("auroc");
    assert!(
        (auroc - want).abs() <= 0.01,
        "{dataset}: AUROC {auroc:.4}, anomalib gives {want}"
    );
    assert_eq!(rep["n_train"], n_train);
    assert_eq!(rep["n_test"], n_test);
    let f1 = rep["f1"].as_f64().expect("f1");
    assert!(f1 > 0.0 && f1 <= 1.0);
}

#[test]
fn magnetic_tile_auroc_matches_anomalib() {
    check("magnetic_tile", 0.783, 600, 494);
}

#[test]
fn elpv_mono_auroc_matches_anomalib() {
    check("elpv_mono", 0.812, 440, 634);
}

/// The `mid-stage` preset (docs/accuracy.md): pinned so that a regression fails the build.
/// Research (scripts/research_features.py, torch + float64 numpy) gave 0.9724 / 0.8571.
fn check_mid_stage(dataset: &str, want: f64, per_defect: &[(&str, f64)]) {
    let rep = eval(dataset, &["--features", "mid-stage"]);
    let auroc = rep["auroc"].as_f64().expect("auroc");
    assert!(
        (auroc - want).abs() <= 0.01,
        "{dataset}: mid-stage AUROC {auroc:.4}, pinned {want}"
    );
    for (defect, want) in per_defect {
        let got = rep["per_defect"][defect]
            .as_f64()
            .expect("per-defect AUROC");
        assert!(
            (got - want).abs() <= 0.02,
            "{dataset}/{defect}: mid-stage AUROC {got:.4}, pinned {want}"
        );
    }
}

#[test]
fn mid_stage_preset_beats_anomalib_on_magnetic_tile() {
    check_mid_stage(
        "magnetic_tile",
        0.9725,
        &[("blowhole", 0.965), ("crack", 0.979), ("uneven", 0.991)],
    );
}

#[test]
fn mid_stage_preset_beats_anomalib_on_elpv_mono() {
    check_mid_stage(
        "elpv_mono",
        0.8571,
        &[("defect_p033", 0.727), ("defect_p100", 0.916)],
    );
}
