//! Parity of vigil's DFKDE math with anomalib 2.7.0's own outputs
//! (`shared/fixtures/dfkde_golden`, tolerances from its README).

mod common;

use std::sync::OnceLock;

use common::{load, max_abs_diff, shared_dir};
use vigil::model::{
    pred_score, subsample_indices, Dfkde, FitConfig, ModelError, Pca, PostProcessor, Scaling,
};

struct Case {
    name: &'static str,
    dim: usize,
}

const CASES: [Case; 2] = [
    Case {
        name: "a512",
        dim: 512,
    },
    Case {
        name: "b1280",
        dim: 1280,
    },
];
const METHODS: [Scaling; 2] = [Scaling::Scale, Scaling::Norm];

fn meta() -> serde_json::Value {
    let txt = std::fs::read_to_string(shared_dir().join("fixtures/dfkde_golden/meta.json"))
        .expect("meta.json");
    serde_json::from_str(&txt).expect("meta json")
}

/// The fitted model of a golden case, fitted once per test binary and shared by the tests that
/// only read it: under qemu (scripts/edge.sh) each fit takes ~30 s, and five tests read the
/// same four fits.
fn fit(case: &Case, scaling: Scaling) -> &'static Dfkde {
    static FITS: [OnceLock<Dfkde>; 4] = [const { OnceLock::new() }; 4];
    let c = CASES
        .iter()
        .position(|c| c.name == case.name)
        .expect("a golden case");
    let m = METHODS
        .iter()
        .position(|&m| m == scaling)
        .expect("a golden scaling");
    FITS[c * METHODS.len() + m].get_or_init(|| {
        let train = load(&format!("{}_train_f32", case.name));
        assert_eq!(train.shape[1], case.dim);
        let cfg = FitConfig {
            scaling,
            ..FitConfig::default()
        };
        Dfkde::fit(&train.f32(), train.shape[0], case.dim, &cfg).expect("fit")
    })
}

fn log_densities(model: &Dfkde, rows: &common::Npy) -> Vec<f64> {
    model
        .score_rows(&rows.f32(), rows.shape[1])
        .expect("score")
        .iter()
        .map(|s| s.log_density)
        .collect()
}

/// ‖V₁V₁ᵀ − V₂V₂ᵀ‖_max without forming D×D: entries (i,j) computed row by row.
fn projector_gap(a: &Pca, other_components: &[f64], dim: usize, k: usize) -> f64 {
    let mut worst = 0.0f64;
    for i in 0..dim {
        for j in 0..dim {
            let mut p1 = 0.0;
            let mut p2 = 0.0;
            for c in 0..k {
                p1 += a.components[i * k + c] * a.components[j * k + c];
                p2 += other_components[i * k + c] * other_components[j * k + c];
            }
            worst = worst.max((p1 - p2).abs());
        }
    }
    worst
}

