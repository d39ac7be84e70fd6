//! Preprocessing parity with anomalib's path (PIL decode → /255 → torchvision antialiased
//! bilinear Resize((224, 224))), on reference tensors made by `scripts/make_reference.py`.

mod common;

use std::path::Path;

use vigil::preprocess::{
    decode_bytes, decode_file, from_rgb8, PreprocessConfig, PreprocessError, Preprocessor,
};

/// (max |Δ|, mean |Δ|) between our resized CHW tensor and the reference.
fn compare(image: &Path, reference: &str) -> (f64, f64) {
    let reference = common::read_npy(&common::repo_path(&format!(
        "tests/fixtures/{reference}.npy"
    )));
    assert_eq!(reference.shape, vec![3, 224, 224]);
    let img = decode_file(image).expect("decode");
    let mut pre = Preprocessor::new(PreprocessConfig::imagenet(224, 224));
    let mut out = vec![0.0f32; 3 * 224 * 224];
    pre.resize_chw(&img, &mut out).expect("resize");
    let diffs: Vec<f64> = out
        .iter()
        .zip(&reference.data)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .collect();
    let max = diffs.iter().copied().fold(0.0, f64::max);
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    eprintln!(
        "{}: max |Δ| = {:.3}/255, mean |Δ| = {:.4}/255",
        image.display(),
        max * 255.0,
        mean * 255.0
    );
    (max, mean)
}

fn assert_within_issue_tolerance(image: &Path, reference: &str) {
    let (max, mean) = compare(image, reference);
    assert!(
        max <= 2.0 / 255.0,
        "{reference}: max |Δ| {} > 2/255",
        max * 255.0
    );
    assert!(
        mean <= 0.25 / 255.0,
        "{reference}: mean |Δ| {} > 0.25/255",
        mean * 255.0
    );
}

#[test]
fn rgb_png_matches_torchvision_antialiased_resize() {
    assert_within_issue_tolerance(
        &common::repo_path("tests/fixtures/chelsea.png"),
        "pre_chelsea",
    );
}

#[test]
fn grayscale_jpeg_from_the_shared_data_matches() {
    let img = common::shared_dir().join("data/magnetic_tile/test/good/exp1_num_10334.jpg");
    assert_within_issue_tolerance(&img, "pre_magnetic_tile");
}

#[test]
fn grayscale_png_from_the_shared_data_matches() {
    let img = common::shared_dir().join("data/elpv_mono/test/good/cell0009.png");
    assert_within_issue_tolerance(&img, "pre_elpv");
}

#[test]
fn rgba_drops_alpha_and_upscales_like_torchvision() {
    assert_within_issue_tolerance(
        &common::repo_path("tests/fixtures/chelsea_rgba.png"),
        "pre_chelsea_rgba",
    );
}

#[test]
fn sixteen_bit_pngs_keep_their_precision() {
    // v / 65535 (not PIL's clamp or high byte): the reference is built from the raw array.
    assert_within_issue_tolerance(
        &common::repo_path("tests/fixtures/chelsea16.png"),
        "pre_chelsea16",
    );
    assert_within_issue_tolerance(
        &common::repo_path("tests/fixtures/chelsea16_rgb.png"),
        "pre_chelsea16_rgb",
    );
}

