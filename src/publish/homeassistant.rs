//! Home Assistant MQTT discovery (plain profile, opt-in with `[mqtt.homeassistant]`).
//!
//! One Home Assistant device per camera, its entities reading the plain-profile topics
//! directly (no extra traffic per frame):
//!
//! | entity | platform | reads / writes |
//! |---|---|---|
//! | Anomaly | `binary_sensor` (problem) | `state` → `anomalous` (attributes: the whole state) |
//! | Anomaly score | `sensor` | `state` → `score` |
//! | Log density | `sensor` (diagnostic) | `state` → `log_density` |
//! | Camera health | `sensor` (enum, diagnostic) | `health` → `state` |
//! | Frame rate | `sensor` (diagnostic) | `health` → `fps` |
//! | Snapshot | `image` | `snapshot` (raw JPEG) |
//! | Calibrate | `button` (config) | `calibrate/set` ← `{}` |
//! | Threshold | `number` (config) | `state` → `threshold`; `threshold/set` ← value |
//! | Detection | `switch` (config) | `state` → `enabled`; `enabled/set` ← `ON`/`OFF` |
//!
//! Availability of every entity is the node's retained `status` (Last-Will `offline`).
//! Configs are retained, re-published after every CONNACK and whenever Home Assistant
//! announces itself on `<discovery_prefix>/status` (`online`). Config topics of cameras
//! that are no longer configured (remembered in `<state_dir>/homeassistant.json`) are
//! cleared with an empty retained message, so renamed cameras leave no ghost devices.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::ConfigError;
use super::topics::Topics;

/// `[mqtt.homeassistant]`: Home Assistant MQTT discovery. Unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HomeAssistantConfig {
    /// Publish discovery configs so Home Assistant creates one device per camera.
    /// Default `false`.
    pub enabled: bool,
    /// Home Assistant's discovery prefix (its MQTT integration setting). Default
    /// `"homeassistant"`.
    pub discovery_prefix: String,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        HomeAssistantConfig {
            enabled: false,
            discovery_prefix: "homeassistant".into(),
        }
    }
}

impl HomeAssistantConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.discovery_prefix;
        if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains(['+', '#', '\0']) {
            return Err(ConfigError::Invalid {
                key: "homeassistant.discovery_prefix",
                reason: format!("`{p}` is not a topic prefix (non-empty, no wildcards, no leading or trailing '/')"),
            });
        }
        Ok(())
    }

    /// Where Home Assistant announces `online` / `offline`.
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }
}

/// Health states a camera reports (the `health` sensor's enum options).
pub const HEALTH_STATES: [&str; 8] = [
    "starting",
    "ok",
    "uncalibrated",
    "stalled",
    "offline",
    "ended",
    "calibrating",
    "disabled",
];

