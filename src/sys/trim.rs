//! Giving back the pages the master used only to start, and the free heap a worker kept
//! after a burst of connections ([`release_free_heap`]).
//!
//! Starting up runs code the master never runs again: argument parsing, configuration checks,
//! binding, the first spawns. The kernel maps those code pages into the master as it executes
//! them (64 KiB around each page it touches) and they stay in its resident set for the life of
//! the server. Once every worker is ready, the master drops them from its page tables, so that
//! its RSS is what its supervision loop uses, not what its start-up touched:
//!
//! - Single-threaded (the master of `forklift serve`, and of any forked pool: a fork refuses
//!   threads), it uses `madvise(MADV_DONTNEED)`. On a clean, read-only file mapping that only
//!   unmaps: the page cache keeps the pages, and the master faults back in, from the cache,
//!   whatever it runs again. Nothing can change the mappings between reading them and advising
//!   them, since no other thread runs.
//! - With other threads (a master that execs its workers may have some), it uses
//!   `madvise(MADV_PAGEOUT)` (Linux 5.4+) instead, which never changes what memory holds even if
//!   another thread remapped the range meanwhile: it reclaims the pages only this process
//!   maps, and skips those the workers map too.
//!
//! Only file-backed mappings that are not writable and hold no private copy of a page are
//! advised: RELRO sections, written by the dynamic linker before it made them read-only, keep
//! their relocated contents.

// The smaps parsing is compiled and tested everywhere; only Linux has /proc/self/smaps.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

/// What one call released.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trimmed {
    /// Mappings advised.
    pub mappings: usize,
    /// Resident bytes before and after, summed over those mappings.
    pub before: u64,
    pub after: u64,
    /// Whether the pages were unmapped (MADV_DONTNEED) rather than reclaimed (MADV_PAGEOUT).
    pub unmapped: bool,
}

/// Drops the clean read-only file pages of this process from its resident set (see the
/// module doc for how).
///
/// Errors mean the kernel did not take the advice (MADV_PAGEOUT before Linux 5.4), or /proc is
/// missing; the process is unaffected either way.
#[cfg(target_os = "linux")]
pub(crate) fn release_startup_pages() -> std::io::Result<Trimmed> {
    let unmapped = single_threaded()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mappings = candidates(&smaps);
    let mut trimmed = Trimmed {
        before: mappings.iter().map(|m| m.rss).sum(),
        unmapped,
        ..Trimmed::default()
    };
    let advice = if unmapped {
        libc::MADV_DONTNEED
    } else {
        libc::MADV_PAGEOUT
    };
    let mut failed = None;
    for m in &mappings {
        // SAFETY: the range is a whole mapping of this process as /proc/self/smaps listed it:
        // file-backed, not writable, no private (anonymous) page in it, so its contents are
        // exactly the file's. MADV_DONTNEED is used only when no other thread runs, so the
        // range is still that mapping: it drops the page-table entries and the next access
        // maps the same file pages again. MADV_PAGEOUT never changes contents at all.
        let rc = unsafe { libc::madvise(m.start as *mut libc::c_void, m.end - m.start, advice) };
        if rc != 0 {
            // EINVAL: a kernel without MADV_PAGEOUT (then every mapping fails), or a mapping
            // that cannot take the advice (locked, or of device memory): skip it.
            failed.get_or_insert_with(std::io::Error::last_os_error);
            continue;
        }
        trimmed.mappings += 1;
    }
    if let (0, Some(e)) = (trimmed.mappings, failed) {
        return Err(e);
    }
    // The same ranges, measured again (a mapping with no resident page left is not a
    // candidate any more, which is the point).
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    trimmed.after = candidates(&smaps)
        .iter()
        .filter(|m| mappings.iter().any(|c| c.start == m.start))
        .map(|m| m.rss)
        .sum();
    Ok(trimmed)
}

/// Whether this process runs one thread (`Threads:` in /proc/self/status).
#[cfg(target_os = "linux")]
fn single_threaded() -> std::io::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .is_some_and(|n| n.trim() == "1"))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn release_startup_pages() -> std::io::Result<Trimmed> {
    Ok(Trimmed::default())
}

/// A mapping that may be advised, and its resident bytes.
#[derive(Debug, PartialEq, Eq)]
struct Mapping {
    start: usize,
    end: usize,
    rss: u64,
}

/// The mappings of an smaps text that are file-backed, not writable, resident, and hold no
/// anonymous (privately copied) pages: RELRO sections, written by the dynamic linker before it
/// made them read-only, are left alone.
fn candidates(smaps: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    let mut current: Option<(Mapping, bool)> = None;
    let mut anonymous = 0u64;
    let mut flush = |current: &mut Option<(Mapping, bool)>, anonymous: u64| {
        if let Some((m, eligible)) = current.take() {
            if eligible && anonymous == 0 && m.rss > 0 {
                out.push(m);
            }
        }
    };
    for line in smaps.lines() {
        if let Some((range, rest)) = header(line) {
            flush(&mut current, anonymous);
            anonymous = 0;
            let mut fields = rest.split_whitespace();
            let perms = fields.next().unwrap_or("");
            let path = fields.nth(3).unwrap_or("");
            let eligible = perms.as_bytes().get(1) == Some(&b'-') && path.starts_with('/');
            current = Some((
                Mapping {
                    start: range.0,
                    end: range.1,
                    rss: 0,
                },
                eligible,
            ));
        } else if let Some(kb) = field(line, "Rss:") {
            if let Some((m, _)) = current.as_mut() {
                m.rss = kb * 1024;
            }
        } else if let Some(kb) = field(line, "Anonymous:") {
            anonymous = kb;
        }
    }
    flush(&mut current, anonymous);
    out
}

