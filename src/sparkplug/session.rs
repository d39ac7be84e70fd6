//! The Sparkplug edge node's session rules, without I/O: topics, `seq` (0..=255, one run
//! per birth), `bdSeq`, metric aliases, the current value of every metric, report by
//! exception with deadbands, device births and deaths, and the parsing of NCMD / DCMD.
//! Every message it produces is queued, already sequenced, in [`Node::out`]; the MQTT task
//! moves the queue into the client in order.

use std::collections::VecDeque;

use super::payload::{DataType, Metric, MetricValue, Payload};
use crate::messages::{Event, Health, State};
use crate::publish::Command;

/// Sparkplug B topic namespace.
pub const NAMESPACE: &str = "spBv1.0";
/// The node metric a host writes `true` to, to ask for a rebirth.
pub const REBIRTH: &str = "Node Control/Rebirth";
/// Alias of [`REBIRTH`]; device metrics follow from 2 on.
pub const REBIRTH_ALIAS: u64 = 1;
/// Queued data messages beyond which new DDATA are not built (the changes stay pending
/// and go out with the next report once the queue drained). Births and deaths are always
/// queued.
pub const OUT_MAX: usize = 256;

/// The metrics of each camera device, in alias order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceMetric {
    Active = 0,
    Score,
    LogDensity,
    Threshold,
    EventCount,
    Online,
    Fps,
    ModelId,
}

impl DeviceMetric {
    pub const ALL: [DeviceMetric; 8] = [
        DeviceMetric::Active,
        DeviceMetric::Score,
        DeviceMetric::LogDensity,
        DeviceMetric::Threshold,
        DeviceMetric::EventCount,
        DeviceMetric::Online,
        DeviceMetric::Fps,
        DeviceMetric::ModelId,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DeviceMetric::Active => "Anomaly/Active",
            DeviceMetric::Score => "Anomaly/Score",
            DeviceMetric::LogDensity => "Anomaly/LogDensity",
            DeviceMetric::Threshold => "Anomaly/Threshold",
            DeviceMetric::EventCount => "Anomaly/EventCount",
            DeviceMetric::Online => "Camera/Online",
            DeviceMetric::Fps => "Inference/FPS",
            DeviceMetric::ModelId => "Model/Id",
        }
    }

    pub fn datatype(self) -> DataType {
        match self {
            DeviceMetric::Active | DeviceMetric::Online => DataType::Boolean,
            DeviceMetric::Score | DeviceMetric::Threshold | DeviceMetric::Fps => DataType::Float,
            DeviceMetric::LogDensity => DataType::Double,
            DeviceMetric::EventCount => DataType::UInt64,
            DeviceMetric::ModelId => DataType::String,
        }
    }

    /// Alias of this metric on the device of camera index `cam`: unique across the node.
    pub fn alias(self, cam: usize) -> u64 {
        2 + (cam as u64) * DeviceMetric::ALL.len() as u64 + self as u64
    }
}

/// A metric's current value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Float(f32),
    Double(f64),
    U64(u64),
    Str(String),
}

impl Value {
    fn to_metric_value(&self) -> MetricValue {
        match self {
            Value::Bool(b) => MetricValue::BooleanValue(*b),
            Value::Float(f) => MetricValue::FloatValue(*f),
            Value::Double(d) => MetricValue::DoubleValue(*d),
            Value::U64(u) => MetricValue::LongValue(*u),
            Value::Str(s) => MetricValue::StringValue(s.clone()),
        }
    }
}

/// Report-by-exception deadbands (absolute).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadbands {
    pub score: f64,
    pub log_density: f64,
    pub fps: f64,
}

impl Deadbands {
    fn of(&self, m: DeviceMetric) -> f64 {
        match m {
            DeviceMetric::Score => self.score,
            DeviceMetric::LogDensity => self.log_density,
            DeviceMetric::Fps => self.fps,
            _ => 0.0,
        }
    }
}

/// A message for the broker, its `seq` already assigned.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What an NCMD / DCMD asked for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Commands {
    /// `Node Control/Rebirth` = true.
    pub rebirth: bool,
    /// Writes for the daemon to apply.
    pub writes: Vec<Command>,
    /// Metrics refused (unknown, read-only, wrong type), with the reason.
    pub refused: Vec<String>,
}

