//! `vigil run` as a real process against a real broker (Debian mosquitto on a free
//! loopback port): events for anomalous images arrive with their fields, the Last-Will
//! says `offline` when the daemon is SIGKILLed, SIGHUP reloads, bad config exits 78,
//! SIGTERM shuts down cleanly.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::daemon::*;
use vigil::features::list_images;

/// magnetic_tile's normal training images, sorted.
fn train_goods() -> Vec<PathBuf> {
    list_images(&common::shared_dir().join("data/magnetic_tile/train/good")).expect("train")
}

/// Wait until every event the daemon logged as queued (`logged_events`) was received.
fn wait_for_every_logged_event(
    msgs: &Messages,
    logged: &std::collections::BTreeSet<(String, u64)>,
    timeout: Duration,
) {
    wait_for(msgs, "every logged event", timeout, |m| {
        let got: std::collections::BTreeSet<(String, u64)> = json_of(m, "/event")
            .iter()
            .filter_map(|e| Some((e["id"].as_str()?.to_string(), e["seq"].as_u64()?)))
            .collect();
        logged.iter().all(|k| got.contains(k))
    });
}

/// Rewrite a written config in place, each `(from, to)` in turn; the new text.
fn patch_config(config: &Path, edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(config).expect("read");
    for (from, to) in edits {
        text = text.replace(from, to);
    }
    std::fs::write(config, &text).expect("write");
    text
}

/// Loop the folder source so frames keep flowing.
const LOOP: (&str, &str) = ("loop = false", "loop = true");
/// Calibrations in these tests collect 30+ frames.
const MIN_FRAMES_30: (&str, &str) = ("[[camera]]", "[calibration]\nmin_frames = 30\n\n[[camera]]");

fn write_config(root: &Path, port: u16, frames: &Path, extra_camera: &str) -> PathBuf {
    let extra = Extra {
        camera: extra_camera,
        ..Extra::default()
    };
    write_folder_config(root, port, frames, "testnode", extra, 10)
}

/// (event id, seq) pairs the daemon logged as queued.
fn logged_events(log: &Path) -> std::collections::BTreeSet<(String, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(" event ") || l.ends_with(" event") || l.contains("event_id="))
        .filter_map(|l| {
            let id = l
                .split("event_id=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_string();
            let seq = l
                .split(" seq=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((id, seq))
        })
        .collect()
}

#[test]
fn events_for_anomalous_frames_arrive_with_their_fields_and_sigterm_is_clean() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let config = write_config(dir.path(), broker.port, &frames, "");
    let msgs = subscribe(broker.port, "vigil/testnode/#");

    let check = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check-config", config.to_str().expect("p")])
        .output()
        .expect("check");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut daemon = spawn_daemon(&config);
    wait_for(
        &msgs,
        "an event start and end",
        Duration::from_secs(90),
        |m| {
            let ev = json_of(m, "/cam1/event");
            ev.iter().any(|e| e["type"] == "start") && ev.iter().any(|e| e["type"] == "end")
        },
    );
    wait_for(&msgs, "online status", Duration::from_secs(5), |m| {
        json_of(m, "/status")
            .iter()
            .any(|s| s["status"] == "online")
    });
    let m = msgs.lock().expect("lock").clone();
    let events = json_of(&m, "/cam1/event");
    let start = events.iter().find(|e| e["type"] == "start").expect("start");
    for key in [
        "schema",
        "id",
        "ts_start",
        "ts",
        "ts_ms",
        "peak_score",
        "threshold",
        "frames",
        "snapshot_topic",
        "model_id",
        "node",
        "camera",
    ] {
        assert!(!start[key].is_null(), "event lacks {key}: {start}");
    }
    assert_eq!(start["schema"], "vigil.event/1");
    assert_eq!(start["camera"], "cam1");
    assert!(start["ts"].as_str().expect("ts").ends_with('Z'));
    let end = events.iter().find(|e| e["type"] == "end").expect("end");
    assert_eq!(end["id"], start["id"], "start and end share the event id");
    assert!(
        m.iter()
            .any(|(t, p)| t.ends_with("/cam1/snapshot") && p.starts_with(&[0xFF, 0xD8])),
        "snapshot JPEG"
    );
    let states = json_of(&m, "/cam1/state");
    assert!(
        states.iter().any(|s| s["anomalous"] == true)
            && states.iter().any(|s| s["anomalous"] == false)
    );
    assert!(!json_of(&m, "/cam1/health").is_empty());

    signal(&daemon, "TERM");
    let status = daemon.wait().expect("wait");
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    wait_for(
        &msgs,
        "offline status after SIGTERM",
        Duration::from_secs(5),
        |m| {
            json_of(m, "/status")
                .last()
                .is_some_and(|s| s["status"] == "offline")
        },
    );
}

#[test]
fn last_will_says_offline_when_the_daemon_is_killed() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let config = write_config(dir.path(), broker.port, &frames, "");
    let msgs = subscribe(broker.port, "vigil/testnode/status");
    let mut daemon = spawn_daemon(&config);
    wait_for(&msgs, "online", Duration::from_secs(60), |m| {
        json_of(m, "/status")
            .iter()
            .any(|s| s["status"] == "online")
    });
    daemon.kill().expect("SIGKILL");
    let _ = daemon.wait();
    wait_for(&msgs, "Last-Will offline", Duration::from_secs(20), |m| {
        json_of(m, "/status")
            .last()
            .is_some_and(|s| s["status"] == "offline")
    });
}

#[test]
fn sighup_reloads_the_threshold_without_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    // Loop the folder so frames keep flowing.
    let config = write_config(dir.path(), broker.port, &frames, "");
    let text = patch_config(&config, &[LOOP]);
    let msgs = subscribe(broker.port, "vigil/testnode/#");
    let mut daemon = spawn_daemon(&config);
    wait_for(&msgs, "state", Duration::from_secs(60), |m| {
        !json_of(m, "/cam1/state").is_empty()
    });
    std::fs::write(
        &config,
        text.replace("id = \"cam1\"\n", "id = \"cam1\"\nthreshold = -12345.5\n"),
    )
    .expect("write");
    signal(&daemon, "HUP");
    wait_for(
        &msgs,
        "state with the new threshold",
        Duration::from_secs(30),
        |m| {
            json_of(m, "/cam1/state")
                .iter()
                .any(|s| s["threshold"] == -12345.5)
        },
    );
    assert!(
        daemon.try_wait().expect("wait").is_none(),
        "still running after SIGHUP"
    );
    // A broken file on reload is refused and the daemon keeps running.
    std::fs::write(&config, "node = [").expect("write");
    signal(&daemon, "HUP");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        daemon.try_wait().expect("wait").is_none(),
        "bad reload must not stop the daemon"
    );
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());
}

