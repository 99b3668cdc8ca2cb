//! SIGUSR2 binary upgrade: the master executes its binary again (the file was replaced) as a
//! new master that inherits the listening sockets; once the new workers serve, the old master
//! drains and exits 0. Under a background load no request fails across the upgrade. If the new
//! binary cannot start, the old master and its workers keep serving. USR2 executes the binary
//! as invoked (a swapped `current` symlink upgrades to the new release) or `--reexec-as PATH`,
//! which must name an executable file when the server starts.
//!
//! The server runs from a copy of the forklift binary in a temp dir, so the test can replace
//! the file atomically (copy to a temporary name, rename over) as a deployment would.

mod common;

use common::*;

/// Request budget of `assert_served_by` (it stops as soon as every expected worker has answered;
/// on a shared socket one busy worker can win a few hundred accepts in a row).
const SPREAD: usize = 1000;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The inode of the file a process executes (/proc/PID/exe follows to it even when the
/// file has been replaced).
fn exe_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/exe"))
        .ok()
        .map(|m| m.ino())
}

/// The `ready` lines printed so far (old master first, then the new one).
fn ready_lines(s: &Server) -> Vec<Hook> {
    s.hooks_of("ready")
}

fn pid_set(h: &Hook) -> BTreeSet<u32> {
    parse_pid_list(h.get("pids")).into_iter().collect()
}

/// After the test: kill what is left through the harness guard and check that no process of
/// the group survives (the new master is a child of the old one, in the same group).
fn kill_and_check_group(s: &mut Server) {
    s.kill_all();
    let pgid = s.pgid;
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || group_empty(
            pgid
        )),
        "processes of group {pgid} left after the group kill: {:?}",
        group_members(pgid)
    );
}

// ---------------------------------------------------------------------------
// Background load: a few threads, one connection per request, GET /
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LoadStats {
    ok: AtomicUsize,
    failed: AtomicUsize,
    refused: AtomicUsize,
    failures: Mutex<Vec<String>>,
    pids: Mutex<BTreeSet<u32>>,
}

struct Load {
    stats: Arc<LoadStats>,
    clients: Clients,
}

const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

impl Load {
    /// `threads` clients until stopped or `limit` has passed (so the load is bounded even if
    /// the test never stops it).
    fn start(addr: SocketAddr, threads: usize, limit: Duration) -> Load {
        let stats = Arc::new(LoadStats::default());
        let until = Instant::now() + limit;
        let mut clients = Clients::new();
        for _ in 0..threads {
            let stats = stats.clone();
            clients.spawn(move |stop| client(addr, &stats, stop, until));
        }
        Load { stats, clients }
    }

    fn ok(&self) -> usize {
        self.stats.ok.load(Ordering::SeqCst)
    }

    fn failed(&self) -> usize {
        self.stats.failed.load(Ordering::SeqCst)
    }

    fn finish(&mut self) {
        self.clients.finish();
    }
}

fn client(addr: SocketAddr, stats: &LoadStats, stop: &AtomicBool, until: Instant) {
    let t0 = Instant::now();
    let fail = |what: String| {
        stats.failed.fetch_add(1, Ordering::SeqCst);
        let mut f = stats.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(format!("at {}: {what}", ms(t0.elapsed())));
        }
    };
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        let stream = match TcpStream::connect_timeout(&addr, LOAD_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    stats.refused.fetch_add(1, Ordering::SeqCst);
                }
                fail(format!("connect: {e} ({:?})", e.kind()));
                continue;
            }
        };
        let r = stream
            .set_read_timeout(Some(LOAD_TIMEOUT))
            .and_then(|_| stream.set_write_timeout(Some(LOAD_TIMEOUT)))
            .and_then(|_| http_request(stream, &addr.to_string(), "/"));
        match r {
            Ok(resp) if resp.status == 200 && resp.body == b"greeting!!!" => {
                stats.ok.fetch_add(1, Ordering::SeqCst);
                if let Some(pid) = resp
                    .header("x-forklift-worker")
                    .and_then(|v| v.trim().parse().ok())
                {
                    stats.pids.lock().unwrap().insert(pid);
                }
            }
            Ok(resp) => fail(format!("bad answer: {resp:?}")),
            Err(e) => fail(format!("request: {e} ({:?})", e.kind())),
        }
        // pacing, not synchronisation: keeps 3 clients from saturating 2 cores
        thread::sleep(Duration::from_millis(1));
    }
}

