//! `vigil calibrate` and `vigil model list / rollback` as a user runs them, on real images
//! (the shared ELPV and magnetic-tile data), the synthetic camera and the shipped backbone.

mod common;

use std::path::{Path, PathBuf};

use common::{ok, vigil};

/// The last JSON line on stdout.
fn last_json(out: &str) -> serde_json::Value {
    let line = out.lines().last().expect("a line on stdout");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// `vigil calibrate` of camera `cam1` from `source` into the store under `state`, no interval.
fn calibrate_cam1(source: &str, state: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "calibrate",
        "--source",
        source,
        "--state-dir",
        s(state),
        "--camera",
        "cam1",
        "--interval",
        "0",
    ];
    args.extend_from_slice(extra);
    vigil(&args)
}

/// Assert `out` is a refusal (exit 65) whose reason contains `why`; the final state JSON.
fn refused(out: &std::process::Output, why: &str) -> serde_json::Value {
    assert_eq!(
        out.status.code(),
        Some(65),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = last_json(&String::from_utf8_lossy(&out.stdout));
    let reason = failed["reason"].as_str().expect("reason");
    assert!(reason.contains(why), "{failed}");
    failed
}

fn link_first(src: &Path, dst: &Path, n: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dst).expect("mkdir");
    let mut files: Vec<PathBuf> = std::fs::read_dir(src)
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files.truncate(n);
    for f in &files {
        std::os::unix::fs::symlink(f, dst.join(f.file_name().expect("name"))).expect("link");
    }
    files
}

/// A config with one camera `cam1` reading `source` (a TOML table body).
fn write_config(root: &Path, source: &str) -> PathBuf {
    let text = format!(
        "node = \"t\"\nstate_dir = \"{state}\"\nruntime_dir = \"{run}\"\n[inference]\nbackbone = \"{bb}\"\n[calibration]\nframes = 60\ninterval_s = 0\nmin_frames = 40\n[[camera]]\nid = \"cam1\"\n[camera.source]\n{source}\n",
        state = root.join("state").display(),
        run = root.join("run").display(),
        bb = common::repo_path("models/efficientnet_lite0_pooled.onnx").display(),
    );
    let path = root.join("vigil.toml");
    std::fs::write(&path, text).expect("config");
    path
}

fn in_service(state: &Path) -> serde_json::Value {
    let out = ok(&[
        "model",
        "list",
        "--state-dir",
        s(state),
        "--camera",
        "cam1",
        "--json",
    ]);
    last_json(&out)
}

