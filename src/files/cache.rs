//! The open-file cache, nginx's `open_file_cache` for [`StaticFiles`](crate::StaticFiles):
//! a request path maps to the file it resolved to (its open fd and what its metadata gives:
//! validators, `Last-Modified`, `ETag`, content type) or to "a directory".
//!
//! How fresh it is:
//! - Each request for a cached file checks the open fd with one `fstat(2)`: a file rewritten
//!   in place (new size or modification time) gets new validators at once, and one that was
//!   deleted or replaced by a rename (no link left to its inode) is resolved again at once.
//! - The path itself is trusted for the validity (1 s by default), then resolved again: what
//!   only a new resolution sees (a symbolic link pointed elsewhere, a directory renamed, a
//!   file replaced while another hard link keeps the old one) shows within that time.
//! - At most `capacity` paths (256 by default) are kept, each holding one fd; when full,
//!   expired entries go first, then the least recently used.
//!
//! Errors (missing files, refusals) are not cached: a file that appears is served at once.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use http::HeaderValue;

use super::validators::Validators;

/// What a path resolved to.
#[derive(Debug, Clone)]
pub(super) enum Found {
    File(Arc<FileEntry>),
    /// A directory asked for without its trailing slash: the answer is a redirect.
    Dir,
}

/// An open regular file and what its metadata gives.
#[derive(Debug)]
pub(super) struct FileEntry {
    pub file: Arc<File>,
    stamp: Stamp,
    pub validators: Validators,
    pub content_type: HeaderValue,
    pub last_modified: HeaderValue,
    pub etag: HeaderValue,
}

/// What tells a version of a file from another, and whether the file still has a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
    ino: u64,
    dev: u64,
    linked: bool,
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ino: meta.ino(),
            dev: meta.dev(),
            linked: meta.nlink() > 0,
        }
    }
}

impl FileEntry {
    /// The entry of an open regular file with this metadata.
    pub fn new(file: Arc<File>, meta: &Metadata, content_type: HeaderValue) -> FileEntry {
        let stamp = Stamp::of(meta);
        let modified = u64::try_from(stamp.mtime).unwrap_or(0);
        let validators = Validators {
            size: stamp.len,
            modified,
        };
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(modified));
        FileEntry {
            file,
            stamp,
            validators,
            content_type,
            last_modified: HeaderValue::from_str(&date).expect("an HTTP date is a header value"),
            etag: validators.etag().to_header_value(),
        }
    }

    /// Checks the open file with fstat(2): `Ok(None)` if it is as cached, `Ok(Some(entry))`
    /// with new validators if it changed in place, `Err` (`NotFound`) if it no longer has a
    /// name, so that its path must be resolved again.
    pub fn refresh(&self) -> io::Result<Option<FileEntry>> {
        let meta = self.file.metadata()?;
        let stamp = Stamp::of(&meta);
        if !stamp.linked {
            return Err(io::ErrorKind::NotFound.into());
        }
        if stamp == self.stamp {
            return Ok(None);
        }
        Ok(Some(FileEntry::new(
            self.file.clone(),
            &meta,
            self.content_type.clone(),
        )))
    }
}

/// The cache of one [`StaticFiles`](crate::StaticFiles) (and its clones).
#[derive(Debug, Default)]
pub(super) struct Cache {
    map: HashMap<Box<str>, Slot>,
    /// Counts look-ups, to find the least recently used entry.
    tick: u64,
}

#[derive(Debug)]
struct Slot {
    found: Found,
    /// When the path was resolved.
    resolved: Instant,
    used: u64,
}

impl Cache {
    /// What `path` resolved to, unless it is not cached or older than `validity`.
    pub fn get(&mut self, path: &str, now: Instant, validity: Duration) -> Option<Found> {
        let slot = self.map.get_mut(path)?;
        if now.saturating_duration_since(slot.resolved) >= validity {
            self.map.remove(path);
            return None;
        }
        self.tick += 1;
        slot.used = self.tick;
        Some(slot.found.clone())
    }

