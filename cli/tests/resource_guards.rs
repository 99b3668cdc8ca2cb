//! Resource guards (issue 13, part 4), with real processes: the master raises the open-file
//! limit that master and workers run with; `--max-connections` makes a worker stop accepting
//! at its limit, so connections wait in the backlog instead of running into EMFILE;
//! `--max-worker-memory` and `--max-worker-age` replace a worker (replacement ready first, then
//! the old one drains) for `serve` and for `run`.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
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

/// A connection to `addr` whose reads give up after 5 s.
fn connect(addr: SocketAddr) -> TcpStream {
    let c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c
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
    // Two idle keep-alive connections, each answered once: the worker's limit.
    let mut open = [connect(addr), connect(addr)];
    for c in &mut open {
        assert_eq!(ask(c, "/").unwrap(), (200, worker));
    }
    // A third completes its handshake in the backlog and sends its request, which waits.
    let mut third = connect(addr);
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

/// Workers wait on a shared listener with `EPOLLEXCLUSIVE`, so a connection wakes one waiting
/// worker. A worker at `--max-connections` still waits in `epoll_wait` for the connections it
/// holds; it must not be the one woken (it would not accept, and the other worker would sleep
/// on). Each round fills one worker and asks the other to answer.
#[test]
fn a_worker_at_its_limit_leaves_new_connections_to_the_other() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--max-connections",
        "1",
    ]);
    let workers: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let addr = s.addr();
    for round in 0..8 {
        // One idle keep-alive connection: its worker is at its limit.
        let mut first = connect(addr);
        let (status, full) = ask(&mut first, "/").expect("the first connection is answered");
        assert_eq!(status, 200);
        // The next is the other worker's, at once, while the first stays open.
        let asked = Instant::now();
        let mut second = connect(addr);
        let answer = ask(&mut second, "/").unwrap_or_else(|e| {
            panic!(
                "round {round}: a connection waited {:?} ({e}) while worker {full} was at its \
                 limit and the other was free",
                asked.elapsed()
            )
        });
        assert_eq!(answer.0, 200);
        assert!(
            workers.contains(&answer.1) && answer.1 != full,
            "round {round}: {answer:?}"
        );
        // Closed: the workers get their permits back as they read the ends (a connection of
        // the next round meanwhile waits for that, not for a timeout).
        drop((first, second));
    }
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

// ---------------------------------------------------------------------------
// --max-worker-memory and --max-worker-age
// ---------------------------------------------------------------------------

/// What a [`load`] saw: answers by pid, and every failure.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    pids: BTreeSet<u32>,
    failures: Vec<String>,
}

/// `threads` clients sending `GET /` (a connection each) every 10 ms until the `Clients` are
/// finished.
fn load(addr: SocketAddr, threads: usize) -> (Clients, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut clients = Clients::new();
    for _ in 0..threads {
        let seen = seen.clone();
        clients.spawn(move |stop| {
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let r = http_get(addr, "/");
                let mut seen = seen.lock().unwrap();
                match r {
                    Ok(r) if r.status == 200 && r.body == b"greeting!!!" => {
                        seen.ok += 1;
                        seen.pids.insert(r.worker_pid());
                    }
                    Ok(r) => seen.failures.push(format!("bad answer {r:?}")),
                    Err(e) => seen.failures.push(format!("{e} ({:?})", e.kind())),
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(10).saturating_sub(t.elapsed()));
            }
        });
    }
    (clients, seen)
}

/// The resident set of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf(3) has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    pages * page / (1 << 20) as f64
}

/// Waits for the `exited` line of `pid` and returns it.
fn exited_line(s: &Server, pid: u32, timeout: Duration) -> Hook {
    let find = || {
        s.hooks_of("exited")
            .into_iter()
            .find(|h| h.num("pid") == pid)
    };
    assert!(
        poll_until(Instant::now() + timeout, || find().is_some()),
        "no `exited` line for pid {pid} within {timeout:?}"
    );
    find().unwrap()
}

