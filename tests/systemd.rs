//! The shipped unit file passes `systemd-analyze verify` and rates ≤ 2.0 ("OK") in
//! `systemd-analyze security`, while still reaching /dev/video* (DeviceAllow).

mod common;

use std::process::Command;

fn unit_with_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let unit = std::fs::read_to_string(common::repo_path("systemd/vigil.service")).expect("unit");
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("DeviceAllow=char-video4linux rw"));
    assert!(unit.contains("RestartPreventExitStatus=78"));
    assert!(unit.contains("ExecStartPre=/usr/bin/vigil check-config"));
    assert!(unit.contains("WatchdogSec="));
    assert!(
        unit.contains("MALLOC_ARENA_MAX=2"),
        "keeps RSS within the 120 MB budget with 2 workers"
    );
    let text = unit.replace("/usr/bin/vigil", env!("CARGO_BIN_EXE_vigil"));
    let path = dir.join("vigil.service");
    std::fs::write(&path, text).expect("write");
    path
}

#[test]
fn unit_file_verifies() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = unit_with_binary(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    // Ignore complaints about the host's other units; anything about ours fails.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("vigil.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {err}");
}

#[test]
fn unit_file_security_exposure_is_ok() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = unit_with_binary(dir.path());
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no score in: {text}"));
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("score");
    eprintln!("{line}");
    assert!(score <= 2.0, "exposure {score} > 2.0: {text}");
}

/// Started by systemd (stderr on a journal stream, `$JOURNAL_STREAM` naming it), vigil logs
/// through journald's native protocol: its own identifier, real priorities, the bare message.
/// A real `systemd-journald` runs in a private mount namespace (tmpfs over its socket and
/// storage directories, so the host's journal is untouched); `systemd-cat` connects the
/// stream and the wrapper sets `$JOURNAL_STREAM` the way systemd does for a service. Needs
/// root (`unshare -m`), as CI has.
#[test]
fn logs_reach_journald_natively_with_priorities_when_started_by_systemd() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "node = \"n\"\n[inference]\nworkers = 0\n").expect("write");
    let script = r#"
set -eu
for d in /run/systemd/journal /run/log/journal /var/log/journal; do
  mkdir -p "$d"; mount -t tmpfs tmpfs "$d"
done
/lib/systemd/systemd-journald & J=$!
for _ in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
systemd-cat -t vigil-stream sh -c \
  'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$0" check-config "$1"' \
  "$VIGIL" "$BAD" && echo "check-config passed?" >&2
journalctl --sync 2>/dev/null || sleep 1
journalctl -D /run/log/journal -o json --no-pager
kill $J
"#;
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "bash", "-c", script])
        .env("VIGIL", env!("CARGO_BIN_EXE_vigil"))
        .env("BAD", &bad)
        .env_remove("VIGIL_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "journald harness failed (needs root and /lib/systemd/systemd-journald): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &serde_json::Value| e["_COMM"] == "vigil")
        .collect();
    let native: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["_TRANSPORT"] == "journal")
        .collect();
    assert!(
        !native.is_empty(),
        "no native journal entry from vigil (stderr formatter used?): {entries:#?}"
    );
    let err = native
        .iter()
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.contains("inference.workers must be in 1..=64"))
        })
        .unwrap_or_else(|| panic!("the configuration error is not in the journal: {native:#?}"));
    assert_eq!(err["SYSLOG_IDENTIFIER"], "vigil");
    assert_eq!(
        err["PRIORITY"], "3",
        "ERROR maps to journald priority 3 (err)"
    );
    let msg = err["MESSAGE"].as_str().expect("message");
    assert!(
        !msg.contains(" ERROR "),
        "journald gets the bare message, not the stderr line format: {msg}"
    );
}
