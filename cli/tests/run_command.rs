//! `forklift run -- COMMAND`: the master binds and supervises N copies of a program of any
//! language that takes its socket by the LISTEN_FDS protocol: the Python example
//! (`examples/run/python_server.py`) and the Rust `listenfd_server` example, real processes,
//! real signals, real requests on 127.0.0.1.
//!
//! Covered: readiness by sd_notify (`--ready-notify`) and by delay (`--ready-after`), the
//! workers' environment (LISTEN_PID is the worker's own pid), kill -9 -> respawn, SIGHUP
//! rolling reload, SIGTERM graceful stop (Python workers exit with code 0), TTIN/TTOU,
//! `--prefix-output` (whole lines only), `--reuse-port`, and commands that cannot start
//! (not found, exits at once, never ready): a non-zero exit, a clear error, no respawn loop.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The Python interpreter, found on PATH by the master like any COMMAND.
const PYTHON: &str = "python3";

/// The Python example server of the repository.
fn python_script() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/run/python_server.py");
    let p = p.canonicalize().unwrap_or(p);
    assert!(p.exists(), "{} is missing", p.display());
    p.display().to_string()
}

/// A Rust example of the root crate, built by `cargo test`/`cargo nextest` into
/// `target/<profile>/examples/` (the directory this test binary's `deps/` sits in).
/// `None` if it is not built (only `-p forklift-cli` was built, say).
fn example_bin(name: &str) -> Option<PathBuf> {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    path.exists().then_some(path)
}

/// `forklift run --listen 127.0.0.1:0 <options> -- <command>`.
fn run_args<'a>(options: &[&'a str], command: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(options);
    args.push("--");
    args.extend_from_slice(command);
    args
}

// ---------------------------------------------------------------------------
// The workers
// ---------------------------------------------------------------------------

/// The worker index of `pid`, from its `spawned` line.
fn worker_of(s: &Server, pid: u32) -> u32 {
    s.hooks_of("spawned")
        .into_iter()
        .find(|h| h.num("pid") == pid)
        .unwrap_or_else(|| panic!("no `spawned` line for pid {pid}"))
        .num("worker")
}

/// pid -> worker index, from the `spawned` lines.
fn worker_map(s: &Server, pids: &[u32]) -> BTreeMap<u32, u32> {
    pids.iter().map(|&p| (p, worker_of(s, p))).collect()
}

