//! Harness for tests that run `vigil` against a real broker: a mosquitto on a free
//! loopback port, a collecting subscriber, a QoS 1 publisher, a fitted model with a folder
//! source, and the daemon as a child process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vigil::backbone::{Backbone, TractBackbone};
use vigil::features::{extract_paths, list_images};
use vigil::fit::{fit_with_threshold, make_artifact, ThresholdConfig};
use vigil::model::FitConfig;
use vigil::preprocess::PreprocessConfig;

/// A mosquitto process on 127.0.0.1:`port`, killed on drop.
pub struct Broker {
    pub child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Broker {
        let dir = tempfile::tempdir().expect("tmp");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("conf");
        let mut child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Broker {
                    child,
                    port,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mosquitto did not start on {port}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

pub type Messages = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

static CLIENTS: AtomicU32 = AtomicU32::new(0);

/// A client id unique in this test process.
pub fn client_id(what: &str) -> String {
    format!(
        "test-{what}-{}-{}",
        std::process::id(),
        CLIENTS.fetch_add(1, Ordering::Relaxed)
    )
}

/// Subscribe to `filter` (re-subscribing after broker restarts) and collect every message;
/// returns once the first SUBACK arrived.
pub fn subscribe(port: u16, filter: &str) -> Messages {
    let msgs: Messages = Arc::new(Mutex::new(Vec::new()));
    let out = msgs.clone();
    let filter = filter.to_string();
    let id = client_id("sub");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_max_packet_size(16 << 20, 16 << 20);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = rumqttc::Client::new(opts, 64);
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client.subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce);
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    out.lock()
                        .expect("lock")
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscribed");
    msgs
}

/// Publish one non-retained QoS 1 message and wait for the broker's PUBACK.
pub fn publish(port: u16, topic: &str, payload: impl Into<Vec<u8>>) {
    let mut opts = rumqttc::MqttOptions::new(client_id("pub"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(opts, 8);
    client
        .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.into())
        .expect("queue publish");
    for ev in conn.iter() {
        match ev {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => break,
            Ok(_) => {}
            Err(e) => panic!("publish {topic}: {e}"),
        }
    }
    let _ = client.disconnect();
}

pub fn snapshot(msgs: &Messages) -> Vec<(String, Vec<u8>)> {
    msgs.lock().expect("lock").clone()
}

/// Wait until `pred` holds for the messages so far (returned); on timeout, panic listing
/// them through `describe`.
pub fn wait_for_with(
    msgs: &Messages,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[(String, Vec<u8>)]) -> bool,
    describe: impl Fn(&str, &[u8]) -> String,
) -> Vec<(String, Vec<u8>)> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        let m = snapshot(msgs);
        if pred(&m) {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let got: Vec<String> = snapshot(msgs).iter().map(|(t, p)| describe(t, p)).collect();
    panic!("timed out waiting for {what}; got:\n{}", got.join("\n"));
}

/// [`wait_for_with`], listing payloads as text.
pub fn wait_for(
    msgs: &Messages,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[(String, Vec<u8>)]) -> bool,
) -> Vec<(String, Vec<u8>)> {
    wait_for_with(msgs, what, timeout, pred, |t, p| {
        format!("{t} {}", String::from_utf8_lossy(p))
    })
}

/// The JSON payloads of the topics ending in `suffix`.
pub fn json_of(msgs: &[(String, Vec<u8>)], suffix: &str) -> Vec<serde_json::Value> {
    msgs.iter()
        .filter(|(t, _)| t.ends_with(suffix))
        .filter_map(|(_, p)| serde_json::from_slice(p).ok())
        .collect()
}

pub fn link(files: &[PathBuf], dir: &Path, prefix: &str) {
    for (i, f) in files.iter().enumerate() {
        std::os::unix::fs::symlink(f, dir.join(format!("{prefix}{i:04}.jpg"))).expect("link");
    }
}

/// A model fitted on 80 magnetic-tile normals (threshold at the 0.9 quantile) at
/// `<root>/state/models/cam1.safetensors`, and a folder source dir `<root>/frames`:
/// normals, then strong defects (fray, AUROC ≈ 0.96), then normals again.
pub fn setup(root: &Path) -> (PathBuf, PathBuf) {
    let mt = super::shared_dir().join("data/magnetic_tile");
    let backbone = super::repo_path("models/efficientnet_lite0_pooled.onnx");
    let mut bb = TractBackbone::load(&backbone, 1, None).expect("backbone");
    let train = list_images(&mt.join("train/good")).expect("train");
    let train = &train[..80];
    let pre = PreprocessConfig::imagenet(224, 224);
    let feats = extract_paths(&mut bb, pre, train, "fit").expect("features");
    let cfg = FitConfig::default();
    let (m, th, qs) = fit_with_threshold(
        &feats,
        train.len(),
        1280,
        &cfg,
        &ThresholdConfig {
            holdout: 0.2,
            quantile: 0.9,
        },
    )
    .expect("fit");
    let art = make_artifact(m, th, qs, bb.info(), pre, &cfg, train.len());
    let model = root.join("state/models/cam1.safetensors");
    std::fs::create_dir_all(model.parent().expect("p")).expect("mkdir");
    art.save(&model).expect("save");

    let frames = root.join("frames");
    std::fs::create_dir_all(&frames).expect("mkdir");
    let good = list_images(&mt.join("test/good")).expect("good");
    let fray = list_images(&mt.join("test/fray")).expect("fray");
    link(&good[..8], &frames, "a_");
    link(&fray[..16], &frames, "b_");
    link(&good[8..20], &frames, "c_");
    (model, frames)
}

/// Lines added to sections of [`write_folder_config`]'s config.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extra<'a> {
    /// Into `[inference]`.
    pub inference: &'a str,
    /// Into `[[camera]]` (before its sub-tables).
    pub camera: &'a str,
    /// Into `[mqtt]`, after its keys: may end with a sub-table such as `[mqtt.sparkplug]`.
    pub mqtt: &'a str,
}

