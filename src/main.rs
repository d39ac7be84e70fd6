//! The `vigil` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

/// Large blocks (tract's per-frame activations) from recycled mappings instead of glibc's
/// heap, which fragments under them; see `vigil::mem::recycle`.
#[global_allocator]
static ALLOC: vigil::mem::recycle::GlobalRecycle = vigil::mem::recycle::GlobalRecycle;

use vigil::artifact::{Artifact, ArtifactMeta};
use vigil::backbone::{
    file_sha256, AdapterChoice, AnyBackbone, Backbone, BackendKind, BackendOptions,
};
use vigil::calibrate::{
    open_feed, parse_source_spec, CalibStatus, CalibrateError, CalibrateRequest,
};
use vigil::config::{CameraConfig, Config};
use vigil::control;
use vigil::eval::{mvtec_test_set, report};
use vigil::features::{extract_paths, list_images};
use vigil::fit::{fit_with_threshold, make_artifact, ThresholdConfig};
use vigil::model::metrics::roc_curve;
use vigil::model::{pred_score, Dfkde, FitConfig, Scaling};
use vigil::preprocess::{Normalization, PreprocessConfig};
use vigil::preset::FeaturePreset;
use vigil::source::SourceConfig;
use vigil::store::ModelStore;

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
    /// Collect normal frames from a camera (or --source), fit, set the threshold from
    /// held-out frames and put the model in service (asks the running daemon when there is
    /// one). Refuses, keeping the current model, when the frames cannot make a model.
    Calibrate(CalibrateArgs),
    /// A camera's stored model versions: list them, roll back to the previous one.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
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
        /// Engine running the backbone: tract (CPU) or wgpu (needs --features wgpu).
        #[arg(long, value_enum, default_value = "tract")]
        backend: BackendKind,
        /// With --backend wgpu: the adapter (auto, vulkan, gl, cpu-fallback).
        #[arg(long, value_enum, default_value = "auto")]
        adapter: AdapterChoice,
        /// MQTT broker the events go to [default: the embedded one; in a build without it (the
        /// board packages), the local one on 127.0.0.1:1883].
        #[arg(long)]
        broker: Option<String>,
    },
}

#[derive(Args, Clone)]
struct StoreArgs {
    /// Configuration file (state directory, cameras, backbone, calibration defaults, control
    /// socket) [default: $VIGIL_CONFIG, else /etc/vigil/vigil.toml when it exists and no
    /// --state-dir is given: the installed service's].
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Camera id [default: the only camera of the configuration].
    #[arg(long)]
    camera: Option<String>,
    /// State directory when no configuration is given (models go to
    /// DIR/models/<camera>/).
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Args)]
struct CalibrateArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Take frames from this source instead of the camera's: an image folder / file / glob
    /// (each image once), a video file, rtsp://… or http://… , /dev/videoN, synthetic[:SEED].
    #[arg(long)]
    source: Option<String>,
    /// Normal frames to collect [default: calibration.frames, 300].
    #[arg(long)]
    frames: Option<usize>,
    /// Seconds between collected frames [default: calibration.interval_s, 1].
    #[arg(long)]
    interval: Option<f64>,
    /// Quantile of the held-out anomaly scores used as threshold [default: 0.995].
    #[arg(long)]
    quantile: Option<f64>,
    /// Refuse with fewer usable frames than this [default: calibration.min_frames, 50].
    #[arg(long)]
    min_frames: Option<usize>,
    /// Write the model to this file instead of the camera's model store (nothing is put in
    /// service).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Never ask a running daemon: open the source in this process.
    #[arg(long)]
    standalone: bool,
    #[command(flatten)]
    backbone: BackboneArgs,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// List stored versions per camera (oldest first) and the one in service.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// One JSON object per camera instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put the previous version (by creation time) back in service.
    Rollback {
        #[command(flatten)]
        store: StoreArgs,
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
    /// Feature preset: anomalib (anomalib-compatible: 1280-d head, ImageNet mean/std, PCA 16)
    /// or mid-stage (stride-16 stage of the same network, (x−127)/128, PCA 64; docs/accuracy.md).
    /// It sets the defaults of --backbone, --normalization and --pca.
    #[arg(long, default_value = "anomalib")]
    features: FeaturePreset,
    /// ONNX backbone [default: the preset's, models/efficientnet_lite0_pooled.onnx for anomalib].
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// Input normalisation: imagenet (mean/std, anomalib's) or tflite ((x−127)/128)
    /// [default: the preset's].
    #[arg(long, value_parser = parse_norm)]
    normalization: Option<Normalization>,
    /// Input size WxH when the ONNX input is symbolic.
    #[arg(long, value_parser = parse_size)]
    input_size: Option<(u32, u32)>,
    /// Engine running the backbone: tract (CPU) or wgpu (needs --features wgpu).
    #[arg(long, value_enum, default_value = "tract")]
    backend: BackendKind,
    /// With --backend wgpu: the adapter (auto, vulkan, gl, cpu-fallback).
    #[arg(long, value_enum, default_value = "auto")]
    adapter: AdapterChoice,
}

