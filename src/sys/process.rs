//! Process control: signals to children, reaping, and what the kernel says about this
//! process (its threads, its CPUs, the credentials workers drop to).

use std::fmt;
use std::io;

use crate::error::{Error, Result};

/// How a worker process ended.
///
/// ```
/// use forklift::ExitStatus;
/// assert_eq!(ExitStatus::Signaled(9).to_string(), "killed by SIGKILL");
/// assert!(ExitStatus::Exited(0).success());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitStatus {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// True for exit code 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Exited(0))
    }

    pub(crate) fn from_wait_status(status: libc::c_int) -> Self {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(status))
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Exited(code) => write!(f, "exited with code {code}"),
            ExitStatus::Signaled(sig) => match signal_name(sig) {
                Some(name) => write!(f, "killed by {name}"),
                None => write!(f, "killed by signal {sig}"),
            },
        }
    }
}

pub(crate) fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        _ => return None,
    })
}

/// Sends `sig` to `pid`, ignoring errors (the process may have exited already).
pub(crate) fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a worker pid we have not reaped yet, so it cannot be reused.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// What `waitpid(pid, WNOHANG)` found.
#[derive(Debug)]
pub(crate) enum Wait {
    /// Still running.
    Running,
    /// It ended so, and is reaped.
    Exited(ExitStatus),
    /// Interrupted by a signal: ask again.
    Interrupted,
    /// Not our child (someone else reaped it): its status is lost.
    Gone(io::Error),
}

/// Reaps `pid` if it has ended, without blocking.
pub(crate) fn try_wait(pid: u32) -> Wait {
    let mut raw = 0;
    // SAFETY: waitpid(2) on our own child, with a valid status pointer.
    let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut raw, libc::WNOHANG) };
    match rc {
        0 => Wait::Running,
        rc if rc > 0 => Wait::Exited(ExitStatus::from_wait_status(raw)),
        _ => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                Wait::Interrupted
            } else {
                Wait::Gone(err)
            }
        }
    }
}

/// Waits for `pid` to end and reaps it (after a SIGKILL: it cannot take long).
pub(crate) fn wait_blocking(pid: u32) {
    let mut raw = 0;
    // SAFETY: reaping our own child, with a valid status pointer.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut raw, 0) };
}

/// This process's parent.
pub(crate) fn parent_pid() -> u32 {
    // SAFETY: getppid(2) cannot fail.
    unsafe { libc::getppid() as u32 }
}

/// The (uid, gid) to run workers as, checked before anything starts.
pub(crate) fn resolve_credentials(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<(u32, u32)>> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let lookup = |e: nix::Error, what: &str| Error::Config(format!("cannot look up {what}: {e}"));
    let (mut uid, mut gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if let Some(name) = user {
        let u = nix::unistd::User::from_name(name)
            .map_err(|e| lookup(e, &format!("user {name:?}")))?
            .ok_or_else(|| {
                Error::Config(format!(
                    "user {name:?} does not exist (see /etc/passwd); create it or pick another"
                ))
            })?;
        uid = u.uid.as_raw();
        gid = u.gid.as_raw();
    }
    if let Some(name) = group {
        let g = nix::unistd::Group::from_name(name)
            .map_err(|e| lookup(e, &format!("group {name:?}")))?
            .ok_or_else(|| {
                Error::Config(format!(
                    "group {name:?} does not exist (see /etc/group); create it or pick another"
                ))
            })?;
        gid = g.gid.as_raw();
    }
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 && (uid != euid || gid != nix::unistd::getegid().as_raw()) {
        return Err(Error::Config(format!(
            "running workers as user {} / group {} needs root, and forklift runs as uid {euid}: \
             start it as root (it binds, then drops privileges) or leave user/group unset",
            user.unwrap_or("(current)"),
            group.unwrap_or("(primary)")
        )));
    }
    Ok(Some((uid, gid)))
}

/// The CPUs this process may run on, in order.
pub(crate) fn allowed_cpus() -> Vec<usize> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
            Ok(set) => (0..nix::sched::CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        Vec::new()
    }
}

/// Threads of this process (Linux: entries of /proc/self/task). Elsewhere 1, unchecked.
pub(crate) fn thread_count() -> usize {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        std::fs::read_dir("/proc/self/task")
            .map(|d| d.count())
            .unwrap_or(1)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        1
    }
}

/// Whether [`resident_bytes`] can read a process's memory here (Linux: `/proc`).
pub(crate) const RESIDENT_BYTES_SUPPORTED: bool =
    cfg!(any(target_os = "linux", target_os = "android"));

/// The resident set size of process `pid`, in bytes: the second field of
/// `/proc/PID/statm` (pages) times the page size, what `ps` shows as RSS. It counts the pages
/// a forked worker still shares with the master as well as its own. Linux only; elsewhere an
/// `Unsupported` error.
pub(crate) fn resident_bytes(pid: u32) -> io::Result<u64> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable statm"))?;
        // SAFETY: sysconf(3) has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Ok(pages * u64::try_from(page).unwrap_or(4096))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = pid;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "reading a process's memory needs Linux's /proc",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_reads_like_a_sentence() {
        assert_eq!(ExitStatus::Exited(70).to_string(), "exited with code 70");
        assert_eq!(
            ExitStatus::Signaled(libc::SIGKILL).to_string(),
            "killed by SIGKILL"
        );
        assert_eq!(ExitStatus::Signaled(64).to_string(), "killed by signal 64");
        assert!(ExitStatus::Exited(0).success());
        assert!(!ExitStatus::Signaled(9).success());
    }

    #[test]
    fn the_resident_set_grows_with_touched_memory() {
        if !RESIDENT_BYTES_SUPPORTED {
            return;
        }
        let me = std::process::id();
        let before = resident_bytes(me).unwrap();
        assert!(before > 0);
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = resident_bytes(me).unwrap();
        assert!(
            after >= before + (48 << 20),
            "{before} -> {after} bytes after touching 64 MiB"
        );
        drop(touched);
        assert!(resident_bytes(u32::MAX / 2).is_err(), "no such process");
    }

    #[test]
    fn a_live_child_is_running_then_reaped_with_its_status() {
        // Reaped below by try_wait itself, the function under test; killed on every path.
        #[allow(clippy::zombie_processes)]
        let pid = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap()
            .id();
        struct KillOnDrop(u32);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                kill(self.0, libc::SIGKILL);
            }
        }
        let _guard = KillOnDrop(pid);
        assert!(matches!(try_wait(pid), Wait::Running));
        kill(pid, libc::SIGKILL);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match try_wait(pid) {
                Wait::Exited(status) => {
                    assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
                    break;
                }
                Wait::Running | Wait::Interrupted => {
                    assert!(std::time::Instant::now() < deadline, "pid {pid} not reaped");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Wait::Gone(e) => panic!("{e}"),
            }
        }
        assert!(matches!(try_wait(pid), Wait::Gone(_)));
    }
}
