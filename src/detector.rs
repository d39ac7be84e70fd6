//! Per-camera event detection: frame scores → a hysteresis state machine → `start` /
//! `update` / `end` events with one id, the peak score and when to refresh the snapshot.
//! Pure logic (no I/O, no clock of its own: times come with the frames).

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::messages::{timestamp, Event, SCHEMA_EVENT};

/// `[camera.detector]`: how frame verdicts become events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    /// Consecutive anomalous frames needed to open an event. Default 3.
    pub start_frames: u32,
    /// Consecutive normal frames needed to close it. Default 5.
    pub end_frames: u32,
    /// After an event ends, no new event starts for this many seconds (frames over the
    /// threshold in that window are counted but open nothing). Default 5.
    pub min_event_gap_s: f64,
    /// While an event is open, an `update` is sent at most this often (and only when
    /// something changed). Default 5.
    pub update_interval_s: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            start_frames: 3,
            end_frames: 5,
            min_event_gap_s: 5.0,
            update_interval_s: 5.0,
        }
    }
}

impl DetectorConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.start_frames == 0 || self.end_frames == 0 {
            return Err("detector start_frames and end_frames must be at least 1".into());
        }
        for (name, v) in [
            ("min_event_gap_s", self.min_event_gap_s),
            ("update_interval_s", self.update_interval_s),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!(
                    "detector {name} must be a non-negative number of seconds, got {v}"
                ));
            }
        }
        Ok(())
    }
}

/// One scored frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub captured_at: SystemTime,
    pub log_density: f64,
    pub pred_score: f64,
    /// Log-density threshold in force (anomalous iff `log_density < threshold`).
    pub threshold: f64,
}

impl Observation {
    pub fn anomalous(&self) -> bool {
        self.log_density < self.threshold
    }
}

/// What the caller must do after a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Event message to publish (durably).
    pub event: Option<Event>,
    /// This frame is the event's new peak (or its first): publish it as the snapshot.
    pub snapshot: bool,
}

#[derive(Debug, Clone)]
struct Open {
    id: String,
    ts_start: SystemTime,
    peak_score: f64,
    peak_log_density: f64,
    frames: u64,
    normal_run: u32,
    last_update: SystemTime,
    dirty: bool,
    seq: u64,
}