impl BackboneArgs {
    /// `--backend` / `--adapter`: on the command line, no silent fallback to tract.
    fn backend_options(&self) -> BackendOptions {
        BackendOptions {
            kind: self.backend,
            adapter: self.adapter,
            fallback_to_tract: false,
        }
    }
}

#[derive(Args, Clone)]
struct FitParams {
    /// Number of PCA components k (an integer in 1..=min(D, N−1)) [default: the preset's:
    /// 16 for anomalib; 64 for mid-stage, 32 / 16 when the hold-out fit has < 128 / < 64 images].
    #[arg(long = "pca")]
    pca: Option<usize>,
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

/// `--backbone`, else the preset's shipped model.
fn resolve_backbone(args: &BackboneArgs, preset: FeaturePreset) -> PathBuf {
    args.backbone
        .clone()
        .unwrap_or_else(|| vigil::backbone::default_model_path(preset.backbone_file()))
}

fn load_backbone(args: &BackboneArgs) -> Result<(AnyBackbone, PreprocessConfig)> {
    let path = resolve_backbone(args, args.features);
    let bb = AnyBackbone::load(&args.backend_options(), &path, 1, args.input_size)?;
    let info = bb.info();
    let pre = PreprocessConfig {
        normalization: args
            .normalization
            .unwrap_or_else(|| args.features.normalization()),
        ..PreprocessConfig::imagenet(info.input_width, info.input_height)
    };
    tracing::info!(backbone = %path.display(), sha256 = %info.sha256, dim = info.feature_dim, "backbone loaded");
    Ok((bb, pre))
}

/// The fit of `n` images: `--pca`, else the preset's rule for the smallest (hold-out) fit.
fn fit_config(p: &FitParams, preset: FeaturePreset, n: usize) -> FitConfig {
    FitConfig {
        n_components: p
            .pca
            .unwrap_or_else(|| preset.n_components(vigil::fit::smallest_fit(n, p.holdout))),
        scaling: p.scaling,
        max_training_points: p.max_training_points,
        seed: p.seed,
    }
}

fn fit_folder(
    train: &Path,
    bargs: &BackboneArgs,
    params: &FitParams,
) -> Result<(Artifact, AnyBackbone, PreprocessConfig)> {
    let (mut bb, pre) = load_backbone(bargs)?;
    let paths = list_images(train)?;
    let feats = extract_paths(&mut bb, pre, &paths, "features")?;
    let dim = bb.info().feature_dim;
    let cfg = fit_config(params, bargs.features, paths.len());
    let th = ThresholdConfig {
        holdout: params.holdout,
        quantile: params.quantile,
    };
    let (model, threshold, qs) = fit_with_threshold(&feats, paths.len(), dim, &cfg, &th)
        .with_context(|| format!("fitting on {} images from {}", paths.len(), train.display()))?;
    let art = make_artifact(model, threshold, qs, bb.info(), pre, &cfg, paths.len());
    let art = Artifact::new(
        ArtifactMeta {
            features: bargs.features.artifact_name().to_string(),
            ..art.meta
        },
        art.model,
    );
    Ok((art, bb, pre))
}

/// Load an artifact with the backbone it was fitted with (hash-checked).
fn load_model(
    model: &Path,
    bargs: &BackboneArgs,
) -> Result<(Artifact, AnyBackbone, PreprocessConfig)> {
    let art = Artifact::load(model)?;
    let path = resolve_backbone(bargs, FeaturePreset::from_artifact_name(&art.meta.features));
    let sha = file_sha256(&path)?;
    art.check_backbone(model, &sha, &path)?;
    let size = Some((art.meta.preprocessing.width, art.meta.preprocessing.height));
    let bb = AnyBackbone::load(&bargs.backend_options(), &path, 1, size)?;
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
    bb: &mut AnyBackbone,
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
    backend: &BackendOptions,
) -> ExitCode {
    let r = match vigil::bench::backbone::bench_backbone(
        backbone, input, threads, seconds, profile, backend,
    ) {
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
        "{}, {} thread(s): {:.2} frames/s | backbone median {:.2} ms, p99 {:.2}, min {:.2} | {} frames | vigil kernels {:?}",
        r.engine,
        r.threads, r.fps, r.backbone_ms_median, r.backbone_ms_p99, r.backbone_ms_min, r.frames, r.kernels
    );
    if !r.profile.is_empty() {
        println!(
            "{:<28}{:>6}{:>12}{:>8}{:>10}{:>10}",
            "op", "nodes", "ms/frame", "share", "MFMA", "GFMA/s"
        );
        for o in &r.profile {
            println!(
                "{:<28}{:>6}{:>12.3}{:>7.1}%{:>10.1}{:>10.1}",
                o.op,
                o.nodes,
                o.ms_per_frame,
                100.0 * o.share,
                o.mfma,
                o.gfma_per_s
            );
        }
    }
    ExitCode::SUCCESS
}

/// An error with its own exit status (78 configuration, 65 refused data, 69 unavailable).
#[derive(Debug)]
struct Coded(u8, String);

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Coded {}

/// sysexits EX_DATAERR: the frames could not make a model (the current one is kept).
const EXIT_REFUSED: u8 = 65;

fn config_error(e: impl std::fmt::Display) -> anyhow::Error {
    Coded(vigil::daemon::EXIT_CONFIG, e.to_string()).into()
}

/// What `--config` / `--camera` / `--state-dir` name.
struct Target {
    config: Option<Config>,
    camera: Option<CameraConfig>,
    camera_id: Option<String>,
    state_dir: Option<PathBuf>,
}

/// The installed service's configuration, used by `calibrate` and `model` when neither
/// --config nor --state-dir is given: `$VIGIL_CONFIG`, else /etc/vigil/vigil.toml if present.
fn default_config(a: &StoreArgs) -> Option<PathBuf> {
    if a.config.is_some() || a.state_dir.is_some() {
        return a.config.clone();
    }
    std::env::var_os("VIGIL_CONFIG")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(INSTALLED_CONFIG)).filter(|p| p.is_file()))
}