#[test]
fn bad_configuration_exits_with_the_config_code() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "node = \"n\"\nbogus_key = 1\n[[camera]]\nid = \"c\"\n[camera.source]\ntype = \"synthetic\"\n").expect("write");
    for cmd in ["run", "check-config"] {
        let mut args = vec![cmd];
        if cmd == "run" {
            args.push("--config");
        }
        args.push(path.to_str().expect("p"));
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(&args)
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(78),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("bogus_key"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A configured model that is missing is a configuration error too (a missing model at
    // the default path is not: the camera waits for its first calibration).
    std::fs::write(&path, format!("node = \"n\"\nstate_dir = \"{0}\"\n[[camera]]\nid = \"c\"\nmodel = \"{0}/c.safetensors\"\n[camera.source]\ntype = \"synthetic\"\n", dir.path().display())).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check-config", path.to_str().expect("p")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("c.safetensors"));
}

#[test]
fn every_event_arrives_at_least_once_across_broker_and_daemon_kills() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut broker = Broker::start();
    let port = broker.port;
    let (_model, frames) = setup(dir.path());
    let config = write_config(dir.path(), port, &frames, "");
    // Loop the frames (an event every pass) and reconnect at a steady 1.5 s.
    patch_config(
        &config,
        &[
            LOOP,
            (
                "keep_alive_s = 5",
                "keep_alive_s = 5\nreconnect_min_s = 1.5\nreconnect_max_s = 1.5",
            ),
        ],
    );
    let log = dir.path().join("daemon.log");
    let msgs = subscribe(port, "vigil/testnode/cam1/event");
    let mut daemon = spawn_daemon_logging(&config, &log);
    wait_for(&msgs, "a first event", Duration::from_secs(90), |m| {
        !m.is_empty()
    });

    // Broker SIGKILL mid-stream; events keep being detected into the outbox.
    broker.child.kill().expect("kill broker");
    let _ = broker.child.wait();
    std::thread::sleep(Duration::from_secs(4));
    let restarted = Broker::start_on(port);
    std::thread::sleep(Duration::from_secs(4));

    // Daemon SIGKILL, then a new daemon on the same state directory (same outbox).
    daemon.kill().expect("kill daemon");
    let _ = daemon.wait();
    let mut daemon = spawn_daemon_logging(&config, &log);
    std::thread::sleep(Duration::from_secs(8));
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());

    let logged = logged_events(&log);
    assert!(logged.len() >= 4, "too few events logged: {logged:?}");
    wait_for_every_logged_event(&msgs, &logged, Duration::from_secs(30));
    // Duplicates (re-sent after reconnects) are identical messages with the same id.
    let m = msgs.lock().expect("lock").clone();
    let mut by_key: std::collections::HashMap<(String, u64), Vec<serde_json::Value>> =
        std::collections::HashMap::new();
    for e in json_of(&m, "/event") {
        let key = (
            e["id"].as_str().unwrap_or("").to_string(),
            e["seq"].as_u64().unwrap_or(0),
        );
        by_key.entry(key).or_default().push(e);
    }
    for copies in by_key.values() {
        assert!(
            copies.windows(2).all(|w| w[0] == w[1]),
            "duplicates differ: {copies:?}"
        );
    }
    drop(restarted);
}

#[test]
fn environment_variables_override_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let (_model, frames) = setup(dir.path());
    let config = write_config(dir.path(), 1883, &frames, "");
    let check = |envs: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.args(["check-config", config.to_str().expect("p")]);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.output().expect("run")
    };
    let out = check(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node 'testnode'"));
    let out = check(&[("VIGIL__NODE", "line7")]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("node 'line7'"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = check(&[("VIGIL__MQTT__URL", "ftp://nowhere")]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ftp"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_stalled_camera_is_reported_over_mqtt_and_recovers() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let fifo = dir.path().join("camera.mjpeg");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let config = write_config(dir.path(), broker.port, &frames, "");
    let text = std::fs::read_to_string(&config).expect("read");
    let start = text.find("[camera.source]").expect("source");
    let end = text.find("[camera.detector]").expect("detector");
    let source = format!(
        "[camera.source]\ntype = \"video\"\nurl = \"{}\"\nwidth = 320\nheight = 240\nrealtime = false\nextra_args = [\"-f\", \"mjpeg\"]\n",
        fifo.display()
    );
    let text = format!("{}{}{}", &text[..start], source, &text[end..]).replace(
        "[health]\ninterval_s = 1\n",
        "[health]\ninterval_s = 0.5\nstall_timeout_s = 2\n",
    );
    std::fs::write(&config, text).expect("write");

    let msgs = subscribe(broker.port, "vigil/testnode/cam1/health");
    let mut daemon = spawn_daemon(&config);
    // The camera: JPEGs into the pipe at ~8 fps, a 6 s silence (pipe kept open), then more.
    let images: Vec<Vec<u8>> = list_images(&frames)
        .expect("frames")
        .iter()
        .map(|p| std::fs::read(p).expect("jpg"))
        .collect();
    let writer = std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .expect("open fifo");
        let mut send = |secs: f64| {
            let t0 = Instant::now();
            let mut i = 0;
            while t0.elapsed().as_secs_f64() < secs {
                let _ = pipe.write_all(&images[i % images.len()]);
                let _ = pipe.flush();
                i += 1;
                std::thread::sleep(Duration::from_millis(120));
            }
        };
        send(8.0);
        std::thread::sleep(Duration::from_secs(6));
        send(12.0);
    });
    let states = |m: &[(String, Vec<u8>)]| -> Vec<String> {
        json_of(m, "/health")
            .iter()
            .filter_map(|h| h["state"].as_str().map(str::to_string))
            .collect()
    };
    wait_for(
        &msgs,
        "health ok, then stalled, then ok again",
        Duration::from_secs(60),
        |m| {
            let s = states(m);
            let ok1 = s.iter().position(|x| x == "ok");
            let stalled =
                ok1.and_then(|i| s[i..].iter().position(|x| x == "stalled").map(|j| i + j));
            stalled.is_some_and(|j| s[j..].iter().any(|x| x == "ok"))
        },
    );
    let _ = writer.join();
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());
}