/// The `spawned` line of `pid`.
fn spawned_line(s: &Server, pid: u32) -> Hook {
    s.hooks_of("spawned")
        .into_iter()
        .find(|h| h.num("pid") == pid)
        .unwrap_or_else(|| panic!("no `spawned` line for pid {pid}"))
}

/// Checks what every replacement by a limit must show: each worker that exited did so with
/// code 0 after a replacement in its slot was spawned; no crash, timeout or reload; and, from
/// the master's debug lines, never more than one replacement at a time (`workers` + 1 not
/// retired). Returns how many workers were replaced.
fn replaced_one_at_a_time(s: &Server, workers: i32) -> usize {
    let hooks = s.hooks();
    for h in &hooks {
        match h.kind.as_str() {
            "exited" => {
                assert_eq!(
                    h.get("status"),
                    "exited with code 0",
                    "a replaced worker drains and exits cleanly: {:?}",
                    h.line
                );
                let born = spawned_line(s, h.num("pid")).index;
                assert!(
                    hooks.iter().any(|x| x.kind == "spawned"
                        && x.num("worker") == h.num("worker")
                        && x.index > born
                        && x.index < h.index),
                    "{:?} before its replacement was spawned",
                    h.line
                );
            }
            "spawned" => assert_eq!(h.num("generation"), 1, "{:?}", h.line),
            "recovered" | "timed" | "reloading" | "reload" => {
                panic!("unexpected line: {:?}", h.line)
            }
            _ => {}
        }
    }
    let mut serving = 0;
    let mut most = 0;
    for l in s.stderr.snapshot() {
        if l.contains("forklift::master") && l.contains(" spawned as pid ") {
            serving += 1;
            most = most.max(serving);
        } else if l.contains("forklift::master") && l.contains("retiring worker ") {
            serving -= 1;
        }
    }
    assert!(
        most <= workers + 1,
        "{most} workers not retired at once: more than one replacement at a time"
    );
    hooks.iter().filter(|h| h.kind == "exited").count()
}

#[test]
fn max_worker_memory_replaces_a_leaking_worker() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--lab-routes",
        "--max-worker-memory",
        "64",
    ]);
    let first = s.pids_from_ready();
    let addr = s.addr();
    for &pid in &first {
        let mib = rss_mib(pid);
        println!("MEMORY: worker {pid} starts at {mib:.1} MiB resident");
        assert!(mib < 64.0, "a fresh worker is already over the limit");
    }
    let (mut clients, seen) = load(addr, 2);
    let leak = http_get(addr, "/lab/leak?mib=96").expect("GET /lab/leak");
    assert_eq!(leak.status, 200, "{leak:?}");
    let leaker = leak.worker_pid();
    let t0 = Instant::now();
    println!("MEMORY: worker {leaker} now at {:.1} MiB", rss_mib(leaker));
    let needle = format!("(pid {leaker}) uses ");
    let said = s
        .wait_for_line_in(
            Stream::Stderr,
            |l| l.contains(&needle) && l.contains("replacing it"),
            Instant::now() + Duration::from_secs(10),
        )
        .expect("the master should say why it replaces the worker")
        .1;
    assert!(
        said.contains("over its limit of 64 MiB: replacing it"),
        "{said}"
    );
    let exited = exited_line(&s, leaker, Duration::from_secs(10));
    let took = t0.elapsed();
    let slot = spawned_line(&s, leaker).num("worker");
    let replacement = s
        .hooks_of("spawned")
        .into_iter()
        .find(|h| h.num("worker") == slot && h.index > spawned_line(&s, leaker).index)
        .expect("a replacement in the leaker's slot")
        .num("pid");
    let other = *first.iter().find(|&&p| p != leaker).unwrap();
    let now_serving: BTreeSet<u32> = [other, replacement].into();
    assert_served_by(&Listen::Tcp(addr), &now_serving, 1000);
    clients.finish();
    let seen = seen.lock().unwrap();
    println!(
        "MEMORY: worker {leaker} replaced by {replacement} ({}) {} after the leak; {} requests \
         meanwhile, {} failed",
        exited.get("status"),
        ms(took),
        seen.ok,
        seen.failures.len()
    );
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    assert!(seen.ok > 0);
    assert_eq!(
        replaced_one_at_a_time(&s, 2),
        1,
        "only the leaker is replaced"
    );
    assert!(process_alive(other), "the other worker is left alone");
}