#[derive(Debug, Clone)]
struct Device {
    id: String,
    /// The camera delivers frames (not `stalled`, `offline` or `ended`): a DBIRTH is due
    /// (or was sent) in the current session.
    alive: bool,
    /// Current value and its time (ms since the epoch) of each metric; `None`: not known
    /// yet (sent with `is_null`).
    values: Vec<Option<(Value, u64)>>,
    /// The value of each metric last reported (birth or data) in this session.
    reported: Vec<Option<Value>>,
    events: u64,
}

/// Counters of the session machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// NBIRTHs queued (first births and rebirths).
    pub node_births: u64,
    pub device_births: u64,
    pub device_deaths: u64,
    pub data_messages: u64,
    /// Reports not built because [`OUT_MAX`] messages were waiting.
    pub data_deferred: u64,
}

/// One edge node and its camera devices.
#[derive(Debug)]
pub struct Node {
    group: String,
    edge_node: String,
    bd_seq: u8,
    seq: u8,
    /// NBIRTH queued on the current connection: data may flow.
    live: bool,
    devices: Vec<Device>,
    deadbands: Deadbands,
    /// Sequenced messages waiting for room in the client's request channel.
    pub out: VecDeque<Outgoing>,
    pub counters: SessionCounters,
}

impl Node {
    pub fn new(group: &str, edge_node: &str, cameras: &[String], deadbands: Deadbands) -> Node {
        let devices = cameras
            .iter()
            .map(|id| {
                let mut values = vec![None; DeviceMetric::ALL.len()];
                values[DeviceMetric::EventCount as usize] = Some((Value::U64(0), now_ms()));
                Device {
                    id: id.clone(),
                    alive: true,
                    values,
                    reported: vec![None; DeviceMetric::ALL.len()],
                    events: 0,
                }
            })
            .collect();
        Node {
            group: group.to_string(),
            edge_node: edge_node.to_string(),
            bd_seq: 0,
            seq: 0,
            live: false,
            devices,
            deadbands,
            out: VecDeque::new(),
            counters: SessionCounters::default(),
        }
    }

    /// `spBv1.0/<group>/<verb>/<edge node>`.
    pub fn node_topic(&self, verb: &str) -> String {
        format!("{NAMESPACE}/{}/{verb}/{}", self.group, self.edge_node)
    }

    /// `spBv1.0/<group>/<verb>/<edge node>/<device>`.
    pub fn device_topic(&self, verb: &str, device: &str) -> String {
        format!(
            "{NAMESPACE}/{}/{verb}/{}/{device}",
            self.group, self.edge_node
        )
    }

    /// The NCMD topic and the DCMD filter to subscribe to before NBIRTH.
    pub fn command_filters(&self) -> [String; 2] {
        [self.node_topic("NCMD"), self.device_topic("DCMD", "+")]
    }

    pub fn bd_seq(&self) -> u8 {
        self.bd_seq
    }

