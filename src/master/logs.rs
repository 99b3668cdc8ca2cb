//! The master's log and pid files: the error log on fd 2 (opened before binding, reopened on
//! USR1 or `reopen-logs`, each worker told to reopen its own), the access log's file (opened
//! before binding and before a reload that names a new one, so the workers can open it), and
//! the pid file (checked before binding, written once every worker serves, removed at exit
//! while it is still this master's).

use std::io;
use std::path::Path;

use tracing::{error, info, warn};

use super::command::Origin;
use super::pool::Entry;
use super::Master;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::sys::{log_file, pid_file};

/// Checks that the pid file can be written and sends stderr to the error log, if set.
pub(super) fn open_at_start(config: &Config) -> Result<()> {
    if let Some(path) = &config.pid_file {
        pid_file::check(path).map_err(|e| pid_file_error(path, e))?;
    }
    if let Some(path) = &config.error_log {
        log_file::redirect_stderr(path).map_err(|e| log_file_error("error log", path, e))?;
    }
    Ok(())
}

/// Opens (creating) the access log's file as the workers will, so that a path they could not
/// open fails here: before binding at start, and before the new generation starts on a
/// reload that names a new file (the reload is refused). With workers that drop privileges
/// (`credentials`) the file is given to their user, as at start.
pub(crate) fn open_access_log(path: &Path, credentials: Option<(u32, u32)>) -> Result<()> {
    let opened = match credentials {
        Some((uid, gid)) => log_file::create_for(path, uid, gid),
        None => log_file::LogFile::open(path).map(drop),
    };
    opened.map_err(|e| log_file_error("access log", path, e))
}

/// The error for a pid file that cannot be written at `path`.
pub(crate) fn pid_file_error(path: &Path, e: io::Error) -> Error {
    Error::io(
        format!(
            "cannot write the pid file {} (does its directory exist, and may this user create \
             files there?)",
            path.display()
        ),
        e,
    )
}

/// The error for a log file (`what`: "error log", "access log") that cannot be opened at
/// `path`.
pub(crate) fn log_file_error(what: &str, path: &Path, e: io::Error) -> Error {
    Error::io(
        format!(
            "opening the {what} {} (does its directory exist, and may this user write there?)",
            path.display()
        ),
        e,
    )
}

/// With workers that drop privileges: creates the log files the workers open (the access
/// log's; the error log's, which they reopen) owned by their user, as nginx does. At start
/// and before each reopen, so a new file after a rename is theirs too.
pub(super) fn create_for_workers(config: &Config, credentials: Option<(u32, u32)>) -> Result<()> {
    let Some((uid, gid)) = credentials else {
        return Ok(());
    };
    for path in [&config.access_log_file, &config.error_log]
        .into_iter()
        .flatten()
    {
        log_file::create_for(path, uid, gid).map_err(|e| {
            Error::io(
                format!(
                    "giving the log file {} to the workers' user (uid {uid})",
                    path.display()
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// Removes the pid file at exit, unless it holds another master's pid (the new master of a
/// binary upgrade).
pub(super) fn remove_pid_file(path: Option<&Path>) {
    if let Some(path) = path {
        pid_file::remove_if_holds(path, std::process::id());
    }
}

impl Master {
    /// Reopens the error log (a new file at the path, after logrotate renamed the old one)
    /// and tells every worker to reopen its log files. Returns the control socket's answer.
    pub(super) fn reopen_logs(&mut self, origin: Origin) -> String {
        if let Err(e) = create_for_workers(&self.config, self.credentials) {
            warn!("reopen requested by {origin}: {e}");
        }
        if let Some(path) = &self.config.error_log {
            if let Err(e) = log_file::redirect_stderr(path) {
                error!(
                    "reopen requested by {origin}: cannot reopen the error log {}: {e}; \
                     still writing to the old file",
                    path.display()
                );
                return format!("error: cannot reopen {}: {e}\n", path.display());
            }
        }
        let mut told = 0;
        for w in &mut self.workers {
            told += usize::from(w.tell_reopen());
        }
        info!("log files reopened, requested by {origin}; {told} workers told to reopen theirs");
        format!("reopened: the master's log files and {told} workers'\n")
    }

    /// Writes this master's pid to the pid file, if one is set; a failure is logged.
    pub(super) fn write_pid_file(&self) {
        if let Some(path) = &self.config.pid_file {
            if let Err(e) = pid_file::write(path, self.pid) {
                warn!("cannot write the pid file {}: {e}", path.display());
            }
        }
    }
}

impl Entry {
    /// Tells the worker to reopen its log files (a `reopen` line on its channel); false if
    /// the channel is closed or full (the worker is going, or busy).
    fn tell_reopen(&mut self) -> bool {
        use std::io::Write as _;
        match &mut self.channel {
            Some(channel) => channel.write(crate::protocol::REOPEN_LINE).is_ok(),
            None => false,
        }
    }
}
