//! The event-loop task and the bookkeeping shared with the publishing threads.
//!
//! Mapping rumqttc packet ids to outbox entries: every publish request this module puts
//! into rumqttc's request channel gets a [`Tag`] pushed onto `tags`, under the same lock,
//! in the same order. rumqttc takes requests from the channel in FIFO order and reports
//! each one as `Outgoing::Publish(pkid)` (or `Outgoing::AwaitAck(pkid)` on a packet-id
//! collision, later resolved by an `Outgoing::Publish(pkid)`), so the front tag belongs to
//! the next such event; `Incoming::PubAck(pkid)` then resolves the tag. On a connection
//! error rumqttc moves in-flight publishes and the channel's contents into
//! `EventLoop::pending`; this module accounts for them, clears `pending` and re-sends
//! from its own state after the next CONNACK (rumqttc would otherwise re-send them only if
//! the broker kept the session, and silently drop them if not).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, Outgoing, Packet, QoS, Request,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, Notify};

use super::config::Settings;
use super::outbox::Outbox;
use super::task::Polled;
use super::topics::{parse_command, Knob, Topics};
use super::{knob_error_payload, status_payload, Command, PublisherStatus, SHUTDOWN_FLUSH};
use crate::messages::State;

/// What a publish request in rumqttc's hands stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    /// Outbox entry `seq`.
    Outbox(u64),
    /// The explicit `offline` status of a shutdown.
    Offline,
    /// Any other (best-effort, retained) message.
    Other,
}

/// Control messages queued for the next free slot of the request channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ctrl {
    Online,
    Offline,
    Subscribe,
    /// Latest value of a retained topic (looked up when sent, so it is never stale).
    Retained(String),
}

/// The fields whose change makes a `state` publish due before `state_interval_s`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StateKey {
    anomalous: bool,
    enabled: bool,
    threshold: u64,
    model_id: String,
    calibrating: bool,
}

impl StateKey {
    pub fn of(s: &State) -> StateKey {
        StateKey {
            anomalous: s.anomalous,
            enabled: s.enabled,
            threshold: s.threshold.to_bits(),
            model_id: s.model_id.clone(),
            calibrating: s.calibrating,
        }
    }
}

pub(crate) struct Shared {
    pub settings: Settings,
    pub topics: Topics,
    pub node: String,
    pub cameras: Vec<String>,
    pub client: AsyncClient,
    pub inner: std::sync::Mutex<Inner>,
    /// Wakes the task out of a reconnect wait (shutdown).
    pub wake: Notify,
    pub next_seq: AtomicU64,
    pub outbox_dir: PathBuf,
    /// `<discovery_prefix>/status` when Home Assistant discovery is on.
    pub ha_status_topic: Option<String>,
    /// Home Assistant config topics (their payloads are in `Inner::retained`).
    pub discovery_topics: Vec<String>,
}

pub(crate) struct Inner {
    pub connected: bool,
    pub closed: bool,
    pub offline_acked: bool,
    pub outbox: Outbox,
    /// Outbox entries to (re)send, oldest first.
    pub unsent: BTreeSet<u64>,
    /// One per publish request handed to rumqttc and not yet reported as outgoing.
    tags: VecDeque<Tag>,
    /// Publish parked by rumqttc on a packet-id collision.
    collision: Option<(u16, Tag)>,
    /// Sent QoS 1 publishes awaiting their PUBACK, by packet id.
    inflight: HashMap<u16, Tag>,
    pub ctrl: VecDeque<Ctrl>,
    /// Latest payload of every retained topic written (replayed after each CONNACK).
    pub retained: BTreeMap<String, Vec<u8>>,
    pub state_last: HashMap<String, (StateKey, Instant)>,
    /// Last value reported per knob (quoted in error states).
    pub knob_values: HashMap<(String, Knob), serde_json::Value>,
    pub counters: PublisherStatus,
}