    /// The bdSeq of the connection about to be opened (its Will and its NBIRTH).
    pub fn set_bd_seq(&mut self, bd_seq: u8) {
        self.bd_seq = bd_seq;
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Whether the device of `camera` is alive (born, or due a birth).
    pub fn device_alive(&self, camera: &str) -> Option<bool> {
        self.devices
            .iter()
            .find(|d| d.id == camera)
            .map(|d| d.alive)
    }

    /// NDEATH payload: the bdSeq of the current connection, no `seq`.
    pub fn death_payload(&self, now: u64) -> Vec<u8> {
        Payload {
            timestamp: Some(now),
            metrics: vec![bd_seq_metric(self.bd_seq, now)],
            seq: None,
            uuid: None,
            body: None,
        }
        .to_bytes()
    }

    /// The connection is gone: nothing more of this session may go out.
    pub fn connection_lost(&mut self) {
        self.live = false;
        self.out.clear();
    }

    /// A (re)birth: a new `seq` run from 0, NBIRTH with the current bdSeq, then a DBIRTH
    /// with the current value of every metric for each live device. Anything still queued
    /// from the previous run is dropped (the births carry the current values).
    pub fn birth(&mut self, now: u64) {
        self.out.clear();
        self.seq = 0;
        self.live = true;
        let metrics = vec![
            bd_seq_metric(self.bd_seq, now),
            Metric::new(
                Some(REBIRTH),
                Some(REBIRTH_ALIAS),
                DataType::Boolean,
                now,
                Some(MetricValue::BooleanValue(false)),
            ),
        ];
        let topic = self.node_topic("NBIRTH");
        self.push(topic, now, metrics);
        self.counters.node_births += 1;
        for i in 0..self.devices.len() {
            if self.devices[i].alive {
                self.device_birth(i, now);
            }
        }
    }

    fn device_birth(&mut self, i: usize, now: u64) {
        let d = &self.devices[i];
        let metrics = DeviceMetric::ALL
            .iter()
            .map(|&m| {
                let (value, ts) = match &d.values[m as usize] {
                    Some((v, ts)) => (Some(v.to_metric_value()), *ts),
                    None => (None, now),
                };
                Metric::new(Some(m.name()), Some(m.alias(i)), m.datatype(), ts, value)
            })
            .collect();
        let reported = d.values.iter().map(|v| v.as_ref().map(|(v, _)| v.clone()));
        let reported = reported.collect();
        let topic = self.device_topic("DBIRTH", &d.id);
        self.devices[i].reported = reported;
        self.push(topic, now, metrics);
        self.counters.device_births += 1;
    }

    /// The pipeline's state of a camera: Active, Score, LogDensity, Threshold, Model/Id.
    pub fn on_state(&mut self, camera: &str, st: &State, now: u64) {
        let Some(i) = self.index(camera) else { return };
        let ts = st.ts_ms;
        let d = &mut self.devices[i];
        d.values[DeviceMetric::Active as usize] = Some((Value::Bool(st.anomalous), ts));
        d.values[DeviceMetric::Score as usize] = Some((Value::Float(st.score as f32), ts));
        d.values[DeviceMetric::LogDensity as usize] = Some((Value::Double(st.log_density), ts));
        d.values[DeviceMetric::Threshold as usize] = Some((Value::Float(st.threshold as f32), ts));
        d.values[DeviceMetric::ModelId as usize] = Some((Value::Str(st.model_id.clone()), ts));
        self.report(i, now);
    }

    /// An event message: `start` messages count in `Anomaly/EventCount`.
    pub fn on_event(&mut self, camera: &str, ev: &Event, now: u64) {
        let Some(i) = self.index(camera) else { return };
        if ev.r#type != "start" {
            return;
        }
        let d = &mut self.devices[i];
        d.events += 1;
        d.values[DeviceMetric::EventCount as usize] = Some((Value::U64(d.events), ev.ts_ms));
        self.report(i, now);
    }

    /// A new threshold applied from a DCMD (reported at once).
    pub fn set_threshold(&mut self, camera: &str, log_density: f64, now: u64) {
        let Some(i) = self.index(camera) else { return };
        self.devices[i].values[DeviceMetric::Threshold as usize] =
            Some((Value::Float(log_density as f32), now));
        self.report(i, now);
    }

    /// Camera health: `Camera/Online`, `Inference/FPS`; DDEATH when the camera stops
    /// delivering (`stalled`, `offline`, `ended`), DBIRTH when it is back.
    pub fn on_health(&mut self, camera: &str, h: &Health, now: u64) {
        let Some(i) = self.index(camera) else { return };
        let dead = matches!(h.state.as_str(), "stalled" | "offline" | "ended");
        let online = !dead && h.state != "starting";
        let ts = h.ts_ms;
        let d = &mut self.devices[i];
        d.values[DeviceMetric::Online as usize] = Some((Value::Bool(online), ts));
        d.values[DeviceMetric::Fps as usize] = Some((Value::Float(h.fps as f32), ts));
        match (d.alive, dead) {
            (true, true) => {
                d.alive = false;
                if self.live {
                    let topic = self.device_topic("DDEATH", &self.devices[i].id);
                    self.push(topic, now, Vec::new());
                    self.counters.device_deaths += 1;
                }
            }
            (false, false) => {
                self.devices[i].alive = true;
                if self.live {
                    self.device_birth(i, now);
                }
            }
            (true, false) => self.report(i, now),
            (false, true) => {}
        }
    }