// ---------------------------------------------------------------------------
// A successful upgrade under load
// ---------------------------------------------------------------------------

fn upgrade_under_load(extra: &[&str]) {
    let dir = TempDir::new("upgrade");
    let bin = install_binary(&dir.0, None);
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--workers", "2"];
    args.extend_from_slice(extra);
    let mut s = Server::start_program(&bin, &args);
    let old: BTreeSet<u32> = s.wait_ready().into_iter().collect();
    let addr = s.addr();
    let target = Listen::Tcp(addr);
    assert_served_by(&target, &old, SPREAD);
    let old_inode = exe_inode(s.pid).expect("exe of the old master");

    let mut load = Load::start(addr, 3, Duration::from_secs(15));
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || load.ok() >= 30),
        "the load does not flow: {} answers, failures {:?}",
        load.ok(),
        load.stats.failures.lock().unwrap()
    );

    // the new binary: a fresh copy renamed over the running one
    let bin2 = install_binary(&dir.0, None);
    assert_eq!(bin, bin2);
    let new_inode = std::fs::metadata(&bin).unwrap().ino();
    assert_ne!(old_inode, new_inode, "the replacement must be a new file");
    let before_upgrade = load.ok();
    let t0 = Instant::now();
    let new_master = usr2_new_master(&mut s);
    assert_ne!(new_master, s.pid);

    // the new master announces its listener, its workers and its readiness
    assert!(
        poll_until(Instant::now() + READY_TIMEOUT, || ready_lines(&s).len()
            >= 2),
        "no second `ready` line (from the new master {new_master}) within {READY_TIMEOUT:?}"
    );
    let ready_new = ready_lines(&s).remove(1);
    let new: BTreeSet<u32> = pid_set(&ready_new);
    let took_over = t0.elapsed();
    assert_eq!(
        new.len(),
        2,
        "new master's ready line: {:?}",
        ready_new.line
    );
    assert!(
        new.is_disjoint(&old),
        "the new master's workers {new:?} overlap the old ones {old:?}"
    );
    let listens = s.listeners();
    assert_eq!(
        listens.len(),
        2,
        "one `listening on` line per master: {listens:?}"
    );
    assert_eq!(
        listens[1].tcp(),
        addr,
        "the new master serves on the same port"
    );
    // The new master's lines may come before or after the old master's `upgrading` line
    // (two processes writing to one pipe): its `spawned` lines are those after the old
    // master's `ready` line, and its workers are its children.
    let first_ready_idx = ready_lines(&s)[0].index;
    let new_spawned: BTreeSet<u32> = s
        .hooks_of("spawned")
        .into_iter()
        .filter(|h| h.index > first_ready_idx)
        .map(|h| h.num("pid"))
        .collect();
    assert_eq!(
        new_spawned, new,
        "`spawned` lines after the first `ready` must be the new master's workers"
    );
    for &p in &new {
        assert_eq!(
            ppid_of(p),
            Some(new_master),
            "worker {p} must be a child of the new master {new_master}"
        );
    }
    // the new master runs the new file, in the test's process group
    assert_eq!(
        exe_inode(new_master),
        Some(new_inode),
        "the new master must execute the replaced binary"
    );
    assert_eq!(pgrp_of(new_master), Some(s.pgid));

    // the old master drains and exits 0; its workers are gone
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    let old_gone = t0.elapsed();
    assert_eq!(
        st.code(),
        Some(0),
        "old master: {} (want exit code 0)",
        describe_status(&st)
    );
    s.expect_line(
        "`stopped` (old master)",
        |l| l == "stopped",
        Duration::from_secs(2),
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || old
            .iter()
            .all(|&p| !process_alive(p))),
        "old workers still alive after the old master exited: {:?}",
        old.iter()
            .filter(|&&p| process_alive(p))
            .collect::<Vec<_>>()
    );
    assert!(
        process_alive(new_master),
        "the new master must outlive the old one"
    );
    assert!(new.iter().all(|&p| process_alive(p)));

    // the load keeps flowing, then only the new workers answer
    let after_exit = load.ok();
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || load.ok()
            >= after_exit + 50),
        "the load stalled after the upgrade: {} answers",
        load.ok()
    );
    load.finish();
    let st = &load.stats;
    let ok = st.ok.load(Ordering::SeqCst);
    let failed = load.failed();
    println!(
        "UPGRADE {extra:?}: {} requests across the upgrade ({} before USR2), {failed} failed, \
         {} refused connects; new master ready {} after USR2, old master gone {} after USR2; \
         pids served {:?}",
        ok + failed,
        before_upgrade,
        st.refused.load(Ordering::SeqCst),
        ms(took_over),
        ms(old_gone),
        st.pids.lock().unwrap()
    );
    assert_eq!(
        failed,
        0,
        "request(s) failed across the upgrade: {:#?}",
        st.failures.lock().unwrap()
    );
    let served = st.pids.lock().unwrap().clone();
    assert!(
        served.is_subset(&old.union(&new).copied().collect()),
        "answers from unknown pids: {served:?}"
    );
    assert!(
        !served.is_disjoint(&new),
        "the new workers never answered the load"
    );
    assert_served_by(&target, &new, SPREAD);

    // exactly one `stopped` (the old master's): the new one still runs
    let stopped = s.stdout_lines().iter().filter(|l| *l == "stopped").count();
    assert_eq!(stopped, 1, "stdout: {:?}", s.stdout_lines());

    // the new master stops gracefully on TERM, like any master
    kill_pid(new_master, libc::SIGTERM);
    assert!(
        poll_until(Instant::now() + Duration::from_secs(10), || {
            !process_alive(new_master) && new.iter().all(|&p| !process_alive(p))
        }),
        "the new master or its workers survived SIGTERM"
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(2), || s
            .stdout_lines()
            .iter()
            .filter(|l| *l == "stopped")
            .count()
            == 2),
        "no `stopped` line from the new master: {:?}",
        s.stdout_lines()
    );
    kill_and_check_group(&mut s);
    drop(s);
    drop(dir);
}

