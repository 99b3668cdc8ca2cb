//! Child processes in their own process groups, stopped for sure, and what /proc says about
//! them (RSS, CPU time, descendants).

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Process groups that are running now, so that a Ctrl-C (or TERM/HUP) can end them all.
static LIVE: Mutex<Live> = Mutex::new(Live {
    stopping: false,
    groups: Vec::new(),
});

struct Live {
    /// Set once the harness is being interrupted: nothing new may start.
    stopping: bool,
    groups: Vec<i32>,
}

fn live() -> std::sync::MutexGuard<'static, Live> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

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
    /// Starts `cmd` as the leader of a new process group and registers the group for
    /// [`interrupt_all`]. The child also gets SIGTERM if the harness dies without cleaning up.
    pub fn spawn(cmd: &mut Command) -> io::Result<Group> {
        cmd.process_group(0);
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
        // Spawn under the lock so an interrupt sees every group that exists.
        let mut live = live();
        if live.stopping {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        let child = cmd.spawn()?;
        let pgid = child.id() as i32;
        live.groups.push(pgid);
        Ok(Group {
            child,
            pgid,
            done: false,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pgid
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
        live().groups.retain(|&g| g != self.pgid);
        self.done = true;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Ends every registered group (TERM, a short grace, KILL) and refuses new ones. For the
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

/// `pid` and all its descendants (children first found through /proc/PID/task/TID/children).
pub fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let pid = out[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(children) = std::fs::read_to_string(task.path().join("children")) else {
                continue;
            };
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&status)
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

fn parse_stat_cpu(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Total CPU time (user + sys) of `root` and its live descendants, in seconds.
pub fn tree_cpu_secs(root: i32) -> f64 {
    let ticks: u64 = tree(root).into_iter().filter_map(cpu_ticks).sum();
    ticks as f64 / clock_ticks_per_sec()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_skips_odd_command_names() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 3 0 \
                    5000 1000000 300 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(267));
    }

    #[test]
    fn vmrss_is_read_in_kib() {
        let status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss(status), Some(4321));
        assert_eq!(parse_vmrss("Name:\tzombie\n"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id() as i32;
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert_eq!(tree(me)[0], me);
    }
}
