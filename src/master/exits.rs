//! Workers that end, and workers that must be ended: reaping, crash handling (respawn with
//! backoff; the crash window), boot failures (a worker that ends before it is ready stops the
//! server or gives up a reload instead of looping), and the deadlines that kill a worker (boot
//! timeout, missed heartbeats).

use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::policy::MAX_BOOT_FAILURES;
use super::pool::{Entry, State};
use super::Master;
use crate::error::Error;
use crate::hooks::{Event, WorkerInfo};
use crate::protocol::{Message, BOOT_ERROR_EXIT_CODE};
use crate::sys::process::{self, ExitStatus, Wait};

/// How long a worker killed for a missed heartbeat has to die of SIGABRT before SIGKILL.
pub(super) const ABORT_GRACE: Duration = Duration::from_secs(2);

impl Master {
    /// Reaps every worker (and a failed new master) that has ended.
    pub(super) fn reap(&mut self) {
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
            for msg in entry.drain_channel() {
                if let Message::BootError(text) = msg {
                    entry.boot_error = Some(text);
                }
            }
            self.on_exit(entry, status);
        }
    }

    /// A worker ended: expected (asked to stop), a boot failure, or a crash to respawn.
    fn on_exit(&mut self, entry: Entry, status: ExitStatus) {
        let now = Instant::now();
        let info = entry.info;
        let expected = entry.is_stopping() || !self.running();
        if expected {
            self.stats.exits_expected += 1;
            debug!("worker {} (pid {}) {status}", info.id, info.pid);
            self.emit(Event::WorkerExited {
                worker: info,
                status,
                expected,
            });
            return;
        }
        let Some(ready_since) = entry.ready_since() else {
            self.stats.exits_boot_failure += 1;
            warn!(
                "worker {} (pid {}) {status} before it was ready: {}",
                info.id,
                info.pid,
                exit_hint(status)
            );
            self.emit(Event::WorkerExited {
                worker: info,
                status,
                expected,
            });
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
        self.stats.exits_crash += 1;
        let crashes = self.crashes.record(now);
        warn!(
            "worker {} (pid {}) {status}: {} ({crashes} crashes in the last {:?})",
            info.id,
            info.pid,
            exit_hint(status),
            self.crashes.window()
        );
        self.emit(Event::WorkerExited {
            worker: info,
            status,
            expected,
        });
        if let Some(threshold) = self.crashes.exceeded(crashes) {
            let err = Error::OverRecovery {
                crashes,
                window: self.crashes.window(),
                threshold,
                id: info.id,
                pid: info.pid,
                status,
            };
            error!("{err}");
            self.stop(true, Err(err));
            return;
        }
        let superseded = matches!(entry.state, State::Superseded { .. });
        if superseded || info.generation != self.generation || info.id >= self.slots.len() {
            // Its replacement is already on its way (a reload, a recycle) or its slot is gone.
            return;
        }
        let slot = &mut self.slots[info.id];
        let delay = slot.backoff.on_crash(now - ready_since);
        slot.respawn_at = Some(now + delay);
        slot.replaces = Some(info);
        if !delay.is_zero() {
            info!(
                "worker {} restarts in {delay:?} (backoff): it keeps crashing soon after it is ready",
                info.id
            );
        }
    }

    /// A worker that ended before it was ready. During a reload the reload is given up; a
    /// recycled worker whose replacement cannot boot keeps serving; in the first generation
    /// the master stops with the worker's error (a server that cannot start says so at once);
    /// later, the slot is retried with backoff, and the master stops only once
    /// [`MAX_BOOT_FAILURES`] spawns in a row have failed.
    fn on_boot_failure(&mut self, info: WorkerInfo, message: String) {
        if self.reload.is_some() && info.generation == self.generation {
            self.abort_reload(format!("worker {} (pid {}): {message}", info.id, info.pid));
            return;
        }
        let generation = self.generation;
        if let Some(old) = self.workers.iter_mut().find(|w| {
            w.info.id == info.id
                && matches!(w.state, State::Superseded { .. })
                && w.info.generation == generation
        }) {
            error!(
                "the replacement of worker {} (pid {}) failed to boot: {message}; it keeps serving",
                old.info.id, old.info.pid
            );
            old.keep_serving();
            return;
        }
        if info.generation != generation || info.id >= self.slots.len() {
            return;
        }
        let slot = &mut self.slots[info.id];
        let retry = if self.master_ready {
            slot.boot_failed()
        } else {
            None
        };
        if let Some(delay) = retry {
            let now = Instant::now();
            slot.respawn_at = Some(now + delay);
            slot.replaces = Some(info);
            error!(
                "worker {} (pid {}) failed to boot ({} of {MAX_BOOT_FAILURES} in a row): \
                 {message}; trying again in {delay:?}",
                info.id, info.pid, slot.boot_failures
            );
            return;
        }
        let message = if self.master_ready {
            format!("{message} ({MAX_BOOT_FAILURES} starts in a row failed)")
        } else {
            message
        };
        let err = Error::WorkerBoot {
            id: info.id,
            pid: info.pid,
            message,
        };
        error!("{err}");
        self.stop(true, Err(err));
    }

    /// Kills a worker that did not report ready within the boot timeout; its exit is then
    /// reported as a boot failure.
    pub(super) fn check_boot_deadlines(&mut self, now: Instant) {
        let limit = self.config.boot_timeout;
        let late = self
            .workers
            .iter_mut()
            .find(|w| w.state == State::Starting && now - w.spawned_at > limit);
        if let Some(w) = late {
            w.boot_error = Some(format!(
                "it did not report ready within {limit:?} (raise boot_timeout if it needs longer)"
            ));
            process::kill(w.info.pid, libc::SIGKILL);
        }
    }

    /// Kills workers whose heartbeat stopped: SIGABRT first (a core dump shows where it was
    /// stuck), SIGKILL if that does not end it.
    pub(super) fn murder(&mut self, now: Instant) {
        let Some(timeout) = self.config.worker_timeout else {
            return;
        };
        let mut stuck = Vec::new();
        for w in &mut self.workers {
            match (w.aborted_at, w.last_heartbeat) {
                (Some(at), _) if now - at > ABORT_GRACE => {
                    process::kill(w.info.pid, libc::SIGKILL);
                }
                (None, Some(beat)) if !w.is_stopping() && now - beat > timeout => {
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
}

/// What a worker's end says about its cause, and where to look.
pub(super) fn exit_hint(status: ExitStatus) -> &'static str {
    match status {
        ExitStatus::Signaled(libc::SIGKILL) => {
            "the OOM killer or an operator killed it: see `dmesg` or `journalctl -k` for \
             'Out of memory'"
        }
        ExitStatus::Signaled(libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE) => {
            "a crash in native code (unsafe Rust or a C library): allow core dumps \
             (`ulimit -c unlimited`) and read the backtrace"
        }
        ExitStatus::Signaled(libc::SIGABRT) => {
            "it aborted (a panic with panic = \"abort\", abort() in C code, or a missed \
             heartbeat); see its stderr above"
        }
        ExitStatus::Signaled(libc::SIGTERM | libc::SIGINT | libc::SIGQUIT | libc::SIGHUP) => {
            "a signal from outside forklift: send signals to the master, not to its workers"
        }
        ExitStatus::Signaled(_) => "a signal from outside forklift",
        ExitStatus::Exited(0) => {
            "it exited on its own; a worker should run until the master stops it"
        }
        ExitStatus::Exited(BOOT_ERROR_EXIT_CODE) => "the boot-error exit code: see its log above",
        ExitStatus::Exited(_) => "see its log above for why it exited",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hint_names_the_likely_cause() {
        assert!(exit_hint(ExitStatus::Signaled(libc::SIGKILL)).contains("OOM killer"));
        assert!(exit_hint(ExitStatus::Signaled(libc::SIGKILL)).contains("dmesg"));
        assert!(exit_hint(ExitStatus::Signaled(libc::SIGSEGV)).contains("native code"));
        assert!(exit_hint(ExitStatus::Signaled(libc::SIGABRT)).contains("aborted"));
        assert!(exit_hint(ExitStatus::Signaled(libc::SIGTERM)).contains("to the master"));
        assert!(exit_hint(ExitStatus::Exited(0)).contains("on its own"));
        assert!(exit_hint(ExitStatus::Exited(70)).contains("log above"));
    }
}