    /// DDATA with the metrics of device `i` that changed beyond their deadband since last
    /// reported (by alias, with data type and timestamp).
    fn report(&mut self, i: usize, now: u64) {
        if !self.live || !self.devices[i].alive {
            return;
        }
        let d = &self.devices[i];
        let changed: Vec<DeviceMetric> = DeviceMetric::ALL
            .into_iter()
            .filter(|&m| {
                let cur = d.values[m as usize].as_ref().map(|(v, _)| v);
                changed(cur, d.reported[m as usize].as_ref(), self.deadbands.of(m))
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        if self.out.len() >= OUT_MAX {
            self.counters.data_deferred += 1;
            return;
        }
        let mut metrics = Vec::with_capacity(changed.len());
        for m in changed {
            if let Some((v, ts)) = &self.devices[i].values[m as usize] {
                metrics.push(Metric::new(
                    None,
                    Some(m.alias(i)),
                    m.datatype(),
                    *ts,
                    Some(v.to_metric_value()),
                ));
                self.devices[i].reported[m as usize] = Some(v.clone());
            }
        }
        let topic = self.device_topic("DDATA", &self.devices[i].id);
        self.push(topic, now, metrics);
        self.counters.data_messages += 1;
    }

    /// Parses an NCMD or DCMD addressed to this node (`None`: not a command topic of
    /// ours). Metrics are recognised by name or alias.
    pub fn parse_command(&self, topic: &str, payload: &[u8]) -> Option<Commands> {
        let mut levels = topic.split('/');
        let (ns, group, verb, node) = (
            levels.next()?,
            levels.next()?,
            levels.next()?,
            levels.next()?,
        );
        let device = levels.next();
        if ns != NAMESPACE
            || group != self.group
            || node != self.edge_node
            || levels.next().is_some()
        {
            return None;
        }
        let mut out = Commands::default();
        let payload = match Payload::from_bytes(payload) {
            Ok(p) => p,
            Err(e) => {
                out.refused.push(format!("undecodable payload: {e}"));
                return Some(out);
            }
        };
        match (verb, device) {
            ("NCMD", None) => {
                for m in &payload.metrics {
                    let is_rebirth = m.name.as_deref() == Some(REBIRTH)
                        || (m.name.is_none() && m.alias == Some(REBIRTH_ALIAS));
                    if !is_rebirth {
                        out.refused
                            .push(format!("{}: not a writable node metric", label(m)));
                    } else if m.as_bool() == Some(true) {
                        out.rebirth = true;
                    } else if m.as_bool().is_none() {
                        out.refused.push(format!("{REBIRTH}: not a Boolean value"));
                    }
                }
            }
            ("DCMD", Some(camera)) => {
                let Some(i) = self.index(camera) else {
                    out.refused.push(format!("unknown device `{camera}`"));
                    return Some(out);
                };
                let threshold = DeviceMetric::Threshold;
                for m in &payload.metrics {
                    let hit = match (&m.name, m.alias) {
                        (Some(n), _) => n == threshold.name(),
                        (None, Some(a)) => a == threshold.alias(i),
                        (None, None) => false,
                    };
                    if !hit {
                        out.refused
                            .push(format!("{}: not a writable device metric", label(m)));
                    } else if let Some(v) = m.as_f64() {
                        out.writes.push(Command::SetThreshold {
                            camera: camera.to_string(),
                            log_density: v,
                        });
                    } else {
                        out.refused
                            .push(format!("{}: needs a finite number", threshold.name()));
                    }
                }
            }
            _ => return None,
        }
        Some(out)
    }

    fn index(&self, camera: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.id == camera)
    }

    fn push(&mut self, topic: String, now: u64, metrics: Vec<Metric>) {
        let payload = Payload {
            timestamp: Some(now),
            metrics,
            seq: Some(u64::from(self.seq)),
            uuid: None,
            body: None,
        };
        self.seq = self.seq.wrapping_add(1);
        self.out.push_back(Outgoing {
            topic,
            payload: payload.to_bytes(),
        });
    }
}

fn bd_seq_metric(bd_seq: u8, now: u64) -> Metric {
    Metric::new(
        Some("bdSeq"),
        None,
        DataType::UInt64,
        now,
        Some(MetricValue::LongValue(u64::from(bd_seq))),
    )
}

fn label(m: &Metric) -> String {
    match (&m.name, m.alias) {
        (Some(n), _) => n.clone(),
        (None, Some(a)) => format!("alias {a}"),
        (None, None) => "a metric without name or alias".into(),
    }
}

/// Whether `cur` is to be reported given `last` reported and the deadband.
fn changed(cur: Option<&Value>, last: Option<&Value>, deadband: f64) -> bool {
    match (cur, last) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(Value::Float(a)), Some(Value::Float(b))) => {
            moved(f64::from(*a), f64::from(*b), deadband)
        }
        (Some(Value::Double(a)), Some(Value::Double(b))) => moved(*a, *b, deadband),
        (Some(a), Some(b)) => a != b,
    }
}

