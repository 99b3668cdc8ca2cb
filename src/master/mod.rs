//! The master: one single-threaded event loop that binds, spawns, reaps and decides.
//!
//! Each tick: wait (poll) on the signal pipe and the workers' status channels, turn signals
//! into intents, read worker messages, reap exited workers, then manage: start the workers
//! that are due, enforce boot and stop deadlines. The master never assumes a worker is ready:
//! the worker says so on its channel.

pub(crate) mod policy;

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::hooks::{Event, Hooks, WorkerInfo};
use crate::master::policy::{Backoff, CrashWindow};
use crate::protocol::{Message, BOOT_ERROR_EXIT_CODE};
use crate::spawn::{self, exec::CommandLine, ChildSetup, Spawn, SpawnSpec, WorkerSlot};
use crate::sys::listener::{self, BindOptions, BoundAddr};
use crate::sys::process::{self, ExitStatus, Wait};
use crate::sys::signals::SignalPipe;
use crate::worker::WorkerMain;

/// How long a fast stop (INT, an error) waits before SIGKILL.
const FAST_STOP_GRACE: Duration = Duration::from_secs(1);
/// How long the master waits between its SIGKILL and giving up on reaping.
const KILL_REAP_LIMIT: Duration = Duration::from_secs(5);
/// How long a worker killed for a missed heartbeat has to die of SIGABRT before SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(2);

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
    let opts = BindOptions {
        backlog: i32::try_from(config.backlog).unwrap_or(i32::MAX),
        reuse_port: config.reuse_port,
    };
    if let Some(max) = listener::somaxconn() {
        if max < config.backlog {
            debug!(
                "listen backlog {} is capped by net.core.somaxconn = {max}",
                config.backlog
            );
        }
    }
    let inherited = listener::inherited()?;
    let (inherited, inherited_control) = match inherited {
        Some(i) => (Some(i.bound), i.control),
        None => (None, None),
    };
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
    let notifier =
        crate::sys::notify::Notifier::from_env().map_err(|e| Error::io("NOTIFY_SOCKET", e))?;
    let control = match (&config.control, inherited_control) {
        (Some(path), Some(listener)) => Some(crate::sys::control::ControlSocket::inherited(
            listener, path,
        )?),
        (Some(path), None) => Some(crate::sys::control::ControlSocket::bind(path)?),
        (None, _) => None,
    };
    let credentials =
        process::resolve_credentials(config.user.as_deref(), config.group.as_deref())?;
    let cpus = if config.pin_workers {
        process::allowed_cpus()
    } else {
        Vec::new()
    };
    let signals = SignalPipe::install().map_err(|e| Error::io("installing signal handlers", e))?;
    let mut master = Master::new(config, hooks, main, bound, signals);
    master.notifier = notifier;
    master.credentials = credentials;
    master.control = control;
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
    master.emit(Event::Listening { addresses });
    let outcome = master.run();
    // Close the sockets (and remove Unix socket files) before returning to the caller.
    drop(master);
    outcome
}

struct Entry {
    info: WorkerInfo,
    channel: Option<UnixStream>,
    inbuf: Vec<u8>,
    spawned_at: Instant,
    ready_at: Option<Instant>,
    boot_error: Option<String>,
    /// Set once the master has asked this worker to stop.
    stopping: bool,
    /// A replacement is on its way; this worker is retired once the replacement serves.
    superseded: bool,
    /// The worker asked to be replaced (its request limit).
    wants_recycle: bool,
    last_heartbeat: Option<Instant>,
    requests: u64,
    /// When the master sent SIGABRT for a missed heartbeat.
    aborted_at: Option<Instant>,
    /// The worker's NOTIFY_SOCKET (Readiness::Notify).
    notify: Option<crate::sys::notify::NotifyListener>,
    /// The worker's stdout and stderr, when relayed.
    relays: Vec<crate::sys::output::Relay>,
}

impl Entry {
    fn serves(&self) -> bool {
        !self.stopping && !self.superseded
    }
}

/// A process just started, with the master's ends of its channels.
struct Spawned {
    pid: u32,
    channel: UnixStream,
    notify: Option<crate::sys::notify::NotifyListener>,
    relays: Vec<crate::sys::output::Relay>,
}

struct SlotState {
    backoff: Backoff,
    respawn_at: Option<Instant>,
    /// The crashed worker this slot's next spawn replaces.
    replaces: Option<WorkerInfo>,
    restarts: u64,
}

impl SlotState {
    fn due_now() -> SlotState {
        SlotState {
            backoff: Backoff::default(),
            respawn_at: Some(Instant::now()),
            replaces: None,
            restarts: 0,
        }
    }
}

