//! What can be asked of the master, and the one place it is done.
//!
//! A signal, a word on the control socket and a call of the API ([`request_stop`],
//! [`request_reload`], [`request_scale`]) all become a [`Command`] with its [`Origin`], and go
//! through [`Master::apply`]. [`TABLE`] says which signal and which control-socket word mean
//! which command, as nginx's `signals[]` does; the file each command leads to is named there.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::info;

use super::{human, Master, Phase};
use crate::sys::{control, signals};

/// Something asked of the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// Stop: gracefully (drain, then exit) or fast (drop connections). `stop.rs`.
    Stop { graceful: bool },
    /// Start a new generation of every worker; retire the old one once it serves. `replace.rs`.
    Reload,
    /// One worker more. `replace.rs`.
    AddWorker,
    /// One worker fewer (never below one). `replace.rs`.
    RemoveWorker,
    /// Execute the binary again as a new master that takes the sockets over. `upgrade.rs`.
    Upgrade,
    /// Describe the master and its workers (the control socket's answer): a table, or one
    /// JSON object for scripts.
    Status { json: bool },
    /// Report unready on the health port (`/readyz` 503) while the workers keep serving, so
    /// balancers stop choosing this host. `health.rs`.
    Drain,
    /// Report ready again after a drain.
    Undrain,
    /// Reopen the log files (logrotate renamed them): the master's error log, and each
    /// worker's, told on its channel. `logs.rs`.
    ReopenLogs,
}

/// Where a command came from, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A signal sent to the master.
    Signal(libc::c_int),
    /// A connection to the control socket.
    Control,
    /// A call of `request_stop`/`request_reload`/`request_scale` in the master's process.
    Api,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Origin::Signal(sig) => f.write_str(&super::signame(sig)),
            Origin::Control => f.write_str("the control socket"),
            Origin::Api => f.write_str("the API"),
        }
    }
}

/// Every signal and control-socket word the master answers, and the command it means.
/// SIGCHLD is not here: reaping happens every tick, whatever woke the loop.
pub(crate) const TABLE: &[(Option<libc::c_int>, Option<&str>, Command)] = &[
    (
        Some(libc::SIGTERM),
        Some("stop"),
        Command::Stop { graceful: true },
    ),
    (Some(libc::SIGQUIT), None, Command::Stop { graceful: true }),
    (Some(libc::SIGINT), None, Command::Stop { graceful: false }),
    (Some(libc::SIGHUP), Some("reload"), Command::Reload),
    (Some(libc::SIGTTIN), Some("incr"), Command::AddWorker),
    (Some(libc::SIGTTOU), Some("decr"), Command::RemoveWorker),
    (Some(libc::SIGUSR2), Some("upgrade"), Command::Upgrade),
    (
        Some(libc::SIGUSR1),
        Some("reopen-logs"),
        Command::ReopenLogs,
    ),
    (None, Some("status"), Command::Status { json: false }),
    (None, Some("status-json"), Command::Status { json: true }),
    (None, Some("drain"), Command::Drain),
    (None, Some("undrain"), Command::Undrain),
];

impl Command {
    /// Every command, in the order requests are applied.
    const ALL: [Command; 11] = [
        Command::Stop { graceful: true },
        Command::Stop { graceful: false },
        Command::Reload,
        Command::AddWorker,
        Command::RemoveWorker,
        Command::Upgrade,
        Command::Status { json: false },
        Command::Status { json: true },
        Command::Drain,
        Command::Undrain,
        Command::ReopenLogs,
    ];

    /// The command a signal means, if any.
    pub(crate) fn from_signal(sig: libc::c_int) -> Option<Command> {
        TABLE
            .iter()
            .find(|(s, _, _)| *s == Some(sig))
            .map(|(_, _, c)| *c)
    }

    /// The command a control-socket line means, if any.
    pub(crate) fn from_word(line: &str) -> Option<Command> {
        let word = line.trim();
        TABLE
            .iter()
            .find(|(_, w, _)| *w == Some(word))
            .map(|(_, _, c)| *c)
    }