/// Upper bound of the size of a PUBLISH packet (fixed header ≤ 5, topic length 2, packet
/// id 2).
pub(crate) fn packet_size(topic: &str, payload: usize) -> usize {
    5 + 2 + topic.len() + 2 + payload
}

impl Inner {
    pub fn new(outbox: Outbox) -> Inner {
        let unsent = outbox.seqs().collect();
        Inner {
            connected: false,
            closed: false,
            offline_acked: false,
            outbox,
            unsent,
            tags: VecDeque::new(),
            collision: None,
            inflight: HashMap::new(),
            ctrl: VecDeque::new(),
            retained: BTreeMap::new(),
            state_last: HashMap::new(),
            knob_values: HashMap::new(),
            counters: PublisherStatus::default(),
        }
    }

    /// `try_publish` with its tag; `false` (nothing queued) when the channel is full.
    pub fn send(
        &mut self,
        sh: &Shared,
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        tag: Tag,
    ) -> bool {
        self.tags.push_back(tag);
        match sh.client.try_publish(topic, qos, retain, payload) {
            Ok(()) => true,
            Err(_) => {
                self.tags.pop_back();
                false
            }
        }
    }

    pub fn count_best_effort_drop(&mut self, what: &str) {
        self.counters.best_effort_dropped += 1;
        let n = self.counters.best_effort_dropped;
        if n.is_power_of_two() {
            tracing::warn!(
                what,
                dropped_total = n,
                "mqtt request channel full: dropped a best-effort message"
            );
        }
    }

    /// Moves queued control messages, then unsent outbox entries, into the request channel
    /// while it has room. Never blocks; called after every event-loop event and by the
    /// publishing methods. Outbox entries use at most ¾ of the channel so that best-effort
    /// messages still get through during a long replay.
    pub fn pump(&mut self, sh: &Shared) {
        if !self.connected {
            return;
        }
        while let Some(c) = self.ctrl.front().cloned() {
            let sent = match &c {
                Ctrl::Online | Ctrl::Offline => {
                    let (status, tag) = if c == Ctrl::Online {
                        ("online", Tag::Other)
                    } else {
                        ("offline", Tag::Offline)
                    };
                    match status_payload(&sh.node, &sh.cameras, status) {
                        Ok(p) => self.send(sh, sh.topics.status(), p, QoS::AtLeastOnce, true, tag),
                        Err(e) => {
                            tracing::error!(error = %e, "cannot serialise the status");
                            true
                        }
                    }
                }
                Ctrl::Subscribe => {
                    let filters = sh
                        .topics
                        .knob_set_filters()
                        .into_iter()
                        .chain(sh.ha_status_topic.clone())
                        .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
                    sh.client.try_subscribe_many(filters).is_ok()
                }
                Ctrl::Retained(topic) => match self.retained.get(topic) {
                    Some(p) => {
                        let p = p.clone();
                        self.send(sh, topic.clone(), p, QoS::AtLeastOnce, true, Tag::Other)
                    }
                    None => true,
                },
            };
            if !sent {
                return;
            }
            self.ctrl.pop_front();
        }
        let limit = (sh.settings.request_channel * 3 / 4).max(1);
        while self.tags.len() < limit {
            let Some(seq) = self.unsent.first().copied() else {
                break;
            };
            let Some(entry) = self.outbox.get(seq) else {
                self.unsent.remove(&seq);
                continue;
            };
            let (topic, payload) = (entry.topic.clone(), entry.payload.clone());
            if !self.send(
                sh,
                topic,
                payload,
                sh.settings.event_qos,
                false,
                Tag::Outbox(seq),
            ) {
                break;
            }
            self.unsent.remove(&seq);
        }
    }

    /// Puts what a lost request stood for back in line.
    fn requeue(&mut self, tag: Tag) {
        match tag {
            Tag::Outbox(seq) => {
                if self.outbox.get(seq).is_some() {
                    self.unsent.insert(seq);
                }
            }
            Tag::Offline => {
                if self.closed && !self.ctrl.contains(&Ctrl::Offline) {
                    self.ctrl.push_front(Ctrl::Offline);
                }
            }
            Tag::Other => {}
        }
    }