#[test]
fn systemd_notify_sends_ready_status_and_feeds_the_watchdog_only_while_frames_flow() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let config = write_config(dir.path(), broker.port, &frames, "");
    // 36 frames at 10 fps, then the folder ends; the watchdog must go quiet 2 s later.
    let text = std::fs::read_to_string(&config).expect("read").replace(
        "[health]\ninterval_s = 1\n",
        "[health]\ninterval_s = 1\nwatchdog_frame_age_s = 2\n",
    );
    std::fs::write(&config, text).expect("write");
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let log = std::fs::File::create(dir.path().join("notify-daemon.log")).expect("log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--config", config.to_str().expect("utf8")])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "1500000")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn");
    let mut got: Vec<(Instant, String)> = Vec::new();
    let mut buf = [0u8; 4096];
    let t0 = Instant::now();
    let mut ready_at = None;
    while t0.elapsed() < Duration::from_secs(90) {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            if msg.contains("READY=1") && ready_at.is_none() {
                ready_at = Some(Instant::now());
            }
            got.push((Instant::now(), msg));
        }
        if ready_at.is_some_and(|r| r.elapsed() > Duration::from_secs(14)) {
            break;
        }
    }
    let ready_at = ready_at.expect("READY=1 sent");
    let pings: Vec<Instant> = got
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 3, "watchdog fed while frames flow: {got:?}");
    let last = *pings.last().expect("ping");
    assert!(
        last.duration_since(ready_at) < Duration::from_secs(11),
        "pings must stop once frames stop"
    );
    assert!(
        got.iter()
            .any(|(_, m)| m.contains("STATUS=") && m.contains("cam1:")),
        "{got:?}"
    );
    signal(&daemon, "TERM");
    let t1 = Instant::now();
    let mut stopping = false;
    while t1.elapsed() < Duration::from_secs(10) && !stopping {
        if let Ok(n) = sock.recv(&mut buf) {
            stopping = String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
    assert!(daemon.wait().expect("wait").success());
}

/// Point every link in `dir` (same names, atomically) at `targets[i % len]`.
fn repoint(dir: &Path, targets: &[PathBuf]) {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("e").path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    names.sort();
    for (i, n) in names.iter().enumerate() {
        let tmp = dir.join(format!(".tmp{i}"));
        std::os::unix::fs::symlink(&targets[i % targets.len()], &tmp).expect("link");
        std::fs::rename(&tmp, n).expect("rename");
    }
}

fn knob_states(m: &[(String, Vec<u8>)], cam: &str) -> Vec<serde_json::Value> {
    json_of(m, &format!("/{cam}/calibrate/state"))
}

#[test]
fn remote_calibration_switches_the_model_id_in_later_events_without_restart_or_lost_events() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (model, frames) = setup(dir.path());
    let mt = common::shared_dir().join("data/magnetic_tile");
    let names_in_order: Vec<PathBuf> = {
        let mut n: Vec<PathBuf> = std::fs::read_dir(&frames)
            .expect("ls")
            .map(|e| e.expect("e").path())
            .collect();
        n.sort();
        n
    };
    let original_targets: Vec<PathBuf> = names_in_order
        .iter()
        .map(|n| std::fs::read_link(n).expect("link"))
        .collect();
    // A second camera that shows one picture forever (a frozen camera), same model.
    let frozen = list_images(&mt.join("train/good")).expect("train")[500].clone();
    let config = write_config(dir.path(), broker.port, &frames, "");
    let text = patch_config(&config, &[LOOP, MIN_FRAMES_30]);
    let text = format!(
        "{text}\n[[camera]]\nid = \"cam2\"\nmodel = \"{}\"\n[camera.source]\ntype = \"folder\"\npath = \"{}\"\nfps = 4\nloop = true\n",
        model.display(),
        frozen.display()
    );
    std::fs::write(&config, text).expect("write");
    let log = dir.path().join("daemon.log");
    let msgs = subscribe(broker.port, "vigil/testnode/#");
    let mut daemon = spawn_daemon_logging(&config, &log);

    // Model A serves: an event for the defects.
    wait_for(
        &msgs,
        "an event under the first model",
        Duration::from_secs(90),
        |m| json_of(m, "/cam1/event").iter().any(|e| e["type"] == "end"),
    );
    let old_id = json_of(&msgs.lock().expect("lock"), "/cam1/event")[0]["model_id"]
        .as_str()
        .expect("model id")
        .to_string();
    wait_for(
        &msgs,
        "calibrate/state idle at start",
        Duration::from_secs(5),
        |m| {
            knob_states(m, "cam1")
                .iter()
                .any(|k| k["value"]["state"] == "idle")
        },
    );

    // Bad payloads are answered on calibrate/state, never a crash.
    publish(
        broker.port,
        "vigil/testnode/cam1/calibrate/set",
        r#"{"frames": "many"}"#,
    );
    publish(
        broker.port,
        "vigil/testnode/cam1/calibrate/set",
        r#"{"frames": 5}"#,
    );
    wait_for(
        &msgs,
        "errors for bad payloads",
        Duration::from_secs(10),
        |m| {
            let errs: Vec<String> = knob_states(m, "cam1")
                .iter()
                .filter_map(|k| k["error"].as_str().map(str::to_string))
                .collect();
            errs.iter().any(|e| e.contains("invalid request"))
                && errs.iter().any(|e| e.contains("frames must be in 30..="))
        },
    );

    // The technician puts normal parts in front of the camera and asks for a calibration.
    let goods = list_images(&mt.join("train/good")).expect("train");
    repoint(&frames, &goods[100..136]);
    std::thread::sleep(Duration::from_millis(300));
    publish(
        broker.port,
        "vigil/testnode/cam1/calibrate/set",
        r#"{"frames": 40, "interval_s": 0}"#,
    );
    publish(broker.port, "vigil/testnode/cam1/calibrate/set", "{}");
    publish(
        broker.port,
        "vigil/testnode/cam2/calibrate/set",
        r#"{"frames": 40, "interval_s": 0}"#,
    );
    wait_for(&msgs, "calibration done", Duration::from_secs(120), |m| {
        knob_states(m, "cam1")
            .iter()
            .any(|k| k["value"]["state"] == "done")
    });
    let m = msgs.lock().expect("lock").clone();
    let ks = knob_states(&m, "cam1");
    assert!(
        ks.iter().any(|k| k["error"]
            .as_str()
            .is_some_and(|e| e.contains("already running"))),
        "second request refused: {ks:?}"
    );
    assert!(ks.iter().any(|k| k["value"]["state"] == "collecting"));
    assert!(ks.iter().any(|k| k["value"]["state"] == "fitting"));
    let done = ks
        .iter()
        .find(|k| k["value"]["state"] == "done")
        .expect("done")["value"]
        .clone();
    let new_id = done["model_id"].as_str().expect("new id").to_string();
    assert_ne!(new_id, old_id);
    assert_eq!(done["previous_model_id"], old_id.as_str());
    assert_eq!(done["frames"], 40);
    assert!(json_of(&m, "/cam1/state")
        .iter()
        .any(|s| s["calibrating"] == true));
    let model_file = dir
        .path()
        .join(format!("state/models/cam1/{new_id}.safetensors"));
    assert!(model_file.is_file(), "versioned artifact written");

    // Defects again: events now carry the new model id.
    repoint(&frames, &original_targets);
    wait_for(
        &msgs,
        "an event under the new model",
        Duration::from_secs(60),
        |m| {
            json_of(m, "/cam1/event")
                .iter()
                .any(|e| e["type"] == "end" && e["model_id"] == new_id.as_str())
        },
    );
    wait_for(
        &msgs,
        "state with the new model id",
        Duration::from_secs(10),
        |m| {
            json_of(m, "/cam1/state")
                .iter()
                .any(|s| s["model_id"] == new_id.as_str() && s["calibrating"] == false)
        },
    );

    // The frozen camera was refused and keeps its model.
    wait_for(
        &msgs,
        "cam2 calibration refused",
        Duration::from_secs(60),
        |m| {
            knob_states(m, "cam2")
                .iter()
                .any(|k| k["value"]["state"] == "failed")
        },
    );
    let m = msgs.lock().expect("lock").clone();
    let failed = knob_states(&m, "cam2")
        .into_iter()
        .find(|k| k["value"]["state"] == "failed")
        .expect("failed")["value"]
        .clone();
    assert!(
        failed["reason"]
            .as_str()
            .expect("reason")
            .contains("frozen"),
        "{failed}"
    );
    assert_eq!(failed["model_id"], old_id.as_str());
    wait_for(
        &msgs,
        "cam2 scoring with its old model",
        Duration::from_secs(20),
        |m| {
            json_of(m, "/cam2/state")
                .last()
                .is_some_and(|s| s["model_id"] == old_id.as_str() && s["calibrating"] == false)
        },
    );

    assert!(daemon.try_wait().expect("wait").is_none(), "no restart");
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());

    // No lost event: everything the daemon queued arrived, and every event that started ended.
    let logged = logged_events(&log);
    wait_for_every_logged_event(&msgs, &logged, Duration::from_secs(20));
    let m = msgs.lock().expect("lock").clone();
    let events = json_of(&m, "/cam1/event");
    for s in events.iter().filter(|e| e["type"] == "start") {
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "end" && e["id"] == s["id"]),
            "event {} never ended",
            s["id"]
        );
    }
}

