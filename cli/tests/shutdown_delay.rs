//! `--shutdown-delay SECS`: on TERM the host turns unready at once, keeps accepting and
//! serving for SECS with `Connection: close`, then stops; and a stop serves the connections
//! already waiting in the accept queue instead of resetting them. HTTP/2 connections get a
//! GOAWAY when the delay begins.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hyper::body::Bytes;

/// Sends `GET /` on `s` (keep-alive) and reads one response: (status, Connection header).
fn get_on(s: &mut TcpStream) -> (u16, Option<String>) {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_response(s).expect("a response");
    (r.status, r.header("connection").map(str::to_string))
}

fn read_response(s: &mut TcpStream) -> std::io::Result<Response> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
            let headers = head
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return Ok(Response {
                status,
                headers,
                body: buf[end + 4..].to_vec(),
            });
        }
    }
}

#[test]
fn term_turns_unready_then_serves_with_connection_close_for_the_delay() {
    unready_then_close(&[]);
}

#[test]
fn term_turns_unready_then_serves_with_connection_close_for_the_delay_through_hyper() {
    unready_then_close(&["--no-fast-path"]);
}

fn unready_then_close(extra: &[&str]) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--health",
        "127.0.0.1:0",
        "--shutdown-delay",
        "4",
    ];
    args.extend_from_slice(extra);
    let mut s = Server::start_ready(&args);
    let addr = s.addr();
    let health = health_addr(&s);
    let mut kept = TcpStream::connect(addr).unwrap();
    assert_eq!(get_on(&mut kept), (200, None), "keep-alive before the stop");
    let t0 = Instant::now();
    s.send_signal(libc::SIGTERM);
    assert!(
        poll_until_every(
            t0 + Duration::from_secs(1),
            Duration::from_millis(1),
            || {
                http_get_timeout(health, "/readyz", Duration::from_secs(2))
                    .is_ok_and(|r| r.status == 503)
            }
        ),
        "/readyz did not turn 503"
    );
    // Only that it flips; how fast is measured and asserted in health.rs
    // (`term_turns_readyz_to_503_within_10_ms`).
    let unready = t0.elapsed();
    // The worker hears of the delay on its channel; its next response says close.
    wait_draining(&s, 2, t0 + Duration::from_secs(3));
    let (status, connection) = get_on(&mut kept);
    assert_eq!(status, 200);
    assert_eq!(
        connection.as_deref(),
        Some("close"),
        "the kept connection is told to close"
    );
    // New connections are still accepted and served, one request each.
    let mut new = TcpStream::connect(addr).unwrap();
    let (status, connection) = get_on(&mut new);
    assert_eq!((status, connection.as_deref()), (200, Some("close")));
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the checks ran past the delay"
    );
    let st = s.wait_exit(t0 + Duration::from_secs(15));
    let stopped = t0.elapsed();
    println!("unready after {unready:?}; exited after {stopped:?} (delay 4 s)");
    assert!(st.success(), "{}", describe_status(&st));
    assert!(
        stopped >= Duration::from_secs(2),
        "stopped before the delay: {stopped:?}"
    );
}

#[test]
fn a_stop_serves_the_connections_waiting_in_the_accept_queue() {
    let mut s = Server::start_ready(&["serve", "--listen", "127.0.0.1:0", "--workers", "1"]);
    let addr = s.addr();
    let worker = s.pids_from_ready()[0];
    // Freeze the only worker, queue connections in the kernel's accept queue, stop the
    // server, then let the worker run: it sees the TERM with connections still queued.
    kill_pid(worker, libc::SIGSTOP);
    let mut queued: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            c
        })
        .collect();
    s.send_signal(libc::SIGTERM);
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || {
            s.stderr_text()
                .contains("graceful stop requested by SIGTERM")
        }),
        "{}",
        s.stderr_text()
    );
    kill_pid(worker, libc::SIGCONT);
    let answered = queued
        .iter_mut()
        .map(|c| read_response(c).is_ok_and(|r| r.status == 200))
        .filter(|ok| *ok)
        .count();
    let st = s.wait_exit(Instant::now() + Duration::from_secs(15));
    assert!(st.success(), "{}", describe_status(&st));
    assert_eq!(answered, 8, "queued connections must be served, not reset");
}

