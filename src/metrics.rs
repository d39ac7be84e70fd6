//! Prometheus `/metrics` endpoint (opt-in: `[metrics] enabled = true`).
//!
//! Everything is read at scrape time from the counters the pipeline and the MQTT publisher
//! keep anyway (a [`Collector`]), except the two latency histograms, which the inference
//! workers fill per frame. The endpoint is a deliberately small HTTP/1.1 responder on a
//! tokio listener (GET/HEAD `/metrics`, one request per connection, 5 s deadline): no HTTP
//! framework in an edge binary for one read-only page.
//!
//! Exposition: OpenMetrics text 1.0 (Prometheus ≥ 2.5 negotiates it; counters end in
//! `_total`). Metric names, all with a `camera` label where per camera:
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `vigil_build_info{version}` | info | the running version |
//! | `vigil_camera_frames_captured_total` | counter | frames the source delivered |
//! | `vigil_camera_frames_scored_total` | counter | frames scored by a worker |
//! | `vigil_camera_frames_dropped_total` | counter | frames replaced in the latest-frame slot before a worker took them |
//! | `vigil_camera_frame_errors_total` | counter | frames that failed (decode, inference) |
//! | `vigil_camera_anomalies_total` | counter | anomaly events started |
//! | `vigil_camera_event_messages_total` | counter | event messages (start/update/end) |
//! | `vigil_camera_health{state}` | gauge | 1 for the camera's current health state, 0 for the others |
//! | `vigil_camera_enabled` | gauge | detection enabled (1/0) |
//! | `vigil_camera_last_score` | gauge | anomalib's normalised score of the last frame |
//! | `vigil_camera_last_log_density` | gauge | log-density of the last frame |
//! | `vigil_camera_threshold_log_density` | gauge | threshold in force (anomalous iff log-density below) |
//! | `vigil_camera_model_info{model_id}` | info | the model in service |
//! | `vigil_camera_inference_seconds` | histogram | backbone time per frame |
//! | `vigil_camera_frame_latency_seconds` | histogram | capture → verdict published |
//! | `vigil_mqtt_connected` | gauge | 1 while connected to the broker |
//! | `vigil_mqtt_outbox_events` / `_bytes` | gauge | events not yet acknowledged (on disk) |
//! | `vigil_mqtt_outbox_dropped_total` | counter | events dropped because the outbox was full |
//! | `vigil_mqtt_events_acked_total` | counter | events acknowledged by the broker |
//! | `vigil_mqtt_best_effort_dropped_total` | counter | state/health/snapshot messages dropped (request channel full) |
//! | `vigil_mqtt_reconnects_total` | counter | connections after the first |

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pipeline::{CameraRuntime, Pipeline};
use crate::publish::Publisher;
use crate::source::CaptureHealth;

/// `[metrics]`: the Prometheus endpoint. Unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `http://<listen>/metrics`. Default `false`.
    pub enabled: bool,
    /// Listen address `IP:PORT`. Loopback by default: the page is unauthenticated, so
    /// expose it beyond the host only on a trusted network (e.g. `0.0.0.0:9898`).
    /// Default `"127.0.0.1:9898"`.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            listen: "127.0.0.1:9898".into(),
        }
    }
}

#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("metrics.listen `{0}` is not an IP:PORT address")]
    Address(String),
    #[error("metrics: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl MetricsConfig {
    /// The listen address, validated.
    pub fn address(&self) -> Result<SocketAddr, MetricsError> {
        self.listen
            .parse()
            .map_err(|_| MetricsError::Address(self.listen.clone()))
    }
}

/// Buckets of the latency histograms: 2 ms · 2^k up to ~4 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.002, 2.0, 12))
}

/// A camera's health as published: `calibrating` and `disabled` override the capture's
/// state; a capture that is `ok` on a camera without a model is `uncalibrated`.
pub fn camera_state(cam: &CameraRuntime, capture: &CaptureHealth) -> &'static str {
    if cam.is_calibrating() {
        "calibrating"
    } else if !cam.enabled.load(Ordering::Relaxed) {
        "disabled"
    } else if capture.state == crate::source::HealthState::Ok && cam.current_model().is_none() {
        "uncalibrated"
    } else {
        capture.state.as_str()
    }
}

/// Reads capture health at scrape time.
pub type HealthProbe = Box<dyn Fn() -> CaptureHealth + Send + Sync>;

