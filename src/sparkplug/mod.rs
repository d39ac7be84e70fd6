//! MQTT Sparkplug B 3.0 edge node (`[mqtt] profile = "sparkplug"` or `"both"`).
//!
//! Topics `spBv1.0/<group>/<verb>/<edge node>[/<camera>]`: one edge node per daemon, one
//! device per camera. Payloads are Sparkplug B protobuf ([`payload`]). Node metrics:
//! `bdSeq` (UInt64), `Node Control/Rebirth` (Boolean, writable). Device metrics (aliased,
//! reported by exception with deadbands, see [`session`]): `Anomaly/Active` (Boolean),
//! `Anomaly/Score` (Float), `Anomaly/LogDensity` (Double), `Anomaly/Threshold` (Float,
//! writable by DCMD), `Anomaly/EventCount` (UInt64, events started since the daemon
//! started), `Camera/Online` (Boolean), `Inference/FPS` (Float), `Model/Id` (String). No
//! images: snapshots stay on the plain topics (`profile = "both"`).
//!
//! Session: its own connection (clean session), same broker, TLS and credentials as the
//! plain publisher. Before each connection attempt `bdSeq` is incremented (0..=255,
//! persisted in `<state_dir>/sparkplug/bdseq`) and the Will is set to an NDEATH carrying
//! it (QoS 1, not retained). After each CONNACK: subscribe to NCMD and DCMD, and on the
//! SUBACK publish NBIRTH (`seq` 0) then a DBIRTH per live camera; NDATA-less afterwards:
//! DDATA, DDEATH (a camera `stalled`, `offline` or `ended`) and DBIRTH (back `ok`) carry
//! the next `seq` (mod 256). An NCMD `Node Control/Rebirth` = true re-publishes the births
//! with a new `seq` run (same bdSeq: same connection). A DCMD writing `Anomaly/Threshold`
//! (by name or alias) becomes [`Command::SetThreshold`]. [`SparkplugNode::shutdown`]
//! publishes the NDEATH itself (QoS 1), waits for its PUBACK, then disconnects.
//!
//! Threading as in [`crate::publish`]: one tokio task owns the rumqttc event loop; the
//! [`Sink`] methods never block (messages are queued, in `seq` order, and moved into the
//! client's request channel with `try_publish` as it has room).

pub mod config;
pub mod payload;
pub mod session;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, Outgoing, Packet, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};

pub use config::{Profile, SparkplugConfig};
pub use session::{DeviceMetric, SessionCounters};

use crate::messages::{Event as VigilEvent, Health, State};
use crate::pipeline::Sink;
use crate::publish::task::{Polled, TaskHandle};
use crate::publish::{check_topic_level, Command, ConfigError, MqttConfig, Settings};
use session::{now_ms, Deadbands, Node};

/// Capacity of the [`Command`] channel (DCMD writes); writes arriving while it is full
/// are dropped and counted.
pub const COMMAND_CHANNEL: usize = 64;

/// How long [`SparkplugNode::shutdown`] waits for the NDEATH's PUBACK.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum SparkplugError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("sparkplug bdSeq file {}: {source}", path.display())]
    BdSeq {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("SparkplugNode::start must be called from inside a tokio runtime")]
    NoRuntime,
    #[error("duplicate camera id `{0}`")]
    DuplicateCamera(String),
}

/// Connection state and counters, from [`SparkplugNode::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparkplugStatus {
    /// A CONNACK was received and no error since.
    pub connected: bool,
    /// NBIRTH published on the current connection.
    pub born: bool,
    /// bdSeq of the current (or last) connection.
    pub bd_seq: u8,
    pub connects: u64,
    pub connection_errors: u64,
    pub last_error: Option<String>,
    /// Messages handed to the MQTT client.
    pub messages_sent: u64,
    /// Rebirths requested by a host (NCMD `Node Control/Rebirth`).
    pub rebirth_requests: u64,
    /// DCMD writes forwarded to the daemon.
    pub commands_forwarded: u64,
    /// Command metrics refused (unknown, read-only, malformed) or dropped (queue full).
    pub commands_refused: u64,
    pub session: SessionCounters,
}

