//! The worker table: one [`Entry`] per live worker process with its [`State`], one
//! [`SlotState`] per worker slot, and the mechanics that change them: spawning a worker into a
//! slot, reading its channel, and noticing that it (and then the whole pool) is ready.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use tracing::{debug, error, info};

use super::policy::{self, Backoff, RecycleReason, MAX_BOOT_FAILURES};
use super::{release_startup_pages, Master};
use crate::hooks::{Event, WorkerInfo};
use crate::protocol::Message;
use crate::spawn::plan::Plan;
use crate::spawn::{Readiness, WorkerSlot};
use crate::sys::{notify, output, process};

/// Where a worker is in its life, as the master sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Spawned; it has not said that it serves.
    Starting,
    /// Serves since `since`. `recycle`: whether it is to be replaced while it serves.
    Ready { since: Instant, recycle: Recycle },
    /// Serves until its replacement (a recycle) is ready, then is retired.
    Superseded { since: Instant },
    /// Asked to stop (drain or fast); gone once reaped. `ready_since`: when it had become
    /// ready, if it had.
    Stopping { ready_since: Option<Instant> },
}

/// Whether a ready worker is to be replaced (recycled) while it serves, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recycle {
    /// Not due.
    No,
    /// Due for this reason: replaced when its turn comes (one worker at a time).
    Due(RecycleReason),
    /// Its replacement could not boot: it serves on and is not recycled again.
    Never,
}

impl State {
    /// When it became ready, if it did.
    pub(super) fn ready_since(self) -> Option<Instant> {
        match self {
            State::Starting => None,
            State::Ready { since, .. } | State::Superseded { since } => Some(since),
            State::Stopping { ready_since } => ready_since,
        }
    }

    /// The word the control socket's `status` shows.
    pub(super) fn label(self) -> &'static str {
        match self {
            State::Stopping { .. } => "stopping",
            State::Starting => "booting",
            State::Superseded { .. } => "replaced",
            State::Ready { .. } => "ready",
        }
    }
}

/// One live worker process.
pub(super) struct Entry {
    pub(super) info: WorkerInfo,
    pub(super) state: State,
    /// The master's end of its status channel; `None` once closed (the worker is exiting).
    pub(super) channel: Option<UnixStream>,
    inbuf: Vec<u8>,
    pub(super) spawned_at: Instant,
    /// Why it could not boot, as it said on its channel (or as a boot deadline decided).
    pub(super) boot_error: Option<String>,
    pub(super) last_heartbeat: Option<Instant>,
    pub(super) requests: u64,
    /// Connections open at its last heartbeat.
    pub(super) connections: u64,
    /// When the master sent SIGABRT for a missed heartbeat.
    pub(super) aborted_at: Option<Instant>,
    /// A retired worker drains until then, and gets its SIGTERM.
    pub(super) term_at: Option<Instant>,
    /// The worker's NOTIFY_SOCKET (Readiness::Notify).
    pub(super) notify: Option<notify::NotifyListener>,
    /// The worker's stdout and stderr, when relayed.
    pub(super) relays: Vec<output::Relay>,
}

impl Entry {
    /// A worker just spawned.
    fn new(info: WorkerInfo, channel: Option<UnixStream>, now: Instant) -> Entry {
        Entry {
            info,
            state: State::Starting,
            channel,
            inbuf: Vec::new(),
            spawned_at: now,
            boot_error: None,
            last_heartbeat: None,
            requests: 0,
            connections: 0,
            aborted_at: None,
            term_at: None,
            notify: None,
            relays: Vec::new(),
        }
    }

    /// A table row with no process behind it, for the policy's tests.
    #[cfg(test)]
    pub(super) fn for_test(id: usize, generation: u64, state: State) -> Entry {
        let info = WorkerInfo {
            id,
            pid: 1000 + id as u32,
            generation,
        };
        let mut entry = Entry::new(info, None, Instant::now());
        entry.state = state;
        entry
    }

    /// Serves (or boots to serve) its slot: not stopping, not about to be replaced.
    pub(super) fn serves(&self) -> bool {
        matches!(self.state, State::Starting | State::Ready { .. })
    }

