//! The master: one single-threaded event loop that binds, spawns, reaps and decides.
//!
//! Each tick: wait (poll) on the signal pipe and the workers' status channels, turn signals
//! into intents, read worker messages, reap exited workers, then manage: start the workers
//! that are due, enforce boot and stop deadlines. The master never assumes a worker is ready:
//! the worker says so on its channel.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use crate::builder::Config;
use crate::error::{Error, ExitStatus, Result};
use crate::hooks::{Event, Hooks, WorkerInfo};
use crate::listener::{self, BindOptions, BoundAddr};
use crate::policy::{Backoff, CrashWindow};
use crate::protocol::{Message, BOOT_ERROR_EXIT_CODE};
use crate::signals::SignalPipe;
use crate::spawn::{self, exec::CommandLine, Spawn, SpawnSpec, WorkerSlot};
use crate::worker::WorkerMain;

/// How long a fast stop (INT, an error) waits before SIGKILL.
const FAST_STOP_GRACE: Duration = Duration::from_secs(1);
/// How long the master waits between its SIGKILL and giving up on reaping.
const KILL_REAP_LIMIT: Duration = Duration::from_secs(5);

/// Runs the master until it stops. Returns `Ok` after a requested stop.
pub(crate) fn run(config: Config, hooks: Hooks, main: Arc<WorkerMain>) -> Result<()> {
    let master_span = tracing::info_span!("master", pid = std::process::id());
    let _entered = master_span.enter();
    config.validate()?;
    if config.spawn.is_fork() {
        let threads = thread_count();
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
    let bound = listener::bind_all(&config.addrs, config.workers, opts)?;
    let signals = SignalPipe::install().map_err(|e| Error::io("installing signal handlers", e))?;
    let mut master = Master::new(config, hooks, main, bound, signals);
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
}

struct SlotState {
    backoff: Backoff,
    respawn_at: Option<Instant>,
    /// The crashed worker this slot's next spawn replaces.
    replaces: Option<WorkerInfo>,
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
    phase: Phase,
    master_ready: bool,
    pid: u32,
    exec_line: Option<CommandLine>,
}

impl Master {
    fn new(
        config: Config,
        hooks: Hooks,
        main: Arc<WorkerMain>,
        bound: Vec<BoundAddr>,
        signals: SignalPipe,
    ) -> Master {
        let slots = (0..config.workers)
            .map(|_| SlotState {
                backoff: Backoff::default(),
                respawn_at: Some(Instant::now()),
                replaces: None,
            })
            .collect();
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
            phase: Phase::Running,
            master_ready: false,
            pid: std::process::id(),
            exec_line: None,
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

    // ---- signals become intents here, and only here ----

    fn on_signal(&mut self, sig: libc::c_int) {
        match sig {
            libc::SIGTERM | libc::SIGQUIT => {
                info!("received {}: graceful stop", signame(sig));
                self.stop(true, Ok(()));
            }
            libc::SIGINT => {
                info!("received SIGINT: fast stop");
                self.stop(false, Ok(()));
            }
            libc::SIGCHLD => {} // reaping happens every tick
            libc::SIGHUP | libc::SIGUSR2 | libc::SIGTTIN | libc::SIGTTOU => {
                warn!("received {}: not supported yet, ignored", signame(sig));
            }
            _ => {}
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
            send_signal(w.info.pid, sig);
        }
    }

    // ---- spawning ----

    fn manage(&mut self) {
        let now = Instant::now();
        match &mut self.phase {
            Phase::Running => {
                for id in 0..self.slots.len() {
                    let due = self.slots[id].respawn_at.is_some_and(|t| t <= now);
                    if due && !self.workers.iter().any(|w| w.info.id == id) {
                        self.slots[id].respawn_at = None;
                        self.spawn(id);
                        if !matches!(self.phase, Phase::Running) {
                            return;
                        }
                    }
                }
                self.check_boot_deadlines(now);
            }
            Phase::Stopping {
                kill_at, killed, ..
            } => {
                if !*killed && now >= *kill_at {
                    *killed = true;
                    *kill_at = now + KILL_REAP_LIMIT;
                    for w in &self.workers {
                        warn!(
                            "worker {} (pid {}) did not stop in time: SIGKILL",
                            w.info.id, w.info.pid
                        );
                        send_signal(w.info.pid, libc::SIGKILL);
                    }
                } else if *killed && now >= *kill_at {
                    // Unreapable (a worker stuck in the kernel): give up on it.
                    for w in self.workers.drain(..) {
                        error!("worker pid {} could not be reaped", w.info.pid);
                    }
                }
            }
        }
    }

    fn spawn(&mut self, id: usize) {
        let slot = WorkerSlot {
            id,
            generation: self.generation,
        };
        let pid = match self.spawn_process(slot) {
            Ok(pid) => pid,
            Err(e) => {
                error!("{e}");
                self.stop(false, Err(e));
                return;
            }
        };
        let info = WorkerInfo {
            id,
            pid: pid.0,
            generation: self.generation,
        };
        debug!("worker {id} spawned as pid {}", info.pid);
        self.workers.push(Entry {
            info,
            channel: Some(pid.1),
            inbuf: Vec::new(),
            spawned_at: Instant::now(),
            ready_at: None,
            boot_error: None,
            stopping: false,
        });
        self.emit(Event::WorkerSpawned(info));
        if let Some(old) = self.slots[id].replaces.take() {
            info!(
                "worker {id} recovered: pid {} replaced by pid {}",
                old.pid, info.pid
            );
            self.emit(Event::WorkerRecovered { old, new: info });
        }
    }

    fn spawn_process(&mut self, slot: WorkerSlot) -> Result<(u32, UnixStream)> {
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
        let spec = SpawnSpec {
            slot,
            master_pid: self.pid,
            listeners,
            status: worker_end.as_fd(),
            close_in_child,
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
                spawn::exec::spawn(&line, &spec)
            }
        }
        .map_err(|e| fail(e.to_string()))?;
        Ok((pid, master_end))
    }

    fn check_boot_deadlines(&mut self, now: Instant) {
        let limit = self.config.boot_timeout;
        let late = self
            .workers
            .iter_mut()
            .find(|w| w.ready_at.is_none() && !w.stopping && now - w.spawned_at > limit);
        if let Some(w) = late {
            w.stopping = true;
            send_signal(w.info.pid, libc::SIGKILL);
            let err = Error::WorkerBoot {
                id: w.info.id,
                pid: w.info.pid,
                message: format!(
                    "it did not report ready within {limit:?} (raise boot_timeout if it needs longer)"
                ),
            };
            error!("{err}");
            self.stop(true, Err(err));
        }
    }

    // ---- messages and exits ----

    fn read_channels(&mut self) {
        let mut events = Vec::new();
        for w in &mut self.workers {
            for msg in drain_channel(w) {
                match msg {
                    Message::Ready => {
                        if w.ready_at.is_none() {
                            w.ready_at = Some(Instant::now());
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
                }
            }
        }
        for e in events {
            self.emit(e);
        }
        self.check_master_ready();
    }

    fn check_master_ready(&mut self) {
        if self.master_ready || !matches!(self.phase, Phase::Running) {
            return;
        }
        let ready: Vec<WorkerInfo> = self
            .workers
            .iter()
            .filter(|w| w.ready_at.is_some())
            .map(|w| w.info)
            .collect();
        if ready.len() == self.config.workers {
            self.master_ready = true;
            let pids: Vec<String> = ready.iter().map(|w| w.pid.to_string()).collect();
            info!(
                "all {} workers ready: pids {}",
                ready.len(),
                pids.join(", ")
            );
            self.emit(Event::MasterReady(ready));
        }
    }

    fn reap(&mut self) {
        let mut i = 0;
        while i < self.workers.len() {
            let pid = self.workers[i].info.pid;
            let mut raw = 0;
            // SAFETY: waitpid(2) on our own child, with a valid status pointer.
            let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut raw, libc::WNOHANG) };
            let status = match rc {
                0 => {
                    i += 1;
                    continue;
                }
                rc if rc > 0 => ExitStatus::from_wait_status(raw),
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // ECHILD: someone else reaped it; its status is lost.
                    warn!("worker pid {pid} vanished: {err}");
                    ExitStatus::Exited(-1)
                }
            };
            let mut entry = self.workers.swap_remove(i);
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
        let expected = entry.stopping || matches!(self.phase, Phase::Stopping { .. });
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
            let err = Error::WorkerBoot {
                id: info.id,
                pid: info.pid,
                message,
            };
            error!("{err}");
            self.stop(true, Err(err));
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
        let slot = &mut self.slots[info.id];
        let delay = slot.backoff.on_crash(now - ready_at);
        slot.respawn_at = Some(now + delay);
        slot.replaces = Some(info);
        if !delay.is_zero() {
            info!("worker {} restarts in {delay:?} (backoff)", info.id);
        }
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
        fds.extend(self.workers.iter().filter_map(|w| {
            w.channel.as_ref().map(|c| libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
        }));
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
            send_signal(w.info.pid, libc::SIGKILL);
        }
        for w in &self.workers {
            let mut raw = 0;
            // SAFETY: reaping our own child after SIGKILL.
            unsafe { libc::waitpid(w.info.pid as libc::pid_t, &mut raw, 0) };
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

fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a worker pid we have not reaped yet, so it cannot be reused.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

fn signame(sig: libc::c_int) -> String {
    crate::error::signal_name(sig)
        .map(str::to_string)
        .unwrap_or_else(|| format!("signal {sig}"))
}

/// Threads of this process (Linux: entries of /proc/self/task). Elsewhere 1, unchecked.
fn thread_count() -> usize {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        std::fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(1)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        1
    }
}