/// Where the .deb puts the configuration (`[package.metadata.deb]`, systemd/vigil.service).
const INSTALLED_CONFIG: &str = "/etc/vigil/vigil.toml";

fn resolve_target(a: &StoreArgs) -> Result<Target> {
    let config = match default_config(a) {
        Some(p) => Some(Config::load(&p).map_err(config_error)?),
        None => None,
    };
    let camera = match (&config, &a.camera) {
        (Some(c), Some(id)) => Some(
            c.cameras
                .iter()
                .find(|cam| &cam.id == id)
                .cloned()
                .ok_or_else(|| config_error(format!("no camera `{id}` in the configuration")))?,
        ),
        (Some(c), None) if c.cameras.len() == 1 => c.cameras.first().cloned(),
        (Some(c), None) => {
            let ids: Vec<&str> = c.cameras.iter().map(|c| c.id.as_str()).collect();
            return Err(config_error(format!(
                "several cameras configured ({}): choose one with --camera",
                ids.join(", ")
            )));
        }
        (None, _) => None,
    };
    let camera_id = camera.as_ref().map(|c| c.id.clone()).or(a.camera.clone());
    if let Some(id) = &camera_id {
        if !vigil::config::valid_segment(id) {
            return Err(config_error(format!(
                "camera id `{id}` must be letters, digits, '-' or '_'"
            )));
        }
    }
    let state_dir = a
        .state_dir
        .clone()
        .or_else(|| config.as_ref().map(|c| c.state_dir.clone()));
    Ok(Target {
        config,
        camera,
        camera_id,
        state_dir,
    })
}

