//! Frame sources, the frame slot and the capture supervisor, on real parts: the shared
//! JPEGs, real files in temp dirs, videos made by a real `ffmpeg`, named pipes fed by the
//! test, real ffmpeg child processes.

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Deserialize;
use vigil::frame::{Frame, Pixels};
use vigil::source::{
    build, Capture, CaptureHandle, CaptureHealth, CaptureOptions, FolderConfig, FrameSlot,
    FrameSource, HealthState, SourceConfig, SourceError, SyntheticConfig, V4l2Config, V4l2Format,
    VideoConfig, ORIGIN_DEFECT, ORIGIN_NORMAL,
};

// ---------------------------------------------------------------------------------------
// helpers

fn good_dir() -> PathBuf {
    common::shared_dir().join("data/magnetic_tile/test/good")
}

fn sorted_jpegs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read shared dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    v.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    v
}

fn open(cfg: SourceConfig) -> Box<dyn FrameSource> {
    let mut src = build(&cfg).expect("build");
    src.open().expect("open");
    src
}

fn next(src: &mut dyn FrameSource) -> Pixels {
    src.next_frame().expect("next_frame").expect("a frame")
}

fn rgb(p: &Pixels) -> (u32, u32, &[u8]) {
    match p {
        Pixels::Rgb8 {
            width,
            height,
            data,
        } => (*width, *height, data),
        Pixels::Encoded { .. } => panic!("expected RGB8"),
    }
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
        .sum::<f64>()
        / a.len() as f64
}

/// Pixels darker than half the frame's mean luminance (the synthetic surface never has
/// any; its defects darken to 30 %).
fn dark_pixels(data: &[u8]) -> usize {
    let luma: Vec<f64> = data
        .chunks_exact(3)
        .map(|c| (f64::from(c[0]) + f64::from(c[1]) + f64::from(c[2])) / 3.0)
        .collect();
    let mean = luma.iter().sum::<f64>() / luma.len() as f64;
    luma.iter().filter(|&&l| l < 0.5 * mean).count()
}

/// Shows the supervisor's logs in failing tests (`RUST_LOG` picks the level).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}

