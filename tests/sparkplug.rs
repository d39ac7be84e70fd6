//! Sparkplug B 3.0 profile against a real broker (Debian mosquitto on a free loopback
//! port), in-process through [`SparkplugNode`] and as `vigil run` processes. Every payload
//! is decoded by the small protobuf wire-format reader below, written from the Sparkplug B
//! specification's field numbers and independent of the `prost` types the daemon uses.

mod common;

use common::daemon::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vigil::messages::{Event, Health, State, SCHEMA_EVENT, SCHEMA_HEALTH, SCHEMA_STATE};
use vigil::pipeline::Sink;
use vigil::publish::{Command as VigilCommand, MqttConfig};
use vigil::sparkplug::{SparkplugConfig, SparkplugNode};

// ---------------------------------------------------------------------------------------
// An independent Sparkplug B decoder / encoder (protobuf wire format by hand).

#[derive(Debug, Clone, PartialEq)]
enum V {
    Int(u32),
    Long(u64),
    Float(f32),
    Double(f64),
    Bool(bool),
    Str(String),
    Bytes(usize),
}

#[derive(Debug, Clone, Default)]
struct M {
    name: Option<String>,
    alias: Option<u64>,
    timestamp: Option<u64>,
    datatype: Option<u64>,
    is_null: bool,
    value: Option<V>,
}

#[derive(Debug, Clone, Default)]
struct P {
    timestamp: Option<u64>,
    seq: Option<u64>,
    metrics: Vec<M>,
}

enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
    }
    panic!("varint too long");
}

fn fields(b: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i);
        let f = match key & 7 {
            0 => Field::Varint(varint(b, &mut i)),
            1 => {
                let v = u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
                i += 8;
                Field::Fixed64(v)
            }
            2 => {
                let n = varint(b, &mut i) as usize;
                let s = &b[i..i + n];
                i += n;
                Field::Bytes(s)
            }
            5 => {
                let v = u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
                i += 4;
                Field::Fixed32(v)
            }
            wt => panic!("unexpected wire type {wt}"),
        };
        out.push((key >> 3, f));
    }
    out
}

fn decode_metric(b: &[u8]) -> M {
    let mut m = M::default();
    for (n, f) in fields(b) {
        match (n, f) {
            (1, Field::Bytes(s)) => m.name = Some(String::from_utf8(s.to_vec()).expect("utf8")),
            (2, Field::Varint(v)) => m.alias = Some(v),
            (3, Field::Varint(v)) => m.timestamp = Some(v),
            (4, Field::Varint(v)) => m.datatype = Some(v),
            (7, Field::Varint(v)) => m.is_null = v != 0,
            (10, Field::Varint(v)) => m.value = Some(V::Int(v as u32)),
            (11, Field::Varint(v)) => m.value = Some(V::Long(v)),
            (12, Field::Fixed32(v)) => m.value = Some(V::Float(f32::from_bits(v))),
            (13, Field::Fixed64(v)) => m.value = Some(V::Double(f64::from_bits(v))),
            (14, Field::Varint(v)) => m.value = Some(V::Bool(v != 0)),
            (15, Field::Bytes(s)) => {
                m.value = Some(V::Str(String::from_utf8(s.to_vec()).expect("utf8")))
            }
            (16, Field::Bytes(s)) => m.value = Some(V::Bytes(s.len())),
            (n, _) => panic!("unexpected metric field {n}"),
        }
    }
    m
}

