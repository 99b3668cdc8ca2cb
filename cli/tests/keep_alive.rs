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
