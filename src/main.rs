//! The `vigil` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use vigil::artifact::Artifact;
use vigil::backbone::{file_sha256, Backbone, TractBackbone};
use vigil::eval::{mvtec_test_set, report};
use vigil::features::{extract_paths, list_images};
use vigil::fit::{fit_with_threshold, make_artifact, ThresholdConfig};
use vigil::model::metrics::roc_curve;
use vigil::model::{pred_score, Dfkde, FitConfig, Scaling};
use vigil::preprocess::{Normalization, PreprocessConfig};

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "On-device visual anomaly detection (anomalib DFKDE on an ONNX backbone)"
)]
struct Cli {
    /// Log filter (tracing-subscriber syntax), also from RUST_LOG.
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fit a model on a folder of normal images and write the artifact.
    Fit(FitArgs),
    /// Score images with a fitted model: one JSON line per image.
    Score(ScoreArgs),
    /// Evaluate on an MVTec-layout folder (train/good, test/good, test/<defect>).
    Eval(EvalArgs),
    /// Print a model artifact's metadata as JSON.
    Info {
        /// The artifact.
        model: PathBuf,
    },
    /// Run the daemon (the systemd service's main job).
    Run {
        /// Configuration file.
        #[arg(long, short, default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
    },
    /// Validate a configuration (files, models, backbone hash, topics, broker URL) without
    /// opening cameras or the network. Exit 78 when invalid.
    CheckConfig {
        /// Configuration file.
        #[arg(default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
    },
    /// The whole pipeline out of the box: embedded broker, synthetic camera, shipped
    /// backbone, a model fitted on the first normal frames; events printed as published.
    Demo(DemoArgs),
    /// Full pipeline on a folder as fast as possible, for 1 and N workers: frames/s,
    /// per-stage median/p99, capture→publish latency, peak RSS.
    Bench {
        /// Folder of images (looped). Not used with --backbone-only.
        #[arg(long, required_unless_present = "backbone_only")]
        data: Option<PathBuf>,
        /// Time the backbone alone on a fixed input tensor (one JSON line with --json,
        /// `backbone_ms_median` included): the figure scripts/bench_backbone_side_by_side.sh
        /// compares with onnxruntime's.
        #[arg(long)]
        backbone_only: bool,
        /// With --backbone-only: backbone instances running in parallel, one per thread
        /// (vigil's inference workers).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// With --backbone-only: the input, a float32 .npy of the backbone's input shape
        /// (default: a fixed pseudo-random tensor).
        #[arg(long)]
        input: Option<PathBuf>,
        /// With --backbone-only: also time every tract operator (per type, per frame).
        #[arg(long)]
        profile: bool,
        /// Worker counts to measure, comma-separated.
        #[arg(long, default_value = "1,2", value_delimiter = ',')]
        workers: Vec<usize>,
        /// Measured seconds per worker count (after 2 s of warm-up).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// Points stored in the KDE.
        #[arg(long, default_value_t = 40_000)]
        kde_points: usize,
        /// ONNX backbone [default: models/efficientnet_lite0_pooled.onnx].
        #[arg(long)]
        backbone: Option<PathBuf>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct DemoArgs {
    /// Use this MQTT broker instead of the embedded one (e.g. mqtt://127.0.0.1:1883).
    #[arg(long)]
    broker: Option<String>,
    /// Loopback port of the embedded broker.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Normal frames used to fit the demo model.
    #[arg(long, default_value_t = 60)]
    fit_frames: usize,
    /// Every N-th synthetic frame starts an injected defect.
    #[arg(long, default_value_t = 25)]
    defect_every: u32,
    /// Synthetic camera frame rate.
    #[arg(long, default_value_t = 5.0)]
    fps: f64,
    /// Where the demo model and outbox go.
    #[arg(long, default_value = "vigil-demo")]
    state_dir: PathBuf,
    /// ONNX backbone [default: models/efficientnet_lite0_pooled.onnx].
    #[arg(long)]
    backbone: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct BackboneArgs {
    /// ONNX backbone [default: models/efficientnet_lite0_pooled.onnx].
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// Input normalisation: imagenet (mean/std, anomalib's) or tflite ((x−127)/128).
    #[arg(long, default_value = "imagenet", value_parser = parse_norm)]
    normalization: Normalization,
    /// Input size WxH when the ONNX input is symbolic.
    #[arg(long, value_parser = parse_size)]
    input_size: Option<(u32, u32)>,
}

#[derive(Args, Clone)]
struct FitParams {
    /// Number of PCA components k (an integer in 1..=min(D, N−1)).
    #[arg(long = "pca", default_value_t = 16)]
    pca: usize,
    /// Feature scaling after PCA.
    #[arg(long, default_value = "scale", value_parser = parse_scaling)]
    scaling: Scaling,
    /// Subsample to this many training vectors when there are more (strict >).
    #[arg(long, default_value_t = 40_000)]
    max_training_points: usize,
    /// Seed of the subsampling and hold-out RNG.
    #[arg(long, default_value_t = FitConfig::default().seed)]
    seed: u64,
    /// Fraction of normal images held out to set the threshold (0: anomalib's pred_score > 0.5).
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Quantile of the hold-out anomaly scores used as threshold.
    #[arg(long, default_value_t = 0.995)]
    quantile: f64,
}

#[derive(Args)]
struct FitArgs {
    /// Folder of normal images (JPEG / PNG).
    #[arg(long)]
    train: PathBuf,
    /// Where to write the model artifact.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    backbone: BackboneArgs,
    #[command(flatten)]
    params: FitParams,
}

#[derive(Args)]
struct ScoreArgs {
    /// The model artifact.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    backbone: BackboneArgs,
    /// Images, or folders of images.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

#[derive(Args)]
struct EvalArgs {
    /// MVTec-layout dataset root.
    #[arg(long)]
    data: PathBuf,
    /// Use this model instead of fitting on train/good.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Write roc.png and histogram.png into this folder.
    #[arg(long)]
    plots: Option<PathBuf>,
    #[command(flatten)]
    backbone: BackboneArgs,
    #[command(flatten)]
    params: FitParams,
}

fn parse_scaling(s: &str) -> Result<Scaling, String> {
    s.parse()
        .map_err(|e: vigil::model::ModelError| e.to_string())
}

fn parse_norm(s: &str) -> Result<Normalization, String> {
    match s {
        "imagenet" => Ok(Normalization::Imagenet),
        "tflite" => Ok(Normalization::Tflite),
        other => Err(format!(
            "unknown normalization '{other}' (imagenet | tflite)"
        )),
    }
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("expected WxH, got '{s}'"))?;
    Ok((
        w.parse().map_err(|e| format!("{e}"))?,
        h.parse().map_err(|e| format!("{e}"))?,
    ))
}

fn resolve_backbone(p: &Option<PathBuf>) -> PathBuf {
    p.clone()
        .unwrap_or_else(vigil::backbone::default_backbone_path)
}

fn load_backbone(args: &BackboneArgs) -> Result<(TractBackbone, PreprocessConfig)> {
    let path = resolve_backbone(&args.backbone);
    let bb = TractBackbone::load(&path, 1, args.input_size)?;
    let info = bb.info();
    let pre = PreprocessConfig {
        normalization: args.normalization,
        ..PreprocessConfig::imagenet(info.input_width, info.input_height)
    };
    tracing::info!(backbone = %path.display(), sha256 = %info.sha256, dim = info.feature_dim, "backbone loaded");
    Ok((bb, pre))
}

fn fit_config(p: &FitParams) -> FitConfig {
    FitConfig {
        n_components: p.pca,
        scaling: p.scaling,
        max_training_points: p.max_training_points,
        seed: p.seed,
    }
}

fn fit_folder(
    train: &Path,
    bargs: &BackboneArgs,
    params: &FitParams,
) -> Result<(Artifact, TractBackbone, PreprocessConfig)> {
    let (mut bb, pre) = load_backbone(bargs)?;
    let paths = list_images(train)?;
    let feats = extract_paths(&mut bb, pre, &paths, "features")?;
    let dim = bb.info().feature_dim;
    let cfg = fit_config(params);
    let th = ThresholdConfig {
        holdout: params.holdout,
        quantile: params.quantile,
    };
    let (model, threshold, qs) = fit_with_threshold(&feats, paths.len(), dim, &cfg, &th)
        .with_context(|| format!("fitting on {} images from {}", paths.len(), train.display()))?;
    let art = make_artifact(model, threshold, qs, bb.info(), pre, &cfg, paths.len());
    Ok((art, bb, pre))
}

/// Load an artifact with the backbone it was fitted with (hash-checked).
fn load_model(
    model: &Path,
    bargs: &BackboneArgs,
) -> Result<(Artifact, TractBackbone, PreprocessConfig)> {
    let art = Artifact::load(model)?;
    let path = resolve_backbone(&bargs.backbone);
    let sha = file_sha256(&path)?;
    art.check_backbone(model, &sha, &path)?;
    let size = Some((art.meta.preprocessing.width, art.meta.preprocessing.height));
    let bb = TractBackbone::load(&path, 1, size)?;
    let pre = art.meta.preprocessing;
    Ok((art, bb, pre))
}

fn cmd_fit(a: FitArgs) -> Result<()> {
    let (art, _, _) = fit_folder(&a.train, &a.backbone, &a.params)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    art.save(&a.out)?;
    let m = &art.meta;
    eprintln!(
        "model {} written to {}: {} images (fit on {}, hold-out {}), k = {}, {}, threshold log-density {:.4} (pred_score {:.6})",
        m.model_id,
        a.out.display(),
        m.n_train,
        m.dfkde.n_fit,
        m.threshold.n_holdout,
        m.dfkde.n_components,
        m.dfkde.scaling.as_str(),
        m.threshold.log_density,
        m.threshold.pred_score
    );
    Ok(())
}

fn score_images(
    model: &Dfkde,
    bb: &mut TractBackbone,
    pre: PreprocessConfig,
    paths: &[PathBuf],
    what: &str,
) -> Result<Vec<f64>> {
    let feats = extract_paths(bb, pre, paths, what)?;
    let dim = bb.info().feature_dim;
    Ok(model
        .score_rows(&feats, dim)?
        .iter()
        .map(|s| s.log_density)
        .collect())
}

fn cmd_score(a: ScoreArgs) -> Result<()> {
    let (art, mut bb, pre) = load_model(&a.model, &a.backbone)?;
    let mut paths = Vec::new();
    for p in &a.paths {
        if p.is_dir() {
            paths.extend(list_images(p)?);
        } else {
            paths.push(p.clone());
        }
    }
    let logd = score_images(&art.model, &mut bb, pre, &paths, "scoring")?;
    for (p, s) in paths.iter().zip(logd) {
        let line = serde_json::json!({
            "path": p.display().to_string(),
            "log_density": s,
            "score": pred_score(s),
            "anomalous": art.is_anomalous(s),
        });
        println!("{line}");
    }
    Ok(())
}

fn cmd_eval(a: EvalArgs) -> Result<()> {
    let (art, mut bb, pre) = match &a.model {
        Some(m) => load_model(m, &a.backbone)?,
        None => fit_folder(&a.data.join("train/good"), &a.backbone, &a.params)?,
    };
    let set = mvtec_test_set(&a.data)?;
    let logd = score_images(&art.model, &mut bb, pre, &set.paths, "test")?;
    let m = &art.meta;
    let rep = report(
        &set,
        &logd,
        m.threshold.log_density,
        m.threshold.pred_score,
        m.n_train,
        &m.model_id,
    );
    if let Some(dir) = &a.plots {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let labels = set.labels();
        let anomaly: Vec<f64> = logd.iter().map(|s| -s).collect();
        let name = a
            .data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut curves = vec![(
            "all defects".to_string(),
            roc_curve(&anomaly, &labels),
            rep.auroc,
        )];
        let mut groups = vec![("good".to_string(), Vec::new())];
        for (g, auc) in &rep.per_defect {
            let (s, l): (Vec<f64>, Vec<bool>) = set
                .groups
                .iter()
                .zip(&anomaly)
                .filter(|(grp, _)| *grp == g || *grp == "good")
                .map(|(grp, x)| (*x, grp == g))
                .unzip();
            curves.push((g.clone(), roc_curve(&s, &l), *auc));
            groups.push((g.clone(), Vec::new()));
        }
        for (grp, x) in set.groups.iter().zip(&anomaly) {
            if let Some(e) = groups.iter_mut().find(|(n, _)| n == grp) {
                e.1.push(*x);
            }
        }
        vigil::plots::roc_png(&dir.join("roc.png"), &format!("{name}: ROC"), &curves)?;
        vigil::plots::histogram_png(
            &dir.join("histogram.png"),
            &format!("{name}: anomaly scores"),
            &groups,
            -rep.threshold,
        )?;
    }
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        println!(
            "model {}  train {}  test {}",
            rep.model_id, rep.n_train, rep.n_test
        );
        println!("image AUROC  {:.4}", rep.auroc);
        for (g, v) in &rep.per_defect {
            println!("  {g:<20} {v:.4}");
        }
        println!(
            "at threshold log-density {:.4} (pred_score {:.6}): F1 {:.4}  precision {:.4}  recall {:.4}",
            rep.threshold, rep.threshold_pred_score, rep.f1, rep.precision, rep.recall
        );
    }
    Ok(())
}

fn cmd_info(model: &Path) -> Result<()> {
    let art = Artifact::load(model)?;
    println!("{}", serde_json::to_string_pretty(&art.meta)?);
    Ok(())
}

fn bench_backbone_only(
    backbone: &Path,
    input: Option<&Path>,
    threads: usize,
    seconds: f64,
    profile: bool,
    json: bool,
) -> ExitCode {
    let r = match vigil::bench::backbone::bench_backbone(backbone, input, threads, seconds, profile)
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!(
        "tract, {} thread(s): {:.2} frames/s | backbone median {:.2} ms, p99 {:.2}, min {:.2} | {} frames | vigil kernels {:?}",
        r.threads, r.fps, r.backbone_ms_median, r.backbone_ms_p99, r.backbone_ms_min, r.frames, r.kernels
    );
    if !r.profile.is_empty() {
        println!("{:<28}{:>6}{:>12}{:>8}{:>10}{:>10}", "op", "nodes", "ms/frame", "share", "MFMA", "GFMA/s");
        for o in &r.profile {
            println!(
                "{:<28}{:>6}{:>12.3}{:>7.1}%{:>10.1}{:>10.1}",
                o.op, o.nodes, o.ms_per_frame, 100.0 * o.share, o.mfma, o.gfma_per_s
            );
        }
    }
    ExitCode::SUCCESS
}

fn daemon_exit(r: Result<(), vigil::daemon::DaemonError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "vigil stopped");
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            vigil::logging::init(&cli.log);
            return daemon_exit(vigil::daemon::run(&config));
        }
        Command::CheckConfig { config } => {
            vigil::logging::init("warn");
            return daemon_exit(vigil::daemon::check_config(&config).map(|c| {
                println!(
                    "{}: ok ({} camera(s), node '{}', backbone sha256 {})",
                    config.display(),
                    c.config.cameras.len(),
                    c.config.node,
                    c.backbone_sha
                );
            }));
        }
        Command::Demo(a) => {
            vigil::logging::init(&cli.log);
            let opts = vigil::demo::DemoOptions {
                broker: a.broker,
                port: a.port,
                duration: a.duration.map(std::time::Duration::from_secs_f64),
                fit_frames: a.fit_frames,
                defect_every: a.defect_every,
                fps: a.fps,
                backbone: resolve_backbone(&a.backbone),
                state_dir: a.state_dir,
            };
            return daemon_exit(vigil::demo::demo(opts));
        }
        Command::Bench {
            data,
            backbone_only,
            threads,
            input,
            profile,
            workers,
            seconds,
            kde_points,
            backbone,
            json,
        } => {
            vigil::logging::init("warn");
            if backbone_only {
                return bench_backbone_only(
                    &resolve_backbone(&backbone),
                    input.as_deref(),
                    threads,
                    seconds,
                    profile,
                    json,
                );
            }
            let Some(data) = data else {
                eprintln!("error: --data is required without --backbone-only");
                return ExitCode::from(2);
            };
            let r = vigil::bench::bench(
                &data,
                &resolve_backbone(&backbone),
                &workers,
                seconds,
                kde_points,
            );
            return daemon_exit(r.map(|rows| {
                for r in rows {
                    if json {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    } else {
                        println!(
                            "workers {}: {:.2} frames/s | decode {:.2}/{:.2} ms  preprocess {:.2}/{:.2}  backbone {:.2}/{:.2}  score {:.3}/{:.3}  publish {:.3}/{:.3}  (median/p99) | latency {:.1}/{:.1} ms | non-backbone {:.1} % | peak RSS {:.0} MB",
                            r.workers, r.fps, r.decode.median_ms, r.decode.p99_ms, r.preprocess.median_ms, r.preprocess.p99_ms,
                            r.backbone.median_ms, r.backbone.p99_ms, r.score.median_ms, r.score.p99_ms, r.publish.median_ms,
                            r.publish.p99_ms, r.latency.median_ms, r.latency.p99_ms, 100.0 * r.non_backbone_fraction, r.peak_rss_mb
                        );
                    }
                }
            }));
        }
        _ => {}
    }
    vigil::logging::init(&cli.log);
    let result = match cli.command {
        Command::Fit(a) => cmd_fit(a),
        Command::Score(a) => cmd_score(a),
        Command::Eval(a) => cmd_eval(a),
        Command::Info { model } => cmd_info(&model),
        Command::Run { .. }
        | Command::CheckConfig { .. }
        | Command::Demo(_)
        | Command::Bench { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
