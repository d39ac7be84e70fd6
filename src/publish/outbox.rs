//! Durable, bounded on-disk outbox for event messages.
//!
//! One file per message in `<state_dir>/outbox`, named `<seq:020>.msg` (sorts by the
//! monotonically increasing sequence number), content `<topic>\n<payload>`. Written
//! atomically (temp file, fsync, rename, directory fsync) before the message is handed to
//! MQTT; deleted when the broker acknowledges it. A `.lock` file (advisory `flock`) keeps a
//! second process off the same outbox.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum OutboxError {
    #[error("outbox {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox {} is in use by another process (lock held on .lock)", dir.display())]
    Locked { dir: PathBuf },
    #[error("a message of {bytes} bytes can never fit the outbox (mqtt.outbox_max_bytes = {max})")]
    TooLarge { bytes: u64, max: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub topic: String,
    pub payload: Vec<u8>,
}

impl Entry {
    /// Bytes charged against `outbox_max_bytes`.
    pub fn size(&self) -> u64 {
        (self.topic.len() + self.payload.len()) as u64
    }
}

pub(crate) struct Outbox {
    dir: PathBuf,
    _lock: File,
    entries: BTreeMap<u64, Entry>,
    bytes: u64,
    max_messages: usize,
    max_bytes: u64,
}

/// What [`Outbox::open`] found on disk.
pub(crate) struct Loaded {
    pub outbox: Outbox,
    /// First sequence number for new messages.
    pub next_seq: u64,
    /// Entries dropped because the stored outbox exceeded the (possibly lowered) bounds.
    pub evicted: usize,
}

impl Outbox {
    /// Opens (creating) the outbox directory, takes its lock, removes stale temp files and
    /// loads the stored messages in sequence order.
    pub fn open(dir: &Path, max_messages: usize, max_bytes: u64) -> Result<Loaded, OutboxError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let lock_path = dir.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(OutboxError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let mut outbox = Outbox {
            dir: dir.to_path_buf(),
            _lock: lock,
            entries: BTreeMap::new(),
            bytes: 0,
            max_messages,
            max_bytes,
        };
        for item in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let path = item.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".tmp") {
                // A write that crashed before its rename: the caller never got Ok for it.
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove stale outbox temp file");
                }
                continue;
            }
            let Some(seq) = name
                .strip_suffix(".msg")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            match parse_entry(bytes) {
                Some(entry) => {
                    outbox.bytes += entry.size();
                    outbox.entries.insert(seq, entry);
                }
                None => {
                    let quarantine = path.with_extension("corrupt");
                    tracing::error!(path = %path.display(), "unreadable outbox entry, moved aside");
                    std::fs::rename(&path, &quarantine).map_err(io_err(&path))?;
                }
            }
        }
        let mut evicted = 0;
        while outbox.entries.len() > max_messages || outbox.bytes > max_bytes {
            if outbox.pop_oldest().is_none() {
                break;
            }
            evicted += 1;
        }
        if evicted > 0 {
            tracing::warn!(
                evicted,
                "stored outbox exceeded its bounds: dropped the oldest entries"
            );
        }
        let next_seq = outbox.entries.keys().next_back().map_or(0, |s| s + 1);
        Ok(Loaded {
            outbox,
            next_seq,
            evicted,
        })
    }

    #[cfg(test)]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of message `seq`.
    pub fn path_of(dir: &Path, seq: u64) -> PathBuf {
        dir.join(format!("{seq:020}.msg"))
    }

    /// Refuses a message that could never fit, before anything is written.
    pub fn check_fits(&self, entry_size: u64) -> Result<(), OutboxError> {
        if entry_size > self.max_bytes {
            return Err(OutboxError::TooLarge {
                bytes: entry_size,
                max: self.max_bytes,
            });
        }
        Ok(())
    }

    /// Writes message `seq` durably: temp file, fsync, rename, directory fsync. Needs no
    /// `&self` so that callers can do the slow part without holding the publisher's lock.
    pub fn write_file(dir: &Path, seq: u64, entry: &Entry) -> Result<(), OutboxError> {
        let path = Self::path_of(dir, seq);
        let tmp = dir.join(format!("{seq:020}.tmp"));
        let result = (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(entry.topic.as_bytes())?;
            f.write_all(b"\n")?;
            f.write_all(&entry.payload)?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io_err(&path))
    }

    /// Adds a message whose file [`Outbox::write_file`] has written, first dropping the
    /// oldest entries (files deleted) until it fits. Returns the dropped sequence numbers.
    pub fn insert(&mut self, seq: u64, entry: Entry) -> Vec<u64> {
        let mut evicted = Vec::new();
        while !self.entries.is_empty()
            && (self.entries.len() + 1 > self.max_messages
                || self.bytes + entry.size() > self.max_bytes)
        {
            match self.pop_oldest() {
                Some(s) => evicted.push(s),
                None => break,
            }
        }
        self.bytes += entry.size();
        if let Some(old) = self.entries.insert(seq, entry) {
            self.bytes -= old.size();
        }
        evicted
    }

    fn pop_oldest(&mut self) -> Option<u64> {
        let seq = *self.entries.keys().next()?;
        self.remove(seq);
        Some(seq)
    }

    /// Forgets message `seq` and deletes its file. Returns whether it was present.
    pub fn remove(&mut self, seq: u64) -> bool {
        let Some(entry) = self.entries.remove(&seq) else {
            return false;
        };
        self.bytes -= entry.size();
        let path = Self::path_of(&self.dir, seq);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete acknowledged outbox entry");
            }
        }
        true
    }

    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