    /// The broker has it (QoS 1 PUBACK), or it was written to the socket (QoS 0).
    fn delivered(&mut self, tag: Tag) {
        match tag {
            Tag::Outbox(seq) => {
                if self.outbox.remove(seq) {
                    self.counters.events_acked += 1;
                }
            }
            Tag::Offline => self.offline_acked = true,
            Tag::Other => {}
        }
    }

    fn on_connack(&mut self, session_present: bool) {
        self.connected = true;
        self.counters.connects += 1;
        if self.counters.connects > 1 {
            self.counters.reconnects += 1;
        }
        tracing::info!(
            session_present,
            outbox = self.outbox.len(),
            "connected to the MQTT broker"
        );
        self.ctrl.clear();
        if self.closed {
            if !self.offline_acked {
                self.ctrl.push_back(Ctrl::Offline);
            }
        } else {
            self.ctrl.push_back(Ctrl::Online);
            self.ctrl.push_back(Ctrl::Subscribe);
            let topics: Vec<String> = self.retained.keys().cloned().collect();
            self.ctrl.extend(topics.into_iter().map(Ctrl::Retained));
        }
    }

    pub fn on_event(&mut self, sh: &Shared, event: &Event, commands: &mpsc::Sender<Command>) {
        match event {
            Event::Incoming(Packet::ConnAck(ack)) => self.on_connack(ack.session_present),
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(tag) = self.inflight.remove(&ack.pkid) {
                    self.delivered(tag);
                }
            }
            Event::Incoming(Packet::SubAck(ack)) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                self.counters.knobs_subscribed = !refused;
                if refused {
                    tracing::error!(
                        "the broker refused a knob subscription (ACL?): remote `set` will not work"
                    );
                }
            }
            Event::Incoming(Packet::Publish(p)) => self.on_inbound(sh, p, commands),
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let tag = match self.collision.take() {
                    Some((id, tag)) if id == *pkid => Some(tag),
                    other => {
                        self.collision = other;
                        self.tags.pop_front()
                    }
                };
                match tag {
                    None => tracing::error!(
                        pkid,
                        "outgoing publish without a matching request (bookkeeping bug)"
                    ),
                    Some(tag) if *pkid == 0 => self.delivered(tag),
                    Some(tag) => {
                        if let Some(old) = self.inflight.insert(*pkid, tag) {
                            // rumqttc reuses a packet id only once it was acknowledged.
                            tracing::error!(pkid, ?old, "packet id reused while in flight");
                            self.requeue(old);
                        }
                    }
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                if let Some(tag) = self.tags.pop_front() {
                    self.collision = Some((*pkid, tag));
                }
            }
            _ => {}
        }
    }

    fn on_inbound(&mut self, sh: &Shared, p: &rumqttc::Publish, commands: &mpsc::Sender<Command>) {
        if sh.ha_status_topic.as_deref() == Some(p.topic.as_str()) {
            // Home Assistant (re)started: it wants the discovery configs again.
            if p.payload.trim_ascii() == b"online" {
                tracing::info!("Home Assistant is online: re-sending discovery configs");
                for topic in &sh.discovery_topics {
                    let c = Ctrl::Retained(topic.clone());
                    if !self.ctrl.contains(&c) {
                        self.ctrl.push_back(c);
                    }
                }
            }
            return;
        }
        let Some((camera, knob)) = sh.topics.parse_set(&p.topic) else {
            tracing::debug!(topic = %p.topic, "ignoring a message on an unexpected topic");
            return;
        };
        let known = sh.cameras.iter().any(|c| c == camera);
        let verdict = if !known {
            Err(format!("unknown camera `{camera}`"))
        } else if knob == Knob::Calibrate && p.retain {
            Err("retained calibrate/set refused: publish the command without retain".into())
        } else {
            parse_command(camera, knob, &p.payload)
        };
        let refusal = match verdict {
            Ok(cmd) => match commands.try_send(cmd) {
                Ok(()) => None,
                Err(mpsc::error::TrySendError::Full(cmd)) => {
                    self.counters.commands_dropped += 1;
                    tracing::warn!(?cmd, "command queue full: refused");
                    Some("command queue full, try again".to_string())
                }
                Err(mpsc::error::TrySendError::Closed(cmd)) => {
                    self.counters.commands_dropped += 1;
                    tracing::warn!(?cmd, "nobody receives commands any more: dropped");
                    None
                }
            },
            Err(reason) => {
                self.counters.commands_refused += 1;
                tracing::warn!(topic = %p.topic, %reason, "refused a knob set");
                Some(reason)
            }
        };
        let Some(reason) = refusal else {
            return;
        };
        let value = self
            .knob_values
            .get(&(camera.to_string(), knob))
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let topic = sh.topics.knob_state(camera, knob);
        match knob_error_payload(&sh.node, camera, knob, value, reason) {
            Ok(payload) => {
                if known {
                    self.retained.insert(topic.clone(), payload.clone());
                }
                if !self.send(sh, topic, payload, QoS::AtLeastOnce, true, Tag::Other) {
                    self.count_best_effort_drop("knob error state");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot serialise a knob state"),
        }
    }

    /// After a connection error: settles everything rumqttc was holding and clears its
    /// retransmission queue; what must still go out is re-sent after the next CONNACK.
    fn on_error(&mut self, sh: &Shared, el: &mut EventLoop, commands: &mpsc::Sender<Command>) {
        self.connected = false;
        self.counters.knobs_subscribed = false;
        // Events rumqttc buffered but poll() never returned (acks and outgoing reports).
        let stale: Vec<Event> = el.state.events.drain(..).collect();
        for ev in &stale {
            self.on_event(sh, ev, commands);
        }
        self.connected = false;
        // Requests rumqttc drained from the channel (packet id 0: never sent) are the
        // oldest tags; in-flight retransmissions (packet id set) are in `inflight`.
        let fresh = el
            .pending
            .iter()
            .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0))
            .count();
        for _ in 0..fresh {
            if let Some(tag) = self.tags.pop_front() {
                self.requeue(tag);
            }
        }
        el.pending.clear();
        // rumqttc's clean() leaves a parked collision behind, which would block the
        // request channel for good after the reconnect.
        el.state.collision = None;
        if let Some((_, tag)) = self.collision.take() {
            self.requeue(tag);
        }
        let inflight: Vec<Tag> = self.inflight.drain().map(|(_, t)| t).collect();
        for tag in inflight {
            self.requeue(tag);
        }
    }
}