#[test]
fn cli_calibrate_and_rollback_go_through_the_running_daemon_and_rollback_is_refused_while_calibrating(
) {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let goods = train_goods();
    repoint(&frames, &goods[200..236]);
    let config = write_config(dir.path(), broker.port, &frames, "");
    patch_config(&config, &[LOOP, MIN_FRAMES_30]);
    let msgs = subscribe(broker.port, "vigil/testnode/cam1/#");
    let mut daemon = spawn_daemon(&config);
    wait_for(&msgs, "a state", Duration::from_secs(60), |m| {
        !json_of(m, "/cam1/state").is_empty()
    });
    let old_id = json_of(&msgs.lock().expect("lock"), "/cam1/state")[0]["model_id"]
        .as_str()
        .expect("id")
        .to_string();
    let c = config.to_str().expect("utf8");
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .env("VIGIL_LOG", "warn")
            .output()
            .expect("run vigil");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "vigil {args:?}: {stderr}");
        let last: serde_json::Value =
            serde_json::from_str(stdout.lines().last().expect("a line")).expect("json");
        (last, stderr)
    };
    let t0 = Instant::now();
    let (done, stderr) = cli(&[
        "calibrate",
        "--config",
        c,
        "--frames",
        "40",
        "--interval",
        "0",
    ]);
    eprintln!(
        "calibration through the daemon: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(stderr.contains("calibrated by the daemon"), "{stderr}");
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["previous_model_id"], old_id.as_str());
    let new_id = done["model_id"].as_str().expect("id").to_string();
    wait_for(
        &msgs,
        "state with the new model",
        Duration::from_secs(20),
        |m| {
            json_of(m, "/cam1/state")
                .last()
                .is_some_and(|s| s["model_id"] == new_id.as_str())
        },
    );

    // A second calibration through the daemon (C), then a rollback through the daemon: the
    // pointer and the model in service move together (C → B).
    let pointer = dir.path().join("state/models/cam1/current");
    let read_pointer = || {
        std::fs::read_to_string(&pointer)
            .expect("pointer")
            .trim()
            .to_string()
    };
    assert_eq!(read_pointer(), new_id);
    let (third, _) = cli(&[
        "calibrate",
        "--config",
        c,
        "--frames",
        "40",
        "--interval",
        "0",
    ]);
    let third_id = third["model_id"].as_str().expect("id").to_string();
    assert_eq!(read_pointer(), third_id);
    let (back, stderr) = cli(&["model", "rollback", "--config", c]);
    assert_eq!(back["model_id"], new_id.as_str());
    assert_eq!(back["previous_model_id"], third_id.as_str());
    assert!(
        stderr.contains(&format!("running daemon now serves {new_id}")),
        "{stderr}"
    );
    assert_eq!(read_pointer(), new_id);
    wait_for(
        &msgs,
        "state with the second model again",
        Duration::from_secs(20),
        |m| {
            json_of(m, "/cam1/state")
                .last()
                .is_some_and(|s| s["model_id"] == new_id.as_str())
        },
    );

    // A long calibration (cancelled at shutdown): meanwhile a rollback is refused and moves
    // nothing, and a standalone calibration into the store is refused.
    let mut slow = control(
        dir.path(),
        &serde_json::json!({"cmd": "calibrate", "camera": "cam1", "frames": 300, "interval_s": 0.5}),
    );
    assert_eq!(next_json(&mut slow)["state"], "collecting");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .env("VIGIL_LOG", "warn")
            .output()
            .expect("run vigil")
    };
    let out = run(&["model", "rollback", "--config", c]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("is calibrating"), "{stderr}");
    assert_eq!(
        read_pointer(),
        new_id,
        "a refused rollback leaves `current` alone"
    );
    let out = run(&[
        "calibrate",
        "--config",
        c,
        "--source",
        "synthetic",
        "--frames",
        "50",
        "--interval",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("vigil is running"), "{stderr}");
    assert_eq!(read_pointer(), new_id);
    let status = next_json(&mut control(
        dir.path(),
        &serde_json::json!({"cmd": "status"}),
    ));
    assert_eq!(
        status["cameras"]["cam1"]["calibration"]["state"],
        "collecting"
    );
    assert_eq!(status["cameras"]["cam1"]["model_id"], new_id.as_str());

    assert!(daemon.try_wait().expect("wait").is_none(), "no restart");
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());
    assert!(
        !dir.path().join("run/control.sock").exists(),
        "socket removed at exit"
    );
    assert_eq!(
        read_pointer(),
        new_id,
        "the cancelled calibration moved nothing"
    );
    // Without a daemon the CLI rolls back in the store itself (B → A).
    let (back, _) = cli(&["model", "rollback", "--config", c]);
    assert_eq!(back["model_id"], old_id.as_str());
    assert_eq!(read_pointer(), old_id);
}