    /// Keeps what `path` resolved to at `now`, making room if `capacity` is reached.
    pub fn insert(
        &mut self,
        path: &str,
        found: Found,
        now: Instant,
        validity: Duration,
        capacity: usize,
    ) {
        if capacity == 0 || validity.is_zero() {
            return;
        }
        if self.map.len() >= capacity && !self.map.contains_key(path) {
            self.map
                .retain(|_, s| now.saturating_duration_since(s.resolved) < validity);
            if self.map.len() >= capacity {
                let oldest = self
                    .map
                    .iter()
                    .min_by_key(|(_, s)| s.used)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.map.remove(&k);
                }
            }
        }
        self.tick += 1;
        let slot = Slot {
            found,
            resolved: now,
            used: self.tick,
        };
        self.map.insert(path.into(), slot);
    }

    /// Replaces the entry of a file that changed in place, keeping when its path resolved.
    pub fn update(&mut self, path: &str, entry: Arc<FileEntry>) {
        if let Some(slot) = self.map.get_mut(path) {
            slot.found = Found::File(entry);
        }
    }

    /// Forgets `path`.
    pub fn remove(&mut self, path: &str) {
        self.map.remove(path);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: &str) -> (std::path::PathBuf, Arc<FileEntry>) {
        let path =
            std::env::temp_dir().join(format!("forklift-cache-{tag}-{}", std::process::id()));
        std::fs::write(&path, b"0123456789").unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let meta = file.metadata().unwrap();
        let e = FileEntry::new(file, &meta, HeaderValue::from_static("text/plain"));
        (path, Arc::new(e))
    }

    const V: Duration = Duration::from_secs(1);

    #[test]
    fn entries_expire_after_the_validity() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        c.insert("/a", Found::Dir, t0, V, 8);
        assert!(c.get("/a", t0 + V / 2, V).is_some());
        assert!(c.get("/a", t0 + V, V).is_none(), "expired at the validity");
        assert_eq!(c.len(), 0, "and dropped, with its fd");
        c.insert("/a", Found::Dir, t0, Duration::ZERO, 8);
        assert!(
            c.get("/a", t0, V).is_none(),
            "a zero validity caches nothing"
        );
        c.insert("/a", Found::Dir, t0, V, 0);
        assert_eq!(c.len(), 0, "nor does a zero capacity");
    }

    #[test]
    fn a_full_cache_drops_expired_entries_then_the_least_recently_used() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        c.insert("/old", Found::Dir, t0, V, 3);
        c.insert("/a", Found::Dir, t0 + V / 2, V, 3);
        c.insert("/b", Found::Dir, t0 + V / 2, V, 3);
        c.insert("/c", Found::Dir, t0 + V, V, 3);
        assert!(c.get("/old", t0 + V, V).is_none(), "expired, dropped first");
        assert_eq!(c.len(), 3);
        let now = t0 + V * 6 / 5;
        assert!(c.get("/a", now, V).is_some());
        c.insert("/d", Found::Dir, now, V, 3);
        assert_eq!(c.len(), 3);
        assert!(
            c.get("/b", now, V).is_none(),
            "the least recently used went"
        );
        assert!(c.get("/a", now, V).is_some());
        assert!(c.get("/c", now, V).is_some());
        assert!(c.get("/d", now, V).is_some());
    }

    #[test]
    fn refresh_sees_changes_in_place_and_unlinked_files() {
        let (path, e) = entry("refresh");
        assert!(e.refresh().unwrap().is_none(), "unchanged");
        assert_eq!(e.validators.size, 10);
        std::fs::write(&path, b"a longer file, rewritten in place").unwrap();
        let fresh = e.refresh().unwrap().expect("changed");
        assert_eq!(fresh.validators.size, 33);
        assert_ne!(fresh.etag, e.etag);
        assert_eq!(fresh.content_type, "text/plain");
        std::fs::remove_file(&path).unwrap();
        let gone = fresh.refresh().unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound, "no name left");
    }

    #[test]
    fn validators_and_headers_come_from_the_metadata() {
        let (path, e) = entry("headers");
        let secs = std::fs::metadata(&path)
            .unwrap()
            .modified()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(e.validators.modified, secs);
        assert_eq!(e.etag, format!("W/\"a-{secs:x}\"").as_str());
        let lm = e.last_modified.to_str().unwrap();
        assert_eq!(super::super::validators::http_date_secs(lm), Some(secs));
        std::fs::remove_file(path).unwrap();
    }
}