/// The event-loop task: polls forever, with exponential backoff after errors, until a
/// shutdown completes (or its [`SHUTDOWN_FLUSH`] deadline passes).
pub(crate) async fn run(sh: Arc<Shared>, mut el: EventLoop, commands: mpsc::Sender<Command>) {
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
            let flushed = {
                let inner = sh.lock();
                inner.connected && inner.offline_acked && inner.outbox.len() == 0
            };
            if flushed && sh.client.try_disconnect().is_ok() {
                disconnect_sent = true;
            }
        }
        if el.network.is_none() {
            // The Will's timestamp: when the connection that carries it was opened.
            match status_payload(&sh.node, &sh.cameras, "offline") {
                Ok(p) => {
                    el.mqtt_options.set_last_will(LastWill::new(
                        sh.topics.status(),
                        p,
                        QoS::AtLeastOnce,
                        true,
                    ));
                }
                Err(e) => tracing::error!(error = %e, "cannot serialise the Will"),
            }
        }
        let result = match super::task::poll(&mut el, &sh.wake, deadline).await {
            Polled::Done(r) => r,
            Polled::Woken => continue,
            Polled::Deadline => {
                tracing::warn!("mqtt shutdown: flush deadline passed, dropping the connection");
                return;
            }
        };
        match result {
            Ok(event) => {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    tracing::info!("disconnected from the MQTT broker (shutdown)");
                    sh.lock().connected = false;
                    return;
                }
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    backoff = min;
                }
                let mut inner = sh.lock();
                inner.on_event(&sh, &event, &commands);
                inner.pump(&sh);
            }
            Err(e) => {
                let was_connected = {
                    let mut inner = sh.lock();
                    let was = inner.connected;
                    inner.on_error(&sh, &mut el, &commands);
                    inner.counters.connection_errors += 1;
                    inner.counters.last_error = Some(e.to_string());
                    was
                };
                log_error(&e, was_connected, backoff);
                let until = deadline.unwrap_or_else(far_future);
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = sh.wake.notified(), if deadline.is_none() => {}
                    _ = tokio::time::sleep_until(until), if deadline.is_some() => {
                        tracing::warn!("mqtt shutdown: not connected at the flush deadline");
                        return;
                    }
                }
                backoff = (backoff * 2).min(max);
            }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