/// Polls the capture's health until `pred` holds; panics with the last health on timeout.
fn wait_for(
    cap: &CaptureHandle,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&CaptureHealth) -> bool,
) -> CaptureHealth {
    let deadline = Instant::now() + timeout;
    loop {
        let h = cap.health();
        if pred(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; health: {h:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Stops the capture and returns how long stop + join took.
fn stop_and_join(cap: CaptureHandle) -> Duration {
    let t = Instant::now();
    cap.stop();
    cap.join();
    t.elapsed()
}

/// A 2 s, 10 fps, 320×240 `testsrc` video (MPEG-4 part 2: in every ffmpeg build).
fn make_test_video(dir: &Path) -> PathBuf {
    let out = dir.join("testsrc.mp4");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc=size=320x240:rate=10")
        .args([
            "-t", "2", "-c:v", "mpeg4", "-q:v", "5", "-pix_fmt", "yuv420p",
        ])
        .arg(&out)
        .status()
        .expect("run ffmpeg (install it: apt-get install ffmpeg)");
    assert!(status.success(), "ffmpeg could not make the test video");
    out
}

fn video(url: &Path) -> VideoConfig {
    VideoConfig {
        width: 160,
        height: 120,
        realtime: false,
        ..VideoConfig::new(url.display().to_string())
    }
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A video config reading raw 64×48 RGB frames from a named pipe.
fn fifo_video(fifo: &Path) -> VideoConfig {
    VideoConfig {
        width: 64,
        height: 48,
        realtime: false,
        extra_args: [
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-video_size",
            "64x48",
            "-framerate",
            "20",
        ]
        .map(String::from)
        .to_vec(),
        ..VideoConfig::new(fifo.display().to_string())
    }
}

/// ffmpeg processes whose command line mentions `needle` (to prove none are left).
fn ffmpeg_processes_mentioning(needle: &str) -> usize {
    fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.contains("ffmpeg") && c.contains(needle)
        })
        .count()
}

// ---------------------------------------------------------------------------------------
// configuration

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraToml {
    camera: CameraTable,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraTable {
    source: SourceConfig,
}

fn parse(toml_text: &str) -> Result<SourceConfig, toml::de::Error> {
    toml::from_str::<CameraToml>(toml_text).map(|c| c.camera.source)
}

#[test]
fn config_tables_parse_with_documented_defaults() {
    let folder =
        parse("[camera.source]\ntype = \"folder\"\npath = \"/data/*.jpg\"\n").expect("folder");
    assert_eq!(
        folder,
        SourceConfig::Folder(FolderConfig::new("/data/*.jpg"))
    );
    let SourceConfig::Folder(f) = &folder else {
        unreachable!()
    };
    assert_eq!((f.fps, f.looping), (2.0, true));
    let folder =
        parse("[camera.source]\ntype = \"folder\"\npath = \"/d\"\nfps = 0\nloop = false\n")
            .expect("folder with loop");
    assert_eq!(
        folder,
        SourceConfig::Folder(FolderConfig {
            path: "/d".into(),
            fps: 0.0,
            looping: false
        })
    );

    let synthetic = parse("[camera.source]\ntype = \"synthetic\"\n").expect("synthetic");
    assert_eq!(
        synthetic,
        SourceConfig::Synthetic(SyntheticConfig::default())
    );
    let d = SyntheticConfig::default();
    assert_eq!(
        (
            d.width,
            d.height,
            d.fps,
            d.defect_every,
            d.defect_frames,
            d.seed
        ),
        (640, 480, 5.0, 0, 3, 1)
    );

    let v = parse("[camera.source]\ntype = \"video\"\nurl = \"/clips/a.mp4\"\n").expect("video");
    assert_eq!(v, SourceConfig::Video(VideoConfig::new("/clips/a.mp4")));
    let SourceConfig::Video(vc) = &v else {
        unreachable!()
    };
    assert_eq!(
        (vc.fps, vc.width, vc.height, vc.looping, vc.realtime),
        (None, 640, 480, false, true)
    );
    assert_eq!((vc.ffmpeg.as_str(), vc.extra_args.len()), ("ffmpeg", 0));
    assert!(!vc.is_network());

    let s = parse(
        "[camera.source]\ntype = \"stream\"\nurl = \"rtsp://cam/live\"\nfps = 4.0\n\
         extra_args = [\"-rtsp_transport\", \"tcp\"]\n",
    )
    .expect("stream alias");
    let SourceConfig::Video(sc) = &s else {
        panic!("`stream` must parse as the video variant: {s:?}")
    };
    assert_eq!(sc.fps, Some(4.0));
    assert_eq!(sc.extra_args, ["-rtsp_transport", "tcp"]);
    assert!(sc.is_network());

    let cam = parse("[camera.source]\ntype = \"v4l2\"\n").expect("v4l2");
    assert_eq!(cam, SourceConfig::V4l2(V4l2Config::default()));
    let c = V4l2Config::default();
    assert_eq!(
        (c.device.as_str(), c.width, c.height, c.fps, c.format),
        ("/dev/video0", 640, 480, 15, V4l2Format::Mjpeg)
    );
    let cam = parse("[camera.source]\ntype = \"v4l2\"\ndevice = \"1\"\nformat = \"yuyv\"\n")
        .expect("v4l2 yuyv");
    let SourceConfig::V4l2(c) = cam else {
        unreachable!()
    };
    assert_eq!((c.device.as_str(), c.format), ("1", V4l2Format::Yuyv));
}

#[test]
fn config_rejects_unknown_keys_and_types_readably() {
    let err = parse("[camera.source]\ntype = \"folder\"\npath = \"/d\"\nfsp = 3\n")
        .expect_err("typo must be rejected")
        .to_string();
    assert!(err.contains("unknown field `fsp`"), "{err}");
    assert!(err.contains("`fps`"), "should list the valid keys: {err}");

    let err = parse("[camera.source]\ntype = \"video\"\nurl = \"/a.mp4\"\nloops = true\n")
        .expect_err("unknown video key")
        .to_string();
    assert!(err.contains("unknown field `loops`"), "{err}");

    let err = parse("[camera.source]\ntype = \"webcam\"\n")
        .expect_err("unknown type")
        .to_string();
    assert!(err.contains("webcam") && err.contains("folder"), "{err}");

    let err = parse("[camera.source]\npath = \"/d\"\n")
        .expect_err("missing type")
        .to_string();
    assert!(err.contains("type"), "{err}");

    let err = parse("[camera.source]\ntype = \"v4l2\"\nformat = \"h264\"\n")
        .expect_err("unknown format")
        .to_string();
    assert!(err.contains("h264"), "{err}");
}

#[test]
fn build_rejects_out_of_range_values() {
    let bad = [
        SourceConfig::Synthetic(SyntheticConfig {
            defect_every: 3,
            defect_frames: 3,
            ..Default::default()
        }),
        SourceConfig::Synthetic(SyntheticConfig {
            width: 0,
            ..Default::default()
        }),
        SourceConfig::Folder(FolderConfig {
            fps: -1.0,
            ..FolderConfig::new("/d")
        }),
        SourceConfig::Video(VideoConfig {
            fps: Some(0.0),
            ..VideoConfig::new("/a.mp4")
        }),
    ];
    for cfg in bad {
        match build(&cfg) {
            Err(e @ SourceError::Config(_)) => assert!(e.is_permanent()),
            Err(e) => panic!("{cfg:?}: wrong error {e}"),
            Ok(_) => panic!("{cfg:?} must be rejected"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// folder

#[test]
fn folder_reads_shared_images_in_name_order_then_ends() {
    let dir = good_dir();
    let expected = sorted_jpegs(&dir);
    assert!(expected.len() >= 10);
    let mut src = open(SourceConfig::Folder(FolderConfig {
        fps: 0.0,
        looping: false,
        ..FolderConfig::new(dir.display().to_string())
    }));
    let mut origins = Vec::new();
    while let Some(px) = src.next_frame().expect("next_frame") {
        let origin = src.last_origin().expect("origin");
        if origins.is_empty() {
            let Pixels::Encoded { data } = &px else {
                panic!("folder frames are encoded")
            };
            assert_eq!(data, &fs::read(&origin).expect("read"), "the file's bytes");
        }
        origins.push(PathBuf::from(origin));
    }
    assert_eq!(origins, expected);
    assert!(src.next_frame().expect("still ended").is_none());
}

#[test]
fn folder_paces_at_configured_fps() {
    let mut src = open(SourceConfig::Folder(FolderConfig {
        fps: 20.0,
        ..FolderConfig::new(good_dir().display().to_string())
    }));
    let t = Instant::now();
    for _ in 0..11 {
        next(src.as_mut());
    }
    // 11 frames at 20 fps: the first at once, then 10 intervals of 50 ms.
    let took = t.elapsed().as_secs_f64();
    assert!((0.45..0.8).contains(&took), "11 frames took {took:.3} s");
}

#[test]
fn folder_loops_back_to_the_first_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, src) in sorted_jpegs(&good_dir()).iter().take(3).enumerate() {
        fs::copy(src, tmp.path().join(format!("f{i}.jpg"))).expect("copy");
    }
    let mut src = open(SourceConfig::Folder(FolderConfig {
        fps: 0.0,
        ..FolderConfig::new(tmp.path().display().to_string())
    }));
    let names: Vec<String> = (0..7)
        .map(|_| {
            next(src.as_mut());
            let o = src.last_origin().expect("origin");
            Path::new(&o)
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        ["f0.jpg", "f1.jpg", "f2.jpg", "f0.jpg", "f1.jpg", "f2.jpg", "f0.jpg"]
    );
}

#[test]
fn folder_glob_pattern_selects_matching_images_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let jpeg = sorted_jpegs(&good_dir())[0].clone();
    for name in [
        "b.jpg",
        "a.jpg",
        "c.JPEG",
        "d.png",
        "notes.txt",
        "a.jpg.bak",
    ] {
        fs::copy(&jpeg, tmp.path().join(name)).expect("copy");
    }
    fs::create_dir(tmp.path().join("sub.jpg")).expect("a directory named like an image");
    let names = |pattern: &str| -> Vec<String> {
        let path = tmp.path().join(pattern).display().to_string();
        let mut src = open(SourceConfig::Folder(FolderConfig {
            fps: 0.0,
            looping: false,
            ..FolderConfig::new(path)
        }));
        let mut out = Vec::new();
        while src.next_frame().expect("next").is_some() {
            let o = src.last_origin().expect("origin");
            out.push(
                Path::new(&o)
                    .file_name()
                    .expect("n")
                    .to_string_lossy()
                    .into(),
            );
        }
        out
    };
    assert_eq!(names("*.jpg"), ["a.jpg", "b.jpg"]);
    assert_eq!(names("?.*"), ["a.jpg", "b.jpg", "c.JPEG", "d.png"]);
    assert_eq!(names("[b-d].*"), ["b.jpg", "c.JPEG", "d.png"]);
    assert_eq!(names(""), ["a.jpg", "b.jpg", "c.JPEG", "d.png"]);

    // An existing directory is taken literally even when its name looks like a pattern.
    let odd = tmp.path().join("cam[1]");
    fs::create_dir(&odd).expect("mkdir");
    fs::copy(&jpeg, odd.join("x.jpg")).expect("copy");
    let mut src = open(SourceConfig::Folder(FolderConfig {
        fps: 0.0,
        looping: false,
        ..FolderConfig::new(odd.display().to_string())
    }));
    assert!(src.next_frame().expect("next").is_some());
    assert!(src.last_origin().expect("origin").ends_with("cam[1]/x.jpg"));

    // The same pattern over the shared data matches a plain filtered listing.
    let shared = sorted_jpegs(&good_dir());
    let expected: Vec<PathBuf> = shared
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("exp1_num_1"))
        })
        .collect();
    assert!(!expected.is_empty());
    let mut src = open(SourceConfig::Folder(FolderConfig {
        fps: 0.0,
        looping: false,
        ..FolderConfig::new(good_dir().join("exp1_num_1*.jpg").display().to_string())
    }));
    let mut got = Vec::new();
    while src.next_frame().expect("next").is_some() {
        got.push(PathBuf::from(src.last_origin().expect("origin")));
    }
    assert_eq!(got, expected);
}

#[test]
fn folder_without_images_fails_to_open_with_the_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    fs::write(tmp.path().join("readme.txt"), "no images").expect("write");
    let path = tmp.path().display().to_string();
    let mut src = build(&SourceConfig::Folder(FolderConfig::new(path.clone()))).expect("build");
    let err = src.open().expect_err("no images").to_string();
    assert!(
        err.contains("no image files") && err.contains(&path),
        "{err}"
    );

    let missing = tmp.path().join("missing").display().to_string();
    let mut src = build(&SourceConfig::Folder(FolderConfig::new(missing.clone()))).expect("b");
    let err = src.open().expect_err("missing dir").to_string();
    assert!(err.contains(&missing), "{err}");
}

#[test]
fn capture_of_a_finite_folder_reports_ended_and_exits() {
    init_logs();
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, src) in sorted_jpegs(&good_dir()).iter().take(3).enumerate() {
        fs::copy(src, tmp.path().join(format!("f{i}.jpg"))).expect("copy");
    }
    let slot = Arc::new(FrameSlot::new());
    let cap = Capture::spawn(
        "cam-folder".into(),
        SourceConfig::Folder(FolderConfig {
            fps: 0.0,
            looping: false,
            ..FolderConfig::new(tmp.path().display().to_string())
        }),
        CaptureOptions::default(),
        Arc::clone(&slot),
    )
    .expect("spawn");
    let h = wait_for(&cap, Duration::from_secs(5), "ended", |h| {
        h.state == HealthState::Ended
    });
    assert_eq!(h.frames, 3);
    assert!(h.last_frame_at.is_some());
    assert_eq!(h.reopen_count, 0);
    let t = Instant::now();
    while !cap.is_finished() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "capture thread did not exit"
        );
        thread::sleep(Duration::from_millis(5));
    }
    cap.join();
    assert_eq!(slot.captured(), 3);
    let last = slot.try_take().expect("the latest frame");
    assert_eq!(last.seq, 2);
    assert!(last.origin.expect("origin").ends_with("f2.jpg"));
    assert_eq!(slot.dropped(), 2);
}