/// The environment a process was started with (`/proc/PID/environ`).
fn proc_env(pid: u32) -> HashMap<String, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("cannot read the environment of pid {pid}: {e}"));
    raw.split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .filter_map(|e| {
            let e = String::from_utf8_lossy(e);
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Checks what `forklift run` gave worker `id` (pid `pid`): LISTEN_PID is its own pid,
/// LISTEN_FDS=1 with fd 3 a socket, LISTEN_FDNAMES, FORKLIFT_WORKER_ID, and NOTIFY_SOCKET
/// (an abstract `@forklift-...` address) only with `--ready-notify`. Returns fd 3's
/// `socket:[inode]`.
fn check_worker_env(pid: u32, id: u32, notify: bool) -> String {
    let env = proc_env(pid);
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(
        get("LISTEN_PID"),
        Some(pid.to_string().as_str()),
        "LISTEN_PID of worker {id} (pid {pid})"
    );
    assert_eq!(get("LISTEN_FDS"), Some("1"), "LISTEN_FDS of pid {pid}");
    assert!(
        get("LISTEN_FDNAMES").is_some_and(|v| !v.is_empty()),
        "LISTEN_FDNAMES of pid {pid}: {:?}",
        get("LISTEN_FDNAMES")
    );
    assert_eq!(
        get("FORKLIFT_WORKER_ID"),
        Some(id.to_string().as_str()),
        "FORKLIFT_WORKER_ID of pid {pid}"
    );
    match (notify, get("NOTIFY_SOCKET")) {
        (true, Some(v)) => assert!(
            v.starts_with("@forklift-"),
            "NOTIFY_SOCKET of pid {pid} is {v:?}, not an abstract @forklift-... address"
        ),
        (true, None) => panic!("pid {pid} has no NOTIFY_SOCKET under --ready-notify"),
        (false, None) => {}
        (false, Some(v)) => panic!("pid {pid} has NOTIFY_SOCKET={v:?} without --ready-notify"),
    }
    let fd3 = std::fs::read_link(format!("/proc/{pid}/fd/3"))
        .unwrap_or_else(|e| panic!("pid {pid} has no fd 3: {e}"))
        .display()
        .to_string();
    assert!(
        fd3.starts_with("socket:["),
        "fd 3 of pid {pid} is {fd3:?}, not a socket"
    );
    fd3
}

/// Wait for the `exited` line of `pid`.
fn expect_exited(s: &Server, pid: u32, timeout: Duration) -> Hook {
    let p = pid.to_string();
    let find = || {
        s.hooks_of("exited")
            .into_iter()
            .find(|h| h.fields.get("pid") == Some(&p))
    };
    assert!(
        poll_until(Instant::now() + timeout, || find().is_some()),
        "no `exited` line for pid {pid} within {timeout:?}"
    );
    find().unwrap()
}

/// Wait for `pid` to be gone (dead or a zombie).
fn expect_gone(pid: u32, timeout: Duration) {
    assert!(
        poll_until(Instant::now() + timeout, || !process_alive(pid)),
        "process {pid} still alive {timeout:?} later"
    );
}

// ---------------------------------------------------------------------------
// Requests to the Python example (x-forklift-worker: pid, x-worker-id: index)
// ---------------------------------------------------------------------------

/// One `GET /` to the Python example: Ok(Ok((pid, worker id))), Ok(Err(bad answer)) or
/// Err(transport error).
fn py_get(addr: SocketAddr) -> io::Result<Result<(u32, u32), String>> {
    let r = http_get(addr, "/")?;
    Ok((|| {
        if r.status != 200 || r.body != b"greeting!!!" {
            return Err(format!("status {} body {:?}", r.status, r.body_str()));
        }
        let pid = r
            .header("x-forklift-worker")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("no pid in x-forklift-worker: {r:?}"))?;
        let id = r
            .header("x-worker-id")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .ok_or_else(|| format!("no worker index in x-worker-id: {r:?}"))?;
        Ok((pid, id))
    })())
}

#[derive(Debug, Default)]
struct PySpread {
    /// pid -> x-worker-id of the valid answers
    seen: BTreeMap<u32, u32>,
    /// pid -> number of valid answers
    per_pid: BTreeMap<u32, usize>,
    ok: usize,
    errors: Vec<String>,
    bad: Vec<String>,
}

/// Up to `total` `GET /` from `threads` threads, until `done(seen)`. Never panics.
fn py_spread(
    addr: SocketAddr,
    total: usize,
    threads: usize,
    done: impl Fn(&BTreeMap<u32, u32>) -> bool + Sync,
) -> PySpread {
    let result = Mutex::new(PySpread::default());
    let sent = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::SeqCst) || sent.fetch_add(1, Ordering::SeqCst) >= total {
                    return;
                }
                let r = py_get(addr);
                let mut res = result.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(Ok((pid, id))) => {
                        res.ok += 1;
                        *res.per_pid.entry(pid).or_default() += 1;
                        if let Some(prev) = res.seen.insert(pid, id) {
                            if prev != id {
                                res.bad
                                    .push(format!("pid {pid} answered as worker {prev} and {id}"));
                            }
                        }
                    }
                    Ok(Err(bad)) => res.bad.push(bad),
                    Err(e) => res.errors.push(format!("{e} ({:?})", e.kind())),
                }
                if !res.bad.is_empty() || done(&res.seen) {
                    stop.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    result.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Requests until every worker of `expected` (pid -> index) has answered, each naming its own
/// index; panics on a failed request, a bad answer, or an unexpected pid.
fn assert_py_served_by(addr: SocketAddr, expected: &BTreeMap<u32, u32>, total: usize) -> PySpread {
    let spread = py_spread(addr, total, 4, |seen| {
        seen.keys().any(|p| !expected.contains_key(p)) || seen.len() == expected.len()
    });
    assert!(spread.bad.is_empty(), "bad answer(s): {:?}", spread.bad);
    for (pid, id) in &spread.seen {
        assert_eq!(
            expected.get(pid),
            Some(id),
            "pid {pid} answered as worker {id}; expected workers (pid -> index): {expected:?}"
        );
    }
    assert!(
        spread.errors.is_empty(),
        "{} request(s) failed: {:?}",
        spread.errors.len(),
        spread.errors
    );
    assert_eq!(
        &spread.seen, expected,
        "after {} requests only {:?} of the workers {expected:?} served",
        spread.ok, spread.seen
    );
    spread
}

/// Start the Python example under `forklift run` with `options` and wait for `ready`.
fn start_python(options: &[&str]) -> (Server, Vec<u32>) {
    let script = python_script();
    let s = Server::start(&run_args(options, &[PYTHON, &script]));
    let pids = s.wait_ready();
    (s, pids)
}

/// The `worker I (pid P) serving` line the Python example prints on start.
fn expect_serving_line(s: &Server, pid: u32, id: u32, timeout: Duration) {
    let want = format!("worker {id} (pid {pid}) serving");
    s.expect_line(&format!("{want:?}"), |l| l == want, timeout);
}

// ---------------------------------------------------------------------------
// 1. Python, --ready-notify: serve, env, kill -9, HUP, TERM
// ---------------------------------------------------------------------------

#[test]
fn python_workers_serve_respawn_reload_and_stop() {
    let (mut s, ready) = start_python(&[
        "--workers",
        "2",
        "--ready-notify",
        "--graceful-timeout",
        "5",
    ]);
    println!("RUN python ready {} after start", ms(s.started.elapsed()));
    assert_eq!(ready.len(), 2, "ready line: {:?}", s.stdout_lines());
    let addr = s.addr();
    let gen1 = worker_map(&s, &ready);
    let ids: BTreeSet<u32> = gen1.values().copied().collect();
    assert_eq!(ids, BTreeSet::from([0, 1]), "worker indexes: {gen1:?}");

    // The environment: LISTEN_PID is the worker's own pid (the script exits otherwise, so
    // its `serving` line proves it too); both share the master's one socket.
    let mut sockets = BTreeSet::new();
    for (&pid, &id) in &gen1 {
        expect_serving_line(&s, pid, id, Duration::from_secs(2));
        sockets.insert(check_worker_env(pid, id, true));
    }
    assert_eq!(sockets.len(), 1, "workers share one socket: {sockets:?}");
    let spread = assert_py_served_by(addr, &gen1, 200);
    println!("RUN python: both workers served in {} requests", spread.ok);

    // kill -9 of one worker: a new pid serves, the slot is recovered.
    let victim = ready[0];
    let victim_id = gen1[&victim];
    kill_pid(victim, libc::SIGKILL);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(2);
    let mut new_pid = None;
    let mut errors = Vec::new();
    while new_pid.is_none() && Instant::now() < deadline {
        let burst = py_spread(addr, 8, 2, |seen| {
            seen.keys().any(|p| !gen1.contains_key(p))
        });
        errors.extend(burst.errors);
        assert!(
            burst.bad.is_empty(),
            "bad answer(s) after kill -9: {:?}",
            burst.bad
        );
        assert!(
            !burst.seen.contains_key(&victim),
            "the killed worker {victim} answered after kill -9"
        );
        new_pid = burst.seen.keys().copied().find(|p| !gen1.contains_key(p));
        if new_pid.is_none() {
            std::thread::sleep(POLL);
        }
    }
    let respawn = t0.elapsed();
    if !errors.is_empty() {
        println!(
            "NOTE: {} request(s) failed after kill -9: {errors:?}",
            errors.len()
        );
    }
    let new_pid = new_pid.unwrap_or_else(|| {
        panic!(
            "no new worker served within 2 s of kill -9 {victim} (spawned: {:?})",
            s.spawned_pids()
        )
    });
    println!(
        "RUN python respawn: new pid {new_pid} served {} after kill -9",
        ms(respawn)
    );
    let recovered = s.expect_line(
        &format!("`recovered worker={victim_id} old_pid={victim} new_pid={new_pid}`"),
        |l| l == format!("recovered worker={victim_id} old_pid={victim} new_pid={new_pid}"),
        Duration::from_secs(2),
    );
    let exited = expect_exited(&s, victim, Duration::from_secs(1));
    assert!(
        exited.get("status").contains("SIGKILL"),
        "status of the killed worker: {:?}",
        exited.line
    );
    let spawned = s
        .hooks_of("spawned")
        .into_iter()
        .find(|h| h.num("pid") == new_pid)
        .expect("a spawned line for the replacement");
    assert_eq!(spawned.num("worker"), victim_id, "{:?}", spawned.line);
    assert_eq!(spawned.num("generation"), 1, "{:?}", spawned.line);
    assert!(
        exited.index < spawned.index,
        "exited after spawned: {recovered:?}"
    );
    assert_eq!(
        s.spawned_pids().len(),
        3,
        "2 spawns + 1 respawn: {:?}",
        s.stdout_lines()
    );
    expect_gone(victim, Duration::from_secs(1));
    check_worker_env(new_pid, victim_id, true);
    let mut pool = gen1.clone();
    pool.remove(&victim);
    pool.insert(new_pid, victim_id);
    assert_py_served_by(addr, &pool, 200);

    // SIGHUP: rolling reload to generation 2, new pids serve, the old ones exit cleanly.
    let t0 = Instant::now();
    s.send_signal(libc::SIGHUP);
    s.expect_line(
        "`reloading generation=2`",
        |l| l == "reloading generation=2",
        Duration::from_secs(5),
    );
    let reloaded = s.expect_line(
        "`reloaded generation=2 pids=...`",
        |l| l.starts_with("reloaded generation=2 "),
        Duration::from_secs(10),
    );
    println!(
        "RUN python reload: {reloaded:?} {} after SIGHUP",
        ms(t0.elapsed())
    );
    let gen2_pids = parse_pid_list(parse_hook(&reloaded).1.get("pids").expect("pids="));
    assert_eq!(gen2_pids.len(), 2, "{reloaded:?}");
    let gen2 = worker_map(&s, &gen2_pids);
    for (&pid, &id) in &gen2 {
        assert!(
            !pool.contains_key(&pid),
            "reload kept pid {pid}: {reloaded:?}"
        );
        let h = s
            .hooks_of("spawned")
            .into_iter()
            .find(|h| h.num("pid") == pid)
            .unwrap();
        assert_eq!(h.num("generation"), 2, "{:?}", h.line);
        check_worker_env(pid, id, true);
    }
    assert_eq!(
        gen2.values().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([0, 1])
    );
    for &old in pool.keys() {
        let h = expect_exited(&s, old, Duration::from_secs(5));
        assert_eq!(
            h.get("status"),
            "exited with code 0",
            "old worker after reload: {:?}",
            h.line
        );
        expect_gone(old, Duration::from_secs(1));
    }
    assert_py_served_by(addr, &gen2, 200);

    // SIGTERM: graceful stop, the Python workers exit with code 0, the master with 0.
    let t0 = Instant::now();
    s.send_signal(libc::SIGTERM);
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    println!(
        "RUN python stop: master exited {} after SIGTERM",
        ms(t0.elapsed())
    );
    assert!(
        st.success(),
        "master exit status after SIGTERM: {}",
        describe_status(&st)
    );
    assert!(
        s.wait_output_closed(Instant::now() + Duration::from_secs(5)),
        "output still open"
    );
    for &pid in gen2.keys() {
        let h = expect_exited(&s, pid, Duration::ZERO);
        assert_eq!(h.get("status"), "exited with code 0", "{:?}", h.line);
    }
    assert_eq!(s.stdout_lines().last().map(String::as_str), Some("stopped"));
    for pid in s.spawned_pids() {
        assert!(
            !process_alive(pid),
            "worker {pid} alive after the master exited"
        );
    }
    assert!(
        group_empty(s.pgid),
        "left in the group: {:?}",
        group_members(s.pgid)
    );
}

// ---------------------------------------------------------------------------
// 2. --prefix-output: whole lines, each with its worker
// ---------------------------------------------------------------------------

/// The lifecycle lines the master prints itself.
const LIFECYCLE: &[&str] = &[
    "listening on ",
    "spawned ",
    "ready ",
    "exited ",
    "recovered ",
    "reloading ",
    "reloaded ",
    "reload failed ",
    "workers=",
    "timed out ",
    "upgrading ",
    "upgrade failed ",
];

/// `[worker ID pid PID] rest` -> (ID, PID, rest).
fn split_prefix(line: &str) -> Option<(u32, u32, &str)> {
    let rest = line.strip_prefix("[worker ")?;
    let (id, rest) = rest.split_once(" pid ")?;
    let (pid, rest) = rest.split_once("] ")?;
    Some((id.parse().ok()?, pid.parse().ok()?, rest))
}

#[test]
fn prefix_output_relays_whole_prefixed_lines() {
    let (mut s, ready) = start_python(&[
        "--workers",
        "2",
        "--ready-notify",
        "--prefix-output",
        "--graceful-timeout",
        "5",
    ]);
    let addr = s.addr();
    let map = worker_map(&s, &ready);
    for (&pid, &id) in &map {
        let want = format!("[worker {id} pid {pid}] worker {id} (pid {pid}) serving");
        s.expect_line(&format!("{want:?}"), |l| l == want, Duration::from_secs(2));
    }

    // One request at a time until both workers have answered: each logs a whole line.
    let one_by_one = py_spread(addr, 200, 1, |seen| seen.len() == map.len());
    assert!(
        one_by_one.errors.is_empty() && one_by_one.bad.is_empty(),
        "{one_by_one:?}"
    );
    assert_eq!(one_by_one.seen, map, "after {} requests", one_by_one.ok);
    for (&pid, &id) in &map {
        let want = format!("[worker {id} pid {pid}] request \"GET / HTTP/1.1\" 200 -");
        s.expect_line(&format!("{want:?}"), |l| l == want, Duration::from_secs(2));
    }
    // Then concurrent requests, so that both workers write at the same time.
    let burst = py_spread(addr, 100, 4, |_| false);
    assert!(
        burst.errors.is_empty() && burst.bad.is_empty(),
        "{} failed, bad: {:?}, errors: {:?}",
        burst.errors.len(),
        burst.bad,
        burst.errors
    );
    let mut answered: BTreeMap<u32, usize> = BTreeMap::new();
    for (pid, n) in one_by_one.per_pid.iter().chain(burst.per_pid.iter()) {
        *answered.entry(*pid).or_default() += n;
    }
    let total: usize = answered.values().sum();

    // Stop, so the whole output is in, then check every line.
    s.send_signal(libc::SIGTERM);
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert!(st.success(), "{}", describe_status(&st));
    assert!(s.wait_output_closed(Instant::now() + Duration::from_secs(5)));
    let lines = s.stdout_lines();
    // Python's print() writes the text and the newline in two writes, so two handler
    // threads of ONE worker may put two of its messages on one line and leave the next
    // empty (the script does that without forklift too). What forklift guarantees: one
    // prefix per line, at its start, naming the worker that wrote the line; nothing of a
    // worker lost or glued to another worker's or the master's line.
    const REQUEST: &str = "request \"GET / HTTP/1.1\" 200 -";
    let mut per_worker: BTreeMap<u32, (usize, usize, usize)> = BTreeMap::new(); // lines, requests, serving
    let mut glued = 0;
    for line in &lines {
        let prefixes = line.matches("[worker ").count();
        if let Some((id, pid, rest)) = split_prefix(line) {
            assert_eq!(prefixes, 1, "two prefixes in one line: {line:?}");
            assert_eq!(
                map.get(&pid),
                Some(&id),
                "prefix of an unknown worker: {line:?}"
            );
            let e = per_worker.entry(pid).or_default();
            e.0 += 1;
            let serving = format!("worker {id} (pid {pid}) serving");
            if rest == serving {
                e.2 += 1;
                continue;
            }
            let n = rest.matches(REQUEST).count();
            assert_eq!(
                rest,
                REQUEST.repeat(n),
                "not whole output of worker {id} after the prefix: {line:?}"
            );
            e.1 += n;
            if n != 1 {
                glued += 1;
            }
        } else {
            assert_eq!(prefixes, 0, "a prefix in the middle of a line: {line:?}");
            assert!(
                line == "stopped" || LIFECYCLE.iter().any(|p| line.starts_with(p)),
                "neither a lifecycle line nor a prefixed worker line: {line:?}"
            );
            assert!(
                !line.contains("serving") && !line.contains("request \""),
                "worker output glued to a lifecycle line: {line:?}"
            );
        }
    }
    for (&pid, &id) in &map {
        let (nlines, requests, serving) = per_worker.get(&pid).copied().unwrap_or_default();
        let want = answered.get(&pid).copied().unwrap_or(0);
        assert_eq!(serving, 1, "serving lines of worker {id} (pid {pid})");
        assert_eq!(
            requests, want,
            "request log lines of worker {id} (pid {pid}) vs requests it answered"
        );
        assert_eq!(
            nlines,
            1 + want,
            "prefixed lines of worker {id} (pid {pid}): one per line it printed"
        );
    }
    println!(
        "RUN prefix-output: {} stdout lines, {total} requests {answered:?}, \
         {glued} lines with 0 or 2+ of a worker's messages (its threads interleaved)",
        lines.len()
    );
}

// ---------------------------------------------------------------------------
// 3. The Rust listenfd example with --reuse-port
// ---------------------------------------------------------------------------

/// `hi\n` -> `worker=ID pid=PID echo=hi\n`: (ID, PID).
fn line_request(addr: SocketAddr) -> io::Result<(u32, u32)> {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    c.write_all(b"hi\n")?;
    let mut reply = String::new();
    BufReader::new(c).read_line(&mut reply)?;
    let field = |k: &str| {
        reply
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|v| v.parse::<u32>().ok())
    };
    match (
        reply.ends_with(" echo=hi\n"),
        field("worker="),
        field("pid="),
    ) {
        (true, Some(id), Some(pid)) => Ok((id, pid)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad reply {reply:?}"),
        )),
    }
}

