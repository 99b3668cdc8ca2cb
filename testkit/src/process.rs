//! Processes seen from the outside: what /proc says about them (state, parent, group, CPU
//! time, memory, children, limits), signals, and exit statuses as text.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;

/// The fields of /proc/PID/stat that the harnesses read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// R, S, D..., Z for a zombie, X for a dead process.
    pub state: char,
    pub ppid: u32,
    pub pgrp: i32,
    /// utime + stime, in clock ticks.
    pub ticks: u64,
}

impl Stat {
    /// Neither a zombie nor dead.
    pub fn is_live(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// /proc/PID/stat of a process; `None` once it has been reaped.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f starts at field 3 (state); utime and stime are fields 14 and 15.
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

/// Is the process alive? A zombie (state Z) or dead (X) process counts as dead.
pub fn process_alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.is_live())
}

/// utime + stime of a process, in clock ticks (a zombie's too, until it is reaped).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.ticks)
}

/// utime + stime of a process, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    cpu_ticks(pid).map(|t| t as f64 / clk_tck())
}

/// Total CPU time (user + sys) of `root` and its live descendants, in seconds.
pub fn tree_cpu_secs(root: u32) -> f64 {
    let ticks: u64 = tree(root).into_iter().filter_map(cpu_ticks).sum();
    ticks as f64 / clk_tck()
}

/// Clock ticks per second, the unit of /proc/PID/stat's CPU times.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// A numeric field of /proc/PID/status (`VmRSS` in kB, `voluntary_ctxt_switches`...).
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_field(&status, field)
}

fn parse_status_field(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS")
}

/// The soft `Max open files` limit of a process, as /proc/PID/limits writes it (`?` if it
/// cannot be read).
pub fn max_open_files(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// Every pid in /proc.
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not zombie) children of `pid`.
pub fn children(pid: u32) -> BTreeSet<u32> {
    all_pids()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.ppid == pid && s.is_live()))
        .collect()
}

/// Live (not zombie) members of a process group, in pid order.
pub fn group_members(pgid: i32) -> Vec<u32> {
    let mut v: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.pgrp == pgid && s.is_live()))
        .collect();
    v.sort_unstable();
    v
}

/// No live (non-zombie) process left in the group.
pub fn group_empty(pgid: i32) -> bool {
    group_members(pgid).is_empty()
}

/// `root` and all its descendants, zombies included (children found through
/// /proc/PID/task/TID/children).
pub fn tree(root: u32) -> Vec<u32> {
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

/// Does process `pid` run `binary` (its /proc/PID/exe, even once the file is deleted)?
pub fn runs_binary(pid: u32, binary: &Path) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let binary = binary
        .canonicalize()
        .unwrap_or_else(|_| binary.to_path_buf());
    let exe = exe
        .to_string_lossy()
        .trim_end_matches(" (deleted)")
        .to_string();
    Path::new(&exe) == binary
}

/// Sends `sig` to `pid` with kill(2); whether it was sent.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Sends `sig` to `pid`; panics if kill(2) fails.
pub fn kill_pid(pid: u32, sig: i32) {
    if !signal(pid, sig) {
        panic!("kill({pid}, {sig}) failed: {}", io::Error::last_os_error());
    }
}

/// `exit code 3`, `killed by signal 9`.
pub fn describe_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_skips_odd_command_names() {
        let stat = "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 17 0 0 20 0 3 0 \
                    5000 1000000 300 18446744073709551615";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                state: 'S',
                ppid: 1,
                pgrp: 1234,
                ticks: 267
            })
        );
    }

    #[test]
    fn status_fields_are_read_as_numbers() {
        let status = "Name:\tnginx\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\nThreads:\t1\n\
                      voluntary_ctxt_switches:\t17\n";
        assert_eq!(parse_status_field(status, "VmRSS"), Some(4321));
        assert_eq!(
            parse_status_field(status, "voluntary_ctxt_switches"),
            Some(17)
        );
        assert_eq!(parse_status_field("Name:\tzombie\n", "VmRSS"), None);
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert!(process_alive(me));
        assert_eq!(tree(me)[0], me);
    }
}