    /// The control socket's words, for its error message.
    fn words() -> Vec<&'static str> {
        TABLE.iter().filter_map(|(_, w, _)| *w).collect()
    }

    /// This command's bit in [`REQUESTED`].
    fn bit(self) -> u64 {
        1 << match self {
            Command::Stop { graceful: true } => 0,
            Command::Stop { graceful: false } => 1,
            Command::Reload => 2,
            Command::AddWorker => 3,
            Command::RemoveWorker => 4,
            Command::Upgrade => 5,
            Command::Status { json: false } => 6,
            Command::Status { json: true } => 9,
            Command::Drain => 7,
            Command::Undrain => 8,
            Command::ReopenLogs => 10,
        }
    }
}

/// Commands asked for through the API and not yet applied, one bit each: like signals, a
/// request asked twice before the master looks is applied once.
static REQUESTED: AtomicU64 = AtomicU64::new(0);

/// Records `command` for the master of this process and wakes its loop; nothing without one.
fn request(command: Command) {
    if signals::installed() {
        REQUESTED.fetch_or(command.bit(), Ordering::SeqCst);
        signals::wake();
    }
}

/// The commands requested through the API since the last call, in [`Command::ALL`]'s order.
fn take_requested() -> Vec<Command> {
    let bits = REQUESTED.swap(0, Ordering::SeqCst);
    Command::ALL
        .into_iter()
        .filter(|c| bits & c.bit() != 0)
        .collect()
}

/// Asks the master running in this process to stop, as TERM (graceful) or INT (fast) would.
///
/// For hooks, tests and programs that embed forklift and decide themselves when to stop
/// (the signal a caller injects instead of the OS one). Callable from any thread of the
/// master process; does nothing where no master runs (before `serve`, or in a worker).
///
/// ```
/// # use std::convert::Infallible;
/// # use http_body_util::Full;
/// # use hyper::{body::Bytes, service::service_fn, Request, Response};
/// # async fn hello(_: Request<forklift::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
/// #     Ok(Response::new(Full::new(Bytes::from("hello"))))
/// # }
/// // Start two workers, and stop as soon as both serve.
/// forklift::Prefork::new()
///     .workers(2)
///     .listen("127.0.0.1:0")?
///     .on_master_ready(|workers| {
///         assert_eq!(workers.len(), 2);
///         forklift::request_stop(true);
///         Ok(())
///     })
///     .serve(|| service_fn(hello))?;
/// # Ok::<(), forklift::Error>(())
/// ```
pub fn request_stop(graceful: bool) {
    request(Command::Stop { graceful });
}

/// Asks the master running in this process for a rolling reload, as SIGHUP would.
/// Like [`request_stop`], callable from hooks or any thread of the master process.
///
/// ```
/// # use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
/// static RELOADED: AtomicBool = AtomicBool::new(false);
/// forklift::Prefork::new()
///     .workers(1)
///     .listen("127.0.0.1:0")?
///     .on_event(|event| match event {
///         forklift::Event::MasterReady(_) => forklift::request_reload(),
///         forklift::Event::GenerationReady { generation: 2, .. } => {
///             RELOADED.store(true, SeqCst);
///             forklift::request_stop(true);
///         }
///         _ => {}
///     })
///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })?;
/// assert!(RELOADED.load(SeqCst));
/// # Ok::<(), forklift::Error>(())
/// ```
pub fn request_reload() {
    request(Command::Reload);
}

/// Asks the master running in this process to drain (`true`: its health port's `/readyz`
/// answers 503, so balancers stop choosing this host, while the workers keep serving) or to
/// stop draining (`false`), as the control socket's `drain` and `undrain` do.
///
/// ```
/// // A host that takes itself out of its balancer's rotation before maintenance.
/// forklift::request_drain(true);
/// ```
pub fn request_drain(on: bool) {
    request(if on { Command::Drain } else { Command::Undrain });
}

/// Asks the master running in this process to reopen its log files and have every worker
/// reopen theirs ([`Prefork::error_log`](crate::Prefork::error_log),
/// [`Prefork::access_log_file`](crate::Prefork::access_log_file)), as SIGUSR1 does: for a
/// program that rotates its own logs.
///
/// ```
/// // After renaming the log files aside.
/// forklift::request_reopen_logs();
/// ```
pub fn request_reopen_logs() {
    request(Command::ReopenLogs);
}

