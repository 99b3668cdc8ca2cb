//! The master: one single-threaded event loop that binds, spawns, reaps and decides.
//!
//! Each tick: wait (poll) on the signal pipe, the control socket and the workers' channels;
//! apply every command asked since the last tick (signals, control socket, API: one
//! vocabulary, `command.rs`); read what workers said; reap the ones that ended; then manage:
//! start the workers that are due, retire the replaced, recycle, and enforce deadlines. The
//! master never assumes a worker is ready: the worker says so on its channel.
//!
//! | file | owns |
//! |---|---|
//! | `mod.rs` | start-up (bind, check, install handlers), the loop, waiting |
//! | `command.rs` | what can be asked (signal, control-socket word, API call) and `apply` |
//! | `pool.rs` | the worker table: entries and their states, slots, spawning, readiness |
//! | `replace.rs` | reload (HUP), recycling, scaling (TTIN/TTOU) |
//! | `guards.rs` | the memory and age limits that send a worker to recycling |
//! | `upgrade.rs` | binary upgrade (USR2) |
//! | `logs.rs` | the error log (reopened on USR1, workers told) and the pid file |
//! | `exits.rs` | reaping, crashes and backoff, boot failures, boot and heartbeat deadlines |
//! | `stop.rs` | graceful and fast stop, escalating to SIGKILL |
//! | `policy.rs` | pure decisions: backoff, crash window, what to spawn, retire, recycle |

mod command;
mod exits;
mod guards;
mod health;
pub(crate) mod logs;
pub(crate) mod policy;
mod pool;
mod replace;
mod stop;
mod upgrade;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info};

pub use command::{
    request_drain, request_reload, request_reopen_logs, request_scale, request_stop,
};

use self::command::Origin;
use self::exits::ABORT_GRACE;
use self::health::Stats;
use self::policy::CrashWindow;
use self::pool::{Entry, SlotState, State};
use self::replace::{Reload, ReloadOutcome};
use self::stop::Phase;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::hooks::{Event, Hooks};
use crate::spawn::exec::CommandLine;
use crate::spawn::Readiness;
use crate::sys::control::ControlSocket;
use crate::sys::health::HealthServer;
use crate::sys::listener::{self, BindOptions, BoundAddr};
use crate::sys::notify;
use crate::sys::process;
use crate::sys::signals::SignalPipe;
use crate::worker::WorkerMain;