// ---------------------------------------------------------------------------------------
// synthetic

fn synthetic(defect_every: u32, seed: u64) -> SourceConfig {
    SourceConfig::Synthetic(SyntheticConfig {
        width: 320,
        height: 240,
        fps: 0.0,
        defect_every,
        defect_frames: 3,
        seed,
    })
}

#[test]
fn synthetic_is_deterministic_for_a_seed() {
    let mut a = open(synthetic(4, 7));
    let mut b = open(synthetic(4, 7));
    let mut c = open(synthetic(4, 8));
    for i in 0..6 {
        let (fa, fb, fc) = (next(a.as_mut()), next(b.as_mut()), next(c.as_mut()));
        assert_eq!(
            rgb(&fa).2,
            rgb(&fb).2,
            "frame {i} differs for the same seed"
        );
        assert_eq!(a.last_origin(), b.last_origin());
        assert!(
            mean_abs_diff(rgb(&fa).2, rgb(&fc).2) > 1.0,
            "another seed must give another surface"
        );
    }
}

#[test]
fn synthetic_frames_vary_like_a_real_camera() {
    let mut src = open(synthetic(0, 1));
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|_| {
            let px = next(src.as_mut());
            let (w, h, data) = rgb(&px);
            assert_eq!((w, h, data.len()), (320, 240, 320 * 240 * 3));
            assert_eq!(src.last_origin().as_deref(), Some(ORIGIN_NORMAL));
            data.to_vec()
        })
        .collect();
    for pair in frames.windows(2) {
        let d = mean_abs_diff(&pair[0], &pair[1]);
        // Noise, illumination drift and vibration, but the same surface.
        assert!(
            (0.5..12.0).contains(&d),
            "consecutive frames differ by {d:.2}"
        );
    }
    // A textured surface, not a flat field.
    let luma: Vec<f64> = frames[0].chunks_exact(3).map(|c| f64::from(c[1])).collect();
    let mean = luma.iter().sum::<f64>() / luma.len() as f64;
    let sd = (luma.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / luma.len() as f64).sqrt();
    assert!(
        (80.0..180.0).contains(&mean) && sd > 4.0,
        "mean {mean:.1}, sd {sd:.1}"
    );
}