/// Send one control-socket request; the reply lines, read as they come.
fn control(
    dir: &Path,
    request: &serde_json::Value,
) -> std::io::Lines<std::io::BufReader<std::os::unix::net::UnixStream>> {
    use std::io::{BufRead, Write};
    let sock = dir.join("run/control.sock");
    let t0 = Instant::now();
    let mut stream = loop {
        match std::os::unix::net::UnixStream::connect(&sock) {
            Ok(s) => break s,
            Err(e) if t0.elapsed() > Duration::from_secs(60) => {
                panic!("control socket {}: {e}", sock.display())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    stream
        .write_all(format!("{request}\n").as_bytes())
        .expect("request");
    std::io::BufReader::new(stream).lines()
}

/// The next JSON line of a control-socket reply.
fn next_json(
    lines: &mut std::io::Lines<std::io::BufReader<std::os::unix::net::UnixStream>>,
) -> serde_json::Value {
    let line = lines.next().expect("a reply line").expect("read");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

type Notes = Arc<Mutex<Vec<(Instant, String)>>>;

/// Bind a NOTIFY_SOCKET and collect every datagram with its arrival time.
fn notify_listener(path: &Path) -> Notes {
    let sock = std::os::unix::net::UnixDatagram::bind(path).expect("bind");
    let notes: Notes = Arc::new(Mutex::new(Vec::new()));
    let out = notes.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            out.lock().expect("lock").push((Instant::now(), msg));
        }
    });
    notes
}

fn pings_between(notes: &Notes, from: Instant, to: Instant) -> Vec<Instant> {
    notes
        .lock()
        .expect("lock")
        .iter()
        .filter(|(t, m)| *t >= from && *t <= to && m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn the_watchdog_keeps_being_fed_while_the_only_camera_calibrates() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let config = write_config(dir.path(), broker.port, &frames, "");
    patch_config(
        &config,
        &[
            LOOP,
            (
                "[health]\ninterval_s = 1\n",
                "[health]\ninterval_s = 1\nwatchdog_frame_age_s = 2\n",
            ),
            MIN_FRAMES_30,
        ],
    );
    let notes = notify_listener(&dir.path().join("notify.sock"));
    let log = dir.path().join("daemon.log");
    let file = std::fs::File::create(&log).expect("log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--config", config.to_str().expect("utf8")])
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .env("WATCHDOG_USEC", "1500000")
        .env("VIGIL_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .spawn()
        .expect("spawn");
    let t0 = Instant::now();
    while pings_between(&notes, t0, Instant::now()).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no WATCHDOG=1 while frames are scored"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A slow calibration: 30 frames, one a second. The camera's frames all go to it.
    let mut cal = control(
        dir.path(),
        &serde_json::json!({"cmd": "calibrate", "camera": "cam1", "frames": 30, "interval_s": 1}),
    );
    let first = next_json(&mut cal);
    assert_eq!(first["state"], "collecting", "{first}");
    let started = Instant::now();
    // Longer than watchdog_frame_age_s with no frame scored at all.
    std::thread::sleep(Duration::from_secs(9));
    let window = (started + Duration::from_secs(3), Instant::now());
    let status = next_json(&mut control(
        dir.path(),
        &serde_json::json!({"cmd": "status"}),
    ));
    assert_eq!(
        status["cameras"]["cam1"]["calibration"]["state"], "collecting",
        "the calibration must still be collecting for this test to mean anything: {status}"
    );
    let pings = pings_between(&notes, window.0, window.1);
    // SIGHUP during the calibration leaves the calibrating camera alone.
    signal(&daemon, "HUP");
    let t1 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("camera is calibrating: its configuration is not reloaded")
    {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "SIGHUP must skip the calibrating camera"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = next_json(&mut control(
        dir.path(),
        &serde_json::json!({"cmd": "status"}),
    ));
    assert_eq!(
        status["cameras"]["cam1"]["calibration"]["state"],
        "collecting"
    );
    assert!(
        pings.len() >= 6,
        "the watchdog must be fed while the camera calibrates: {} pings in 6 s",
        pings.len()
    );
    let mut edges = vec![window.0];
    edges.extend(&pings);
    edges.push(window.1);
    let gap = edges
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .expect("gap");
    assert!(gap < Duration::from_millis(1500), "watchdog gap {gap:?}");
    assert!(daemon.try_wait().expect("wait").is_none());
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());
}

#[test]
fn a_configured_threshold_gives_way_to_the_calibrated_one_at_start_on_sighup_and_comes_back_on_rollback(
) {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let goods = train_goods();
    let normals = dir.path().join("normals");
    std::fs::create_dir_all(&normals).expect("mkdir");
    link(&goods[300..340], &normals, "n_");
    let config = write_config(dir.path(), broker.port, &frames, "threshold = -12345.5");
    patch_config(&config, &[LOOP, MIN_FRAMES_30]);
    let c = config.to_str().expect("utf8");
    // A technician calibrated while vigil was stopped.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "calibrate",
            "--config",
            c,
            "--source",
            normals.to_str().expect("utf8"),
            "--frames",
            "40",
            "--interval",
            "0",
        ])
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("line")).expect("json");
    let calibrated_id = done["model_id"].as_str().expect("id").to_string();
    let calibrated_threshold = done["threshold"].as_f64().expect("threshold");
    let configured_id = done["previous_model_id"].as_str().expect("id").to_string();

    let log = dir.path().join("daemon.log");
    let msgs = subscribe(broker.port, "vigil/testnode/cam1/state");
    let mut daemon = spawn_daemon_logging(&config, &log);
    let ignored = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("the configured threshold is ignored")
            .count()
    };
    let state_is = |what: &str, id: &str, threshold: f64| {
        wait_for(&msgs, what, Duration::from_secs(60), |m| {
            json_of(m, "/state")
                .last()
                .is_some_and(|s| s["model_id"] == id && s["threshold"].as_f64() == Some(threshold))
        });
    };
    state_is(
        "the calibrated model with its own threshold",
        &calibrated_id,
        calibrated_threshold,
    );
    assert_eq!(ignored(), 1, "a warning at start");
    assert!(json_of(&msgs.lock().expect("lock"), "/state")
        .iter()
        .all(|s| s["threshold"] != -12345.5));

    signal(&daemon, "HUP");
    let t0 = Instant::now();
    while ignored() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "a warning on reload"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    msgs.lock().expect("lock").clear();
    // States are re-published every second: the next ones still carry the calibrated value.
    wait_for(
        &msgs,
        "two states after the reload",
        Duration::from_secs(20),
        |m| json_of(m, "/state").len() >= 2,
    );
    assert!(
        json_of(&msgs.lock().expect("lock"), "/state")
            .iter()
            .all(|s| s["threshold"].as_f64() == Some(calibrated_threshold)),
        "SIGHUP must not put the configured threshold back over the calibrated one"
    );

    // Back on the configured model, the configured threshold applies again.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["model", "rollback", "--config", c])
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    state_is(
        "the configured model with the configured threshold",
        &configured_id,
        -12345.5,
    );
    assert!(daemon.try_wait().expect("wait").is_none());
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());
}

/// `GET path` on 127.0.0.1:`port`: (status code, body).
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if code == 200 {
        assert!(
            head.contains("Content-Type: application/openmetrics-text") || path != "/metrics",
            "{head}"
        );
    }
    Ok((code, body.to_string()))
}

