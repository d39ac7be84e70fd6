//! MQTT publisher: status / Last-Will, health, state, events (through a durable on-disk
//! outbox), snapshots and the remotely settable knobs. Topics and payloads are those of
//! [`crate::messages`].
//!
//! Threading: [`Publisher::start`] spawns one tokio task that owns the rumqttc event loop
//! and polls it forever. Every publishing method is a plain, non-async, non-blocking call
//! usable from the inference OS threads: it never waits for the network. Best-effort
//! messages go through `try_publish` and are dropped (and counted) when the request
//! channel is full. [`Publisher::publish_event`] writes the message to the outbox first
//! (one fsync) and returns; the file is deleted when the broker's PUBACK for it arrives.
//!
//! Reconnects: after a connection error the task waits `reconnect_min_s`, doubling up to
//! `reconnect_max_s`, before the next attempt (each `poll()` is one attempt). Messages
//! rumqttc held for retransmission are discarded on every error and the task re-sends
//! from its own state after the next CONNACK instead (rumqttc silently drops them anyway
//! when the broker lost the session): the online status, the knob subscriptions, the
//! latest value of every retained topic this publisher wrote, then every outbox entry not
//! acknowledged yet, oldest first. Event duplicates after a reconnect carry the same `id`
//! and `seq`.

mod config;
mod homeassistant;
mod outbox;
mod session;
pub(crate) mod task;
mod topics;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, LastWill, QoS};
use thiserror::Error;
use tokio::sync::{mpsc, Notify};

pub(crate) use config::{check_topic_level, Settings};
pub use config::{parse_broker_url, BrokerUrl, ConfigError, MqttConfig};
pub use homeassistant::{HomeAssistantConfig, HEALTH_STATES};
pub use outbox::OutboxError;
pub use topics::Knob;

use crate::messages::{Event, Health, KnobState, State, Status, SCHEMA_KNOB, SCHEMA_STATUS};
use outbox::{Entry, Loaded, Outbox};
use session::{Ctrl, Inner, Shared, Tag};
use task::TaskHandle;
use topics::Topics;

/// Capacity of the [`Command`] channel; `set` messages arriving while it is full are
/// refused with an error knob state (`command queue full`) and counted.
pub const COMMAND_CHANNEL: usize = 64;

/// How long [`Publisher::shutdown`] waits for outstanding acknowledgements.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

/// A validated knob `set` received from SCADA, for the daemon to apply. The daemon reports
/// the applied value with [`Publisher::publish_knob_state`]; refused payloads are answered
/// by the publisher itself (retained [`KnobState`] with `error` set).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `.../<cam>/enabled/set`
    SetEnabled { camera: String, enabled: bool },
    /// `.../<cam>/threshold/set`: new log-density threshold.
    SetThreshold { camera: String, log_density: f64 },
    /// `.../<cam>/calibrate/set`: the JSON payload as sent (`null` when empty). Retained
    /// `calibrate/set` messages are refused: an action must not re-run on every reconnect.
    Calibrate {
        camera: String,
        payload: serde_json::Value,
    },
}

#[derive(Debug, Error)]
pub enum PublishError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("Publisher::start must be called from inside a tokio runtime")]
    NoRuntime,
    #[error("duplicate camera id `{0}`")]
    DuplicateCamera(String),
    #[error("camera `{0}` is not served by this publisher")]
    UnknownCamera(String),
    #[error("unknown knob `{0}` (expected enabled, threshold or calibrate)")]
    UnknownKnob(String),
    #[error("event of camera `{event}` published for camera `{camera}`")]
    CameraMismatch { camera: String, event: String },
    #[error("message for {topic} is {bytes} bytes, over mqtt.max_packet_bytes ({max})")]
    TooLarge {
        topic: String,
        bytes: usize,
        max: usize,
    },
    #[error("serialising the payload: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("the publisher is shut down")]
    Closed,
}