#[test]
fn synthetic_injects_defects_at_the_configured_cadence() {
    let mut src = open(synthetic(10, 3));
    let mut defect_frames = Vec::new();
    for i in 0..40u64 {
        let px = next(src.as_mut());
        let dark = dark_pixels(rgb(&px).2);
        match src.last_origin().as_deref() {
            Some(ORIGIN_DEFECT) => {
                defect_frames.push(i);
                assert!(dark > 30, "defect frame {i} has only {dark} dark pixels");
            }
            Some(ORIGIN_NORMAL) => assert_eq!(dark, 0, "normal frame {i} has dark pixels"),
            other => panic!("unexpected origin {other:?}"),
        }
    }
    assert_eq!(defect_frames, [10, 11, 12, 20, 21, 22, 30, 31, 32]);
}

#[test]
fn synthetic_paces_at_configured_fps() {
    let mut src = open(SourceConfig::Synthetic(SyntheticConfig {
        width: 64,
        height: 48,
        fps: 10.0,
        ..Default::default()
    }));
    let t = Instant::now();
    for _ in 0..6 {
        next(src.as_mut());
    }
    let took = t.elapsed().as_secs_f64();
    assert!(
        (0.45..0.8).contains(&took),
        "6 frames at 10 fps took {took:.3} s"
    );
}