/// Home Assistant ids allow `[a-zA-Z0-9_-]`: anything else becomes `_`.
fn ha_id(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The discovery messages for `cameras`: `(config topic, retained JSON payload)`.
pub(crate) fn discovery_messages(
    cfg: &HomeAssistantConfig,
    topics: &Topics,
    node: &str,
    cameras: &[String],
) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for cam in cameras {
        let dev_id = format!("vigil_{}_{}", ha_id(node), ha_id(cam));
        let device = json!({
            "identifiers": [dev_id],
            "name": format!("{node} {cam}"),
            "manufacturer": "vigil",
            "model": "DFKDE visual anomaly detector",
            "sw_version": env!("CARGO_PKG_VERSION"),
        });
        let origin = json!({
            "name": "vigil",
            "sw_version": env!("CARGO_PKG_VERSION"),
        });
        let availability = json!([{
            "topic": topics.status(),
            "value_template": "{{ value_json.status }}",
            "payload_available": "online",
            "payload_not_available": "offline",
        }]);
        let state = topics.camera(cam, "state");
        let health = topics.camera(cam, "health");
        let knob_set = |k: &str| format!("{}/set", topics.camera(cam, k));
        let entities: [(&str, &str, Value); 9] = [
            (
                "binary_sensor",
                "anomaly",
                json!({
                    "name": "Anomaly",
                    "device_class": "problem",
                    "state_topic": state,
                    "value_template": "{{ 'ON' if value_json.anomalous else 'OFF' }}",
                    "json_attributes_topic": state,
                }),
            ),
            (
                "sensor",
                "score",
                json!({
                    "name": "Anomaly score",
                    "state_topic": state,
                    "value_template": "{{ value_json.score }}",
                    "state_class": "measurement",
                    "suggested_display_precision": 3,
                    "icon": "mdi:chart-bell-curve",
                }),
            ),
            (
                "sensor",
                "log_density",
                json!({
                    "name": "Log density",
                    "state_topic": state,
                    "value_template": "{{ value_json.log_density }}",
                    "state_class": "measurement",
                    "suggested_display_precision": 2,
                    "entity_category": "diagnostic",
                }),
            ),
            (
                "sensor",
                "health",
                json!({
                    "name": "Camera health",
                    "state_topic": health,
                    "value_template": "{{ value_json.state }}",
                    "device_class": "enum",
                    "options": HEALTH_STATES,
                    "entity_category": "diagnostic",
                }),
            ),
            (
                "sensor",
                "fps",
                json!({
                    "name": "Frame rate",
                    "state_topic": health,
                    "value_template": "{{ value_json.fps | round(2) }}",
                    "unit_of_measurement": "fps",
                    "state_class": "measurement",
                    "entity_category": "diagnostic",
                }),
            ),
            (
                "image",
                "snapshot",
                json!({
                    "name": "Snapshot",
                    "image_topic": topics.camera(cam, "snapshot"),
                    "content_type": "image/jpeg",
                }),
            ),
            (
                "button",
                "calibrate",
                json!({
                    "name": "Calibrate",
                    "command_topic": knob_set("calibrate"),
                    "payload_press": "{}",
                    "retain": false,
                    "entity_category": "config",
                    "icon": "mdi:tune",
                }),
            ),
            (
                "number",
                "threshold",
                json!({
                    "name": "Threshold (log density)",
                    "command_topic": knob_set("threshold"),
                    "command_template": "{{ value }}",
                    "state_topic": state,
                    "value_template": "{{ value_json.threshold }}",
                    "min": -1_000_000.0,
                    "max": 1_000_000.0,
                    "step": 0.001,
                    "mode": "box",
                    "retain": false,
                    "entity_category": "config",
                }),
            ),
            (
                "switch",
                "enabled",
                json!({
                    "name": "Detection",
                    "command_topic": knob_set("enabled"),
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "state_topic": state,
                    "value_template": "{{ 'ON' if value_json.enabled else 'OFF' }}",
                    "state_on": "ON",
                    "state_off": "OFF",
                    "retain": false,
                    "entity_category": "config",
                }),
            ),
        ];
        for (component, object, mut body) in entities {
            if let Value::Object(m) = &mut body {
                m.insert("unique_id".into(), json!(format!("{dev_id}_{object}")));
                m.insert("device".into(), device.clone());
                m.insert("origin".into(), origin.clone());
                m.insert("availability".into(), availability.clone());
                m.insert("qos".into(), json!(1));
            }
            let topic = format!(
                "{}/{component}/{dev_id}/{object}/config",
                cfg.discovery_prefix
            );
            out.push((topic, body.to_string().into_bytes()));
        }
    }
    out
}

/// Config topics published by a previous run that the current set no longer has: they get
/// an empty retained message (Home Assistant removes the entity). Records the current set
/// in `<state_dir>/homeassistant.json` for the next run (atomically; a failure is logged
/// only, it costs at most a ghost entity).
pub(crate) fn stale_topics(state_dir: &Path, current: &[String]) -> Vec<String> {
    let path = state_dir.join("homeassistant.json");
    let previous: BTreeSet<String> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now: BTreeSet<String> = current.iter().cloned().collect();
    let stale: Vec<String> = previous.difference(&now).cloned().collect();
    if previous != now {
        let tmp = state_dir.join("homeassistant.json.tmp");
        let written = serde_json::to_vec(&now)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the Home Assistant discovery topics");
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sanitised_and_every_camera_gets_nine_entities() {
        let cfg = HomeAssistantConfig {
            enabled: true,
            ..Default::default()
        };
        let t = Topics::new("vigil", "line.1");
        let msgs = discovery_messages(&cfg, &t, "line.1", &["cam a".into(), "b".into()]);
        assert_eq!(msgs.len(), 18);
        let (topic, payload) = &msgs[0];
        assert_eq!(
            topic,
            "homeassistant/binary_sensor/vigil_line_1_cam_a/anomaly/config"
        );
        let v: Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v["unique_id"], "vigil_line_1_cam_a_anomaly");
        assert_eq!(v["state_topic"], "vigil/line.1/cam a/state");
        assert_eq!(v["availability"][0]["topic"], "vigil/line.1/status");
    }

    #[test]
    fn stale_topics_are_those_of_the_previous_run_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = vec!["x/1".to_string(), "x/2".to_string()];
        assert!(stale_topics(dir.path(), &a).is_empty());
        let b = vec!["x/2".to_string(), "x/3".to_string()];
        assert_eq!(stale_topics(dir.path(), &b), vec!["x/1".to_string()]);
        assert!(stale_topics(dir.path(), &b).is_empty());
        assert_eq!(stale_topics(dir.path(), &[]), b);
    }

    #[test]
    fn a_wildcard_discovery_prefix_is_refused() {
        let cfg = HomeAssistantConfig {
            enabled: true,
            discovery_prefix: "ha/#".into(),
        };
        assert!(cfg.validate().is_err());
        assert!(HomeAssistantConfig::default().validate().is_ok());
    }
}