/// Sends USR2 and returns the pid of the new master the old one reports starting.
fn usr2_new_master(s: &mut Server) -> u32 {
    s.send_signal(libc::SIGUSR2);
    let upgrading = s.expect_line(
        "`upgrading new_master_pid=...`",
        |l| l.starts_with("upgrading "),
        Duration::from_secs(5),
    );
    parse_hook(&upgrading).1["new_master_pid"]
        .parse()
        .unwrap_or_else(|_| panic!("bad new_master_pid in {upgrading:?}"))
}

#[test]
fn usr2_upgrade_under_load() {
    upgrade_under_load(&[]);
}

#[test]
fn usr2_upgrade_under_load_reuse_port() {
    upgrade_under_load(&["--reuse-port"]);
}

// ---------------------------------------------------------------------------
// A new binary that cannot start: the old master keeps serving
// ---------------------------------------------------------------------------

const BROKEN: &str = "#!/bin/sh\necho 'broken-forklift: refusing to start' >&2\nexit 1\n";

#[test]
fn usr2_upgrade_failure_keeps_old_master() {
    let dir = TempDir::new("upgrade-fail");
    let bin = install_binary(&dir.0, None);
    let mut s = Server::start_program(
        &bin,
        &["serve", "--listen", "127.0.0.1:0", "--workers", "2"],
    );
    let old: BTreeSet<u32> = s.wait_ready().into_iter().collect();
    let target = Listen::Tcp(s.addr());
    assert_served_by(&target, &old, SPREAD);

    install_binary(&dir.0, Some(BROKEN.as_bytes()));
    let new_master = usr2_new_master(&mut s);
    let failed = s.expect_line(
        "`upgrade failed ...`",
        |l| l.starts_with("upgrade failed "),
        Duration::from_secs(5),
    );
    let (_, f) = parse_hook(&failed.replacen("upgrade failed", "upgrade_failed", 1));
    assert_eq!(
        f.get("new_master_pid").map(String::as_str),
        Some(new_master.to_string().as_str()),
        "{failed:?}"
    );
    assert_eq!(
        f.get("status").map(String::as_str),
        Some("exited with code 1"),
        "{failed:?}"
    );
    assert!(
        s.wait_stderr_contains("broken-forklift: refusing to start", Duration::from_secs(2))
            .is_some(),
        "the broken binary's stderr is not in the server's stderr"
    );
    assert!(
        !process_alive(new_master),
        "the failed new master is still alive"
    );

    // the old master and the same workers keep serving
    assert!(
        s.try_exit().is_none(),
        "the old master exited after a failed upgrade"
    );
    assert!(old.iter().all(|&p| process_alive(p)));
    assert_served_by(&target, &old, SPREAD);
    assert_eq!(ready_lines(&s).len(), 1, "stdout: {:?}", s.stdout_lines());
    assert_eq!(
        s.spawned_pids().len(),
        2,
        "no worker may be spawned by a failed upgrade: {:?}",
        s.stdout_lines()
    );
    assert!(
        !s.stdout_lines().iter().any(|l| l == "stopped"),
        "stdout: {:?}",
        s.stdout_lines()
    );

    // a later upgrade with a good binary still works
    install_binary(&dir.0, None);
    s.send_signal(libc::SIGUSR2);
    assert!(
        poll_until(Instant::now() + READY_TIMEOUT, || ready_lines(&s).len()
            >= 2),
        "a second USR2 with a good binary did not bring up a new master"
    );
    let new = pid_set(&ready_lines(&s)[1]);
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "old master: {}", describe_status(&st));
    assert_served_by(&target, &new, SPREAD);

    kill_and_check_group(&mut s);
    drop(s);
    drop(dir);
}