/// The model a camera serves now (store pointer, else the configured file), if any.
fn in_service(
    cam_id: &str,
    camera: Option<&CameraConfig>,
    state_dir: &Path,
) -> Result<Option<(Artifact, PathBuf)>> {
    let store = ModelStore::new(state_dir, cam_id);
    let path = match store.current_path()? {
        Some(p) => p,
        None => match camera {
            Some(c) => c.model_path(state_dir),
            None => state_dir
                .join("models")
                .join(format!("{cam_id}.safetensors")),
        },
    };
    if !path.is_file() {
        return Ok(None);
    }
    let art = Artifact::load(&path)?;
    Ok(Some((art, path)))
}

fn cmd_calibrate(a: CalibrateArgs) -> Result<()> {
    let t = resolve_target(&a.store)?;
    let mut defaults = t
        .config
        .as_ref()
        .map(|c| c.calibration.clone())
        .unwrap_or_default();
    if let Some(m) = a.min_frames {
        defaults.min_frames = m;
        defaults.frames = defaults.frames.max(m);
    }
    let req = CalibrateRequest {
        frames: a.frames,
        interval_s: a.interval,
        quantile: a.quantile,
    };
    let mut params = req.params(&defaults).map_err(config_error)?;
    // The daemon owns the camera: ask it when it runs.
    if let (Some(cfg), Some(cam), false, None, None) =
        (&t.config, &t.camera, a.standalone, &a.source, &a.out)
    {
        let request = control::Request::Calibrate {
            camera: cam.id.clone(),
            frames: a.frames,
            interval_s: a.interval,
            quantile: a.quantile,
        };
        let socket = control::socket_path(&cfg.runtime_dir);
        if let Some(lines) = control::connect(&socket, &request).map_err(unavailable)? {
            return calibrate_via_daemon(lines, &cam.id, params.frames);
        }
    }
    let source = match (&a.source, &t.camera) {
        (Some(spec), _) => parse_source_spec(spec).map_err(config_error)?,
        (None, Some(cam)) => cam.source.clone(),
        (None, None) => {
            return Err(config_error(
                "no frame source: give --source, or --config with a camera",
            ))
        }
    };
    let (cam_id, state_dir) = match (&a.out, &t.camera_id, &t.state_dir) {
        (Some(_), id, dir) => (id.clone(), dir.clone()),
        (None, Some(id), Some(dir)) => (Some(id.clone()), Some(dir.clone())),
        (None, _, _) => return Err(config_error(
            "where should the model go? give --config (or --state-dir and --camera), or --out FILE",
        )),
    };
    if let (None, Some(id)) = (&a.out, &cam_id) {
        refuse_if_daemon_runs(&t, id)?;
    }
    let current = match (&cam_id, &state_dir) {
        (Some(id), Some(dir)) => in_service(id, t.camera.as_ref(), dir)?,
        _ => None,
    };
    // A recalibration keeps the preset of the model in service; a first one takes --features.
    params.features = current
        .as_ref()
        .map(|(m, _)| FeaturePreset::from_artifact_name(&m.meta.features))
        .unwrap_or(a.backbone.features);
    let backbone_path = t
        .config
        .as_ref()
        .map(|c| c.inference.backbone.clone())
        .unwrap_or_else(|| resolve_backbone(&a.backbone, params.features));
    // The daemon's preprocessing: the model in service's, else the flags'.
    let size = current
        .as_ref()
        .map(|(m, _)| (m.meta.preprocessing.width, m.meta.preprocessing.height))
        .or(a.backbone.input_size);
    let opts = t
        .config
        .as_ref()
        .map(|c| c.inference.backend_options())
        .unwrap_or_else(|| a.backbone.backend_options());
    let mut bb = AnyBackbone::load(&opts, &backbone_path, 1, size)?;
    let pre = match &current {
        Some((m, _)) => m.meta.preprocessing,
        None => PreprocessConfig {
            normalization: a
                .backbone
                .normalization
                .unwrap_or_else(|| params.features.normalization()),
            ..PreprocessConfig::imagenet(bb.info().input_width, bb.info().input_height)
        },
    };
    if let Some((m, p)) = &current {
        m.check_backbone(p, &bb.info().sha256, &backbone_path)?;
    }
    let label = cam_id.clone().unwrap_or_else(|| "calibrate".into());
    let (mut feed, capture) = open_feed(&label, &source).map_err(config_error)?;
    eprintln!(
        "calibrating {label}: {} frames every {:.2} s from {}",
        params.frames,
        params.interval.as_secs_f64(),
        source_label(&source)
    );
    let pb = vigil::features::progress(params.frames as u64, "collecting");
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let mut on_progress = |st: &CalibStatus| match st {
        CalibStatus::Collecting { collected, .. } => pb.set_position(*collected as u64),
        CalibStatus::Fitting { frames } => {
            pb.set_message("fitting");
            pb.set_length(*frames as u64);
        }
        _ => {}
    };
    let result = vigil::calibrate::calibrate(
        feed.as_mut(),
        &mut bb,
        pre,
        &params,
        &cancel,
        &mut on_progress,
    );
    pb.finish_and_clear();
    drop(feed);
    if let Some(c) = capture {
        c.stop();
        c.join();
    }
    let previous = current.as_ref().map(|(m, _)| m.meta.model_id.clone());
    let cal = match result {
        Ok(c) => c,
        Err(e) => {
            let st = CalibStatus::Failed {
                reason: e.to_string(),
                refused: e.is_refusal(),
                model_id: previous,
            };
            println!("{}", st.to_json());
            return Err(e.into());
        }
    };
    let m = &cal.artifact.meta;
    let written = match (&a.out, &cam_id, &state_dir) {
        (Some(out), _, _) => {
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            cal.artifact.save(out)?;
            out.clone()
        }
        (None, Some(id), Some(dir)) => {
            let store = ModelStore::new(dir, id);
            if let Some((art, path)) = &current {
                store.import(art, path)?;
            }
            let keep = t
                .config
                .as_ref()
                .map(|c| c.calibration.keep_models)
                .unwrap_or(defaults.keep_models);
            // Checked again at the last moment: a daemon started meanwhile would keep
            // serving its model while the pointer moved.
            refuse_if_daemon_runs(&t, id)?;
            store.add(&cal.artifact, keep)?
        }
        _ => return Err(config_error("no output for the model")),
    };
    eprintln!(
        "model {} written to {}: {} frames ({} seen, {} black, {} saturated, {} undecodable), threshold log-density {:.4}; collected in {:.1} s, fitted in {:.1} s",
        m.model_id,
        written.display(),
        cal.checks.usable,
        cal.checks.seen,
        cal.checks.black,
        cal.checks.saturated,
        cal.checks.corrupt,
        m.threshold.log_density,
        cal.collect_time.as_secs_f64(),
        cal.fit_time.as_secs_f64()
    );
    let st = CalibStatus::Done {
        model_id: m.model_id.clone(),
        previous_model_id: previous,
        threshold: m.threshold.log_density,
        frames: cal.checks.usable,
        duration_s: (cal.collect_time + cal.fit_time).as_secs_f64(),
    };
    println!("{}", st.to_json());
    Ok(())
}