/// A config for node `node`, one folder camera `cam1` at `fps` (not looping, fast detector),
/// with the `extra` lines.
pub fn write_folder_config(
    root: &Path,
    port: u16,
    frames: &Path,
    node: &str,
    extra: Extra,
    fps: u32,
) -> PathBuf {
    let Extra {
        inference,
        camera: extra_camera,
        mqtt,
    } = extra;
    let text = format!(
        r#"
node = "{node}"
state_dir = "{state}"
runtime_dir = "{run}"
[inference]
backbone = "{bb}"
{inference}
[mqtt]
url = "mqtt://127.0.0.1:{port}"
keep_alive_s = 5
state_interval_s = 1
{mqtt}
[health]
interval_s = 1
[[camera]]
id = "cam1"
{extra_camera}
[camera.source]
type = "folder"
path = "{frames}"
fps = {fps}
loop = false
[camera.detector]
start_frames = 2
end_frames = 3
min_event_gap_s = 0
update_interval_s = 0.5
"#,
        state = root.join("state").display(),
        run = root.join("run").display(),
        bb = super::repo_path("models/efficientnet_lite0_pooled.onnx").display(),
        frames = frames.display(),
    );
    let path = root.join("vigil.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// The `vigil` binary: `$VIGIL_BIN` when set (a target dir shared between worktrees
/// holds whichever `vigil` was built last), else Cargo's.
pub fn vigil_bin() -> PathBuf {
    std::env::var_os("VIGIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vigil")))
}

/// A `vigil run` child process, SIGKILLed and reaped on drop if still running: a test that
/// panics half-way leaves no daemon behind (holding its port, state dir and CPU for the rest
/// of the run). Derefs to [`Child`].
pub struct Daemon(pub Child);

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Start `vigil run`, its log appended to `<config>.log`.
pub fn spawn_daemon(config: &Path) -> Daemon {
    spawn_daemon_logging(config, &config.with_extension("log"))
}

/// Start `vigil run`, its log appended to `log` (a file: a pipe nobody reads could fill up).
pub fn spawn_daemon_logging(config: &Path, log: &Path) -> Daemon {
    spawn_daemon_with_env(config, log, &[])
}

/// Start `vigil run` with extra environment variables, its log appended to `log`.
pub fn spawn_daemon_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let mut cmd = Command::new(vigil_bin());
    cmd.args(["run", "--config", config.to_str().expect("utf8")])
        .env("VIGIL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().map(Daemon).expect("spawn vigil")
}

pub fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
}