#[test]
fn max_worker_age_replaces_workers_one_at_a_time() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--max-worker-age",
        "2",
    ]);
    let first = s.pids_from_ready();
    let (mut clients, seen) = load(s.addr(), 2);
    let t0 = Instant::now();
    // Two rounds: both first workers replaced, then both of their replacements.
    let rounds = poll_until(t0 + Duration::from_secs(20), || {
        s.hooks_of("exited").len() >= 4
    });
    clients.finish();
    assert!(rounds, "fewer than 4 workers replaced in 20 s");
    let took = t0.elapsed();
    let seen = seen.lock().unwrap();
    let replaced = replaced_one_at_a_time(&s, 2);
    println!(
        "AGE: {replaced} workers replaced in {:.1} s with --max-worker-age 2; {} requests \
         meanwhile from {} pids, {} failed",
        took.as_secs_f64(),
        seen.ok,
        seen.pids.len(),
        seen.failures.len()
    );
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    for pid in first {
        assert!(!process_alive(pid), "first worker {pid} still runs");
    }
    let reasons = s
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("past its age limit of 2s: replacing it"))
        .count();
    assert!(reasons >= 4, "{reasons} `past its age limit` lines");
}

// `forklift run`: the same limits for a program of any language (the Python example).

fn python_script() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/run/python_server.py");
    p.canonicalize().unwrap_or(p).display().to_string()
}

fn run_python(limit: &[&str]) -> Server {
    let script = python_script();
    let mut args = vec![
        "run",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--ready-notify",
    ];
    args.extend_from_slice(limit);
    args.extend_from_slice(&["--", "python3", &script]);
    Server::start_ready(&args)
}

#[test]
fn run_replaces_a_worker_over_max_worker_memory() {
    // A Python interpreter is resident in more than 1 MiB: every worker is over the limit
    // once it serves, and is replaced in turn.
    let s = run_python(&["--max-worker-memory", "1"]);
    let first = s.pids_from_ready();
    let (mut clients, seen) = load(s.addr(), 1);
    let said = s
        .wait_stderr_contains(
            "over its limit of 1 MiB: replacing it",
            Duration::from_secs(10),
        )
        .expect("the master should say why it replaces a worker");
    for &pid in &first {
        exited_line(&s, pid, Duration::from_secs(15));
    }
    clients.finish();
    let seen = seen.lock().unwrap();
    println!(
        "RUN MEMORY: {said}\nRUN MEMORY: both first workers replaced; {} requests meanwhile, {} failed",
        seen.ok,
        seen.failures.len()
    );
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    assert!(replaced_one_at_a_time(&s, 2) >= 2);
}

#[test]
fn run_replaces_workers_past_max_worker_age() {
    let s = run_python(&["--max-worker-age", "2"]);
    let first = s.pids_from_ready();
    let (mut clients, seen) = load(s.addr(), 1);
    for &pid in &first {
        exited_line(&s, pid, Duration::from_secs(15));
    }
    clients.finish();
    let seen = seen.lock().unwrap();
    let replaced = replaced_one_at_a_time(&s, 2);
    println!(
        "RUN AGE: {replaced} workers replaced; {} requests meanwhile from {} pids, {} failed",
        seen.ok,
        seen.pids.len(),
        seen.failures.len()
    );
    assert!(seen.failures.is_empty(), "{:?}", seen.failures);
    assert!(
        s.stderr_text()
            .contains("past its age limit of 2s: replacing it"),
        "the master should say why"
    );
}
