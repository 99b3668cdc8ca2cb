//! Resource guards: a serving worker whose resident memory passes `max_worker_memory`, or
//! that has run longer than `max_worker_age`, is replaced as a worker at its request limit
//! is (`replace.rs`: the replacement starts first, the old worker drains once it serves, one
//! worker at a time). The master reads each worker's memory from `/proc` twice a second, so
//! this works for any worker program (`Prefork::run`, `forklift run`); which workers are
//! over is [`policy::over_limits`](super::policy::over_limits), a pure function.

use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::policy::{self, Limits};
use super::Master;
use crate::config::Config;
use crate::sys::process;

/// How often the master looks at its workers' memory and age: one read of
/// `/proc/PID/statm` per worker, a few microseconds each. The master's loop wakes for it
/// ([`Master::next_limits_check`]), so a worker that leaks is seen over its limit within this
/// long (it was up to 2 s with a 1 s period the loop did not wake for: `bench/chaos`
/// scenario 6, a route leaking 64 MiB/s, then saw workers peak at twice the limit).
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Says once, at start, that the memory limit does nothing on this system.
pub(super) fn note_unsupported(config: &Config) {
    if config.max_worker_memory.is_some() && !process::RESIDENT_BYTES_SUPPORTED {
        warn!(
            "max_worker_memory is ignored on this system: the master reads workers' memory \
             from Linux's /proc"
        );
    }
}

impl Master {
    /// When the loop must wake for the next [`check_limits`](Master::check_limits): `None`
    /// without limits.
    pub(super) fn next_limits_check(&self, now: Instant) -> Option<Instant> {
        if !self.limits().any() {
            return None;
        }
        Some(self.limits_checked.map_or(now, |at| at + CHECK_EVERY))
    }

    /// The limits the config sets that `check_limits` applies: the memory limit only where
    /// it can be read.
    fn limits(&self) -> Limits {
        Limits {
            memory: self
                .config
                .max_worker_memory
                .filter(|_| process::RESIDENT_BYTES_SUPPORTED),
            age: self.config.max_worker_age,
        }
    }

    /// Marks the workers past their memory or age limit as due for replacement, at most once
    /// per [`CHECK_EVERY`]; `start_recycle` then replaces them one at a time.
    pub(super) fn check_limits(&mut self, now: Instant) {
        let limits = self.limits();
        if !limits.any()
            || self
                .limits_checked
                .is_some_and(|at| now.saturating_duration_since(at) < CHECK_EVERY)
        {
            return;
        }
        self.limits_checked = Some(now);
        let over = policy::over_limits(&self.workers, self.generation, limits, now, |w| {
            process::resident_bytes(w.info.pid).ok()
        });
        for (i, why) in over {
            let w = &mut self.workers[i];
            if w.recycle_due(why) {
                debug!(
                    "worker {} (pid {}) {why}: due for replacement",
                    w.info.id, w.info.pid
                );
            }
        }
    }
}
