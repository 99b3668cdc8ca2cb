//! `--keep-alive-timeout SECS`: an idle keep-alive connection outlives the header-read
//! timeout and closes at the keep-alive one; a request head that starts late still gets the
//! header-read timeout from its first byte; 0 turns keep-alive off. On the fast path and on
//! hyper's (`--no-fast-path`).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// Sends `GET /` on `s` and reads its response.
fn get_on(s: &mut TcpStream) -> Response {
    s.write_all(REQUEST).unwrap();
    let mut buf = Vec::new();
    read_response(s, &mut buf).expect("a response")
}

/// How long after `since` the server closes `s` (reading until then), within `limit`.
fn closed_after(s: &mut TcpStream, since: Instant, limit: Duration) -> Duration {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    assert!(read_until_close(s, &mut got), "still open after {limit:?}");
    assert!(got.is_empty(), "unexpected bytes: {}", got.escape_ascii());
    since.elapsed()
}

#[test]
fn an_idle_connection_outlives_the_header_read_timeout_and_closes_at_the_keep_alive_one() {
    idle_then_late(&[], Duration::from_secs(4));
}

#[test]
fn an_idle_connection_outlives_the_header_read_timeout_and_closes_at_the_keep_alive_one_through_hyper(
) {
    // hyper's timer runs the keep-alive timeout plus the header-read one (see conn.rs).
    idle_then_late(&["--no-fast-path"], Duration::from_secs(5));
}

fn idle_then_late(extra: &[&str], closes_by: Duration) {
    let mut args = serve_args(
        "1",
        &["--header-read-timeout", "1", "--keep-alive-timeout", "4"],
    );
    args.extend_from_slice(extra);
    let s = Server::start_ready(&args);
    let addr = s.addr();
    let mut kept = TcpStream::connect(addr).unwrap();
    assert_eq!(get_on(&mut kept).status, 200);
    // Idle for twice the header-read timeout: still served (before, the header-read timeout
    // closed idle connections).
    let idle_start = Instant::now();
    while idle_start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let resp = get_on(&mut kept);
    assert_eq!(resp.status, 200);
    assert!(
        !resp.closes(),
        "the answer after the idle wait keeps the connection"
    );
    // Idle again: closed at the keep-alive timeout, not the header-read one.
    let since = Instant::now();
    let took = closed_after(&mut kept, since, Duration::from_secs(15));
    println!("idle connection closed after {took:?}");
    assert!(
        took >= Duration::from_millis(3800) && took < closes_by + Duration::from_secs(3),
        "closed after {took:?}"
    );

    // A head started late in the idle wait gets the header-read timeout from its first byte.
    let mut late = TcpStream::connect(addr).unwrap();
    assert_eq!(get_on(&mut late).status, 200);
    let idle_start = Instant::now();
    while idle_start.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    late.write_all(b"GET / HT").unwrap();
    let since = Instant::now();
    let took = closed_after(&mut late, since, Duration::from_secs(15));
    println!("late partial head closed after {took:?} from its first byte");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
}

#[test]
fn zero_turns_keep_alive_off() {
    for extra in [&[][..], &["--no-fast-path"]] {
        let mut args = serve_args("1", &["--keep-alive-timeout", "0"]);
        args.extend_from_slice(extra);
        let s = Server::start_ready(&args);
        let mut c = TcpStream::connect(s.addr()).unwrap();
        let resp = get_on(&mut c);
        assert_eq!(resp.status, 200);
        assert!(resp.closes(), "{extra:?}: the answer says close");
        let took = closed_after(&mut c, Instant::now(), Duration::from_secs(10));
        assert!(took < Duration::from_secs(5), "{extra:?}: {took:?}");
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    }
}

#[test]
fn the_default_is_75_seconds() {
    let out = std::process::Command::new(forklift_bin())
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let line = help
        .split("--keep-alive-timeout")
        .nth(1)
        .expect("--keep-alive-timeout in serve --help");
    assert!(
        line.split("--").next().unwrap().contains("[default: 75]"),
        "{help}"
    );
}

/// Waits `d` of a connection's idle time: the scenario needs the connection idle that long
/// (past the 10 ms after which an idle connection is parked), not a sync point.
fn stay_idle(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn parked_idle_connections_are_served_again_and_closed_at_once_by_a_stop() {
    // Connections idle past 10 ms are parked (fast/mod.rs, PARK_AFTER): their next request
    // goes on in a new task, the keep-alive timeout and a stop still hold.
    let mut s = Server::start_ready(&serve_args("1", &[]));
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(s.addr()).unwrap())
        .collect();
    for round in 0..3 {
        for c in &mut conns {
            let resp = get_on(c);
            assert_eq!(resp.status, 200, "round {round}");
            assert!(!resp.closes(), "round {round}");
        }
        stay_idle(Duration::from_millis(300));
    }
    // A head that has started is not parked: half of it, a pause, the rest.
    conns[0].write_all(b"GET / HT").unwrap();
    stay_idle(Duration::from_millis(300));
    conns[0].write_all(b"TP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut conns[0], &mut buf).unwrap().status, 200);
    stay_idle(Duration::from_millis(300));
    // A stop closes every parked connection at once, and the worker exits well within the
    // graceful timeout.
    let since = Instant::now();
    s.send_signal(libc::SIGTERM);
    for c in &mut conns {
        let took = closed_after(c, since, Duration::from_secs(10));
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
    }
    let status = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
}
