//! Starting worker processes: by `fork` (the default) or by `fork` + `exec` of a command.
//!
//! Which fds a worker inherits is decided here and nowhere else: `plan.rs` says what one
//! worker gets, `fork.rs` and `exec.rs` carry it out. Every fd forklift opens is
//! close-on-exec; the exec path places the worker's listeners at fd 3 onwards and its status
//! channel right after them, and the fork path closes every master-only fd in the child.

pub(crate) mod exec;
pub(crate) mod fork;
pub(crate) mod plan;

use std::fmt;
use std::os::fd::{BorrowedFd, RawFd};
use std::process::Command;
use std::sync::Arc;

/// How the master starts workers.
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Spawn {
    /// `fork(2)`: the worker is a copy of the master and runs the service factory directly.
    /// Fastest to start and to respawn. Refused when the master already runs more than one
    /// thread, since only the forking thread survives in the child.
    #[default]
    Fork,
    /// Re-execute the current binary (fasthttp's model): the worker runs `main` again, finds
    /// itself a worker ([`is_worker`](crate::is_worker)), takes its listeners from fd 3 on
    /// (`LISTEN_FDS`/`LISTEN_PID`), and serves. Works in a multi-threaded master, and gives
    /// each worker a fresh address space.
    Exec,
    /// Run the command this producer builds, with the listeners passed as in [`Spawn::Exec`]
    /// (fasthttp's `CommandProducer`). The command's program, arguments, added or removed
    /// environment variables and working directory are used; the worker must call
    /// `serve`/`run` of a `Prefork` as the re-executed binary would.
    Command(CommandProducer),
}

/// How the master learns that a worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Readiness {
    /// The worker says so on its channel to the master: forklift's own workers
    /// ([`Worker::ready`](crate::Worker::ready), and `serve` does it for you).
    #[default]
    Channel,
    /// The worker sends `READY=1` to the `NOTIFY_SOCKET` forklift gives it, as it would to
    /// systemd (`sd_notify`); `WATCHDOG=1` counts as a heartbeat. For programs that speak
    /// systemd's protocol.
    Notify,
    /// The worker is taken as ready once it has stayed up this long: for programs that
    /// speak no readiness protocol.
    After(std::time::Duration),
}

/// Builds the command that starts one worker; see [`Spawn::Command`].
///
/// ```
/// let producer: forklift::CommandProducer =
///     std::sync::Arc::new(|_slot| std::process::Command::new("my-worker"));
/// let spawn = forklift::Spawn::Command(producer);
/// # let _ = spawn;
/// ```
pub type CommandProducer = Arc<dyn Fn(&WorkerSlot) -> Command + Send + Sync>;

/// Which worker a [`Spawn::Command`] producer builds a command for.
///
/// ```
/// let spawn = forklift::Spawn::command(|slot: &forklift::WorkerSlot| {
///     let mut cmd = std::process::Command::new("my-server");
///     cmd.arg(format!("--worker-index={}", slot.id));
///     cmd
/// });
/// # let _ = spawn;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerSlot {
    /// The worker's index, from 0.
    pub id: usize,
    /// The generation it belongs to (1 for the workers started first).
    pub generation: u64,
}

impl Spawn {
    /// [`Spawn::Command`] from a closure.
    ///
    /// ```
    /// use forklift::Spawn;
    /// let spawn = Spawn::command(|worker| {
    ///     let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    ///     cmd.env("APP_WORKER", worker.id.to_string());
    ///     cmd
    /// });
    /// # let _ = spawn;
    /// ```
    pub fn command(producer: impl Fn(&WorkerSlot) -> Command + Send + Sync + 'static) -> Self {
        Spawn::Command(Arc::new(producer))
    }

    pub(crate) fn is_fork(&self) -> bool {
        matches!(self, Spawn::Fork)
    }
}

impl fmt::Debug for Spawn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spawn::Fork => f.write_str("Fork"),
            Spawn::Exec => f.write_str("Exec"),
            Spawn::Command(_) => f.write_str("Command(..)"),
        }
    }
}

/// What one spawn needs to know.
pub(crate) struct SpawnSpec<'a> {
    pub slot: WorkerSlot,
    pub master_pid: u32,
    /// This worker's listening sockets, in configuration order.
    pub listeners: Vec<BorrowedFd<'a>>,
    /// The worker's end of its status channel.
    pub status: BorrowedFd<'a>,
    /// Master-only fds a forked child must close (the exec path relies on close-on-exec).
    pub close_in_child: Vec<RawFd>,
    /// CPU pinning and privilege drop.
    pub setup: ChildSetup,
    /// Write ends of pipes for the worker's stdout and stderr, which the master relays line
    /// by line (exec and command spawning only); `None` inherits the master's.
    pub stdio: Option<[RawFd; 2]>,
}

/// What a worker process sets up about itself before it runs any of its code: its CPU and its
/// user. Applied right after fork, so it holds for a forked worker and an executed command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ChildSetup {
    /// Pin the worker to this CPU.
    pub cpu: Option<usize>,
    /// Drop to this (uid, gid), with no supplementary groups.
    pub credentials: Option<(u32, u32)>,
}

impl ChildSetup {
    /// Applies the setup to the calling process. Async-signal-safe (plain syscalls), so it
    /// may run between fork and exec. Returns what failed and the errno.
    ///
    /// # Safety
    /// Call only in a freshly forked child.
    pub unsafe fn apply(&self) -> Result<(), (&'static str, i32)> {
        let errno = || io_errno();
        if let Some(cpu) = self.cpu {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it for cpu < 1024.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                if cpu < 8 * std::mem::size_of::<libc::cpu_set_t>() {
                    libc::CPU_SET(cpu, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0
                    {
                        return Err(("pin itself to a CPU", errno()));
                    }
                }
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            let _ = cpu;
        }
        if let Some((uid, gid)) = self.credentials {
            let gid_t = gid as libc::gid_t;
            // SAFETY: setgroups/setgid/setuid with valid arguments; the group list is one
            // local gid. Groups first: after setuid the process may no longer change them.
            unsafe {
                if libc::setgroups(1, &gid_t) != 0 {
                    return Err(("drop its supplementary groups", errno()));
                }
                if libc::setgid(gid_t) != 0 {
                    return Err(("set its group id", errno()));
                }
                if libc::setuid(uid as libc::uid_t) != 0 {
                    return Err(("set its user id", errno()));
                }
            }
        }
        Ok(())
    }
}

fn io_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