/// The scrape-time view of a running daemon.
struct DaemonCollector {
    pipeline: Arc<Pipeline>,
    /// One per camera, in `pipeline.cameras` order.
    health: Vec<HealthProbe>,
    publisher: Option<Publisher>,
}

impl std::fmt::Debug for DaemonCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonCollector")
            .field("cameras", &self.pipeline.cameras.len())
            .finish()
    }
}

/// One metric family with a `camera` label (plus `extra` labels per sample).
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut me = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(me.encode_family(&labels)?)?;
    }
    Ok(())
}

fn single<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: M,
) -> Result<(), std::fmt::Error> {
    let me = enc.encode_descriptor(name, help, None, metric.metric_type())?;
    metric.encode(me)
}

fn cam(c: &CameraRuntime) -> Vec<(&'static str, String)> {
    vec![("camera", c.cfg.id.clone())]
}

impl DaemonCollector {
    fn counter(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&CameraRuntime) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let cams = &self.pipeline.cameras;
        family(
            enc,
            name,
            help,
            MetricType::Counter,
            cams.iter().map(|c| (cam(c), ConstCounter::new(value(c)))),
        )
    }

    fn gauge(
        &self,
        enc: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: impl Fn(&CameraRuntime) -> Option<f64>,
    ) -> Result<(), std::fmt::Error> {
        let cams = &self.pipeline.cameras;
        family(
            enc,
            name,
            help,
            MetricType::Gauge,
            cams.iter()
                .filter_map(|c| value(c).map(|v| (cam(c), ConstGauge::new(v)))),
        )
    }
}

impl Collector for DaemonCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut enc;
        let cams = &self.pipeline.cameras;
        {
            let mut me = e.encode_descriptor(
                "vigil_build",
                "The running vigil version.",
                None,
                MetricType::Info,
            )?;
            me.encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;
        }
        self.counter(
            e,
            "vigil_camera_frames_captured",
            "Frames the camera's source delivered.",
            |c| c.slot.captured(),
        )?;
        self.counter(
            e,
            "vigil_camera_frames_scored",
            "Frames scored by an inference worker.",
            |c| c.counters.scored.load(Ordering::Relaxed),
        )?;
        self.counter(
            e,
            "vigil_camera_frames_dropped",
            "Frames replaced in the latest-frame slot before a worker took them.",
            |c| c.slot.dropped(),
        )?;
        self.counter(
            e,
            "vigil_camera_frame_errors",
            "Frames that failed to decode or score.",
            |c| c.counters.errors.load(Ordering::Relaxed),
        )?;
        self.counter(
            e,
            "vigil_camera_anomalies",
            "Anomaly events started.",
            |c| c.counters.anomalies.load(Ordering::Relaxed),
        )?;
        self.counter(
            e,
            "vigil_camera_event_messages",
            "Event messages published (start, update, end).",
            |c| c.counters.events.load(Ordering::Relaxed),
        )?;
        {
            let states: Vec<&'static str> = cams
                .iter()
                .zip(&self.health)
                .map(|(c, probe)| camera_state(c, &probe()))
                .collect();
            family(
                e,
                "vigil_camera_health",
                "1 for the camera's current health state, 0 for the others.",
                MetricType::Gauge,
                cams.iter().zip(&states).flat_map(|(c, now)| {
                    crate::publish::HEALTH_STATES.iter().map(move |s| {
                        (
                            vec![("camera", c.cfg.id.clone()), ("state", s.to_string())],
                            ConstGauge::new(i64::from(s == now)),
                        )
                    })
                }),
            )?;
        }
        self.gauge(
            e,
            "vigil_camera_enabled",
            "Detection enabled (1) or not (0).",
            |c| {
                Some(if c.enabled.load(Ordering::Relaxed) {
                    1.0
                } else {
                    0.0
                })
            },
        )?;
        let last = |c: &CameraRuntime| *crate::pipeline::lock(&c.last_score);
        self.gauge(
            e,
            "vigil_camera_last_score",
            "anomalib's normalised anomaly score of the last scored frame.",
            |c| last(c).map(|(_, s)| s),
        )?;
        self.gauge(
            e,
            "vigil_camera_last_log_density",
            "Log-density of the last scored frame.",
            |c| last(c).map(|(ld, _)| ld),
        )?;
        self.gauge(
            e,
            "vigil_camera_threshold_log_density",
            "Threshold in force: a frame is anomalous iff its log-density is below it.",
            |c| c.current_model().map(|m| c.threshold(&m)),
        )?;
        {
            let mut me = e.encode_descriptor(
                "vigil_camera_model",
                "The model in service per camera.",
                None,
                MetricType::Info,
            )?;
            for c in cams {
                let Some(model) = c.current_model() else {
                    continue;
                };
                me.encode_info(&[
                    ("camera", c.cfg.id.clone()),
                    ("model_id", model.artifact.meta.model_id.clone()),
                ])?;
            }
        }
        family(
            e,
            "vigil_camera_inference_seconds",
            "Backbone (CNN) time per frame.",
            MetricType::Histogram,
            cams.iter()
                .map(|c| (cam(c), c.counters.inference_seconds.clone())),
        )?;
        family(
            e,
            "vigil_camera_frame_latency_seconds",
            "Time from a frame's capture to its verdict being published.",
            MetricType::Histogram,
            cams.iter()
                .map(|c| (cam(c), c.counters.frame_latency_seconds.clone())),
        )?;
        if let Some(p) = &self.publisher {
            let s = p.status();
            single(
                e,
                "vigil_mqtt_connected",
                "1 while connected to the MQTT broker.",
                ConstGauge::new(i64::from(s.connected)),
            )?;
            single(
                e,
                "vigil_mqtt_outbox_events",
                "Events in the durable outbox, not acknowledged yet.",
                ConstGauge::new(s.outbox_len as i64),
            )?;
            single(
                e,
                "vigil_mqtt_outbox_bytes",
                "Bytes in the durable outbox.",
                ConstGauge::new(s.outbox_bytes as i64),
            )?;
            single(
                e,
                "vigil_mqtt_outbox_dropped",
                "Events dropped because the outbox was full.",
                ConstCounter::new(s.outbox_dropped),
            )?;
            single(
                e,
                "vigil_mqtt_events_acked",
                "Events acknowledged by the broker.",
                ConstCounter::new(s.events_acked),
            )?;
            single(
                e,
                "vigil_mqtt_best_effort_dropped",
                "State, health and snapshot messages dropped: request channel full.",
                ConstCounter::new(s.best_effort_dropped),
            )?;
            single(
                e,
                "vigil_mqtt_reconnects",
                "Connections to the broker after the first.",
                ConstCounter::new(s.reconnects),
            )?;
        }
        Ok(())
    }
}