fn decode(b: &[u8]) -> P {
    let mut p = P::default();
    for (n, f) in fields(b) {
        match (n, f) {
            (1, Field::Varint(v)) => p.timestamp = Some(v),
            (2, Field::Bytes(s)) => p.metrics.push(decode_metric(s)),
            (3, Field::Varint(v)) => p.seq = Some(v),
            (n, _) => panic!("unexpected payload field {n}"),
        }
    }
    p
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A command payload with one metric: `name` or `alias`, data type, value.
fn encode_command(name: Option<&str>, alias: Option<u64>, datatype: u64, value: V) -> Vec<u8> {
    let mut m = Vec::new();
    if let Some(name) = name {
        m.push(0x0a);
        put_varint(&mut m, name.len() as u64);
        m.extend_from_slice(name.as_bytes());
    }
    if let Some(a) = alias {
        m.push(0x10);
        put_varint(&mut m, a);
    }
    m.push(0x20);
    put_varint(&mut m, datatype);
    match value {
        V::Bool(b) => {
            m.push(0x70);
            m.push(u8::from(b));
        }
        V::Float(f) => {
            m.push((12 << 3) | 5);
            m.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        other => panic!("not encoded: {other:?}"),
    }
    let mut p = vec![0x08];
    put_varint(&mut p, 1_700_000_000_000);
    p.push(0x12);
    put_varint(&mut p, m.len() as u64);
    p.extend(m);
    p
}

const UINT64: u64 = 8;
const FLOAT: u64 = 9;
const DOUBLE: u64 = 10;
const BOOLEAN: u64 = 11;
const STRING: u64 = 12;

/// The 8 device metrics and their data types.
const DEVICE_METRICS: [(&str, u64); 8] = [
    ("Anomaly/Active", BOOLEAN),
    ("Anomaly/Score", FLOAT),
    ("Anomaly/LogDensity", DOUBLE),
    ("Anomaly/Threshold", FLOAT),
    ("Anomaly/EventCount", UINT64),
    ("Camera/Online", BOOLEAN),
    ("Inference/FPS", FLOAT),
    ("Model/Id", STRING),
];

// ---------------------------------------------------------------------------------------
// Broker, subscriber, publisher.

/// A decoded Sparkplug message: verb, device (if any), payload.
#[derive(Debug, Clone)]
struct Sp {
    verb: String,
    device: Option<String>,
    p: P,
}

/// The Sparkplug messages of `group`/`node`, in arrival order, decoded.
fn sp_of(m: &[(String, Vec<u8>)], group: &str, node: &str) -> Vec<Sp> {
    m.iter()
        .filter_map(|(t, payload)| {
            let l: Vec<&str> = t.split('/').collect();
            if l.len() < 4 || l[0] != "spBv1.0" || l[1] != group || l[3] != node {
                return None;
            }
            Some(Sp {
                verb: l[2].to_string(),
                device: l.get(4).map(|d| d.to_string()),
                p: decode(payload),
            })
        })
        .collect()
}

/// [`wait_for_with`], listing Sparkplug payloads decoded.
fn wait_for(
    msgs: &Messages,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[(String, Vec<u8>)]) -> bool,
) -> Vec<(String, Vec<u8>)> {
    wait_for_with(msgs, what, timeout, pred, |t, p| {
        if !t.starts_with("spBv1.0/") {
            return format!("{t} {} bytes", p.len());
        }
        let d = decode(p);
        let ms: Vec<String> = d
            .metrics
            .iter()
            .map(|m| {
                let name = m
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("#{}", m.alias.unwrap_or(0)));
                format!("{name}={:?}", m.value)
            })
            .collect();
        format!("{t} seq={:?} {}", d.seq, ms.join(" "))
    })
}

fn count(sp: &[Sp], verb: &str, device: Option<&str>) -> usize {
    sp.iter()
        .filter(|s| s.verb == verb && s.device.as_deref() == device)
        .count()
}

fn metric<'a>(p: &'a P, name: &str) -> &'a M {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no metric {name} in {p:?}"))
}

/// Every message of the node but NDEATH carries a seq; NBIRTH has 0 and each following
/// message the previous one + 1 (mod 256), until the next NBIRTH.
fn check_seq(sp: &[Sp]) {
    let mut prev: Option<u64> = None;
    for s in sp {
        match s.verb.as_str() {
            "NDEATH" => {
                assert_eq!(s.p.seq, None, "NDEATH has no seq");
                prev = None;
            }
            "NCMD" | "DCMD" => {}
            verb => {
                let seq = s.p.seq.unwrap_or_else(|| panic!("{verb} without seq"));
                assert!(seq <= 255);
                if verb == "NBIRTH" {
                    assert_eq!(seq, 0, "NBIRTH seq");
                } else {
                    let p = prev.unwrap_or_else(|| panic!("{verb} before any NBIRTH"));
                    assert_eq!(seq, (p + 1) % 256, "{verb} {:?} after seq {p}", s.device);
                }
                prev = Some(seq);
            }
        }
    }
}

/// NBIRTH: seq 0, the bdSeq (UInt64), `Node Control/Rebirth` (Boolean false); the bdSeq.
fn check_nbirth(p: &P) -> u64 {
    assert_eq!(p.seq, Some(0));
    assert!(p.timestamp.is_some_and(|t| t > 1_600_000_000_000));
    let bd = metric(p, "bdSeq");
    assert_eq!(bd.datatype, Some(UINT64));
    let rebirth = metric(p, "Node Control/Rebirth");
    assert_eq!(rebirth.datatype, Some(BOOLEAN));
    assert_eq!(rebirth.value, Some(V::Bool(false)));
    match bd.value {
        Some(V::Long(v)) => v,
        ref other => panic!("bdSeq value {other:?}"),
    }
}

/// DBIRTH: all 8 metrics with name, alias, data type, and value or is_null; the aliases.
fn check_dbirth(p: &P) -> Vec<(String, u64)> {
    assert_eq!(p.metrics.len(), 8, "{p:?}");
    DEVICE_METRICS
        .iter()
        .map(|(name, dt)| {
            let m = metric(p, name);
            assert_eq!(m.datatype, Some(*dt), "{name} datatype");
            assert!(m.value.is_some() || m.is_null, "{name}: value or is_null");
            assert!(m.timestamp.is_some(), "{name} timestamp");
            let ok = matches!(
                (&m.value, *dt),
                (None, _)
                    | (Some(V::Bool(_)), BOOLEAN)
                    | (Some(V::Float(_)), FLOAT)
                    | (Some(V::Double(_)), DOUBLE)
                    | (Some(V::Long(_)), UINT64)
                    | (Some(V::Str(_)), STRING)
            );
            assert!(
                ok,
                "{name}: value {:?} does not match datatype {dt}",
                m.value
            );
            (name.to_string(), m.alias.expect("alias"))
        })
        .collect()
}