/// Asks the master running in this process for one worker more (`true`, as SIGTTIN) or one
/// fewer (`false`, as SIGTTOU): the library's way to change the worker count live.
///
/// ```
/// # use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
/// static COUNT: AtomicUsize = AtomicUsize::new(0);
/// forklift::Prefork::new()
///     .workers(1)
///     .listen("127.0.0.1:0")?
///     .on_event(|event| match event {
///         forklift::Event::MasterReady(_) => forklift::request_scale(true),
///         forklift::Event::WorkersChanged { workers } => {
///             COUNT.store(*workers, SeqCst);
///             forklift::request_stop(true);
///         }
///         _ => {}
///     })
///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })?;
/// assert_eq!(COUNT.load(SeqCst), 2);
/// # Ok::<(), forklift::Error>(())
/// ```
pub fn request_scale(more: bool) {
    request(if more {
        Command::AddWorker
    } else {
        Command::RemoveWorker
    });
}

impl Master {
    /// Applies everything asked since the last tick: signals first, then API requests, then
    /// the control socket's connections (each answered).
    pub(super) fn take_commands(&mut self) {
        for sig in self.signals.take() {
            if let Some(command) = Command::from_signal(sig) {
                self.apply(command, Origin::Signal(sig));
            }
        }
        for command in take_requested() {
            self.apply(command, Origin::Api);
        }
        let Some(socket) = &self.control else { return };
        for (stream, line) in socket.accept() {
            let answer = match line.as_deref().and_then(Command::from_word) {
                Some(command) => self.apply(command, Origin::Control),
                None => format!(
                    "error: unknown command; use {}\n",
                    Command::words().join(", ")
                ),
            };
            control::reply(stream, &answer);
        }
    }

    /// Does what `command` asks; returns the control socket's answer.
    pub(super) fn apply(&mut self, command: Command, origin: Origin) -> String {
        match command {
            Command::Stop { graceful } => {
                self.stop_requested(graceful, origin);
                "stopping\n".into()
            }
            Command::Reload => {
                if let Err(reason) = self.start_reload(origin) {
                    return format!("error: reload refused: {reason}\n");
                }
                match (&self.reload, self.reload_queued) {
                    (_, Some(_)) => format!(
                        "reloading: generation {} (queued after the reload under way)\n",
                        self.generation + 1
                    ),
                    (Some(_), None) => format!("reloading: generation {}\n", self.generation),
                    (None, None) => "error: not reloading: the master is stopping\n".into(),
                }
            }
            Command::AddWorker => {
                self.scale(self.slots.len() + 1, origin);
                format!("workers: {}\n", self.slots.len())
            }
            Command::RemoveWorker => {
                self.scale(self.slots.len().saturating_sub(1), origin);
                format!("workers: {}\n", self.slots.len())
            }
            Command::Upgrade => match self.start_upgrade(origin) {
                Ok(pid) => format!("upgrading: new master pid {pid}\n"),
                Err(why) => format!("error: no upgrade started: {why}\n"),
            },
            Command::Status { json: false } => self.status(),
            Command::Status { json: true } => self.status_json(),
            Command::ReopenLogs => self.reopen_logs(origin),
            Command::Drain | Command::Undrain => {
                let on = command == Command::Drain;
                if self.draining != on {
                    tracing::info!(
                        "{} requested by {origin}: /readyz answers {}",
                        if on { "drain" } else { "undrain" },
                        if on {
                            "503"
                        } else {
                            "200 once the workers are ready"
                        }
                    );
                }
                self.draining = on;
                if on {
                    "draining\n".into()
                } else {
                    "not draining\n".into()
                }
            }
        }
    }