/// The control socket moves to the new master with the listening sockets: `status` answers
/// from the new master, and its file stays until the new master stops.
#[test]
fn usr2_upgrade_hands_over_the_control_socket() {
    let dir = TempDir::new("upgrade-ctl");
    let bin = install_binary(&dir.0, None);
    let ctl = dir.0.join("ctl.sock");
    let ctl_str = ctl.to_str().unwrap();
    let mut s = Server::start_program(
        &bin,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--control",
            ctl_str,
        ],
    );
    s.wait_ready();
    let old_master = s.pid;
    install_binary(&dir.0, None);
    let new_master = usr2_new_master(&mut s);
    let status = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "the old master hands over and exits 0"
    );
    assert!(
        ctl.exists(),
        "the old master removed the control socket it handed over"
    );
    let out = std::process::Command::new(forklift_bin())
        .args(["status", "--control", ctl_str])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with(&format!("master pid {new_master},")),
        "status from {old_master} or {new_master}? {text}"
    );
    kill_pid(new_master, libc::SIGTERM);
    assert!(
        poll_until(Instant::now() + Duration::from_secs(10), || !ctl.exists()),
        "the new master removes the control socket when it stops"
    );
}

/// A Capistrano-style deploy: the binary is started through a `current` symlink; the symlink
/// is pointed at a new release and USR2 starts the new release (not the old one, which is
/// what re-executing /proc/self/exe would do). The health port moves to the new master.
#[test]
fn usr2_after_a_symlink_swap_upgrades_to_the_new_release() {
    let dir = TempDir::new("upgrade-symlink");
    let release = |name: &str| {
        let d = dir.0.join("releases").join(name);
        std::fs::create_dir_all(&d).unwrap();
        install_binary(&d, None)
    };
    let (old, new) = (release("a"), release("b"));
    let current = dir.0.join("current");
    std::os::unix::fs::symlink(old.parent().unwrap(), &current).unwrap();
    let mut s = Server::start_program(
        &current.join("forklift"),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--health",
            "127.0.0.1:0",
        ],
    );
    s.wait_ready();
    let health = health_addr(&s);
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(exe_inode(s.pid), Some(inode(&old)));
    // Swap the symlink atomically, as deploy tools do.
    let next = dir.0.join("current.next");
    std::os::unix::fs::symlink(new.parent().unwrap(), &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    let new_master = usr2_new_master(&mut s);
    assert_eq!(
        exe_inode(new_master),
        Some(inode(&new)),
        "the new master runs the new release"
    );
    let status = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "the old master hands over and exits 0"
    );
    let metrics = http_get_timeout(health, "/metrics", Duration::from_secs(5))
        .expect("the health port answers after the upgrade")
        .body_str();
    assert!(
        metrics.contains(&format!("pid=\"{new_master}\"")),
        "the new master answers on the health port:\n{metrics}"
    );
    kill_pid(new_master, libc::SIGTERM);
}