fn log_error(e: &ConnectionError, was_connected: bool, retry_in: std::time::Duration) {
    if was_connected {
        tracing::warn!(error = %e, "lost the MQTT connection; reconnecting");
    } else {
        tracing::warn!(error = %e, retry_in = ?retry_in, "MQTT connection attempt failed");
    }
}

#[cfg(test)]
mod tests {
    //! White-box tests of the packet-id ↔ outbox bookkeeping, driving rumqttc's
    //! `MqttState` by hand the way `EventLoop::poll` does.
    use super::*;
    use crate::publish::outbox::Entry;
    use crate::publish::MqttConfig;
    use rumqttc::{MqttOptions, PubAck};
    use std::sync::Mutex;

    struct Fixture {
        sh: Arc<Shared>,
        el: EventLoop,
        tx: mpsc::Sender<Command>,
        _dir: tempfile::TempDir,
    }

    fn fixture(inflight: u16, entries: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let cfg = MqttConfig {
            inflight,
            ..MqttConfig::default()
        };
        let settings = cfg.resolve("n").unwrap();
        let outbox_dir = dir.path().join("outbox");
        let mut outbox = Outbox::open(&outbox_dir, 100, 1 << 20).unwrap().outbox;
        for seq in 0..entries {
            let e = Entry {
                topic: "vigil/n/cam0/event".into(),
                payload: format!("{{\"seq\":{seq}}}").into_bytes(),
            };
            Outbox::write_file(&outbox_dir, seq, &e).unwrap();
            outbox.insert(seq, e);
        }
        let mut opts = MqttOptions::new("t", "127.0.0.1", 1);
        opts.set_inflight(inflight);
        let (client, el) = AsyncClient::new(opts, 64);
        let mut inner = Inner::new(outbox);
        inner.connected = true;
        let sh = Arc::new(Shared {
            settings,
            topics: Topics::new("vigil", "n"),
            node: "n".into(),
            cameras: vec!["cam0".into()],
            client,
            inner: Mutex::new(inner),
            wake: Notify::new(),
            next_seq: AtomicU64::new(entries),
            outbox_dir,
            ha_status_topic: None,
            discovery_topics: Vec::new(),
        });
        let (tx, _rx) = mpsc::channel(4);
        Fixture {
            sh,
            el,
            tx,
            _dir: dir,
        }
    }

    impl Fixture {
        /// What `poll()` does with the next `n` requests: take them from the channel,
        /// hand them to the state, report the events.
        fn send_out(&mut self, n: usize) {
            // `clean()` is the only public way to drain the request channel; it also
            // empties the state's in-flight table, so keep a copy of the state and drop
            // the retransmissions it produced (packet id set).
            let saved = self.el.state.clone();
            self.el.clean();
            self.el.state = saved;
            let mut reqs: Vec<Request> = self
                .el
                .pending
                .drain(..)
                .filter(|r| !matches!(r, Request::Publish(p) if p.pkid != 0))
                .collect();
            let rest = reqs.split_off(n.min(reqs.len()));
            for r in reqs {
                self.el.state.handle_outgoing_packet(r).unwrap();
            }
            self.el.pending.extend(rest);
            self.report();
        }

