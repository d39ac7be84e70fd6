//! Test helpers: locating `../shared` and reading `.npy` fixtures.
#![allow(dead_code)]

pub mod daemon;

use std::path::{Path, PathBuf};

/// The shared reference folder: `$VIGIL_SHARED`, else `../shared` beside the repo.
/// Panics (never skips) when it is missing: CI always has it.
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("VIGIL_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(
        dir.join("fixtures/dfkde_golden").is_dir(),
        "shared reference data not found at {} (set VIGIL_SHARED)",
        dir.display()
    );
    dir
}

pub fn golden(name: &str) -> PathBuf {
    shared_dir()
        .join("fixtures/dfkde_golden")
        .join(format!("{name}.npy"))
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A `.npy` array converted to f64, with its shape.
#[derive(Debug, Clone)]
pub struct Npy {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl Npy {
    pub fn f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
    pub fn usize(&self) -> Vec<usize> {
        self.data.iter().map(|&v| v as usize).collect()
    }
    pub fn scalar(&self) -> f64 {
        assert_eq!(self.data.len(), 1);
        self.data[0]
    }
}

/// Minimal reader for little-endian C-order `.npy` v1/v2 files (f4, f8, i1, u1, i8).
pub fn read_npy(path: &Path) -> Npy {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let (hlen, hstart) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[hstart..hstart + hlen]).expect("utf8 header");
    assert!(
        header.contains("'fortran_order': False"),
        "fortran order unsupported"
    );
    let descr = header
        .split("'descr':")
        .nth(1)
        .and_then(|s| s.split('\'').nth(1))
        .expect("descr");
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("dim"))
        .collect();
    let count: usize = shape.iter().product();
    let body = &bytes[hstart + hlen..];
    let data: Vec<f64> = match descr {
        "<f4" => body
            .chunks_exact(4)
            .take(count)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        "<f8" => body
            .chunks_exact(8)
            .take(count)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8")))
            .collect(),
        "<i8" => body
            .chunks_exact(8)
            .take(count)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as f64)
            .collect(),
        "|i1" => body.iter().take(count).map(|&b| b as i8 as f64).collect(),
        "|u1" | "|b1" => body.iter().take(count).map(|&b| b as f64).collect(),
        other => panic!("unsupported dtype {other} in {}", path.display()),
    };
    assert_eq!(data.len(), count, "{} truncated", path.display());
    Npy { shape, data }
}

pub fn load(name: &str) -> Npy {
    read_npy(&golden(name))
}

pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Run the `vigil` binary from the repository root (logs at `warn`).
pub fn vigil(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("VIGIL_LOG", "warn")
        .output()
        .expect("run vigil")
}

/// [`vigil`], asserting success; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = vigil(args);
    assert!(
        out.status.success(),
        "vigil {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}
