//! The fork path: the child is a copy of the master and becomes the worker in place.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::SpawnSpec;
use crate::sys::signals;
use crate::worker::{self, Worker, WorkerMain};

/// Forks a worker. In the child this never returns: the worker runs `main` and exits.
///
/// Sound only while the calling process has a single thread, which the master checks first.
pub(crate) fn spawn(spec: &SpawnSpec<'_>, main: &WorkerMain) -> io::Result<u32> {
    let mask = signals::block_all();
    // SAFETY: the master is single-threaded (checked before the first spawn), so the child
    // may run arbitrary code, allocation included.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child(spec, main)
    }
    let err = io::Error::last_os_error();
    signals::restore_mask(&mask);
    match pid {
        -1 => Err(err),
        pid => Ok(pid as u32),
    }
}

fn child(spec: &SpawnSpec<'_>, main: &WorkerMain) -> ! {
    signals::reset_to_default();
    for &fd in &spec.close_in_child {
        // SAFETY: these are the master's own fds, copied into this child; nothing here uses
        // them again (the master's owners are never dropped: the child ends in exit()).
        unsafe { libc::close(fd) };
    }
    // Credentials first: changing them clears the parent-death signal set after.
    // SAFETY: this is the freshly forked child.
    if let Err((what, errno)) = unsafe { spec.setup.apply() } {
        eprintln!(
            "forklift: worker {} cannot {what}: {}",
            spec.slot.id,
            std::io::Error::from_raw_os_error(errno)
        );
        std::process::exit(crate::protocol::BOOT_ERROR_EXIT_CODE)
    }
    worker::watch_parent(spec.master_pid);
    // The child owns copies of its listeners and status channel, at the master's fd numbers.
    let take = |fd: i32| {
        // SAFETY: fd is open in this child and no other owner here will close it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    };
    let listeners = spec
        .listeners
        .iter()
        .map(|fd| take(fd.as_raw_fd()))
        .collect();
    let status = take(spec.status.as_raw_fd());
    let worker = Worker::new(spec.slot, spec.master_pid, listeners, status);
    match worker {
        Ok(worker) => worker::run(worker, main),
        Err(e) => {
            eprintln!("forklift: worker {}: {e}", spec.slot.id);
            std::process::exit(crate::protocol::BOOT_ERROR_EXIT_CODE)
        }
    }
}
