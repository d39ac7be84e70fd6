//! The model artifact: round trip, atomic write, and a clear error (never a panic) for
//! every kind of damaged or mismatched file.

mod common;

use std::path::Path;

use vigil::artifact::{Artifact, ArtifactError};
use vigil::backbone::BackboneInfo;
use vigil::fit::{fit_with_threshold, make_artifact, ThresholdConfig};
use vigil::model::FitConfig;
use vigil::preprocess::PreprocessConfig;

fn fitted() -> Artifact {
    let train = common::load("a512_train_f32");
    let cfg = FitConfig::default();
    let (model, th, qs) =
        fit_with_threshold(&train.f32(), 1000, 512, &cfg, &ThresholdConfig::default())
            .expect("fit");
    let info = BackboneInfo {
        path: "models/test.onnx".into(),
        sha256: "ab".repeat(32),
        input_width: 224,
        input_height: 224,
        feature_dim: 512,
        batch: 1,
        outputs: vec!["features".into()],
    };
    make_artifact(
        model,
        th,
        qs,
        &info,
        PreprocessConfig::imagenet(224, 224),
        &cfg,
        1000,
    )
}

#[test]
fn round_trip_preserves_every_number_and_scores_identically() {
    let art = fitted();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("m.safetensors");
    art.save(&path).expect("save");
    let back = Artifact::load(&path).expect("load");
    assert_eq!(back.meta, art.meta);
    assert_eq!(back.model.kde, art.model.kde);
    assert_eq!(back.model.pca.components, art.model.pca.components);
    let test = common::load("a512_test_f32");
    let a = art.model.score_rows(&test.f32(), 512).expect("score");
    let b = back.model.score_rows(&test.f32(), 512).expect("score");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.log_density.to_bits(), y.log_density.to_bits());
    }
    // Metadata the issue asks for.
    let m = &back.meta;
    assert_eq!(m.schema_version, 1);
    assert_eq!(m.backbone.sha256.len(), 64);
    assert_eq!(
        (m.backbone.input_width, m.backbone.input_height),
        (224, 224)
    );
    assert_eq!(m.n_train, 1000);
    assert_eq!(m.dfkde.n_fit, 1000);
    assert_eq!(m.threshold.n_holdout, 200);
    assert!(m.created.ends_with('Z') && m.created.contains('T'));
    assert!(!m.normal_log_density_quantiles.is_empty());
    assert_eq!(m.model_id.len(), 12);
    // No temp file left behind by the atomic write.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn save_replaces_an_existing_model_atomically() {
    let art = fitted();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("m.safetensors");
    std::fs::write(&path, b"old model").expect("write");
    art.save(&path).expect("save over");
    assert!(Artifact::load(&path).is_ok());
    // Writing into a missing directory fails cleanly and leaves nothing.
    let bad = dir.path().join("nope/m.safetensors");
    assert!(matches!(art.save(&bad), Err(ArtifactError::Write { .. })));
}

fn load_bytes(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
    Artifact::from_bytes(bytes, Path::new("test.safetensors"))
}

#[test]
fn truncated_files_are_rejected_at_every_length() {
    let bytes = fitted().to_bytes().expect("bytes");
    let step = (bytes.len() / 97).max(1);
    for len in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
        let err = load_bytes(&bytes[..len]).expect_err("truncated must fail");
        assert!(
            matches!(
                err,
                ArtifactError::Corrupt { .. } | ArtifactError::NotAModel { .. }
            ),
            "len {len}: {err}"
        );
    }
}

#[test]
fn any_flipped_bit_is_detected() {
    let art = fitted();
    let bytes = art.to_bytes().expect("bytes");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8")) as usize;
    // Flip bits across the header (JSON metadata, shapes, offsets) and the tensor data.
    let positions: Vec<usize> = (0..bytes.len())
        .step_by(bytes.len() / 400)
        .chain([9, header_len, header_len + 8, bytes.len() - 1])
        .collect();
    let mut caught = 0;
    for &pos in &positions {
        for bit in [0u8, 3, 6] {
            let mut b = bytes.clone();
            b[pos] ^= 1 << bit;
            match load_bytes(&b) {
                Err(_) => caught += 1,
                // A flip inside JSON whitespace or in header padding leaves the content intact.
                Ok(a) => assert!(a == art, "pos {pos} bit {bit}: content changed undetected"),
            }
        }
    }
    assert!(
        caught as f64 >= 0.95 * (positions.len() * 3) as f64,
        "caught {caught} of {}",
        positions.len() * 3
    );
}

#[test]
fn wrong_version_wrong_shape_and_foreign_files_get_clear_errors() {
    let art = fitted();
    // A future schema version.
    let mut meta = art.meta.clone();
    meta.schema_version = 2;
    let future = Artifact {
        meta,
        model: art.model.clone(),
    };
    let bytes = future.to_bytes().expect("bytes");
    let needle = b"\"schema_version\":\"1\"";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("header field");
    let mut bumped = bytes.clone();
    bumped[at + needle.len() - 2] = b'2';
    let err = load_bytes(&bumped).expect_err("version");
    assert!(
        matches!(err, ArtifactError::UnsupportedVersion { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("schema version 2"));

    // Metadata that disagrees with the tensor shapes (claims k = 8).
    let mut meta = art.meta.clone();
    meta.dfkde.n_components = 8;
    let mut bad = Artifact {
        meta,
        model: art.model.clone(),
    }
    .to_bytes()
    .expect("bytes");
    // to_bytes recomputes nothing from meta: the shapes are 16 while the header says 8.
    let err = load_bytes(&bad).expect_err("shape");
    assert!(matches!(err, ArtifactError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("kde.center"));

    // Not a safetensors file at all / a safetensors file that is not ours.
    bad = b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}        ".to_vec();
    assert!(load_bytes(&bad).is_err());
    let empty = safetensors::serialize(
        Vec::<(&str, safetensors::tensor::TensorView<'_>)>::new(),
        None,
    )
    .expect("st");
    let err = load_bytes(&empty).expect_err("foreign");
    assert!(matches!(err, ArtifactError::NotAModel { .. }), "{err}");
    let err = Artifact::load(Path::new("/nonexistent/model.safetensors")).expect_err("missing");
    assert!(matches!(err, ArtifactError::Read { .. }));
}

#[test]
fn a_different_backbone_is_refused() {
    let art = fitted();
    assert!(art
        .check_backbone(Path::new("m"), &"ab".repeat(32), Path::new("b.onnx"))
        .is_ok());
    let err = art
        .check_backbone(Path::new("m"), &"cd".repeat(32), Path::new("b.onnx"))
        .expect_err("mismatch");
    assert!(matches!(err, ArtifactError::BackboneMismatch { .. }));
    assert!(err.to_string().contains("refit"));
}

#[test]
fn threshold_comes_from_the_holdout_quantile_and_is_strict() {
    let art = fitted();
    let t = &art.meta.threshold;
    assert_eq!(t.quantile, Some(0.995));
    assert!((t.pred_score - vigil::model::pred_score(t.log_density)).abs() < 1e-15);
    assert!(
        !art.is_anomalous(t.log_density),
        "a frame exactly at the threshold is normal"
    );
    assert!(art.is_anomalous(t.log_density - 1e-9));
    // The recorded quantiles bracket the threshold.
    let q995 = art
        .meta
        .normal_log_density_quantiles
        .iter()
        .find(|(q, _)| *q == 0.995)
        .expect("q");
    assert!((q995.1 - t.log_density).abs() < 1e-12);
}
