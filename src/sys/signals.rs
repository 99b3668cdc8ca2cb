//! The master's signal handling: a handler that only records the signal and wakes the loop.
//!
//! The handler sets the signal's bit in an atomic mask and writes one byte to a non-blocking
//! self-pipe; the event loop polls the pipe and turns the mask into intents in one place
//! (`master.rs`). Nothing else happens in signal context: no logging, no allocation.
//!
//! The master installs plain `sigaction` handlers rather than a registry such as tokio's, so a
//! worker can put every disposition back to the default after fork and install its own.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::sys::fd;

/// Signals the master acts on.
pub(crate) const MASTER_SIGNALS: [libc::c_int; 8] = [
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR2,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
];

static PENDING: AtomicU64 = AtomicU64::new(0);
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn record(sig: libc::c_int) {
    PENDING.fetch_or(1u64 << (sig as u64 & 63), Ordering::SeqCst);
    let fd = WAKE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // write() may change errno, which the interrupted code may be about to read.
        let saved = errno::get();
        let byte = 1u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a valid local byte. A full pipe
        // (EAGAIN) is fine: the loop is woken already.
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        errno::set(saved);
    }
}

/// Asks the master running in this process to stop, as TERM (graceful) or INT (fast) would.
///
/// For hooks, tests and programs that embed forklift and decide themselves when to stop
/// (the signal a caller injects instead of the OS one). Callable from any thread of the
/// master process; does nothing where no master runs (before `serve`, or in a worker).
///
/// ```
/// # use std::convert::Infallible;
/// # use http_body_util::Full;
/// # use hyper::{body::Bytes, service::service_fn, Request, Response};
/// # async fn hello(_: Request<forklift::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
/// #     Ok(Response::new(Full::new(Bytes::from("hello"))))
/// # }
/// // Start two workers, and stop as soon as both serve.
/// forklift::Prefork::new()
///     .workers(2)
///     .listen("127.0.0.1:0")?
///     .on_master_ready(|workers| {
///         assert_eq!(workers.len(), 2);
///         forklift::request_stop(true);
///         Ok(())
///     })
///     .serve(|| service_fn(hello))?;
/// # Ok::<(), forklift::Error>(())
/// ```
pub fn request_stop(graceful: bool) {
    if WAKE_FD.load(Ordering::SeqCst) >= 0 {
        record(if graceful {
            libc::SIGTERM
        } else {
            libc::SIGINT
        });
    }
}

/// Asks the master running in this process for a rolling reload, as SIGHUP would.
/// Like [`request_stop`], callable from hooks or any thread of the master process.
///
/// ```
/// # use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
/// static RELOADED: AtomicBool = AtomicBool::new(false);
/// forklift::Prefork::new()
///     .workers(1)
///     .listen("127.0.0.1:0")?
///     .on_event(|event| match event {
///         forklift::Event::MasterReady(_) => forklift::request_reload(),
///         forklift::Event::GenerationReady { generation: 2, .. } => {
///             RELOADED.store(true, SeqCst);
///             forklift::request_stop(true);
///         }
///         _ => {}
///     })
///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })?;
/// assert!(RELOADED.load(SeqCst));
/// # Ok::<(), forklift::Error>(())
/// ```
pub fn request_reload() {
    if WAKE_FD.load(Ordering::SeqCst) >= 0 {
        record(libc::SIGHUP);
    }
}

/// Asks the master running in this process for one worker more (`true`, as SIGTTIN) or one
/// fewer (`false`, as SIGTTOU): the library's way to change the worker count live.
///
/// ```
/// # use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
/// static COUNT: AtomicUsize = AtomicUsize::new(0);
/// forklift::Prefork::new()
///     .workers(1)
///     .listen("127.0.0.1:0")?
///     .on_event(|event| match event {
///         forklift::Event::MasterReady(_) => forklift::request_scale(true),
///         forklift::Event::WorkersChanged { workers } => {
///             COUNT.store(*workers, SeqCst);
///             forklift::request_stop(true);
///         }
///         _ => {}
///     })
///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })?;
/// assert_eq!(COUNT.load(SeqCst), 2);
/// # Ok::<(), forklift::Error>(())
/// ```
pub fn request_scale(more: bool) {
    if WAKE_FD.load(Ordering::SeqCst) >= 0 {
        record(if more { libc::SIGTTIN } else { libc::SIGTTOU });
    }
}

