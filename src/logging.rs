//! Logging: journald when started by systemd (detected from `$JOURNAL_STREAM`), a
//! human-readable stderr format otherwise. `tracing` events carry structured fields
//! (camera, event id); under journald they are forwarded through the `log` facade to
//! `systemd-journal-logger`.

use std::io::IsTerminal;

/// Install the logger. `filter` uses tracing-subscriber's syntax (`info`, `vigil=debug`);
/// `$VIGIL_LOG` / `$RUST_LOG` override it.
pub fn init(filter: &str) {
    let mut spec = std::env::var("VIGIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| filter.to_string());
    if !spec.contains("rumqttd") {
        // The embedded broker (demo, bench) logs every connection, and its start-up
        // probe as an error; name `rumqttd=…` in the filter to see them.
        spec.push_str(",rumqttd=off");
    }
    if systemd_journal_logger::connected_to_journal() {
        if let Ok(journal) = systemd_journal_logger::JournalLog::new() {
            if journal
                .with_syslog_identifier("vigil".to_string())
                .install()
                .is_ok()
            {
                log::set_max_level(level_of(&spec));
                return;
            }
        }
    }
    let env = tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// The most verbose level named in a filter spec (journald gets level filtering only).
fn level_of(spec: &str) -> log::LevelFilter {
    let mut best = log::LevelFilter::Error;
    for part in spec.split(',') {
        let lvl = part.rsplit('=').next().unwrap_or("").trim();
        let l = match lvl.to_ascii_lowercase().as_str() {
            "trace" => log::LevelFilter::Trace,
            "debug" => log::LevelFilter::Debug,
            "info" => log::LevelFilter::Info,
            "warn" => log::LevelFilter::Warn,
            "error" => log::LevelFilter::Error,
            "off" => log::LevelFilter::Off,
            _ => continue,
        };
        best = best.max(l);
    }
    best
}
