//! The master's signal handling: a handler that only records the signal and wakes the loop.
//!
//! The handler sets the signal's bit in an atomic mask and writes one byte to a non-blocking
//! self-pipe; the event loop polls the pipe and turns the mask into commands in one place
//! (`master/command.rs`). Nothing else happens in signal context: no logging, no allocation.
//!
//! The master installs plain `sigaction` handlers rather than a registry such as tokio's, so a
//! worker can put every disposition back to the default after fork and install its own.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use crate::sys::fd;

/// Signals the master acts on.
pub(crate) const MASTER_SIGNALS: [libc::c_int; 9] = [
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
];

static PENDING: AtomicU64 = AtomicU64::new(0);
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn record(sig: libc::c_int) {
    PENDING.fetch_or(1u64 << (sig as u64 & 63), Ordering::SeqCst);
    wake();
}

/// True while a master in this process has its handlers installed.
pub(crate) fn installed() -> bool {
    WAKE_FD.load(Ordering::SeqCst) >= 0
}

/// Wakes the master's loop: from the signal handler, or from any thread of the master's
/// process that asked for a command. Async-signal-safe; does nothing without a master.
pub(crate) fn wake() {
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
