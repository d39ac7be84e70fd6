//! `[mqtt]` configuration: broker URL, session, credentials, TLS and the publisher's bounds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls;
use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use super::homeassistant::HomeAssistantConfig;
use crate::sparkplug::{Profile, SparkplugConfig};

/// Why an [`MqttConfig`] (or the secrets and certificates it points to) cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("mqtt.url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("mqtt.{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("mqtt.{key} `{value}` is not a valid MQTT topic level ({reason})")]
    TopicLevel {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("reading mqtt.password_file {}: {source}", path.display())]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mqtt.password_env: environment variable `{var}` is not set or not UTF-8")]
    PasswordEnv { var: String },
    #[error("reading mqtt.ca_file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mqtt.ca_file {}: {reason}", path.display())]
    CaCertificates { path: PathBuf, reason: String },
    #[error("mqtts:// needs trusted roots: no mqtt.ca_file and no system CA bundle found (tried $SSL_CERT_FILE, {tried})")]
    NoSystemRoots { tried: String },
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
}

/// MQTT publisher settings (`[mqtt]` in the daemon's configuration). Every key is optional;
/// unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Broker URL, `mqtt://HOST[:PORT]` (plain TCP, port 1883 by default) or
    /// `mqtts://HOST[:PORT]` (TLS through rustls, port 8883 by default). No credentials,
    /// path or query in the URL. Default `"mqtt://127.0.0.1:1883"`.
    pub url: String,
    /// Topic prefix (may contain `/`, no wildcards). Default `"vigil"`.
    pub prefix: String,
    /// MQTT client id. Keep it stable: the session is persistent (`clean_session = false`),
    /// so the broker keeps the knob subscriptions and queues `set` messages while the node is
    /// away. Default `"vigil-<node>"`.
    pub client_id: Option<String>,
    /// Keep-alive interval in whole seconds (1..=65535). Default `30`.
    pub keep_alive_s: u64,
    /// User name for the broker. Default none (anonymous).
    pub username: Option<String>,
    /// File holding the broker password (surrounding whitespace trimmed). Mutually exclusive
    /// with `password_env`; needs `username`. Default none.
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the broker password. Mutually exclusive with
    /// `password_file`; needs `username`. Default none.
    pub password_env: Option<String>,
    /// PEM file with the CA certificate(s) that signed the broker's certificate, for
    /// `mqtts://`. Default none: the system CA bundle (`$SSL_CERT_FILE`, else the usual
    /// distribution paths).
    pub ca_file: Option<PathBuf>,
    /// QoS of event messages: `1` (at least once, acknowledged: the outbox entry is deleted
    /// on the broker's PUBACK) or `0` (the entry is deleted once written to the socket).
    /// `2` is refused: events are at-least-once, de-duplicated by consumers on `id`/`seq`.
    /// Default `1`.
    pub qos: u8,
    /// First reconnect delay after a connection error, seconds. Default `0.5`.
    pub reconnect_min_s: f64,
    /// Reconnect delay cap (the delay doubles after each failed attempt and resets on a
    /// successful CONNACK), seconds. Default `30`.
    pub reconnect_max_s: f64,
    /// The retained per-camera `state` is re-published at most this often (seconds) unless
    /// it changed (`anomalous`, `enabled`, `threshold` or `model_id`). Default `10`.
    pub state_interval_s: f64,
    /// Most events kept in the on-disk outbox; when full the OLDEST is dropped (logged and
    /// counted). Default `10000`.
    pub outbox_max_messages: usize,
    /// Most bytes (topics + payloads) kept in the on-disk outbox; when full the OLDEST entry
    /// is dropped. Default `50000000` (50 MB).
    pub outbox_max_bytes: u64,
    /// Most QoS 1 publishes awaiting their PUBACK at once (1..=65535). Default `100`.
    pub inflight: u16,
    /// Capacity of the request channel into the MQTT event loop. Best-effort messages
    /// (status, health, state, snapshot, knob state) are dropped and counted when it is
    /// full; publishing never blocks. Default `256`.
    pub request_channel: usize,
    /// Largest MQTT packet sent or accepted, bytes (snapshots are raw JPEGs: size it for
    /// them). Larger publishes are refused with an error. Default `4194304` (4 MiB).
    pub max_packet_bytes: usize,
    /// Home Assistant MQTT discovery (`[mqtt.homeassistant]`). Default: off.
    pub homeassistant: HomeAssistantConfig,
    /// Topic families: `"plain"` (vigil's JSON topics under `prefix`), `"sparkplug"`
    /// (Sparkplug B 3.0 under `spBv1.0/`, no plain topics and no images) or `"both"` (the
    /// plain topics, and Sparkplug on its own connection). Default `"plain"`.
    pub profile: Profile,
    /// `[mqtt.sparkplug]`: the Sparkplug B edge node (group and edge node ids, client id,
    /// report-by-exception deadbands). Used when `profile` is `sparkplug` or `both`.
    pub sparkplug: SparkplugConfig,
    /// Not a setting: a literal `password` key is refused when the file is parsed (the
    /// password must come from `password_file` or `password_env`).
    #[serde(
        rename = "password",
        deserialize_with = "reject_literal_password",
        skip_serializing
    )]
    #[doc(hidden)]
    pub literal_password: (),
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            prefix: "vigil".into(),
            client_id: None,
            keep_alive_s: 30,
            username: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            qos: 1,
            reconnect_min_s: 0.5,
            reconnect_max_s: 30.0,
            state_interval_s: 10.0,
            outbox_max_messages: 10_000,
            outbox_max_bytes: 50_000_000,
            inflight: 100,
            request_channel: 256,
            max_packet_bytes: 4 * 1024 * 1024,
            homeassistant: HomeAssistantConfig::default(),
            profile: Profile::Plain,
            sparkplug: SparkplugConfig::default(),
            literal_password: (),
        }
    }
}