#[test]
fn rust_listenfd_example_with_reuse_port() {
    let Some(bin) = example_bin("listenfd_server") else {
        println!(
            "SKIP: the listenfd_server example is not built next to this test binary \
             (run the workspace's tests, or `cargo build --examples`)"
        );
        return;
    };
    let bin = bin.display().to_string();
    let mut s = Server::start(&run_args(
        &[
            "--workers",
            "2",
            "--ready-notify",
            "--reuse-port",
            "--graceful-timeout",
            "5",
        ],
        &[&bin],
    ));
    let ready = s.wait_ready();
    assert_eq!(ready.len(), 2);
    let addr = s.addr();
    let map = worker_map(&s, &ready);
    let mut sockets = BTreeSet::new();
    for (&pid, &id) in &map {
        sockets.insert(check_worker_env(pid, id, true));
    }
    assert_eq!(
        sockets.len(),
        2,
        "--reuse-port gives each worker its own socket: {sockets:?}"
    );

    let mut seen: BTreeMap<u32, u32> = BTreeMap::new();
    let mut n = 0;
    while seen.len() < 2 && n < 200 {
        n += 1;
        let (id, pid) = line_request(addr).unwrap_or_else(|e| panic!("request {n}: {e}"));
        assert_eq!(
            map.get(&pid),
            Some(&id),
            "reply from worker {id} pid {pid}; the workers (pid -> index) are {map:?}"
        );
        seen.insert(pid, id);
    }
    assert_eq!(seen, map, "after {n} connections");
    println!("RUN listenfd --reuse-port: both workers answered within {n} connections");

    s.send_signal(libc::SIGTERM);
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert!(st.success(), "{}", describe_status(&st));
    for &pid in map.keys() {
        expect_gone(pid, Duration::from_secs(1));
    }
    assert!(
        group_empty(s.pgid),
        "left in the group: {:?}",
        group_members(s.pgid)
    );
}