// ---------------------------------------------------------------------------------------
// video (ffmpeg)

#[test]
fn video_file_yields_every_frame_at_the_configured_size_then_ends() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = make_test_video(tmp.path());
    let mut src = open(SourceConfig::Video(video(&file)));
    let mut frames = Vec::new();
    while let Some(px) = src.next_frame().expect("next_frame") {
        let (w, h, data) = rgb(&px);
        assert_eq!((w, h, data.len()), (160, 120, 160 * 120 * 3));
        frames.push(data.to_vec());
    }
    assert_eq!(frames.len(), 20, "2 s at 10 fps");
    // testsrc has colour bars and a moving counter: not blank, not frozen.
    assert!(dark_pixels(&frames[0]) > 100);
    assert!(mean_abs_diff(&frames[0], &frames[10]) > 0.5);
    src.close();
}

#[test]
fn video_fps_resamples_the_stream() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = make_test_video(tmp.path());
    let mut src = open(SourceConfig::Video(VideoConfig {
        fps: Some(5.0),
        ..video(&file)
    }));
    let mut n = 0;
    while src.next_frame().expect("next_frame").is_some() {
        n += 1;
    }
    assert!(
        (9..=11).contains(&n),
        "2 s resampled to 5 fps gave {n} frames"
    );
}

#[test]
fn video_loop_keeps_going_past_the_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = make_test_video(tmp.path());
    let mut src = open(SourceConfig::Video(VideoConfig {
        looping: true,
        ..video(&file)
    }));
    for i in 0..50 {
        assert!(
            src.next_frame().expect("next_frame").is_some(),
            "looping video ended at frame {i}"
        );
    }
    src.close();
}

#[test]
fn video_realtime_plays_a_file_at_its_native_rate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = make_test_video(tmp.path());
    let mut src = open(SourceConfig::Video(VideoConfig {
        realtime: true,
        ..video(&file)
    }));
    next(src.as_mut());
    let t = Instant::now();
    for _ in 0..10 {
        next(src.as_mut());
    }
    let took = t.elapsed().as_secs_f64();
    assert!(
        took > 0.7,
        "10 frames of a 10 fps file took only {took:.3} s"
    );
}

