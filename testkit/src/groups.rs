//! The process groups a harness has started and not yet ended, so that a Ctrl-C handler (or
//! the end of a scenario) can end them all, and a harness that dies without cleaning up
//! leaves nothing running.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static LIVE: Mutex<Live> = Mutex::new(Live {
    stopping: false,
    groups: Vec::new(),
});

struct Live {
    /// Set by [`interrupt_all`]: nothing new may start.
    stopping: bool,
    groups: Vec<i32>,
}

fn live() -> MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `cmd` as the leader of a new process group and records the group until
/// [`forget`]. It spawns under the lock, so that [`interrupt_all`] and [`kill_all`] see
/// every group that exists; once [`interrupt_all`] has run it refuses (`Interrupted`).
pub fn spawn(cmd: &mut Command) -> io::Result<Child> {
    cmd.process_group(0);
    let mut live = live();
    if live.stopping {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
    }
    let child = cmd.spawn()?;
    live.groups.push(child.id() as i32);
    Ok(child)
}

/// Forgets a group that has been ended (killed and its leader reaped).
pub fn forget(pgid: i32) {
    live().groups.retain(|&g| g != pgid);
}

/// Makes `cmd`'s process get SIGTERM when the thread that started it dies
/// (`PR_SET_PDEATHSIG`), so a harness that dies without cleaning up stops it anyway.
pub fn term_with_parent(cmd: &mut Command) {
    // SAFETY: the closure only calls prctl(2), which is async-signal-safe, and touches no
    // memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// SIGKILL to every recorded group at once, and forgets them; new groups may start
/// afterwards. For the end of a scenario, or a Ctrl-C handler in a hurry.
pub fn kill_all() {
    let groups = std::mem::take(&mut live().groups);
    for g in groups {
        // SAFETY: killpg(2) on a group this harness created.
        unsafe { libc::killpg(g, libc::SIGKILL) };
    }
}

/// Ends every recorded group (TERM, up to 3 s of grace, KILL) and refuses new ones. For a
/// Ctrl-C handler, which exits right after.
pub fn interrupt_all() {
    let groups = {
        let mut live = live();
        live.stopping = true;
        std::mem::take(&mut live.groups)
    };
    for &g in &groups {
        // SAFETY: killpg(2) on groups this process started.
        unsafe { libc::killpg(g, libc::SIGTERM) };
    }
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end && groups.iter().any(|&g| group_exists(g)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &g in &groups {
        // SAFETY: as above.
        unsafe { libc::killpg(g, libc::SIGKILL) };
    }
}

/// Whether [`interrupt_all`] has run.
pub fn interrupted() -> bool {
    live().stopping
}

fn group_exists(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::killpg(pgid, 0) == 0 }
}