// ---------------------------------------------------------------------------
// 4. --ready-after for a program that does not speak sd_notify
// ---------------------------------------------------------------------------

/// Seconds of the day of a tracing log line (`2026-01-02T03:04:05.123456Z  INFO ...`).
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?;
    let (_, time) = ts.split_once('T')?;
    let time = time.strip_suffix('Z')?;
    let mut it = time.split(':');
    let h: f64 = it.next()?.parse().ok()?;
    let m: f64 = it.next()?.parse().ok()?;
    let s: f64 = it.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

#[test]
fn ready_after_delay_without_sd_notify() {
    let script = python_script();
    let s = Server::start(&run_args(
        &["--workers", "2", "--ready-after", "0.5"],
        &[PYTHON, &script],
    ));
    let spawned_seen = s
        .wait_for_line(
            |l| l.starts_with("spawned worker=1 "),
            Instant::now() + READY_TIMEOUT,
        )
        .map(|_| Instant::now())
        .expect("no `spawned worker=1` line");
    let ready = s.wait_ready();
    let ready_seen = Instant::now();
    let since_start = ready_seen - s.started;
    let since_spawn = ready_seen - spawned_seen;
    assert_eq!(ready.len(), 2);
    assert!(
        since_start >= Duration::from_millis(500),
        "ready {} after the master started, before --ready-after 0.5",
        ms(since_start)
    );
    assert!(
        since_spawn <= Duration::from_millis(2000),
        "ready line {} after the spawned line, for --ready-after 0.5",
        ms(since_spawn)
    );
    // The master's own log timestamps, when present, measure spawn -> ready exactly.
    let err = s.stderr.snapshot();
    let spawn_t = err
        .iter()
        .rev()
        .filter(|l| l.contains(" spawned as pid "))
        .find_map(|l| log_time(l));
    let ready_t = err
        .iter()
        .find(|l| l.contains("workers ready"))
        .and_then(|l| log_time(l));
    let logged = match (spawn_t, ready_t) {
        (Some(a), Some(b)) if b >= a => {
            let d = b - a;
            assert!(
                d >= 0.49,
                "ready {d:.3} s after the last spawn (log), --ready-after 0.5"
            );
            format!("{:.1} ms", d * 1000.0)
        }
        _ => "n/a".to_string(),
    };
    println!(
        "RUN ready-after 0.5: ready {} after start, {} after the spawned line was seen, {logged} by the log",
        ms(since_start),
        ms(since_spawn)
    );
    let map = worker_map(&s, &ready);
    for (&pid, &id) in &map {
        check_worker_env(pid, id, false);
    }
    assert_py_served_by(s.addr(), &map, 200);
}