#[test]
fn unreadable_video_goes_offline_with_ffmpeg_error_and_retries_with_backoff() {
    init_logs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("broken.mp4");
    fs::write(&bad, b"this is not a video").expect("write");
    let opts = CaptureOptions {
        stall_timeout: Duration::from_secs(10),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_millis(800),
    };
    let slot = Arc::new(FrameSlot::new());
    let cap = Capture::spawn(
        "cam-bad".into(),
        SourceConfig::Video(video(&bad)),
        opts,
        Arc::clone(&slot),
    )
    .expect("spawn");
    // When each reopen happened, seen by polling.
    let start = Instant::now();
    let mut reopen_at: Vec<Duration> = Vec::new();
    let mut last = cap.health();
    while start.elapsed() < Duration::from_millis(3200) {
        let h = cap.health();
        if h.reopen_count > last.reopen_count {
            reopen_at.push(start.elapsed());
        }
        last = h;
        thread::sleep(Duration::from_millis(5));
    }
    let h = cap.health();
    assert_eq!(h.state, HealthState::Offline);
    let err = h.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("ffmpeg exited") && err.contains("Invalid data"),
        "error should carry ffmpeg's message: {err}"
    );
    assert_eq!(h.frames, 0);
    // Backoff 0.2, 0.4, 0.8, 0.8 s (+ ffmpeg's own run time): a handful of reopens, not a
    // hot loop.
    assert!(
        (2..=6).contains(&h.reopen_count),
        "reopen_count {} in 3.2 s",
        h.reopen_count
    );
    for (k, gap) in reopen_at.windows(2).map(|w| w[1] - w[0]).enumerate() {
        // Between reopen k+1 and k+2 the supervisor waited backoff_min · 2^(k+1), capped.
        let backoff = (0.2 * 2f64.powi(k as i32 + 1)).min(0.8);
        assert!(
            gap.as_secs_f64() >= backoff - 0.06,
            "reopen gap {k} was {gap:?}, backoff {backoff} s; all: {reopen_at:?}"
        );
    }
    assert!(stop_and_join(cap) < Duration::from_secs(1));
    assert_eq!(slot.captured(), 0);
}

#[test]
fn unreachable_stream_reports_the_connection_error() {
    init_logs();
    let slot = Arc::new(FrameSlot::new());
    let cap = Capture::spawn(
        "cam-net".into(),
        SourceConfig::Video(VideoConfig::new("http://127.0.0.1:1/video.mjpg")),
        CaptureOptions {
            backoff_min: Duration::from_millis(100),
            ..CaptureOptions::default()
        },
        slot,
    )
    .expect("spawn");
    let h = wait_for(&cap, Duration::from_secs(5), "offline", |h| {
        h.state == HealthState::Offline
    });
    let err = h.last_error.unwrap_or_default();
    assert!(err.contains("Connection refused"), "{err}");
    assert!(stop_and_join(cap) < Duration::from_secs(1));
}

#[test]
fn missing_ffmpeg_binary_is_a_clear_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("x.mp4");
    fs::write(&file, b"x").expect("write");
    let mut src = build(&SourceConfig::Video(VideoConfig {
        ffmpeg: "/nonexistent/bin/ffmpeg".into(),
        ..video(&file)
    }))
    .expect("build");
    let err = src.open().expect_err("no ffmpeg").to_string();
    assert!(
        err.contains("cannot start /nonexistent/bin/ffmpeg"),
        "{err}"
    );
}

const PHASE_WRITE: u8 = 0;
const PHASE_PAUSE: u8 = 1;
const PHASE_QUIT: u8 = 2;