/// The state machine for one camera.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: DetectorConfig,
    node: String,
    camera: String,
    snapshot_topic: String,
    /// Current run of consecutive anomalous frames (while idle): (count, first capture time).
    run: u32,
    run_start: Option<SystemTime>,
    run_peak: (f64, f64),
    open: Option<Open>,
    last_end: Option<SystemTime>,
    events_started: u64,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Detector {
    pub fn new(cfg: DetectorConfig, node: &str, camera: &str, snapshot_topic: String) -> Detector {
        Detector {
            cfg,
            node: node.to_string(),
            camera: camera.to_string(),
            snapshot_topic,
            run: 0,
            run_start: None,
            run_peak: (f64::NEG_INFINITY, f64::INFINITY),
            open: None,
            last_end: None,
            events_started: 0,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub fn events_started(&self) -> u64 {
        self.events_started
    }

    fn message(
        &self,
        o: &Open,
        kind: &str,
        at: SystemTime,
        model_id: &str,
        threshold: f64,
    ) -> Event {
        let (ts_start, ts_start_ms) = timestamp(o.ts_start);
        let (ts, ts_ms) = timestamp(at);
        Event {
            schema: SCHEMA_EVENT.to_string(),
            id: o.id.clone(),
            r#type: kind.to_string(),
            node: self.node.clone(),
            camera: self.camera.clone(),
            ts_start,
            ts_start_ms,
            ts,
            ts_ms,
            peak_score: o.peak_score,
            peak_log_density: o.peak_log_density,
            threshold,
            frames: o.frames,
            snapshot_topic: self.snapshot_topic.clone(),
            model_id: model_id.to_string(),
            seq: o.seq,
        }
    }

    /// Feed one scored frame.
    pub fn observe(&mut self, obs: &Observation, model_id: &str) -> Output {
        let bad = obs.anomalous();
        let at = obs.captured_at;
        if let Some(mut o) = self.open.take() {
            let mut snapshot = false;
            if bad {
                o.frames += 1;
                o.normal_run = 0;
                if obs.pred_score > o.peak_score {
                    o.peak_score = obs.pred_score;
                    o.peak_log_density = obs.log_density;
                    o.dirty = true;
                    snapshot = true;
                }
            } else {
                o.normal_run += 1;
            }
            if o.normal_run >= self.cfg.end_frames {
                o.seq += 1;
                let ev = self.message(&o, "end", at, model_id, obs.threshold);
                self.last_end = Some(at);
                return Output {
                    event: Some(ev),
                    snapshot: false,
                };
            }
            let due = at.duration_since(o.last_update).unwrap_or_default()
                >= secs(self.cfg.update_interval_s);
            let ev = if o.dirty && due {
                o.seq += 1;
                o.dirty = false;
                o.last_update = at;
                Some(self.message(&o, "update", at, model_id, obs.threshold))
            } else {
                None
            };
            self.open = Some(o);
            return Output {
                event: ev,
                snapshot,
            };
        }

        if !bad {
            self.run = 0;
            self.run_start = None;
            self.run_peak = (f64::NEG_INFINITY, f64::INFINITY);
            return Output {
                event: None,
                snapshot: false,
            };
        }
        self.run += 1;
        if self.run_start.is_none() {
            self.run_start = Some(at);
        }
        if obs.pred_score > self.run_peak.0 {
            self.run_peak = (obs.pred_score, obs.log_density);
        }
        let in_gap = self
            .last_end
            .map(|e| at.duration_since(e).unwrap_or_default() < secs(self.cfg.min_event_gap_s))
            .unwrap_or(false);
        if self.run < self.cfg.start_frames || in_gap {
            return Output {
                event: None,
                snapshot: false,
            };
        }
        let ts_start = self.run_start.unwrap_or(at);
        let (_, start_ms) = timestamp(ts_start);
        self.events_started += 1;
        let o = Open {
            id: format!("{}-{}-{}", self.camera, start_ms, self.events_started),
            ts_start,
            peak_score: self.run_peak.0,
            peak_log_density: self.run_peak.1,
            frames: u64::from(self.run),
            normal_run: 0,
            last_update: at,
            dirty: false,
            seq: 0,
        };
        self.run = 0;
        self.run_start = None;
        self.run_peak = (f64::NEG_INFINITY, f64::INFINITY);
        let ev = self.message(&o, "start", at, model_id, obs.threshold);
        self.open = Some(o);
        Output {
            event: Some(ev),
            snapshot: true,
        }
    }

    /// Close an open event now (camera disabled, model swapped, shutdown).
    pub fn force_end(&mut self, at: SystemTime, model_id: &str, threshold: f64) -> Option<Event> {
        let mut o = self.open.take()?;
        o.seq += 1;
        self.last_end = Some(at);
        self.run = 0;
        self.run_start = None;
        Some(self.message(&o, "end", at, model_id, threshold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(t: u64, bad: bool, score: f64) -> Observation {
        Observation {
            captured_at: SystemTime::UNIX_EPOCH
                + Duration::from_millis(1_700_000_000_000 + t * 100),
            log_density: if bad { -5.0 } else { 20.0 },
            pred_score: score,
            threshold: 0.0,
        }
    }

    fn det(cfg: DetectorConfig) -> Detector {
        Detector::new(cfg, "n", "cam", "vigil/n/cam/snapshot".into())
    }

    #[test]
    fn start_needs_k_consecutive_and_end_needs_m_normal() {
        let mut d = det(DetectorConfig {
            start_frames: 3,
            end_frames: 2,
            min_event_gap_s: 0.0,
            update_interval_s: 0.0,
        });
        let mut t = 0;
        let mut feed = |d: &mut Detector, bad: bool, s: f64| {
            t += 1;
            d.observe(&obs(t, bad, s), "m1")
        };
        assert!(feed(&mut d, true, 0.7).event.is_none());
        assert!(feed(&mut d, false, 0.3).event.is_none(), "run broken");
        assert!(feed(&mut d, true, 0.7).event.is_none());
        assert!(feed(&mut d, true, 0.9).event.is_none());
        let out = feed(&mut d, true, 0.8);
        let start = out.event.expect("start");
        assert_eq!(start.r#type, "start");
        assert!(out.snapshot);
        assert_eq!(start.frames, 3);
        assert_eq!(start.peak_score, 0.9);
        // ts_start is the capture time of the first frame of the run.
        assert_eq!(start.ts_start_ms, 1_700_000_000_000 + 3 * 100);
        // A higher peak → update (interval 0) with the same id and a snapshot.
        let up = feed(&mut d, true, 0.95);
        assert!(up.snapshot);
        let up = up.event.expect("update");
        assert_eq!(
            (up.r#type.as_str(), up.id.as_str(), up.seq),
            ("update", start.id.as_str(), 1)
        );
        assert!(feed(&mut d, true, 0.8).event.is_none(), "nothing changed");
        assert!(feed(&mut d, false, 0.3).event.is_none());
        let end = feed(&mut d, false, 0.3).event.expect("end");
        assert_eq!(
            (end.r#type.as_str(), end.id.as_str(), end.frames, end.seq),
            ("end", start.id.as_str(), 5, 2)
        );
        assert_eq!(end.peak_score, 0.95);
        assert_eq!(end.model_id, "m1");
        assert!(!d.is_open());
    }

    #[test]
    fn min_gap_suppresses_a_restart_and_updates_are_rate_limited() {
        let mut d = det(DetectorConfig {
            start_frames: 1,
            end_frames: 1,
            min_event_gap_s: 1.0,
            update_interval_s: 0.5,
        });
        assert_eq!(
            d.observe(&obs(0, true, 0.7), "m").event.map(|e| e.r#type),
            Some("start".into())
        );
        assert!(
            d.observe(&obs(1, true, 0.8), "m").event.is_none(),
            "peak rose but 0.1 s < 0.5 s"
        );
        assert_eq!(
            d.observe(&obs(5, true, 0.8), "m").event.map(|e| e.r#type),
            Some("update".into())
        );
        assert_eq!(
            d.observe(&obs(6, false, 0.3), "m").event.map(|e| e.r#type),
            Some("end".into())
        );
        assert!(
            d.observe(&obs(8, true, 0.9), "m").event.is_none(),
            "inside the 1 s gap"
        );
        assert_eq!(
            d.observe(&obs(17, true, 0.9), "m").event.map(|e| e.r#type),
            Some("start".into())
        );
        assert_eq!(d.events_started(), 2);
        let end = d
            .force_end(SystemTime::now(), "m", 0.0)
            .expect("forced end");
        assert_eq!(end.r#type, "end");
    }

    #[test]
    fn config_validation_rejects_nonsense() {
        assert!(DetectorConfig::default().validate().is_ok());
        assert!(DetectorConfig {
            start_frames: 0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(DetectorConfig {
            min_event_gap_s: -1.0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