        fn ack(&mut self, pkid: u16) {
            self.el
                .state
                .handle_incoming_packet(Packet::PubAck(PubAck::new(pkid)))
                .unwrap();
            self.report();
        }

        fn report(&mut self) {
            let events: Vec<Event> = self.el.state.events.drain(..).collect();
            let mut inner = self.sh.lock();
            for ev in &events {
                inner.on_event(&self.sh, ev, &self.tx);
            }
        }

        fn outbox(&self) -> Vec<u64> {
            self.sh.lock().outbox.seqs().collect()
        }
    }

    #[test]
    fn pubacks_delete_exactly_their_outbox_entries() {
        let mut f = fixture(10, 3);
        f.sh.lock().pump(&f.sh);
        f.send_out(3);
        assert_eq!(f.sh.lock().inflight.len(), 3);
        f.ack(2);
        assert_eq!(f.outbox(), vec![0, 2]);
        assert!(!Outbox::path_of(&f.sh.outbox_dir, 1).exists());
        f.ack(1);
        f.ack(3);
        assert_eq!(f.outbox(), Vec::<u64>::new());
        assert_eq!(f.sh.lock().counters.events_acked, 3);
    }

    #[test]
    fn a_connection_error_requeues_in_flight_and_never_sent_entries() {
        let mut f = fixture(10, 4);
        f.sh.lock().pump(&f.sh);
        f.send_out(2); // seq 0, 1 in flight; 2, 3 still in the channel
        f.ack(1); // seq 0 delivered
                  // The connection drops: rumqttc moves in-flight + channel into `pending`.
        f.el.clean();
        assert_eq!(f.el.pending.len(), 3);
        {
            let mut inner = f.sh.lock();
            inner.on_error(&f.sh, &mut f.el, &f.tx);
            assert!(f.el.pending.is_empty());
            assert!(inner.tags.is_empty() && inner.inflight.is_empty());
            assert_eq!(
                inner.unsent.iter().copied().collect::<Vec<_>>(),
                vec![1, 2, 3]
            );
            assert!(!inner.connected);
            // Reconnected: everything goes out again, oldest first.
            inner.on_connack(false);
            inner.pump(&f.sh);
            assert!(inner.unsent.is_empty());
        }
        f.el.clean();
        let topics: Vec<String> =
            f.el.pending
                .iter()
                .filter_map(|r| match r {
                    Request::Publish(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
                    _ => None,
                })
                .filter(|p| p.starts_with("{\"seq\""))
                .collect();
        assert_eq!(topics, vec!["{\"seq\":1}", "{\"seq\":2}", "{\"seq\":3}"]);
    }

    #[test]
    fn a_packet_id_collision_keeps_the_mapping_straight() {
        // inflight = 2: packet ids cycle 1, 2, 1, ...; an out-of-order PUBACK makes the
        // third publish collide with the still-unacknowledged id 1.
        let mut f = fixture(2, 3);
        f.sh.lock().pump(&f.sh);
        f.send_out(2); // seq 0 → id 1, seq 1 → id 2
        f.ack(2); // seq 1 delivered first
        f.send_out(1); // seq 2 → id 1: collision, parked
        assert_eq!(f.sh.lock().collision.map(|(id, _)| id), Some(1));
        f.ack(1); // seq 0 delivered; rumqttc sends the parked publish as id 1
        assert_eq!(f.outbox(), vec![2]);
        assert_eq!(f.sh.lock().inflight.get(&1), Some(&Tag::Outbox(2)));
        f.ack(1);
        assert_eq!(f.outbox(), Vec::<u64>::new());
    }
}
