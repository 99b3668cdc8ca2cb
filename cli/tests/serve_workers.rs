//! Theme 1: N workers serve, for every combination of shared socket /
//! `--reuse-port`, `--spawn fork` / `--spawn exec`, IPv4 / IPv6 loopback, plus
//! a unix socket listener and several listeners at once.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn check_serves(listen: &str, workers: usize, extra: &[&str]) {
    let n = workers.to_string();
    let mut args = vec!["serve", "--listen", listen, "--workers", n.as_str()];
    args.extend_from_slice(extra);
    let s = Server::start_ready(&args);

    let ready: Vec<u32> = s.pids_from_ready();
    let ready_set: BTreeSet<u32> = ready.iter().copied().collect();
    assert_eq!(
        ready.len(),
        workers,
        "ready line should list {workers} pids: {ready:?}"
    );
    assert_eq!(
        ready_set.len(),
        workers,
        "ready pids must be distinct: {ready:?}"
    );
    assert!(
        !ready_set.contains(&s.pid),
        "the master pid must not be a worker pid"
    );
    for pid in &ready {
        assert!(process_alive(*pid), "ready worker {pid} is not alive");
    }

    let listeners = s.listeners();
    assert_eq!(
        listeners.len(),
        1,
        "one `listening on` line per listener: {listeners:?}"
    );
    if let Listen::Tcp(addr) = &listeners[0] {
        let want_ip: IpAddr = if listen.starts_with('[') {
            "::1".parse().unwrap()
        } else {
            "127.0.0.1".parse().unwrap()
        };
        assert_eq!(
            addr.ip(),
            want_ip,
            "listening address should be the requested loopback"
        );
        assert_ne!(
            addr.port(),
            0,
            "listening line must show the real bound port"
        );
    }

    let spread = assert_served_by(&listeners[0], &ready_set, 200);
    println!(
        "{args:?}: {} workers {:?} all served within {} requests",
        workers, spread.pids, spread.ok
    );
}

fn skip_without_ipv6() -> bool {
    if ipv6_loopback_available() {
        false
    } else {
        println!("NOTICE: skipping: cannot bind [::1] on this machine");
        true
    }
}

#[test]
fn shared_fork_ipv4() {
    check_serves("127.0.0.1:0", 2, &["--spawn", "fork"]);
}

#[test]
fn shared_fork_ipv4_default_spawn_three_workers() {
    check_serves("127.0.0.1:0", 3, &[]);
}

#[test]
fn shared_exec_ipv4() {
    check_serves("127.0.0.1:0", 2, &["--spawn", "exec"]);
}

#[test]
fn reuse_port_fork_ipv4() {
    check_serves("127.0.0.1:0", 2, &["--reuse-port", "--spawn", "fork"]);
}

#[test]
fn reuse_port_exec_ipv4() {
    check_serves("127.0.0.1:0", 2, &["--reuse-port", "--spawn", "exec"]);
}

#[test]
fn shared_fork_ipv6() {
    if skip_without_ipv6() {
        return;
    }
    check_serves("[::1]:0", 2, &["--spawn", "fork"]);
}

#[test]
fn shared_exec_ipv6() {
    if skip_without_ipv6() {
        return;
    }
    check_serves("[::1]:0", 2, &["--spawn", "exec"]);
}

#[test]
fn reuse_port_fork_ipv6() {
    if skip_without_ipv6() {
        return;
    }
    check_serves("[::1]:0", 2, &["--reuse-port", "--spawn", "fork"]);
}

#[test]
fn reuse_port_exec_ipv6() {
    if skip_without_ipv6() {
        return;
    }
    check_serves("[::1]:0", 2, &["--reuse-port", "--spawn", "exec"]);
}

#[test]
fn unix_socket_listener() {
    let sock = TempSock::new("serve");
    let listen = format!("unix:{}", sock.0.display());
    let s = Server::start_ready(&["serve", "--listen", &listen, "--workers", "2"]);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    assert_eq!(ready.len(), 2);
    let listeners = s.listeners();
    assert_eq!(
        listeners,
        vec![Listen::Unix(sock.0.clone())],
        "listening line for the unix socket"
    );
    let spread = assert_served_by(&listeners[0], &ready, 200);
    println!(
        "unix socket: workers {:?} served within {} requests",
        spread.pids, spread.ok
    );
}

#[test]
fn unix_socket_listener_exec() {
    let sock = TempSock::new("serve-exec");
    let listen = format!("unix:{}", sock.0.display());
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        &listen,
        "--workers",
        "2",
        "--spawn",
        "exec",
    ]);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let listeners = s.listeners();
    assert_eq!(listeners, vec![Listen::Unix(sock.0.clone())]);
    assert_served_by(&listeners[0], &ready, 200);
}

