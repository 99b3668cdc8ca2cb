//! The pool's settings, each with its default, in one place: [`Prefork`](crate::Prefork)
//! holds a [`Config`] and its setters write to it, the master reads it, and the `forklift`
//! command shows the public `DEFAULT_*` constants below as its `--help` defaults.

use std::path::PathBuf;
use std::time::Duration;

use crate::addr::ListenAddr;
use crate::error::{Error, Result};
use crate::spawn::{Readiness, Spawn};

/// The listen backlog forklift asks for unless told otherwise
/// ([`Prefork::backlog`](crate::Prefork::backlog)). The std and tokio default of 128 costs a
/// one-second SYN retry at p99 under a burst of 500 connects (measured); the kernel caps any
/// value at `net.core.somaxconn`.
///
/// ```
/// assert_eq!(forklift::DEFAULT_BACKLOG, 4096);
/// ```
pub const DEFAULT_BACKLOG: u32 = 4096;

/// The window crashes are counted over: 60 s
/// ([`Prefork::recover_window`](crate::Prefork::recover_window)). Crashes are always counted,
/// for the log; they stop the server only past an opt-in
/// [`recover_threshold`](crate::Prefork::recover_threshold).
///
/// ```
/// // Count crashes over five default windows.
/// let server = forklift::Prefork::new().recover_window(5 * forklift::DEFAULT_RECOVER_WINDOW);
/// # let _ = server;
/// ```
pub const DEFAULT_RECOVER_WINDOW: Duration = Duration::from_secs(60);

/// How long a graceful stop lets in-flight requests finish before the workers are killed:
/// 30 s ([`Prefork::graceful_timeout`](crate::Prefork::graceful_timeout)).
///
/// ```
/// // Twice the default, for a server with long uploads.
/// let server = forklift::Prefork::new().graceful_timeout(2 * forklift::DEFAULT_GRACEFUL_TIMEOUT);
/// # let _ = server;
/// ```
pub const DEFAULT_GRACEFUL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker may take to report ready before it counts as failing to boot: 60 s
/// ([`Prefork::boot_timeout`](crate::Prefork::boot_timeout)).
///
/// ```
/// // An application that loads a large model as it boots.
/// let server = forklift::Prefork::new().boot_timeout(3 * forklift::DEFAULT_BOOT_TIMEOUT);
/// # let _ = server;
/// ```
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a worker's event loop may go without a heartbeat before the master kills it:
/// 30 s ([`Prefork::worker_timeout`](crate::Prefork::worker_timeout), which takes `None` to
/// turn the check off).
///
/// ```
/// use forklift::{Prefork, DEFAULT_WORKER_TIMEOUT};
/// // Kill stuck workers sooner than the default.
/// let server = Prefork::new().worker_timeout(Some(DEFAULT_WORKER_TIMEOUT / 3));
/// # let _ = server;
/// ```
pub const DEFAULT_WORKER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may take to send a request's headers before its connection is closed:
/// 30 s ([`Prefork::header_read_timeout`](crate::Prefork::header_read_timeout)). An HTTP
/// setting, not a pool one: the builder applies it to the workers' HTTP settings.
///
/// ```
/// use forklift::{Prefork, DEFAULT_HEADER_READ_TIMEOUT};
/// // Less patience than the default with slow clients.
/// let server = Prefork::new().header_read_timeout(DEFAULT_HEADER_READ_TIMEOUT / 6);
/// # let _ = server;
/// ```
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an HTTP/1 keep-alive connection may wait idle for its next request before it is
/// closed: 75 s, nginx's default
/// ([`Prefork::keep_alive_timeout`](crate::Prefork::keep_alive_timeout)). Longer than the
/// idle timeouts of the balancers in front (AWS ALB: 60 s), so the balancer, not the
/// backend, closes an idle connection and never sends a request on one the backend is
/// closing.
///
/// ```
/// use forklift::{Prefork, DEFAULT_KEEP_ALIVE_TIMEOUT};
/// // Behind a balancer whose idle timeout is 120 s.
/// let server = Prefork::new().keep_alive_timeout(DEFAULT_KEEP_ALIVE_TIMEOUT * 2);
/// # let _ = server;
/// ```
pub const DEFAULT_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(75);

