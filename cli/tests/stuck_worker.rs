//! Stuck workers: a worker whose event loop stops (no heartbeat for
//! --worker-timeout) is killed with SIGABRT (then SIGKILL) and replaced; idle
//! workers keep sending heartbeats and are left alone.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// No core files from the SIGABRT: the limit is inherited by the server.
fn no_core_dumps() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit(2) with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

#[test]
fn stuck_worker_is_killed_and_replaced() {
    no_core_dumps();
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--worker-timeout",
        "2",
        "--fault",
        "block-route",
    ]);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let addr = s.addr();
    let target = Listen::Tcp(addr);
    assert_served_by(&target, &ready, 200);

    // one request blocks a worker's whole event loop for 20 s
    let (tx, blocked) = mpsc::channel();
    thread::spawn(move || {
        let r = http_get_timeout(addr, "/block?ms=20000", Duration::from_secs(25));
        let _ = tx.send(r);
    });
    s.wait_stderr_contains("block started", Duration::from_secs(5))
        .expect("stderr never showed `block started` for GET /block?ms=20000");
    let t0 = Instant::now();

    // meanwhile the other worker serves (shared socket: the stuck one does not accept)
    let during = spread_requests(&target, 20, 2, |_| false);
    assert!(
        during.errors.is_empty() && during.bad.is_empty(),
        "requests failed while one worker is stuck: {:?} {:?}",
        during.errors,
        during.bad
    );
    assert_eq!(
        during.pids.len(),
        1,
        "only the healthy worker answers while the other is stuck: {:?}",
        during.pids
    );
    let healthy = *during.pids.iter().next().unwrap();
    assert!(ready.contains(&healthy));

    let timed_out = s.expect_line(
        "`timed out worker=...`",
        |l| l.starts_with("timed out "),
        Duration::from_secs(8),
    );
    let killed_after = t0.elapsed();
    // `timed out worker=I pid=P`
    let (_, f) = parse_hook(timed_out.trim_start_matches("timed "));
    let stuck: u32 = f["pid"].parse().expect("pid of the timed out line");
    let stuck_worker: u32 = f["worker"].parse().expect("worker of the timed out line");
    assert!(
        ready.contains(&stuck) && stuck != healthy,
        "the timed-out pid {stuck} must be the blocked worker (ready {ready:?}, healthy {healthy})"
    );

    // a new pid serves
    let deadline = t0 + Duration::from_secs(10);
    let mut new_pid = None;
    while new_pid.is_none() && Instant::now() < deadline {
        let burst = spread_requests(&target, 8, 2, |seen| {
            seen.iter().any(|p| !ready.contains(p))
        });
        assert!(burst.bad.is_empty(), "bad answers: {:?}", burst.bad);
        assert!(
            burst.errors.is_empty(),
            "requests failed while the stuck worker was replaced: {:?}",
            burst.errors
        );
        new_pid = burst.pids.iter().copied().find(|p| !ready.contains(p));
        if new_pid.is_none() {
            thread::sleep(POLL);
        }
    }
    let replaced_after = t0.elapsed();
    let new_pid = new_pid.unwrap_or_else(|| {
        panic!(
            "no new worker served within 10 s of the block: {:?}",
            s.stdout_lines()
        )
    });
    println!(
        "STUCK: killed after {:.2} s, replaced after {:.2} s (--worker-timeout 2, block started at 0)",
        killed_after.as_secs_f64(),
        replaced_after.as_secs_f64()
    );
    // The last heartbeat came at most 1 s before the block: the kill comes 1 to 2 s
    // after it, plus scheduling slack.
    assert!(
        killed_after >= Duration::from_millis(900),
        "killed too early: {killed_after:?} after the block started (timeout 2 s)"
    );
    assert!(
        killed_after <= Duration::from_secs(4),
        "killed too late: {killed_after:?} after the block started (timeout 2 s)"
    );

    assert!(
        poll_until(Instant::now() + Duration::from_secs(3), || !process_alive(
            stuck
        )),
        "the stuck worker {stuck} is still alive"
    );
    let p = stuck.to_string();
    let exited = s
        .hooks_of("exited")
        .into_iter()
        .find(|h| h.fields.get("pid") == Some(&p))
        .unwrap_or_else(|| {
            panic!(
                "no exited line for the stuck worker: {:?}",
                s.stdout_lines()
            )
        });
    let status = exited.get("status");
    assert!(
        status.contains("SIGABRT") || status.contains("SIGKILL"),
        "exit status of a timed-out worker: {status:?}"
    );
    println!("STUCK: the stuck worker {stuck} {status}");
    let recovered = s.expect_line(
        &format!("`recovered ... old_pid={stuck}`"),
        |l| {
            l.starts_with("recovered ")
                && parse_hook(l).1.get("old_pid").map(String::as_str) == Some(p.as_str())
        },
        Duration::from_secs(2),
    );
    let (_, rf) = parse_hook(&recovered);
    assert_eq!(rf["new_pid"], new_pid.to_string(), "{recovered:?}");
    assert_eq!(rf["worker"], stuck_worker.to_string(), "{recovered:?}");

    let expected = BTreeSet::from([healthy, new_pid]);
    assert_served_by(&target, &expected, 1000);
    assert!(
        poll_until(Instant::now() + Duration::from_secs(2), || worker_procs(&s)
            == expected),
        "worker processes {:?}, expected {expected:?}",
        worker_procs(&s)
    );
    // the blocked request ended with the worker, it does not hang
    let r = blocked
        .recv_timeout(Duration::from_secs(5))
        .expect("the blocked request is still hanging after its worker was killed");
    if let Ok(r) = r {
        assert_ne!(
            r.status, 200,
            "a killed worker cannot have finished a 20 s block"
        );
    }
    assert_eq!(
        s.hooks_of("timed").len(),
        1,
        "exactly one worker timed out: {:?}",
        s.stdout_lines()
    );
}

#[test]
fn idle_workers_keep_heartbeating() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--worker-timeout",
        "2",
    ]);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let target = Listen::Tcp(s.addr());
    // 5 s of idle (2.5 timeouts): no worker may time out or exit
    let t0 = Instant::now();
    let seen = s.stdout_lines().len();
    let disturbed = || {
        s.stdout_lines().into_iter().skip(seen).find(|l| {
            l.starts_with("timed out ") || l.starts_with("exited ") || l.starts_with("spawned ")
        })
    };
    poll_until(t0 + Duration::from_secs(5), || disturbed().is_some());
    let line = disturbed();
    assert!(
        line.is_none(),
        "an idle worker was disturbed within {:?}: {line:?}",
        t0.elapsed()
    );
    println!(
        "IDLE: no timeout over {:.1} s of idle with --worker-timeout 2",
        t0.elapsed().as_secs_f64()
    );
    for p in &ready {
        assert!(process_alive(*p), "idle worker {p} died");
    }
    assert_served_by(&target, &ready, 200);
    assert_eq!(worker_procs(&s), ready);
}