#[test]
fn several_listeners_all_serve() {
    let sock = TempSock::new("multi");
    let unix = format!("unix:{}", sock.0.display());
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        unix.as_str(),
    ];
    let v6 = ipv6_loopback_available();
    if v6 {
        args.extend_from_slice(&["--listen", "[::1]:0"]);
    } else {
        println!("NOTICE: no [::1] listener in this test: cannot bind [::1] on this machine");
    }
    args.extend_from_slice(&["--workers", "2"]);
    let s = Server::start_ready(&args);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let listeners = s.listeners();
    let want = if v6 { 4 } else { 3 };
    assert_eq!(
        listeners.len(),
        want,
        "one `listening on` line per listener: {listeners:?}"
    );
    let tcp_ports: BTreeSet<u16> = listeners
        .iter()
        .filter_map(|l| match l {
            Listen::Tcp(a) if a.ip().is_ipv4() => Some(a.port()),
            _ => None,
        })
        .collect();
    assert_eq!(
        tcp_ports.len(),
        2,
        "two IPv4 listeners on distinct ports: {listeners:?}"
    );
    for l in &listeners {
        assert_served_by(l, &ready, 200);
    }
}

#[test]
fn root_answers_greeting_with_worker_header() {
    let s = Server::start_ready(&["serve", "--listen", "127.0.0.1:0", "--workers", "2"]);
    let ready = s.pids_from_ready();
    let r = http_get(s.addr(), "/").expect("GET /");
    assert_greeting(&r);
    assert_eq!(
        r.header("content-length"),
        Some("11"),
        "content-length of `greeting!!!`"
    );
    assert!(
        ready.contains(&r.worker_pid()),
        "served by {} not in ready {ready:?}",
        r.worker_pid()
    );

    let r = http_get(s.addr(), "/sleep?ms=50").expect("GET /sleep?ms=50");
    assert_eq!(r.status, 200, "/sleep status: {r:?}");
    assert!(ready.contains(&r.worker_pid()));
    assert!(
        s.wait_stderr_contains("sleep started", Duration::from_secs(2))
            .is_some(),
        "with RUST_LOG={DEFAULT_RUST_LOG} the /sleep handler logs `sleep started` on stderr"
    );

    // every response names its worker, whatever the path
    let r = http_get(s.addr(), "/no-such-page").expect("GET /no-such-page");
    assert!(
        ready.contains(&r.worker_pid()),
        "x-forklift-worker on a {} answer",
        r.status
    );
}

/// RUST_LOG is honoured: at `info` the DEBUG `sleep started` event is not logged.
#[test]
fn rust_log_is_honoured() {
    let mut s = Server::start_with_env(
        &["serve", "--listen", "127.0.0.1:0", "--workers", "2"],
        &[("RUST_LOG", "info")],
    );
    s.wait_ready();
    let r = http_get(s.addr(), "/sleep?ms=10").expect("GET /sleep?ms=10");
    assert_eq!(r.status, 200);
    s.send_signal(libc::SIGTERM);
    let st = s.wait_exit(Instant::now() + Duration::from_secs(5));
    assert_eq!(st.code(), Some(0));
    s.wait_output_closed(Instant::now() + Duration::from_secs(2));
    assert!(
        !s.stderr_text().contains("sleep started"),
        "RUST_LOG=info must hide the DEBUG `sleep started` event"
    );
}

/// Connections opened one by one on an idle server (a load balancer filling its pool) go round
/// the workers of a shared socket. With `EPOLLEXCLUSIVE` alone the kernel would wake the same
/// waiting worker for each: 7 or 8 of 8 landed on one before workers took turns.
#[test]
fn connections_opened_one_by_one_go_round_the_workers() {
    use std::io::Write;
    let s = Server::start_ready(&["serve", "--listen", "127.0.0.1:0", "--workers", "2"]);
    let workers: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let mut held = Vec::new();
    let mut per_worker = std::collections::BTreeMap::<u32, usize>::new();
    let mut buf = Vec::new();
    for _ in 0..12 {
        let mut c = std::net::TcpStream::connect(s.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = read_response(&mut c, &mut buf).expect("answered");
        let pid = r.worker().expect("x-forklift-worker");
        assert!(workers.contains(&pid), "{pid} is not one of {workers:?}");
        *per_worker.entry(pid).or_default() += 1;
        held.push(c);
        // Longer than a worker waits between two turns (accept.rs, TURN_EVERY).
        std::thread::sleep(Duration::from_millis(30));
    }
    println!("SPREAD: 12 connections opened 30 ms apart, per worker: {per_worker:?}");
    assert!(
        workers
            .iter()
            .all(|w| per_worker.get(w).copied().unwrap_or(0) >= 4),
        "12 connections opened one by one should go round both workers: {per_worker:?}"
    );
}
