//! `[mqtt] profile` and the `[mqtt.sparkplug]` table.

use serde::{Deserialize, Serialize};

use crate::publish::{check_topic_level, ConfigError};

/// Which MQTT topic families the daemon publishes (`[mqtt] profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// vigil's JSON topics under `<prefix>/<node>/...` (events, snapshots, knobs).
    #[default]
    Plain,
    /// Sparkplug B 3.0 only (`spBv1.0/<group>/...`): no plain topics, no images.
    Sparkplug,
    /// Both: the plain topics, and Sparkplug on its own connection.
    Both,
}

impl Profile {
    /// The plain JSON publisher runs.
    pub fn plain(self) -> bool {
        matches!(self, Profile::Plain | Profile::Both)
    }

    /// The Sparkplug edge node runs.
    pub fn sparkplug(self) -> bool {
        matches!(self, Profile::Sparkplug | Profile::Both)
    }
}

/// `[mqtt.sparkplug]`: the Sparkplug B edge node (used when `profile` is `sparkplug` or
/// `both`). Broker URL, TLS, credentials, keep-alive and reconnect delays come from
/// `[mqtt]`. Every key is optional; unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SparkplugConfig {
    /// Sparkplug group id (`spBv1.0/<group_id>/...`): no `/`, `+` or `#`. Default `"vigil"`.
    pub group_id: String,
    /// Edge node id (`spBv1.0/<group>/NBIRTH/<edge_node_id>`): no `/`, `+` or `#`.
    /// Default: the daemon's `node`.
    pub edge_node_id: Option<String>,
    /// MQTT client id of the Sparkplug connection (its own connection, clean session).
    /// Default `"<mqtt.client_id>-spb"` (`"vigil-<node>-spb"` when `mqtt.client_id` is not
    /// set).
    pub client_id: Option<String>,
    /// `Anomaly/Score` (0..1) is reported by exception: a DDATA carries it only when it
    /// moved more than this from the value last reported. Default `0.01`.
    pub score_deadband: f64,
    /// Report-by-exception deadband of `Anomaly/LogDensity`, in nats (natural-log units of
    /// the DFKDE density). Default `0.1`.
    pub log_density_deadband: f64,
    /// Report-by-exception deadband of `Inference/FPS`, frames per second. Default `0.5`.
    pub fps_deadband: f64,
}

impl Default for SparkplugConfig {
    fn default() -> Self {
        SparkplugConfig {
            group_id: "vigil".into(),
            edge_node_id: None,
            client_id: None,
            score_deadband: 0.01,
            log_density_deadband: 0.1,
            fps_deadband: 0.5,
        }
    }
}

impl SparkplugConfig {
    /// Checks every key; `node` is the daemon's node id (the default edge node id).
    pub fn validate(&self, node: &str) -> Result<(), ConfigError> {
        check_topic_level("sparkplug.group_id", &self.group_id)?;
        check_topic_level("sparkplug.edge_node_id", &self.edge_node_id(node))?;
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 65_535 {
                return Err(ConfigError::Invalid {
                    key: "sparkplug.client_id",
                    reason: "must be non-empty and at most 65535 bytes".into(),
                });
            }
        }
        for (key, v) in [
            ("sparkplug.score_deadband", self.score_deadband),
            ("sparkplug.log_density_deadband", self.log_density_deadband),
            ("sparkplug.fps_deadband", self.fps_deadband),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("{v} must be a finite number >= 0"),
                });
            }
        }
        Ok(())
    }

    /// The edge node id in use.
    pub fn edge_node_id(&self, node: &str) -> String {
        self.edge_node_id
            .clone()
            .unwrap_or_else(|| node.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_topic_wildcards_or_separators_are_refused() {
        for bad in ["a/b", "a+", "#", ""] {
            let c = SparkplugConfig {
                group_id: bad.into(),
                ..SparkplugConfig::default()
            };
            assert!(c.validate("n").is_err(), "group_id {bad:?}");
            let c = SparkplugConfig {
                edge_node_id: Some(bad.into()),
                ..SparkplugConfig::default()
            };
            assert!(c.validate("n").is_err(), "edge_node_id {bad:?}");
        }
        assert!(SparkplugConfig::default().validate("n").is_ok());
        // The node id itself is the default edge node id.
        assert!(SparkplugConfig::default().validate("a+b").is_err());
    }

    #[test]
    fn deadbands_must_be_finite_and_not_negative() {
        let c = SparkplugConfig {
            score_deadband: -0.1,
            ..SparkplugConfig::default()
        };
        assert!(c.validate("n").is_err());
        let c = SparkplugConfig {
            fps_deadband: f64::NAN,
            ..SparkplugConfig::default()
        };
        assert!(c.validate("n").is_err());
    }

    #[test]
    fn the_table_parses_with_defaults_and_refuses_unknown_keys() {
        let c: SparkplugConfig = toml::from_str("group_id = \"plant\"").unwrap();
        assert_eq!(c.group_id, "plant");
        assert_eq!(c.score_deadband, 0.01);
        assert!(toml::from_str::<SparkplugConfig>("groupid = \"x\"").is_err());
        let p: std::collections::BTreeMap<String, Profile> =
            toml::from_str("a = \"both\"\nb = \"plain\"\nc = \"sparkplug\"").unwrap();
        assert_eq!(p["a"], Profile::Both);
        assert!(p["a"].plain() && p["a"].sparkplug());
        assert!(!p["b"].sparkplug() && !p["c"].plain());
    }
}
