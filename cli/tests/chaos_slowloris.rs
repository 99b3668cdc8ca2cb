//! Chaos (issue 5, scenario 4): slowloris clients that trickle their request head are closed
//! by the header-read timeout, while a normal client keeps getting answers.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

struct Slow {
    s: TcpStream,
    opened: Instant,
    sent: usize,
    closed: Option<Duration>,
}

/// Writes the next byte of `payload` to each open connection, notes the ones the server
/// closed. Non-blocking.
fn trickle(conns: &mut [Slow], payload: &[u8], first: usize) {
    let mut buf = [0u8; 512];
    for c in conns.iter_mut().filter(|c| c.closed.is_none()) {
        if c.sent < payload.len() {
            let n = if c.sent == 0 { first } else { 1 };
            match c.s.write(&payload[c.sent..c.sent + n]) {
                Ok(k) => c.sent += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => c.closed = Some(c.opened.elapsed()),
            }
        }
        loop {
            match c.s.read(&mut buf) {
                Ok(0) => {
                    c.closed = Some(c.opened.elapsed());
                    break;
                }
                Ok(_) => continue, // an error answer (408): the close follows
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    c.closed = Some(c.opened.elapsed());
                    break;
                }
            }
        }
    }
}

fn open(addr: std::net::SocketAddr, n: usize) -> Vec<Slow> {
    (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_nonblocking(true).unwrap();
            Slow {
                s,
                opened: Instant::now(),
                sent: 0,
                closed: None,
            }
        })
        .collect()
}

#[test]
fn slowloris_connections_are_closed_and_normal_clients_served() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--header-read-timeout",
        "2",
    ]);
    let addr = s.addr();
    let payload =
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let first_line = b"GET / HTTP/1.1\r\n".len();
    let mut conns = open(addr, 50);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(6);
    let mut next_byte = t0;
    let mut normal_ok = 0;
    let mut normal_worst = Duration::ZERO;
    while Instant::now() < deadline && conns.iter().any(|c| c.closed.is_none()) {
        if Instant::now() >= next_byte {
            trickle(&mut conns, payload, first_line);
            next_byte += Duration::from_millis(500);
        }
        // A normal client, meanwhile.
        let t = Instant::now();
        let r = http_get(addr, "/").expect("a normal GET / during the slowloris");
        assert_greeting(&r);
        normal_ok += 1;
        normal_worst = normal_worst.max(t.elapsed());
        thread::sleep(Duration::from_millis(50));
    }
    trickle(&mut conns, payload, first_line);
    let closed: Vec<Duration> = conns.iter().filter_map(|c| c.closed).collect();
    let latest = closed.iter().max().copied().unwrap_or_default();
    println!(
        "SLOWLORIS: {} of {} closed by the server (latest {} after opening); {normal_ok} normal GETs, slowest {}",
        closed.len(),
        conns.len(),
        ms(latest),
        ms(normal_worst)
    );
    assert_eq!(
        closed.len(),
        conns.len(),
        "every slowloris connection must be closed by the header-read timeout within 6 s"
    );
    assert!(
        closed.iter().all(|d| *d >= Duration::from_millis(1500)),
        "closed before the 2 s timeout: {closed:?}"
    );
    assert!(normal_ok > 0);
    assert!(s.hooks_of("exited").is_empty(), "no worker may exit");
}

/// A connection that never sends a byte is closed by the header-read timeout too (hyper-util's
/// HTTP/1-or-2 detection waits for the first bytes with no timeout of its own, so forklift
/// gives a silent connection the header-read timeout to start talking).
#[test]
fn idle_connections_are_closed_by_the_header_read_timeout() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--header-read-timeout",
        "1",
    ]);
    let mut conns = open(s.addr(), 10);
    let closed = poll_until(Instant::now() + Duration::from_secs(4), || {
        trickle(&mut conns, b"", 0);
        conns.iter().all(|c| c.closed.is_some())
    });
    assert!(
        closed,
        "{} of 10 idle connections still open 4 s after opening, with --header-read-timeout 1",
        conns.iter().filter(|c| c.closed.is_none()).count()
    );
}