// ---------------------------------------------------------------------------
// 5. Commands that cannot start
// ---------------------------------------------------------------------------

#[test]
fn command_not_found_fails_at_once() {
    let (s, st) = run_to_exit(
        &run_args(&["--workers", "1"], &["no-such-command-xyz"]),
        Duration::from_secs(10),
    );
    assert!(!st.success(), "exit status {}", describe_status(&st));
    let err = s.stderr_text();
    assert!(
        err.contains("command not found: no-such-command-xyz"),
        "stderr does not say `command not found: no-such-command-xyz`"
    );
    assert!(error_line(&s).is_some(), "no `forklift: error:` line");
    let hooks = s.hooks();
    assert!(
        !hooks.iter().any(|h| h.kind == "ready"),
        "a ready line: {:?}",
        s.stdout_lines()
    );
    assert!(
        s.spawned_pids().len() <= 1,
        "respawn loop: {:?}",
        s.spawned_pids()
    );
    assert!(
        group_empty(s.pgid),
        "left in the group: {:?}",
        group_members(s.pgid)
    );
    println!(
        "RUN not found: {} in {}, {} spawned line(s)",
        describe_status(&st),
        ms(s.started.elapsed()),
        s.spawned_pids().len()
    );
}

#[test]
fn command_exiting_at_once_fails_without_respawn() {
    let (s, st) = run_to_exit(
        &run_args(&["--workers", "1"], &["false"]),
        Duration::from_secs(10),
    );
    assert!(!st.success(), "exit status {}", describe_status(&st));
    let line = error_line(&s).expect("no `forklift: error:` line");
    assert!(
        line.contains("false"),
        "the error does not name the command: {line:?}"
    );
    assert!(
        line.contains("exited with code 1 before it was ready"),
        "error line: {line:?}"
    );
    assert_eq!(
        s.spawned_pids().len(),
        1,
        "one spawn, no respawn loop: {:?}",
        s.stdout_lines()
    );
    assert!(
        s.hooks_of("ready").is_empty(),
        "a ready line: {:?}",
        s.stdout_lines()
    );
    assert!(
        group_empty(s.pgid),
        "left in the group: {:?}",
        group_members(s.pgid)
    );
    println!(
        "RUN false: {} in {}",
        describe_status(&st),
        ms(s.started.elapsed())
    );
}

