//! Lifecycle hooks (fasthttp's four, plus exit and an event stream) and the events behind them.

use std::fmt;
use std::sync::Arc;

use crate::error::{BoxError, Error, Result};
use crate::sys::process::ExitStatus;

/// A worker as the master sees it, as hooks receive it.
///
/// ```
/// let server = forklift::Prefork::new().on_worker_spawn(|w: &forklift::WorkerInfo| {
///     println!("worker {} of generation {} is pid {}", w.id, w.generation, w.pid);
///     Ok(())
/// });
/// # let _ = server;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its index, from 0. A replacement takes the index of the worker it replaces.
    pub id: usize,
    /// Its process id.
    pub pid: u32,
    /// The generation it belongs to (1 for the workers started first).
    pub generation: u64,
}

/// Something that happened in the master, in the order it happened. Observe them all with
/// [`Prefork::on_event`](crate::Prefork::on_event).
///
/// ```
/// use forklift::Event;
/// let server = forklift::Prefork::new().on_event(|event| match event {
///     Event::Listening { addresses } => println!("listening on {}", addresses.join(", ")),
///     Event::WorkerExited { worker, status, expected: false } => {
///         eprintln!("worker {} crashed: {status}", worker.pid)
///     }
///     _ => {}
/// });
/// # let _ = server;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The master has bound its sockets; the addresses are the real ones (port 0 resolved).
    Listening {
        /// `127.0.0.1:8080`, `[::1]:8080` or `unix:/path`, in configuration order.
        addresses: Vec<String>,
    },
    /// A worker process was started.
    WorkerSpawned(WorkerInfo),
    /// A worker reported that it serves.
    WorkerReady(WorkerInfo),
    /// Every worker of the first generation serves.
    MasterReady(Vec<WorkerInfo>),
    /// A worker process ended.
    WorkerExited {
        /// Which worker.
        worker: WorkerInfo,
        /// How it ended.
        status: ExitStatus,
        /// True if the master asked it to stop; false for a crash.
        expected: bool,
    },
    /// A crashed worker was replaced.
    WorkerRecovered {
        /// The worker that crashed.
        old: WorkerInfo,
        /// Its replacement.
        new: WorkerInfo,
    },
    /// A rolling reload (SIGHUP) started this generation.
    ReloadStarted {
        /// The new generation.
        generation: u64,
    },
    /// Every worker of a reloaded generation serves; the previous generation drains.
    GenerationReady {
        /// The generation now serving.
        generation: u64,
        /// Its workers.
        workers: Vec<WorkerInfo>,
    },
    /// A reload was given up because a worker of the new generation could not boot; the
    /// previous generation keeps serving.
    ReloadFailed {
        /// The generation that failed.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// The worker count changed (SIGTTIN, SIGTTOU).
    WorkersChanged {
        /// The new count.
        workers: usize,
    },
    /// A binary upgrade (SIGUSR2) started a new master.
    UpgradeStarted {
        /// The new master's pid.
        pid: u32,
    },
    /// The new master of a binary upgrade exited before it took over; this master keeps
    /// serving.
    UpgradeFailed {
        /// The new master's pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A worker missed its heartbeat for longer than the worker timeout and was killed.
    WorkerTimedOut(WorkerInfo),
    /// The master began to stop its workers.
    Stopping {
        /// True for a graceful stop (TERM, QUIT), false for a fast one (INT, an error).
        graceful: bool,
    },
}

type SpawnHook = Box<dyn FnMut(&WorkerInfo) -> Result<(), BoxError> + Send>;
type ReadyHook = Box<dyn FnMut(&[WorkerInfo]) -> Result<(), BoxError> + Send>;
type RecoverHook = Box<dyn FnMut(&WorkerInfo, &WorkerInfo) + Send>;
type ExitHook = Box<dyn FnMut(&WorkerInfo, ExitStatus) + Send>;
type EventHook = Box<dyn FnMut(&Event) + Send>;
pub(crate) type ReloadHook =
    Box<dyn FnMut(&mut crate::reload_settings::ReloadSettings) -> Result<(), BoxError> + Send>;
pub(crate) type DeathHook = Arc<dyn Fn() + Send + Sync>;
/// Puts back the HTTP settings a reload's `on_reload` hook replaced, when that reload is given
/// up (see `reload_settings::share_http`).
pub(crate) type RevertHook = Box<dyn FnMut() + Send>;

/// The hooks a [`Prefork`](crate::Prefork) was given.
#[derive(Default)]
pub(crate) struct Hooks {
    pub on_worker_spawn: Option<SpawnHook>,
    pub on_master_ready: Option<ReadyHook>,
    pub on_worker_recover: Option<RecoverHook>,
    pub on_worker_exit: Option<ExitHook>,
    pub on_event: Option<EventHook>,
    pub on_master_death: Option<DeathHook>,
    pub on_reload: Option<ReloadHook>,
    pub revert_reload: Option<RevertHook>,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks")
            .field("on_worker_spawn", &self.on_worker_spawn.is_some())
            .field("on_master_ready", &self.on_master_ready.is_some())
            .field("on_worker_recover", &self.on_worker_recover.is_some())
            .field("on_worker_exit", &self.on_worker_exit.is_some())
            .field("on_event", &self.on_event.is_some())
            .field("on_master_death", &self.on_master_death.is_some())
            .field("on_reload", &self.on_reload.is_some())
            .field("revert_reload", &self.revert_reload.is_some())
            .finish()
    }
}