fn moved(a: f64, b: f64, deadband: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.to_bits() != b.to_bits();
    }
    if deadband == 0.0 {
        return a != b;
    }
    (a - b).abs() > deadband
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    crate::messages::timestamp(std::time::SystemTime::now()).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{SCHEMA_HEALTH, SCHEMA_STATE};

    fn node() -> Node {
        Node::new(
            "g",
            "n",
            &["cam0".into(), "cam1".into()],
            Deadbands {
                score: 0.01,
                log_density: 0.5,
                fps: 0.5,
            },
        )
    }

    fn state(score: f64, log_density: f64, anomalous: bool) -> State {
        State {
            schema: SCHEMA_STATE.into(),
            node: "n".into(),
            camera: "cam0".into(),
            ts: String::new(),
            ts_ms: 1000,
            anomalous,
            score,
            log_density,
            threshold: -3.0,
            model_id: "m1".into(),
            enabled: true,
            calibrating: false,
        }
    }

    fn health(state: &str, fps: f64) -> Health {
        Health {
            schema: SCHEMA_HEALTH.into(),
            node: "n".into(),
            camera: "cam0".into(),
            ts: String::new(),
            ts_ms: 2000,
            state: state.into(),
            fps,
            last_frame_ts: None,
            frames_captured: 0,
            frames_scored: 0,
            dropped_frames: 0,
            error: None,
        }
    }

    fn drain(n: &mut Node) -> Vec<(String, Payload)> {
        n.out
            .drain(..)
            .map(|o| (o.topic, Payload::from_bytes(&o.payload).unwrap()))
            .collect()
    }

    #[test]
    fn birth_is_nbirth_seq_0_then_one_dbirth_per_camera_with_unique_aliases() {
        let mut n = node();
        n.set_bd_seq(7);
        n.birth(5);
        let out = drain(&mut n);
        let topics: Vec<&str> = out.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            topics,
            [
                "spBv1.0/g/NBIRTH/n",
                "spBv1.0/g/DBIRTH/n/cam0",
                "spBv1.0/g/DBIRTH/n/cam1"
            ]
        );
        let seqs: Vec<u64> = out.iter().map(|(_, p)| p.seq.unwrap()).collect();
        assert_eq!(seqs, [0, 1, 2]);
        let nb = &out[0].1;
        assert_eq!(nb.metrics[0].name.as_deref(), Some("bdSeq"));
        assert_eq!(nb.metrics[0].value, Some(MetricValue::LongValue(7)));
        assert_eq!(nb.metrics[1].name.as_deref(), Some(REBIRTH));
        let mut aliases: Vec<u64> = out
            .iter()
            .flat_map(|(_, p)| p.metrics.iter().filter_map(|m| m.alias))
            .collect();
        assert_eq!(aliases.len(), 1 + 2 * 8);
        aliases.sort_unstable();
        aliases.dedup();
        assert_eq!(aliases.len(), 1 + 2 * 8, "aliases are unique per node");
        // Unknown values are null with their data type; the event count starts at 0.
        let db = &out[1].1;
        assert_eq!(db.metrics.len(), 8);
        assert_eq!(db.metrics[1].is_null, Some(true));
        assert_eq!(db.metrics[1].datatype, Some(9));
        assert_eq!(db.metrics[4].value, Some(MetricValue::LongValue(0)));
    }

    #[test]
    fn data_is_reported_by_exception_with_deadbands_and_aliases_only() {
        let mut n = node();
        n.on_state("cam0", &state(0.5, -1.0, false), 1);
        assert!(n.out.is_empty(), "nothing goes out before the birth");
        n.birth(5);
        drain(&mut n);
        n.on_state("cam0", &state(0.505, -1.2, false), 6);
        assert!(n.out.is_empty(), "within both deadbands");
        n.on_state("cam0", &state(0.52, -1.2, false), 7);
        let out = drain(&mut n);
        assert_eq!(out.len(), 1);
        let (topic, p) = &out[0];
        assert_eq!(topic, "spBv1.0/g/DDATA/n/cam0");
        assert_eq!(p.seq, Some(3));
        assert_eq!(p.metrics.len(), 1);
        let m = &p.metrics[0];
        assert_eq!(m.name, None);
        assert_eq!(m.alias, Some(DeviceMetric::Score.alias(0)));
        assert_eq!(m.value, Some(MetricValue::FloatValue(0.52)));
        // The deadband is measured from the value last reported, not the last seen.
        n.on_state("cam0", &state(0.52, -1.6, true), 8);
        let out = drain(&mut n);
        let aliases: Vec<u64> = out[0].1.metrics.iter().filter_map(|m| m.alias).collect();
        assert_eq!(
            aliases,
            [
                DeviceMetric::Active.alias(0),
                DeviceMetric::LogDensity.alias(0)
            ]
        );
    }

    #[test]
    fn seq_wraps_after_255_and_restarts_at_0_on_rebirth() {
        let mut n = node();
        n.birth(0);
        let mut seqs: Vec<u64> = drain(&mut n).iter().map(|(_, p)| p.seq.unwrap()).collect();
        for k in 0..300 {
            n.on_state("cam0", &state(f64::from(k) / 10.0, 0.0, false), 1);
            seqs.extend(drain(&mut n).iter().map(|(_, p)| p.seq.unwrap()));
        }
        assert!(seqs.len() > 256);
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(*s, (i % 256) as u64);
        }
        n.birth(2);
        assert_eq!(drain(&mut n)[0].1.seq, Some(0));
    }

    #[test]
    fn a_stalled_camera_dies_and_is_born_again_with_current_values() {
        let mut n = node();
        n.birth(0);
        drain(&mut n);
        n.on_health("cam0", &health("ok", 4.0), 1);
        let out = drain(&mut n);
        assert_eq!(out[0].0, "spBv1.0/g/DDATA/n/cam0");
        n.on_health("cam0", &health("stalled", 0.0), 2);
        let out = drain(&mut n);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "spBv1.0/g/DDEATH/n/cam0");
        assert_eq!(out[0].1.seq, Some(4));
        // Dead: no data; still dead: no second DDEATH.
        n.on_state("cam0", &state(0.9, -9.0, true), 3);
        n.on_health("cam0", &health("stalled", 0.0), 3);
        assert!(n.out.is_empty());
        // A rebirth leaves the dead device out.
        n.birth(4);
        let topics: Vec<String> = drain(&mut n).into_iter().map(|(t, _)| t).collect();
        assert!(!topics.iter().any(|t| t.ends_with("/cam0")), "{topics:?}");
        n.on_health("cam0", &health("ok", 3.0), 5);
        let out = drain(&mut n);
        assert_eq!(out[0].0, "spBv1.0/g/DBIRTH/n/cam0");
        let active = &out[0].1.metrics[DeviceMetric::Active as usize];
        assert_eq!(active.value, Some(MetricValue::BooleanValue(true)));
        let online = &out[0].1.metrics[DeviceMetric::Online as usize];
        assert_eq!(online.value, Some(MetricValue::BooleanValue(true)));
    }

    #[test]
    fn start_events_count() {
        let mut n = node();
        n.birth(0);
        drain(&mut n);
        let mut ev = Event {
            schema: String::new(),
            id: "e".into(),
            r#type: "start".into(),
            node: "n".into(),
            camera: "cam1".into(),
            ts_start: String::new(),
            ts_start_ms: 0,
            ts: String::new(),
            ts_ms: 9,
            peak_score: 0.0,
            peak_log_density: 0.0,
            threshold: 0.0,
            frames: 1,
            snapshot_topic: String::new(),
            model_id: String::new(),
            seq: 0,
        };
        n.on_event("cam1", &ev, 1);
        ev.r#type = "end".into();
        n.on_event("cam1", &ev, 2);
        let out = drain(&mut n);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "spBv1.0/g/DDATA/n/cam1");
        assert_eq!(
            out[0].1.metrics[0].alias,
            Some(DeviceMetric::EventCount.alias(1))
        );
        assert_eq!(out[0].1.metrics[0].value, Some(MetricValue::LongValue(1)));
    }

    #[test]
    fn commands_by_name_or_alias() {
        let n = node();
        let cmd = |metrics: Vec<Metric>| {
            Payload {
                timestamp: Some(0),
                metrics,
                seq: None,
                uuid: None,
                body: None,
            }
            .to_bytes()
        };
        let rebirth = cmd(vec![Metric::new(
            Some(REBIRTH),
            None,
            DataType::Boolean,
            0,
            Some(MetricValue::BooleanValue(true)),
        )]);
        let c = n.parse_command("spBv1.0/g/NCMD/n", &rebirth).unwrap();
        assert!(c.rebirth && c.refused.is_empty());
        let by_alias = cmd(vec![Metric::new(
            None,
            Some(DeviceMetric::Threshold.alias(1)),
            DataType::Float,
            0,
            Some(MetricValue::FloatValue(-2.5)),
        )]);
        let c = n.parse_command("spBv1.0/g/DCMD/n/cam1", &by_alias).unwrap();
        assert_eq!(
            c.writes,
            [Command::SetThreshold {
                camera: "cam1".into(),
                log_density: -2.5
            }]
        );
        // cam0's threshold alias is not cam1's.
        let wrong = cmd(vec![Metric::new(
            None,
            Some(DeviceMetric::Threshold.alias(0)),
            DataType::Float,
            0,
            Some(MetricValue::FloatValue(1.0)),
        )]);
        let c = n.parse_command("spBv1.0/g/DCMD/n/cam1", &wrong).unwrap();
        assert!(c.writes.is_empty() && c.refused.len() == 1);
        let read_only = cmd(vec![Metric::new(
            Some("Anomaly/Score"),
            None,
            DataType::Float,
            0,
            Some(MetricValue::FloatValue(1.0)),
        )]);
        let c = n
            .parse_command("spBv1.0/g/DCMD/n/cam0", &read_only)
            .unwrap();
        assert_eq!(c.refused.len(), 1);
        assert!(
            n.parse_command("spBv1.0/g/DCMD/n/nope", &read_only)
                .unwrap()
                .refused
                .len()
                == 1
        );
        assert!(n.parse_command("spBv1.0/other/NCMD/n", &rebirth).is_none());
        assert!(
            n.parse_command("spBv1.0/g/NCMD/n", b"\xff\xff")
                .unwrap()
                .refused
                .len()
                == 1
        );
    }

    #[test]
    fn ndeath_carries_the_bd_seq_and_no_seq() {
        let mut n = node();
        n.set_bd_seq(255);
        let p = Payload::from_bytes(&n.death_payload(3)).unwrap();
        assert_eq!(p.seq, None);
        assert_eq!(p.metrics[0].name.as_deref(), Some("bdSeq"));
        assert_eq!(p.metrics[0].datatype, Some(DataType::UInt64.code()));
        assert_eq!(p.metrics[0].value, Some(MetricValue::LongValue(255)));
    }
}
