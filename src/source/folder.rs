//! `type = "folder"`: image files of a directory or glob pattern, in file-name order.

use std::path::{Path, PathBuf};

use super::pacing::Pacer;
use super::{FolderConfig, FrameSource, Interrupter, SourceError};
use crate::frame::Pixels;

const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// Reads image files as [`Pixels::Encoded`] (see [`FolderConfig`]).
#[derive(Debug)]
pub struct FolderSource {
    cfg: FolderConfig,
    pacer: Pacer,
    files: Vec<PathBuf>,
    next: usize,
    open: bool,
    last: Option<String>,
}

impl FolderSource {
    pub fn new(cfg: FolderConfig) -> Self {
        let pacer = Pacer::new(cfg.fps);
        FolderSource {
            cfg,
            pacer,
            files: Vec::new(),
            next: 0,
            open: false,
            last: None,
        }
    }

    /// The image files `path` currently names, sorted by file name.
    pub fn list(path: &str) -> Result<Vec<PathBuf>, SourceError> {
        let p = Path::new(path);
        let io_err = |source| SourceError::Io {
            path: path.to_string(),
            source,
        };
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // An existing path is taken literally, even with `[` in its name.
        let literal = std::fs::metadata(p);
        let mut files = if literal.is_err() && has_wildcards(name) {
            let dir = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if has_wildcards(&dir.to_string_lossy()) {
                return Err(SourceError::Config(format!(
                    "folder: wildcards are only supported in the file-name part of {path:?}"
                )));
            }
            images_in(dir, |file_name| wildcard_match(name, file_name)).map_err(io_err)?
        } else {
            let meta = literal.map_err(io_err)?;
            if meta.is_dir() {
                images_in(p, |_| true).map_err(io_err)?
            } else if is_image(p) {
                vec![p.to_path_buf()]
            } else {
                Vec::new()
            }
        };
        files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        Ok(files)
    }

    fn rescan(&mut self) -> Result<(), SourceError> {
        self.files = Self::list(&self.cfg.path)?;
        self.next = 0;
        if self.files.is_empty() {
            return Err(SourceError::NoImages(self.cfg.path.clone()));
        }
        Ok(())
    }
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn images_in(dir: &Path, keep: impl Fn(&str) -> bool) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Follows symlinks; skips directories and anything that vanished meanwhile.
        if is_image(&path) && keep(name) && path.is_file() {
            out.push(path);
        }
    }
    Ok(out)
}

fn has_wildcards(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Shell-style matching of a whole file name: `*` (any run), `?` (one character),
/// `[abc]`, `[a-z]`, `[!a-z]` / `[^a-z]`. An unclosed `[` matches itself.
pub(crate) fn wildcard_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with single-star backtracking (linear-ish, no recursion).
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, len)) = class_match(&p[pi..], n[ni]) {
                        if matched {
                            pi += len;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c => {
                    if c == n[ni] {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches `c` against the class starting at `p[0] == '['`: `Some((matched, class_len))`,
/// or `None` when the class is not closed.
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            if p[i] <= c && c <= p[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

impl FrameSource for FolderSource {
    fn open(&mut self) -> Result<(), SourceError> {
        self.open = false;
        self.rescan()?;
        self.pacer.reset();
        self.open = true;
        Ok(())
    }

    fn next_frame(&mut self) -> Result<Option<Pixels>, SourceError> {
        if !self.open {
            return Err(SourceError::NotOpen);
        }
        if self.next >= self.files.len() {
            if !self.cfg.looping {
                return Ok(None);
            }
            self.rescan()?;
        }
        self.pacer.wait()?;
        let path = &self.files[self.next];
        let data = std::fs::read(path).map_err(|source| SourceError::Io {
            path: path.display().to_string(),
            source,
        })?;
        self.last = Some(path.display().to_string());
        self.next += 1;
        Ok(Some(Pixels::Encoded { data }))
    }

    fn close(&mut self) {
        self.open = false;
        self.files.clear();
        self.next = 0;
    }

    fn describe(&self) -> String {
        format!(
            "folder {} at {} fps{}",
            self.cfg.path,
            self.cfg.fps,
            if self.cfg.looping { ", looping" } else { "" }
        )
    }

    fn last_origin(&self) -> Option<String> {
        self.last.clone()
    }

    fn interrupter(&self) -> Option<Interrupter> {
        Some(self.pacer.interrupter())
    }
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcards_match_whole_names() {
        assert!(wildcard_match("*.jpg", "a.jpg"));
        assert!(!wildcard_match("*.jpg", "a.jpeg"));
        assert!(wildcard_match("a?c.png", "abc.png"));
        assert!(wildcard_match("img_[0-4]*.jpg", "img_3x.jpg"));
        assert!(!wildcard_match("img_[!0-4]*.jpg", "img_3x.jpg"));
        assert!(wildcard_match("*a*b*", "xxaxxbxx"));
        assert!(!wildcard_match("*a*b", "xxaxxbxx"));
        assert!(wildcard_match("[x.jpg", "[x.jpg"));
        assert!(wildcard_match("*", ""));
    }
}
