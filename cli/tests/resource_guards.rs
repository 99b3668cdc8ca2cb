//! Resource guards (issue 13, part 4), with real processes: the master raises the open-file
//! limit that master and workers run with; `--max-connections` makes a worker stop accepting
//! at its limit, so connections wait in the backlog instead of running into EMFILE;
//! `--max-worker-memory` and `--max-worker-age` replace a worker (replacement ready first, then
//! the old one drains) for `serve` and for `run`.

mod common;

use common::*;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// The (soft, hard) `Max open files` of a process, from /proc/PID/limits.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/limits: {e}"));
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no `Max open files` line:\n{limits}"));
    let mut values = line["Max open files".len()..].split_whitespace();
    let mut next = || {
        values
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unparsable limits line {line:?}"))
    };
    (next(), next())
}

#[test]
fn the_open_file_limit_is_raised_for_master_and_workers() {
    // This test's own hard limit, lowered a little so the raise is visible whatever it is.
    let (_, hard) = nofile(std::process::id());
    let hard = hard.min(8192);
    let mut cmd = Command::new(forklift_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .env("RUST_LOG", DEFAULT_RUST_LOG);
    // SAFETY: setrlimit(2) between fork and exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: hard as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let s = Server::start_command(cmd, vec!["(soft nofile 256) serve --workers 2".into()]);
    let workers = s.wait_ready();
    let raised = format!("raised the open-file limit from 256 to {hard}");
    assert!(
        s.wait_stderr_contains(&raised, Duration::from_secs(5))
            .is_some(),
        "the master should log {raised:?}"
    );
    for pid in std::iter::once(s.pid).chain(workers.iter().copied()) {
        let (soft, h) = nofile(pid);
        println!("NOFILE: pid {pid} soft {soft} hard {h}");
        assert_eq!(
            (soft, h),
            (hard, hard),
            "pid {pid}: soft limit == hard limit"
        );
    }
    assert_served_by(&Listen::Tcp(s.addr()), &workers.into_iter().collect(), 1000);
}

/// Sends `GET path` on a keep-alive connection and reads one response (sized by
/// Content-Length): (status, x-forklift-worker pid).
fn ask(stream: &mut TcpStream, path: &str) -> io::Result<(u16, u32)> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())?;
    read_answer(stream)
}

/// Reads one response from a keep-alive connection: (status, x-forklift-worker pid).
fn read_answer(stream: &mut TcpStream) -> io::Result<(u16, u32)> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&raw).to_string();
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let status = head[9..12].parse().unwrap();
    let pid = header("x-forklift-worker").map_or(0, |v| v.parse().unwrap());
    Ok((status, pid))
}

#[test]
fn max_connections_holds_further_connections_in_the_backlog() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--max-connections",
        "2",
    ]);
    let worker = s.pids_from_ready()[0];
    let addr = s.addr();
    let connect = || {
        let c = TcpStream::connect(addr).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    };
    // Two idle keep-alive connections, each answered once: the worker's limit.
    let mut open = [connect(), connect()];
    for c in &mut open {
        assert_eq!(ask(c, "/").unwrap(), (200, worker));
    }
    // A third completes its handshake in the backlog and sends its request, which waits.
    let mut third = connect();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut byte = [0u8; 1];
    match third.peek(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the third connection was served past --max-connections 2: {other:?}"),
    }
    assert!(
        s.wait_stderr_contains("not accepting until one closes", Duration::from_secs(2))
            .is_some(),
        "the worker should say it reached its limit"
    );
    // One closes: the third is answered at once.
    let [first, mut second] = open;
    drop(first);
    let closed = Instant::now();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let answer = read_answer(&mut third).expect("the third connection is answered");
    let waited = closed.elapsed();
    println!(
        "MAX-CONNECTIONS: the third connection was answered {} after one of the two closed",
        ms(waited)
    );
    assert_eq!(answer, (200, worker));
    assert!(
        waited < Duration::from_secs(1),
        "answered {waited:?} after a connection closed"
    );
    // Both open connections still serve; nothing ran out of fds; the worker is the same.
    assert_eq!(ask(&mut second, "/").unwrap(), (200, worker));
    assert_eq!(ask(&mut third, "/").unwrap(), (200, worker));
    let stderr = s.stderr_text();
    assert!(
        !stderr.contains("accept failed") && !stderr.contains("Too many open files"),
        "the worker ran into its fd limit:\n{stderr}"
    );
    assert!(s.hooks_of("exited").is_empty(), "no worker may exit");
    assert_eq!(s.spawned_pids(), [worker]);
}

#[test]
fn max_connections_keeps_a_worker_clear_of_emfile() {
    // With 64 fds (soft and hard: nothing to raise) and 200 clients at once, a worker without
    // a limit runs out of fds (chaos_emfile.rs); with --max-connections 32 it never does, and
    // every client is answered in turn.
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        "ulimit -n 64 && exec \"$0\" serve --listen 127.0.0.1:0 --workers 1 --max-connections 32",
        forklift_bin(),
    ])
    .env("RUST_LOG", DEFAULT_RUST_LOG);
    let s = Server::start_command(
        cmd,
        vec!["(ulimit -n 64) serve --workers 1 --max-connections 32".into()],
    );
    let worker = s.wait_ready()[0];
    let addr = s.addr();
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(addr).expect("connect (the backlog takes it)");
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let answer = read_answer(c).unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(answer, (200, worker), "client {i}");
    }
    println!(
        "MAX-CONNECTIONS: 200 clients at once answered in {} by one worker with 64 fds",
        ms(t0.elapsed())
    );
    let stderr = s.stderr_text();
    assert!(
        !stderr.contains("accept failed"),
        "the worker ran out of fds:\n{stderr}"
    );
    assert!(s.hooks_of("exited").is_empty(), "no worker may exit");
}