/// Counters and connection state, from [`Publisher::status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublisherStatus {
    /// A CONNACK was received and no error since.
    pub connected: bool,
    /// The broker granted the knob `set` subscriptions on the current connection.
    pub knobs_subscribed: bool,
    /// Events in the outbox (not acknowledged yet) and their bytes.
    pub outbox_len: usize,
    pub outbox_bytes: u64,
    /// Oldest outbox entries dropped because the outbox was full (incl. at start-up).
    pub outbox_dropped: u64,
    /// Events acknowledged by the broker (QoS 1) or written to the socket (QoS 0).
    pub events_acked: u64,
    /// Best-effort publishes dropped because the request channel was full.
    pub best_effort_dropped: u64,
    /// `publish_state` calls not sent: nothing changed within `state_interval_s`.
    pub states_skipped: u64,
    /// Valid `set` commands dropped: the command channel was full or closed.
    pub commands_dropped: u64,
    /// `set` messages refused (malformed payload, unknown camera, retained calibrate).
    pub commands_refused: u64,
    /// Successful connections (CONNACKs), and those after the first.
    pub connects: u64,
    pub reconnects: u64,
    /// Failed connection attempts and lost connections.
    pub connection_errors: u64,
    /// Text of the last connection error.
    pub last_error: Option<String>,
}

/// Handle to the MQTT publisher. Cheap to clone; every method takes `&self` and never
/// blocks on the network. Dropping the last handle without [`Publisher::shutdown`] aborts
/// the event-loop task (no DISCONNECT: the broker publishes the Will, `offline`).
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Shared>,
    task: Arc<TaskHandle>,
}