    pub(super) fn is_stopping(&self) -> bool {
        matches!(self.state, State::Stopping { .. })
    }

    pub(super) fn ready_since(&self) -> Option<Instant> {
        self.state.ready_since()
    }

    /// Records that it serves. True the first time (a `WorkerReady` event is due).
    fn mark_ready(&mut self, now: Instant) -> bool {
        match self.state {
            State::Starting => {
                self.state = State::Ready {
                    since: now,
                    recycle: Recycle::No,
                };
                true
            }
            State::Stopping { ready_since: None } => {
                self.state = State::Stopping {
                    ready_since: Some(now),
                };
                true
            }
            _ => false,
        }
    }

    /// Its replacement is on its way; it serves until that one is ready.
    pub(super) fn supersede(&mut self) {
        if let State::Ready { since, .. } = self.state {
            self.state = State::Superseded { since };
        }
    }

    /// Its replacement could not boot: it serves on, and is not recycled again.
    pub(super) fn keep_serving(&mut self) {
        if let State::Superseded { since } = self.state {
            self.state = State::Ready {
                since,
                recycle: Recycle::Never,
            };
        }
    }

    /// Marks a ready worker as due for replacement, for `why`, unless it already is or its
    /// last replacement failed. True if it was marked now.
    pub(super) fn recycle_due(&mut self, why: RecycleReason) -> bool {
        if let State::Ready {
            recycle: recycle @ Recycle::No,
            ..
        } = &mut self.state
        {
            *recycle = Recycle::Due(why);
            return true;
        }
        false
    }

    /// Marks it as asked to stop; false if it was already.
    pub(super) fn mark_stopping(&mut self) -> bool {
        if self.is_stopping() {
            return false;
        }
        self.state = State::Stopping {
            ready_since: self.ready_since(),
        };
        true
    }

    /// Asks it to drain and exit (SIGTERM), unless it was asked to stop already.
    ///
    /// Its replacement serves already, so first it drains for [`RETIRE_DRAIN`]: its HTTP/1
    /// responses say `Connection: close` and its HTTP/2 connections get a GOAWAY, so its
    /// clients move on by themselves, instead of racing the close of an idle keep-alive
    /// connection at the TERM (sent by [`Master::term_retired`]).
    pub(super) fn retire(&mut self, why: &str, now: Instant) {
        if self.mark_stopping() {
            debug!(
                "retiring worker {} (pid {}): {why}",
                self.info.id, self.info.pid
            );
            self.tell_drain();
            self.term_at = Some(now + RETIRE_DRAIN);
        }
    }

    /// Tells it that the shutdown delay has begun (a `drain` line on its channel): it closes
    /// HTTP/1 connections after their current request, sends HTTP/2 ones a GOAWAY, and keeps
    /// accepting. Best effort: a full or closed channel means it is busy or going.
    pub(super) fn tell_drain(&mut self) {
        if let Some(channel) = &mut self.channel {
            use std::io::Write as _;
            let _ = channel.write(crate::protocol::DRAIN_LINE);
        }
    }

    /// Reads everything available on its channel; marks the channel closed at end-of-file.
    pub(super) fn drain_channel(&mut self) -> Vec<Message> {
        let Some(channel) = &mut self.channel else {
            return Vec::new();
        };
        let mut buf = [0u8; 1024];
        loop {
            match channel.read(&mut buf) {
                Ok(0) => {
                    self.channel = None;
                    break;
                }
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.channel = None;
                    break;
                }
            }
        }
        Message::drain(&mut self.inbuf)
    }
}

/// How long a retired worker (its generation replaced, recycled, its slot removed) answers with
/// `Connection: close` before its SIGTERM.
pub(super) const RETIRE_DRAIN: Duration = Duration::from_millis(500);

/// One worker slot: what its next spawn waits for.
pub(super) struct SlotState {
    pub(super) backoff: Backoff,
    /// When to start a worker in it (`None`: nothing due).
    pub(super) respawn_at: Option<Instant>,
    /// The crashed worker this slot's next spawn replaces.
    pub(super) replaces: Option<WorkerInfo>,
    pub(super) restarts: u64,
    /// Spawns in a row that ended before they were ready; reset by a ready worker.
    pub(super) boot_failures: u32,
}