/// The value of the sample `name{labels}` in an OpenMetrics page (labels as written).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn prometheus_metrics_are_scraped_while_the_daemon_runs_on_a_folder_source() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let config = write_config(dir.path(), broker.port, &frames, "");
    let port = free_port();
    let metrics = format!("[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\n[[camera]]");
    patch_config(&config, &[LOOP, ("[[camera]]", &metrics)]);
    let msgs = subscribe(broker.port, "vigil/testnode/#");
    let mut daemon = spawn_daemon(&config);

    // Scrape until an anomaly event has been counted.
    let t0 = Instant::now();
    let page = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no anomaly counted in /metrics"
        );
        if let Ok((200, page)) = http_get(port, "/metrics") {
            if sample(&page, "vigil_camera_anomalies_total{camera=\"cam1\"}").unwrap_or(0.0) >= 1.0
            {
                break page;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let get = |series: &str| {
        sample(&page, series).unwrap_or_else(|| panic!("no sample {series} in:\n{page}"))
    };
    let scored = get("vigil_camera_frames_scored_total{camera=\"cam1\"}");
    let captured = get("vigil_camera_frames_captured_total{camera=\"cam1\"}");
    let dropped = get("vigil_camera_frames_dropped_total{camera=\"cam1\"}");
    assert!(scored >= 2.0, "{scored}");
    assert!(captured >= scored && dropped <= captured, "{page}");
    assert!(get("vigil_camera_event_messages_total{camera=\"cam1\"}") >= 1.0);
    assert_eq!(get("vigil_camera_frame_errors_total{camera=\"cam1\"}"), 0.0);
    // Histograms: one observation per scored frame, in seconds.
    let count = get("vigil_camera_inference_seconds_count{camera=\"cam1\"}");
    let sum = get("vigil_camera_inference_seconds_sum{camera=\"cam1\"}");
    assert!(
        count >= scored - 2.0 && count <= scored + 2.0,
        "{count} vs {scored}"
    );
    let mean = sum / count;
    assert!(mean > 0.001 && mean < 5.0, "mean inference {mean} s");
    assert_eq!(
        get("vigil_camera_inference_seconds_bucket{le=\"+Inf\",camera=\"cam1\"}"),
        count
    );
    assert!(get("vigil_camera_frame_latency_seconds_count{camera=\"cam1\"}") >= 1.0);
    assert_eq!(
        get("vigil_camera_health{camera=\"cam1\",state=\"ok\"}"),
        1.0
    );
    assert_eq!(
        get("vigil_camera_health{camera=\"cam1\",state=\"stalled\"}"),
        0.0
    );
    assert_eq!(get("vigil_camera_enabled{camera=\"cam1\"}"), 1.0);
    let score = get("vigil_camera_last_score{camera=\"cam1\"}");
    assert!((0.0..=1.0).contains(&score), "{score}");
    let threshold = get("vigil_camera_threshold_log_density{camera=\"cam1\"}");
    get("vigil_camera_last_log_density{camera=\"cam1\"}");
    assert_eq!(get("vigil_mqtt_connected"), 1.0);
    get("vigil_mqtt_outbox_events");
    get("vigil_mqtt_events_acked_total");
    // The model id label is the one the events carry; the threshold the one states carry.
    let ev = json_of(&msgs.lock().expect("lock"), "/cam1/event");
    let model_id = ev[0]["model_id"].as_str().expect("model id").to_string();
    assert_eq!(
        get(&format!(
            "vigil_camera_model_info{{camera=\"cam1\",model_id=\"{model_id}\"}}"
        )),
        1.0
    );
    let st = json_of(&msgs.lock().expect("lock"), "/cam1/state");
    let th = st.last().expect("a state")["threshold"]
        .as_f64()
        .expect("th");
    assert!(
        (th - threshold).abs() <= 1e-9 * th.abs().max(1.0),
        "{th} vs {threshold}"
    );
    assert!(page.contains("vigil_build_info{version=\""), "{page}");
    assert!(page.trim_end().ends_with("# EOF"), "{page}");
    assert_eq!(http_get(port, "/nope").expect("get").0, 404);

    // The broker goes away: the gauge says so.
    drop(broker);
    let t0 = Instant::now();
    loop {
        let (_, page) = http_get(port, "/metrics").expect("scrape");
        if sample(&page, "vigil_mqtt_connected") == Some(0.0) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "still connected");
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(&daemon, "TERM");
    let st = daemon.wait().expect("wait");
    assert!(st.success(), "exit {st:?}");
    let log = std::fs::read_to_string(config.with_extension("log")).expect("log");
    assert!(!log.contains("publisher still shared"), "{log}");
}

/// Keys Home Assistant documents for MQTT discovery (full names), common to every entity,
/// then per platform: (platform, required, optional). From the HA docs of
/// `mqtt` binary_sensor, sensor, image, button, number and switch.
const HA_COMMON: &[&str] = &[
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "device",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "object_id",
    "default_entity_id",
    "origin",
    "platform",
    "qos",
    "unique_id",
];
const HA_PLATFORMS: &[(&str, &[&str], &[&str])] = &[
    (
        "binary_sensor",
        &["state_topic"],
        &[
            "device_class",
            "expire_after",
            "force_update",
            "off_delay",
            "payload_off",
            "payload_on",
            "value_template",
        ],
    ),
    (
        "sensor",
        &["state_topic"],
        &[
            "device_class",
            "expire_after",
            "force_update",
            "last_reset_value_template",
            "options",
            "suggested_display_precision",
            "state_class",
            "unit_of_measurement",
            "value_template",
        ],
    ),
    (
        "image",
        &[],
        &[
            "content_type",
            "image_encoding",
            "image_topic",
            "url_template",
            "url_topic",
        ],
    ),
    (
        "button",
        &["command_topic"],
        &[
            "command_template",
            "device_class",
            "payload_press",
            "retain",
        ],
    ),
    (
        "number",
        &["command_topic"],
        &[
            "command_template",
            "device_class",
            "min",
            "max",
            "mode",
            "optimistic",
            "payload_reset",
            "retain",
            "state_topic",
            "step",
            "unit_of_measurement",
            "value_template",
        ],
    ),
    (
        "switch",
        &["command_topic"],
        &[
            "command_template",
            "device_class",
            "optimistic",
            "payload_off",
            "payload_on",
            "retain",
            "state_off",
            "state_on",
            "state_topic",
            "value_template",
        ],
    ),
];
const HA_DEVICE: &[&str] = &[
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
];

/// `value_json.<field>` references of a Jinja template.
fn json_fields(template: &str) -> Vec<String> {
    template
        .split("value_json.")
        .skip(1)
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn ha_configs(m: &[(String, Vec<u8>)]) -> Vec<(String, Vec<u8>)> {
    m.iter()
        .filter(|(t, _)| t.starts_with("homeassistant/") && t.ends_with("/config"))
        .cloned()
        .collect()
}

#[test]
fn home_assistant_discovery_follows_the_documented_schema_drives_the_knobs_and_is_cleared_when_disabled(
) {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (_model, frames) = setup(dir.path());
    let config = write_config(dir.path(), broker.port, &frames, "");
    let ha_on = "[mqtt.homeassistant]\nenabled = true\n\n[health]";
    patch_config(&config, &[LOOP, MIN_FRAMES_30, ("[health]", ha_on)]);
    let msgs = subscribe(broker.port, "#");
    let mut daemon = spawn_daemon(&config);

    wait_for(
        &msgs,
        "9 discovery configs and an event",
        Duration::from_secs(120),
        |m| {
            ha_configs(m).len() >= 9 && json_of(m, "/cam1/event").iter().any(|e| e["type"] == "end")
        },
    );
    let m = msgs.lock().expect("lock").clone();
    let latest = |topic: &str| -> Option<Vec<u8>> {
        m.iter()
            .rev()
            .find(|(t, _)| t == topic)
            .map(|(_, p)| p.clone())
    };
    let mut unique = std::collections::BTreeSet::new();
    let mut seen_platforms = std::collections::BTreeMap::new();
    let mut commands = std::collections::BTreeMap::new();
    for (topic, payload) in ha_configs(&m) {
        // homeassistant/<platform>/<node_id>/<object_id>/config
        let parts: Vec<&str> = topic.split('/').collect();
        assert_eq!(parts.len(), 5, "{topic}");
        let (platform, node_id, object) = (parts[1], parts[2], parts[3]);
        assert!(node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
        let v: serde_json::Value = serde_json::from_slice(&payload).expect("config is JSON");
        let obj = v.as_object().expect("object");
        let (_, required, optional) = HA_PLATFORMS
            .iter()
            .find(|(p, _, _)| *p == platform)
            .unwrap_or_else(|| panic!("undocumented platform {platform}"));
        for k in obj.keys() {
            assert!(
                HA_COMMON.contains(&k.as_str())
                    || required.contains(&k.as_str())
                    || optional.contains(&k.as_str()),
                "{topic}: key `{k}` is not documented for {platform}"
            );
        }
        for k in *required {
            assert!(obj.contains_key(*k), "{topic}: missing required `{k}`");
        }
        if platform == "image" {
            assert!(obj.contains_key("image_topic") || obj.contains_key("url_topic"));
        }
        for k in obj["device"].as_object().expect("device").keys() {
            assert!(HA_DEVICE.contains(&k.as_str()), "{topic}: device key `{k}`");
        }
        assert_eq!(obj["device"]["identifiers"][0], node_id);
        assert!(unique.insert(obj["unique_id"].as_str().expect("unique_id").to_string()));
        let avail = &obj["availability"][0];
        assert_eq!(avail["topic"], "vigil/testnode/status");
        let status = latest("vigil/testnode/status").expect("status published");
        let status: serde_json::Value = serde_json::from_slice(&status).expect("json");
        for f in json_fields(avail["value_template"].as_str().expect("tpl")) {
            assert!(status.get(&f).is_some(), "status has no `{f}`");
        }
        assert_eq!(status["status"], avail["payload_available"]);
        // Every topic it reads carries a retained vigil message whose JSON has the
        // template's fields.
        for key in ["state_topic", "json_attributes_topic", "image_topic"] {
            let Some(t) = obj.get(key).and_then(|t| t.as_str()) else {
                continue;
            };
            let p = latest(t).unwrap_or_else(|| panic!("{topic}: nothing on {key} {t}"));
            if key == "image_topic" {
                assert!(p.starts_with(&[0xFF, 0xD8]), "snapshot is not a JPEG");
                continue;
            }
            let j: serde_json::Value = serde_json::from_slice(&p).expect("json");
            if key == "state_topic" {
                let tpl = obj["value_template"].as_str().expect("value_template");
                for f in json_fields(tpl) {
                    assert!(j.get(&f).is_some(), "{topic}: {t} has no `{f}` ({tpl})");
                }
            }
        }
        if let Some(t) = obj.get("command_topic") {
            let t = t.as_str().expect("topic");
            assert!(t.starts_with("vigil/testnode/cam1/") && t.ends_with("/set"));
            assert_eq!(
                obj["retain"], false,
                "{topic}: commands must not be retained"
            );
            commands.insert(platform.to_string(), (t.to_string(), obj.clone()));
        }
        *seen_platforms.entry(platform.to_string()).or_insert(0) += 1;
        let _ = object;
    }
    assert_eq!(unique.len(), 9);
    assert_eq!(seen_platforms["sensor"], 4);
    for p in ["binary_sensor", "image", "button", "number", "switch"] {
        assert_eq!(seen_platforms[p], 1, "{p}");
    }

    // Driving the knobs the way Home Assistant does: the number's rendered template, the
    // switch's payload_off, the button's payload_press.
    let (t, number) = &commands["number"];
    assert_eq!(number["command_template"], "{{ value }}");
    publish(broker.port, t, "-123.25");
    wait_for(&msgs, "threshold applied", Duration::from_secs(20), |m| {
        json_of(m, "/cam1/state")
            .iter()
            .any(|s| s["threshold"].as_f64() == Some(-123.25))
    });
    let (t, switch) = &commands["switch"];
    publish(broker.port, t, switch["payload_off"].as_str().expect("off"));
    wait_for(&msgs, "detection disabled", Duration::from_secs(20), |m| {
        json_of(m, "/cam1/enabled/state")
            .iter()
            .any(|s| s["value"] == false)
    });
    publish(broker.port, t, switch["payload_on"].as_str().expect("on"));
    let (t, button) = &commands["button"];
    publish(
        broker.port,
        t,
        button["payload_press"].as_str().expect("press"),
    );
    wait_for(
        &msgs,
        "a calibration started",
        Duration::from_secs(20),
        |m| {
            knob_states(m, "cam1").iter().any(|k| {
                k["error"].is_null() && k["value"]["state"].as_str().is_some_and(|s| s != "idle")
            })
        },
    );

    // Home Assistant restarts: it announces itself and gets the configs again.
    msgs.lock().expect("lock").clear();
    publish(broker.port, "homeassistant/status", "online");
    wait_for(&msgs, "configs re-sent", Duration::from_secs(20), |m| {
        ha_configs(m).len() >= 9
    });

    // Discovery switched off: the next run clears the configs it published.
    signal(&daemon, "TERM");
    let st = daemon.wait().expect("wait");
    let log = || std::fs::read_to_string(config.with_extension("log")).unwrap_or_default();
    assert!(st.success(), "exit {st:?}; log:\n{}", log());
    patch_config(
        &config,
        &[("enabled = true\n\n[health]", "enabled = false\n\n[health]")],
    );
    msgs.lock().expect("lock").clear();
    let mut daemon = spawn_daemon(&config);
    wait_for(&msgs, "configs cleared", Duration::from_secs(60), |m| {
        let cleared = ha_configs(m).iter().filter(|(_, p)| p.is_empty()).count();
        cleared >= 9
    });
    // Health is published from the main loop, once signal handlers are in place.
    wait_for(&msgs, "health", Duration::from_secs(30), |m| {
        !json_of(m, "/cam1/health").is_empty()
    });
    signal(&daemon, "TERM");
    let st = daemon.wait().expect("wait");
    assert!(st.success(), "exit {st:?}; log:\n{}", log());
}

#[test]
fn an_uncalibrated_camera_starts_waits_and_serves_after_its_first_remote_calibration() {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = Broker::start();
    let (model, frames) = setup(dir.path());
    // A fresh install: no model for the camera at all.
    std::fs::remove_file(&model).expect("rm model");
    let goods = train_goods();
    repoint(&frames, &goods[100..136]);
    let config = write_config(dir.path(), broker.port, &frames, "");
    patch_config(&config, &[LOOP, MIN_FRAMES_30]);
    let check = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check-config", config.to_str().expect("p")])
        .output()
        .expect("check");
    assert!(check.status.success(), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("not calibrated yet"),
        "{check:?}"
    );
    // An explicitly configured model that does not exist is still a configuration error.
    let typo = dir.path().join("typo.toml");
    std::fs::write(
        &typo,
        std::fs::read_to_string(&config).expect("read").replace(
            "id = \"cam1\"",
            "id = \"cam1\"\nmodel = \"/nonexistent/m.safetensors\"",
        ),
    )
    .expect("write");
    let bad = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check-config", typo.to_str().expect("p")])
        .output()
        .expect("check");
    assert_eq!(bad.status.code(), Some(78), "{bad:?}");

    let msgs = subscribe(broker.port, "vigil/testnode/#");
    let mut daemon = spawn_daemon(&config);
    wait_for(&msgs, "health uncalibrated", Duration::from_secs(60), |m| {
        json_of(m, "/cam1/health")
            .iter()
            .any(|h| h["state"] == "uncalibrated")
    });
    std::thread::sleep(Duration::from_secs(2));
    {
        let m = msgs.lock().expect("lock");
        assert!(json_of(&m, "/cam1/state").is_empty(), "no model, no state");
        assert!(json_of(&m, "/cam1/event").is_empty(), "no model, no event");
        assert!(json_of(&m, "/status")
            .iter()
            .any(|s| s["status"] == "online"));
    }
    publish(
        broker.port,
        "vigil/testnode/cam1/calibrate/set",
        r#"{"frames": 40, "interval_s": 0}"#,
    );
    wait_for(&msgs, "calibration done", Duration::from_secs(120), |m| {
        knob_states(m, "cam1")
            .iter()
            .any(|k| k["value"]["state"] == "done")
    });
    let done = knob_states(&msgs.lock().expect("lock"), "cam1")
        .into_iter()
        .find(|k| k["value"]["state"] == "done")
        .expect("done");
    let new_id = done["value"]["model_id"]
        .as_str()
        .expect("model id")
        .to_string();
    assert!(done["value"]["previous_model_id"].is_null(), "{done}");
    wait_for(
        &msgs,
        "states under the new model, health ok",
        Duration::from_secs(60),
        |m| {
            json_of(m, "/cam1/state")
                .iter()
                .any(|s| s["model_id"] == new_id.as_str())
                && json_of(m, "/cam1/health")
                    .last()
                    .is_some_and(|h| h["state"] == "ok")
        },
    );
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());

    // The next start serves the calibrated model from the store.
    msgs.lock().expect("lock").clear();
    let mut daemon = spawn_daemon(&config);
    wait_for(
        &msgs,
        "the stored model serving",
        Duration::from_secs(60),
        |m| {
            json_of(m, "/cam1/state")
                .iter()
                .any(|s| s["model_id"] == new_id.as_str())
        },
    );
    signal(&daemon, "TERM");
    assert!(daemon.wait().expect("wait").success());
}

/// README's first command: `vigil demo` with nothing but the repository — the embedded broker
/// (a real MQTT broker: an outside client subscribes to it), the synthetic camera with
/// injected defects, a model fitted on its first normal frames, events printed as published.
#[test]
fn demo_runs_out_of_the_box_on_its_embedded_broker() {
    // The default build has the embedded broker (checked at compile time).
    const { assert!(vigil::demo::EMBEDDED_BROKER) };
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let child = Command::new(vigil_bin())
        .args(["demo", "--port", &port.to_string(), "--duration", "14"])
        .args(["--fit-frames", "48", "--fps", "8", "--defect-every", "12"])
        .args(["--state-dir", dir.path().to_str().expect("utf8")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("VIGIL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(Daemon)
        .expect("spawn vigil demo");
    let msgs = subscribe(port, "vigil/demo/#");
    let out = child_output(child);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Printed by the demo's own subscriber…
    let printed: Vec<&str> = stdout.lines().collect();
    assert!(
        printed
            .iter()
            .any(|l| l.starts_with("vigil/demo/status ") && l.contains("online")),
        "{stdout}"
    );
    let starts = printed
        .iter()
        .filter(|l| l.starts_with("vigil/demo/cam1/event ") && l.contains(r#""type":"start""#))
        .count();
    assert!(starts >= 1, "no event start printed:\n{stdout}");
    // …and received by an outside client of the embedded broker, with the same ids.
    let events = json_of(&snapshot(&msgs), "/event");
    let ids: std::collections::BTreeSet<&str> =
        events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert!(!ids.is_empty(), "the outside subscriber got no event");
    for id in &ids {
        assert!(stdout.contains(id), "event {id} was not printed:\n{stdout}");
    }
}

/// Wait for a piped child to exit (bounded) and collect its output, read as it comes (a
/// full pipe would block the child).
fn child_output(mut child: Daemon) -> std::process::Output {
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "vigil demo did not stop on --duration"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::process::Output {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

/// `vigil bench --broker`: the benchmark publishes to the broker it is given (a board's build
/// has no embedded broker, so `vigil bench` needs one there).
#[test]
fn bench_publishes_to_the_broker_it_is_given() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tmp");
    let (_, frames) = setup(dir.path());
    let msgs = subscribe(broker.port, "vigil/bench/#");
    let out = Command::new(vigil_bin())
        .args(["bench", "--data", frames.to_str().expect("utf8")])
        .args([
            "--workers",
            "1",
            "--seconds",
            "2",
            "--kde-points",
            "2000",
            "--json",
        ])
        .args(["--broker", &format!("mqtt://127.0.0.1:{}", broker.port)])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run vigil bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row: serde_json::Value = serde_json::from_str(stdout.lines().next().expect("a row"))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(row["workers"], 1);
    assert!(row["fps"].as_f64().expect("fps") > 0.0, "{row}");
    // The pipeline's messages reached the given broker: the camera's scored state, and the
    // node's status online, then offline at the end of the run.
    let got = wait_for(
        &msgs,
        "bench state and status",
        Duration::from_secs(10),
        |m| {
            let status = json_of(m, "/status");
            !json_of(m, "/cam1/state").is_empty()
                && status.first().is_some_and(|s| s["status"] == "online")
                && status.last().is_some_and(|s| s["status"] == "offline")
        },
    );
    let state = &json_of(&got, "/cam1/state")[0];
    assert_eq!(state["node"], "bench");
    assert!(state["score"].as_f64().is_some(), "{state}");
}