impl Publisher {
    /// Validates `cfg`, reads the password, opens `<state_dir>/outbox` (loading what a
    /// previous run left there, to be re-sent first) and spawns the event-loop task on the
    /// current tokio runtime. The returned receiver yields the knob [`Command`]s.
    pub fn start(
        cfg: &MqttConfig,
        node: &str,
        cameras: Vec<String>,
        state_dir: &Path,
    ) -> Result<(Publisher, mpsc::Receiver<Command>), PublishError> {
        let settings = cfg.resolve(node)?;
        for (i, cam) in cameras.iter().enumerate() {
            config::check_topic_level("camera", cam)?;
            if cameras[..i].contains(cam) {
                return Err(PublishError::DuplicateCamera(cam.clone()));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| PublishError::NoRuntime)?;
        let topics = Topics::new(&settings.prefix, node);
        let outbox_dir: PathBuf = state_dir.join("outbox");
        let Loaded {
            outbox,
            next_seq,
            evicted,
        } = Outbox::open(
            &outbox_dir,
            settings.outbox_max_messages,
            settings.outbox_max_bytes,
        )?;
        if outbox.len() > 0 {
            tracing::info!(
                entries = outbox.len(),
                dir = %outbox_dir.display(),
                "outbox holds events from a previous run; re-sending them first"
            );
        }

        let mut opts = settings.mqtt_options(settings.client_id.clone(), false);
        opts.set_inflight(settings.inflight);
        let node = node.to_string();
        let offline = status_payload(&node, &cameras, "offline")?;
        opts.set_last_will(LastWill::new(
            topics.status(),
            offline,
            QoS::AtLeastOnce,
            true,
        ));
        let (client, eventloop) = AsyncClient::new(opts, settings.request_channel);

        let mut inner = Inner::new(outbox);
        inner.counters.outbox_dropped = evicted as u64;
        let ha = &cfg.homeassistant;
        let discovery = if ha.enabled {
            homeassistant::discovery_messages(ha, &topics, &node, &cameras)
        } else {
            Vec::new()
        };
        let discovery_topics: Vec<String> = discovery.iter().map(|(t, _)| t.clone()).collect();
        // Cleared (empty retained payload) before the current configs are sent.
        for topic in homeassistant::stale_topics(state_dir, &discovery_topics) {
            tracing::info!(%topic, "clearing a Home Assistant config of a camera no longer served");
            inner.retained.insert(topic, Vec::new());
        }
        for (topic, payload) in discovery {
            inner.retained.insert(topic, payload);
        }
        let shared = Arc::new(Shared {
            settings,
            topics,
            node,
            cameras,
            client,
            inner: Mutex::new(inner),
            wake: Notify::new(),
            next_seq: AtomicU64::new(next_seq),
            outbox_dir,
            ha_status_topic: ha.enabled.then(|| ha.status_topic()),
            discovery_topics,
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CHANNEL);
        let handle = runtime.spawn(session::run(shared.clone(), eventloop, cmd_tx));
        Ok((
            Publisher {
                shared,
                task: Arc::new(TaskHandle::new(handle)),
            },
            cmd_rx,
        ))
    }

    /// Publishes an event durably on `<prefix>/<node>/<camera>/event` (QoS `mqtt.qos`, not
    /// retained): written to the outbox (temp file, fsync, rename) before this returns,
    /// then sent as soon as connected, and re-sent after reconnects and restarts until the
    /// broker acknowledges it. Blocks only for the local fsync. When the outbox is full the
    /// oldest entry is dropped (logged, counted).
    pub fn publish_event(&self, camera: &str, event: &Event) -> Result<(), PublishError> {
        self.check_camera(camera)?;
        if event.camera != camera {
            return Err(PublishError::CameraMismatch {
                camera: camera.to_string(),
                event: event.camera.clone(),
            });
        }
        let topic = self.shared.topics.camera(camera, "event");
        let payload = serde_json::to_vec(event)?;
        self.check_size(&topic, payload.len())?;
        let entry = Entry { topic, payload };
        {
            let inner = self.shared.lock();
            if inner.closed {
                return Err(PublishError::Closed);
            }
            inner.outbox.check_fits(entry.size())?;
        }
        let seq = self.shared.next_seq.fetch_add(1, Ordering::Relaxed);
        // The slow part (fsync) runs without the lock: the event loop keeps going.
        Outbox::write_file(&self.shared.outbox_dir, seq, &entry)?;
        let mut inner = self.shared.lock();
        let evicted = inner.outbox.insert(seq, entry);
        for old in evicted {
            inner.unsent.remove(&old);
            inner.counters.outbox_dropped += 1;
            tracing::warn!(
                seq = old,
                dropped_total = inner.counters.outbox_dropped,
                "outbox full: dropped its oldest event"
            );
        }
        inner.unsent.insert(seq);
        inner.pump(&self.shared);
        Ok(())
    }

    /// Retained health on `<prefix>/<node>/<camera>/health` (QoS 1, best effort).
    pub fn publish_health(&self, camera: &str, health: &Health) -> Result<(), PublishError> {
        self.check_camera(camera)?;
        let topic = self.shared.topics.camera(camera, "health");
        self.best_effort(topic, serde_json::to_vec(health)?)
    }

    /// Retained state on `<prefix>/<node>/<camera>/state` (QoS 1, best effort), sent when
    /// `anomalous`, `enabled`, `threshold` or `model_id` changed, or when the last one sent
    /// is `state_interval_s` old; other calls only update the value replayed on reconnect.
    pub fn publish_state(&self, camera: &str, state: &State) -> Result<(), PublishError> {
        self.check_camera(camera)?;
        let topic = self.shared.topics.camera(camera, "state");
        let payload = serde_json::to_vec(state)?;
        self.check_size(&topic, payload.len())?;
        let key = session::StateKey::of(state);
        let mut inner = self.shared.lock();
        if inner.closed {
            return Err(PublishError::Closed);
        }
        inner.retained.insert(topic.clone(), payload.clone());
        let due = match inner.state_last.get(camera) {
            Some((last, at)) => *last != key || at.elapsed() >= self.shared.settings.state_interval,
            None => true,
        };
        if !due {
            inner.counters.states_skipped += 1;
            return Ok(());
        }
        if inner.connected {
            if inner.send(
                &self.shared,
                topic,
                payload,
                QoS::AtLeastOnce,
                true,
                Tag::Other,
            ) {
                inner
                    .state_last
                    .insert(camera.to_string(), (key, Instant::now()));
            } else {
                inner.count_best_effort_drop("state");
            }
        }
        Ok(())
    }

    /// Retained raw JPEG on `<prefix>/<node>/<camera>/snapshot` (QoS 1, best effort).
    pub fn publish_snapshot(&self, camera: &str, jpeg: Vec<u8>) -> Result<(), PublishError> {
        self.check_camera(camera)?;
        let topic = self.shared.topics.camera(camera, "snapshot");
        self.best_effort(topic, jpeg)
    }

    /// Retained knob state on `<prefix>/<node>/<camera>/<knob>/state` (QoS 1, best effort);
    /// `state.knob` names the knob (`enabled`, `threshold`, `calibrate`).
    pub fn publish_knob_state(&self, camera: &str, state: &KnobState) -> Result<(), PublishError> {
        self.check_camera(camera)?;
        let knob = Knob::ALL
            .into_iter()
            .find(|k| k.as_str() == state.knob)
            .ok_or_else(|| PublishError::UnknownKnob(state.knob.clone()))?;
        let topic = self.shared.topics.knob_state(camera, knob);
        let payload = serde_json::to_vec(state)?;
        {
            let mut inner = self.shared.lock();
            inner
                .knob_values
                .insert((camera.to_string(), knob), state.value.clone());
        }
        self.best_effort(topic, payload)
    }

    /// Connection state and counters.
    pub fn status(&self) -> PublisherStatus {
        let inner = self.shared.lock();
        PublisherStatus {
            connected: inner.connected,
            outbox_len: inner.outbox.len(),
            outbox_bytes: inner.outbox.bytes(),
            ..inner.counters.clone()
        }
    }

    /// The camera ids this publisher serves.
    pub fn cameras(&self) -> &[String] {
        &self.shared.cameras
    }

    /// Graceful stop: publishes the retained `offline` status explicitly (a clean
    /// DISCONNECT suppresses the Will), waits up to [`SHUTDOWN_FLUSH`] for it and for every
    /// outbox entry to be acknowledged, then disconnects. Entries still unacknowledged stay
    /// on disk for the next start. Other clones of this handle get
    /// [`PublishError::Closed`] afterwards.
    pub async fn shutdown(self) {
        {
            let mut inner = self.shared.lock();
            if !inner.closed {
                inner.closed = true;
                inner.offline_acked = false;
                inner.ctrl.clear();
                inner.ctrl.push_back(Ctrl::Offline);
                inner.pump(&self.shared);
            }
        }
        self.shared.wake.notify_one();
        self.task
            .join(SHUTDOWN_FLUSH + Duration::from_secs(2), "mqtt")
            .await;
        let status = self.status();
        if status.outbox_len > 0 {
            tracing::warn!(
                entries = status.outbox_len,
                "mqtt shutdown: events not acknowledged stay in the outbox for the next start"
            );
        }
    }

    fn check_camera(&self, camera: &str) -> Result<(), PublishError> {
        if self.shared.cameras.iter().any(|c| c == camera) {
            Ok(())
        } else {
            Err(PublishError::UnknownCamera(camera.to_string()))
        }
    }

    fn check_size(&self, topic: &str, payload: usize) -> Result<(), PublishError> {
        let max = self.shared.settings.max_packet_bytes;
        let bytes = session::packet_size(topic, payload);
        if bytes > max {
            return Err(PublishError::TooLarge {
                topic: topic.to_string(),
                bytes,
                max,
            });
        }
        Ok(())
    }

    /// Retained QoS 1 publish that never blocks: remembered as the topic's latest value
    /// (replayed after every reconnect), sent now when connected, dropped and counted when
    /// the request channel is full.
    fn best_effort(&self, topic: String, payload: Vec<u8>) -> Result<(), PublishError> {
        self.check_size(&topic, payload.len())?;
        let mut inner = self.shared.lock();
        if inner.closed {
            return Err(PublishError::Closed);
        }
        inner.retained.insert(topic.clone(), payload.clone());
        if inner.connected
            && !inner.send(
                &self.shared,
                topic,
                payload,
                QoS::AtLeastOnce,
                true,
                Tag::Other,
            )
        {
            inner.count_best_effort_drop("retained");
        }
        Ok(())
    }
}

/// JSON of the node's [`Status`] with `status` = `online` / `offline`, stamped now.
fn status_payload(node: &str, cameras: &[String], status: &str) -> Result<Vec<u8>, PublishError> {
    let (ts, ts_ms) = crate::messages::timestamp(SystemTime::now());
    Ok(serde_json::to_vec(&Status {
        schema: SCHEMA_STATUS.into(),
        status: status.into(),
        node: node.into(),
        ts,
        ts_ms,
        version: env!("CARGO_PKG_VERSION").into(),
        cameras: cameras.to_vec(),
    })?)
}

/// JSON of a refused knob `set`.
fn knob_error_payload(
    node: &str,
    camera: &str,
    knob: Knob,
    value: serde_json::Value,
    error: String,
) -> Result<Vec<u8>, serde_json::Error> {
    let (ts, ts_ms) = crate::messages::timestamp(SystemTime::now());
    serde_json::to_vec(&KnobState {
        schema: SCHEMA_KNOB.into(),
        node: node.into(),
        camera: camera.into(),
        ts,
        ts_ms,
        knob: knob.as_str().into(),
        value,
        error: Some(error),
    })
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
