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