    /// Logs a stop request and begins the stop. A graceful stop while a new master (binary
    /// upgrade) starts leaves the sockets and the control socket's file to it.
    fn stop_requested(&mut self, graceful: bool, origin: Origin) {
        if !graceful {
            info!("fast stop requested by {origin}");
            self.shutdown_at = None;
            self.stop(false, Ok(()));
            return;
        }
        if let Some(new) = self.upgrade {
            // The new master serves: this one's workers drain as retired ones do (HTTP/1
            // responses say Connection: close, HTTP/2 connections get a GOAWAY), then stop.
            info!("handing over to the new master (pid {new})");
            self.hand_over_sockets();
            if self.running() && self.shutdown_at.is_none() {
                self.begin_shutdown_delay(super::pool::RETIRE_DRAIN);
                return;
            }
        } else if let Some(at) = self.shutdown_at {
            info!(
                "graceful stop requested by {origin}: already stopping in {:?}",
                at.saturating_duration_since(std::time::Instant::now())
            );
            return;
        } else if self.running() && !self.config.shutdown_delay.is_zero() {
            let delay = self.config.shutdown_delay;
            info!(
                "graceful stop requested by {origin}: unready now; serving for {delay:?} \
                 (shutdown delay), with connections closed after each request, then stopping"
            );
            self.begin_shutdown_delay(delay);
            return;
        }
        info!("graceful stop requested by {origin}");
        self.stop(true, Ok(()));
    }

    /// The `status-json` answer: one JSON object (and a newline) for scripts.
    fn status_json(&self) -> String {
        use std::fmt::Write as _;
        let state = match (&self.phase, &self.reload) {
            (Phase::Stopping { .. }, _) => "stopping",
            (Phase::Running, Some(_)) => "reloading",
            (Phase::Running, None) => "running",
        };
        let mut out = format!(
            "{{\"master_pid\":{},\"state\":\"{state}\",\"generation\":{},\"workers\":{},\
             \"uptime_secs\":{:.3},\"ready\":{},\"draining\":{}",
            self.pid,
            self.generation,
            self.slots.len(),
            self.started.elapsed().as_secs_f64(),
            self.unready().is_none(),
            self.draining
        );
        match &self.last_reload {
            Some(r) => {
                let _ = write!(
                    out,
                    ",\"last_reload\":{{\"generation\":{},\"outcome\":\"{}\",\"reason\":{}}}",
                    r.generation,
                    if r.failure.is_some() {
                        "failed"
                    } else {
                        "completed"
                    },
                    r.failure.as_deref().map_or("null".into(), json_string)
                );
            }
            None => out.push_str(",\"last_reload\":null"),
        }
        let _ = write!(
            out,
            ",\"upgrade\":{},\"last_upgrade_failure\":{}",
            self.upgrade
                .map_or("null".into(), |p| format!("{{\"new_master_pid\":{p}}}")),
            self.last_upgrade_failure
                .as_ref()
                .map_or("null".into(), |(pid, why)| format!(
                    "{{\"new_master_pid\":{},\"reason\":{}}}",
                    pid.map_or("null".into(), |p| p.to_string()),
                    json_string(why)
                ))
        );
        out.push_str(",\"worker_list\":[");
        let mut rows: Vec<_> = self.workers.iter().collect();
        rows.sort_by_key(|w| (w.info.id, w.info.generation));
        for (i, w) in rows.iter().enumerate() {
            let restarts = self.slots.get(w.info.id).map_or(0, |s| s.restarts);
            let _ = write!(
                out,
                "{}{{\"id\":{},\"pid\":{},\"generation\":{},\"state\":\"{}\",\
                 \"uptime_secs\":{:.3},\"requests\":{},\"connections\":{},\"restarts\":{restarts}}}",
                if i == 0 { "" } else { "," },
                w.info.id,
                w.info.pid,
                w.info.generation,
                w.state.label(),
                w.spawned_at.elapsed().as_secs_f64(),
                w.requests,
                w.connections
            );
        }
        out.push_str("]}\n");
        out
    }

