//! Stopping: graceful (TERM, QUIT: workers drain within the graceful timeout) or fast (INT:
//! workers drop their connections), escalating on deadlines to SIGKILL and a final reap.

use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::Master;
use crate::error::Result;
use crate::hooks::Event;
use crate::sys::process;

/// How long a fast stop (INT, an error) waits before SIGKILL.
const FAST_STOP_GRACE: Duration = Duration::from_secs(1);
/// How long the master waits between its SIGKILL and giving up on reaping.
const KILL_REAP_LIMIT: Duration = Duration::from_secs(5);

/// Whether the master runs or stops.
pub(super) enum Phase {
    Running,
    Stopping {
        graceful: bool,
        /// When the workers still alive are killed (then: when the master gives up on them).
        kill_at: Instant,
        killed: bool,
        /// What `serve`/`run` returns.
        outcome: Result<()>,
    },
}

impl Master {
    /// Begins (or escalates) a stop. The first error wins over a plain stop request.
    pub(super) fn stop(&mut self, graceful: bool, outcome: Result<()>) {
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

    /// Starts a shutdown delay: unready at once (health port, systemd), every worker told to
    /// close HTTP/1 connections after their current request and to send HTTP/2 ones a GOAWAY
    /// while it keeps accepting; the stop itself begins when the delay is over (`manage`).
    pub(super) fn begin_shutdown_delay(&mut self, delay: Duration) {
        self.shutdown_at = Some(Instant::now() + delay);
        if let Some(n) = &self.notifier {
            n.stopping();
        }
        for w in &mut self.workers {
            w.tell_drain();
        }
    }

    /// Sends `sig` to every worker, marking each as stopping.
    fn signal_all(&mut self, sig: libc::c_int) {
        for w in &mut self.workers {
            w.mark_stopping();
            w.term_at = None;
            process::kill(w.info.pid, sig);
        }
    }

    /// While stopping: SIGKILL the workers left at the deadline, then give up on any that
    /// cannot be reaped.
    pub(super) fn enforce_stop_deadline(&mut self, now: Instant) {
        let Phase::Stopping {
            kill_at, killed, ..
        } = &mut self.phase
        else {
            return;
        };
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
    }
}
