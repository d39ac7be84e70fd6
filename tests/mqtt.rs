//! MQTT publisher against a real broker: every test starts its own `mosquitto` (Debian
//! package) on a free 127.0.0.1 port with a temporary configuration (`persistence false`)
//! and kills it at the end. Subscribers are rumqttc clients inside the test.
//!
//! Crash tests re-run this test binary as a child process (`child_process_publisher`,
//! a no-op unless `VIGIL_MQTT_CHILD_URL` is set) and kill it with SIGKILL.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS, Transport};
use tokio::sync::{mpsc, watch};
use vigil::messages::{
    timestamp, Event, Health, KnobState, State, Status, SCHEMA_EVENT, SCHEMA_HEALTH, SCHEMA_KNOB,
    SCHEMA_STATE,
};
use vigil::publish::{Command, MqttConfig, PublishError, Publisher};

const NODE: &str = "n1";

// ---------------------------------------------------------------- helpers: broker

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn current_user() -> String {
    let out = Proc::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A mosquitto process on 127.0.0.1:`port`, killed (SIGKILL) on drop.
struct Broker {
    port: u16,
    dir: tempfile::TempDir,
    extra: String,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_on(free_port(), "allow_anonymous true\n")
    }

    fn start_on(port: u16, extra: &str) -> Broker {
        let mut b = Broker {
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.to_string(),
            child: None,
        };
        b.spawn();
        b
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\npersistence false\nuser {user}\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n{extra}",
                port = self.port,
                user = current_user(),
                extra = self.extra
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("log file");
        let child = Proc::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto not installed (apt-get install mosquitto)");
        self.child = Some(child);
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("mosquitto exited ({st}); log:\n{}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no clean shutdown, no Will publishing by the broker itself.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- helpers: subscriber

#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

impl Msg {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: {}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// A clean-session rumqttc subscriber that re-subscribes after every reconnect.
struct Sub {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Msg>,
    subacks: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sub {
    async fn connect(port: u16, filter: &str) -> Sub {
        Sub::connect_with(port, filter, |_| {}).await
    }

    async fn connect_with(port: u16, filter: &str, tweak: impl FnOnce(&mut MqttOptions)) -> Sub {
        let id = format!("test-sub-{}", free_port());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_max_packet_size(8 << 20, 8 << 20);
        tweak(&mut opts);
        let (client, mut el) = AsyncClient::new(opts, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, subacks) = watch::channel(0u64);
        let c2 = client.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                        let _ = c2.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        ack_tx.send_modify(|n| *n += 1);
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        let mut s = Sub {
            client,
            rx,
            subacks,
            task,
        };
        s.wait_subscribed(0).await;
        s
    }

    /// Waits until more than `seen` SUBACKs arrived.
    async fn wait_subscribed(&mut self, seen: u64) {
        tokio::time::timeout(
            Duration::from_secs(10),
            self.subacks.wait_for(|n| *n > seen),
        )
        .await
        .expect("subscriber never subscribed")
        .expect("subscriber task ended");
    }

    fn subacks(&self) -> u64 {
        *self.subacks.borrow()
    }

    async fn recv(&mut self, within: Duration) -> Option<Msg> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message on `topic` (others are skipped), or panic after 10 s.
    async fn next_on(&mut self, topic: &str) -> Msg {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Some(m) = self.recv(Duration::from_millis(200)).await {
                if m.topic == topic {
                    return m;
                }
            }
        }
        panic!("no message on {topic} within 10 s");
    }

    /// The next message on `topic` satisfying `pred`.
    async fn next_where(&mut self, topic: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            let m = self.next_on(topic).await;
            if pred(&m) {
                return m;
            }
        }
        panic!("no matching message on {topic} within 10 s");
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- helpers: publisher

fn cfg(port: u16) -> MqttConfig {
    MqttConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        keep_alive_s: 5,
        reconnect_min_s: 0.1,
        reconnect_max_s: 1.0,
        ..MqttConfig::default()
    }
}

fn cams() -> Vec<String> {
    vec!["cam0".to_string(), "cam1".to_string()]
}

/// `Publisher::start`, retrying while a just-dropped publisher still holds the outbox lock.
async fn start(c: &MqttConfig, state: &Path) -> (Publisher, mpsc::Receiver<Command>) {
    let t0 = Instant::now();
    loop {
        match Publisher::start(c, NODE, cams(), state) {
            Ok(p) => return p,
            Err(PublishError::Outbox(e)) if t0.elapsed() < Duration::from_secs(5) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("Publisher::start: {e}"),
        }
    }
}

async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < within, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn event(camera: &str, seq: u64) -> Event {
    let (ts, ts_ms) = timestamp(SystemTime::now());
    Event {
        schema: SCHEMA_EVENT.into(),
        id: format!("evt-{camera}-{}", seq / 3),
        r#type: ["start", "update", "end"][(seq % 3) as usize].into(),
        node: NODE.into(),
        camera: camera.into(),
        ts_start: ts.clone(),
        ts_start_ms: ts_ms,
        ts,
        ts_ms,
        peak_score: 0.75 + seq as f64 * 1e-3,
        peak_log_density: -42.5 - seq as f64,
        threshold: -30.0,
        frames: seq + 1,
        snapshot_topic: format!("vigil/{NODE}/{camera}/snapshot"),
        model_id: "model-abc".into(),
        seq,
    }
}

fn outbox_files(state: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(state.join("outbox"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".msg"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Prints how long a test took (`cargo test --test mqtt -- --nocapture`).
struct Timing(&'static str, Instant);
impl Drop for Timing {
    fn drop(&mut self) {
        eprintln!(
            "[timing] {}: {:.2} s",
            self.0,
            self.1.elapsed().as_secs_f64()
        );
    }
}

// ---------------------------------------------------------------- helpers: child process

const CHILD_URL: &str = "VIGIL_MQTT_CHILD_URL";
const CHILD_STATE: &str = "VIGIL_MQTT_CHILD_STATE";
const CHILD_EVENTS: &str = "VIGIL_MQTT_CHILD_EVENTS";
const CHILD_READY: &str = "CHILD-READY";

/// Not a test on its own: the body of the child process of the crash tests. Starts a
/// publisher, publishes `$VIGIL_MQTT_CHILD_EVENTS` events (or, with 0, waits until
/// connected), prints `CHILD-READY` and idles until killed.
#[test]
fn child_process_publisher() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let state = PathBuf::from(std::env::var(CHILD_STATE).expect("child state dir"));
    let n: u64 = std::env::var(CHILD_EVENTS)
        .expect("child events")
        .parse()
        .expect("child events number");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let c = MqttConfig { url, ..cfg(1) };
        let (publisher, _rx) = Publisher::start(&c, NODE, cams(), &state).expect("child start");
        for seq in 0..n {
            publisher
                .publish_event("cam0", &event("cam0", seq))
                .expect("child publish");
        }
        if n == 0 {
            wait_until("child connected", Duration::from_secs(10), || {
                let s = publisher.status();
                s.connected && s.knobs_subscribed
            })
            .await;
        }
        println!("{CHILD_READY}");
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
}

/// Runs `child_process_publisher` in a new process and returns it once it is ready.
fn spawn_child(url: &str, state: &Path, events: u64) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Proc::new(exe)
        .args([
            "--exact",
            "child_process_publisher",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_STATE, state)
        .env(CHILD_EVENTS, events.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(CHILD_READY) {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = child.kill();
        panic!("child publisher never became ready");
    }
    child
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_online_is_retained_and_the_will_says_offline_when_the_process_is_killed() {
    let _t = Timing(
        "status_online_is_retained_and_the_will_says_offline_when_the_process_is_killed",
        Instant::now(),
    );
    let broker = Broker::start();
    let status_topic = format!("vigil/{NODE}/status");
    let mut live = Sub::connect(broker.port, &status_topic).await;
    let state = tempfile::tempdir().unwrap();

    let mut child = spawn_child(&broker.url(), state.path(), 0);
    let online: Status = live
        .next_where(&status_topic, |m| m.json::<Status>().status == "online")
        .await
        .json();
    assert_eq!(online.node, NODE);
    assert_eq!(online.cameras, cams());
    assert_eq!(online.schema, "vigil.status/1");

    // A subscriber arriving later gets it as a retained message.
    let mut late = Sub::connect(broker.port, &status_topic).await;
    let m = late.next_on(&status_topic).await;
    assert!(m.retain, "online status must be retained");
    assert_eq!(m.json::<Status>().status, "online");

    // SIGKILL: no DISCONNECT, the broker publishes the Will.
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    let will: Status = live
        .next_where(&status_topic, |m| m.json::<Status>().status == "offline")
        .await
        .json();
    assert_eq!(will.node, NODE);
    let mut later = Sub::connect(broker.port, &status_topic).await;
    let m = later.next_on(&status_topic).await;
    assert!(m.retain, "the Will is retained");
    assert_eq!(m.json::<Status>().status, "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_with_all_fields_and_health_state_snapshot_knob_state_are_retained() {
    let _t = Timing(
        "events_arrive_with_all_fields_and_health_state_snapshot_knob_state_are_retained",
        Instant::now(),
    );
    let broker = Broker::start();
    let mut sub = Sub::connect(broker.port, &format!("vigil/{NODE}/#")).await;
    let state = tempfile::tempdir().unwrap();
    let (publisher, _rx) = start(&cfg(broker.port), state.path()).await;
    sub.next_on(&format!("vigil/{NODE}/status")).await;

    let e = event("cam1", 7);
    publisher.publish_event("cam1", &e).unwrap();
    let m = sub.next_on(&format!("vigil/{NODE}/cam1/event")).await;
    assert!(!m.retain, "events are not retained");
    assert_eq!(m.json::<Event>(), e);
    let raw: serde_json::Value = m.json();
    for key in [
        "schema",
        "id",
        "type",
        "node",
        "camera",
        "ts_start",
        "ts_start_ms",
        "ts",
        "ts_ms",
        "peak_score",
        "peak_log_density",
        "threshold",
        "frames",
        "snapshot_topic",
        "model_id",
        "seq",
    ] {
        assert!(raw.get(key).is_some(), "event lacks `{key}`: {raw}");
    }
    wait_until("event acknowledged", Duration::from_secs(5), || {
        let s = publisher.status();
        s.outbox_len == 0 && s.events_acked == 1
    })
    .await;
    assert!(outbox_files(state.path()).is_empty());

    let (ts, ts_ms) = timestamp(SystemTime::now());
    let health = Health {
        schema: SCHEMA_HEALTH.into(),
        node: NODE.into(),
        camera: "cam0".into(),
        ts: ts.clone(),
        ts_ms,
        state: "ok".into(),
        fps: 9.5,
        last_frame_ts: Some(ts.clone()),
        frames_captured: 100,
        frames_scored: 99,
        dropped_frames: 1,
        error: None,
    };
    let st = State {
        schema: SCHEMA_STATE.into(),
        node: NODE.into(),
        camera: "cam0".into(),
        ts: ts.clone(),
        ts_ms,
        anomalous: false,
        score: 0.1,
        log_density: -20.0,
        threshold: -30.0,
        model_id: "model-abc".into(),
        enabled: true,
        calibrating: false,
    };
    let knob = KnobState {
        schema: SCHEMA_KNOB.into(),
        node: NODE.into(),
        camera: "cam0".into(),
        ts,
        ts_ms,
        knob: "threshold".into(),
        value: serde_json::json!(-30.0),
        error: None,
    };
    let jpeg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    publisher.publish_health("cam0", &health).unwrap();
    publisher.publish_state("cam0", &st).unwrap();
    publisher.publish_snapshot("cam0", jpeg.clone()).unwrap();
    publisher.publish_knob_state("cam0", &knob).unwrap();
    assert_eq!(
        sub.next_on(&format!("vigil/{NODE}/cam0/health"))
            .await
            .json::<Health>(),
        health
    );
    assert_eq!(
        sub.next_on(&format!("vigil/{NODE}/cam0/state"))
            .await
            .json::<State>(),
        st
    );
    assert_eq!(
        sub.next_on(&format!("vigil/{NODE}/cam0/snapshot"))
            .await
            .payload,
        jpeg
    );
    assert_eq!(
        sub.next_on(&format!("vigil/{NODE}/cam0/threshold/state"))
            .await
            .json::<KnobState>(),
        knob
    );

    // State: unchanged within state_interval_s → not re-sent; a change goes out at once.
    publisher
        .publish_state(
            "cam0",
            &State {
                score: 0.2,
                ..st.clone()
            },
        )
        .unwrap();
    assert_eq!(publisher.status().states_skipped, 1);
    let changed = State {
        anomalous: true,
        score: 0.9,
        ..st.clone()
    };
    publisher.publish_state("cam0", &changed).unwrap();
    assert_eq!(
        sub.next_on(&format!("vigil/{NODE}/cam0/state"))
            .await
            .json::<State>(),
        changed
    );

    // A late subscriber gets every retained topic, the latest values.
    let mut late = Sub::connect(broker.port, &format!("vigil/{NODE}/cam0/#")).await;
    let mut got = BTreeMap::new();
    while let Some(m) = late.recv(Duration::from_millis(500)).await {
        assert!(m.retain, "{} should be retained", m.topic);
        got.insert(m.topic.clone(), m);
    }
    let leaf = |l: &str| format!("vigil/{NODE}/cam0/{l}");
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        vec![
            leaf("health"),
            leaf("snapshot"),
            leaf("state"),
            leaf("threshold/state")
        ]
    );
    assert_eq!(got[&leaf("state")].json::<State>(), changed);
    assert_eq!(got[&leaf("snapshot")].payload, jpeg);

    // Misuse is an error, not a panic.
    assert!(matches!(
        publisher.publish_event("cam9", &event("cam9", 0)),
        Err(PublishError::UnknownCamera(_))
    ));
    assert!(matches!(
        publisher.publish_event("cam0", &event("cam1", 0)),
        Err(PublishError::CameraMismatch { .. })
    ));
    assert!(matches!(
        publisher.publish_snapshot("cam0", vec![0; 5 << 20]),
        Err(PublishError::TooLarge { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_at_least_once_across_a_broker_sigkill_and_restart() {
    let _t = Timing(
        "every_event_arrives_at_least_once_across_a_broker_sigkill_and_restart",
        Instant::now(),
    );
    let mut broker = Broker::start();
    let status_topic = format!("vigil/{NODE}/status");
    let mut sub = Sub::connect(broker.port, &format!("vigil/{NODE}/#")).await;
    let state = tempfile::tempdir().unwrap();
    // Constant 1.5 s between attempts: leaves room to bring the subscriber back first.
    let c = MqttConfig {
        reconnect_min_s: 1.5,
        reconnect_max_s: 1.5,
        ..cfg(broker.port)
    };
    let (publisher, _rx) = start(&c, state.path()).await;
    sub.next_on(&status_topic).await;

    let mut received: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let event_topic = format!("vigil/{NODE}/cam0/event");
    for seq in 0..10 {
        publisher
            .publish_event("cam0", &event("cam0", seq))
            .unwrap();
    }
    // Kill the broker mid-stream, without waiting for the acknowledgements.
    broker.kill();
    for seq in 10..20 {
        publisher
            .publish_event("cam0", &event("cam0", seq))
            .unwrap();
    }
    wait_until("publisher notices", Duration::from_secs(10), || {
        !publisher.status().connected
    })
    .await;
    let errors = publisher.status().connection_errors;
    wait_until(
        "a failed reconnect attempt",
        Duration::from_secs(10),
        || publisher.status().connection_errors > errors,
    )
    .await;
    let subacks = sub.subacks();
    broker.spawn();
    sub.wait_subscribed(subacks).await;
    for seq in 20..25 {
        publisher
            .publish_event("cam0", &event("cam0", seq))
            .unwrap();
    }

    let t0 = Instant::now();
    let mut online_again = false;
    while (received.len() < 25 || !online_again) && t0.elapsed() < Duration::from_secs(20) {
        let Some(m) = sub.recv(Duration::from_millis(200)).await else {
            continue;
        };
        if m.topic == event_topic {
            let e: Event = m.json();
            received.entry(e.seq).or_default().push(m.payload.clone());
        } else if m.topic == status_topic && m.json::<Status>().status == "online" {
            online_again = true;
        }
    }
    let missing: Vec<u64> = (0..25).filter(|s| !received.contains_key(s)).collect();
    assert!(missing.is_empty(), "events never delivered: {missing:?}");
    assert!(
        online_again,
        "online status re-published after the reconnect"
    );
    for (seq, copies) in &received {
        let first: Event = serde_json::from_slice(&copies[0]).unwrap();
        assert_eq!(first, event("cam0", *seq).clone_with_ts(&first));
        for c in copies {
            let dup: Event = serde_json::from_slice(c).unwrap();
            assert_eq!(dup, first, "a duplicate must be identical (same id/seq)");
        }
    }
    let dups: usize = received.values().map(|c| c.len() - 1).sum();
    eprintln!("[measured] broker restart: 25 events, {dups} duplicates");
    wait_until("outbox drained", Duration::from_secs(5), || {
        publisher.status().outbox_len == 0
    })
    .await;
    let s = publisher.status();
    assert!(s.reconnects >= 1, "{s:?}");
    assert!(outbox_files(state.path()).is_empty());
}

/// `event()` stamps the current time; compare the rest.
trait CloneWithTs {
    fn clone_with_ts(&self, other: &Event) -> Event;
}
impl CloneWithTs for Event {
    fn clone_with_ts(&self, other: &Event) -> Event {
        Event {
            ts: other.ts.clone(),
            ts_ms: other.ts_ms,
            ts_start: other.ts_start.clone(),
            ts_start_ms: other.ts_start_ms,
            ..self.clone()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_left_by_a_killed_process_is_resent_in_order_by_the_next_publisher() {
    let _t = Timing(
        "outbox_left_by_a_killed_process_is_resent_in_order_by_the_next_publisher",
        Instant::now(),
    );
    let port = free_port(); // nothing listens yet: the child cannot deliver
    let state = tempfile::tempdir().unwrap();
    let mut child = spawn_child(&format!("mqtt://127.0.0.1:{port}"), state.path(), 6);
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");
    assert_eq!(
        outbox_files(state.path()).len(),
        6,
        "publish_event returned only once durable"
    );

    let broker = Broker::start_on(port, "allow_anonymous true\n");
    let event_topic = format!("vigil/{NODE}/cam0/event");
    let mut sub = Sub::connect(port, &event_topic).await;
    let (publisher, _rx) = start(&cfg(port), state.path()).await;
    let mut seqs = Vec::new();
    while seqs.len() < 6 {
        seqs.push(sub.next_on(&event_topic).await.json::<Event>().seq);
    }
    assert_eq!(seqs, (0..6).collect::<Vec<_>>(), "re-sent oldest first");
    wait_until("outbox drained", Duration::from_secs(5), || {
        publisher.status().outbox_len == 0
    })
    .await;
    assert!(outbox_files(state.path()).is_empty());
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_drops_the_oldest_events() {
    let _t = Timing("a_full_outbox_drops_the_oldest_events", Instant::now());
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let c = MqttConfig {
        outbox_max_messages: 3,
        ..cfg(port)
    };
    let (publisher, _rx) = start(&c, state.path()).await;
    for seq in 0..5 {
        publisher
            .publish_event("cam0", &event("cam0", seq))
            .unwrap();
    }
    let s = publisher.status();
    assert_eq!((s.outbox_len, s.outbox_dropped), (3, 2), "{s:?}");
    assert_eq!(
        outbox_files(state.path()),
        vec![
            "00000000000000000002.msg",
            "00000000000000000003.msg",
            "00000000000000000004.msg"
        ]
    );
    drop(publisher); // aborts its task (nothing was connected)

    let _broker = Broker::start_on(port, "allow_anonymous true\n");
    let event_topic = format!("vigil/{NODE}/cam0/event");
    let mut sub = Sub::connect(port, &event_topic).await;
    let (publisher, _rx) = start(&c, state.path()).await;
    let mut seqs = Vec::new();
    while let Some(m) = sub.recv(Duration::from_millis(1500)).await {
        seqs.push(m.json::<Event>().seq);
    }
    assert_eq!(seqs, vec![2, 3, 4]);
    assert_eq!(publisher.status().outbox_len, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knob_set_messages_become_commands_and_bad_payloads_get_a_retained_error_state() {
    let _t = Timing(
        "knob_set_messages_become_commands_and_bad_payloads_get_a_retained_error_state",
        Instant::now(),
    );
    let broker = Broker::start();
    let mut sub = Sub::connect(broker.port, &format!("vigil/{NODE}/+/+/state")).await;
    let state = tempfile::tempdir().unwrap();
    let (publisher, mut rx) = start(&cfg(broker.port), state.path()).await;
    wait_until("knob subscriptions", Duration::from_secs(5), || {
        publisher.status().knobs_subscribed
    })
    .await;
    let (ts, ts_ms) = timestamp(SystemTime::now());
    publisher
        .publish_knob_state(
            "cam0",
            &KnobState {
                schema: SCHEMA_KNOB.into(),
                node: NODE.into(),
                camera: "cam0".into(),
                ts,
                ts_ms,
                knob: "enabled".into(),
                value: serde_json::json!(true),
                error: None,
            },
        )
        .unwrap();
    sub.next_on(&format!("vigil/{NODE}/cam0/enabled/state"))
        .await;

    let client = sub.client.clone();
    let set = |knob: &str, payload: &str| {
        let topic = format!("vigil/{NODE}/cam0/{knob}/set");
        client
            .try_publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .unwrap();
    };
    let cam = || "cam0".to_string();
    let cases: Vec<(&str, &str, Command)> = vec![
        (
            "enabled",
            "true",
            Command::SetEnabled {
                camera: cam(),
                enabled: true,
            },
        ),
        (
            "enabled",
            "OFF",
            Command::SetEnabled {
                camera: cam(),
                enabled: false,
            },
        ),
        (
            "enabled",
            "\"ON\"",
            Command::SetEnabled {
                camera: cam(),
                enabled: true,
            },
        ),
        (
            "enabled",
            r#"{"enabled": false}"#,
            Command::SetEnabled {
                camera: cam(),
                enabled: false,
            },
        ),
        (
            "threshold",
            "-12.5",
            Command::SetThreshold {
                camera: cam(),
                log_density: -12.5,
            },
        ),
        (
            "threshold",
            r#"{"log_density": -3.25}"#,
            Command::SetThreshold {
                camera: cam(),
                log_density: -3.25,
            },
        ),
        (
            "calibrate",
            r#"{"frames": 50}"#,
            Command::Calibrate {
                camera: cam(),
                payload: serde_json::json!({"frames": 50}),
            },
        ),
    ];
    for (knob, payload, want) in cases {
        set(knob, payload);
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("command within 5 s")
            .expect("command channel open");
        assert_eq!(got, want, "{knob} <- {payload}");
    }

    // Refused: the retained .../<knob>/state carries the reason (and the last good value).
    set("enabled", "\"maybe\"");
    let m = sub
        .next_where(&format!("vigil/{NODE}/cam0/enabled/state"), |m| {
            m.json::<KnobState>().error.is_some()
        })
        .await;
    let ks: KnobState = m.json();
    assert!(
        ks.error.as_deref().unwrap_or("").contains("enabled:"),
        "{ks:?}"
    );
    assert_eq!(
        ks.value,
        serde_json::json!(true),
        "quotes the last reported value"
    );

    set("threshold", "abc");
    let ks: KnobState = sub
        .next_on(&format!("vigil/{NODE}/cam0/threshold/state"))
        .await
        .json();
    assert!(
        ks.error.as_deref().unwrap_or("").contains("not JSON"),
        "{ks:?}"
    );

    client
        .try_publish(
            format!("vigil/{NODE}/camX/enabled/set"),
            QoS::AtLeastOnce,
            false,
            b"true".to_vec(),
        )
        .unwrap();
    let ks: KnobState = sub
        .next_on(&format!("vigil/{NODE}/camX/enabled/state"))
        .await
        .json();
    assert!(
        ks.error.as_deref().unwrap_or("").contains("unknown camera"),
        "{ks:?}"
    );

    // The error state is retained.
    let mut late = Sub::connect(broker.port, &format!("vigil/{NODE}/cam0/threshold/state")).await;
    let m = late
        .next_on(&format!("vigil/{NODE}/cam0/threshold/state"))
        .await;
    assert!(m.retain);
    assert!(m.json::<KnobState>().error.is_some());

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "no command for refused payloads");
    assert_eq!(publisher.status().commands_refused, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_publishes_offline_explicitly_and_leaves_the_outbox_empty() {
    let _t = Timing(
        "shutdown_publishes_offline_explicitly_and_leaves_the_outbox_empty",
        Instant::now(),
    );
    let broker = Broker::start();
    let status_topic = format!("vigil/{NODE}/status");
    let mut sub = Sub::connect(broker.port, &format!("vigil/{NODE}/#")).await;
    let state = tempfile::tempdir().unwrap();
    let (publisher, _rx) = start(&cfg(broker.port), state.path()).await;
    sub.next_on(&status_topic).await;
    let other_handle = publisher.clone();

    for seq in 0..50 {
        publisher
            .publish_event("cam0", &event("cam0", seq))
            .unwrap();
    }
    let (_, t_ms) = timestamp(SystemTime::now());
    let t0 = Instant::now();
    publisher.shutdown().await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    eprintln!(
        "[measured] shutdown with 50 events just published: {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(outbox_files(state.path()).is_empty(), "outbox flushed");
    assert!(matches!(
        other_handle.publish_event("cam0", &event("cam0", 99)),
        Err(PublishError::Closed)
    ));

    let mut seqs = std::collections::BTreeSet::new();
    let mut offline: Option<Status> = None;
    while let Some(m) = sub.recv(Duration::from_millis(700)).await {
        if m.topic == status_topic {
            let s: Status = m.json();
            if s.status == "offline" {
                offline = Some(s);
            }
        } else if m.topic.ends_with("/event") {
            seqs.insert(m.json::<Event>().seq);
        }
    }
    assert_eq!(
        seqs.len(),
        50,
        "every event delivered before the disconnect"
    );
    let offline = offline.expect("offline status");
    // The Will carries the connect time; the explicit one is stamped at shutdown.
    assert!(
        offline.ts_ms >= t_ms,
        "explicit offline, not the Will: {offline:?}"
    );
    let mut late = Sub::connect(broker.port, &status_topic).await;
    let m = late.next_on(&status_topic).await;
    assert!(m.retain);
    assert_eq!(m.json::<Status>().status, "offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_broker_down_returns_within_the_flush_bound_and_keeps_the_outbox() {
    let _t = Timing(
        "shutdown_with_the_broker_down_returns_within_the_flush_bound_and_keeps_the_outbox",
        Instant::now(),
    );
    let state = tempfile::tempdir().unwrap();
    let (publisher, _rx) = start(&cfg(free_port()), state.path()).await;
    publisher.publish_event("cam0", &event("cam0", 0)).unwrap();
    let t0 = Instant::now();
    publisher.shutdown().await;
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    assert_eq!(
        outbox_files(state.path()).len(),
        1,
        "kept for the next start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_effort_publishing_from_a_plain_thread_never_blocks_and_counts_drops() {
    let _t = Timing(
        "best_effort_publishing_from_a_plain_thread_never_blocks_and_counts_drops",
        Instant::now(),
    );
    let broker = Broker::start();
    let state = tempfile::tempdir().unwrap();
    let c = MqttConfig {
        request_channel: 8,
        ..cfg(broker.port)
    };
    let (publisher, _rx) = start(&c, state.path()).await;
    wait_until("connected", Duration::from_secs(5), || {
        publisher.status().connected
    })
    .await;
    let p2 = publisher.clone();
    let worst = std::thread::spawn(move || {
        let jpeg = vec![0xffu8; 64 * 1024];
        let mut worst = Duration::ZERO;
        for _ in 0..2000 {
            let t = Instant::now();
            p2.publish_snapshot("cam0", jpeg.clone()).unwrap();
            worst = worst.max(t.elapsed());
        }
        worst
    })
    .join()
    .unwrap();
    let s = publisher.status();
    eprintln!(
        "[measured] 2000 × 64 KiB snapshots from an OS thread, channel 8: worst call {:?}, dropped {}",
        worst, s.best_effort_dropped
    );
    assert!(
        worst < Duration::from_millis(50),
        "a call blocked for {worst:?}"
    );
    assert!(s.best_effort_dropped > 0, "{s:?}");
    assert!(s.connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file_and_a_password_file_connects_and_a_wrong_password_is_refused() {
    let _t = Timing(
        "tls_with_a_ca_file_and_a_password_file_connects_and_a_wrong_password_is_refused",
        Instant::now(),
    );
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let run = |args: &[&str]| {
        let out = Proc::new(args[0])
            .args(&args[1..])
            .current_dir(d)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e} (apt-get install openssl mosquitto)", args[0]));
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["openssl", "req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=vigil test CA",
        ],
    ]
    .concat());
    run(&[
        &["openssl", "req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    run(&["mosquitto_passwd", "-c", "-b", "passwd", "vigil", "s3cret"]);
    std::fs::write(d.join("pw"), "s3cret\n").unwrap();
    std::fs::write(d.join("bad-pw"), "wrong\n").unwrap();

    let port = free_port();
    let dp = d.display();
    let broker = Broker::start_on(
        port,
        &format!(
            "cafile {dp}/ca.pem\ncertfile {dp}/server.pem\nkeyfile {dp}/server.key\n\
             allow_anonymous false\npassword_file {dp}/passwd\n"
        ),
    );
    let ca = std::fs::read(d.join("ca.pem")).unwrap();
    let status_topic = format!("vigil/{NODE}/status");
    let mut sub = Sub::connect_with(port, &status_topic, |o| {
        o.set_transport(Transport::tls(ca.clone(), None, None));
        o.set_credentials("vigil", "s3cret");
    })
    .await;

    let state = tempfile::tempdir().unwrap();
    let c = MqttConfig {
        url: format!("mqtts://127.0.0.1:{port}"),
        ca_file: Some(d.join("ca.pem")),
        username: Some("vigil".into()),
        password_file: Some(d.join("pw")),
        ..cfg(port)
    };
    let (publisher, _rx) = start(&c, state.path()).await;
    sub.next_where(&status_topic, |m| m.json::<Status>().status == "online")
        .await;
    assert!(publisher.status().connected);

    let state2 = tempfile::tempdir().unwrap();
    let wrong = MqttConfig {
        client_id: Some("vigil-wrong".into()),
        password_file: Some(d.join("bad-pw")),
        ..c
    };
    let (bad, _rx2) = start(&wrong, state2.path()).await;
    wait_until("refused attempt", Duration::from_secs(5), || {
        bad.status().connection_errors >= 1
    })
    .await;
    let s = bad.status();
    assert!(!s.connected);
    let err = s.last_error.unwrap_or_default();
    assert!(err.contains("refused"), "{err}");
    eprintln!("[measured] wrong password: {err}");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knob_sets_sent_while_the_node_was_killed_are_delivered_by_the_persistent_session() {
    let _t = Timing(
        "knob_sets_sent_while_the_node_was_killed_are_delivered_by_the_persistent_session",
        Instant::now(),
    );
    let broker = Broker::start();
    let state = tempfile::tempdir().unwrap();
    let mut child = spawn_child(&broker.url(), state.path(), 0);
    child.kill().expect("SIGKILL child");
    child.wait().expect("reap child");

    // SCADA sends while the node is away: the broker queues it in the node's session.
    let sub = Sub::connect(broker.port, "unrelated/#").await;
    sub.client
        .try_publish(
            format!("vigil/{NODE}/cam1/threshold/set"),
            QoS::AtLeastOnce,
            false,
            b"-7.5".to_vec(),
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Same node, same client id ("vigil-n1"): the queued set arrives.
    let (_publisher, mut rx) = start(&cfg(broker.port), state.path()).await;
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("queued command within 5 s");
    assert_eq!(
        got,
        Some(Command::SetThreshold {
            camera: "cam1".into(),
            log_density: -7.5
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos0_events_leave_the_outbox_once_written_to_the_socket() {
    let _t = Timing(
        "qos0_events_leave_the_outbox_once_written_to_the_socket",
        Instant::now(),
    );
    let broker = Broker::start();
    let event_topic = format!("vigil/{NODE}/cam0/event");
    let mut sub = Sub::connect(broker.port, &event_topic).await;
    let state = tempfile::tempdir().unwrap();
    let c = MqttConfig {
        qos: 0,
        ..cfg(broker.port)
    };
    let (publisher, _rx) = start(&c, state.path()).await;
    for seq in 0..5 {
        publisher
            .publish_event("cam0", &event("cam0", seq))
            .unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        seqs.push(sub.next_on(&event_topic).await.json::<Event>().seq);
    }
    assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    wait_until("outbox emptied", Duration::from_secs(5), || {
        publisher.status().outbox_len == 0
    })
    .await;
    assert_eq!(publisher.status().events_acked, 5);
    assert!(outbox_files(state.path()).is_empty());
}