/// Runs the master until it stops. Returns `Ok` after a requested stop.
pub(crate) fn run(config: Config, hooks: Hooks, main: Arc<WorkerMain>) -> Result<()> {
    let master_span = tracing::info_span!("master", pid = std::process::id());
    let _entered = master_span.enter();
    config.validate()?;
    if config.spawn.is_fork() {
        let threads = process::thread_count();
        if threads > 1 {
            return Err(Error::ThreadsRunning { threads });
        }
    }
    if config.raise_nofile_limit {
        raise_nofile_limit();
    }
    guards::note_unsupported(&config);
    // Before binding: a log or pid file that cannot be written fails at once.
    logs::open_at_start(&config)?;
    let pid_file = config.pid_file.clone();
    let opts = bind_options(&config);
    if let Some(max) = listener::somaxconn() {
        if max < config.backlog {
            debug!(
                "listen backlog {} is capped by net.core.somaxconn = {max}",
                config.backlog
            );
        }
    }
    let inherited = listener::inherited()?;
    let (inherited, inherited_control, inherited_health, inherited_tickets) = match inherited {
        Some(i) => (Some(i.bound), i.control, i.health, i.tickets),
        None => (None, None, None, None),
    };
    // Before any worker: forked workers copy it, exec'd ones are sent it.
    #[cfg(feature = "tls")]
    crate::http::tickets::settle_master_secret(inherited_tickets)?;
    #[cfg(not(feature = "tls"))]
    drop(inherited_tickets);
    let bound = match inherited {
        Some(mut bound) => {
            info!(
                "serving on {} inherited sockets (LISTEN_FDS); configured addresses are not bound",
                bound.len()
            );
            for b in &mut bound {
                b.fit_slots(config.workers, opts)?;
            }
            bound
        }
        None if config.addrs.is_empty() => {
            return Err(Error::Config(
                "no listen address: call .listen(\"127.0.0.1:8080\") at least once, or start \
                 under systemd socket activation"
                    .into(),
            ))
        }
        None => listener::bind_all(&config.addrs, config.workers, opts)?,
    };
    if config.reuse_port {
        note_migrate_req();
    }
    let notifier = notify::Notifier::from_env().map_err(|e| Error::io("NOTIFY_SOCKET", e))?;
    let control = match (&config.control, inherited_control) {
        (Some(path), Some(listener)) => Some(crate::sys::control::ControlSocket::inherited(
            listener, path,
        )?),
        (Some(path), None) => Some(ControlSocket::bind(path)?),
        (None, _) => None,
    };
    let health = match (config.health, inherited_health) {
        (Some(_), Some(listener)) => Some(HealthServer::from_listener(listener)?),
        (Some(addr), None) => Some(HealthServer::bind(addr)?),
        (None, _) => None,
    };
    let credentials =
        process::resolve_credentials(config.user.as_deref(), config.group.as_deref())?;
    logs::create_for_workers(&config, credentials)?;
    let cpus = if config.pin_workers {
        process::allowed_cpus()
    } else {
        Vec::new()
    };
    let upgrade_line = match CommandLine::as_invoked(config.reexec_as.as_deref()) {
        Ok(line) => Some(line),
        Err(e) if config.reexec_as.is_some() => return Err(Error::Config(e.to_string())),
        Err(_) => None,
    };
    let signals = SignalPipe::install().map_err(|e| Error::io("installing signal handlers", e))?;
    let mut master = Master::new(config, hooks, main, bound, signals);
    master.notifier = notifier;
    master.credentials = credentials;
    master.control = control;
    master.health = health;
    master.upgrade_line = upgrade_line;
    master.cpus = cpus;
    let addresses: Vec<String> = master.bound.iter().map(|b| b.actual.to_string()).collect();
    info!(
        "listening on {} with {} workers ({}, spawn {:?})",
        addresses.join(", "),
        master.config.workers,
        if master.config.reuse_port {
            "one SO_REUSEPORT socket per worker"
        } else {
            "shared socket"
        },
        master.config.spawn
    );
    if let Some(addr) = master.health.as_ref().and_then(|h| h.local_addr().ok()) {
        info!("health port on http://{addr}/ (/livez, /readyz, /metrics)");
    }
    master.emit(Event::Listening { addresses });
    let outcome = master.run();
    // Close the sockets (and remove Unix socket files) before returning to the caller.
    drop(master);
    logs::remove_pid_file(pid_file.as_deref());
    outcome
}

fn bind_options(config: &Config) -> BindOptions {
    BindOptions {
        backlog: i32::try_from(config.backlog).unwrap_or(i32::MAX),
        reuse_port: config.reuse_port,
    }
}

/// The master's state: its configuration, sockets, worker table and what is under way.
struct Master {
    config: Config,
    hooks: Hooks,
    main: Arc<WorkerMain>,
    bound: Vec<BoundAddr>,
    signals: SignalPipe,
    /// Every live worker process, of every generation.
    workers: Vec<Entry>,
    /// One per worker slot: the target worker count is `slots.len()`.
    slots: Vec<SlotState>,
    crashes: CrashWindow,
    generation: u64,
    reload: Option<Reload>,
    /// A reload asked for during a reload, and by whom: it starts when the current one ends.
    reload_queued: Option<Origin>,
    phase: Phase,
    master_ready: bool,
    pid: u32,
    /// The re-executed binary's command line (Spawn::Exec), found at the first spawn.
    exec_line: Option<CommandLine>,
    notifier: Option<notify::Notifier>,
    /// The binary and arguments this master started with: what an upgrade executes.
    upgrade_line: Option<CommandLine>,
    /// The new master a binary upgrade started, until it takes over or fails.
    upgrade: Option<u32>,
    /// The last upgrade that failed, and how: its new master (none if it could not be
    /// started) and the reason.
    last_upgrade_failure: Option<(Option<u32>, String)>,
    /// How the last reload ended.
    last_reload: Option<ReloadOutcome>,
    /// The master this one replaces (a binary upgrade), retired once this one serves.
    upgrade_from: Option<u32>,
    /// The (uid, gid) workers drop to.
    credentials: Option<(u32, u32)>,
    /// The CPUs workers are pinned to, in order (empty: no pinning).
    cpus: Vec<usize>,
    control: Option<ControlSocket>,
    /// The health port (`/livez`, `/readyz`, `/metrics`).
    health: Option<HealthServer>,
    /// Drained by an operator: `/readyz` answers 503 while the workers keep serving.
    draining: bool,
    /// A graceful stop waiting out its shutdown delay: it stops at this time.
    shutdown_at: Option<Instant>,
    /// Counters for `/metrics`.
    stats: Stats,
    started: Instant,
    /// Workers spawned so far.
    spawned: u64,
    /// When the workers' memory and age were last checked (`guards.rs`).
    limits_checked: Option<Instant>,
}

