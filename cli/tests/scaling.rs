//! SIGTTIN / SIGTTOU: one worker more or fewer, the retired ones drain and exit
//! with code 0, and TTOU with one worker left is ignored.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Wait for the next `workers=N` line after the first `after` of them; returns its index.
fn expect_workers_line(s: &Server, after: usize, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    let ok = poll_until(deadline, || workers_lines(s).len() > after);
    let lines = workers_lines(s);
    assert!(
        ok,
        "no `workers={n}` line within 5 s (workers lines so far: {lines:?})"
    );
    let (index, line) = &lines[after];
    assert_eq!(line, &format!("workers={n}"), "workers lines: {lines:?}");
    *index
}

/// Every `workers=N` line so far, with its stdout index.
fn workers_lines(s: &Server) -> Vec<(usize, String)> {
    s.stdout_lines()
        .into_iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with("workers="))
        .collect()
}

/// The `spawned` line printed after stdout index `after` for worker index `worker`.
fn expect_spawned_after(s: &Server, after: usize, worker: u32) -> Hook {
    let deadline = Instant::now() + Duration::from_secs(5);
    let find = || {
        s.hooks_of("spawned")
            .into_iter()
            .find(|h| h.index > after && h.num("worker") == worker)
    };
    assert!(
        poll_until(deadline, || find().is_some()),
        "no `spawned worker={worker}` line after line {after}: {:?}",
        s.stdout_lines()
    );
    find().unwrap()
}

/// Wait for the `exited` line of `pid` and check it is a clean exit.
fn expect_clean_exit(s: &Server, pid: u32, worker: u32) -> Hook {
    let p = pid.to_string();
    let find = || {
        s.hooks_of("exited")
            .into_iter()
            .find(|h| h.fields.get("pid") == Some(&p))
    };
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || find().is_some()),
        "no `exited` line for the retired worker {pid} within 5 s"
    );
    let h = find().unwrap();
    assert_eq!(h.num("worker"), worker, "{:?}", h.line);
    assert_eq!(
        h.get("status"),
        "exited with code 0",
        "a retired worker exits cleanly: {:?}",
        h.line
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || !process_alive(
            pid
        )),
        "retired worker {pid} still alive"
    );
    h
}

fn assert_worker_procs(s: &Server, want: &BTreeSet<u32>) {
    assert!(
        poll_until(Instant::now() + Duration::from_secs(2), || worker_procs(s)
            == *want),
        "worker processes {:?}, expected {want:?}",
        worker_procs(s)
    );
}

fn ttin_ttou(extra: &[&str]) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--workers", "2"];
    args.extend_from_slice(extra);
    let s = Server::start_ready(&args);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let target = Listen::Tcp(s.addr());
    assert_served_by(&target, &ready, 200);

    // TTIN twice (one at a time: signals of one kind sent back to back coalesce)
    let mut pool = ready.clone();
    let mut added = Vec::new();
    for (i, n) in [(0usize, 3usize), (1, 4)] {
        s.send_signal(libc::SIGTTIN);
        let at = expect_workers_line(&s, i, n);
        let spawned = expect_spawned_after(&s, at, (n - 1) as u32);
        assert_eq!(spawned.num("generation"), 1, "{:?}", spawned.line);
        let pid = spawned.num("pid");
        assert!(!pool.contains(&pid));
        pool.insert(pid);
        added.push(pid);
    }
    assert_eq!(pool.len(), 4);
    let t0 = Instant::now();
    let spread = assert_served_by(&target, &pool, 800);
    println!(
        "SCALING {args:?}: TTIN x2 -> 4 distinct pids served ({} requests, {})",
        spread.ok,
        ms(t0.elapsed())
    );
    assert_worker_procs(&s, &pool);

    // TTOU twice: the highest index goes first
    for (i, n) in [(2usize, 3usize), (3, 2)] {
        s.send_signal(libc::SIGTTOU);
        let at = expect_workers_line(&s, i, n);
        let victim = added.pop().unwrap();
        let exited = expect_clean_exit(&s, victim, n as u32);
        assert!(exited.index > at, "exited line before the workers line");
        pool.remove(&victim);
    }
    assert_eq!(pool, ready, "TTOU x2 leaves the first two workers");
    assert_worker_procs(&s, &ready);
    assert_served_by(&target, &ready, 1000);

    // down to one, then a TTOU that must be ignored
    s.send_signal(libc::SIGTTOU);
    expect_workers_line(&s, 4, 1);
    let pid_of = |worker: u32| {
        s.hooks_of("spawned")
            .into_iter()
            .find(|h| h.num("worker") == worker)
            .unwrap()
            .num("pid")
    };
    let (kept, gone) = (pid_of(0), pid_of(1));
    assert_eq!(BTreeSet::from([kept, gone]), ready);
    expect_clean_exit(&s, gone, 1);
    let one = BTreeSet::from([kept]);
    assert_worker_procs(&s, &one);

    let ignored_before = s
        .stderr
        .snapshot()
        .iter()
        .filter(|l| l.contains("one worker left: ignored"))
        .count();
    s.send_signal(libc::SIGTTOU);
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || s
            .stderr
            .snapshot()
            .iter()
            .filter(|l| l.contains("one worker left: ignored"))
            .count()
            > ignored_before),
        "the master did not log that TTOU at one worker is ignored"
    );
    assert_eq!(
        workers_lines(&s).len(),
        5,
        "no new workers line for an ignored TTOU: {:?}",
        workers_lines(&s)
    );
    assert_served_by(&target, &one, 50);
    assert_worker_procs(&s, &one);
    assert!(process_alive(kept));
    let exits = s.hooks_of("exited").len();
    assert_eq!(
        exits,
        3,
        "only the three retired workers exited: {:?}",
        s.stdout_lines()
    );
}

#[test]
fn ttin_ttou_shared_socket() {
    ttin_ttou(&[]);
}

#[test]
fn ttin_ttou_reuse_port() {
    ttin_ttou(&["--reuse-port"]);
}
