//! The worker side: what a worker process is handed, how it reports readiness and boot
//! failures, and how it ends.

use std::io::{self, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::BoxError;
use crate::protocol::{self, Message, BOOT_ERROR_EXIT_CODE, LISTEN_FDS_START};
use crate::spawn::WorkerSlot;
use crate::sys::fd;
use crate::sys::listener::Listener;

/// The code a worker runs: the raw form's closure, or forklift's HTTP server.
pub(crate) type WorkerMain = dyn Fn(&mut Worker) -> Result<(), BoxError>;

static FORKED_WORKER: AtomicBool = AtomicBool::new(false);

/// True in a worker process, false in the master (or a program not run by forklift).
///
/// In fork mode the worker is a copy of the master and never returns from `serve`, so most
/// code does not need this; in exec mode `main` runs again in each worker, and code before
/// `serve` can use this to skip master-only work (fasthttp's `IsChild`).
///
/// ```
/// if forklift::is_worker() {
///     // set up per-worker state
/// }
/// ```
pub fn is_worker() -> bool {
    FORKED_WORKER.load(Ordering::Relaxed)
        || (std::env::var_os(protocol::ENV_WORKER_ID).is_some()
            && std::env::var_os(protocol::ENV_STATUS_FD).is_some())
}

/// What a worker process is given: its index, its listeners, and a channel to the master.
///
/// The raw form, [`Prefork::run`](crate::Prefork::run), hands one to its closure, which must
/// call [`ready`](Worker::ready) once it serves.
///
/// ```
/// forklift::Prefork::new()
///     .workers(2)
///     .listen("127.0.0.1:0")?
///     .listen("127.0.0.1:0")?
///     .on_master_ready(|_| { forklift::request_stop(true); Ok(()) })
///     .run(|worker: &mut forklift::Worker| {
///         assert!(worker.id() < 2);
///         assert_eq!(worker.generation(), 1);
///         assert!(worker.master_alive());
///         assert_eq!(worker.listeners().len(), 2);
///         worker.ready()?;
///         loop { std::thread::park() }
///     })?;
/// # Ok::<(), forklift::Error>(())
/// ```
#[derive(Debug)]
pub struct Worker {
    slot: WorkerSlot,
    master_pid: u32,
    listeners: Vec<Listener>,
    channel: UnixStream,
    ready: bool,
}

impl Worker {
    pub(crate) fn new(
        slot: WorkerSlot,
        master_pid: u32,
        listeners: Vec<OwnedFd>,
        channel: OwnedFd,
    ) -> io::Result<Worker> {
        FORKED_WORKER.store(true, Ordering::Relaxed);
        let listeners = listeners
            .into_iter()
            .map(Listener::from_fd)
            .collect::<io::Result<Vec<_>>>()?;
        for l in &listeners {
            fd::set_cloexec(l.as_fd())?;
        }
        fd::set_cloexec(channel.as_fd())?;
        Ok(Worker {
            slot,
            master_pid,
            listeners,
            channel: UnixStream::from(channel),
            ready: false,
        })
    }

    /// The worker of an exec'd process, from its environment; `None` outside a worker.
    pub(crate) fn from_env() -> io::Result<Option<Worker>> {
        let var = |name: &str| std::env::var(name).ok();
        let (Some(id), Some(status_fd)) =
            (var(protocol::ENV_WORKER_ID), var(protocol::ENV_STATUS_FD))
        else {
            return Ok(None);
        };
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        let id: usize = id
            .parse()
            .map_err(|_| invalid("FORKLIFT_WORKER_ID is not a number"))?;
        let generation: u64 = var(protocol::ENV_GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(1);
        let master_pid: u32 = var(protocol::ENV_MASTER_PID)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| invalid("FORKLIFT_MASTER_PID is missing or not a pid"))?;
        let status_fd: i32 = status_fd
            .parse()
            .map_err(|_| invalid("FORKLIFT_STATUS_FD is not a number"))?;
        let n = protocol::listen_fds(
            var(protocol::ENV_LISTEN_PID).as_deref(),
            var(protocol::ENV_LISTEN_FDS).as_deref(),
            std::process::id(),
        )
        .map_err(|e| invalid(&e))?
        .ok_or_else(|| invalid("LISTEN_FDS/LISTEN_PID are missing or meant for another process"))?;
        if status_fd != LISTEN_FDS_START + n as i32 {
            return Err(invalid("FORKLIFT_STATUS_FD does not follow the listeners"));
        }
        // SAFETY: the master placed these fds for this process (LISTEN_PID matched), and
        // nothing else in this process has claimed them.
        let listeners = (0..n as i32)
            .map(|i| unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START + i) })
            .collect();
        // SAFETY: as above, for the status channel right after the listeners.
        let channel = unsafe { OwnedFd::from_raw_fd(status_fd) };
        let slot = WorkerSlot { id, generation };
        Worker::new(slot, master_pid, listeners, channel).map(Some)
    }

    /// The worker's index, from 0 to the worker count - 1. A replacement gets the index of the
    /// worker it replaces.
    pub fn id(&self) -> usize {
        self.slot.id
    }

    /// The generation this worker belongs to (1 for the first).
    pub fn generation(&self) -> u64 {
        self.slot.generation
    }

    /// The master's process id.
    pub fn master_pid(&self) -> u32 {
        self.master_pid
    }

    /// The listeners, in the order the addresses were configured.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    /// Takes the listeners out, to hand them to a server.
    pub fn take_listeners(&mut self) -> Vec<Listener> {
        std::mem::take(&mut self.listeners)
    }

    /// Tells the master this worker serves. Until every worker has, the master does not
    /// report itself ready; a worker that exits before it is counted as failing to boot.
    ///
    /// # Errors
    /// If the master is gone.
    pub fn ready(&mut self) -> io::Result<()> {
        if !self.ready {
            self.send(&Message::Ready)?;
            self.ready = true;
        }
        Ok(())
    }

    /// Whether [`ready`](Worker::ready) was called.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// True while the master that started this worker is alive.
    pub fn master_alive(&self) -> bool {
        // SAFETY: getppid(2) cannot fail.
        (unsafe { libc::getppid() }) as u32 == self.master_pid
    }

    /// A handle on the channel from the master: reading it returns end-of-file once the master
    /// has died, however it died. Watch it to stop serving when the master is gone.
    ///
    /// # Errors
    /// If the fd cannot be duplicated.
    pub fn master_watch(&self) -> io::Result<UnixStream> {
        self.channel.try_clone()
    }

    /// Reads one line the master sent before anything else (the TLS ticket secret of an
    /// exec'd worker), waiting at most `timeout`. Reads a byte at a time, so nothing after
    /// the line is taken from the channel's later readers.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn read_boot_line(&mut self, timeout: std::time::Duration) -> io::Result<Vec<u8>> {
        use std::io::Read;
        self.channel.set_read_timeout(Some(timeout))?;
        // Sized so that a secret's line never reallocates (leaving a copy behind).
        let mut line = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        let outcome = loop {
            match self.channel.read(&mut byte) {
                Ok(0) => break Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(e),
            }
        };
        self.channel.set_read_timeout(None)?;
        outcome.map(|()| line)
    }

    fn send(&mut self, msg: &Message) -> io::Result<()> {
        self.channel.write_all(&msg.encode())
    }
}