impl SlotState {
    /// A slot whose worker starts at once.
    pub(super) fn due_now() -> SlotState {
        SlotState {
            backoff: Backoff::default(),
            respawn_at: Some(Instant::now()),
            replaces: None,
            restarts: 0,
            boot_failures: 0,
        }
    }

    /// Records that this slot's worker ended before it was ready. Returns how long to wait
    /// before the next try, or `None` once [`MAX_BOOT_FAILURES`] tries in a row have failed.
    pub(super) fn boot_failed(&mut self) -> Option<Duration> {
        self.boot_failures += 1;
        (self.boot_failures < MAX_BOOT_FAILURES).then(|| self.backoff.on_crash(Duration::ZERO))
    }
}

impl Master {
    /// Starts a worker in every slot that is due and not served.
    pub(super) fn spawn_due(&mut self, now: Instant) {
        for (id, spawn) in policy::due_slots(&self.slots, &self.workers, self.generation, now) {
            self.slots[id].respawn_at = None;
            if spawn {
                self.spawn(id);
                if !self.running() {
                    return;
                }
            }
        }
    }

    /// Starts a worker of the current generation in slot `id`. A worker that cannot be started
    /// at all gives up a reload in progress, or stops the server.
    fn spawn(&mut self, id: usize) {
        let slot = WorkerSlot {
            id,
            generation: self.generation,
        };
        self.spawned += 1;
        let mut master_fds = self.signals.fds().to_vec();
        master_fds.extend(self.control.as_ref().map(|c| c.fd()));
        master_fds.extend(
            self.workers
                .iter()
                .filter_map(|w| w.channel.as_ref().map(|c| c.as_raw_fd())),
        );
        let plan = Plan {
            slot,
            master_pid: self.pid,
            bound: &self.bound,
            master_fds,
            cpu: (!self.cpus.is_empty()).then(|| self.cpus[id % self.cpus.len()]),
            credentials: self.credentials,
            spawn: &self.config.spawn,
            readiness: self.config.readiness,
            relay_output: self.config.relay_output,
            serial: self.spawned,
        };
        let started = match plan.start(&*self.main, &mut self.exec_line) {
            Ok(started) => started,
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
            pid: started.pid,
            generation: self.generation,
        };
        debug!("worker {id} spawned as pid {}", info.pid);
        self.stats.spawns += 1;
        let mut entry = Entry::new(info, Some(started.channel), Instant::now());
        entry.notify = started.notify;
        entry.relays = started.relays;
        self.workers.push(entry);
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

    /// Sends SIGTERM to the retired workers whose drain is over.
    pub(super) fn term_retired(&mut self, now: Instant) {
        for w in &mut self.workers {
            if w.term_at.is_some_and(|t| now >= t) {
                w.term_at = None;
                process::kill(w.info.pid, libc::SIGTERM);
            }
        }
    }

    /// Readiness::After: a worker that stayed up long enough counts as ready.
    pub(super) fn ready_by_delay(&mut self, now: Instant) {
        let Readiness::After(delay) = self.config.readiness else {
            return;
        };
        let mut events = Vec::new();
        for w in &mut self.workers {
            if w.state == State::Starting && now - w.spawned_at >= delay && w.mark_ready(now) {
                events.push(Event::WorkerReady(w.info));
            }
        }
        self.workers_ready(events);
    }

    /// Reads what the workers said: readiness, boot errors, heartbeats, recycle requests
    /// (and relays their output).
    pub(super) fn read_channels(&mut self) {
        let mut events = Vec::new();
        let now = Instant::now();
        for w in &mut self.workers {
            w.relays.retain_mut(|r| r.pump());
            let notices = w.notify.as_ref().map(|n| n.read()).unwrap_or_default();
            for notice in notices {
                match notice {
                    notify::WorkerNotice::Ready => {
                        if w.mark_ready(now) {
                            events.push(Event::WorkerReady(w.info));
                        }
                    }
                    notify::WorkerNotice::Watchdog => w.last_heartbeat = Some(now),
                }
            }
            for msg in w.drain_channel() {
                match msg {
                    Message::Ready => {
                        if w.mark_ready(now) {
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
                    Message::Heartbeat {
                        requests,
                        connections,
                    } => {
                        w.last_heartbeat = Some(now);
                        w.requests = requests;
                        w.connections = connections;
                    }
                    Message::Recycle => {
                        w.recycle_due(RecycleReason::Requests(w.requests));
                    }
                }
            }
        }
        self.workers_ready(events);
    }

    /// Workers that just became ready: their slots boot again, the hooks hear of them, and
    /// the pool may be ready as a whole.
    fn workers_ready(&mut self, events: Vec<Event>) {
        for e in events {
            if let (Event::WorkerReady(info), Some(_)) = (&e, self.shutdown_at) {
                // Started during a shutdown delay (a respawn): it drains like the others.
                if let Some(w) = self.workers.iter_mut().find(|w| w.info.pid == info.pid) {
                    w.tell_drain();
                }
            }
            if let Event::WorkerReady(info) = &e {
                if let Some(slot) = self.slots.get_mut(info.id) {
                    if info.generation == self.generation {
                        slot.boot_failures = 0;
                    }
                }
            }
            self.emit(e);
        }
        self.check_master_ready();
    }

    /// Once every slot's first worker is ready: say so (log, systemd, the previous master of
    /// a binary upgrade, the `MasterReady` hook) and give back the start-up pages.
    pub(super) fn check_master_ready(&mut self) {
        if self.master_ready || !self.running() {
            return;
        }
        let ready: Vec<WorkerInfo> = self
            .workers
            .iter()
            .filter(|w| w.ready_since().is_some())
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
            // Before the old master (a binary upgrade) is told to go: it then finds the
            // file is no longer its own, and leaves it.
            self.write_pid_file();
            self.retire_old_master();
            self.emit(Event::MasterReady(ready));
            release_startup_pages();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_goes_starting_ready_superseded_stopping() {
        let now = Instant::now();
        let mut w = Entry::for_test(0, 1, State::Starting);
        assert!(w.serves() && w.ready_since().is_none());
        assert!(w.mark_ready(now));
        assert!(!w.mark_ready(now), "ready is reported once");
        assert_eq!(
            w.state,
            State::Ready {
                since: now,
                recycle: Recycle::No
            }
        );
        assert!(w.recycle_due(RecycleReason::Requests(10)));
        assert!(!w.recycle_due(RecycleReason::Requests(11)), "marked once");
        w.supersede();
        assert!(!w.serves());
        assert_eq!(w.state.label(), "replaced");
        w.keep_serving();
        assert!(w.serves());
        assert!(
            !w.recycle_due(RecycleReason::Requests(12)),
            "a worker whose replacement failed is not recycled again"
        );
        w.supersede();
        assert!(w.mark_stopping());
        assert!(!w.mark_stopping(), "stopping is entered once");
        assert_eq!(w.ready_since(), Some(now));
        assert_eq!(w.state.label(), "stopping");
    }

    #[test]
    fn a_worker_stopped_while_booting_may_still_report_ready() {
        let now = Instant::now();
        let mut w = Entry::for_test(0, 1, State::Starting);
        assert_eq!(w.state.label(), "booting");
        assert!(w.mark_stopping());
        assert!(w.ready_since().is_none());
        assert!(w.mark_ready(now));
        assert_eq!(w.ready_since(), Some(now));
        assert!(w.is_stopping());
    }

    #[test]
    fn a_slot_retries_a_failed_boot_with_backoff_until_the_limit() {
        let mut slot = SlotState::due_now();
        let delays: Vec<Duration> = std::iter::from_fn(|| slot.boot_failed()).collect();
        assert_eq!(delays.len() as u32, MAX_BOOT_FAILURES - 1);
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[1], Duration::from_millis(100));
        assert!(delays.windows(2).all(|d| d[0] <= d[1]), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        let total: Duration = delays.iter().sum();
        assert!(
            total >= Duration::from_secs(20) && total <= Duration::from_secs(40),
            "about 30 s of retries: {total:?}"
        );
    }

    #[test]
    fn only_a_ready_worker_can_be_superseded() {
        let mut w = Entry::for_test(0, 1, State::Starting);
        w.supersede();
        assert_eq!(w.state, State::Starting);
    }
}