// ---------------------------------------------------------------------------
// --reexec-as PATH
// ---------------------------------------------------------------------------

/// `--reexec-as PATH`: USR2 executes PATH, not the binary the master was started from, and
/// PATH is taken as given, its symlinks followed at the USR2 (so a `current` symlink swapped
/// after the start upgrades to the release it points to then).
#[test]
fn usr2_executes_the_reexec_as_path() {
    let dir = TempDir::new("upgrade-reexec-as");
    let copy = |name: &str| {
        let d = dir.0.join(name);
        std::fs::create_dir_all(&d).unwrap();
        install_binary(&d, None)
    };
    let (started, old, new) = (copy("started"), copy("a"), copy("b"));
    let current = dir.0.join("current");
    std::os::unix::fs::symlink(&old, &current).unwrap();
    let mut s = Server::start_program(
        &started,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--reexec-as",
            current.to_str().unwrap(),
        ],
    );
    s.wait_ready();
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(exe_inode(s.pid), Some(inode(&started)));
    let next = dir.0.join("current.next");
    std::os::unix::fs::symlink(&new, &next).unwrap();
    std::fs::rename(&next, &current).unwrap();
    let new_master = usr2_new_master(&mut s);
    assert_eq!(
        exe_inode(new_master),
        Some(inode(&new)),
        "the new master runs what --reexec-as points to at the USR2"
    );
    assert!(
        s.stderr_text().contains(&format!(
            "new master pid {new_master} ({})",
            current.display()
        )),
        "the log names the path as given:\n{}",
        s.stderr_text()
    );
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "old master: {}", describe_status(&st));
    assert!(
        poll_until(Instant::now() + READY_TIMEOUT, || ready_lines(&s).len()
            >= 2),
        "the new master did not become ready: {:?}",
        s.stdout_lines()
    );
    assert_greeting(&http_get(s.addr(), "/").unwrap());
    kill_and_check_group(&mut s);
}

/// A `--reexec-as` that names no executable file is refused when the server starts (the
/// master checks it before any worker is spawned), not left to fail at the first USR2.
#[test]
fn a_reexec_as_path_that_is_not_executable_fails_at_start() {
    let dir = TempDir::new("upgrade-reexec-bad");
    let not_executable = dir.0.join("plain-file");
    std::fs::write(&not_executable, b"not a program\n").unwrap();
    let missing = dir.0.join("missing").join("forklift");
    for bad in [&missing, &not_executable] {
        let (s, st) = run_to_exit(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--reexec-as",
                bad.to_str().unwrap(),
            ],
            Duration::from_secs(10),
        );
        assert!(!st.success(), "{}: {}", bad.display(), describe_status(&st));
        let err = error_line(&s).unwrap_or_else(|| panic!("no error line:\n{}", s.stderr_text()));
        assert!(
            err.contains(&format!(
                "--reexec-as {}: not an executable file",
                bad.display()
            )),
            "{err}"
        );
        assert!(s.spawned_pids().is_empty(), "{:?}", s.stdout_lines());
    }
}

/// A `--reexec-as` binary removed after the start fails the USR2, not the server: the
/// master logs why and keeps serving with the same workers.
#[test]
fn a_reexec_as_path_removed_after_the_start_fails_the_upgrade_only() {
    let dir = TempDir::new("upgrade-reexec-gone");
    let target = install_binary(&dir.0, None);
    let mut s = Server::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--reexec-as",
        target.to_str().unwrap(),
    ]);
    let workers: BTreeSet<u32> = s.wait_ready().into_iter().collect();
    std::fs::remove_file(&target).unwrap();
    s.send_signal(libc::SIGUSR2);
    let failed = s
        .wait_stderr_contains("binary upgrade failed", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no failure logged:\n{}", s.stderr_text()));
    let why = format!(
        "cannot execute {}: No such file or directory",
        target.display()
    );
    assert!(failed.contains(&why), "{failed}");
    assert!(failed.contains("this master keeps serving"), "{failed}");
    assert!(
        s.try_exit().is_none(),
        "the master exited after a failed upgrade"
    );
    assert_served_by(&Listen::Tcp(s.addr()), &workers, SPREAD);
    kill_and_check_group(&mut s);
}