fn parse_entry(bytes: Vec<u8>) -> Option<Entry> {
    let nl = bytes.iter().position(|&b| b == b'\n')?;
    let topic = std::str::from_utf8(&bytes[..nl]).ok()?.to_string();
    if topic.is_empty() {
        return None;
    }
    let payload = bytes[nl + 1..].to_vec();
    Some(Entry { topic, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> Entry {
        Entry {
            topic: "vigil/n/cam/event".into(),
            payload: format!("{{\"i\":{i}}}").into_bytes(),
        }
    }

    fn put(o: &mut Outbox, seq: u64, e: Entry) -> Vec<u64> {
        Outbox::write_file(o.dir(), seq, &e).unwrap();
        o.insert(seq, e)
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn messages_survive_a_reopen_in_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("outbox");
        {
            let mut o = Outbox::open(&d, 100, 1 << 20).unwrap().outbox;
            for seq in [3u64, 1, 2, 10] {
                put(&mut o, seq, entry(seq as u32));
            }
            assert!(o.remove(2));
            assert!(!o.remove(2));
        }
        std::fs::write(d.join("00000000000000000011.tmp"), b"half").unwrap();
        let loaded = Outbox::open(&d, 100, 1 << 20).unwrap();
        assert_eq!(loaded.next_seq, 11);
        assert_eq!(loaded.outbox.seqs().collect::<Vec<_>>(), vec![1, 3, 10]);
        assert_eq!(loaded.outbox.get(10), Some(&entry(10)));
        assert_eq!(
            files(&d),
            vec![
                "00000000000000000001.msg",
                "00000000000000000003.msg",
                "00000000000000000010.msg"
            ],
            "stale temp file removed"
        );
    }

    #[test]
    fn full_outbox_drops_oldest_by_count_and_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = Outbox::open(dir.path(), 3, 1 << 20).unwrap().outbox;
        for s in 0..3 {
            assert!(put(&mut o, s, entry(s as u32)).is_empty());
        }
        assert_eq!(put(&mut o, 3, entry(3)), vec![0]);
        assert_eq!(o.seqs().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(files(dir.path()).len(), 3);

        let dir = tempfile::tempdir().unwrap();
        let one = entry(0).size();
        let mut o = Outbox::open(dir.path(), 100, 2 * one + 1).unwrap().outbox;
        put(&mut o, 0, entry(0));
        put(&mut o, 1, entry(1));
        assert_eq!(o.bytes(), 2 * one);
        assert_eq!(put(&mut o, 2, entry(2)), vec![0]);
        assert_eq!(o.bytes(), 2 * one);
        assert!(matches!(
            o.check_fits(3 * one),
            Err(OutboxError::TooLarge { .. })
        ));
    }

    #[test]
    fn lowered_bounds_evict_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut o = Outbox::open(dir.path(), 100, 1 << 20).unwrap().outbox;
            for s in 0..5 {
                put(&mut o, s, entry(s as u32));
            }
        }
        let loaded = Outbox::open(dir.path(), 2, 1 << 20).unwrap();
        assert_eq!(loaded.evicted, 3);
        assert_eq!(loaded.outbox.seqs().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(files(dir.path()).len(), 2);
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let first = Outbox::open(dir.path(), 10, 1 << 20).unwrap();
        assert!(matches!(
            Outbox::open(dir.path(), 10, 1 << 20),
            Err(OutboxError::Locked { .. })
        ));
        drop(first);
        Outbox::open(dir.path(), 10, 1 << 20).unwrap();
    }

    #[test]
    fn corrupt_entries_are_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000000000000000004.msg"), b"no newline").unwrap();
        let loaded = Outbox::open(dir.path(), 10, 1 << 20).unwrap();
        assert_eq!(loaded.outbox.len(), 0);
        assert_eq!(files(dir.path()), vec!["00000000000000000004.corrupt"]);
    }
}