fn reject_literal_password<'de, D: Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom(
        "a literal mqtt `password` is not accepted: put it in a file (`password_file`) \
         or an environment variable (`password_env`)",
    ))
}

/// Broker address parsed from [`MqttConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// Parse `mqtt://host[:port][/]` or `mqtts://host[:port][/]` (IPv6 hosts in brackets).
pub fn parse_broker_url(url: &str) -> Result<BrokerUrl, ConfigError> {
    let bad = |reason: &str| ConfigError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(bad("scheme must be mqtt:// or mqtts://"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL (use username + password_file/password_env)",
        ));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad("no path, query or fragment allowed"));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unterminated IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
        };
        (host, port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(bad("port must be 1..=65535")),
        },
    };
    Ok(BrokerUrl {
        host: host.to_string(),
        port,
        tls,
    })
}

/// Checks an MQTT topic level used as a node or camera id: non-empty, no `/`, `+`, `#` or
/// NUL, at most 128 bytes.
pub fn check_topic_level(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let reason = if value.is_empty() {
        "empty"
    } else if value.len() > 128 {
        "longer than 128 bytes"
    } else if value.contains(['/', '+', '#', '\0']) {
        "contains '/', '+', '#' or NUL"
    } else if value.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(ConfigError::TopicLevel {
        key,
        value: value.to_string(),
        reason,
    })
}

fn secs(key: &'static str, v: f64, min: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || v < min || v > 86_400.0 {
        return Err(ConfigError::Invalid {
            key,
            reason: format!("{v} s is outside {min}..=86400 s"),
        });
    }
    Ok(Duration::from_secs_f64(v))
}

/// The validated, ready-to-use form of an [`MqttConfig`] (secrets read, TLS built).
#[derive(Clone)]
pub(crate) struct Settings {
    pub broker: BrokerUrl,
    pub prefix: String,
    pub client_id: String,
    pub keep_alive: Duration,
    pub credentials: Option<(String, String)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub event_qos: rumqttc::QoS,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub state_interval: Duration,
    pub outbox_max_messages: usize,
    pub outbox_max_bytes: u64,
    pub inflight: u16,
    pub request_channel: usize,
    pub max_packet_bytes: usize,
}

