//! The error type: what went wrong, and what to do about it.

use crate::sys::process::ExitStatus;
use std::io;
use std::time::Duration;

/// A boxed error, the currency of hooks and worker code.
///
/// ```
/// let hook_error: forklift::BoxError = "not today".into();
/// assert_eq!(hook_error.to_string(), "not today");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result<T, forklift::Error>`.
///
/// ```
/// fn start() -> forklift::Result<forklift::Prefork> {
///     forklift::Prefork::new().listen("127.0.0.1:0")
/// }
/// assert!(start().is_ok());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop forklift from starting or keep it from running.
///
/// Every message names the failing thing (an address, a worker, a hook) and, where there is one,
/// the fix.
///
/// ```
/// let err = forklift::Prefork::new().listen("127.0.0.1:http").unwrap_err();
/// assert!(err.is_address());
/// assert_eq!(
///     err.to_string(),
///     "invalid listen address \"127.0.0.1:http\": port \"http\" is not a number from 0 to 65535"
/// );
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A listen address could not be parsed or resolved.
    #[error("invalid listen address {input:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        input: String,
        /// Why it was refused.
        reason: String,
    },

    /// The address is taken by another socket.
    #[error("{addr} is already in use: {}", in_use_hint(addr))]
    AddrInUse {
        /// The address that was taken.
        addr: String,
    },

    /// Binding or listening failed for another reason.
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        /// The address.
        addr: String,
        /// The system error.
        #[source]
        source: io::Error,
        /// A hint for the common cases (permissions, missing interface).
        hint: &'static str,
    },

    /// The configuration is contradictory or out of range.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Fork mode was asked for while the process already runs several threads.
    #[error(
        "cannot fork workers: this process already runs {threads} threads, and only the thread \
         that forks survives in a child (locks held by the others would stay locked forever). \
         Call serve() before starting threads or a multi-thread runtime, or spawn workers by \
         re-executing the binary instead: .spawn(Spawn::Exec) / `--spawn exec`"
    )]
    ThreadsRunning {
        /// How many threads the process had.
        threads: usize,
    },

    /// A worker process could not be started at all.
    #[error("cannot start worker {id}: {context}: {source}")]
    Spawn {
        /// The worker's index.
        id: usize,
        /// Which step failed ("cannot create its status channel", "fork(2) failed", ...).
        context: String,
        /// The system's error.
        #[source]
        source: io::Error,
    },

    /// A worker exited, or reported an error, before it was ready to serve.
    #[error(
        "worker {id} (pid {pid}) failed to boot: {message}; no worker respawned, \
         since it would fail the same way"
    )]
    WorkerBoot {
        /// The worker's index.
        id: usize,
        /// Its process id.
        pid: u32,
        /// What it reported, or how it exited.
        message: String,
    },

    /// Workers crashed more than the recover threshold allows (fasthttp's `ErrOverRecovery`).
    #[error(
        "workers crashed {crashes} times within {window:?}, more than the recover threshold \
         ({threshold}); the last was worker {id} (pid {pid}), {status}. All workers were \
         stopped. Look at the workers' logs for the cause, or raise recover_threshold"
    )]
    OverRecovery {
        /// Crashes counted in the window.
        crashes: usize,
        /// The window they were counted over.
        window: Duration,
        /// The configured threshold.
        threshold: usize,
        /// Index of the last worker that crashed.
        id: usize,
        /// Its process id.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },

    /// A hook returned an error, which aborts start-up (as in fasthttp's prefork).
    #[error("hook {hook} failed: {source}")]
    Hook {
        /// Which hook.
        hook: &'static str,
        /// Its error.
        #[source]
        source: BoxError,
    },

    /// The TLS certificate or key cannot be used: unreadable, malformed, or not a pair.
    #[error("TLS: {0}")]
    Tls(String),

    /// A system call failed where no better description applies.
    #[error("{context}: {source}")]
    Io {
        /// What forklift was doing.
        context: String,
        /// The system error.
        #[source]
        source: io::Error,
    },

    /// The worker's own code failed.
    #[error("worker failed: {0}")]
    Worker(#[source] BoxError),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True if the error is about a listen address (unparsable, taken, or refused).
    pub fn is_address(&self) -> bool {
        matches!(
            self,
            Error::InvalidAddress { .. } | Error::AddrInUse { .. } | Error::Bind { .. }
        )
    }

    /// True if workers were stopped because they kept crashing, or could not boot.
    ///
    /// ```
    /// let err = forklift::Prefork::new()
    ///     .workers(1)
    ///     .listen("127.0.0.1:0")?
    ///     .run(|_worker| Err("no database".into()))
    ///     .unwrap_err();
    /// assert!(err.is_worker_failure(), "{err}");
    /// assert!(err.to_string().contains("no database"));
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn is_worker_failure(&self) -> bool {
        matches!(self, Error::WorkerBoot { .. } | Error::OverRecovery { .. })
    }
}

fn in_use_hint(addr: &str) -> &'static str {
    if addr.starts_with("unix:") || addr.starts_with("control socket") {
        "another process answers on that socket (another forklift master?); stop it or \
         choose another path"
    } else {
        "another process is listening there (see which with `ss -ltnp`), or pick another port"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_in_use_says_what_to_do() {
        let e = Error::AddrInUse {
            addr: "127.0.0.1:8080".into(),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("127.0.0.1:8080 is already in use"),
            "{text}"
        );
        assert!(e.is_address());
    }
}