#[test]
fn cli_calibration_on_a_folder_matches_vigil_fit_on_the_same_frames_in_eval() {
    let dir = tempfile::tempdir().expect("tmp");
    let elpv = common::shared_dir().join("data/elpv_mono");
    let frames = dir.path().join("frames");
    link_first(&elpv.join("train/good"), &frames, 120);
    let state = dir.path().join("state");

    let t0 = std::time::Instant::now();
    let out = ok(&[
        "calibrate",
        "--source",
        s(&frames),
        "--state-dir",
        s(&state),
        "--camera",
        "cam1",
        "--frames",
        "120",
        "--interval",
        "0",
    ]);
    eprintln!(
        "calibration of 120 frames: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let done = last_json(&out);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["frames"], 120);
    let id = done["model_id"].as_str().expect("model id").to_string();
    let calibrated = state.join(format!("models/cam1/{id}.safetensors"));
    assert!(calibrated.is_file());
    assert_eq!(
        std::fs::read_to_string(state.join("models/cam1/current"))
            .expect("pointer")
            .trim(),
        id
    );

    let fitted = dir.path().join("fit.safetensors");
    ok(&["fit", "--train", s(&frames), "--out", s(&fitted)]);
    let eval = |model: &Path| -> serde_json::Value {
        serde_json::from_str(&ok(&[
            "eval",
            "--data",
            s(&elpv),
            "--model",
            s(model),
            "--json",
        ]))
        .expect("eval json")
    };
    let a = eval(&calibrated);
    let b = eval(&fitted);
    for key in [
        "auroc",
        "per_defect",
        "f1",
        "precision",
        "recall",
        "threshold",
        "n_train",
        "n_test",
    ] {
        assert_eq!(
            a[key], b[key],
            "{key}: calibrate {} vs fit {}",
            a[key], b[key]
        );
    }
    assert!(a["auroc"].as_f64().expect("auroc") > 0.6, "{a}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(&["info", s(&calibrated)])).expect("info");
    assert_eq!(info["threshold"]["quantile"], 0.995);
    assert_eq!(info["threshold"]["n_holdout"], 24);
}

#[test]
fn a_frozen_camera_is_refused_and_the_current_model_keeps_serving() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    // A model in service first (synthetic camera).
    let first = last_json(&ok(&[
        "calibrate",
        "--source",
        "synthetic",
        "--state-dir",
        s(&state),
        "--camera",
        "cam1",
        "--frames",
        "50",
        "--interval",
        "0",
    ]));
    assert_eq!(first["state"], "done", "{first}");
    // The configured camera shows the same picture over and over.
    let img = list_one(&common::shared_dir().join("data/magnetic_tile/train/good"));
    let config = write_config(
        dir.path(),
        &format!(
            "type = \"folder\"\npath = \"{}\"\nfps = 0\nloop = true",
            img.display()
        ),
    );
    let out = vigil(&["calibrate", "--config", s(&config)]);
    let failed = refused(&out, "frozen");
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["refused"], true);
    assert_eq!(failed["model_id"], first["model_id"]);
    let list = in_service(&state);
    assert_eq!(list["in_service"], first["model_id"]);
    assert_eq!(list["models"].as_array().expect("models").len(), 1);
}

fn list_one(dir: &Path) -> PathBuf {
    let mut f: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("e").path())
        .collect();
    f.sort();
    f.remove(0)
}

#[test]
fn a_too_short_collection_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let frames = dir.path().join("frames");
    link_first(
        &common::shared_dir().join("data/magnetic_tile/train/good"),
        &frames,
        20,
    );
    let state = dir.path().join("state");
    let out = calibrate_cam1(s(&frames), &state, &[]);
    refused(&out, "too few frames: 20 usable, at least 50");
    assert!(!state.join("models/cam1/current").exists());
    // Asking for fewer frames than the minimum is a usage error, before any frame is read.
    let out = vigil(&[
        "calibrate",
        "--source",
        s(&frames),
        "--out",
        s(&dir.path().join("m.safetensors")),
        "--frames",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frames must be in 50..="));
}

#[test]
fn an_undecodable_frame_is_skipped_and_too_many_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let frames = dir.path().join("frames");
    let good = link_first(
        &common::shared_dir().join("data/magnetic_tile/train/good"),
        &frames,
        60,
    );
    // Two undecodable files sorted among the good ones: one with a JPEG header and junk
    // after it, one not an image at all.
    let first = good[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .to_string();
    let mut junk_jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0];
    junk_jpeg.extend(std::iter::repeat_n(0x5A, 512));
    std::fs::write(frames.join(first.replace(".jpg", "_bad.jpg")), &junk_jpeg).expect("write");
    std::fs::write(
        frames.join(first.replace(".jpg", "_zzz.jpg")),
        b"not a jpeg",
    )
    .expect("write");
    let state = dir.path().join("state");
    let out = calibrate_cam1(s(&frames), &state, &["--frames", "55"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        last_json(&String::from_utf8_lossy(&out.stdout))["frames"],
        55
    );
    assert!(stderr.contains("2 undecodable"), "{stderr}");
    assert!(state.join("models/cam1/current").exists());

    // A source of mostly garbage is refused (exit 65) and writes nothing.
    let junk = dir.path().join("junk");
    std::fs::create_dir_all(&junk).expect("mkdir");
    for i in 0..60 {
        std::fs::write(junk.join(format!("{i:03}.jpg")), b"garbage").expect("write");
    }
    let state2 = dir.path().join("state2");
    let out = calibrate_cam1(s(&junk), &state2, &["--frames", "55"]);
    refused(&out, "could not be decoded");
    assert!(!state2.join("models/cam1/current").exists());
}

#[test]
fn black_frames_are_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let frames = dir.path().join("black");
    std::fs::create_dir_all(&frames).expect("mkdir");
    for i in 0..60u8 {
        // Dark, slightly different frames (not frozen: black is the reason).
        let img = image::GrayImage::from_fn(64, 48, |x, y| {
            image::Luma([((x as u8) ^ (y as u8) ^ i) % 6])
        });
        img.save(frames.join(format!("f{i:03}.png"))).expect("png");
    }
    let out = vigil(&[
        "calibrate",
        "--source",
        s(&frames),
        "--out",
        s(&dir.path().join("m.safetensors")),
        "--interval",
        "0",
        "--frames",
        "60",
    ]);
    refused(&out, "black");
    assert!(!dir.path().join("m.safetensors").exists());
}