/// Runs the worker's code and exits with a code the master understands.
pub(crate) fn run(mut worker: Worker, main: &WorkerMain) -> ! {
    // A root span: in a forked worker the master's span is still entered.
    let span =
        tracing::info_span!(parent: None, "worker", id = worker.id(), pid = std::process::id());
    let _entered = span.enter();
    let outcome = catch_unwind(AssertUnwindSafe(|| main(&mut worker)));
    let failure = match outcome {
        Ok(Ok(())) if worker.ready => None,
        Ok(Ok(())) => Some("the worker returned before it reported ready".to_string()),
        Ok(Err(e)) => Some(error_chain(&*e)),
        Err(payload) => Some(format!("panicked: {}", panic_message(&*payload))),
    };
    let code = match failure {
        None => 0,
        Some(why) if !worker.ready => {
            // Best effort: the master also learns of the failure from the exit code.
            let _ = worker.send(&Message::BootError(why));
            BOOT_ERROR_EXIT_CODE
        }
        Some(why) => {
            tracing::error!("worker failed: {why}");
            1
        }
    };
    std::process::exit(code)
}

/// On Linux, asks for SIGTERM when the master dies, and exits if it died already. The fd
/// channel's end-of-file is the main signal; this catches a worker whose channel another
/// process holds open (a grandchild that inherited it through a plain fork).
pub(crate) fn watch_parent(master_pid: u32) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
    }
    // SAFETY: getppid(2) cannot fail.
    if unsafe { libc::getppid() } as u32 != master_pid {
        std::process::exit(1);
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic payload that is not a string)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_recovered() {
        let p = catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*p), "boom 1");
        let p = catch_unwind(|| std::panic::panic_any(5u8)).unwrap_err();
        assert!(panic_message(&*p).contains("not a string"));
    }

    #[test]
    fn error_chains_name_every_cause_once() {
        let inner = io::Error::other("disk on fire");
        let outer = crate::Error::io("reading config", inner);
        assert_eq!(error_chain(&outer), "reading config: disk on fire");
    }
}