fn alias_of(aliases: &[(String, u64)], name: &str) -> u64 {
    aliases
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, a)| *a)
        .expect("alias")
}

/// DDATA of a device carrying the metric of `alias`: the values, in order.
fn ddata_values(sp: &[Sp], device: &str, alias: u64) -> Vec<V> {
    sp.iter()
        .filter(|s| s.verb == "DDATA" && s.device.as_deref() == Some(device))
        .flat_map(|s| s.p.metrics.iter())
        .filter(|m| m.alias == Some(alias))
        .filter_map(|m| m.value.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------
// In process, through the SparkplugNode API.

fn mqtt_cfg(port: u16) -> MqttConfig {
    MqttConfig {
        url: format!("mqtt://127.0.0.1:{port}"),
        keep_alive_s: 5,
        reconnect_min_s: 0.1,
        reconnect_max_s: 0.5,
        ..MqttConfig::default()
    }
}

fn state(camera: &str, score: f64, log_density: f64, threshold: f64) -> State {
    let (ts, ts_ms) = vigil::messages::timestamp(std::time::SystemTime::now());
    State {
        schema: SCHEMA_STATE.into(),
        node: "n".into(),
        camera: camera.into(),
        ts,
        ts_ms,
        anomalous: log_density < threshold,
        score,
        log_density,
        threshold,
        model_id: "model-a".into(),
        enabled: true,
        calibrating: false,
    }
}

fn health(camera: &str, state: &str, fps: f64) -> Health {
    let (ts, ts_ms) = vigil::messages::timestamp(std::time::SystemTime::now());
    Health {
        schema: SCHEMA_HEALTH.into(),
        node: "n".into(),
        camera: camera.into(),
        ts,
        ts_ms,
        state: state.into(),
        fps,
        last_frame_ts: None,
        frames_captured: 0,
        frames_scored: 0,
        dropped_frames: 0,
        error: None,
    }
}

fn event_start(camera: &str) -> Event {
    let (ts, ts_ms) = vigil::messages::timestamp(std::time::SystemTime::now());
    Event {
        schema: SCHEMA_EVENT.into(),
        id: "ev1".into(),
        r#type: "start".into(),
        node: "n".into(),
        camera: camera.into(),
        ts_start: ts.clone(),
        ts_start_ms: ts_ms,
        ts,
        ts_ms,
        peak_score: 0.9,
        peak_log_density: -9.0,
        threshold: -3.0,
        frames: 2,
        snapshot_topic: String::new(),
        model_id: "model-a".into(),
        seq: 1,
    }
}

const GROUP: &str = "plant";
const EDGE: &str = "edge1";

fn sp_cfg() -> SparkplugConfig {
    SparkplugConfig {
        group_id: GROUP.into(),
        edge_node_id: Some(EDGE.into()),
        ..SparkplugConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_births_reports_by_exception_dies_per_camera_rebirths_takes_dcmd_and_says_ndeath() {
    let broker = Broker::start();
    let port = broker.port;
    let dir = tempfile::tempdir().expect("tmp");
    let msgs = subscribe(port, "spBv1.0/#");
    let cams = vec!["cam0".to_string(), "cam1".to_string()];
    let (node, mut rx) =
        SparkplugNode::start(&mqtt_cfg(port), &sp_cfg(), "n", cams.clone(), dir.path())
            .expect("start");
    let births = |m: &[(String, Vec<u8>)]| {
        let sp = sp_of(m, GROUP, EDGE);
        count(&sp, "NBIRTH", None) >= 1 && count(&sp, "DBIRTH", Some("cam1")) >= 1
    };
    let m =
        tokio::task::block_in_place(|| wait_for(&msgs, "births", Duration::from_secs(10), births));
    let sp = sp_of(&m, GROUP, EDGE);
    assert_eq!(sp[0].verb, "NBIRTH", "NBIRTH first: {sp:?}");
    assert_eq!(check_nbirth(&sp[0].p), 0, "bdSeq starts at 0");
    let mut all_aliases = vec![alias_of(
        &[(
            "r".to_string(),
            metric(&sp[0].p, "Node Control/Rebirth")
                .alias
                .expect("alias"),
        )],
        "r",
    )];
    let mut aliases = Vec::new();
    for cam in &cams {
        let db = sp
            .iter()
            .find(|s| s.verb == "DBIRTH" && s.device.as_deref() == Some(cam))
            .expect("dbirth");
        let a = check_dbirth(&db.p);
        all_aliases.extend(a.iter().map(|(_, a)| *a));
        // Nothing is known yet but the event count.
        assert!(metric(&db.p, "Anomaly/Score").is_null);
        assert_eq!(metric(&db.p, "Anomaly/EventCount").value, Some(V::Long(0)));
        aliases.push(a);
    }
    let n = all_aliases.len();
    all_aliases.sort_unstable();
    all_aliases.dedup();
    assert_eq!(all_aliases.len(), n, "aliases unique across the node");

    // State, event, health → DDATA by alias; a change within the deadband is not reported.
    node.state("cam0", &state("cam0", 0.30, -2.0, -3.0));
    node.state("cam0", &state("cam0", 0.305, -2.01, -3.0));
    node.state("cam0", &state("cam0", 0.90, -9.0, -3.0));
    node.event("cam0", &event_start("cam0"));
    node.health("cam0", &health("cam0", "ok", 5.0));
    node.snapshot("cam0", vec![0xFF, 0xD8, 0xFF]);
    let a0 = &aliases[0];
    let score = alias_of(a0, "Anomaly/Score");
    let m = tokio::task::block_in_place(|| {
        wait_for(&msgs, "DDATA", Duration::from_secs(10), |m| {
            let sp = sp_of(m, GROUP, EDGE);
            ddata_values(&sp, "cam0", alias_of(a0, "Camera/Online")).len() == 1
        })
    });
    let sp = sp_of(&m, GROUP, EDGE);
    for s in sp.iter().filter(|s| s.verb == "DDATA") {
        for mm in &s.p.metrics {
            assert_eq!(mm.name, None, "DDATA metrics carry the alias only");
            assert!(a0.iter().any(|(_, a)| Some(*a) == mm.alias));
        }
    }
    assert_eq!(
        ddata_values(&sp, "cam0", score),
        [V::Float(0.30), V::Float(0.90)],
        "0.305 is within the 0.01 deadband"
    );
    assert_eq!(
        ddata_values(&sp, "cam0", alias_of(a0, "Anomaly/LogDensity")),
        [V::Double(-2.0), V::Double(-9.0)]
    );
    assert_eq!(
        ddata_values(&sp, "cam0", alias_of(a0, "Anomaly/Active")),
        [V::Bool(false), V::Bool(true)]
    );
    assert_eq!(
        ddata_values(&sp, "cam0", alias_of(a0, "Anomaly/Threshold")),
        [V::Float(-3.0)]
    );
    assert_eq!(
        ddata_values(&sp, "cam0", alias_of(a0, "Model/Id")),
        [V::Str("model-a".into())]
    );
    assert_eq!(
        ddata_values(&sp, "cam0", alias_of(a0, "Anomaly/EventCount")),
        [V::Long(1)]
    );
    assert_eq!(
        ddata_values(&sp, "cam0", alias_of(a0, "Inference/FPS")),
        [V::Float(5.0)]
    );
    assert!(
        !m.iter().any(|(_, p)| p.len() > 1024
            || decode(p)
                .metrics
                .iter()
                .any(|m| matches!(m.value, Some(V::Bytes(_))))),
        "no images inside Sparkplug"
    );

    // A stalled camera dies; while dead nothing is reported; back ok it is born again with
    // its current values.
    node.health("cam0", &health("cam0", "stalled", 0.0));
    node.state("cam0", &state("cam0", 0.10, -1.0, -3.0));
    node.health("cam0", &health("cam0", "ok", 4.0));
    let m = tokio::task::block_in_place(|| {
        wait_for(&msgs, "DDEATH then DBIRTH", Duration::from_secs(10), |m| {
            count(&sp_of(m, GROUP, EDGE), "DBIRTH", Some("cam0")) == 2
        })
    });
    let sp = sp_of(&m, GROUP, EDGE);
    let death = sp
        .iter()
        .position(|s| s.verb == "DDEATH" && s.device.as_deref() == Some("cam0"))
        .expect("DDEATH");
    let rebirth = sp
        .iter()
        .rposition(|s| s.verb == "DBIRTH" && s.device.as_deref() == Some("cam0"))
        .expect("DBIRTH");
    assert!(death < rebirth);
    assert!(
        !sp[death..rebirth]
            .iter()
            .any(|s| s.verb == "DDATA" && s.device.as_deref() == Some("cam0")),
        "no DDATA of a dead device"
    );
    let db = &sp[rebirth].p;
    check_dbirth(db);
    assert_eq!(metric(db, "Anomaly/Score").value, Some(V::Float(0.10)));
    assert_eq!(metric(db, "Anomaly/Active").value, Some(V::Bool(false)));
    assert_eq!(metric(db, "Camera/Online").value, Some(V::Bool(true)));
    assert_eq!(metric(db, "Anomaly/EventCount").value, Some(V::Long(1)));

    // A host asks for a rebirth: NBIRTH (seq 0, same bdSeq: same connection) and DBIRTHs.
    let rebirth_cmd = encode_command(Some("Node Control/Rebirth"), None, BOOLEAN, V::Bool(true));
    tokio::task::block_in_place(|| {
        publish(port, &format!("spBv1.0/{GROUP}/NCMD/{EDGE}"), rebirth_cmd)
    });
    let m = tokio::task::block_in_place(|| {
        wait_for(&msgs, "rebirth", Duration::from_secs(10), |m| {
            let sp = sp_of(m, GROUP, EDGE);
            count(&sp, "NBIRTH", None) == 2 && count(&sp, "DBIRTH", Some("cam1")) == 2
        })
    });
    let sp = sp_of(&m, GROUP, EDGE);
    let nb = sp.iter().rposition(|s| s.verb == "NBIRTH").expect("nbirth");
    assert_eq!(check_nbirth(&sp[nb].p), 0, "a rebirth keeps the bdSeq");

    // DCMD writes cam1's threshold by alias: a command for the daemon, and a DDATA with it.
    // A read-only metric is refused.
    let a1 = &aliases[1];
    let write = encode_command(
        None,
        Some(alias_of(a1, "Anomaly/Threshold")),
        FLOAT,
        V::Float(-4.5),
    );
    let read_only = encode_command(Some("Anomaly/Score"), None, FLOAT, V::Float(0.0));
    tokio::task::block_in_place(|| {
        publish(
            port,
            &format!("spBv1.0/{GROUP}/DCMD/{EDGE}/cam1"),
            read_only,
        );
        publish(port, &format!("spBv1.0/{GROUP}/DCMD/{EDGE}/cam1"), write);
    });
    let cmd = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("command in time")
        .expect("command");
    assert_eq!(
        cmd,
        VigilCommand::SetThreshold {
            camera: "cam1".into(),
            log_density: -4.5
        }
    );
    let m = tokio::task::block_in_place(|| {
        wait_for(&msgs, "threshold DDATA", Duration::from_secs(10), |m| {
            ddata_values(
                &sp_of(m, GROUP, EDGE),
                "cam1",
                alias_of(a1, "Anomaly/Threshold"),
            ) == [V::Float(-4.5)]
        })
    });
    assert!(
        rx.try_recv().is_err(),
        "the read-only write is not forwarded"
    );
    let st = node.status();
    assert_eq!(st.commands_refused, 1);
    assert_eq!(st.rebirth_requests, 1);
    assert_eq!(st.commands_forwarded, 1);
    check_seq(&sp_of(&m, GROUP, EDGE));

    // A clean shutdown publishes the NDEATH with the connection's bdSeq.
    node.shutdown().await;
    let m = tokio::task::block_in_place(|| {
        wait_for(&msgs, "NDEATH", Duration::from_secs(10), |m| {
            count(&sp_of(m, GROUP, EDGE), "NDEATH", None) == 1
        })
    });
    let sp = sp_of(&m, GROUP, EDGE);
    let nd = sp.last().expect("last");
    assert_eq!(nd.verb, "NDEATH");
    assert_eq!(metric(&nd.p, "bdSeq").value, Some(V::Long(0)));
    assert_eq!(metric(&nd.p, "bdSeq").datatype, Some(UINT64));
    check_seq(&sp);

    // The next start (same state dir) connects with bdSeq 1; a broker restart is a new
    // connection (bdSeq 2, new births); dropped without shutdown, the broker publishes
    // the Will: NDEATH with bdSeq 2.
    let (node, _rx) =
        SparkplugNode::start(&mqtt_cfg(port), &sp_cfg(), "n", cams, dir.path()).expect("restart");
    let m = tokio::task::block_in_place(|| {
        wait_for(
            &msgs,
            "NBIRTH after restart",
            Duration::from_secs(10),
            |m| count(&sp_of(m, GROUP, EDGE), "NBIRTH", None) == 3,
        )
    });
    let sp = sp_of(&m, GROUP, EDGE);
    let nb = sp.iter().rposition(|s| s.verb == "NBIRTH").expect("nbirth");
    assert_eq!(
        check_nbirth(&sp[nb].p),
        1,
        "bdSeq persisted and incremented"
    );
    drop(broker);
    let broker = Broker::start_on(port);
    // The node reconnects (a new connection: bdSeq 2). Its births may beat a subscriber
    // back, so a fresh subscriber asks for a rebirth to see them.
    let t0 = Instant::now();
    while !(node.status().connects >= 2 && node.status().born) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no reconnect: {:?}",
            node.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.status().bd_seq, 2);
    let msgs = tokio::task::block_in_place(|| subscribe(port, "spBv1.0/#"));
    let rebirth_cmd = encode_command(Some("Node Control/Rebirth"), None, BOOLEAN, V::Bool(true));
    tokio::task::block_in_place(|| {
        publish(port, &format!("spBv1.0/{GROUP}/NCMD/{EDGE}"), rebirth_cmd)
    });
    let m = tokio::task::block_in_place(|| {
        wait_for(
            &msgs,
            "NBIRTH after a broker restart",
            Duration::from_secs(10),
            // (The tail of the reconnect's births may precede the rebirth's.)
            |m| {
                let sp = sp_of(m, GROUP, EDGE);
                sp.iter()
                    .rposition(|s| s.verb == "NBIRTH")
                    .is_some_and(|nb| count(&sp[nb..], "DBIRTH", Some("cam1")) == 1)
            },
        )
    });
    let sp = sp_of(&m, GROUP, EDGE);
    let nb = sp
        .iter()
        .rev()
        .find(|s| s.verb == "NBIRTH")
        .expect("NBIRTH");
    assert_eq!(check_nbirth(&nb.p), 2);
    drop(node);
    let m = tokio::task::block_in_place(|| {
        wait_for(&msgs, "NDEATH Will", Duration::from_secs(10), |m| {
            count(&sp_of(m, GROUP, EDGE), "NDEATH", None) == 1
        })
    });
    let sp = sp_of(&m, GROUP, EDGE);
    let nd = sp.last().expect("last");
    assert_eq!(nd.verb, "NDEATH");
    assert_eq!(nd.p.seq, None);
    assert_eq!(
        metric(&nd.p, "bdSeq").value,
        Some(V::Long(2)),
        "the Will carries the bdSeq of its connection"
    );
    let first = sp.iter().position(|s| s.verb == "NBIRTH").expect("NBIRTH");
    check_seq(&sp[first..]);
    drop(broker);
}

// ---------------------------------------------------------------------------------------
// `vigil run` as a process (harness: tests/common/daemon.rs).

/// One folder camera at 10 fps (not looping); `mqtt` holds the extra `[mqtt]` lines
/// (profile, sub-table last).
fn write_config(root: &Path, port: u16, frames: &Path, mqtt: &str) -> PathBuf {
    let extra = Extra {
        mqtt,
        ..Extra::default()
    };
    write_folder_config(root, port, frames, NODE, extra, 10)
}

const SPARKPLUG: &str = "profile = \"sparkplug\"\n[mqtt.sparkplug]\ngroup_id = \"plant\"\n";
const NODE: &str = "testnode";

/// The DBIRTH aliases of cam1 in `sp` (the last DBIRTH).
fn cam1_aliases(sp: &[Sp]) -> Vec<(String, u64)> {
    let db = sp
        .iter()
        .rev()
        .find(|s| s.verb == "DBIRTH" && s.device.as_deref() == Some("cam1"))
        .expect("DBIRTH cam1");
    check_dbirth(&db.p)
}

#[test]
fn daemon_sparkplug_births_reports_dies_with_its_source_ndeath_on_kill_and_obeys_rebirth_and_dcmd()
{
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let config = write_config(dir.path(), broker.port, &frames, SPARKPLUG);
    let check = Command::new(vigil_bin())
        .args(["check-config", config.to_str().expect("p")])
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let msgs = subscribe(broker.port, "#");

    // Run 1 (the folder plays once): births, data by exception, DDEATH when it ends.
    let mut daemon = spawn_daemon(&config);
    let m = wait_for(
        &msgs,
        "DDEATH of cam1 when its source ended",
        Duration::from_secs(120),
        |m| count(&sp_of(m, GROUP, NODE), "DDEATH", Some("cam1")) == 1,
    );
    assert!(
        m.iter().all(|(t, _)| t.starts_with("spBv1.0/")),
        "profile sparkplug publishes no plain topic: {:?}",
        m.iter().map(|(t, _)| t).collect::<Vec<_>>()
    );
    let sp = sp_of(&m, GROUP, NODE);
    assert_eq!(sp[0].verb, "NBIRTH");
    let bd0 = check_nbirth(&sp[0].p);
    let aliases = cam1_aliases(&sp);
    for s in sp.iter().filter(|s| s.verb == "DDATA") {
        for mm in &s.p.metrics {
            assert_eq!(mm.name, None, "DDATA by alias only");
            assert!(aliases.iter().any(|(_, a)| Some(*a) == mm.alias), "{mm:?}");
        }
    }
    let active = ddata_values(&sp, "cam1", alias_of(&aliases, "Anomaly/Active"));
    assert!(
        active.contains(&V::Bool(true)),
        "fray frames are anomalous: {active:?}"
    );
    assert!(!ddata_values(&sp, "cam1", alias_of(&aliases, "Anomaly/Score")).is_empty());
    let events = ddata_values(&sp, "cam1", alias_of(&aliases, "Anomaly/EventCount"));
    assert!(
        events.iter().any(|v| matches!(v, V::Long(n) if *n >= 1)),
        "{events:?}"
    );
    let model_id = sp
        .iter()
        .filter(|s| s.device.as_deref() == Some("cam1"))
        .flat_map(|s| s.p.metrics.iter())
        .filter(|mm| mm.alias == Some(alias_of(&aliases, "Model/Id")))
        .find_map(|mm| match &mm.value {
            Some(V::Str(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        });
    assert!(model_id.is_some(), "Model/Id reported");
    check_seq(&sp);

    // SIGKILL: the broker publishes the Will, NDEATH with the NBIRTH's bdSeq.
    daemon.kill().expect("SIGKILL");
    let _ = daemon.wait();
    let m = wait_for(&msgs, "NDEATH Will", Duration::from_secs(20), |m| {
        count(&sp_of(m, GROUP, NODE), "NDEATH", None) == 1
    });
    let sp = sp_of(&m, GROUP, NODE);
    let nd = sp.last().expect("last");
    assert_eq!(nd.verb, "NDEATH");
    assert_eq!(nd.p.seq, None);
    assert_eq!(metric(&nd.p, "bdSeq").value, Some(V::Long(bd0)));
    let run1 = sp.len();

    // Run 2 (looping): bdSeq persisted and incremented, rebirth on NCMD, threshold by DCMD.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .expect("read")
            .replace("loop = false", "loop = true"),
    )
    .expect("write");
    let mut daemon = spawn_daemon(&config);
    let m = wait_for(
        &msgs,
        "births and data of run 2",
        Duration::from_secs(60),
        |m| {
            let sp = sp_of(m, GROUP, NODE);
            sp.len() > run1 && count(&sp[run1..], "DDATA", Some("cam1")) >= 1
        },
    );
    let sp = sp_of(&m, GROUP, NODE);
    assert_eq!(sp[run1].verb, "NBIRTH");
    assert_eq!(
        check_nbirth(&sp[run1].p),
        (bd0 + 1) % 256,
        "bdSeq persisted across restarts"
    );

    publish(
        broker.port,
        &format!("spBv1.0/{GROUP}/NCMD/{NODE}"),
        encode_command(Some("Node Control/Rebirth"), None, BOOLEAN, V::Bool(true)),
    );
    let m = wait_for(&msgs, "rebirth", Duration::from_secs(20), |m| {
        let sp = sp_of(m, GROUP, NODE);
        count(&sp[run1..], "NBIRTH", None) == 2 && count(&sp[run1..], "DBIRTH", Some("cam1")) == 2
    });
    let sp = sp_of(&m, GROUP, NODE);
    let nb = sp.iter().rposition(|s| s.verb == "NBIRTH").expect("nbirth");
    assert_eq!(
        check_nbirth(&sp[nb].p),
        (bd0 + 1) % 256,
        "same connection, same bdSeq"
    );

    // Every frame is anomalous below a log-density threshold of 1e30: once applied, the
    // camera stays active through the normal frames of the loop (3.6 s per pass).
    let rebirth_at = sp.len();
    publish(
        broker.port,
        &format!("spBv1.0/{GROUP}/DCMD/{NODE}/cam1"),
        encode_command(Some("Anomaly/Threshold"), None, FLOAT, V::Float(1e30)),
    );
    let threshold = alias_of(&aliases, "Anomaly/Threshold");
    let active = alias_of(&aliases, "Anomaly/Active");
    wait_for(
        &msgs,
        "the new threshold in DDATA",
        Duration::from_secs(20),
        |m| {
            let sp = sp_of(m, GROUP, NODE);
            ddata_values(&sp[rebirth_at..], "cam1", threshold).contains(&V::Float(1e30))
        },
    );
    // Active as last born or reported (a rebirth re-states it without a DDATA).
    let last_active = |sp: &[Sp]| {
        sp.iter()
            .filter(|s| {
                s.device.as_deref() == Some("cam1") && (s.verb == "DDATA" || s.verb == "DBIRTH")
            })
            .flat_map(|s| s.p.metrics.iter())
            .filter(|m| m.alias == Some(active))
            .filter_map(|m| m.value.clone())
            .next_back()
    };
    let m = wait_for(
        &msgs,
        "active under the new threshold",
        Duration::from_secs(20),
        |m| last_active(&sp_of(m, GROUP, NODE)) == Some(V::Bool(true)),
    );
    let applied_at = sp_of(&m, GROUP, NODE).len();
    std::thread::sleep(Duration::from_secs(6));
    let sp = sp_of(&snapshot(&msgs), GROUP, NODE);
    assert!(
        !ddata_values(&sp[applied_at..], "cam1", active).contains(&V::Bool(false)),
        "the daemon applied the threshold: no normal verdict afterwards"
    );
    assert!(
        ddata_values(
            &sp[applied_at..],
            "cam1",
            alias_of(&aliases, "Anomaly/Score")
        )
        .len()
            >= 2,
        "frames kept being scored"
    );
    let log = std::fs::read_to_string(config.with_extension("log")).expect("log");
    assert!(
        log.contains("threshold set remotely"),
        "the daemon applied the DCMD"
    );

    // SIGTERM: an explicit NDEATH with this connection's bdSeq, clean exit.
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());
    let m = wait_for(&msgs, "NDEATH on SIGTERM", Duration::from_secs(10), |m| {
        count(&sp_of(m, GROUP, NODE), "NDEATH", None) == 2
    });
    let sp = sp_of(&m, GROUP, NODE);
    let nd = sp.last().expect("last");
    assert_eq!(nd.verb, "NDEATH");
    assert_eq!(metric(&nd.p, "bdSeq").value, Some(V::Long((bd0 + 1) % 256)));
    check_seq(&sp);
    assert!(
        m.iter().all(|(t, _)| t.starts_with("spBv1.0/")),
        "no plain topic in run 2 either"
    );
}

#[test]
fn profile_both_keeps_images_on_the_plain_topics_and_profile_plain_publishes_nothing_under_spbv1_0()
{
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let both = "profile = \"both\"\n[mqtt.sparkplug]\ngroup_id = \"plant\"\n";
    let config = write_config(dir.path(), broker.port, &frames, both);
    let msgs = subscribe(broker.port, "#");
    let mut daemon = spawn_daemon(&config);
    let m = wait_for(
        &msgs,
        "plain event + snapshot and Sparkplug data",
        Duration::from_secs(120),
        |m| {
            let sp = sp_of(m, GROUP, NODE);
            let plain_event = m.iter().any(|(t, _)| t == "vigil/testnode/cam1/event");
            let snapshot = m
                .iter()
                .any(|(t, p)| t == "vigil/testnode/cam1/snapshot" && p.starts_with(&[0xFF, 0xD8]));
            let count_ok = sp.iter().any(|s| {
                s.verb == "DDATA" && s.p.metrics.iter().any(|mm| mm.value == Some(V::Long(1)))
            });
            plain_event && snapshot && count_ok
        },
    );
    let sp = sp_of(&m, GROUP, NODE);
    assert_eq!(sp[0].verb, "NBIRTH");
    cam1_aliases(&sp);
    for (t, p) in m.iter().filter(|(t, _)| t.starts_with("spBv1.0/")) {
        assert!(
            p.len() < 1024,
            "{t}: {} bytes: no images inside Sparkplug",
            p.len()
        );
        assert!(
            !decode(p)
                .metrics
                .iter()
                .any(|mm| matches!(mm.value, Some(V::Bytes(_)))),
            "{t}: bytes metric"
        );
    }
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());
    wait_for(&msgs, "NDEATH", Duration::from_secs(10), |m| {
        count(&sp_of(m, GROUP, NODE), "NDEATH", None) == 1
    });
    check_seq(&sp_of(&snapshot(&msgs), GROUP, NODE));

    // The default profile (plain): nothing under spBv1.0.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .expect("read")
            .replace("profile = \"both\"\n", ""),
    )
    .expect("write");
    let msgs = subscribe(broker.port, "#");
    let mut daemon = spawn_daemon(&config);
    wait_for(
        &msgs,
        "plain online status and a state",
        Duration::from_secs(60),
        |m| {
            m.iter().any(|(t, p)| {
                t == "vigil/testnode/status" && String::from_utf8_lossy(p).contains("\"online\"")
            }) && m
                .iter()
                .filter(|(t, _)| t == "vigil/testnode/cam1/state")
                .count()
                >= 3
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());
    let m = snapshot(&msgs);
    let sp: Vec<&String> = m
        .iter()
        .map(|(t, _)| t)
        .filter(|t| t.starts_with("spBv1.0/"))
        .collect();
    assert!(sp.is_empty(), "profile plain published {sp:?}");
}

#[test]
fn check_config_refuses_a_bad_sparkplug_table() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.toml");
    for (table, needle) in [
        (
            "profile = \"sparkplug\"\n[mqtt.sparkplug]\ngroup_id = \"a/b\"\n",
            "group_id",
        ),
        ("[mqtt.sparkplug]\nedge_node_id = \"x#\"\n", "edge_node_id"),
        ("[mqtt.sparkplug]\nscore_deadband = -1\n", "score_deadband"),
        ("[mqtt.sparkplug]\ngroupid = \"g\"\n", "groupid"),
        ("profile = \"tahu\"\n", "tahu"),
    ] {
        std::fs::write(
            &path,
            format!("node = \"n\"\n[[camera]]\nid = \"c\"\n[camera.source]\ntype = \"synthetic\"\n[mqtt]\n{table}"),
        )
        .expect("write");
        let out = Command::new(vigil_bin())
            .args(["check-config", path.to_str().expect("p")])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{table}: {err}");
        assert!(err.contains(needle), "{table}: {err}");
    }
}
