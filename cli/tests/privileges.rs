//! Privilege drop and CPU pinning, read back from /proc: with `--user nobody` the master stays
//! root and every worker runs as nobody (real and effective uid, gid, no supplementary
//! groups), for `serve` and for the program `run` starts; an unknown user or group is refused
//! before anything starts; `--pin-workers` pins each worker to its own CPU.

mod common;

use common::*;

/// Request budget of `assert_served_by` (it stops as soon as every expected worker has answered;
/// on a shared socket one busy worker can win a few hundred accepts in a row).
const SPREAD: usize = 1000;
use std::collections::BTreeSet;
use std::ffi::CString;
use std::time::Duration;

/// The whitespace-separated values of a `Key:` line of /proc/PID/status.
fn status_field(pid: u32, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(key))
        .unwrap_or_else(|| panic!("no {key}: line in /proc/{pid}/status"));
    line[key.len() + 1..]
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// (uid, gid) of a user, from the system's user database.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).unwrap();
    // SAFETY: getpwnam with a valid C string; the result is read at once (single-threaded use
    // of the static buffer in this test's thread is enough here).
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null result of getpwnam.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

/// The user to drop to, or `None` (with a notice) when the test cannot run here.
fn nobody_or_skip(test: &str) -> Option<(u32, u32)> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIP {test}: not running as root (privilege drop needs root)");
        return None;
    }
    match lookup_user("nobody") {
        Some(ids) => Some(ids),
        None => {
            println!("SKIP {test}: no user `nobody` on this machine");
            None
        }
    }
}

fn ids(v: &[String]) -> Vec<u32> {
    v.iter()
        .map(|x| x.parse().unwrap_or_else(|_| panic!("bad id {x:?}")))
        .collect()
}

fn workers_run_as_nobody(extra: &[&str]) {
    let Some((uid, gid)) = nobody_or_skip(&format!("workers_run_as_nobody {extra:?}")) else {
        return;
    };
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--user",
        "nobody",
    ];
    args.extend_from_slice(extra);
    let s = Server::start_ready(&args);
    assert_workers_run_as(&s, uid, gid, &format!("{extra:?}"));
}

/// The master of `s` runs as root, its two workers as (uid, gid) with no other group, and
/// they serve.
fn assert_workers_run_as(s: &Server, uid: u32, gid: u32, label: &str) {
    let extra = label;
    let workers: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    assert_eq!(workers.len(), 2);

    // the master keeps root (it binds, reloads, and can signal its workers)
    let master_uid = ids(&status_field(s.pid, "Uid"));
    assert_eq!(
        master_uid,
        vec![0, 0, 0, 0],
        "master Uid (real, effective, saved, fs)"
    );
    for &pid in &workers {
        let u = ids(&status_field(pid, "Uid"));
        let g = ids(&status_field(pid, "Gid"));
        let groups = ids(&status_field(pid, "Groups"));
        println!("PRIVILEGES {extra}: worker {pid} Uid {u:?} Gid {g:?} Groups {groups:?}");
        assert_eq!(
            u,
            vec![uid; 4],
            "worker {pid} Uid (real, effective, saved, fs) must all be nobody's ({uid})"
        );
        assert_eq!(
            g,
            vec![gid; 4],
            "worker {pid} Gid must all be nobody's primary group ({gid})"
        );
        assert!(
            groups.iter().all(|&x| x == gid),
            "worker {pid} keeps supplementary groups {groups:?}"
        );
    }
    // and they serve
    assert_served_by(&Listen::Tcp(s.addr()), &workers, SPREAD);
}

#[test]
fn workers_run_as_nobody_fork() {
    workers_run_as_nobody(&[]);
}

#[test]
fn workers_run_as_nobody_exec() {
    workers_run_as_nobody(&["--spawn", "exec"]);
}

/// `forklift run --user nobody`: the program each worker runs (the Python example) runs as
/// nobody, as `serve`'s workers do.
#[test]
fn run_workers_run_as_nobody() {
    let Some((uid, gid)) = nobody_or_skip("run_workers_run_as_nobody") else {
        return;
    };
    // An interpreter nobody may execute: the first python3 on root's PATH may live under
    // /root (pyenv), which nobody cannot enter.
    let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        println!("SKIP run_workers_run_as_nobody: no system python3");
        return;
    };
    let script = python_script();
    let s = Server::start_ready(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--ready-notify",
        "--user",
        "nobody",
        "--",
        python,
        &script,
    ]);
    assert_workers_run_as(&s, uid, gid, "run --user nobody");
}

#[test]
fn run_refuses_an_unknown_user() {
    let script = python_script();
    let (s, st) = run_to_exit(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--user",
            "no-such-user-xyz",
            "--",
            "python3",
            &script,
        ],
        Duration::from_secs(10),
    );
    assert!(!st.success(), "must fail: {}", describe_status(&st));
    let stderr = s.stderr_text();
    assert!(
        stderr.contains("does not exist") && stderr.contains("no-such-user-xyz"),
        "stderr must say the user does not exist: {stderr}"
    );
    assert!(s.spawned_pids().is_empty(), "no worker may start");
}