#[test]
fn command_never_ready_fails_at_boot_timeout() {
    let (s, st) = run_to_exit(
        &run_args(
            &["--workers", "1", "--ready-notify", "--boot-timeout", "1"],
            &["sleep", "30"],
        ),
        Duration::from_secs(5),
    );
    let took = s.started.elapsed();
    assert!(!st.success(), "exit status {}", describe_status(&st));
    let line = error_line(&s).expect("no `forklift: error:` line");
    assert!(
        line.contains("did not report ready within"),
        "error line: {line:?}"
    );
    assert!(
        line.contains("sleep"),
        "the error does not name the command: {line:?}"
    );
    let spawned = s.spawned_pids();
    assert_eq!(
        spawned.len(),
        1,
        "one spawn, no respawn loop: {:?}",
        s.stdout_lines()
    );
    assert!(
        !process_alive(spawned[0]),
        "the sleep process {} is still alive",
        spawned[0]
    );
    assert!(
        s.hooks_of("ready").is_empty(),
        "a ready line: {:?}",
        s.stdout_lines()
    );
    assert!(
        group_empty(s.pgid),
        "left in the group: {:?}",
        group_members(s.pgid)
    );
    println!(
        "RUN never ready: {} after {}",
        describe_status(&st),
        ms(took)
    );
}

