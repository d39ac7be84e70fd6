//! Criterion benchmarks of the per-frame path and of fitting, side by side in one run:
//! preprocess (decode + antialiased resize + normalise), backbone (tract, batch 1),
//! PCA+KDE scoring at n = 1 000 and 40 000 stored points, and a fit at 40 000 points.
//!
//! `cargo bench --bench core` (release) for numbers; `cargo test --benches` runs each once.

use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use vigil::backbone::{Backbone, TractBackbone};
use vigil::model::{Dfkde, FitConfig};
use vigil::preprocess::{decode_file, PreprocessConfig, Preprocessor};

const DIM: usize = 1280;

fn shared() -> PathBuf {
    let dir = std::env::var_os("VIGIL_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(
        dir.join("data").is_dir(),
        "shared data missing at {} (set VIGIL_SHARED)",
        dir.display()
    );
    dir
}

/// Features with a decaying spectrum (like pooled CNN features): `n × DIM`, seeded.
fn synthetic_features(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = move || {
        // Box–Muller from two uniforms.
        let u1 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + 1e-300;
        let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    };
    let rank = 64;
    let basis: Vec<f64> = (0..rank * DIM)
        .map(|_| normal() / (DIM as f64).sqrt())
        .collect();
    let mut out = vec![0.0f32; n * DIM];
    let mut z = vec![0.0f64; rank];
    for row in out.chunks_exact_mut(DIM) {
        for (j, zj) in z.iter_mut().enumerate() {
            *zj = normal() * 3.0 / (1.0 + j as f64).powf(0.7);
        }
        for (i, v) in row.iter_mut().enumerate() {
            let mut s = 0.5 + 0.05 * normal();
            for j in 0..rank {
                s += z[j] * basis[j * DIM + i];
            }
            *v = s as f32;
        }
    }
    out
}

fn bench_frame(c: &mut Criterion) {
    let shared = shared();
    let image = shared
        .join("data/magnetic_tile/test/good")
        .read_dir()
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .min()
        .expect("an image");
    let backbone_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/efficientnet_lite0_pooled.onnx");
    let mut bb = TractBackbone::load(&backbone_path, 1, None).expect("backbone");
    let pre_cfg = PreprocessConfig::imagenet(224, 224);
    let mut pre = Preprocessor::new(pre_cfg);
    let mut tensor = vec![0.0f32; pre_cfg.tensor_len()];
    let decoded = decode_file(&image).expect("decode");

    let mut g = c.benchmark_group("per_frame");
    g.sample_size(20);
    g.bench_function("preprocess/decode_resize_normalise", |b| {
        b.iter(|| {
            let img = decode_file(black_box(&image)).expect("decode");
            pre.run(&img, &mut tensor).expect("pre");
        })
    });
    g.bench_function("preprocess/resize_normalise", |b| {
        b.iter(|| pre.run(black_box(&decoded), &mut tensor).expect("pre"))
    });
    pre.run(&decoded, &mut tensor).expect("pre");
    let mut feat = vec![0.0f32; bb.info().feature_dim];
    g.bench_function("backbone/efficientnet_lite0_tract_b1", |b| {
        b.iter(|| bb.extract(black_box(&tensor), 1, &mut feat).expect("run"))
    });

    for n in [1_000usize, 40_000] {
        let train = synthetic_features(n, 1);
        let model = Dfkde::fit(&train, n, DIM, &FitConfig::default()).expect("fit");
        let query = synthetic_features(1, 2);
        let mut ws = model.workspace();
        g.bench_function(format!("score/pca_kde_n{n}"), |b| {
            b.iter(|| model.score(black_box(&query), &mut ws).expect("score"))
        });
    }
    g.finish();
}

fn bench_fit(c: &mut Criterion) {
    let n = 40_000;
    let train = synthetic_features(n, 3);
    let mut g = c.benchmark_group("fit");
    g.sample_size(10);
    g.bench_function("dfkde_fit_n40000_d1280", |b| {
        b.iter(|| Dfkde::fit(black_box(&train), n, DIM, &FitConfig::default()).expect("fit"))
    });
    g.finish();
}

criterion_group!(benches, bench_frame, bench_fit);
criterion_main!(benches);