/// sysexits EX_UNAVAILABLE: the daemon refused or went away.
fn unavailable(e: impl std::fmt::Display) -> anyhow::Error {
    Coded(69, e.to_string()).into()
}

fn calibrate_via_daemon(mut lines: control::Lines, camera: &str, frames: usize) -> Result<()> {
    eprintln!("vigil is running: camera {camera} is calibrated by the daemon");
    let pb = vigil::features::progress(frames as u64, "collecting");
    loop {
        let Some(v) = lines.next_value().map_err(|e| {
            pb.finish_and_clear();
            unavailable(e)
        })?
        else {
            pb.finish_and_clear();
            return Err(unavailable(
                "the daemon closed the connection before the calibration ended",
            ));
        };
        let st: CalibStatus = serde_json::from_value(v.clone())
            .map_err(|_| unavailable(format!("unexpected reply {v}")))?;
        match &st {
            CalibStatus::Collecting { collected, frames } => {
                pb.set_length(*frames as u64);
                pb.set_position(*collected as u64);
            }
            CalibStatus::Fitting { .. } => pb.set_message("fitting"),
            CalibStatus::Done { model_id, .. } => {
                pb.finish_and_clear();
                eprintln!("camera {camera}: model {model_id} in service");
                println!("{v}");
                return Ok(());
            }
            CalibStatus::Failed {
                reason, refused, ..
            } => {
                pb.finish_and_clear();
                println!("{v}");
                let code = if *refused { EXIT_REFUSED } else { 1 };
                return Err(Coded(code, format!("calibration failed: {reason}")).into());
            }
            CalibStatus::Idle => {}
        }
    }
}