/// The Python example `forklift run` starts (readable by every user).
fn python_script() -> String {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/run/python_server.py");
    p.canonicalize().unwrap_or(p).display().to_string()
}

fn refused_before_start(flag: &str, name: &str) {
    let (s, st) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            flag,
            name,
        ],
        Duration::from_secs(10),
    );
    assert!(
        !st.success(),
        "forklift serve {flag} {name} must fail: {}",
        describe_status(&st)
    );
    let stderr = s.stderr_text();
    assert!(
        stderr.contains("does not exist"),
        "stderr must say the {flag} does not exist: {stderr}"
    );
    assert!(stderr.contains(name), "stderr must name {name:?}: {stderr}");
    assert!(
        s.spawned_pids().is_empty(),
        "no worker may start: {:?}",
        s.stdout_lines()
    );
    println!(
        "REFUSED {flag} {name}: {} / {:?}",
        describe_status(&st),
        error_line(&s)
    );
}

#[test]
fn unknown_user_is_refused() {
    refused_before_start("--user", "no-such-user-xyz");
}

#[test]
fn unknown_group_is_refused() {
    refused_before_start("--group", "no-such-group-xyz");
}

// ---------------------------------------------------------------------------
// CPU pinning
// ---------------------------------------------------------------------------

/// Expand a cpu list such as `0-2,5` to its CPUs.
fn cpu_list(s: &str) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().unwrap());
            }
        }
    }
    out
}

fn cpus_allowed(pid: u32) -> BTreeSet<usize> {
    cpu_list(&status_field(pid, "Cpus_allowed_list").join(","))
}

fn pinned_workers(extra: &[&str]) {
    let mine = cpus_allowed(std::process::id());
    if mine.len() < 2 {
        println!(
            "SKIP pinned_workers {extra:?}: this process may use {} CPU(s): {mine:?}",
            mine.len()
        );
        return;
    }
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--pin-workers",
    ];
    args.extend_from_slice(extra);
    let s = Server::start_ready(&args);
    let workers = s.pids_from_ready();
    let mut pinned = Vec::new();
    for &pid in &workers {
        let cpus = cpus_allowed(pid);
        assert_eq!(
            cpus.len(),
            1,
            "worker {pid} must be pinned to one CPU, its Cpus_allowed_list is {cpus:?}"
        );
        let cpu = *cpus.iter().next().unwrap();
        assert!(
            mine.contains(&cpu),
            "worker {pid} pinned to CPU {cpu} outside {mine:?}"
        );
        pinned.push(cpu);
    }
    println!("PINNING {extra:?}: workers {workers:?} on CPUs {pinned:?}");
    assert_ne!(
        pinned[0], pinned[1],
        "the two workers must be pinned to different CPUs"
    );
    // the master itself is not pinned
    assert_eq!(cpus_allowed(s.pid), mine, "master's Cpus_allowed_list");
    let workers: BTreeSet<u32> = workers.into_iter().collect();
    let target = Listen::Tcp(s.addr());
    if extra.contains(&"--reuse-port") {
        // With --reuse-port each worker's socket prefers connections arriving on its CPU
        // (SO_INCOMING_CPU): which worker answers depends on where the client runs, so only
        // check that the workers answer, and show from which CPU which worker did.
        for &cpu in &mine {
            let seen = from_cpu(cpu, || {
                let r = spread_requests(&target, 10, 1, |_| false);
                assert!(
                    r.errors.is_empty() && r.bad.is_empty() && r.ok == 10,
                    "requests from CPU {cpu}: {r:?}"
                );
                r.pids
            });
            assert!(
                seen.is_subset(&workers),
                "answers from {seen:?}, workers {workers:?}"
            );
            println!("PINNING {extra:?}: connections from CPU {cpu} answered by {seen:?}");
        }
    } else {
        assert_served_by(&target, &workers, SPREAD);
    }
}

/// Run `f` on this thread pinned to `cpu`, then restore the thread's CPUs.
fn from_cpu<T>(cpu: usize, f: impl FnOnce() -> T) -> T {
    // SAFETY: sched_{get,set}affinity on the calling thread with a valid cpu_set_t.
    unsafe {
        let mut saved: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(libc::sched_getaffinity(0, size, &mut saved), 0);
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(
            libc::sched_setaffinity(0, size, &one),
            0,
            "pin to CPU {cpu}"
        );
        let out = f();
        assert_eq!(libc::sched_setaffinity(0, size, &saved), 0);
        out
    }
}

#[test]
fn pin_workers_fork() {
    pinned_workers(&[]);
}

#[test]
fn pin_workers_exec_reuse_port() {
    pinned_workers(&["--spawn", "exec", "--reuse-port"]);
}
