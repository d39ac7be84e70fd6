//! `vigil demo`: the whole pipeline out of the box — an in-process MQTT broker (rumqttd,
//! feature `embedded-broker`, in the default build) unless one is given, the synthetic
//! camera, the shipped EfficientNet-Lite0, a model fitted on the first normal frames, and
//! every event printed as it is published.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::backbone::{Backbone, TractBackbone};
use crate::config::Config;
use crate::daemon::{self, DaemonError};
use crate::features::FeatureExtractor;
use crate::fit::{fit_with_threshold, make_artifact, ThresholdConfig};
use crate::model::FitConfig;
use crate::pipeline::LoadedModel;
use crate::preprocess::PreprocessConfig;
use crate::source::{self, SourceConfig};

/// Options of `vigil demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Use this broker instead of starting one (e.g. `mqtt://127.0.0.1:1883`).
    pub broker: Option<String>,
    /// Port of the embedded broker (loopback only); without the embedded broker, the port
    /// of the local one.
    pub port: u16,
    /// Stop after this long (default: until Ctrl-C).
    pub duration: Option<Duration>,
    /// Normal frames used to fit the demo model.
    pub fit_frames: usize,
    /// Every N-th synthetic frame starts an injected defect.
    pub defect_every: u32,
    pub fps: f64,
    pub backbone: PathBuf,
    /// Where the demo model and outbox go.
    pub state_dir: PathBuf,
}

fn rt_err(e: impl std::fmt::Display) -> DaemonError {
    DaemonError::Runtime(e.to_string())
}

/// Where the demo's MQTT messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    /// The broker given with `--broker`.
    Given(String),
    /// rumqttd in process on 127.0.0.1:port.
    Embedded(u16),
    /// A build without the embedded broker: the local one (e.g. mosquitto) on 127.0.0.1:port.
    Local(u16),
}

/// Whether this build has the embedded broker (Cargo feature `embedded-broker`).
pub const EMBEDDED_BROKER: bool = cfg!(feature = "embedded-broker");

/// The demo's broker: the given one, else the embedded one when the build has it, else the
/// local one on the same port.
pub fn choose_broker(given: Option<&str>, port: u16, embedded: bool) -> BrokerChoice {
    match given {
        Some(u) => BrokerChoice::Given(u.to_string()),
        None if embedded => BrokerChoice::Embedded(port),
        None => BrokerChoice::Local(port),
    }
}