/// A standalone calibration moves the store's pointer itself: only while no daemon answers
/// on the control socket (a running daemon owns the store and the camera).
fn refuse_if_daemon_runs(t: &Target, camera: &str) -> Result<()> {
    let Some(cfg) = &t.config else { return Ok(()) };
    let socket = control::socket_path(&cfg.runtime_dir);
    if control::connect(&socket, &control::Request::Status)
        .map_err(unavailable)?
        .is_some()
    {
        return Err(unavailable(format!(
            "vigil is running (control socket {}): it owns camera {camera}'s model store. Calibrate through it (without --standalone / --source), write to a file with --out, or stop vigil first",
            socket.display()
        )));
    }
    Ok(())
}

fn source_label(s: &SourceConfig) -> String {
    match s {
        SourceConfig::Folder(f) => format!("folder {}", f.path),
        SourceConfig::Synthetic(c) => format!("synthetic (seed {})", c.seed),
        SourceConfig::Video(v) => format!("video {}", vigil::source::redact_url(&v.url)),
        SourceConfig::V4l2(v) => format!("camera {}", v.device),
    }
}

/// (camera id, camera config) pairs `StoreArgs` name: every configured camera, or one.
fn cameras_of(t: &Target, a: &StoreArgs) -> Result<Vec<(String, Option<CameraConfig>)>> {
    match (&t.config, &a.camera) {
        (Some(c), None) => Ok(c
            .cameras
            .iter()
            .map(|c| (c.id.clone(), Some(c.clone())))
            .collect()),
        _ => match &t.camera_id {
            Some(id) => Ok(vec![(id.clone(), t.camera.clone())]),
            None => Err(config_error("give --config, or --state-dir and --camera")),
        },
    }
}

fn cmd_model_list(a: &StoreArgs, json: bool) -> Result<()> {
    let t = resolve_target(a)?;
    let dir = t
        .state_dir
        .clone()
        .ok_or_else(|| config_error("give --config or --state-dir"))?;
    for (id, cam) in cameras_of(&t, a)? {
        let store = ModelStore::new(&dir, &id);
        let versions = store.list()?;
        let pointer = store.current_id()?;
        let configured = cam
            .as_ref()
            .map(|c| c.model_path(&dir))
            .unwrap_or_else(|| dir.join("models").join(format!("{id}.safetensors")));
        let configured_id = Artifact::load(&configured).ok().map(|a| a.meta.model_id);
        let serving = pointer.clone().or(configured_id.clone());
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "camera": id,
                    "in_service": serving,
                    "from_store": pointer.is_some(),
                    "configured": {"path": configured, "model_id": configured_id},
                    "models": versions,
                })
            );
            continue;
        }
        println!(
            "camera {id}: in service {} ({})",
            serving.as_deref().unwrap_or("none"),
            if pointer.is_some() {
                "store"
            } else {
                "configured file"
            }
        );
        for v in &versions {
            println!(
                "  {} {}  {}  {} frames  threshold {:.4}",
                if v.current { "*" } else { " " },
                v.id,
                v.created,
                v.n_train,
                v.threshold
            );
        }
        println!(
            "  configured file {} ({})",
            configured.display(),
            configured_id.as_deref().unwrap_or("missing")
        );
    }
    Ok(())
}

