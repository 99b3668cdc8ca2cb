//! Theme 3: graceful stop with SIGTERM / SIGQUIT while a slow request is in
//! flight: the request completes, the master exits 0, the port is closed and
//! no process of the group is left.

mod common;

use common::*;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

type Outcome = (io::Result<Response>, Instant);

/// Start a GET in a thread; the result comes back on the channel.
fn request_in_thread(addr: SocketAddr, path: &str, timeout: Duration) -> mpsc::Receiver<Outcome> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_string();
    thread::spawn(move || {
        let r = http_get_timeout(addr, &path, timeout);
        let _ = tx.send((r, Instant::now()));
    });
    rx
}

fn graceful_stop_with_inflight(sig: i32, name: &str, extra: &[&str]) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--graceful-timeout",
        "5",
    ];
    args.extend_from_slice(extra);
    let mut s = Server::start_ready(&args);
    let ready = s.pids_from_ready();
    let addr = s.addr();

    let sent = Instant::now();
    let rx = request_in_thread(addr, "/sleep?ms=1500", Duration::from_secs(10));
    s.wait_stderr_contains("sleep started", Duration::from_secs(5))
        .expect("stderr never showed `sleep started` for GET /sleep?ms=1500");

    s.send_signal(sig);
    let t0 = Instant::now();
    let st = s.wait_exit(t0 + Duration::from_secs(5 + 3));
    let stop_time = t0.elapsed();
    println!("GRACEFUL STOP ({name}, {args:?}): master exited {} after {name} with a 1500 ms request in flight", ms(stop_time));
    assert_eq!(
        st.code(),
        Some(0),
        "master exit after {name}: {}",
        describe_status(&st)
    );

    let (resp, done) = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("the in-flight request did not finish");
    let resp =
        resp.unwrap_or_else(|e| panic!("in-flight request failed during graceful stop: {e}"));
    assert_eq!(resp.status, 200, "in-flight request: {resp:?}");
    assert!(ready.contains(&resp.worker_pid()));
    assert!(
        done.duration_since(sent) >= Duration::from_millis(1500),
        "the sleep request answered early ({:?})",
        done.duration_since(sent)
    );

    // nothing left: workers dead, group empty, port closed
    let deadline = Instant::now() + Duration::from_secs(1);
    assert!(
        poll_until(deadline, || ready.iter().all(|p| !process_alive(*p))),
        "workers still alive after the master exited: {:?}",
        ready
            .iter()
            .filter(|p| process_alive(**p))
            .collect::<Vec<_>>()
    );
    assert!(
        poll_until(deadline, || group_empty(s.pgid)),
        "processes left in the group: {:?}",
        group_members(s.pgid)
    );
    assert!(
        connect_refused(addr),
        "port {addr} still accepts connections after the stop"
    );

    s.wait_output_closed(Instant::now() + Duration::from_secs(2));
    let last = s.stdout_lines().last().cloned();
    assert_eq!(
        last.as_deref(),
        Some("stopped"),
        "last stdout line after a clean stop"
    );
}

#[test]
fn term_finishes_inflight_request() {
    graceful_stop_with_inflight(libc::SIGTERM, "SIGTERM", &[]);
}

#[test]
fn term_finishes_inflight_request_exec() {
    graceful_stop_with_inflight(libc::SIGTERM, "SIGTERM", &["--spawn", "exec"]);
}

#[test]
fn term_finishes_inflight_request_reuse_port() {
    graceful_stop_with_inflight(libc::SIGTERM, "SIGTERM", &["--reuse-port"]);
}

#[test]
fn quit_finishes_inflight_request() {
    graceful_stop_with_inflight(libc::SIGQUIT, "SIGQUIT", &[]);
}