struct Shared {
    settings: Settings,
    client: AsyncClient,
    inner: Mutex<Inner>,
    wake: Notify,
    bd_seq_file: PathBuf,
}

struct Inner {
    node: Node,
    connected: bool,
    /// SUBACK for NCMD/DCMD awaited before the births.
    awaiting_suback: bool,
    closed: bool,
    /// The explicit NDEATH of a shutdown went into the client / was acknowledged.
    ndeath_sent: bool,
    ndeath_acked: bool,
    counters: SparkplugStatus,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Moves queued messages, in order, into the request channel while it has room.
    fn pump(&mut self, sh: &Shared) {
        if !self.connected || self.closed {
            return;
        }
        while let Some(m) = self.node.out.front() {
            let sent =
                sh.client
                    .try_publish(m.topic.clone(), QoS::AtMostOnce, false, m.payload.clone());
            if sent.is_err() {
                break; // retried after the next event-loop event
            }
            self.node.out.pop_front();
            self.counters.messages_sent += 1;
        }
    }
}

/// Handle to the Sparkplug edge node. Dropping it without [`SparkplugNode::shutdown`]
/// aborts the task (no DISCONNECT: the broker publishes the NDEATH Will).
pub struct SparkplugNode {
    shared: Arc<Shared>,
    task: TaskHandle,
}

impl SparkplugNode {
    /// Validates `mqtt` (its `sparkplug` table included; `sp` is used for the Sparkplug
    /// keys), reads the password, checks that `<state_dir>/sparkplug/bdseq` can be kept,
    /// and spawns the event-loop task on the current tokio runtime. The receiver yields
    /// the DCMD writes.
    pub fn start(
        mqtt: &MqttConfig,
        sp: &SparkplugConfig,
        node: &str,
        cameras: Vec<String>,
        state_dir: &Path,
    ) -> Result<(SparkplugNode, mpsc::Receiver<Command>), SparkplugError> {
        let settings = mqtt.resolve(node)?;
        sp.validate(node)?;
        for (i, cam) in cameras.iter().enumerate() {
            check_topic_level("camera", cam)?;
            if cameras[..i].contains(cam) {
                return Err(SparkplugError::DuplicateCamera(cam.clone()));
            }
        }
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| SparkplugError::NoRuntime)?;
        let dir = state_dir.join("sparkplug");
        std::fs::create_dir_all(&dir).map_err(|source| SparkplugError::BdSeq {
            path: dir.clone(),
            source,
        })?;
        let bd_seq_file = dir.join("bdseq");
        // Unreadable state is an error now rather than a silent bdSeq reset later.
        read_bd_seq(&bd_seq_file)?;

        let client_id = sp
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{}-spb", settings.client_id));
        let opts = settings.mqtt_options(client_id, true);
        let (client, eventloop) = AsyncClient::new(opts, settings.request_channel);
        let deadbands = Deadbands {
            score: sp.score_deadband,
            log_density: sp.log_density_deadband,
            fps: sp.fps_deadband,
        };
        let node = Node::new(&sp.group_id, &sp.edge_node_id(node), &cameras, deadbands);
        let shared = Arc::new(Shared {
            settings,
            client,
            inner: Mutex::new(Inner {
                node,
                connected: false,
                awaiting_suback: false,
                closed: false,
                ndeath_sent: false,
                ndeath_acked: false,
                counters: SparkplugStatus::default(),
            }),
            wake: Notify::new(),
            bd_seq_file,
        });
        let (tx, rx) = mpsc::channel(COMMAND_CHANNEL);
        let handle = runtime.spawn(run(shared.clone(), eventloop, tx));
        Ok((
            SparkplugNode {
                shared,
                task: TaskHandle::new(handle),
            },
            rx,
        ))
    }

    /// Connection state and counters.
    pub fn status(&self) -> SparkplugStatus {
        let inner = self.shared.lock();
        SparkplugStatus {
            connected: inner.connected,
            born: inner.node.is_live(),
            bd_seq: inner.node.bd_seq(),
            session: inner.node.counters,
            ..inner.counters.clone()
        }
    }

    /// Graceful stop: publishes the NDEATH explicitly (QoS 1, the connection's bdSeq),
    /// waits up to [`SHUTDOWN_FLUSH`] for its PUBACK, then disconnects (a clean DISCONNECT
    /// suppresses the Will).
    pub async fn shutdown(self) {
        {
            let mut inner = self.shared.lock();
            inner.closed = true;
            inner.node.out.clear();
            if inner.connected {
                let topic = inner.node.node_topic("NDEATH");
                let payload = inner.node.death_payload(now_ms());
                inner.ndeath_sent = self
                    .shared
                    .client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                    .is_ok();
            }
        }
        self.shared.wake.notify_one();
        self.task
            .join(SHUTDOWN_FLUSH + Duration::from_secs(2), "sparkplug")
            .await;
    }

    fn with(&self, f: impl FnOnce(&mut Node, u64)) {
        let mut inner = self.shared.lock();
        if inner.closed {
            return;
        }
        f(&mut inner.node, now_ms());
        inner.pump(&self.shared);
    }
}