/// The master's end of the self-pipe, with the handlers installed.
#[derive(Debug)]
pub(crate) struct SignalPipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl SignalPipe {
    /// Creates the pipe and installs the handlers for [`MASTER_SIGNALS`].
    pub fn install() -> io::Result<SignalPipe> {
        let (read, write) = fd::pipe_cloexec()?;
        // Non-blocking at both ends: a handler must never block on a full pipe, and draining
        // stops at an empty one.
        for end in [&read, &write] {
            fd::set_nonblocking(end.as_fd())?;
        }
        PENDING.store(0, Ordering::SeqCst);
        WAKE_FD.store(write.as_raw_fd(), Ordering::SeqCst);
        for &sig in &MASTER_SIGNALS {
            // SAFETY: `record` is async-signal-safe (atomics and write(2) only).
            unsafe { set_handler(sig, record as extern "C" fn(libc::c_int) as usize)? };
        }
        Ok(SignalPipe { read, write })
    }

    /// The fd to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Both fds, which a forked worker closes.
    pub fn fds(&self) -> [RawFd; 2] {
        [self.read.as_raw_fd(), self.write.as_raw_fd()]
    }

    /// Empties the pipe and returns the signals received since the last call.
    pub fn take(&self) -> Vec<libc::c_int> {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reading into a valid local buffer from our own non-blocking pipe.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
        let mask = PENDING.swap(0, Ordering::SeqCst);
        (1..64).filter(|s| mask & (1u64 << s) != 0).collect()
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        WAKE_FD.store(-1, Ordering::SeqCst);
        reset_to_default();
    }
}

/// Blocks every signal; returns the mask to restore. Around `fork`: a signal that reaches
/// the child before it has put the default dispositions back would otherwise run the
/// master's handler there and be lost (a TERM to a worker just spawned). Blocked, it waits
/// for the child's [`reset_to_default`], which unblocks.
pub(crate) fn block_all() -> libc::sigset_t {
    // SAFETY: sigfillset/sigprocmask on initialised local sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, &mut old);
        old
    }
}

/// Restores the mask [`block_all`] returned (in the parent, after fork).
pub(crate) fn restore_mask(old: &libc::sigset_t) {
    // SAFETY: a mask returned by sigprocmask(2).
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
}

/// Puts every signal the master handles back to its default disposition, and unblocks all
/// signals. Async-signal-safe: runs in a child between fork and exec.
pub(crate) fn reset_to_default() {
    WAKE_FD.store(-1, Ordering::SeqCst);
    for &sig in &MASTER_SIGNALS {
        // SAFETY: SIG_DFL is always a valid disposition.
        let _ = unsafe { set_handler(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty, initialised set passed to sigprocmask(2).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// Installs `handler` (a function address, `SIG_DFL` or `SIG_IGN`) for `sig`.
///
/// # Safety
/// `handler` must be `SIG_DFL`, `SIG_IGN`, or an async-signal-safe `extern "C" fn(c_int)`.
pub(crate) unsafe fn set_handler(sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting point; we fill the fields we use.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    action.sa_flags = libc::SA_RESTART;
    if sig == libc::SIGCHLD {
        action.sa_flags |= libc::SA_NOCLDSTOP;
    }
    // SAFETY: action is initialised; sa_mask is emptied before use.
    unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// errno access, which std does not expose for writing.
mod errno {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn location() -> *mut libc::c_int {
        // SAFETY: returns the calling thread's errno slot; always valid.
        unsafe { libc::__errno_location() }
    }

    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    fn location() -> *mut libc::c_int {
        // SAFETY: returns the calling thread's errno slot; always valid.
        unsafe { libc::__error() }
    }

    pub fn get() -> libc::c_int {
        // SAFETY: the slot is valid for the calling thread.
        unsafe { *location() }
    }

    pub fn set(value: libc::c_int) {
        // SAFETY: the slot is valid for the calling thread.
        unsafe { *location() = value }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn handled_signals_fit_the_mask() {
        for sig in super::MASTER_SIGNALS {
            assert!((1..64).contains(&sig));
        }
    }
}