/// A rolling reload in progress: the new generation starts; the old one serves until every
/// new worker is ready.
struct Reload {
    previous: u64,
}

enum Phase {
    Running,
    Stopping {
        graceful: bool,
        kill_at: Instant,
        killed: bool,
        outcome: Result<()>,
    },
}

struct Master {
    config: Config,
    hooks: Hooks,
    main: Arc<WorkerMain>,
    bound: Vec<BoundAddr>,
    signals: SignalPipe,
    workers: Vec<Entry>,
    slots: Vec<SlotState>,
    crashes: CrashWindow,
    generation: u64,
    reload: Option<Reload>,
    reload_queued: bool,
    phase: Phase,
    master_ready: bool,
    pid: u32,
    exec_line: Option<CommandLine>,
    notifier: Option<crate::sys::notify::Notifier>,
    /// The binary and arguments this master started with: what SIGUSR2 executes.
    upgrade_line: Option<CommandLine>,
    /// The new master a binary upgrade started, until it takes over or fails.
    upgrade: Option<u32>,
    /// The master this one replaces (a binary upgrade), retired once this one serves.
    upgrade_from: Option<u32>,
    /// The (uid, gid) workers drop to.
    credentials: Option<(u32, u32)>,
    /// The CPUs workers are pinned to, in order (empty: no pinning).
    cpus: Vec<usize>,
    control: Option<crate::sys::control::ControlSocket>,
    started: Instant,
    spawned: u64,
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
            reload_queued: false,
            phase: Phase::Running,
            master_ready: false,
            pid: std::process::id(),
            exec_line: None,
            notifier: None,
            upgrade_line: CommandLine::current_exe().ok(),
            upgrade: None,
            upgrade_from: std::env::var(crate::protocol::ENV_UPGRADE_FROM)
                .ok()
                .and_then(|p| p.parse().ok()),
            credentials: None,
            cpus: Vec::new(),
            control: None,
            started: Instant::now(),
            spawned: 0,
        }
    }

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
            for sig in self.signals.take() {
                self.on_signal(sig);
            }
            self.on_control();
            self.read_channels();
            self.reap();
        }
    }

    fn emit(&mut self, event: Event) {
        if let Err(e) = self.hooks.emit(event) {
            error!("{e}");
            self.stop(false, Err(e));
        }
    }

    fn running(&self) -> bool {
        matches!(self.phase, Phase::Running)
    }

    // ---- signals become intents here, and only here ----

    fn on_signal(&mut self, sig: libc::c_int) {
        match sig {
            libc::SIGTERM | libc::SIGQUIT => {
                if let Some(new) = self.upgrade {
                    info!("handing over to the new master (pid {new})");
                    for b in &mut self.bound {
                        b.hand_over();
                    }
                    if let Some(c) = &mut self.control {
                        c.hand_over();
                    }
                }
                info!("received {}: graceful stop", signame(sig));
                self.stop(true, Ok(()));
            }
            libc::SIGINT => {
                info!("received SIGINT: fast stop");
                self.stop(false, Ok(()));
            }
            libc::SIGHUP => self.start_reload(),
            libc::SIGTTIN => self.scale(self.slots.len() + 1),
            libc::SIGTTOU => self.scale(self.slots.len().saturating_sub(1)),
            libc::SIGCHLD => {} // reaping happens every tick
            libc::SIGUSR2 => self.start_upgrade(),
            _ => {}
        }
    }

    // ---- the control socket: commands become the same intents as signals ----

    fn on_control(&mut self) {
        use crate::sys::control::{reply, Command};
        let Some(control) = &self.control else {
            return;
        };
        for (stream, command) in control.accept() {
            match command {
                Some(Command::Status) => reply(stream, &self.status()),
                Some(Command::Reload) => {
                    self.start_reload();
                    reply(
                        stream,
                        &format!("reloading: generation {}\n", self.generation),
                    );
                }
                Some(Command::Stop) => {
                    reply(stream, "stopping\n");
                    self.stop(true, Ok(()));
                }
                Some(Command::Incr) => {
                    self.scale(self.slots.len() + 1);
                    reply(stream, &format!("workers: {}\n", self.slots.len()));
                }
                Some(Command::Decr) => {
                    self.scale(self.slots.len().saturating_sub(1));
                    reply(stream, &format!("workers: {}\n", self.slots.len()));
                }
                None => reply(
                    stream,
                    "error: unknown command; use status, reload, stop, incr or decr\n",
                ),
            }
        }
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
            "{:<4} {:<8} {:<4} {:<9} {:<8} {:>10} {:>8}",
            "ID", "PID", "GEN", "STATE", "UPTIME", "REQUESTS", "RESTARTS"
        );
        let mut rows: Vec<&Entry> = self.workers.iter().collect();
        rows.sort_by_key(|w| (w.info.id, w.info.generation));
        for w in rows {
            let state = if w.stopping {
                "stopping"
            } else if w.ready_at.is_none() {
                "booting"
            } else if w.superseded {
                "replaced"
            } else {
                "ready"
            };
            let restarts = self.slots.get(w.info.id).map_or(0, |s| s.restarts);
            let _ = writeln!(
                out,
                "{:<4} {:<8} {:<4} {:<9} {:<8} {:>10} {:>8}",
                w.info.id,
                w.info.pid,
                w.info.generation,
                state,
                human(w.spawned_at.elapsed()),
                w.requests,
                restarts
            );
        }
        out
    }

    // ---- binary upgrade ----

    /// SIGUSR2: executes the binary again (the file may have been replaced) as a new master
    /// that inherits the listening sockets. Once its workers serve it sends this master
    /// SIGTERM, and this one drains and exits. If it fails first, this master keeps serving.
    fn start_upgrade(&mut self) {
        if !self.running() {
            return;
        }
        if let Some(pid) = self.upgrade {
            warn!("received SIGUSR2: an upgrade (new master pid {pid}) is already under way");
            return;
        }
        let Some(line) = self.upgrade_line.clone() else {
            error!("received SIGUSR2: cannot upgrade, the path of this binary is unknown");
            return;
        };
        let mut sockets: Vec<(i32, String)> = listener::handover_list(&self.bound)
            .into_iter()
            .map(|(s, name)| (s.as_raw_fd(), name))
            .collect();
        if let Some(c) = &self.control {
            sockets.push((c.handover_fd(), listener::CONTROL_FD_NAME.to_string()));
        }
        match spawn::exec::spawn_master(&line, &sockets, self.pid) {
            Ok(pid) => {
                info!(
                    "received SIGUSR2: new master pid {pid} ({}) starting with {} sockets",
                    line.program.display(),
                    sockets.len()
                );
                self.upgrade = Some(pid);
                self.emit(Event::UpgradeStarted { pid });
            }
            Err(e) => error!("binary upgrade failed: {e}; this master keeps serving"),
        }
    }

    /// Reaps a new master that exited before it took over.
    fn reap_upgrade(&mut self) {
        let Some(pid) = self.upgrade else { return };
        if let Wait::Exited(status) = process::try_wait(pid) {
            error!(
                "binary upgrade failed: the new master (pid {pid}) {status} before it took over; \
                 this master keeps serving (see the new master's log above)"
            );
            self.upgrade = None;
            self.emit(Event::UpgradeFailed { pid, status });
        }
    }

    /// In a master started by a binary upgrade: retire the old master now that this one serves.
    fn retire_old_master(&mut self) {
        let Some(old) = self.upgrade_from.take() else {
            return;
        };
        for b in &mut self.bound {
            b.adopt();
        }
        if let Some(c) = &mut self.control {
            c.adopt();
        }
        if process::parent_pid() == old {
            info!("serving: asking the previous master (pid {old}) to drain and exit");
            process::kill(old, libc::SIGTERM);
        }
    }

    // ---- reload and scaling ----

    /// SIGHUP: start a new generation of every worker; the old one keeps serving until all of
    /// the new one is ready, then drains gracefully. A reload asked for during a reload runs
    /// once the current one ends.
    fn start_reload(&mut self) {
        if !self.running() {
            return;
        }
        if self.reload.is_some() {
            info!("received SIGHUP during a reload: reloading again once it is done");
            self.reload_queued = true;
            return;
        }
        let previous = self.generation;
        self.generation += 1;
        info!(
            "received SIGHUP: starting generation {} ({} workers)",
            self.generation,
            self.slots.len()
        );
        self.reload = Some(Reload { previous });
        if let Some(n) = &self.notifier {
            n.reloading();
        }
        let now = Instant::now();
        for slot in &mut self.slots {
            slot.respawn_at = Some(now);
            slot.replaces = None;
        }
        self.emit(Event::ReloadStarted {
            generation: self.generation,
        });
    }

    /// Gives up a reload whose new generation cannot boot: its workers stop, the previous
    /// generation keeps serving.
    fn abort_reload(&mut self, reason: String) {
        let Some(reload) = self.reload.take() else {
            return;
        };
        let failed = self.generation;
        error!(
            "reload to generation {failed} failed: {reason}; generation {} keeps serving",
            reload.previous
        );
        for w in &mut self.workers {
            if w.info.generation == failed && !w.stopping {
                w.stopping = true;
                process::kill(w.info.pid, libc::SIGTERM);
            }
        }
        self.generation = reload.previous;
        for slot in &mut self.slots {
            slot.respawn_at = None;
        }
        // Slots the previous generation does not fill (a worker of it died meanwhile) start
        // again now.
        let now = Instant::now();
        for id in 0..self.slots.len() {
            if !self.slot_served(id) {
                self.slots[id].respawn_at = Some(now);
            }
        }
        self.reload_queued = false;
        if let Some(n) = &self.notifier {
            n.ready(&format!(
                "reload failed; generation {} serving",
                self.generation
            ));
        }
        self.emit(Event::ReloadFailed {
            generation: failed,
            reason,
        });
    }

    /// SIGTTIN / SIGTTOU: one worker more or fewer.
    fn scale(&mut self, target: usize) {
        if !self.running() {
            return;
        }
        if target == 0 {
            warn!("received SIGTTOU with one worker left: ignored");
            return;
        }
        let opts = self.bind_options();
        while self.slots.len() < target {
            for b in &mut self.bound {
                if let Err(e) = listener::add_slot(b, opts) {
                    error!("cannot add a worker: {e}");
                    return;
                }
            }
            self.slots.push(SlotState::due_now());
        }
        while self.slots.len() > target {
            self.slots.pop();
            for b in &mut self.bound {
                listener::remove_slot(b);
            }
        }
        info!("workers: {}", self.slots.len());
        self.emit(Event::WorkersChanged {
            workers: self.slots.len(),
        });
    }

    fn bind_options(&self) -> BindOptions {
        BindOptions {
            backlog: i32::try_from(self.config.backlog).unwrap_or(i32::MAX),
            reuse_port: self.config.reuse_port,
        }
    }

    // ---- stopping ----

    /// Begins (or escalates) a stop. The first error wins over a plain stop request.
    fn stop(&mut self, graceful: bool, outcome: Result<()>) {
        let now = Instant::now();
        match &mut self.phase {
            Phase::Stopping {
                graceful: current,
                kill_at,
                outcome: existing,
                ..
            } => {
                if existing.is_ok() && outcome.is_err() {
                    *existing = outcome;
                }
                if *current && !graceful {
                    *current = false;
                    *kill_at = (*kill_at).min(now + FAST_STOP_GRACE);
                    self.signal_all(libc::SIGINT);
                } else if !*current && !graceful {
                    // A second fast stop: no more waiting.
                    *kill_at = now;
                }
                return;
            }
            Phase::Running => {}
        }
        let wait = if graceful {
            self.config.graceful_timeout + Duration::from_millis(500)
        } else {
            FAST_STOP_GRACE
        };
        self.phase = Phase::Stopping {
            graceful,
            kill_at: now + wait,
            killed: false,
            outcome,
        };
        for slot in &mut self.slots {
            slot.respawn_at = None;
        }
        self.reload = None;
        if let Some(n) = &self.notifier {
            n.stopping();
        }
        // Close the master's copies of the listening sockets: once the workers have closed
        // theirs, new connections are refused at once instead of queueing for nobody.
        self.bound.clear();
        self.hooks
            .emit(Event::Stopping { graceful })
            .unwrap_or_default();
        self.signal_all(if graceful {
            libc::SIGTERM
        } else {
            libc::SIGINT
        });
    }

    fn signal_all(&mut self, sig: libc::c_int) {
        for w in &mut self.workers {
            w.stopping = true;
            process::kill(w.info.pid, sig);
        }
    }

    /// Asks one worker to drain and exit.
    fn retire(w: &mut Entry, why: &str) {
        if !w.stopping {
            debug!("retiring worker {} (pid {}): {why}", w.info.id, w.info.pid);
            w.stopping = true;
            process::kill(w.info.pid, libc::SIGTERM);
        }
    }

    // ---- the supervision verbs ----

    fn manage(&mut self) {
        let now = Instant::now();
        if let Phase::Stopping {
            kill_at, killed, ..
        } = &mut self.phase
        {
            if !*killed && now >= *kill_at {
                *killed = true;
                *kill_at = now + KILL_REAP_LIMIT;
                for w in &self.workers {
                    warn!(
                        "worker {} (pid {}) did not stop in time: SIGKILL",
                        w.info.id, w.info.pid
                    );
                    process::kill(w.info.pid, libc::SIGKILL);
                }
            } else if *killed && now >= *kill_at {
                // Unreapable (a worker stuck in the kernel): give up on it.
                for w in self.workers.drain(..) {
                    error!("worker pid {} could not be reaped", w.info.pid);
                }
            }
            return;
        }
        self.spawn_due(now);
        if !self.running() {
            return;
        }
        self.ready_by_delay(now);
        self.retire_replaced();
        self.start_recycle(now);
        self.murder(now);
        self.check_boot_deadlines(now);
    }

    /// Readiness::After: a worker that stayed up long enough counts as ready.
    fn ready_by_delay(&mut self, now: Instant) {
        let crate::spawn::Readiness::After(delay) = self.config.readiness else {
            return;
        };
        let mut events = Vec::new();
        for w in &mut self.workers {
            if w.ready_at.is_none() && !w.stopping && now - w.spawned_at >= delay {
                w.ready_at = Some(now);
                events.push(Event::WorkerReady(w.info));
            }
        }
        for e in events {
            self.emit(e);
        }
        self.check_master_ready();
    }

    /// True if a worker of the current generation serves (or boots for) slot `id`.
    fn slot_served(&self, id: usize) -> bool {
        self.workers
            .iter()
            .any(|w| w.info.id == id && w.info.generation == self.generation && w.serves())
    }

    fn spawn_due(&mut self, now: Instant) {
        for id in 0..self.slots.len() {
            let due = self.slots[id].respawn_at.is_some_and(|t| t <= now);
            if due && !self.slot_served(id) {
                self.slots[id].respawn_at = None;
                self.spawn(id);
                if !self.running() {
                    return;
                }
            } else if due {
                self.slots[id].respawn_at = None;
            }
        }
    }

    /// Retires the workers whose replacements serve: the previous generation once every
    /// slot of the new one is ready, a recycled worker once its slot's replacement is, and
    /// the workers of slots removed by TTOU.
    fn retire_replaced(&mut self) {
        let generation = self.generation;
        let slots = self.slots.len();
        let ready_slots: Vec<bool> = (0..slots)
            .map(|id| {
                self.workers.iter().any(|w| {
                    w.info.id == id
                        && w.info.generation == generation
                        && w.serves()
                        && w.ready_at.is_some()
                })
            })
            .collect();
        let all_ready = ready_slots.iter().all(|&r| r);
        if let (Some(_), true) = (&self.reload, all_ready) {
            self.reload = None;
            for w in &mut self.workers {
                if w.info.generation < generation {
                    Master::retire(w, "its generation was replaced");
                }
            }
            let workers: Vec<WorkerInfo> = self
                .workers
                .iter()
                .filter(|w| w.info.generation == generation && w.serves())
                .map(|w| w.info)
                .collect();
            info!("generation {generation} serves: {} workers", workers.len());
            if let Some(n) = &self.notifier {
                n.ready(&format!(
                    "generation {generation}: {} workers serving",
                    workers.len()
                ));
            }
            self.emit(Event::GenerationReady {
                generation,
                workers,
            });
            release_startup_pages();
            if std::mem::take(&mut self.reload_queued) {
                self.start_reload();
            }
        }
        for w in &mut self.workers {
            if w.info.id >= slots {
                Master::retire(w, "the worker count was lowered");
            } else if w.superseded && w.info.generation == generation && ready_slots[w.info.id] {
                Master::retire(w, "its replacement serves");
            }
        }
    }

    /// Replaces, one at a time, the workers that reached their request limit.
    fn start_recycle(&mut self, now: Instant) {
        if self.reload.is_some() || self.workers.iter().any(|w| w.superseded && !w.stopping) {
            return;
        }
        let generation = self.generation;
        if let Some(w) = self.workers.iter_mut().find(|w| {
            w.wants_recycle && w.serves() && w.ready_at.is_some() && w.info.generation == generation
        }) {
            info!(
                "worker {} (pid {}) served {} requests: replacing it",
                w.info.id, w.info.pid, w.requests
            );
            w.superseded = true;
            self.slots[w.info.id].respawn_at = Some(now);
        }
    }

    /// Kills workers whose heartbeat stopped: SIGABRT first (a core dump shows where it was
    /// stuck), SIGKILL if that does not end it.
    fn murder(&mut self, now: Instant) {
        let Some(timeout) = self.config.worker_timeout else {
            return;
        };
        let mut stuck = Vec::new();
        for w in &mut self.workers {
            match (w.aborted_at, w.last_heartbeat) {
                (Some(at), _) if now - at > ABORT_GRACE => {
                    process::kill(w.info.pid, libc::SIGKILL);
                }
                (None, Some(beat)) if !w.stopping && now - beat > timeout => {
                    error!(
                        "worker {} (pid {}) sent no heartbeat for {:?} (worker_timeout {timeout:?}): \
                         SIGABRT",
                        w.info.id,
                        w.info.pid,
                        now - beat
                    );
                    w.aborted_at = Some(now);
                    process::kill(w.info.pid, libc::SIGABRT);
                    stuck.push(w.info);
                }
                _ => {}
            }
        }
        for info in stuck {
            self.emit(Event::WorkerTimedOut(info));
        }
    }

    fn spawn(&mut self, id: usize) {
        let slot = WorkerSlot {
            id,
            generation: self.generation,
        };
        let spawned = match self.spawn_process(slot) {
            Ok(spawned) => spawned,
            Err(e) => {
                if self.reload.is_some() {
                    self.abort_reload(e.to_string());
                } else {
                    error!("{e}");
                    self.stop(false, Err(e));
                }
                return;
            }
        };
        let info = WorkerInfo {
            id,
            pid: spawned.pid,
            generation: self.generation,
        };
        debug!("worker {id} spawned as pid {}", info.pid);
        let mut relays = spawned.relays;
        if self.config.relay_output == Some(true) {
            for r in &mut relays {
                r.set_prefix(format!("[worker {id} pid {}] ", info.pid));
            }
        }
        self.workers.push(Entry {
            info,
            channel: Some(spawned.channel),
            inbuf: Vec::new(),
            spawned_at: Instant::now(),
            ready_at: None,
            boot_error: None,
            stopping: false,
            superseded: false,
            wants_recycle: false,
            last_heartbeat: None,
            requests: 0,
            aborted_at: None,
            notify: spawned.notify,
            relays,
        });
        self.emit(Event::WorkerSpawned(info));
        if let Some(old) = self.slots[id].replaces.take() {
            self.slots[id].restarts += 1;
            info!(
                "worker {id} recovered: pid {} replaced by pid {}",
                old.pid, info.pid
            );
            self.emit(Event::WorkerRecovered { old, new: info });
        }
    }

    fn spawn_process(&mut self, slot: WorkerSlot) -> Result<Spawned> {
        let fail = |reason: String| Error::Spawn {
            id: slot.id,
            reason,
        };
        let (master_end, worker_end) = UnixStream::pair()
            .map_err(|e| fail(format!("cannot create its status channel: {e}")))?;
        master_end
            .set_nonblocking(true)
            .map_err(|e| fail(e.to_string()))?;
        let listeners = self
            .bound
            .iter()
            .map(|b| b.socket_for(slot.id).as_fd())
            .collect::<Vec<_>>();
        let mine: Vec<RawFd> = listeners.iter().map(|fd| fd.as_raw_fd()).collect();
        let mut close_in_child: Vec<RawFd> = self.signals.fds().to_vec();
        close_in_child.extend(self.control.as_ref().map(|c| c.fd()));
        close_in_child.push(master_end.as_raw_fd());
        close_in_child.extend(
            self.workers
                .iter()
                .filter_map(|w| w.channel.as_ref().map(|c| c.as_raw_fd())),
        );
        close_in_child.extend(
            self.bound
                .iter()
                .flat_map(|b| b.all_sockets())
                .map(|s| s.as_raw_fd())
                .filter(|fd| !mine.contains(fd)),
        );
        let cpu = (!self.cpus.is_empty()).then(|| self.cpus[slot.id % self.cpus.len()]);
        // SO_INCOMING_CPU exists on Linux only; elsewhere pinning is the worker's affinity alone.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(cpu) = cpu {
            for b in &self.bound {
                if b.is_per_slot() {
                    if let Err(e) = b.socket_for(slot.id).set_cpu_affinity(cpu) {
                        debug!("SO_INCOMING_CPU {cpu} on worker {}'s socket: {e}", slot.id);
                    }
                }
            }
        }
        let foreign = !matches!(self.config.spawn, Spawn::Fork);
        self.spawned += 1;
        let notify = match (self.config.readiness, foreign) {
            (crate::spawn::Readiness::Notify, true) => Some(
                crate::sys::notify::NotifyListener::new(self.pid, self.spawned)
                    .map_err(|e| fail(format!("cannot create its NOTIFY_SOCKET: {e}")))?,
            ),
            _ => None,
        };
        let mut relays = Vec::new();
        let mut relay_writers = Vec::new();
        if self.config.relay_output.is_some() && foreign {
            for to_stderr in [false, true] {
                let (relay, writer) = crate::sys::output::Relay::pipe(to_stderr)
                    .map_err(|e| fail(format!("cannot create its output pipe: {e}")))?;
                relays.push(relay);
                relay_writers.push(writer);
            }
        }
        let spec = SpawnSpec {
            slot,
            master_pid: self.pid,
            listeners,
            status: worker_end.as_fd(),
            close_in_child,
            setup: ChildSetup {
                cpu,
                credentials: self.credentials,
            },
            stdio: match relay_writers.as_slice() {
                [out, err] => Some([out.as_raw_fd(), err.as_raw_fd()]),
                _ => None,
            },
        };
        let pid = match &self.config.spawn {
            Spawn::Fork => spawn::fork::spawn(&spec, &*self.main),
            other => {
                let line = match (&self.exec_line, other) {
                    (Some(line), Spawn::Exec) => Ok(line.clone()),
                    _ => CommandLine::for_spawn(other, &spec),
                }
                .map_err(|e| fail(format!("cannot find the command to run: {e}")))?;
                if matches!(other, Spawn::Exec) && self.exec_line.is_none() {
                    self.exec_line = Some(line.clone());
                }
                let mut line = line;
                if let Some(n) = &notify {
                    line.env
                        .push(("NOTIFY_SOCKET".into(), Some(n.env_value().into())));
                }
                spawn::exec::spawn(&line, &spec)
            }
        }
        .map_err(|e| fail(e.to_string()))?;
        Ok(Spawned {
            pid,
            channel: master_end,
            notify,
            relays,
        })
    }

    fn check_boot_deadlines(&mut self, now: Instant) {
        let limit = self.config.boot_timeout;
        let late = self
            .workers
            .iter_mut()
            .find(|w| w.ready_at.is_none() && !w.stopping && now - w.spawned_at > limit);
        if let Some(w) = late {
            // Killed, it exits before ready: on_exit reports it as failing to boot.
            w.boot_error = Some(format!(
                "it did not report ready within {limit:?} (raise boot_timeout if it needs longer)"
            ));
            process::kill(w.info.pid, libc::SIGKILL);
        }
    }

    // ---- messages and exits ----

    fn read_channels(&mut self) {
        let mut events = Vec::new();
        let now = Instant::now();
        for w in &mut self.workers {
            w.relays.retain_mut(|r| r.pump());
            let notices = w.notify.as_ref().map(|n| n.read()).unwrap_or_default();
            for notice in notices {
                match notice {
                    crate::sys::notify::WorkerNotice::Ready if w.ready_at.is_none() => {
                        w.ready_at = Some(now);
                        events.push(Event::WorkerReady(w.info));
                    }
                    crate::sys::notify::WorkerNotice::Watchdog => w.last_heartbeat = Some(now),
                    crate::sys::notify::WorkerNotice::Ready => {}
                }
            }
            for msg in drain_channel(w) {
                match msg {
                    Message::Ready => {
                        if w.ready_at.is_none() {
                            w.ready_at = Some(now);
                            debug!(
                                "worker {} (pid {}) ready in {:?}",
                                w.info.id,
                                w.info.pid,
                                w.spawned_at.elapsed()
                            );
                            events.push(Event::WorkerReady(w.info));
                        }
                    }
                    Message::BootError(text) => w.boot_error = Some(text),
                    Message::Heartbeat { requests } => {
                        w.last_heartbeat = Some(now);
                        w.requests = requests;
                    }
                    Message::Recycle => w.wants_recycle = true,
                }
            }
        }
        for e in events {
            self.emit(e);
        }
        self.check_master_ready();
    }

    fn check_master_ready(&mut self) {
        if self.master_ready || !self.running() {
            return;
        }
        let ready: Vec<WorkerInfo> = self
            .workers
            .iter()
            .filter(|w| w.ready_at.is_some())
            .map(|w| w.info)
            .collect();
        if ready.len() == self.slots.len() {
            self.master_ready = true;
            let pids: Vec<String> = ready.iter().map(|w| w.pid.to_string()).collect();
            info!(
                "all {} workers ready: pids {}",
                ready.len(),
                pids.join(", ")
            );
            if let Some(n) = &self.notifier {
                n.ready(&format!("{} workers serving", ready.len()));
            }
            self.retire_old_master();
            self.emit(Event::MasterReady(ready));
            release_startup_pages();
        }
    }

    fn reap(&mut self) {
        self.reap_upgrade();
        let mut i = 0;
        while i < self.workers.len() {
            let pid = self.workers[i].info.pid;
            let status = match process::try_wait(pid) {
                Wait::Running => {
                    i += 1;
                    continue;
                }
                Wait::Interrupted => continue,
                Wait::Exited(status) => status,
                Wait::Gone(err) => {
                    // ECHILD: someone else reaped it; its status is lost.
                    warn!("worker pid {pid} vanished: {err}");
                    ExitStatus::Exited(-1)
                }
            };
            let mut entry = self.workers.swap_remove(i);
            // What it wrote last is still in the pipe; a grandchild may hold the pipe open, so
            // take what is there without waiting for end of file.
            entry.relays.retain_mut(|r| r.pump());
            for msg in drain_channel(&mut entry) {
                if let Message::BootError(text) = msg {
                    entry.boot_error = Some(text);
                }
            }
            self.on_exit(entry, status);
        }
    }

    fn on_exit(&mut self, entry: Entry, status: ExitStatus) {
        let now = Instant::now();
        let info = entry.info;
        let expected = entry.stopping || !self.running();
        if expected {
            debug!("worker {} (pid {}) {status}", info.id, info.pid);
        } else {
            warn!("worker {} (pid {}) {status}", info.id, info.pid);
        }
        self.emit(Event::WorkerExited {
            worker: info,
            status,
            expected,
        });
        if expected {
            return;
        }
        let Some(ready_at) = entry.ready_at else {
            let message = match (entry.boot_error, status) {
                (Some(text), _) => text,
                (None, ExitStatus::Exited(BOOT_ERROR_EXIT_CODE)) => {
                    "it exited with the boot-error code (3); see its log above".to_string()
                }
                (None, status) => format!("it {status} before it was ready"),
            };
            self.on_boot_failure(info, message);
            return;
        };
        if let Some(crashes) = self.crashes.record(now) {
            let err = Error::OverRecovery {
                crashes,
                window: self.crashes.window(),
                threshold: self.crashes.threshold(),
                id: info.id,
                pid: info.pid,
                status,
            };
            error!("{err}");
            self.stop(true, Err(err));
            return;
        }
        if entry.superseded || info.generation != self.generation || info.id >= self.slots.len() {
            // Its replacement is already on its way (a reload, a recycle) or its slot is gone.
            return;
        }
        let slot = &mut self.slots[info.id];
        let delay = slot.backoff.on_crash(now - ready_at);
        slot.respawn_at = Some(now + delay);
        slot.replaces = Some(info);
        if !delay.is_zero() {
            info!("worker {} restarts in {delay:?} (backoff)", info.id);
        }
    }

    /// A worker that ended before it was ready. During a reload the reload is given up; a
    /// recycled worker whose replacement cannot boot keeps serving; otherwise the master stops
    /// with the worker's error rather than loop on a worker that cannot start.
    fn on_boot_failure(&mut self, info: WorkerInfo, message: String) {
        if self.reload.is_some() && info.generation == self.generation {
            self.abort_reload(format!("worker {} (pid {}): {message}", info.id, info.pid));
            return;
        }
        let generation = self.generation;
        if let Some(old) = self.workers.iter_mut().find(|w| {
            w.info.id == info.id && w.superseded && !w.stopping && w.info.generation == generation
        }) {
            error!(
                "the replacement of worker {} (pid {}) failed to boot: {message}; it keeps serving",
                old.info.id, old.info.pid
            );
            old.superseded = false;
            old.wants_recycle = false;
            return;
        }
        let err = Error::WorkerBoot {
            id: info.id,
            pid: info.pid,
            message,
        };
        error!("{err}");
        self.stop(true, Err(err));
    }

    // ---- waiting ----

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
                    if w.ready_at.is_none() {
                        deadline = deadline.min(w.spawned_at + self.config.boot_timeout);
                        if let crate::spawn::Readiness::After(d) = self.config.readiness {
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
                }
            }
            Phase::Stopping { kill_at, .. } => deadline = deadline.min(*kill_at),
        }
        // A closed channel means the worker is exiting; SIGCHLD wakes us, but poll often
        // enough not to depend on it.
        if self.workers.iter().any(|w| w.channel.is_none()) {
            deadline = deadline.min(now + Duration::from_millis(50));
        }
        deadline.saturating_duration_since(now)
    }

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

/// Reads everything available on a worker's channel; marks it closed at end-of-file.
fn drain_channel(w: &mut Entry) -> Vec<Message> {
    let Some(channel) = &mut w.channel else {
        return Vec::new();
    };
    let mut buf = [0u8; 1024];
    loop {
        match channel.read(&mut buf) {
            Ok(0) => {
                w.channel = None;
                break;
            }
            Ok(n) => w.inbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                w.channel = None;
                break;
            }
        }
    }
    Message::drain(&mut w.inbuf)
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