/// `start-end rest` of a mapping's first line, or None for a field line.
fn header(line: &str) -> Option<((usize, usize), &str)> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    Some(((start, end), rest))
}

/// The kB value of a field line such as `Rss:   124 kB`.
fn field(line: &str, name: &str) -> Option<u64> {
    line.strip_prefix(name)?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// Gives the heap's free pages back to the kernel (glibc's `malloc_trim(0)`): after a burst
/// of connections has closed, what they held is free but stays resident, as glibc returns
/// memory only from the top of the heap on its own. A no-op with other C libraries.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and advises glibc's own free lists; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55e0a0000000-55e0a0400000 r-xp 00100000 fd:01 1234 /usr/bin/forklift
Size:               4096 kB
Rss:                1788 kB
Anonymous:             0 kB
55e0a0400000-55e0a0500000 r--p 00500000 fd:01 1234 /usr/bin/forklift
Size:               1024 kB
Rss:                 176 kB
Anonymous:           176 kB
55e0a0500000-55e0a0504000 rw-p 00600000 fd:01 1234 /usr/bin/forklift
Size:                 16 kB
Rss:                  16 kB
Anonymous:            16 kB
7f0000000000-7f0000100000 r-xp 00028000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                 984 kB
Anonymous:             0 kB
7f0000200000-7f0000201000 r--p 00000000 fd:01 98 /usr/lib/locale/C.utf8/LC_CTYPE
Size:                  4 kB
Rss:                   0 kB
Anonymous:             0 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  52 kB
Anonymous:            52 kB
7ffc10000000-7ffc10002000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings_are_candidates() {
        let found = candidates(SMAPS);
        assert_eq!(
            found,
            vec![
                Mapping {
                    start: 0x55e0a0000000,
                    end: 0x55e0a0400000,
                    rss: 1788 * 1024
                },
                Mapping {
                    start: 0x7f0000000000,
                    end: 0x7f0000100000,
                    rss: 984 * 1024
                },
            ],
            "the RELRO copy, the writable data, the unmapped locale file, the stack and the \
             vdso must be left alone"
        );
    }

    #[test]
    fn a_truncated_or_empty_smaps_gives_no_candidates() {
        assert!(candidates("").is_empty());
        assert!(candidates("garbage\nRss: 12 kB\n").is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_shrinks_this_process_and_it_keeps_running() {
        use std::os::fd::AsRawFd;
        // A file mapping no other process has. This test binary's own code will not do: under
        // nextest the other tests of the binary run in processes of their own at the same
        // time, and MADV_PAGEOUT (the advice for a process with threads, as a test is) skips
        // pages that other processes map. The file is on the build's disk, next to this binary
        // (a tmpfs file's pages could only go to swap), and synced, so its pages are clean.
        const LEN: usize = 64 * 4096;
        let exe = std::env::current_exe().unwrap();
        let path = exe.with_file_name(format!("trim-test-{}", std::process::id()));
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _remove = Remove(path.clone());
        std::fs::write(&path, vec![7u8; LEN]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        file.sync_all().unwrap();
        // SAFETY: a read-only private mapping of a file this test owns, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(
            base,
            libc::MAP_FAILED,
            "{}",
            std::io::Error::last_os_error()
        );
        // SAFETY: every offset read is inside the mapping of LEN bytes.
        let touch = || -> u64 {
            (0..LEN)
                .step_by(4096)
                .map(|i| unsafe { *base.cast::<u8>().add(i) } as u64)
                .sum()
        };
        assert_eq!(touch(), 7 * 64);
        let resident = || {
            candidates(&std::fs::read_to_string("/proc/self/smaps").unwrap())
                .iter()
                .find(|m| m.start == base as usize)
                .map_or(0, |m| m.rss)
        };
        let before = resident();
        assert!(before > 0, "the mapping's pages were not resident");
        let trimmed = match release_startup_pages() {
            Ok(t) => t,
            // A kernel older than 5.4 has no MADV_PAGEOUT: nothing to check.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return,
            Err(e) => panic!("release_startup_pages: {e}"),
        };
        assert!(trimmed.mappings > 0, "{trimmed:?}");
        let after = resident();
        assert!(
            after < before,
            "{before} -> {after} bytes resident; {trimmed:?}"
        );
        // The pages that went come back, unchanged, when they are read again.
        assert_eq!(touch(), 7 * 64);
        // SAFETY: the mapping made above, not used after this.
        unsafe { libc::munmap(base, LEN) };
    }
}
