//! MQTT payloads (plain profile). Every JSON payload carries `schema`, RFC 3339 UTC time
//! with milliseconds (`ts`) and `ts_ms`, the node id and, where it applies, the camera id
//! and model id. Topics (prefix default `vigil`):
//!
//! | topic | retain | payload |
//! |---|---|---|
//! | `<prefix>/<node>/status` | yes | [`Status`]; Last-Will `{"status":"offline",...}` |
//! | `<prefix>/<node>/<cam>/health` | yes | [`Health`] |
//! | `<prefix>/<node>/<cam>/state` | yes | [`State`] (on change + at most every N s) |
//! | `<prefix>/<node>/<cam>/event` | no | [`Event`] (via the durable outbox) |
//! | `<prefix>/<node>/<cam>/snapshot` | yes | raw JPEG of the event's peak frame |
//! | `<prefix>/<node>/<cam>/<knob>/set` → `.../<knob>/state` | state yes | [`KnobState`] |

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const SCHEMA_STATUS: &str = "vigil.status/1";
pub const SCHEMA_HEALTH: &str = "vigil.health/1";
pub const SCHEMA_STATE: &str = "vigil.state/1";
pub const SCHEMA_EVENT: &str = "vigil.event/1";
pub const SCHEMA_KNOB: &str = "vigil.knob/1";

/// (RFC 3339 UTC with milliseconds, unix milliseconds) of a time point.
pub fn timestamp(t: SystemTime) -> (String, u64) {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    (humantime::format_rfc3339_millis(t).to_string(), ms)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub schema: String,
    /// `online` / `offline`.
    pub status: String,
    pub node: String,
    pub ts: String,
    pub ts_ms: u64,
    pub version: String,
    /// Camera ids served by this node.
    pub cameras: Vec<String>,
}

/// Camera health: `starting`, `ok`, `uncalibrated` (frames flow but the camera has no
/// model yet: it waits for its first calibration), `stalled` (no frame for
/// `stall_timeout`), `offline` (source failed, reopening with backoff), `ended` (a finite
/// source is done), `calibrating`, `disabled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub schema: String,
    pub node: String,
    pub camera: String,
    pub ts: String,
    pub ts_ms: u64,
    pub state: String,
    /// Frames per second scored over the last interval.
    pub fps: f64,
    pub last_frame_ts: Option<String>,
    pub frames_captured: u64,
    pub frames_scored: u64,
    pub dropped_frames: u64,
    /// Last error message of the source, if any.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub schema: String,
    pub node: String,
    pub camera: String,
    /// Capture time of the frame this state describes.
    pub ts: String,
    pub ts_ms: u64,
    pub anomalous: bool,
    /// anomalib's pred_score (sigmoid of the log-density).
    pub score: f64,
    pub log_density: f64,
    /// Log-density threshold (anomalous iff log_density < threshold).
    pub threshold: f64,
    pub model_id: String,
    pub enabled: bool,
    /// The camera is calibrating: its frames feed the calibration, none is scored and no
    /// event is raised until it ends (see `calibrate/state`).
    #[serde(default)]
    pub calibrating: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub schema: String,
    /// Stable id of the event (the same in its start / update / end messages and in
    /// duplicates re-sent after a reconnect).
    pub id: String,
    /// `start`, `update` or `end`.
    pub r#type: String,
    pub node: String,
    pub camera: String,
    /// Capture time of the first anomalous frame.
    pub ts_start: String,
    pub ts_start_ms: u64,
    /// Capture time of the frame that produced this message.
    pub ts: String,
    pub ts_ms: u64,
    /// Highest pred_score so far, and its log-density.
    pub peak_score: f64,
    pub peak_log_density: f64,
    pub threshold: f64,
    /// Frames over threshold so far.
    pub frames: u64,
    pub snapshot_topic: String,
    pub model_id: String,
    /// Per-message sequence number (unique with `id`; lets consumers drop duplicates).
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnobState {
    pub schema: String,
    pub node: String,
    pub camera: String,
    pub ts: String,
    pub ts_ms: u64,
    pub knob: String,
    pub value: serde_json::Value,
    /// Set when the last `/set` was refused, with the reason.
    pub error: Option<String>,
}