impl Master {
    fn new(
        config: Config,
        hooks: Hooks,
        main: Arc<WorkerMain>,
        bound: Vec<BoundAddr>,
        signals: SignalPipe,
    ) -> Master {
        let slots = (0..config.workers).map(|_| SlotState::due_now()).collect();
        let crashes = CrashWindow::new(config.recover_threshold, config.recover_window);
        Master {
            config,
            hooks,
            main,
            bound,
            signals,
            workers: Vec::new(),
            slots,
            crashes,
            generation: 1,
            reload: None,
            reload_queued: None,
            phase: Phase::Running,
            master_ready: false,
            pid: std::process::id(),
            exec_line: None,
            notifier: None,
            upgrade_line: None,
            upgrade: None,
            last_upgrade_failure: None,
            last_reload: None,
            upgrade_from: std::env::var(crate::protocol::ENV_UPGRADE_FROM)
                .ok()
                .and_then(|p| p.parse().ok()),
            credentials: None,
            cpus: Vec::new(),
            control: None,
            health: None,
            draining: false,
            shutdown_at: None,
            stats: Stats::default(),
            started: Instant::now(),
            spawned: 0,
            limits_checked: None,
        }
    }

    /// The loop: until a stop has reaped every worker.
    fn run(&mut self) -> Result<()> {
        loop {
            self.manage();
            if let Phase::Stopping { .. } = self.phase {
                if self.workers.is_empty() {
                    let Phase::Stopping { outcome, .. } =
                        std::mem::replace(&mut self.phase, Phase::Running)
                    else {
                        unreachable!()
                    };
                    return outcome;
                }
            }
            self.wait(self.next_timeout());
            self.take_commands();
            self.serve_health();
            self.read_channels();
            self.reap();
        }
    }

    /// Runs the hooks for `event`; a hook's error stops the server with it.
    fn emit(&mut self, event: Event) {
        if let Err(e) = self.hooks.emit(event) {
            tracing::error!("{e}");
            self.stop(false, Err(e));
        }
    }

    fn running(&self) -> bool {
        matches!(self.phase, Phase::Running)
    }

    /// Running, and not waiting out a shutdown delay: reloads, upgrades and scaling may start.
    fn open_to_changes(&self) -> bool {
        self.running() && self.shutdown_at.is_none()
    }

    /// The supervision verbs, each idempotent, run every tick.
    fn manage(&mut self) {
        let now = Instant::now();
        if !self.running() {
            self.enforce_stop_deadline(now);
            return;
        }
        if self.shutdown_at.is_some_and(|t| now >= t) {
            self.shutdown_at = None;
            self.stop(true, Ok(()));
            return;
        }
        self.spawn_due(now);
        if !self.running() {
            return;
        }
        self.ready_by_delay(now);
        self.retire_replaced();
        self.term_retired(now);
        self.check_limits(now);
        self.start_recycle(now);
        self.murder(now);
        self.check_boot_deadlines(now);
    }

    fn bind_options(&self) -> BindOptions {
        bind_options(&self.config)
    }

