//! `vigil bench`: the full pipeline (folder source → decode → resize → backbone → PCA/KDE
//! at 40 000 points → detector → MQTT publish to an embedded broker) as fast as it goes,
//! for 1 and N inference workers: frames/s, per-stage median and p99, capture→publish
//! latency, peak RSS. [`backbone`]: the backbone alone (`--backbone-only`).

pub mod backbone;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backbone::{Backbone, TractBackbone};
use crate::config::Config;
use crate::daemon::{self, DaemonError, MqttSink};
use crate::features::{extract_paths, list_images};
use crate::fit::make_artifact;
use crate::model::{Dfkde, FitConfig, FitInfo, GaussianKde};
use crate::pipeline::{lock, LoadedModel, Sink, StageTimes};
use crate::preprocess::PreprocessConfig;
use crate::publish::Publisher;

#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub workers: usize,
    pub frames: usize,
    pub seconds: f64,
    pub fps: f64,
    pub decode: Stat,
    pub preprocess: Stat,
    pub backbone: Stat,
    pub score: Stat,
    pub publish: Stat,
    /// Capture → verdict published.
    pub latency: Stat,
    /// Everything but the backbone, as a fraction of the backbone's median.
    pub non_backbone_fraction: f64,
    pub peak_rss_mb: f64,
}