// ---------------------------------------------------------------------------
// 6. TTIN / TTOU
// ---------------------------------------------------------------------------

#[test]
fn ttin_ttou_with_python_workers() {
    let (s, ready) = start_python(&[
        "--workers",
        "2",
        "--ready-notify",
        "--graceful-timeout",
        "5",
    ]);
    let addr = s.addr();
    let pool = worker_map(&s, &ready);
    assert_py_served_by(addr, &pool, 200);

    // TTIN: a third worker (index 2) joins and serves.
    let t0 = Instant::now();
    s.send_signal(libc::SIGTTIN);
    let at = s.expect_line("`workers=3`", |l| l == "workers=3", Duration::from_secs(5));
    let find_new = || {
        s.hooks_of("spawned")
            .into_iter()
            .find(|h| h.num("worker") == 2)
    };
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || find_new()
            .is_some()),
        "no `spawned worker=2` after {at:?}"
    );
    let added = find_new().unwrap();
    assert_eq!(added.num("generation"), 1, "{:?}", added.line);
    let added_pid = added.num("pid");
    expect_serving_line(&s, added_pid, 2, Duration::from_secs(5));
    check_worker_env(added_pid, 2, true);
    let mut three = pool.clone();
    three.insert(added_pid, 2);
    let spread = assert_py_served_by(addr, &three, 300);
    println!(
        "RUN TTIN: 3 workers served {} after SIGTTIN ({} requests)",
        ms(t0.elapsed()),
        spread.ok
    );

    // TTOU: the added worker leaves cleanly; the first two serve on.
    s.send_signal(libc::SIGTTOU);
    s.expect_line("`workers=2`", |l| l == "workers=2", Duration::from_secs(5));
    let h = expect_exited(&s, added_pid, Duration::from_secs(5));
    assert_eq!(h.num("worker"), 2, "{:?}", h.line);
    assert_eq!(h.get("status"), "exited with code 0", "{:?}", h.line);
    expect_gone(added_pid, Duration::from_secs(1));
    let expected_group: BTreeSet<u32> = pool.keys().copied().chain([s.pid]).collect();
    assert!(
        poll_until(Instant::now() + Duration::from_secs(2), || {
            group_members(s.pgid).into_iter().collect::<BTreeSet<_>>() == expected_group
        }),
        "processes {:?}, expected the master and {:?}",
        group_members(s.pgid),
        pool.keys()
    );
    assert_py_served_by(addr, &pool, 200);
    assert_eq!(s.spawned_pids().len(), 3, "{:?}", s.stdout_lines());
}