impl Sink for SparkplugNode {
    fn event(&self, camera: &str, event: &VigilEvent) {
        self.with(|n, now| n.on_event(camera, event, now));
    }
    fn state(&self, camera: &str, state: &State) {
        self.with(|n, now| n.on_state(camera, state, now));
    }
    /// No images inside Sparkplug.
    fn snapshot(&self, _camera: &str, _jpeg: Vec<u8>) {}
    fn health(&self, camera: &str, health: &Health) {
        self.with(|n, now| n.on_health(camera, health, now));
    }
}

/// The last bdSeq used (`None`: never connected).
fn read_bd_seq(path: &Path) -> Result<Option<u8>, SparkplugError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().parse::<u8>().ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SparkplugError::BdSeq {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The next bdSeq (0 first, then +1 mod 256), written (temp file, fsync, rename) before
/// it is used.
fn next_bd_seq(path: &Path) -> Result<u8, SparkplugError> {
    let next = read_bd_seq(path)?.map_or(0, |b| b.wrapping_add(1));
    let err = |source| SparkplugError::BdSeq {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        writeln!(f, "{next}").map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(next)
}

/// The event-loop task: polls forever with exponential backoff after errors, until a
/// shutdown completes (or its deadline passes).
async fn run(sh: Arc<Shared>, mut el: EventLoop, commands: mpsc::Sender<Command>) {
    let min = sh.settings.reconnect_min;
    let max = sh.settings.reconnect_max;
    let mut backoff = min;
    let mut deadline: Option<tokio::time::Instant> = None;
    let mut disconnect_sent = false;
    loop {
        if deadline.is_none() && sh.lock().closed {
            deadline = Some(tokio::time::Instant::now() + SHUTDOWN_FLUSH);
        }
        if deadline.is_some() && !disconnect_sent {
            let done = {
                let inner = sh.lock();
                !inner.connected || !inner.ndeath_sent || inner.ndeath_acked
            };
            if done {
                if !sh.lock().connected {
                    return; // nothing to say goodbye on
                }
                if sh.client.try_disconnect().is_ok() {
                    disconnect_sent = true;
                }
            }
        }
        if el.network.is_none() {
            // A new connection: a new bdSeq, in the Will now and in the NBIRTH later.
            match next_bd_seq(&sh.bd_seq_file) {
                Ok(bd) => {
                    let mut inner = sh.lock();
                    inner.node.set_bd_seq(bd);
                    let topic = inner.node.node_topic("NDEATH");
                    let will = inner.node.death_payload(now_ms());
                    el.mqtt_options.set_last_will(LastWill::new(
                        topic,
                        will,
                        QoS::AtLeastOnce,
                        false,
                    ));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot persist the bdSeq; reusing the last one")
                }
            }
        }
        let result = match crate::publish::task::poll(&mut el, &sh.wake, deadline).await {
            Polled::Done(r) => r,
            Polled::Woken => continue,
            Polled::Deadline => {
                tracing::warn!("sparkplug shutdown: deadline passed, dropping the connection");
                return;
            }
        };
        match result {
            Ok(event) => {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    tracing::info!("sparkplug: disconnected (shutdown)");
                    sh.lock().connected = false;
                    return;
                }
                let mut inner = sh.lock();
                on_event(&sh, &mut inner, &event, &commands);
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    backoff = min;
                }
                inner.pump(&sh);
            }
            Err(e) => {
                let was = {
                    let mut inner = sh.lock();
                    let was = inner.connected;
                    inner.connected = false;
                    inner.awaiting_suback = false;
                    inner.node.connection_lost();
                    inner.counters.connection_errors += 1;
                    inner.counters.last_error = Some(e.to_string());
                    was
                };
                // Requests of the lost session (old seq run) must not reach the next one.
                el.pending.clear();
                log_error(&e, was, backoff);
                let until = deadline.unwrap_or_else(far_future);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = sh.wake.notified(), if deadline.is_none() => {}
                    _ = tokio::time::sleep_until(until), if deadline.is_some() => return,
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

fn on_event(sh: &Shared, inner: &mut Inner, event: &Event, commands: &mpsc::Sender<Command>) {
    match event {
        Event::Incoming(Packet::ConnAck(_)) => {
            inner.connected = true;
            inner.counters.connects += 1;
            if inner.closed {
                return;
            }
            let filters = inner
                .node
                .command_filters()
                .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
            match sh.client.try_subscribe_many(filters) {
                Ok(()) => inner.awaiting_suback = true,
                Err(e) => {
                    tracing::error!(error = %e, "sparkplug: cannot subscribe to NCMD/DCMD; births without commands");
                    inner.node.birth(now_ms());
                }
            }
            tracing::info!(bd_seq = inner.node.bd_seq(), "sparkplug: connected");
        }
        Event::Incoming(Packet::SubAck(ack)) if inner.awaiting_suback => {
            inner.awaiting_suback = false;
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, SubscribeReasonCode::Failure))
            {
                tracing::error!("sparkplug: the broker refused the NCMD/DCMD subscription (ACL?): rebirth requests and threshold writes will not arrive");
            }
            if !inner.closed {
                inner.node.birth(now_ms());
            }
        }
        Event::Incoming(Packet::PubAck(_)) if inner.closed && inner.ndeath_sent => {
            inner.ndeath_acked = true;
        }
        Event::Incoming(Packet::Publish(p)) => {
            let Some(cmds) = inner.node.parse_command(&p.topic, &p.payload) else {
                tracing::debug!(topic = %p.topic, "sparkplug: ignoring a message on an unexpected topic");
                return;
            };
            for reason in &cmds.refused {
                inner.counters.commands_refused += 1;
                tracing::warn!(topic = %p.topic, %reason, "sparkplug: command refused");
            }
            if cmds.rebirth && !inner.closed {
                inner.counters.rebirth_requests += 1;
                tracing::info!("sparkplug: rebirth requested");
                inner.node.birth(now_ms());
            }
            for cmd in cmds.writes {
                let applied = match &cmd {
                    Command::SetThreshold {
                        camera,
                        log_density,
                    } => Some((camera.clone(), *log_density)),
                    _ => None,
                };
                match commands.try_send(cmd) {
                    Ok(()) => {
                        inner.counters.commands_forwarded += 1;
                        // The daemon applies every threshold of a known camera: report it.
                        if let Some((camera, v)) = applied {
                            inner.node.set_threshold(&camera, v, now_ms());
                        }
                    }
                    Err(e) => {
                        inner.counters.commands_refused += 1;
                        tracing::warn!(error = %e, "sparkplug: command dropped");
                    }
                }
            }
        }
        _ => {}
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

fn log_error(e: &ConnectionError, was_connected: bool, retry_in: Duration) {
    if was_connected {
        tracing::warn!(error = %e, "sparkplug: lost the MQTT connection; reconnecting");
    } else {
        tracing::warn!(error = %e, retry_in = ?retry_in, "sparkplug: MQTT connection attempt failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bd_seq_starts_at_0_persists_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bdseq");
        assert_eq!(read_bd_seq(&f).unwrap(), None);
        assert_eq!(next_bd_seq(&f).unwrap(), 0);
        assert_eq!(next_bd_seq(&f).unwrap(), 1);
        assert_eq!(read_bd_seq(&f).unwrap(), Some(1));
        std::fs::write(&f, "255\n").unwrap();
        assert_eq!(next_bd_seq(&f).unwrap(), 0);
    }
}
