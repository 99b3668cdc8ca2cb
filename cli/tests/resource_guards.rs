//! Resource guards (issue 13, part 4), with real processes: the master raises the open-file
//! limit that master and workers run with; `--max-connections` makes a worker stop accepting
//! at its limit, so connections wait in the backlog instead of running into EMFILE;
//! `--max-worker-memory` and `--max-worker-age` replace a worker (replacement ready first, then
//! the old one drains) for `serve` and for `run`.

mod common;

use common::*;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// The (soft, hard) `Max open files` of a process, from /proc/PID/limits.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/limits: {e}"));
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no `Max open files` line:\n{limits}"));
    let mut values = line["Max open files".len()..].split_whitespace();
    let mut next = || {
        values
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unparsable limits line {line:?}"))
    };
    (next(), next())
}

#[test]
fn the_open_file_limit_is_raised_for_master_and_workers() {
    // This test's own hard limit, lowered a little so the raise is visible whatever it is.
    let (_, hard) = nofile(std::process::id());
    let hard = hard.min(8192);
    let mut cmd = Command::new(forklift_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .env("RUST_LOG", DEFAULT_RUST_LOG);
    // SAFETY: setrlimit(2) between fork and exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let s = Server::start_command(cmd, vec!["(soft nofile 256) serve --workers 2".into()]);
    let workers = s.wait_ready();
    let raised = format!("raised the open-file limit from 256 to {hard}");
    assert!(
        s.wait_stderr_contains(&raised, Duration::from_secs(5))
            .is_some(),
        "the master should log {raised:?}"
    );
    for pid in std::iter::once(s.pid).chain(workers.iter().copied()) {
        let (soft, h) = nofile(pid);
        println!("NOFILE: pid {pid} soft {soft} hard {h}");
        assert_eq!(
            (soft, h),
            (hard, hard),
            "pid {pid}: soft limit == hard limit"
        );
    }
    assert_served_by(&Listen::Tcp(s.addr()), &workers.into_iter().collect(), 1000);
}