/// The h2 crate's client on a cleartext connection to `addr` (prior knowledge), and the task
/// that drives the connection, which ends when the server closes it. h2's, not hyper's,
/// client: hyper reports a request refused by a GOAWAY as "connection closed".
async fn h2c(
    addr: std::net::SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// A GET on an HTTP/2 connection: its status, once the body has arrived.
async fn h2_get(send: h2::client::SendRequest<Bytes>, path: &str) -> Result<u16, h2::Error> {
    let req = hyper::Request::get(format!("http://x{path}"))
        .body(())
        .unwrap();
    let (resp, _) = send.ready().await?.send_request(req, true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(status)
}

/// Whether `e` is the client's report of a GOAWAY the server sent without an error (a
/// graceful one: "no new streams here", not a failure).
/// Waits until `workers` workers have logged that they drain (they heard the master's
/// `drain` line), failing at `deadline`.
fn wait_draining(s: &Server, workers: usize, deadline: Instant) {
    assert!(
        poll_until(deadline, || {
            s.stderr_text()
                .matches("draining: connections close")
                .count()
                == workers
        }),
        "{}",
        s.stderr_text()
    );
}

fn is_graceful_goaway(e: &h2::Error) -> bool {
    e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR)
}

#[test]
fn term_sends_http2_connections_a_goaway_for_the_delay() {
    let delay = Duration::from_secs(6);
    let mut s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--shutdown-delay",
        "6",
    ]);
    let addr = s.addr();
    // Multi-threaded, so that the client's connection tasks run while this thread polls the
    // server's output.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (open, open_conn) = rt.block_on(h2c(addr));
    assert_eq!(rt.block_on(h2_get(open.clone(), "/")).unwrap(), 200);
    // A stream in flight as the delay begins: it must be answered.
    let in_flight = rt.spawn(h2_get(open.clone(), "/sleep?ms=2000"));
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || {
            s.stderr_text().contains("sleep started")
        }),
        "{}",
        s.stderr_text()
    );
    let t0 = Instant::now();
    s.send_signal(libc::SIGTERM);
    wait_draining(&s, 2, t0 + Duration::from_secs(3));
    // The open connection is told GOAWAY: a new stream on it is refused, while the stream
    // in flight still runs (so the connection is open: this is the GOAWAY, not a close).
    let mut refused = None;
    let told = poll_until_every(
        t0 + Duration::from_secs(3),
        Duration::from_millis(10),
        || {
            match rt.block_on(h2_get(open.clone(), "/")) {
                Ok(status) => {
                    // Sent before the GOAWAY arrived, so still served.
                    assert_eq!(status, 200);
                    false
                }
                Err(e) => {
                    refused = Some(e);
                    true
                }
            }
        },
    );
    assert!(told, "no GOAWAY on the open HTTP/2 connection");
    let refused = refused.unwrap();
    assert!(is_graceful_goaway(&refused), "refused by: {refused:?}");
    assert!(
        !in_flight.is_finished(),
        "the in-flight stream ended before the GOAWAY was seen"
    );
    assert_eq!(
        rt.block_on(in_flight)
            .unwrap()
            .expect("the in-flight stream is answered"),
        200
    );
    // With its streams done, the server closes the connection, without an error.
    let closed =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), open_conn).await });
    assert!(
        matches!(closed, Ok(Ok(Ok(())))),
        "the open connection did not close cleanly: {closed:?}"
    );

    // A connection made during the delay is served, and its first request is answered
    // before its GOAWAY; then the server closes it.
    let (new, new_conn) = rt.block_on(h2c(addr));
    assert_eq!(rt.block_on(h2_get(new.clone(), "/")).unwrap(), 200);
    let closed =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(3), new_conn).await });
    assert!(
        matches!(closed, Ok(Ok(Ok(())))),
        "the new connection was not told GOAWAY and closed: {closed:?}"
    );
    match rt.block_on(h2_get(new, "/")) {
        Ok(status) => panic!("a stream after the GOAWAY was served ({status})"),
        Err(e) => assert!(is_graceful_goaway(&e), "refused by: {e:?}"),
    }
    assert!(t0.elapsed() < delay, "the checks ran past the delay");
    let st = s.wait_exit(t0 + Duration::from_secs(20));
    assert!(st.success(), "{}", describe_status(&st));
}