fn stat(mut v: Vec<u64>) -> Stat {
    if v.is_empty() {
        return Stat {
            median_ms: f64::NAN,
            p99_ms: f64::NAN,
        };
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    Stat {
        median_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// Resident set size of this process now (VmRSS), MB. Sampled during the measured run:
/// the process-lifetime peak (VmHWM) would include the bench's own model set-up.
pub fn current_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn rt_err(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Runtime(e.to_string())
}

/// A model whose KDE holds `points` rows: PCA fitted on the folder's first images, the
/// stored set filled up with jittered copies (scoring cost is what is measured).
fn bench_model(backbone: &Path, data: &Path, points: usize, out: &Path) -> Result<(), DaemonError> {
    let mut bb =
        TractBackbone::load(backbone, 1, None).map_err(|e| DaemonError::Config(e.to_string()))?;
    let info = bb.info().clone();
    let pre = PreprocessConfig::imagenet(info.input_width, info.input_height);
    let paths = list_images(data).map_err(rt_err)?;
    let take = &paths[..paths.len().min(100)];
    let feats = extract_paths(&mut bb, pre, take, "bench model").map_err(rt_err)?;
    let d = info.feature_dim;
    let n = take.len();
    // PCA and scaling from the real features; the KDE's stored set tiled up to `points`
    // rows with small jitter in the 16-d space (never a points × D matrix in memory).
    let cfg = FitConfig::default();
    let base = Dfkde::fit(&feats, n, d, &cfg).map_err(rt_err)?;
    let k = base.n_components();
    let mut embedded = vec![0.0f64; n * k];
    for (i, row) in embedded.chunks_exact_mut(k).enumerate() {
        base.embed_into(&feats[i * d..(i + 1) * d], row)
            .map_err(rt_err)?;
    }
    let points = points.max(n);
    let mut y = Vec::with_capacity(points * k);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..points {
        for &v in &embedded[(i % n) * k..(i % n + 1) * k] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let jitter = ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.02;
            y.push(v + if i < n { 0.0 } else { jitter });
        }
    }
    let kde = GaussianKde::fit(&y, points, k).map_err(rt_err)?;
    let model = Dfkde {
        kde,
        info: FitInfo {
            n_input: points,
            n_fit: points,
            seed: cfg.seed,
            subsampled: false,
        },
        ..base
    };
    let th = crate::artifact::ThresholdMeta {
        rule: crate::artifact::ThresholdRule::AnomalibDefault,
        log_density: 12.0,
        pred_score: 0.5,
        quantile: None,
        holdout_fraction: 0.0,
        n_holdout: 0,
    };
    let art = make_artifact(model, th, Vec::new(), &info, pre, &cfg, n);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(rt_err)?;
    }
    art.save(out).map_err(rt_err)
}

/// The benchmark's broker: the given one, else the embedded one on a free loopback port, else
/// (a build without it, as on the boards) the local broker on 127.0.0.1:1883.
fn bench_broker(given: Option<&str>) -> Result<crate::demo::BrokerChoice, DaemonError> {
    let port = if given.is_none() && crate::demo::EMBEDDED_BROKER {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(rt_err)?
            .port()
    } else {
        1883
    };
    Ok(crate::demo::choose_broker(
        given,
        port,
        crate::demo::EMBEDDED_BROKER,
    ))
}

/// Run the benchmark for each worker count, publishing to `broker` (default: see
/// [`bench_broker`]).
pub fn bench(
    data: &Path,
    backbone: &Path,
    workers: &[usize],
    seconds: f64,
    kde_points: usize,
    backend: &crate::backbone::BackendOptions,
    broker: Option<&str>,
) -> Result<Vec<BenchResult>, DaemonError> {
    let state = tempdir_path()?;
    let model = state.join("models/bench.safetensors");
    bench_model(backbone, data, kde_points, &model)?;
    let url = crate::demo::broker_url(&bench_broker(broker)?)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(rt_err)?;
    let mut results = Vec::new();
    for &w in workers {
        let text = format!(
            "node = \"bench\"\nstate_dir = {st:?}\n[inference]\nbackbone = {bb:?}\nworkers = {w}\nbackend = {be:?}\nadapter = {ad:?}\nfallback_to_tract = false\n[mqtt]\nurl = {url:?}\n[[camera]]\nid = \"cam1\"\nmodel = {m:?}\n[camera.source]\ntype = \"folder\"\npath = {d:?}\nfps = 200\nloop = true\n",
            st = state.display().to_string(),
            bb = backbone.display().to_string(),
            be = backend.kind.as_str(),
            ad = backend.adapter.as_str(),
            m = model.display().to_string(),
            d = data.display().to_string(),
        );
        let config = Config::from_toml(&text).map_err(|e| DaemonError::Config(e.to_string()))?;
        let sha = crate::backbone::file_sha256(backbone)
            .map_err(|e| DaemonError::Config(e.to_string()))?;
        let models: Vec<Option<LoadedModel>> = config
            .cameras
            .iter()
            .map(|c| daemon::load_camera_model(c, &config.state_dir, backbone, &sha).map(Some))
            .collect::<Result<_, _>>()?;
        let _guard = rt.enter();
        let (publisher, _commands) = Publisher::start(
            &config.mqtt,
            &config.node,
            vec!["cam1".into()],
            &config.state_dir,
        )
        .map_err(rt_err)?;
        let publisher = Arc::new(publisher);
        let sink: Arc<dyn Sink> = Arc::new(MqttSink(publisher.clone()));
        let running = daemon::start_pipeline(
            &config,
            models,
            sink,
            &|c| format!("vigil/bench/{c}/snapshot"),
            true,
        )?;
        // Warm-up, then measure.
        std::thread::sleep(Duration::from_secs(2));
        if let Some(t) = &running.pipeline.timings {
            lock(t).clear();
        }
        let t0 = Instant::now();
        let mut rss_max = current_rss_mb();
        let mut trimmed = Instant::now();
        while t0.elapsed().as_secs_f64() < seconds {
            std::thread::sleep(Duration::from_millis(100));
            rss_max = rss_max.max(current_rss_mb());
            // As the daemon does on its health tick (every `health.interval_s`, 5 s).
            if trimmed.elapsed() >= Duration::from_secs(5) {
                crate::mem::release_free_heap();
                trimmed = Instant::now();
            }
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let times: Vec<StageTimes> = running
            .pipeline
            .timings
            .as_ref()
            .map(|t| lock(t).clone())
            .unwrap_or_default();
        running.stop();
        if let Ok(p) = Arc::try_unwrap(publisher) {
            rt.block_on(p.shutdown());
        }
        let col = |f: fn(&StageTimes) -> u64| times.iter().map(f).collect::<Vec<u64>>();
        let backbone_s = stat(col(|t| t.backbone_us));
        let others: Vec<u64> = times
            .iter()
            .map(|t| t.decode_us + t.preprocess_us + t.score_us + t.publish_us)
            .collect();
        let others_s = stat(others);
        results.push(BenchResult {
            workers: w,
            frames: times.len(),
            seconds: elapsed,
            fps: times.len() as f64 / elapsed,
            decode: stat(col(|t| t.decode_us)),
            preprocess: stat(col(|t| t.preprocess_us)),
            non_backbone_fraction: others_s.median_ms / backbone_s.median_ms,
            backbone: backbone_s,
            score: stat(col(|t| t.score_us)),
            publish: stat(col(|t| t.publish_us)),
            latency: stat(col(|t| t.total_us)),
            peak_rss_mb: rss_max,
        });
    }
    let _ = std::fs::remove_dir_all(&state);
    Ok(results)
}

fn tempdir_path() -> Result<PathBuf, DaemonError> {
    let p = std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p).map_err(rt_err)?;
    Ok(p)
}