impl Settings {
    /// Client options for this broker: keep-alive, packet and channel bounds, credentials
    /// and TLS (the session kind, in-flight window and Will are the caller's).
    pub fn mqtt_options(&self, client_id: String, clean_session: bool) -> rumqttc::MqttOptions {
        let mut opts =
            rumqttc::MqttOptions::new(client_id, self.broker.host.clone(), self.broker.port);
        opts.set_keep_alive(self.keep_alive)
            .set_clean_session(clean_session)
            .set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes)
            .set_request_channel_capacity(self.request_channel);
        if let Some((user, pass)) = &self.credentials {
            opts.set_credentials(user.clone(), pass.clone());
        }
        if let Some(tls) = &self.tls {
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        opts
    }
}

impl MqttConfig {
    /// Checks every key (without reading files or the environment).
    pub fn validate(&self, node: &str) -> Result<(), ConfigError> {
        let broker = parse_broker_url(&self.url)?;
        check_topic_level("node", node)?;
        self.homeassistant.validate()?;
        if self.homeassistant.enabled && !self.profile.plain() {
            return Err(ConfigError::Invalid {
                key: "homeassistant.enabled",
                reason: "Home Assistant's entities read the plain JSON topics: set \
                         mqtt.profile = \"plain\" or \"both\""
                    .into(),
            });
        }
        check_prefix(&self.prefix)?;
        if let Some(id) = &self.client_id {
            if id.is_empty() || id.len() > 65_535 {
                return Err(ConfigError::Invalid {
                    key: "client_id",
                    reason: "must be non-empty (the session is persistent)".into(),
                });
            }
        }
        if self.keep_alive_s == 0 || self.keep_alive_s > u64::from(u16::MAX) {
            return Err(ConfigError::Invalid {
                key: "keep_alive_s",
                reason: format!("{} is outside 1..=65535", self.keep_alive_s),
            });
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(ConfigError::Invalid {
                key: "password_file",
                reason: "set password_file or password_env, not both".into(),
            });
        }
        if self.username.is_none() && (self.password_file.is_some() || self.password_env.is_some())
        {
            return Err(ConfigError::Invalid {
                key: "username",
                reason: "a password needs a username (MQTT 3.1.1)".into(),
            });
        }
        if self.ca_file.is_some() && !broker.tls {
            return Err(ConfigError::Invalid {
                key: "ca_file",
                reason: "set, but the url is not mqtts://".into(),
            });
        }
        if self.qos > 1 {
            return Err(ConfigError::Invalid {
                key: "qos",
                reason: format!(
                    "{} is not supported: events are published with QoS 0 or 1 (at least \
                     once; consumers de-duplicate on id/seq)",
                    self.qos
                ),
            });
        }
        let min = secs("reconnect_min_s", self.reconnect_min_s, 0.001)?;
        let max = secs("reconnect_max_s", self.reconnect_max_s, 0.001)?;
        if min > max {
            return Err(ConfigError::Invalid {
                key: "reconnect_min_s",
                reason: "greater than reconnect_max_s".into(),
            });
        }
        secs("state_interval_s", self.state_interval_s, 0.0)?;
        if self.outbox_max_messages == 0 {
            return Err(ConfigError::Invalid {
                key: "outbox_max_messages",
                reason: "must be at least 1".into(),
            });
        }
        if self.outbox_max_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "outbox_max_bytes",
                reason: "must be at least 1024".into(),
            });
        }
        if self.inflight == 0 {
            return Err(ConfigError::Invalid {
                key: "inflight",
                reason: "must be at least 1".into(),
            });
        }
        if self.request_channel < 8 {
            return Err(ConfigError::Invalid {
                key: "request_channel",
                reason: "must be at least 8".into(),
            });
        }
        if self.max_packet_bytes < 1024 || self.max_packet_bytes > 256 * 1024 * 1024 {
            return Err(ConfigError::Invalid {
                key: "max_packet_bytes",
                reason: "must be within 1 KiB..=256 MiB".into(),
            });
        }
        self.sparkplug.validate(node)?;
        Ok(())
    }

    /// Validates, reads the password and builds the TLS configuration.
    pub(crate) fn resolve(&self, node: &str) -> Result<Settings, ConfigError> {
        self.validate(node)?;
        let broker = parse_broker_url(&self.url)?;
        let password = match (&self.password_file, &self.password_env) {
            (Some(path), _) => Some(read_password_file(path)?),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| ConfigError::PasswordEnv { var: var.clone() })?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let credentials = self
            .username
            .as_ref()
            .map(|u| (u.clone(), password.unwrap_or_default()));
        let tls = if broker.tls {
            Some(Arc::new(tls_config(self.ca_file.as_deref())?))
        } else {
            None
        };
        Ok(Settings {
            broker,
            prefix: self.prefix.clone(),
            client_id: self
                .client_id
                .clone()
                .unwrap_or_else(|| format!("vigil-{node}")),
            keep_alive: Duration::from_secs(self.keep_alive_s),
            credentials,
            tls,
            event_qos: if self.qos == 0 {
                rumqttc::QoS::AtMostOnce
            } else {
                rumqttc::QoS::AtLeastOnce
            },
            reconnect_min: Duration::from_secs_f64(self.reconnect_min_s),
            reconnect_max: Duration::from_secs_f64(self.reconnect_max_s),
            state_interval: Duration::from_secs_f64(self.state_interval_s),
            outbox_max_messages: self.outbox_max_messages,
            outbox_max_bytes: self.outbox_max_bytes,
            inflight: self.inflight,
            request_channel: self.request_channel,
            max_packet_bytes: self.max_packet_bytes,
        })
    }
}

