//! Log files: opened for appending, written one line per write(2), and reopened in place
//! after logrotate renamed them (USR1, `forklift reopen-logs`).
//!
//! A reopen opens the path again (a new file, after a rename) and moves it onto the same fd
//! number with dup2(2). dup2 replaces the fd atomically, so a line written at the same moment
//! goes whole to the old file or whole to the new one, and nothing that holds the fd (the
//! access log, or stderr for tracing and panics) needs to know. Every write is O_APPEND, so
//! the workers' lines interleave whole.

use std::fs::File;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use crate::sys::fd;

/// A log file this process writes lines to, reopenable in place.
#[derive(Debug)]
pub(crate) struct LogFile {
    path: PathBuf,
    file: File,
}

impl LogFile {
    /// Opens (creating, mode 0644) `path` for appending, close-on-exec.
    pub fn open(path: &Path) -> io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: open_append(path)?,
        })
    }

    /// Writes `line` (ending in a newline) with one write(2) on the O_APPEND fd, so lines of
    /// several processes never mix. A short write (a full disk) is finished with more writes.
    pub fn write_line(&self, line: &[u8]) -> io::Result<()> {
        (&self.file).write_all(line)
    }

    /// Opens the path again and puts the new file in place of the old one: dup2(2) onto the
    /// same fd, then close-on-exec again (dup2 clears it on the new fd).
    pub fn reopen(&self) -> io::Result<()> {
        let new = open_append(&self.path)?;
        dup_onto(&new, self.file.as_raw_fd())?;
        fd::set_cloexec(self.file.as_fd())
    }
}

/// Checks that `path` could be opened for appending, leaving nothing behind: an existing
/// file is opened; for a missing one, a file is created beside it and removed (as the pid
/// file's check does), which fails as the open would if the directory is missing or not
/// writable.
pub(crate) fn check(path: &Path) -> io::Result<()> {
    match std::fs::OpenOptions::new().append(true).open(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => super::pid_file::check(path),
        opened => opened.map(drop),
    }
}

/// Sends this process's stderr (fd 2: tracing's output, panics, and what children inherit)
/// to `path`, opened for appending: at start and again on each reopen.
pub(crate) fn redirect_stderr(path: &Path) -> io::Result<()> {
    let file = open_append(path)?;
    dup_onto(&file, libc::STDERR_FILENO)
}

/// Creates the file at `path` if missing, and gives it to `uid`:`gid` (fchown(2)), so that
/// workers that dropped to that user may open it for appending.
pub(crate) fn create_for(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    let file = open_append(path)?;
    // SAFETY: fchown on an fd `file` owns.
    if unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
}

/// dup2(2): `target` refers to `file`'s open file description from now on.
fn dup_onto(file: &File, target: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: dup2 on an fd `file` owns; `target` is an fd this process owns (stderr or
        // a `LogFile`'s), which dup2 closes and replaces atomically.
        let r = unsafe { libc::dup2(file.as_raw_fd(), target) };
        if r >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopen_after_a_rename_writes_to_the_new_file() {
        let dir = std::env::temp_dir().join(format!("forklift-log-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = LogFile::open(&path).unwrap();
        log.write_line(b"one\n").unwrap();
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        log.write_line(b"two\n").unwrap();
        log.reopen().unwrap();
        log.write_line(b"three\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("access.log.1")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
        // SAFETY: F_GETFD on an fd the log owns.
        let flags = unsafe { libc::fcntl(log.file.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(flags & libc::FD_CLOEXEC, 0, "still close-on-exec");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn check_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("forklift-log-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        check(&dir.join("new.log")).unwrap();
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "nothing created"
        );
        std::fs::write(dir.join("old.log"), "kept\n").unwrap();
        check(&dir.join("old.log")).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("old.log")).unwrap(),
            "kept\n"
        );
        let missing = check(&dir.join("missing").join("a.log")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