/// Wait (100 tries, 50 ms apart) until something accepts TCP connections on 127.0.0.1:`port`.
fn wait_listening(port: u16) -> bool {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..100 {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The broker URL for `choice`, starting the embedded broker when it is the choice
/// (`vigil demo`, `vigil bench`).
pub fn broker_url(choice: &BrokerChoice) -> Result<String, DaemonError> {
    match choice {
        BrokerChoice::Given(u) => Ok(u.clone()),
        BrokerChoice::Embedded(port) => start_embedded_broker(*port),
        BrokerChoice::Local(port) => {
            if wait_listening(*port) {
                Ok(format!("mqtt://127.0.0.1:{port}"))
            } else {
                Err(DaemonError::Config(format!(
                    "this build of vigil has no embedded MQTT broker (Cargo feature \
                     `embedded-broker`) and nothing listens on 127.0.0.1:{port}: start a local \
                     broker (e.g. `apt install mosquitto`) or give one with --broker mqtt://HOST:PORT"
                )))
            }
        }
    }
}

/// A build without rumqttd: always an error (reached only if a caller asks for it anyway).
#[cfg(not(feature = "embedded-broker"))]
fn start_embedded_broker(port: u16) -> Result<String, DaemonError> {
    Err(DaemonError::Config(format!(
        "cannot start an MQTT broker on 127.0.0.1:{port}: this build has no embedded broker (Cargo feature `embedded-broker`)"
    )))
}

/// Start rumqttd on 127.0.0.1:`port` in a background thread and wait until it accepts.
#[cfg(feature = "embedded-broker")]
fn start_embedded_broker(port: u16) -> Result<String, DaemonError> {
    let toml_cfg = format!(
        r#"
id = 0
[router]
max_connections = 64
max_outgoing_packet_count = 200
max_segment_size = 4194304
max_segment_count = 2
[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 16777216
max_inflight_count = 200
dynamic_filters = true
"#
    );
    let cfg: rumqttd::Config = toml::from_str(&toml_cfg).map_err(rt_err)?;
    std::thread::Builder::new()
        .name("vigil-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(cfg);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .map_err(rt_err)?;
    if wait_listening(port) {
        return Ok(format!("mqtt://127.0.0.1:{port}"));
    }
    Err(DaemonError::Runtime(format!(
        "embedded broker did not start on 127.0.0.1:{port} (port in use? try --port)"
    )))
}

fn synthetic(defect_every: u32, fps: f64) -> Result<SourceConfig, DaemonError> {
    toml::from_str(&format!(
        "type = \"synthetic\"\nfps = {fps:?}\ndefect_every = {defect_every}\nseed = 7\n"
    ))
    .map_err(rt_err)
}

/// Fit a model on `n` normal synthetic frames.
fn fit_demo_model(opts: &DemoOptions, model_path: &Path) -> Result<(), DaemonError> {
    let mut bb = TractBackbone::load(&opts.backbone, 1, None)
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    let info = bb.info().clone();
    let pre_cfg = PreprocessConfig::imagenet(info.input_width, info.input_height);
    let mut fx = FeatureExtractor::new(pre_cfg);
    let mut src = source::build(&synthetic(0, 0.0)?).map_err(rt_err)?;
    src.open().map_err(rt_err)?;
    let dim = info.feature_dim;
    let mut feats = vec![0.0f32; opts.fit_frames * dim];
    let pb = crate::features::progress(opts.fit_frames as u64, "fitting");
    for row in feats.chunks_exact_mut(dim) {
        let px = src
            .next_frame()
            .map_err(rt_err)?
            .ok_or_else(|| rt_err("synthetic source ended"))?;
        fx.pixels(&mut bb, &px, "synthetic", row).map_err(rt_err)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    src.close();
    let cfg = FitConfig::default();
    let (model, th, qs) = fit_with_threshold(
        &feats,
        opts.fit_frames,
        info.feature_dim,
        &cfg,
        &ThresholdConfig::default(),
    )
    .map_err(rt_err)?;
    let art = make_artifact(model, th, qs, &info, pre_cfg, &cfg, opts.fit_frames);
    if let Some(dir) = model_path.parent() {
        std::fs::create_dir_all(dir).map_err(rt_err)?;
    }
    art.save(model_path).map_err(rt_err)?;
    eprintln!(
        "demo model {} fitted on {} normal frames, threshold log-density {:.3}",
        art.meta.model_id, opts.fit_frames, art.meta.threshold.log_density
    );
    Ok(())
}

/// Print every message under `<prefix>/<node>/#` except snapshots (binary) to stdout.
async fn print_messages(url: String, filter: String) {
    let Ok(mut opts) =
        rumqttc::MqttOptions::parse_url(format!("{url}?client_id=vigil-demo-printer"))
    else {
        return;
    };
    opts.set_max_packet_size(16 << 20, 16 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 32);
    loop {
        match el.poll().await {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce);
            }
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                if p.topic.ends_with("/snapshot") {
                    println!("{} <{} bytes of JPEG>", p.topic, p.payload.len());
                } else if p.topic.ends_with("/event") || p.topic.ends_with("/status") {
                    println!("{} {}", p.topic, String::from_utf8_lossy(&p.payload));
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Run the demo.
pub fn demo(opts: DemoOptions) -> Result<(), DaemonError> {
    let url = broker_url(&choose_broker(
        opts.broker.as_deref(),
        opts.port,
        EMBEDDED_BROKER,
    ))?;
    eprintln!("broker: {url}");
    let model_path = opts.state_dir.join("models/demo.safetensors");
    fit_demo_model(&opts, &model_path)?;
    let text = format!(
        r#"
node = "demo"
state_dir = {state:?}
runtime_dir = {run:?}
[inference]
backbone = {bb:?}
workers = 1
[mqtt]
url = {url:?}
[health]
interval_s = 5
[[camera]]
id = "cam1"
model = {model:?}
[camera.source]
type = "synthetic"
fps = {fps:?}
defect_every = {every}
seed = 7
[camera.detector]
start_frames = 2
end_frames = 3
min_event_gap_s = 1
update_interval_s = 1
"#,
        state = opts.state_dir.display().to_string(),
        run = opts.state_dir.join("run").display().to_string(),
        bb = opts.backbone.display().to_string(),
        model = model_path.display().to_string(),
        fps = opts.fps,
        every = opts.defect_every,
    );
    let config = Config::from_toml(&text).map_err(|e| DaemonError::Config(e.to_string()))?;
    let sha = crate::backbone::file_sha256(&opts.backbone)
        .map_err(|e| DaemonError::Config(e.to_string()))?;
    let models: Vec<Option<LoadedModel>> = config
        .cameras
        .iter()
        .map(|c| daemon::load_camera_model(c, &config.state_dir, &opts.backbone, &sha).map(Some))
        .collect::<Result<_, _>>()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(rt_err)?;
    let filter = format!("{}/{}/#", config.mqtt.prefix, config.node);
    rt.spawn(print_messages(url, filter));
    rt.block_on(daemon::serve(None, config, models, opts.duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_broker_wins_then_the_embedded_one_then_the_local_one() {
        assert_eq!(
            choose_broker(Some("mqtt://plant:1883"), 1883, true),
            BrokerChoice::Given("mqtt://plant:1883".into())
        );
        assert_eq!(
            choose_broker(None, 1999, true),
            BrokerChoice::Embedded(1999)
        );
        assert_eq!(choose_broker(None, 1999, false), BrokerChoice::Local(1999));
    }

    #[test]
    fn without_the_embedded_broker_the_local_one_is_used_or_a_clear_error_given() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(
            broker_url(&BrokerChoice::Local(port)).unwrap(),
            format!("mqtt://127.0.0.1:{port}")
        );
        drop(listener);
        let err = broker_url(&BrokerChoice::Local(port)).unwrap_err();
        assert!(matches!(err, DaemonError::Config(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("no embedded MQTT broker") && msg.contains("--broker"),
            "{msg}"
        );
    }
}
