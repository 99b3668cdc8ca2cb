//! Theme 8: SIGINT is a fast stop: the master exits 0 quickly and no worker is
//! left, even with a slow request in flight.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn int_stop(extra: &[&str], inflight: bool) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--graceful-timeout",
        "10",
    ];
    args.extend_from_slice(extra);
    let mut s = Server::start_ready(&args);
    let ready = s.pids_from_ready();
    let addr = s.addr();
    let client = if inflight {
        let h = std::thread::spawn(move || {
            http_get_timeout(addr, "/sleep?ms=5000", Duration::from_secs(10))
        });
        s.wait_stderr_contains("sleep started", Duration::from_secs(5))
            .expect("stderr never showed `sleep started`");
        Some(h)
    } else {
        None
    };

    s.send_signal(libc::SIGINT);
    let t0 = Instant::now();
    let st = s
        .try_wait_exit(t0 + Duration::from_secs(3))
        .unwrap_or_else(|| panic!("master still running 3 s after SIGINT (in flight: {inflight})"));
    let took = t0.elapsed();
    println!(
        "FAST STOP {args:?} (5 s request in flight: {inflight}): master exited {} after SIGINT",
        ms(took)
    );
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || ready
            .iter()
            .all(|p| !process_alive(*p))),
        "workers left: {:?}",
        ready
            .iter()
            .filter(|p| process_alive(**p))
            .collect::<Vec<_>>()
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || group_empty(
            s.pgid
        )),
        "processes left: {:?}",
        group_members(s.pgid)
    );
    assert!(connect_refused(addr));
    s.wait_output_closed(Instant::now() + Duration::from_secs(2));
    assert_eq!(
        s.stdout_lines().last().map(String::as_str),
        Some("stopped"),
        "last stdout line"
    );
    if let Some(h) = client {
        // the in-flight request ends now (answered or cut), it does not hang
        let r = h.join().unwrap();
        println!(
            "in-flight request after SIGINT: {:?}",
            r.as_ref().map(|r| r.status)
        );
    }
}

#[test]
fn int_stops_fast_idle() {
    int_stop(&[], false);
}

#[test]
fn int_does_not_wait_for_inflight() {
    int_stop(&[], true);
}

#[test]
fn int_does_not_wait_for_inflight_exec() {
    int_stop(&["--spawn", "exec"], true);
}