#[test]
fn rollback_restores_the_previous_model_id_back_to_the_configured_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    // The configured model (the default path), fitted from the synthetic camera.
    let configured = state.join("models/cam1.safetensors");
    let base = last_json(&ok(&[
        "calibrate",
        "--source",
        "synthetic:3",
        "--out",
        s(&configured),
        "--frames",
        "50",
        "--interval",
        "0",
    ]));
    let config = write_config(dir.path(), "type = \"synthetic\"\nfps = 0\nseed = 5");
    let c = s(&config);
    assert_eq!(
        last_json(&ok(&["model", "list", "--config", c, "--json"]))["in_service"],
        base["model_id"]
    );
    // Without --config: $VIGIL_CONFIG (else the installed /etc/vigil/vigil.toml).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["model", "list", "--json"])
        .env("VIGIL_CONFIG", c)
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        last_json(&String::from_utf8_lossy(&out.stdout))["in_service"],
        base["model_id"]
    );
    let one = last_json(&ok(&["calibrate", "--config", c]));
    assert_eq!(one["previous_model_id"], base["model_id"]);
    let two = last_json(&ok(&[
        "calibrate",
        "--config",
        c,
        "--source",
        "synthetic:9",
    ]));
    assert_eq!(two["previous_model_id"], one["model_id"]);
    let list = last_json(&ok(&["model", "list", "--config", c, "--json"]));
    assert_eq!(list["in_service"], two["model_id"]);
    assert_eq!(list["models"].as_array().expect("models").len(), 3);

    let back = last_json(&ok(&["model", "rollback", "--config", c]));
    assert_eq!(back["model_id"], one["model_id"]);
    assert_eq!(back["previous_model_id"], two["model_id"]);
    let back = last_json(&ok(&["model", "rollback", "--config", c]));
    assert_eq!(back["model_id"], base["model_id"]);
    assert_eq!(
        last_json(&ok(&["model", "list", "--config", c, "--json"]))["in_service"],
        base["model_id"]
    );
    // check-config (what the daemon loads) agrees.
    ok(&["check-config", c]);
    let out = vigil(&["model", "rollback", "--config", c]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("oldest"));
}

#[test]
fn a_mid_stage_calibration_records_its_preset_backbone_and_normalisation() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("m.safetensors");
    ok(&[
        "calibrate",
        "--features",
        "mid-stage",
        "--source",
        "synthetic:3",
        "--out",
        s(&out),
        "--frames",
        "100",
        "--interval",
        "0",
    ]);
    let art = vigil::artifact::Artifact::load(&out).expect("artifact");
    assert_eq!(art.meta.features, "mid-stage");
    assert_eq!(art.meta.backbone.file, "efficientnet_lite0_s16.onnx");
    assert_eq!(art.meta.backbone.feature_dim, 112);
    assert_eq!(
        art.meta.preprocessing.normalization,
        vigil::preprocess::Normalization::Tflite
    );
    // 100 frames, 20 held out: the hold-out fit has 80 < 128 → PCA 32.
    assert_eq!(art.meta.dfkde.n_components, 32);
}