#[test]
fn term_idle_stops_promptly() {
    let mut s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--graceful-timeout",
        "5",
    ]);
    let ready = s.pids_from_ready();
    let addr = s.addr();
    s.send_signal(libc::SIGTERM);
    let t0 = Instant::now();
    let st = s.wait_exit(t0 + Duration::from_secs(3));
    println!(
        "GRACEFUL STOP (idle): master exited {} after SIGTERM",
        ms(t0.elapsed())
    );
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(poll_until(Instant::now() + Duration::from_secs(1), || {
        ready.iter().all(|p| !process_alive(*p))
    }));
    assert!(poll_until(Instant::now() + Duration::from_secs(1), || {
        group_empty(s.pgid)
    }));
    assert!(connect_refused(addr));
}

/// A connection attempted after TERM is not left hanging on a stopping worker:
/// the master is gone within the deadline and the client gets an answer or an
/// error promptly.
#[test]
fn connection_after_term_does_not_hang() {
    let mut s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--graceful-timeout",
        "5",
    ]);
    let addr = s.addr();
    let slow = request_in_thread(addr, "/sleep?ms=1000", Duration::from_secs(10));
    s.wait_stderr_contains("sleep started", Duration::from_secs(5))
        .expect("stderr never showed `sleep started`");
    s.send_signal(libc::SIGTERM);
    let t0 = Instant::now();
    // a new connection right after the TERM, with a long client timeout so a
    // hang would show up as a late answer
    let late = request_in_thread(addr, "/", Duration::from_secs(20));

    let st = s.wait_exit(t0 + Duration::from_secs(5 + 3));
    let stop_time = t0.elapsed();
    println!(
        "GRACEFUL STOP (new connection after TERM): master exited {}",
        ms(stop_time)
    );
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));

    let (slow_resp, _) = slow
        .recv_timeout(Duration::from_secs(3))
        .expect("slow request did not finish");
    assert_eq!(slow_resp.expect("slow request").status, 200);

    let (late_resp, late_done) = late
        .recv_timeout(Duration::from_secs(3))
        .expect("the connection made after TERM is still hanging 3 s after the master exited");
    match &late_resp {
        Ok(r) => println!(
            "connection after TERM: answered {} by pid {:?}",
            r.status,
            r.header("x-forklift-worker")
        ),
        Err(e) => println!("connection after TERM: {e} ({:?})", e.kind()),
    }
    assert!(late_done.duration_since(t0) < Duration::from_secs(5 + 3));
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || group_empty(
            s.pgid
        )),
        "processes left: {:?}",
        group_members(s.pgid)
    );
    assert!(connect_refused(addr));
}

/// `--graceful-timeout` bounds the stop: a request longer than it does not keep
/// the master alive.
#[test]
fn graceful_timeout_bounds_stop() {
    let mut s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--graceful-timeout",
        "1",
    ]);
    let ready = s.pids_from_ready();
    let addr = s.addr();
    let rx = request_in_thread(addr, "/sleep?ms=20000", Duration::from_secs(25));
    s.wait_stderr_contains("sleep started", Duration::from_secs(5))
        .expect("stderr never showed `sleep started`");
    s.send_signal(libc::SIGTERM);
    let t0 = Instant::now();
    let st = s.try_wait_exit(t0 + Duration::from_secs(1 + 3));
    let stop_time = t0.elapsed();
    let st = st.unwrap_or_else(|| {
        panic!("master still running {stop_time:?} after TERM with --graceful-timeout 1")
    });
    println!(
        "GRACEFUL STOP (timeout 1 s, 20 s request in flight): master exited {}",
        ms(stop_time)
    );
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || ready
            .iter()
            .all(|p| !process_alive(*p))),
        "workers left: {:?}",
        group_members(s.pgid)
    );
    assert!(poll_until(Instant::now() + Duration::from_secs(1), || {
        group_empty(s.pgid)
    }));
    // the cut request ends (with an error or a truncated answer), it does not hang
    let (r, _) = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("the cut request is still hanging");
    if let Ok(r) = r {
        assert_ne!(
            r.status, 200,
            "a 20 s sleep cannot have completed within a 1 s graceful timeout"
        );
    }
}
