//! Topic names (see the table in [`crate::messages`]) and inbound knob parsing.

use serde_json::Value;

use super::Command;

/// A remotely settable per-camera knob: `<prefix>/<node>/<cam>/<knob>/set`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Knob {
    Enabled,
    Threshold,
    Calibrate,
}

impl Knob {
    pub const ALL: [Knob; 3] = [Knob::Enabled, Knob::Threshold, Knob::Calibrate];

    pub fn as_str(self) -> &'static str {
        match self {
            Knob::Enabled => "enabled",
            Knob::Threshold => "threshold",
            Knob::Calibrate => "calibrate",
        }
    }

    fn parse(s: &str) -> Option<Knob> {
        Knob::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Topic builder for one node.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    /// `<prefix>/<node>`
    base: String,
}

impl Topics {
    pub fn new(prefix: &str, node: &str) -> Topics {
        Topics {
            base: format!("{prefix}/{node}"),
        }
    }

    /// `<prefix>/<node>/status`
    pub fn status(&self) -> String {
        format!("{}/status", self.base)
    }

    /// `<prefix>/<node>/<cam>/<leaf>` (`health`, `state`, `event`, `snapshot`).
    pub fn camera(&self, camera: &str, leaf: &str) -> String {
        format!("{}/{camera}/{leaf}", self.base)
    }

    /// `<prefix>/<node>/<cam>/<knob>/state`
    pub fn knob_state(&self, camera: &str, knob: Knob) -> String {
        format!("{}/{camera}/{}/state", self.base, knob.as_str())
    }

    /// The subscriptions: `<prefix>/<node>/+/<knob>/set` for every knob.
    pub fn knob_set_filters(&self) -> Vec<String> {
        Knob::ALL
            .iter()
            .map(|k| format!("{}/+/{}/set", self.base, k.as_str()))
            .collect()
    }

    /// `(camera, knob)` of a `.../<cam>/<knob>/set` topic of this node.
    pub fn parse_set<'t>(&self, topic: &'t str) -> Option<(&'t str, Knob)> {
        let rest = topic.strip_prefix(self.base.as_str())?.strip_prefix('/')?;
        let mut parts = rest.split('/');
        let (cam, knob, set) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || set != "set" || cam.is_empty() {
            return None;
        }
        Some((cam, Knob::parse(knob)?))
    }
}

/// Turns a `set` payload into a [`Command`], or the reason it is refused.
///
/// * `enabled`: `true` / `false`, `"ON"` / `"OFF"` (any case, quoted or bare), or
///   `{"enabled": bool}`.
/// * `threshold`: a finite number, or `{"log_density": x}`.
/// * `calibrate`: any JSON value, passed through (an empty payload is `null`).
pub(crate) fn parse_command(camera: &str, knob: Knob, payload: &[u8]) -> Result<Command, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| "payload is not UTF-8".to_string())?
        .trim();
    let camera = camera.to_string();
    match knob {
        Knob::Enabled => {
            let enabled = on_off(text)
                .or_else(|| match serde_json::from_str::<Value>(text).ok()? {
                    Value::Bool(b) => Some(b),
                    Value::String(s) => on_off(&s),
                    Value::Object(m) => m.get("enabled")?.as_bool(),
                    _ => None,
                })
                .ok_or_else(|| {
                    format!(
                        "enabled: expected true/false, \"ON\"/\"OFF\" or {{\"enabled\": bool}}, got {}",
                        excerpt(text)
                    )
                })?;
            Ok(Command::SetEnabled { camera, enabled })
        }
        Knob::Threshold => {
            let v: Value = serde_json::from_str(text)
                .map_err(|_| format!("threshold: not JSON: {}", excerpt(text)))?;
            let x = match &v {
                Value::Object(m) => m.get("log_density").and_then(Value::as_f64),
                v => v.as_f64(),
            };
            match x {
                Some(log_density) if log_density.is_finite() => Ok(Command::SetThreshold {
                    camera,
                    log_density,
                }),
                _ => Err(format!(
                    "threshold: expected a finite number or {{\"log_density\": x}}, got {}",
                    excerpt(text)
                )),
            }
        }
        Knob::Calibrate => {
            let payload = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(text)
                    .map_err(|_| format!("calibrate: not JSON: {}", excerpt(text)))?
            };
            Ok(Command::Calibrate { camera, payload })
        }
    }
}