    /// The `status` answer: the master, then one row per worker.
    fn status(&self) -> String {
        use std::fmt::Write as _;
        let state = match (&self.phase, &self.reload) {
            (Phase::Stopping { .. }, _) => "stopping",
            (Phase::Running, Some(_)) => "reloading",
            (Phase::Running, None) => "running",
        };
        let mut out = format!(
            "master pid {}, {state}, generation {}, {} workers, up {}\n",
            self.pid,
            self.generation,
            self.slots.len(),
            human(self.started.elapsed())
        );
        let _ = writeln!(
            out,
            "{:<4} {:<8} {:<4} {:<9} {:<8} {:>10} {:>8} {:>6}",
            "ID", "PID", "GEN", "STATE", "UPTIME", "REQUESTS", "RESTARTS", "CONNS"
        );
        let mut rows: Vec<_> = self.workers.iter().collect();
        rows.sort_by_key(|w| (w.info.id, w.info.generation));
        for w in rows {
            let restarts = self.slots.get(w.info.id).map_or(0, |s| s.restarts);
            let _ = writeln!(
                out,
                "{:<4} {:<8} {:<4} {:<9} {:<8} {:>10} {:>8} {:>6}",
                w.info.id,
                w.info.pid,
                w.info.generation,
                w.state.label(),
                human(w.spawned_at.elapsed()),
                w.requests,
                restarts,
                w.connections
            );
        }
        out
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn signals_and_words_mean_the_documented_commands() {
        let stop = Command::Stop { graceful: true };
        assert_eq!(Command::from_signal(libc::SIGTERM), Some(stop));
        assert_eq!(Command::from_signal(libc::SIGQUIT), Some(stop));
        assert_eq!(
            Command::from_signal(libc::SIGINT),
            Some(Command::Stop { graceful: false })
        );
        assert_eq!(Command::from_signal(libc::SIGHUP), Some(Command::Reload));
        assert_eq!(
            Command::from_signal(libc::SIGTTIN),
            Some(Command::AddWorker)
        );
        assert_eq!(
            Command::from_signal(libc::SIGTTOU),
            Some(Command::RemoveWorker)
        );
        assert_eq!(Command::from_signal(libc::SIGUSR2), Some(Command::Upgrade));
        assert_eq!(
            Command::from_signal(libc::SIGUSR1),
            Some(Command::ReopenLogs)
        );
        assert_eq!(Command::from_word("reopen-logs"), Some(Command::ReopenLogs));
        assert_eq!(Command::from_signal(libc::SIGCHLD), None);
        assert_eq!(
            Command::from_word("status\n"),
            Some(Command::Status { json: false })
        );
        assert_eq!(
            Command::from_word("status-json"),
            Some(Command::Status { json: true })
        );
        assert_eq!(Command::from_word(" reload "), Some(Command::Reload));
        assert_eq!(Command::from_word("stop"), Some(stop));
        assert_eq!(Command::from_word("incr"), Some(Command::AddWorker));
        assert_eq!(Command::from_word("decr"), Some(Command::RemoveWorker));
        assert_eq!(Command::from_word("upgrade"), Some(Command::Upgrade));
        assert_eq!(Command::from_word(""), None);
        assert_eq!(Command::from_word("drain"), Some(Command::Drain));
        assert_eq!(Command::from_word("undrain"), Some(Command::Undrain));
        assert_eq!(
            Command::words(),
            [
                "stop",
                "reload",
                "incr",
                "decr",
                "upgrade",
                "reopen-logs",
                "status",
                "status-json",
                "drain",
                "undrain"
            ]
        );
    }

    #[test]
    fn every_signal_in_the_table_has_a_handler() {
        for (sig, _, _) in TABLE {
            if let Some(sig) = sig {
                assert!(signals::MASTER_SIGNALS.contains(sig), "signal {sig}");
            }
        }
    }

    #[test]
    fn each_command_has_its_own_request_bit() {
        let all = Command::ALL;
        let bits: u64 = all.iter().map(|c| c.bit()).fold(0, |acc, b| {
            assert_eq!(acc & b, 0);
            acc | b
        });
        assert_eq!(bits.count_ones() as usize, all.len());
    }

    #[test]
    fn origins_read_in_a_log_line() {
        assert_eq!(Origin::Signal(libc::SIGHUP).to_string(), "SIGHUP");
        assert_eq!(Origin::Control.to_string(), "the control socket");
        assert_eq!(Origin::Api.to_string(), "the API");
    }
}
