//! Child processes in their own process groups, stopped for sure (recorded in
//! forklift-testkit's [`groups`], which a Ctrl-C ends), and finding programs.

use std::io;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use forklift_testkit::groups;

/// A child started as the leader of its own process group. Dropping it kills the group.
pub struct Group {
    child: Child,
    pgid: i32,
    done: bool,
}

/// How a [`Group::stop`] went.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// The leader exited by itself within the grace period (after TERM).
    Exited { status: String, after_ms: f64 },
    /// The grace period ran out and the group was killed.
    Killed { after_ms: f64 },
}

impl Group {
    /// Starts `cmd` as the leader of a new process group and records the group for
    /// [`groups::interrupt_all`]. The child also gets SIGTERM if the harness dies without
    /// cleaning up.
    pub fn spawn(cmd: &mut Command) -> io::Result<Group> {
        groups::term_with_parent(cmd);
        let child = groups::spawn(cmd)?;
        let pgid = child.id() as i32;
        Ok(Group {
            child,
            pgid,
            done: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The leader's exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `deadline` for the leader to exit by itself, then kills the group.
    /// Returns the exit status, or `None` if it had to be killed.
    pub fn wait_or_kill(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        let status = loop {
            if let Some(s) = self.try_wait() {
                break Some(s);
            }
            if Instant::now() >= end {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.kill_group();
        status
    }

    /// TERM to the leader; KILL to the whole group after `grace`, and in any case at the end
    /// (so no straggler keeps the port).
    pub fn stop(&mut self, grace: Duration) -> Stopped {
        let start = Instant::now();
        if let Some(status) = self.try_wait() {
            self.kill_group();
            return Stopped::Exited {
                status: format!("had already exited: {status}"),
                after_ms: 0.0,
            };
        }
        // SAFETY: kill(2) with our own child's pid.
        unsafe { libc::kill(self.pgid, libc::SIGTERM) };
        let status = self.wait_or_kill(grace);
        let after_ms = start.elapsed().as_secs_f64() * 1000.0;
        match status {
            Some(s) => Stopped::Exited {
                status: s.to_string(),
                after_ms,
            },
            None => Stopped::Killed { after_ms },
        }
    }

    /// KILL to the group, reap the leader, forget the group.
    fn kill_group(&mut self) {
        if self.done {
            return;
        }
        // SAFETY: killpg(2) on the group this child leads.
        unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        groups::forget(self.pgid);
        self.done = true;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Is `name` an executable file in one of PATH's directories?
pub fn on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Raises this process's soft RLIMIT_NOFILE to at least `want` (children inherit it): up to
/// the hard limit, and the hard limit too when allowed (root). Returns the soft limit before
/// and after; never lowers it.
pub fn raise_nofile(want: u64) -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    if old >= want {
        return Ok((old, old));
    }
    let set = |cur: u64, max: u64| {
        let l = libc::rlimit {
            rlim_cur: cur,
            rlim_max: max,
        };
        // SAFETY: setrlimit(2) reads the struct we pass.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 }
    };
    let new = if lim.rlim_max < want && set(want, want) {
        want
    } else {
        let cur = want.min(lim.rlim_max);
        if !set(cur, lim.rlim_max) {
            return Err(io::Error::last_os_error());
        }
        cur
    };
    Ok((old, new))
}