/// The fixture README's rules for comparing with anomalib's float32 run.
fn check_against_anomalib_f32(
    label: &str,
    model: &Dfkde,
    rows: &common::Npy,
    logd_f32: &[f64],
    prob_f32: &[f64],
) {
    let ln_c = model.kde.log_norm;
    let scores = model.score_rows(&rows.f32(), rows.shape[1]).expect("score");
    let (mut n_normal, mut n_denormal, mut n_cliff) = (0, 0, 0);
    for (i, sc) in scores.iter().enumerate() {
        let (sa, pa) = (logd_f32[i], prob_f32[i]);
        if sa.is_finite() && sa > ln_c - 80.0 {
            n_normal += 1;
            assert!(
                (sc.log_density - sa).abs() <= 2e-4,
                "{label} row {i}: s {} vs anomalib {sa}",
                sc.log_density
            );
            assert!(
                (sc.pred_score - pa).abs() <= 1e-6,
                "{label} row {i}: pred {} vs anomalib {pa}",
                sc.pred_score
            );
        } else if sa.is_finite() {
            n_denormal += 1;
            assert!(
                (sc.log_density - sa).abs() <= 1.0,
                "{label} row {i} (denormal band): s {} vs {sa}",
                sc.log_density
            );
        } else {
            // anomalib underflowed: s = −∞ and pred_score exactly 1.0.
            n_cliff += 1;
            assert_eq!(sa, f64::NEG_INFINITY);
            assert_eq!(
                pa, 1.0,
                "{label} row {i}: anomalib's pred_score at the cliff"
            );
            assert!(
                sc.log_density.is_finite(),
                "{label} row {i}: vigil keeps a finite log-density"
            );
            assert!(
                sc.log_density < ln_c - 103.9,
                "{label} row {i}: s {} not below ln c − 103.9",
                sc.log_density
            );
            assert_eq!(
                sc.eval.anomalib_f32_compat(),
                f64::NEG_INFINITY,
                "{label} row {i}: compat mode"
            );
            // The deliberate difference: vigil's log-density stays finite and ordered; its
            // pred_score stays below 1 until f64's own sigmoid saturation (s < ≈ −700).
            if sc.log_density > -700.0 {
                assert!(sc.pred_score < 1.0, "{label} row {i}: s {}", sc.log_density);
            }
        }
        if sa.is_finite() {
            assert!(
                sc.eval.anomalib_f32_compat().is_finite(),
                "{label} row {i}: compat must be finite here"
            );
        }
    }
    assert!(n_normal > 0, "{label}: no row in the normal band");
    eprintln!("{label}: {n_normal} normal-band rows, {n_denormal} denormal-band, {n_cliff} at anomalib's cliff");
}

#[test]
fn fitted_state_matches_anomalib_for_both_cases_and_scalings() {
    let meta = meta();
    for case in &CASES {
        for &m in &METHODS {
            let label = format!("{}_{}", case.name, m.as_str());
            let model = fit(case, m);
            assert_eq!(model.n_components(), 16);
            assert_eq!(
                model.info.n_fit, model.info.n_input,
                "no subsampling at 40 000"
            );

            let mean = load(&format!("{label}_pca_mean_f32"));
            assert!(
                max_abs_diff(&model.pca.mean, &mean.data) < 1e-5,
                "{label}: PCA mean"
            );

            let comps = load(&format!("{label}_pca_components_f32"));
            let gap = projector_gap(&model.pca, &comps.data, case.dim, 16);
            assert!(gap < 1e-5, "{label}: projector gap {gap}");

            let lmax = load(&format!("{label}_max_length_f32")).scalar();
            assert!(
                (model.max_length - lmax).abs() / lmax < 1e-6,
                "{label}: ℓ_max {} vs {lmax}",
                model.max_length
            );

            let cm = &meta["cases"][case.name][m.as_str()];
            let ln_c_ref = cm["log_kde_norm_ref64"].as_f64().expect("ln c");
            assert!(
                (model.kde.log_norm - ln_c_ref).abs() < 1e-6,
                "{label}: ln c {} vs {ln_c_ref}",
                model.kde.log_norm
            );
            let h_ref = cm["scott_factor"].as_f64().expect("h");
            assert!(
                (model.kde.scott_factor - h_ref).abs() < 1e-12,
                "{label}: Scott factor"
            );
            let m_norm: f64 = model.kde.center.iter().map(|v| v * v).sum::<f64>().sqrt();
            let m_ref = cm["kde_center_norm"].as_f64().expect("‖m‖");
            assert!(
                (m_norm - m_ref).abs() < 1e-6 + 1e-4 * m_ref,
                "{label}: ‖m‖ {m_norm} vs {m_ref}"
            );
            // ln c is basis-independent; anomalib's stored c (float32) agrees.
            let c_f32 = load(&format!("{label}_kde_norm_f32")).scalar();
            assert!(
                (model.kde.log_norm - c_f32.ln()).abs() < 1e-4,
                "{label}: c vs anomalib's"
            );
            // The KDE input (PCA + scaling) matches anomalib's rows up to the basis: compare norms.
            let proj = load(&format!("{label}_train_projected_f32"));
            let data = load(&format!("{}_train_f32", case.name));
            let mut y = vec![0.0; 16];
            for r in (0..proj.shape[0]).step_by(97) {
                model
                    .embed_into(&data.f32()[r * case.dim..(r + 1) * case.dim], &mut y)
                    .expect("embed");
                let ours: f64 = y.iter().map(|v| v * v).sum::<f64>().sqrt();
                let theirs: f64 = proj.data[r * 16..(r + 1) * 16]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f64>()
                    .sqrt();
                assert!(
                    (ours - theirs).abs() < 1e-5,
                    "{label} row {r}: ‖y‖ {ours} vs {theirs}"
                );
            }
        }
    }
}