fn check_prefix(prefix: &str) -> Result<(), ConfigError> {
    if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') {
        return Err(ConfigError::TopicLevel {
            key: "prefix",
            value: prefix.to_string(),
            reason: "empty, or starts/ends with '/'",
        });
    }
    for level in prefix.split('/') {
        check_topic_level("prefix", level)?;
    }
    Ok(())
}

fn read_password_file(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::PasswordFile {
        path: path.to_path_buf(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "mqtt password file is readable by group/others; chmod 600 it"
                );
            }
        }
    }
    Ok(text.trim().to_string())
}

/// System CA bundles, the paths `openssl-probe` (and so rustls-native-certs) looks at.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
];

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ConfigError> {
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(PathBuf::from)
            .into_iter()
            .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
            .find(|p| p.is_file())
            .ok_or_else(|| ConfigError::NoSystemRoots {
                tried: SYSTEM_CA_BUNDLES.join(", "),
            })?,
    };
    let pem = std::fs::read(&path).map_err(|source| ConfigError::CaFile {
        path: path.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    let mut bad = 0usize;
    for cert in rustls_pemfile_certs(&pem, &path)? {
        if roots.add(cert).is_err() {
            bad += 1;
        }
    }
    if roots.is_empty() {
        return Err(ConfigError::CaCertificates {
            path,
            reason: "no usable PEM certificate in it".into(),
        });
    }
    if bad > 0 {
        tracing::warn!(path = %path.display(), skipped = bad, "skipped unusable CA certificates");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn rustls_pemfile_certs(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::CaCertificates {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = MqttConfig::default();
        assert_eq!(c.url, "mqtt://127.0.0.1:1883");
        assert_eq!(c.prefix, "vigil");
        assert_eq!((c.keep_alive_s, c.qos, c.inflight), (30, 1, 100));
        assert_eq!((c.reconnect_min_s, c.reconnect_max_s), (0.5, 30.0));
        assert_eq!(c.state_interval_s, 10.0);
        assert_eq!(
            (c.outbox_max_messages, c.outbox_max_bytes),
            (10_000, 50_000_000)
        );
        assert_eq!(c.request_channel, 256);
        c.validate("line1").unwrap();
        let s = c.resolve("line1").unwrap();
        assert_eq!(s.client_id, "vigil-line1");
        assert!(s.tls.is_none() && s.credentials.is_none());
    }

    #[test]
    fn empty_document_is_the_default_and_unknown_keys_are_rejected() {
        let c: MqttConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, MqttConfig::default());
        let e = serde_json::from_str::<MqttConfig>(r#"{"urll": "x"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[test]
    fn a_literal_password_is_refused_with_a_pointer_to_the_alternatives() {
        let e = serde_json::from_str::<MqttConfig>(r#"{"username": "u", "password": "hunter2"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("password_file") && e.contains("password_env"),
            "{e}"
        );
        // and it never round-trips into output
        let out = serde_json::to_string(&MqttConfig::default()).unwrap();
        assert!(!out.contains("password\""), "{out}");
    }

    #[test]
    fn urls_parse_with_default_ports_and_reject_credentials() {
        let u = parse_broker_url("mqtt://127.0.0.1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 1883, false));
        let u = parse_broker_url("mqtts://broker.local:9999/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("broker.local", 9999, true)
        );
        let u = parse_broker_url("mqtts://[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8883));
        let u = parse_broker_url("mqtt://[::1]:1884").unwrap();
        assert_eq!(u.port, 1884);
        for bad in [
            "tcp://h",
            "mqtt://",
            "mqtt://u:p@h",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h/x",
            "mqtt://h?client_id=1",
            "mqtt://[::1",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inconsistent_settings_are_rejected() {
        let ok = MqttConfig::default();
        let cases: Vec<(&str, MqttConfig)> = vec![
            (
                "qos",
                MqttConfig {
                    qos: 2,
                    ..ok.clone()
                },
            ),
            (
                "keep_alive_s",
                MqttConfig {
                    keep_alive_s: 0,
                    ..ok.clone()
                },
            ),
            (
                "reconnect_min_s",
                MqttConfig {
                    reconnect_min_s: 40.0,
                    ..ok.clone()
                },
            ),
            (
                "reconnect_max_s",
                MqttConfig {
                    reconnect_max_s: f64::NAN,
                    ..ok.clone()
                },
            ),
            (
                "outbox_max_messages",
                MqttConfig {
                    outbox_max_messages: 0,
                    ..ok.clone()
                },
            ),
            (
                "inflight",
                MqttConfig {
                    inflight: 0,
                    ..ok.clone()
                },
            ),
            (
                "prefix",
                MqttConfig {
                    prefix: "a/+/b".into(),
                    ..ok.clone()
                },
            ),
            (
                "prefix",
                MqttConfig {
                    prefix: "a/".into(),
                    ..ok.clone()
                },
            ),
            (
                "username",
                MqttConfig {
                    password_env: Some("X".into()),
                    ..ok.clone()
                },
            ),
            (
                "password_file",
                MqttConfig {
                    username: Some("u".into()),
                    password_env: Some("X".into()),
                    password_file: Some("/p".into()),
                    ..ok.clone()
                },
            ),
            (
                "ca_file",
                MqttConfig {
                    ca_file: Some("/ca.pem".into()),
                    ..ok.clone()
                },
            ),
        ];
        for (key, c) in cases {
            let e = c.validate("n").unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        assert!(ok.validate("a/b").is_err());
        assert!(ok.validate("").is_err());
    }

    #[test]
    fn password_comes_trimmed_from_a_file_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "  s3cret\n").unwrap();
        let c = MqttConfig {
            username: Some("vigil".into()),
            password_file: Some(f),
            ..MqttConfig::default()
        };
        let s = c.resolve("n").unwrap();
        assert_eq!(s.credentials, Some(("vigil".into(), "s3cret".into())));

        let c = MqttConfig {
            username: Some("vigil".into()),
            password_env: Some("VIGIL_TEST_SURELY_UNSET_7F3A".into()),
            ..MqttConfig::default()
        };
        assert!(matches!(
            c.resolve("n"),
            Err(ConfigError::PasswordEnv { .. })
        ));
        // PATH is always set; reading it avoids mutating the environment in a threaded test.
        let c = MqttConfig {
            password_env: Some("PATH".into()),
            ..c
        };
        let path = std::env::var("PATH").unwrap();
        let s = c.resolve("n").unwrap();
        assert_eq!(
            s.credentials,
            Some(("vigil".into(), path.trim().to_string()))
        );
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a certificate").unwrap();
        let c = MqttConfig {
            url: "mqtts://127.0.0.1".into(),
            ca_file: Some(f),
            ..MqttConfig::default()
        };
        assert!(matches!(
            c.resolve("n"),
            Err(ConfigError::CaCertificates { .. })
        ));
    }
}