    /// How long the loop may sleep: until the nearest deadline, at most a second.
    fn next_timeout(&self) -> Duration {
        let now = Instant::now();
        let mut deadline = now + Duration::from_secs(1);
        match &self.phase {
            Phase::Running => {
                for slot in &self.slots {
                    if let Some(t) = slot.respawn_at {
                        deadline = deadline.min(t);
                    }
                }
                for w in &self.workers {
                    if w.state == State::Starting {
                        deadline = deadline.min(w.spawned_at + self.config.boot_timeout);
                        if let Readiness::After(d) = self.config.readiness {
                            deadline = deadline.min(w.spawned_at + d);
                        }
                    }
                    if let (Some(timeout), Some(beat)) =
                        (self.config.worker_timeout, w.last_heartbeat)
                    {
                        deadline = deadline.min(beat + timeout);
                    }
                    if let Some(at) = w.aborted_at {
                        deadline = deadline.min(at + ABORT_GRACE);
                    }
                    if let Some(at) = w.term_at {
                        deadline = deadline.min(at);
                    }
                }
                if let Some(t) = self.next_limits_check(now) {
                    deadline = deadline.min(t);
                }
            }
            Phase::Stopping { kill_at, .. } => deadline = deadline.min(*kill_at),
        }
        // A closed channel means the worker is exiting; SIGCHLD wakes us, but poll often
        // enough not to depend on it.
        if self.workers.iter().any(|w| w.channel.is_none()) {
            deadline = deadline.min(now + Duration::from_millis(50));
        }
        if let Some(t) = self.health.as_ref().and_then(|h| h.next_deadline()) {
            deadline = deadline.min(t);
        }
        if let Some(t) = self.shutdown_at {
            deadline = deadline.min(t);
        }
        deadline.saturating_duration_since(now)
    }

    /// Sleeps in poll(2) until a signal, a control connection, a worker's message or output,
    /// or the timeout.
    fn wait(&self, timeout: Duration) {
        let mut fds = vec![libc::pollfd {
            fd: self.signals.fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(self.control.as_ref().map(|c| libc::pollfd {
            fd: c.fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        if let Some(h) = &self.health {
            fds.extend(h.poll_fds().into_iter().map(|(fd, events)| libc::pollfd {
                fd,
                events,
                revents: 0,
            }));
        }
        for w in &self.workers {
            let channel = w.channel.as_ref().map(|c| c.as_raw_fd());
            let notify = w.notify.as_ref().map(|n| n.fd());
            let relays = w.relays.iter().map(|r| r.fd());
            fds.extend(
                channel
                    .into_iter()
                    .chain(notify)
                    .chain(relays)
                    .map(|fd| libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    }),
            );
        }
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // Round up, so a deadline 0.4 ms away does not become a busy loop.
        let ms = if ms == 0 && !timeout.is_zero() { 1 } else { ms };
        // SAFETY: fds is a valid array of initialised pollfd structs of the given length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        // Never leave a worker behind, whatever path led here.
        for w in &self.workers {
            process::kill(w.info.pid, libc::SIGKILL);
        }
        for w in &self.workers {
            process::wait_blocking(w.info.pid);
        }
    }
}

/// Drops from the master's resident set the code pages only start-up (or a reload) touched:
/// see `src/trim.rs`.
fn release_startup_pages() {
    match crate::sys::trim::release_startup_pages() {
        Ok(t) => debug!(
            "released start-up pages: {} KiB of {} KiB resident in {} read-only mappings ({})",
            t.before.saturating_sub(t.after) / 1024,
            t.before / 1024,
            t.mappings,
            if t.unmapped { "unmapped" } else { "reclaimed" }
        ),
        Err(e) => debug!("start-up pages not released: {e}"),
    }
}

fn signame(sig: libc::c_int) -> String {
    process::signal_name(sig)
        .map(str::to_string)
        .unwrap_or_else(|| format!("signal {sig}"))
}

/// Raises the open-file limit to its hard value before anything is bound or spawned, so every
/// worker inherits it (`sys/limits.rs`). A failure is logged: the server runs on with the
/// limit it has.
fn raise_nofile_limit() {
    match crate::sys::limits::raise_nofile() {
        Ok(r) if r.to > r.from => {
            info!("raised the open-file limit from {} to {}", r.from, r.to)
        }
        Ok(r) => debug!("open-file limit: {} (already the most allowed)", r.to),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

/// Says, once, whether the kernel migrates connections queued on a closed reuseport socket.
fn note_migrate_req() {
    match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(v) if v.trim() == "1" => debug!("net.ipv4.tcp_migrate_req = 1: removing a worker loses no queued connection"),
        Ok(_) => debug!(
            "net.ipv4.tcp_migrate_req = 0: lowering the worker count (TTOU) may reset connections \
             queued on the removed worker's socket; reloads and restarts keep the sockets and lose none"
        ),
        Err(_) => {}
    }
}

/// A duration as people read it: 4s, 3m12s, 2h05m, 3d04h.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}