// ---------------------------------------------------------------------------
// --shutdown-delay with a program forklift runs
// ---------------------------------------------------------------------------

/// With `--shutdown-delay`, a TERM turns the master's `/readyz` to 503 at once while the
/// program goes on serving, new connections included, for the delay: the master keeps the
/// listening socket open and sends the program its TERM only when the delay is over. (What
/// forklift's own workers add, `Connection: close` and a GOAWAY, is the program's to do.)
#[test]
fn shutdown_delay_keeps_a_run_program_serving_while_unready() {
    let delay = Duration::from_secs(3);
    let (mut s, ready) = start_python(&[
        "--workers",
        "2",
        "--ready-notify",
        "--health",
        "127.0.0.1:0",
        "--shutdown-delay",
        "3",
    ]);
    let addr = s.addr();
    let health = health_addr(&s);
    let workers = worker_map(&s, &ready);
    assert!(
        poll_until(Instant::now() + Duration::from_secs(10), || {
            http_get(health, "/readyz").is_ok_and(|r| r.status == 200)
        }),
        "/readyz never answered 200: {}",
        s.stderr_text()
    );
    let t0 = Instant::now();
    s.send_signal(libc::SIGTERM);
    assert!(
        poll_until_every(
            t0 + Duration::from_secs(1),
            Duration::from_millis(1),
            || { http_get(health, "/readyz").is_ok_and(|r| r.status == 503) }
        ),
        "/readyz did not turn 503 after TERM: {}",
        s.stderr_text()
    );
    // Unready, and still serving: every worker answers new connections, none has its TERM.
    assert_py_served_by(addr, &workers, 200);
    assert!(
        t0.elapsed() < delay,
        "the checks ran past the delay ({:?})",
        t0.elapsed()
    );
    for &pid in workers.keys() {
        assert!(process_alive(pid), "worker {pid} stopped during the delay");
    }
    assert_eq!(http_get(health, "/readyz").unwrap().status, 503);
    let st = s.wait_exit(t0 + Duration::from_secs(20));
    assert!(st.success(), "{}", describe_status(&st));
    assert!(
        t0.elapsed() >= delay,
        "stopped before the delay was over: {:?}",
        t0.elapsed()
    );
}