impl Hooks {
    /// Delivers `event` to the observer and to the hook that matches it. A spawn or ready hook
    /// that fails returns its error, which aborts start-up.
    pub fn emit(&mut self, event: Event) -> Result<()> {
        if let Some(observe) = &mut self.on_event {
            observe(&event);
        }
        match &event {
            Event::WorkerSpawned(w) => {
                if let Some(hook) = &mut self.on_worker_spawn {
                    hook(w).map_err(|source| Error::Hook {
                        hook: "on_worker_spawn",
                        source,
                    })?;
                }
            }
            Event::MasterReady(workers) => {
                if let Some(hook) = &mut self.on_master_ready {
                    hook(workers).map_err(|source| Error::Hook {
                        hook: "on_master_ready",
                        source,
                    })?;
                }
            }
            Event::WorkerRecovered { old, new } => {
                if let Some(hook) = &mut self.on_worker_recover {
                    hook(old, new);
                }
            }
            Event::WorkerExited { worker, status, .. } => {
                if let Some(hook) = &mut self.on_worker_exit {
                    hook(worker, *status);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn info(id: usize, pid: u32) -> WorkerInfo {
        WorkerInfo {
            id,
            pid,
            generation: 1,
        }
    }

    #[test]
    fn events_reach_the_observer_and_the_matching_hook() {
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut hooks = Hooks::default();
        let l = log.clone();
        hooks.on_event = Some(Box::new(move |e| {
            l.lock().unwrap().push(format!("event {e:?}"))
        }));
        let l = log.clone();
        hooks.on_worker_recover = Some(Box::new(move |o, n| {
            l.lock()
                .unwrap()
                .push(format!("recover {} {}", o.pid, n.pid))
        }));
        hooks
            .emit(Event::WorkerRecovered {
                old: info(0, 10),
                new: info(0, 11),
            })
            .unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 2);
        assert!(log[0].starts_with("event WorkerRecovered"));
        assert_eq!(log[1], "recover 10 11");
    }

    #[test]
    fn a_failing_spawn_hook_is_an_error_naming_the_hook() {
        let mut hooks = Hooks {
            on_worker_spawn: Some(Box::new(|_| Err("no thanks".into()))),
            ..Hooks::default()
        };
        let err = hooks.emit(Event::WorkerSpawned(info(0, 1))).unwrap_err();
        assert_eq!(err.to_string(), "hook on_worker_spawn failed: no thanks");
    }
}