fn cmd_model_rollback(a: &StoreArgs) -> Result<()> {
    let t = resolve_target(a)?;
    let dir = t
        .state_dir
        .clone()
        .ok_or_else(|| config_error("give --config or --state-dir"))?;
    let id = t
        .camera_id
        .clone()
        .ok_or_else(|| config_error("give --camera"))?;
    // A running daemon owns the store: it moves the pointer and swaps the model together.
    if let Some(cfg) = &t.config {
        let socket = control::socket_path(&cfg.runtime_dir);
        let req = control::Request::Rollback { camera: id.clone() };
        if let Some(mut lines) = control::connect(&socket, &req).map_err(unavailable)? {
            let v = lines
                .next_value()
                .map_err(unavailable)?
                .ok_or_else(|| unavailable("the daemon closed the connection without a reply"))?;
            let (now, before) = (v["model_id"].as_str(), v["previous_model_id"].as_str());
            eprintln!(
                "camera {id}: rolled back from {} to {} (created {}); the running daemon now serves {} on {id}",
                before.unwrap_or("none"),
                now.unwrap_or("?"),
                v["created"].as_str().unwrap_or("?"),
                now.unwrap_or("?"),
            );
            println!(
                "{}",
                serde_json::json!({"camera": id, "model_id": now, "previous_model_id": before})
            );
            return Ok(());
        }
    }
    let before = in_service(&id, t.camera.as_ref(), &dir)?.map(|(m, _)| m.meta.model_id);
    let store = ModelStore::new(&dir, &id);
    let now = store.rollback(before.as_deref())?;
    eprintln!(
        "camera {id}: rolled back from {} to {} (created {})",
        before.as_deref().unwrap_or("none"),
        now.id,
        now.created
    );
    println!(
        "{}",
        serde_json::json!({"camera": id, "model_id": now.id, "previous_model_id": before})
    );
    Ok(())
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
    // Before any thread starts; an explicit MALLOC_ARENA_MAX in the environment wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        vigil::mem::limit_arenas(2);
    }
    if !vigil::mem::recycle::forwards_to_system() {
        vigil::mem::tune_small_heap();
    }
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
                backbone: a
                    .backbone
                    .unwrap_or_else(vigil::backbone::default_backbone_path),
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
            backend,
            adapter,
            broker,
        } => {
            vigil::logging::init("warn");
            let backend = BackendOptions {
                kind: backend,
                adapter,
                fallback_to_tract: false,
            };
            if backbone_only {
                return bench_backbone_only(
                    &backbone
                        .clone()
                        .unwrap_or_else(vigil::backbone::default_backbone_path),
                    input.as_deref(),
                    threads,
                    seconds,
                    profile,
                    json,
                    &backend,
                );
            }
            let Some(data) = data else {
                eprintln!("error: --data is required without --backbone-only");
                return ExitCode::from(2);
            };
            let r = vigil::bench::bench(
                &data,
                &backbone
                    .clone()
                    .unwrap_or_else(vigil::backbone::default_backbone_path),
                &workers,
                seconds,
                kde_points,
                &backend,
                broker.as_deref(),
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
        Command::Calibrate(a) => cmd_calibrate(a),
        Command::Model {
            command: ModelCommand::List { store, json },
        } => cmd_model_list(&store, json),
        Command::Model {
            command: ModelCommand::Rollback { store },
        } => cmd_model_rollback(&store),
        Command::Run { .. }
        | Command::CheckConfig { .. }
        | Command::Demo(_)
        | Command::Bench { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(c) = e.downcast_ref::<Coded>() {
                ExitCode::from(c.0)
            } else if e
                .downcast_ref::<CalibrateError>()
                .is_some_and(CalibrateError::is_refusal)
            {
                ExitCode::from(EXIT_REFUSED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