#[test]
fn normalisation_is_imagenet_mean_std_in_chw_order() {
    let img = decode_file(&common::repo_path("tests/fixtures/chelsea.png")).expect("decode");
    let mut pre = Preprocessor::new(PreprocessConfig::imagenet(224, 224));
    let mut resized = vec![0.0f32; 3 * 224 * 224];
    let mut normed = vec![0.0f32; 3 * 224 * 224];
    pre.resize_chw(&img, &mut resized).expect("resize");
    pre.run(&img, &mut normed).expect("run");
    let mean = [0.485f32, 0.456, 0.406];
    let std = [0.229f32, 0.224, 0.225];
    for c in 0..3 {
        for i in (0..224 * 224).step_by(1013) {
            let want = (resized[c * 224 * 224 + i] - mean[c]) / std[c];
            assert!((normed[c * 224 * 224 + i] - want).abs() < 1e-5);
        }
    }
    // The backbone input fixture is exactly this tensor (made by torch from the reference).
    let input = common::read_npy(&common::repo_path("tests/fixtures/effnet_input.npy"));
    let worst = normed
        .iter()
        .zip(&input.data)
        .map(|(a, b)| (f64::from(*a) - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 2.0 / 255.0 / 0.224,
        "normalised tensor off by {worst}"
    );
}

#[test]
fn raw_rgb8_frames_and_bad_input_get_clear_errors() {
    let frame = vec![128u8; 64 * 48 * 3];
    let img = from_rgb8(&frame, 64, 48).expect("frame");
    let mut pre = Preprocessor::new(PreprocessConfig::imagenet(224, 224));
    let mut out = vec![0.0f32; 3 * 224 * 224];
    pre.resize_chw(&img, &mut out).expect("resize");
    assert!(
        out.iter().all(|v| (v - 128.0 / 255.0).abs() < 1e-6),
        "a flat frame stays flat"
    );

    assert!(matches!(
        from_rgb8(&frame[1..], 64, 48),
        Err(PreprocessError::BadFrame { .. })
    ));
    assert!(matches!(
        decode_bytes(b"not an image", "x"),
        Err(PreprocessError::Decode { .. })
    ));
    let png = std::fs::read(common::repo_path("tests/fixtures/chelsea.png")).expect("png");
    assert!(matches!(
        decode_bytes(&png[..png.len() / 2], "half.png"),
        Err(PreprocessError::Decode { .. })
    ));
    let err = decode_file(Path::new("/nonexistent.png")).expect_err("missing");
    assert!(err.to_string().contains("/nonexistent.png"));
}

#[test]
fn large_jpegs_decode_at_reduced_dct_scale_with_nearly_the_same_tensor() {
    use vigil::preprocess::decode_for_input;
    // A 1800×1200 JPEG made from the chelsea photo (≥ 4× the 224 input on both sides).
    let img = image::open(common::repo_path("tests/fixtures/chelsea.png"))
        .expect("png")
        .to_rgb8();
    let big = image::imageops::resize(&img, 1800, 1200, image::imageops::FilterType::Triangle);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 92)
        .encode_image(&big)
        .expect("encode");
    let cfg = PreprocessConfig::imagenet(224, 224);
    let reduced = decode_for_input(&jpeg, "big.jpg", &cfg).expect("reduced");
    assert!(
        reduced.width < 1800 && reduced.width >= 448 && reduced.height >= 448,
        "{}×{}",
        reduced.width,
        reduced.height
    );
    let full = decode_bytes(&jpeg, "big.jpg").expect("full");
    assert_eq!((full.width, full.height), (1800, 1200));
    let mut pre = Preprocessor::new(cfg);
    let (mut a, mut b) = (vec![0.0f32; 3 * 224 * 224], vec![0.0f32; 3 * 224 * 224]);
    pre.resize_chw(&reduced, &mut a).expect("a");
    pre.resize_chw(&full, &mut b).expect("b");
    let d: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
    let max = d.iter().copied().fold(0.0, f32::max);
    let mean = d.iter().sum::<f32>() / d.len() as f32;
    eprintln!(
        "reduced-DCT vs full decode: {}×{}, max |Δ| {:.2}/255, mean {:.3}/255",
        reduced.width,
        reduced.height,
        max * 255.0,
        mean * 255.0
    );
    assert!(max < 8.0 / 255.0 && mean < 0.5 / 255.0);
    // Small frames are decoded in full.
    let small =
        std::fs::read(common::shared_dir().join("data/magnetic_tile/test/good/exp1_num_10334.jpg"))
            .expect("jpg");
    let s = decode_for_input(&small, "small.jpg", &cfg).expect("small");
    assert_eq!((s.width, s.height), (511, 321));
}
