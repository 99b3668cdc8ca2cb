//! Starting worker processes: by `fork` (the default) or by `fork` + `exec` of a command.
//!
//! Which fds a worker inherits is decided here and nowhere else. Every fd forklift opens is
//! close-on-exec; the exec path places the worker's listeners at fd 3 onwards and its status
//! channel right after them, and the fork path closes every master-only fd in the child.

pub(crate) mod exec;
pub(crate) mod fork;

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

/// Builds the command that starts one worker; see [`Spawn::Command`].
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
}