#[test]
fn log_densities_match_the_f64_reference_within_1e_6() {
    for case in &CASES {
        for &m in &METHODS {
            let label = format!("{}_{}", case.name, m.as_str());
            let model = fit(case, m);
            for set in ["test", "ray"] {
                let rows = load(&format!("{}_{set}_f32", case.name));
                let ours = log_densities(model, &rows);
                let reference = load(&format!("{label}_{set}_logdensity_ref64_logsumexp"));
                for (i, (a, b)) in ours.iter().zip(&reference.data).enumerate() {
                    let tol = if b.abs() > 100.0 { 1e-5 } else { 1e-6 };
                    assert!(
                        (a - b).abs() <= tol,
                        "{label} {set} row {i}: {a} vs ref64 {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn scores_match_anomalib_float32_outside_its_underflow_band() {
    for case in &CASES {
        for &m in &METHODS {
            let label = format!("{}_{}", case.name, m.as_str());
            let model = fit(case, m);
            for set in ["test", "ray"] {
                let rows = load(&format!("{}_{set}_f32", case.name));
                let logd = load(&format!("{label}_{set}_logdensity_f32"));
                let prob = load(&format!("{label}_{set}_prob_f32"));
                check_against_anomalib_f32(
                    &format!("{label} {set}"),
                    model,
                    &rows,
                    &logd.data,
                    &prob.data,
                );
            }
        }
    }
}

#[test]
fn far_outliers_keep_a_finite_ordered_score_where_anomalib_hits_its_cliff() {
    for case in &CASES {
        let model = fit(case, Scaling::Scale);
        let ray = load(&format!("{}_ray_f32", case.name));
        let ours = log_densities(model, &ray);
        let theirs = load(&format!("{}_scale_ray_logdensity_f32", case.name));
        let n_inf = theirs.data.iter().filter(|v| v.is_infinite()).count();
        assert!(n_inf > 0, "the fixture ray crosses anomalib's cliff");
        assert!(ours.iter().all(|v| v.is_finite()));
        // Past the first few steps the ray only moves away: vigil's log-density keeps falling
        // (strictly ordered), where anomalib's collapses to −∞ / pred_score = 1.0.
        let tail = &ours[10..];
        assert!(
            tail.windows(2).all(|w| w[1] < w[0]),
            "{}: not strictly decreasing",
            case.name
        );
        let last = *ours.last().expect("ray");
        assert!(pred_score(last) < 1.0 && pred_score(last) > 0.99);
    }
}

#[test]
fn norm_scaling_reproduces_the_uncentred_query_quirk() {
    // anomalib does not subtract the KDE centre m from queries; with NORM m ≠ 0 and the
    // log-density then differs from a textbook KDE by up to ~0.55 (a512).
    let case = &CASES[0];
    let model = fit(case, Scaling::Norm);
    let test = load("a512_test_f32");
    let reference = load("a512_norm_test_logdensity_ref64_logsumexp");
    let mut ws = model.workspace();
    let mut y = vec![0.0; 16];
    let mut u = vec![0.0; 16];
    let mut dist = vec![0.0; model.kde.n];
    let mut worst_textbook: f64 = 0.0;
    for (i, q) in test.f32().chunks_exact(case.dim).enumerate() {
        let quirk = model.score(q, &mut ws).expect("score").log_density;
        assert!((quirk - reference.data[i]).abs() < 1e-6);
        model.embed_into(q, &mut y).expect("embed");
        for (v, c) in y.iter_mut().zip(&model.kde.center) {
            *v -= c;
        }
        model.kde.transform_into(&y, &mut u);
        let textbook = model.kde.log_density_transformed(&u, &mut dist).log_density;
        worst_textbook = worst_textbook.max((textbook - quirk).abs());
    }
    assert!(
        worst_textbook > 0.3,
        "centring the queries would change s by {worst_textbook}"
    );
}

#[test]
fn subsampled_fit_from_anomalib_indices_matches_its_state_and_scores() {
    let train = load("a512_train_f32");
    let perm = load("a512_sub600_perm_indices").usize();
    assert_eq!(perm.len(), 600);
    let cfg = FitConfig {
        max_training_points: 600,
        ..FitConfig::default()
    };
    let model = Dfkde::fit_rows(&train.f32(), 512, &perm, &cfg).expect("fit");
    assert_eq!(model.kde.n, 600);
    // Scott's factor uses the subsampled n.
    assert!((model.kde.scott_factor - 600f64.powf(-0.05)).abs() < 1e-15);
    let mean = load("a512_sub600_pca_mean_f32");
    assert!(max_abs_diff(&model.pca.mean, &mean.data) < 1e-5);
    let comps = load("a512_sub600_pca_components_f32");
    assert!(projector_gap(&model.pca, &comps.data, 512, 16) < 1e-5);
    let lmax = load("a512_sub600_max_length_f32").scalar();
    assert!((model.max_length - lmax).abs() / lmax < 1e-6);
    let c = load("a512_sub600_kde_norm_f32").scalar();
    assert!((model.kde.log_norm - c.ln()).abs() < 1e-4);
    let test = load("a512_test_f32");
    let logd = load("a512_sub600_test_logdensity_f32");
    let prob = load("a512_sub600_test_prob_f32");
    check_against_anomalib_f32("a512_sub600 test", &model, &test, &logd.data, &prob.data);
}

#[test]
fn subsampling_is_strict_seeded_and_rejects_zero() {
    assert_eq!(
        subsample_indices(600, 600, 1).expect("ok"),
        (0..600).collect::<Vec<_>>()
    );
    assert_eq!(subsample_indices(10, 40_000, 1).expect("ok").len(), 10);
    assert_eq!(
        subsample_indices(10, 0, 1),
        Err(ModelError::ZeroMaxTrainingPoints)
    );
    let a = subsample_indices(1000, 600, 7).expect("ok");
    let b = subsample_indices(1000, 600, 7).expect("ok");
    let c = subsample_indices(1000, 600, 8).expect("ok");
    assert_eq!(a, b, "same seed, same rows");
    assert_ne!(a, c, "different seed, different rows");
    let mut sorted = a.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 600, "rows drawn without replacement");
    assert!(a.iter().all(|&i| i < 1000));

    // Through fit: the seed is recorded and n (not N) drives Scott's factor.
    let train = load("a512_train_f32");
    let cfg = FitConfig {
        max_training_points: 600,
        seed: 7,
        ..FitConfig::default()
    };
    let model = Dfkde::fit(&train.f32(), 1000, 512, &cfg).expect("fit");
    assert!(model.info.subsampled);
    assert_eq!(
        (model.info.n_input, model.info.n_fit, model.info.seed),
        (1000, 600, 7)
    );
    assert!((model.kde.scott_factor - 600f64.powf(-0.05)).abs() < 1e-15);
}

#[test]
fn post_processor_matches_anomalib_threshold_normalisation_and_strict_labels() {
    let scores = load("a512_scale_test_prob_f32").data;
    let labels: Vec<bool> = load("a512_test_labels")
        .data
        .iter()
        .map(|&l| l > 0.5)
        .collect();
    let pp = PostProcessor::fit(&scores, &labels).expect("post");
    assert_eq!(
        pp.threshold as f32,
        load("post_a512_scale_threshold_f32").scalar() as f32
    );
    assert_eq!(
        pp.min as f32,
        load("post_a512_scale_min_f32").scalar() as f32
    );
    assert_eq!(
        pp.max as f32,
        load("post_a512_scale_max_f32").scalar() as f32
    );
    let normalized = load("post_a512_scale_normalized_f32").data;
    let want_labels = load("post_a512_scale_pred_label").data;
    let mut positives = 0;
    for (i, &s) in scores.iter().enumerate() {
        assert!((pp.normalize(s) - normalized[i]).abs() < 1e-6, "row {i}");
        let l = pp.label(s);
        assert_eq!(l, want_labels[i] > 0.5, "row {i}");
        positives += usize::from(l);
    }
    assert_eq!(positives, 46);
    // The sample sitting exactly at the threshold is labelled normal (strict `>`).
    assert!(!pp.label(pp.threshold));

    // Normal-only validation: threshold falls back to the largest normal score.
    let normal: Vec<f64> = scores
        .iter()
        .zip(&labels)
        .filter(|(_, &l)| !l)
        .map(|(&s, _)| s)
        .collect();
    let pp0 = PostProcessor::fit(&normal, &vec![false; normal.len()]).expect("post");
    assert_eq!(pp0.threshold as f32, 0.556_211_4_f32);
}

#[test]
fn invalid_fits_are_clear_errors_never_useless_models() {
    let train = load("a512_train_f32");
    let x = train.f32();
    let fitk = |k: usize, n: usize| {
        Dfkde::fit(
            &x[..n * 512],
            n,
            512,
            &FitConfig {
                n_components: k,
                ..FitConfig::default()
            },
        )
    };
    assert!(matches!(
        fitk(0, 1000),
        Err(ModelError::InvalidComponents { .. })
    ));
    assert!(matches!(
        fitk(513, 1000),
        Err(ModelError::InvalidComponents { .. })
    ));
    assert!(
        matches!(
            fitk(16, 16),
            Err(ModelError::TooFewSamples {
                got: 16,
                required: 32
            })
        ),
        "k > N − 1"
    );
    assert!(
        matches!(fitk(600, 1000), Err(ModelError::InvalidComponents { .. })),
        "k > D"
    );
    assert!(matches!(
        fitk(16, 31),
        Err(ModelError::TooFewSamples {
            got: 31,
            required: 32
        })
    ));
    let r = fitk(16, 32);
    assert!(r.is_ok(), "{:?}", r.err());

    let mut bad = x[..100 * 512].to_vec();
    bad[7 * 512 + 3] = f32::NAN;
    assert!(matches!(
        Dfkde::fit(&bad, 100, 512, &FitConfig::default()),
        Err(ModelError::NonFinite { row: 7, col: 3, .. })
    ));

    // A frozen camera: 100 identical frames → singular covariance, not a model.
    let frozen: Vec<f32> = x[..512].iter().cycle().take(100 * 512).copied().collect();
    assert!(matches!(
        Dfkde::fit(&frozen, 100, 512, &FitConfig::default()),
        Err(ModelError::SingularCovariance(_))
    ));
    // Features that span only 5 dimensions cannot support 16 components.
    let low_rank: Vec<f32> = (0..100 * 512)
        .map(|i| ((i / 512) % 5) as f32 * ((i % 512) as f32).sin())
        .collect();
    assert!(matches!(
        Dfkde::fit(&low_rank, 100, 512, &FitConfig::default()),
        Err(ModelError::SingularCovariance(_))
    ));

    assert!(matches!(
        Dfkde::fit(&x[..1000], 2, 512, &FitConfig::default()),
        Err(ModelError::BadShape { .. })
    ));
    let model = fitk(16, 1000).expect("fit");
    let mut ws = model.workspace();
    assert!(matches!(
        model.score(&x[..100], &mut ws),
        Err(ModelError::DimensionMismatch {
            expected: 512,
            got: 100
        })
    ));
    let mut q = x[..512].to_vec();
    q[0] = f32::INFINITY;
    assert!(matches!(
        model.score(&q, &mut ws),
        Err(ModelError::NonFinite { .. })
    ));
}