/// The number of CPUs this process may run on: its affinity mask and cgroup CPU quota count.
/// The default number of workers ([`Prefork::workers`](crate::Prefork::workers)).
///
/// ```
/// assert!(forklift::default_workers() >= 1);
/// ```
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Every setting of the pool: what the master needs. Each field's default is in
/// [`Config::default`], written with the constant above where the CLI shows it too.
#[derive(Debug)]
pub(crate) struct Config {
    /// How many workers to run. Default: [`default_workers`], counted when the builder is
    /// made. 0 is refused by [`validate`](Config::validate).
    pub workers: usize,
    /// The addresses to listen on. Default: none, which the master refuses unless it
    /// inherited sockets (a binary upgrade, systemd).
    pub addrs: Vec<ListenAddr>,
    /// One `SO_REUSEPORT` socket per worker instead of one shared socket. Default: off.
    pub reuse_port: bool,
    /// The listen backlog. Default: [`DEFAULT_BACKLOG`].
    pub backlog: u32,
    /// How workers are started. Default: [`Spawn::Fork`].
    pub spawn: Spawn,
    /// Crashes of workers that had served tolerated within `recover_window` before the
    /// master stops. Default: `None`, never: such workers are always respawned.
    pub recover_threshold: Option<usize>,
    /// The window crashes are counted over. Default: [`DEFAULT_RECOVER_WINDOW`].
    pub recover_window: Duration,
    /// How long a graceful stop waits for in-flight requests. Default:
    /// [`DEFAULT_GRACEFUL_TIMEOUT`].
    pub graceful_timeout: Duration,
    /// How long a worker may take to report ready. Default: [`DEFAULT_BOOT_TIMEOUT`].
    pub boot_timeout: Duration,
    /// How long a worker may go without a heartbeat; `None` turns the check off. Default:
    /// `Some(`[`DEFAULT_WORKER_TIMEOUT`]`)`.
    pub worker_timeout: Option<Duration>,
    /// Pin worker `i` to the `i`-th usable CPU. Default: off.
    pub pin_workers: bool,
    /// Run workers as this user. Default: the master's.
    pub user: Option<String>,
    /// Run workers with this group. Default: the user's primary group, or the master's.
    pub group: Option<String>,
    /// Answer commands on a Unix socket at this path. Default: no control socket.
    pub control: Option<PathBuf>,
    /// How long a graceful stop keeps serving after it reports unready (health port 503),
    /// so that balancers stop routing here first. Default: zero, stop at once.
    pub shutdown_delay: Duration,
    /// What a binary upgrade (USR2) executes. Default: `None`, the binary as it was invoked
    /// (`argv[0]`, symlinks not resolved).
    pub reexec_as: Option<PathBuf>,
    /// Answer `/livez`, `/readyz` and `/metrics` on this TCP address, from the master.
    /// Default: no health port.
    pub health: Option<std::net::SocketAddr>,
    /// How the master learns that a worker serves. Default: [`Readiness::Channel`].
    pub readiness: Readiness,
    /// Relay the workers' output through the master, each line prefixed with the worker
    /// when `Some(true)`. Default: `None`, the workers write to the master's streams.
    pub relay_output: Option<bool>,
    /// Raise the open-file limit's soft value to its hard one at start, before binding, so
    /// workers inherit it. Default: on.
    pub raise_nofile_limit: bool,
    /// Replace a worker whose resident set passes this many bytes. Default: no limit.
    pub max_worker_memory: Option<u64>,
    /// Replace a worker that has run this long. Default: no limit.
    pub max_worker_age: Option<Duration>,
    /// Send the master's and workers' stderr (tracing, panics) to this file, reopened on
    /// USR1. Default: none, stderr as inherited.
    pub error_log: Option<PathBuf>,
    /// Write the master's pid to this file once it serves. Default: none.
    pub pid_file: Option<PathBuf>,
    /// The access log's file (the workers write it; the master creates it, for their
    /// user, at start and on each reopen). Default: none, the access log goes through
    /// `tracing` when on.
    pub access_log_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: default_workers(),
            addrs: Vec::new(),
            reuse_port: false,
            backlog: DEFAULT_BACKLOG,
            spawn: Spawn::Fork,
            recover_threshold: None,
            recover_window: DEFAULT_RECOVER_WINDOW,
            graceful_timeout: DEFAULT_GRACEFUL_TIMEOUT,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            worker_timeout: Some(DEFAULT_WORKER_TIMEOUT),
            pin_workers: false,
            user: None,
            group: None,
            control: None,
            health: None,
            reexec_as: None,
            shutdown_delay: Duration::ZERO,
            readiness: Readiness::Channel,
            relay_output: None,
            raise_nofile_limit: true,
            max_worker_memory: None,
            max_worker_age: None,
            error_log: None,
            pid_file: None,
            access_log_file: None,
        }
    }
}

impl Config {
    /// Refuses settings the master cannot run with, saying which and why.
    pub fn validate(&self) -> Result<()> {
        if self.workers == 0 {
            return Err(Error::Config(
                "workers must be at least 1 (the default is one per CPU)".into(),
            ));
        }
        if self
            .worker_timeout
            .is_some_and(|t| t < Duration::from_secs(2))
        {
            return Err(Error::Config(
                "worker_timeout must be at least 2 s (workers send a heartbeat every second)"
                    .into(),
            ));
        }
        if self.backlog == 0 {
            return Err(Error::Config("backlog must be at least 1".into()));
        }
        if self.max_worker_age.is_some_and(|age| age.is_zero()) {
            return Err(Error::Config(
                "max_worker_age must be more than 0 (it replaces a worker that has run so long)"
                    .into(),
            ));
        }
        if self.max_worker_memory == Some(0) {
            return Err(Error::Config(
                "max_worker_memory must be more than 0".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn settings_the_master_cannot_run_with_are_refused() {
        let refused = |config: Config| config.validate().unwrap_err().to_string();
        assert!(refused(Config {
            workers: 0,
            ..Config::default()
        })
        .contains("workers must be at least 1"));
        assert!(refused(Config {
            worker_timeout: Some(Duration::from_secs(1)),
            ..Config::default()
        })
        .contains("worker_timeout must be at least 2 s"));
        assert!(refused(Config {
            backlog: 0,
            ..Config::default()
        })
        .contains("backlog must be at least 1"));
        assert!(refused(Config {
            max_worker_age: Some(Duration::ZERO),
            ..Config::default()
        })
        .contains("max_worker_age must be more than 0"));
        assert!(refused(Config {
            max_worker_memory: Some(0),
            ..Config::default()
        })
        .contains("max_worker_memory must be more than 0"));
        Config {
            worker_timeout: None,
            ..Config::default()
        }
        .validate()
        .unwrap();
    }
}