fn on_off(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("on") {
        Some(true)
    } else if s.eq_ignore_ascii_case("off") {
        Some(false)
    } else {
        None
    }
}

/// At most 64 characters of an offending payload, for error messages.
fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("`{out}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_topics_parse_only_for_this_node_and_known_knobs() {
        let t = Topics::new("plant/vigil", "n1");
        assert_eq!(
            t.parse_set("plant/vigil/n1/cam0/enabled/set"),
            Some(("cam0", Knob::Enabled))
        );
        assert_eq!(
            t.parse_set("plant/vigil/n1/cam0/threshold/set"),
            Some(("cam0", Knob::Threshold))
        );
        for bad in [
            "plant/vigil/n2/cam0/enabled/set",
            "plant/vigil/n1/cam0/enabled/state",
            "plant/vigil/n1/cam0/gain/set",
            "plant/vigil/n1//enabled/set",
            "plant/vigil/n1/cam0/enabled/set/x",
            "plant/vigil/n10/cam0/enabled/set",
        ] {
            assert_eq!(t.parse_set(bad), None, "{bad}");
        }
        assert_eq!(
            t.knob_set_filters(),
            vec![
                "plant/vigil/n1/+/enabled/set",
                "plant/vigil/n1/+/threshold/set",
                "plant/vigil/n1/+/calibrate/set"
            ]
        );
        assert_eq!(t.status(), "plant/vigil/n1/status");
        assert_eq!(
            t.knob_state("c", Knob::Calibrate),
            "plant/vigil/n1/c/calibrate/state"
        );
    }

    #[test]
    fn enabled_accepts_bools_on_off_and_an_object() {
        let ok = |p: &str| parse_command("c", Knob::Enabled, p.as_bytes());
        for (p, want) in [
            ("true", true),
            ("false", false),
            ("\"ON\"", true),
            ("\"off\"", false),
            ("ON", true),
            (" OFF\n", false),
            ("{\"enabled\": true}", true),
        ] {
            assert_eq!(
                ok(p),
                Ok(Command::SetEnabled {
                    camera: "c".into(),
                    enabled: want
                }),
                "{p}"
            );
        }
        for p in ["1", "\"yes\"", "{\"enabled\": 1}", "", "{"] {
            assert!(ok(p).is_err(), "{p}");
        }
    }

    #[test]
    fn threshold_accepts_a_number_or_an_object() {
        let ok = |p: &str| parse_command("c", Knob::Threshold, p.as_bytes());
        assert_eq!(
            ok("-12.5"),
            Ok(Command::SetThreshold {
                camera: "c".into(),
                log_density: -12.5
            })
        );
        assert_eq!(
            ok("{\"log_density\": 3}"),
            Ok(Command::SetThreshold {
                camera: "c".into(),
                log_density: 3.0
            })
        );
        for p in ["abc", "\"-3\"", "{\"threshold\": 1}", "null", "1e999"] {
            let e = ok(p).unwrap_err();
            assert!(e.starts_with("threshold:"), "{p}: {e}");
        }
        assert!(parse_command("c", Knob::Threshold, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn calibrate_passes_json_through() {
        assert_eq!(
            parse_command("c", Knob::Calibrate, b"{\"frames\": 200}"),
            Ok(Command::Calibrate {
                camera: "c".into(),
                payload: serde_json::json!({"frames": 200})
            })
        );
        assert_eq!(
            parse_command("c", Knob::Calibrate, b""),
            Ok(Command::Calibrate {
                camera: "c".into(),
                payload: Value::Null
            })
        );
        assert!(parse_command("c", Knob::Calibrate, b"go").is_err());
        let long = "x".repeat(500);
        let e = parse_command("c", Knob::Calibrate, long.as_bytes()).unwrap_err();
        assert!(e.len() < 120, "{e}");
    }
}