/// Feeds raw 64×48 RGB frames into `fifo` at 20 fps while the phase is WRITE, reopening
/// the pipe when the reader (ffmpeg) was killed and replaced.
fn fifo_writer(fifo: PathBuf, phase: Arc<AtomicU8>) {
    let mut out: Option<File> = None;
    let mut i = 0u8;
    loop {
        match phase.load(Ordering::SeqCst) {
            PHASE_QUIT => return,
            PHASE_PAUSE => {
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            _ => {}
        }
        // Opening a FIFO for writing blocks until a reader (ffmpeg) has it open.
        let f = match out.as_mut() {
            Some(f) => f,
            None => match File::options().write(true).open(&fifo) {
                Ok(f) => out.insert(f),
                Err(_) => return,
            },
        };
        i = i.wrapping_add(9);
        if f.write_all(&[i; 64 * 48 * 3]).is_err() {
            out = None; // EPIPE: the reader went away
            continue;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stalled_stream_is_reported_reopened_and_recovers() {
    init_logs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let fifo = tmp.path().join("feed.rgb");
    mkfifo(&fifo);
    let phase = Arc::new(AtomicU8::new(PHASE_WRITE));
    {
        let (fifo, phase) = (fifo.clone(), Arc::clone(&phase));
        // Detached: at the end it may sit in a blocking open() of the FIFO.
        thread::spawn(move || fifo_writer(fifo, phase));
    }
    let slot = Arc::new(FrameSlot::new());
    let stall = Duration::from_secs(1);
    let cap = Capture::spawn(
        "cam-fifo".into(),
        SourceConfig::Video(fifo_video(&fifo)),
        CaptureOptions {
            stall_timeout: stall,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_millis(400),
        },
        Arc::clone(&slot),
    )
    .expect("spawn");

    let h = wait_for(&cap, Duration::from_secs(5), "frames", |h| {
        h.state == HealthState::Ok && h.frames >= 5
    });
    assert_eq!(h.reopen_count, 0);

    phase.store(PHASE_PAUSE, Ordering::SeqCst);
    let paused = Instant::now();
    let h = wait_for(&cap, Duration::from_secs(4), "stalled", |h| {
        h.state == HealthState::Stalled
    });
    let after = paused.elapsed();
    assert!(
        after >= stall - Duration::from_millis(150),
        "stalled after only {after:?}"
    );
    assert!(h.last_error.unwrap_or_default().contains("no frame"));
    // The watchdog killed the silent ffmpeg and the supervisor reopened at once.
    let h = wait_for(&cap, Duration::from_secs(2), "a reopen", |h| {
        h.reopen_count >= 1
    });
    assert_eq!(h.state, HealthState::Stalled, "stays stalled while silent");
    let frames_before = h.frames;

    phase.store(PHASE_WRITE, Ordering::SeqCst);
    let h = wait_for(&cap, Duration::from_secs(8), "recovery", |h| {
        h.state == HealthState::Ok && h.frames >= frames_before + 5
    });
    assert!(h.reopen_count >= 1);
    let took = stop_and_join(cap);
    phase.store(PHASE_QUIT, Ordering::SeqCst);
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    assert!(slot.captured() >= h.frames);
    assert_eq!(ffmpeg_processes_mentioning(&fifo.display().to_string()), 0);
}

#[test]
fn stop_returns_promptly_while_ffmpeg_is_blocked() {
    init_logs();
    let tmp = tempfile::tempdir().expect("tempdir");
    let fifo = tmp.path().join("silent.rgb");
    mkfifo(&fifo);
    // A writer that opens the pipe and never writes: ffmpeg blocks reading it, and our
    // capture thread blocks reading ffmpeg.
    let writer = {
        let fifo = fifo.clone();
        thread::spawn(move || File::options().write(true).open(&fifo))
    };
    let slot = Arc::new(FrameSlot::new());
    let cap = Capture::spawn(
        "cam-silent".into(),
        SourceConfig::Video(fifo_video(&fifo)),
        CaptureOptions {
            stall_timeout: Duration::from_secs(60),
            ..CaptureOptions::default()
        },
        slot,
    )
    .expect("spawn");
    let _held_open = writer
        .join()
        .expect("writer")
        .expect("open fifo for writing");
    thread::sleep(Duration::from_millis(500));
    let needle = fifo.display().to_string();
    assert_eq!(ffmpeg_processes_mentioning(&needle), 1, "ffmpeg is running");
    assert_eq!(cap.health().state, HealthState::Starting);
    let took = stop_and_join(cap);
    assert!(took < Duration::from_secs(1), "stop took {took:?}");
    assert_eq!(ffmpeg_processes_mentioning(&needle), 0, "ffmpeg was reaped");
}

// ---------------------------------------------------------------------------------------
// frame slot

fn frame(seq: u64) -> Frame {
    Frame::new(seq, Pixels::Encoded { data: vec![0] }, None)
}

#[test]
fn frame_slot_keeps_only_the_latest_frame() {
    let slot = FrameSlot::new();
    for seq in 0..3 {
        slot.put(frame(seq));
    }
    assert_eq!((slot.captured(), slot.dropped()), (3, 2));
    assert_eq!(slot.take(Duration::ZERO).expect("frame").seq, 2);
    assert!(slot.try_take().is_none(), "one frame at most");
}

#[test]
fn frame_slot_drops_frames_under_a_slow_consumer() {
    let slot = Arc::new(FrameSlot::new());
    let producer = {
        let slot = Arc::clone(&slot);
        thread::spawn(move || {
            for seq in 0..200 {
                slot.put(frame(seq));
                thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let mut taken = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while taken.last() != Some(&199) && Instant::now() < deadline {
        if let Some(f) = slot.take(Duration::from_millis(200)) {
            taken.push(f.seq);
            thread::sleep(Duration::from_millis(25)); // "inference"
        }
    }
    producer.join().expect("producer");
    assert_eq!(
        taken.last(),
        Some(&199),
        "the consumer ends with the newest frame"
    );
    assert!(taken.windows(2).all(|w| w[0] < w[1]), "fresh frames only");
    assert!(taken.len() < 100, "slow consumer took {}", taken.len());
    assert_eq!(slot.captured(), 200);
    assert_eq!(slot.dropped(), 200 - taken.len() as u64);
}

#[test]
fn frame_slot_take_times_out_and_close_wakes_takers() {
    let slot = Arc::new(FrameSlot::new());
    let t = Instant::now();
    assert!(slot.take(Duration::from_millis(100)).is_none());
    assert!(t.elapsed() >= Duration::from_millis(100));

    let takers: Vec<_> = (0..2)
        .map(|_| {
            let slot = Arc::clone(&slot);
            thread::spawn(move || {
                let t = Instant::now();
                (slot.take(Duration::from_secs(30)).is_none(), t.elapsed())
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(100));
    slot.close();
    for t in takers {
        let (none, waited) = t.join().expect("taker");
        assert!(
            none && waited < Duration::from_secs(2),
            "woke after {waited:?}"
        );
    }
    slot.put(frame(0));
    assert!(slot.try_take().is_none(), "a closed slot takes no frames");
    assert_eq!(slot.dropped(), 1);
}

// ---------------------------------------------------------------------------------------
// capture

#[test]
fn capture_of_synthetic_frames_reaches_ok_and_feeds_the_slot() {
    init_logs();
    let slot = Arc::new(FrameSlot::new());
    let cap = Capture::spawn(
        "cam-synth".into(),
        SourceConfig::Synthetic(SyntheticConfig {
            width: 64,
            height: 48,
            fps: 50.0,
            defect_every: 5,
            defect_frames: 2,
            seed: 9,
        }),
        CaptureOptions::default(),
        Arc::clone(&slot),
    )
    .expect("spawn");
    assert_eq!(cap.camera(), "cam-synth");
    let f = slot.take(Duration::from_secs(2)).expect("a frame");
    assert!(matches!(
        f.pixels,
        Pixels::Rgb8 {
            width: 64,
            height: 48,
            ..
        }
    ));
    let h = wait_for(&cap, Duration::from_secs(3), "ok with frames", |h| {
        h.state == HealthState::Ok && h.frames >= 12
    });
    assert!(h.last_frame_at.is_some() && h.last_error.is_none());
    // Sequence numbers count every captured frame.
    let f = slot.take(Duration::from_secs(1)).expect("another frame");
    assert!(f.seq >= 11 && f.origin.is_some());
    assert!(stop_and_join(cap) < Duration::from_secs(1));
}

#[cfg(not(feature = "v4l2"))]
#[test]
fn v4l2_camera_without_the_feature_is_offline_with_a_clear_error() {
    init_logs();
    let slot = Arc::new(FrameSlot::new());
    let cap = Capture::spawn(
        "cam-usb".into(),
        SourceConfig::V4l2(V4l2Config::default()),
        CaptureOptions::default(),
        slot,
    )
    .expect("a v4l2 table is valid in every build");
    let h = wait_for(&cap, Duration::from_secs(2), "offline", |h| {
        h.state == HealthState::Offline
    });
    let err = h.last_error.unwrap_or_default();
    assert!(err.contains("built without the v4l2 feature"), "{err}");
    // Not retried: the thread has given up.
    let t = Instant::now();
    while !cap.is_finished() {
        assert!(t.elapsed() < Duration::from_secs(2));
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(cap.health().reopen_count, 0);
    cap.join();
}

#[cfg(feature = "v4l2")]
#[test]
fn v4l2_camera_that_is_absent_goes_offline_and_is_retried() {
    init_logs();
    let device = "/dev/video63";
    assert!(
        !Path::new(device).exists(),
        "this test needs {device} to be absent"
    );
    let slot = Arc::new(FrameSlot::new());
    let cap = Capture::spawn(
        "cam-usb".into(),
        SourceConfig::V4l2(V4l2Config {
            device: device.into(),
            ..V4l2Config::default()
        }),
        CaptureOptions {
            backoff_min: Duration::from_millis(100),
            ..CaptureOptions::default()
        },
        slot,
    )
    .expect("spawn");
    let h = wait_for(&cap, Duration::from_secs(3), "a retry while offline", |h| {
        h.state == HealthState::Offline && h.reopen_count >= 1
    });
    let err = h.last_error.unwrap_or_default();
    assert!(err.contains(device), "{err}");
    assert!(stop_and_join(cap) < Duration::from_secs(1));
}