/// The registry of a running daemon.
pub fn registry(
    pipeline: Arc<Pipeline>,
    health: Vec<HealthProbe>,
    publisher: Option<Publisher>,
) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(DaemonCollector {
        pipeline,
        health,
        publisher,
    }));
    r
}

/// Binds `cfg.listen` (an error here is reported before the daemon says READY).
pub async fn bind(cfg: &MetricsConfig) -> Result<TcpListener, MetricsError> {
    let addr = cfg.address()?;
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })
}

/// Serves scrapes until the task is aborted.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let r = registry.clone();
                tokio::spawn(async move {
                    let served = tokio::time::timeout(Duration::from_secs(5), answer(stream, &r));
                    if let Ok(Err(e)) = served.await {
                        tracing::debug!(error = %e, "metrics request failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Content type of the OpenMetrics text exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn answer(mut s: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
                true,
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut first = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let body_too = method != "HEAD";
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => respond(&mut s, "200 OK", CONTENT_TYPE, text.as_bytes(), body_too).await,
                Err(_) => {
                    respond(
                        &mut s,
                        "500 Internal Server Error",
                        "text/plain",
                        b"encoding failed\n",
                        body_too,
                    )
                    .await
                }
            }
        }
        ("GET" | "HEAD", "/") => {
            respond(
                &mut s,
                "200 OK",
                "text/plain; charset=utf-8",
                b"vigil: metrics at /metrics\n",
                body_too,
            )
            .await
        }
        (_, "/metrics" | "/") => {
            respond(
                &mut s,
                "405 Method Not Allowed",
                "text/plain",
                b"GET or HEAD only\n",
                true,
            )
            .await
        }
        _ => {
            respond(
                &mut s,
                "404 Not Found",
                "text/plain",
                b"not found: try /metrics\n",
                body_too,
            )
            .await
        }
    }
}

async fn respond(
    s: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    if with_body {
        s.write_all(body).await?;
    }
    s.shutdown().await
}
