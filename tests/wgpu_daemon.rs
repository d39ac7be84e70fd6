//! `vigil run` with `[inference] backend = "wgpu"` as a real process against a real broker
//! (Debian mosquitto on a free loopback port), on real magnetic_tile frames from a folder
//! source, on whatever adapter `auto` finds (lavapipe in CI: `scripts/wgpu.sh`):
//! events and state arrive and the log names the wgpu engine and its adapter. Without a
//! usable adapter (`VK_ICD_FILENAMES` pointing nowhere, `adapter = "vulkan"`) the daemon runs
//! on tract with `fallback_to_tract = true` and says so, and refuses to start (exit 78, the
//! configuration code) with `fallback_to_tract = false`.
#![cfg(feature = "wgpu")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::*;
use vigil::features::list_images;

/// A config for one folder camera at `fps` with `inference` lines added to `[inference]`.
fn write_config(root: &Path, port: u16, frames: &Path, fps: u32, inference: &str) -> PathBuf {
    let extra = Extra {
        inference,
        ..Extra::default()
    };
    write_folder_config(root, port, frames, "wgpunode", extra, fps)
}

/// `vigil run --config <config>` with extra environment, stderr appended to `<config>.log`.
fn spawn_with_env(config: &Path, env: &[(&str, &str)]) -> Daemon {
    spawn_daemon_with_env(config, &config.with_extension("log"), env)
}

fn log_of(config: &Path) -> String {
    std::fs::read_to_string(config.with_extension("log")).unwrap_or_default()
}

/// Wait until the daemon's log contains `needle`; panic with the log on timeout.
fn wait_for_log(config: &Path, needle: &str, timeout: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let log = log_of(config);
        if log.contains(needle) {
            return log;
        }
        assert!(
            t0.elapsed() < timeout,
            "no {needle:?} in the daemon log within {timeout:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Neither Vulkan driver nor GL is reachable for the child: the Vulkan loader finds no ICD.
const NO_VULKAN: [(&str, &str); 2] = [
    ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
    ("VK_DRIVER_FILES", "/nonexistent/icd.json"),
];

#[test]
fn the_daemon_runs_on_wgpu_and_publishes_events_and_state() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    // A model fitted on tract features (backends agree within 4e-6), 80 normals.
    let (_model, _) = setup(dir.path());
    // Fewer frames than `setup`'s folder, slow enough for lavapipe (~0.5 s per frame on 2
    // shared cores): normals, strong defects (fray), normals.
    let mt = common::shared_dir().join("data/magnetic_tile");
    let good = list_images(&mt.join("test/good")).expect("good");
    let fray = list_images(&mt.join("test/fray")).expect("fray");
    let frames = dir.path().join("wgpu_frames");
    std::fs::create_dir_all(&frames).expect("mkdir");
    link(&good[..4], &frames, "a_");
    link(&fray[..10], &frames, "b_");
    link(&good[4..12], &frames, "c_");
    let config = write_config(
        dir.path(),
        broker.port,
        &frames,
        1,
        "backend = \"wgpu\"\nadapter = \"auto\"\nfallback_to_tract = false",
    );
    let msgs = subscribe(broker.port, "vigil/wgpunode/#");
    let mut daemon = spawn_with_env(&config, &[]);
    let m = wait_for(
        &msgs,
        "an event start and end from the wgpu daemon",
        Duration::from_secs(150),
        |m| {
            let ev = json_of(m, "/cam1/event");
            ev.iter().any(|e| e["type"] == "start") && ev.iter().any(|e| e["type"] == "end")
        },
    );
    let events = json_of(&m, "/cam1/event");
    let start = events.iter().find(|e| e["type"] == "start").expect("start");
    assert_eq!(start["schema"], "vigil.event/1");
    assert_eq!(start["camera"], "cam1");
    assert!(start["peak_score"].as_f64().is_some(), "{start}");
    let states = json_of(&m, "/cam1/state");
    assert!(
        states.iter().any(|s| s["anomalous"] == true)
            && states.iter().any(|s| s["anomalous"] == false),
        "states {states:?}"
    );
    // The engine that scored them is wgpu, on the adapter the loader names.
    let log = log_of(&config);
    assert!(log.contains("wgpu backbone loaded"), "{log}");
    assert!(
        log.contains("backend=\"wgpu\"") || log.contains("backend=wgpu"),
        "{log}"
    );
    assert!(!log.contains("falling back to tract"), "{log}");

    signal(&daemon, "TERM");
    let status = daemon.wait().expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[test]
fn without_an_adapter_the_daemon_falls_back_to_tract_or_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());

    // fallback_to_tract = true: runs on tract, says so, frames get scored.
    let config = write_config(
        dir.path(),
        broker.port,
        &frames,
        10,
        "backend = \"wgpu\"\nadapter = \"vulkan\"\nfallback_to_tract = true",
    );
    let msgs = subscribe(broker.port, "vigil/wgpunode/#");
    let mut daemon = spawn_with_env(&config, &NO_VULKAN);
    wait_for(
        &msgs,
        "state from the fallen-back daemon",
        Duration::from_secs(60),
        |m| {
            json_of(m, "/cam1/state")
                .iter()
                .any(|s| s["anomalous"] == true)
        },
    );
    let log = wait_for_log(&config, "backbone engine", Duration::from_secs(5));
    assert!(log.contains("falling back to tract"), "{log}");
    assert!(log.contains("no wgpu adapter"), "{log}");
    assert!(
        log.contains("backend=\"tract\"") || log.contains("backend=tract"),
        "{log}"
    );
    assert!(!log.contains("wgpu backbone loaded"), "{log}");
    signal(&daemon, "TERM");
    let status = daemon.wait().expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");

    // fallback_to_tract = false: refuses to start with the configuration exit code and a
    // message naming the adapter choice.
    let strict_dir = dir.path().join("strict");
    std::fs::create_dir_all(&strict_dir).expect("mkdir");
    let strict = write_config(
        &strict_dir,
        broker.port,
        &frames,
        10,
        "backend = \"wgpu\"\nadapter = \"vulkan\"\nfallback_to_tract = false",
    );
    // The strict daemon needs its own model (state dir).
    let model = dir.path().join("state/models/cam1.safetensors");
    let strict_model = strict_dir.join("state/models/cam1.safetensors");
    std::fs::create_dir_all(strict_model.parent().expect("parent")).expect("mkdir");
    std::fs::copy(&model, &strict_model).expect("copy model");
    let mut child = spawn_with_env(&strict, &NO_VULKAN);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            panic!("the strict daemon kept running:\n{}", log_of(&strict));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = log_of(&strict);
    assert_eq!(
        status.code(),
        Some(78),
        "exit status {status:?}; log:\n{log}"
    );
    assert!(
        log.contains("no wgpu adapter for adapter = \"vulkan\""),
        "the refusal names the adapter choice:\n{log}"
    );
    assert!(!log.contains("falling back to tract"), "{log}");
}
