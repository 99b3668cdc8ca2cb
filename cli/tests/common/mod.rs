//! Test harness for the `forklift` CLI integration tests.
//!
//! Every test starts the real `forklift` binary in its own process group and
//! talks to it over real loopback sockets. The server guard, the /proc readers and
//! the HTTP client are `forklift-testkit`'s (shared with bench/'s fault harness),
//! re-exported here; [`StartForklift`] binds the guard to this package's `forklift`
//! binary. The guard kills the whole process group (and any worker it announced)
//! when it is dropped, pass or fail, and prints the captured output of the server
//! when the test panics.
//!
//! Nothing here sleeps for a fixed time to synchronise: every wait is a poll
//! against a deadline.

#![allow(dead_code, unused_imports)]

pub use forklift_testkit::hooks::*;
pub use forklift_testkit::http::*;
pub use forklift_testkit::process::*;
pub use forklift_testkit::server::*;
pub use forklift_testkit::time::*;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The default log filter: debug for forklift and the CLI (the `sleep started`
/// event is a DEBUG event of `forklift_cli`), info for the rest.
pub const DEFAULT_RUST_LOG: &str = "forklift=debug,forklift_cli=debug,info";

pub fn forklift_bin() -> &'static str {
    env!("CARGO_BIN_EXE_forklift")
}

// ---------------------------------------------------------------------------
// Starting forklift under the guard
// ---------------------------------------------------------------------------

/// The ways the tests start a server: this package's `forklift` binary (or a copy of it)
/// under the testkit's guard, which kills on drop a worker that left the process group only
/// if it still runs `forklift_bin()`.
pub trait StartForklift {
    /// Start `forklift <args>` in a new process group with the default log filter.
    fn start(args: &[&str]) -> Server;

    /// Start `forklift <args>` with these environment variables (and no default log filter).
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server;

    /// Start and wait for the `ready` line (panics with the output if it does not come).
    fn start_ready(args: &[&str]) -> Server;

    /// Start `program <args>` (a copy of the forklift binary, say) like [`StartForklift::start`]:
    /// its own process group, the default log filter, output captured.
    fn start_program(program: &Path, args: &[&str]) -> Server;

    /// Start a prepared command (its own environment, a `pre_exec`...) under the guard: a new
    /// process group, stdin null, stdout and stderr captured. `label` is what the failure
    /// report prints as the arguments.
    fn start_command(cmd: Command, label: Vec<String>) -> Server;
}

impl StartForklift for Server {
    fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[("RUST_LOG", DEFAULT_RUST_LOG)])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(forklift_bin());
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::start_command(cmd, args.iter().map(|s| s.to_string()).collect())
    }

    fn start_ready(args: &[&str]) -> Server {
        let s = Self::start(args);
        s.wait_ready();
        s
    }

    fn start_program(program: &Path, args: &[&str]) -> Server {
        let mut cmd = Command::new(program);
        cmd.args(args).env("RUST_LOG", DEFAULT_RUST_LOG);
        Self::start_command(cmd, args.iter().map(|s| s.to_string()).collect())
    }

    fn start_command(cmd: Command, label: Vec<String>) -> Server {
        Server::spawn(cmd, Launch::new(forklift_bin(), label))
    }
}

/// Run forklift to completion (for commands that must fail fast) with a deadline.
/// Returns the server (exited) so its output can be inspected.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> (Server, ExitStatus) {
    let mut s = Server::start(args);
    let deadline = s.started + timeout;
    let st = match s.try_wait_exit(deadline) {
        Some(st) => st,
        None => panic!("forklift {args:?} did not exit within {timeout:?}"),
    };
    // The reader threads may still hold the last lines: wait for end-of-file on both pipes
    // (every process that held them has exited once the group is empty).
    s.wait_output_closed(Instant::now() + Duration::from_secs(5));
    (s, st)
}

// ---------------------------------------------------------------------------
// The server's processes and output
// ---------------------------------------------------------------------------

/// The live members of the server's process group but the master: its workers.
pub fn worker_procs(s: &Server) -> BTreeSet<u32> {
    group_members(s.pgid)
        .into_iter()
        .filter(|p| *p != s.pid)
        .collect()
}

/// The process group of a process.
pub fn pgrp_of(pid: u32) -> Option<i32> {
    stat(pid).map(|st| st.pgrp)
}

/// The parent of a process.
pub fn ppid_of(pid: u32) -> Option<u32> {
    stat(pid).map(|st| st.ppid)
}

/// How many stderr lines contain `needle`.
pub fn stderr_count(s: &Server, needle: &str) -> usize {
    s.stderr.count_containing(needle)
}

// ---------------------------------------------------------------------------
// The contract of `GET /`
// ---------------------------------------------------------------------------

/// Check the `GET /` response of the contract.
pub fn assert_greeting(r: &Response) {
    if let Err(e) = check_greeting(r) {
        panic!("bad answer to GET /: {e}");
    }
}

/// Outcome of a burst of requests.
#[derive(Debug, Default)]
pub struct Spread {
    /// pids of the x-forklift-worker headers of the valid answers
    pub pids: BTreeSet<u32>,
    /// number of valid answers
    pub ok: usize,
    /// transport errors (connect refused, reset, timeout...)
    pub errors: Vec<String>,
    /// answers that break the contract of `GET /`
    pub bad: Vec<String>,
}

/// The whole contract of `GET /`: status 200, body `greeting!!!`, a text/plain content type
/// and the worker's pid in `x-forklift-worker`.
fn check_greeting(r: &Response) -> Result<u32, String> {
    check_greeting_body(r)?;
    let ct = r.header("content-type").unwrap_or("");
    if !ct.starts_with("text/plain") {
        return Err(format!("content-type {ct:?} (want text/plain)"));
    }
    worker_header(r)
}

/// The worker pid of an answer to `GET /`: status 200, body `greeting!!!` and the pid in
/// `x-forklift-worker` (the content type is not checked).
pub fn greeting_pid(r: &Response) -> Result<u32, String> {
    check_greeting_body(r)?;
    worker_header(r)
}

fn check_greeting_body(r: &Response) -> Result<(), String> {
    if r.status != 200 {
        return Err(format!("status {} (want 200): {r:?}", r.status));
    }
    if r.body != b"greeting!!!" {
        return Err(format!("body {:?} (want \"greeting!!!\")", r.body_str()));
    }
    Ok(())
}

fn worker_header(r: &Response) -> Result<u32, String> {
    let v = r
        .header("x-forklift-worker")
        .ok_or_else(|| format!("no x-forklift-worker header: {r:?}"))?;
    v.trim()
        .parse()
        .map_err(|_| format!("x-forklift-worker header {v:?} is not a pid"))
}

/// Send up to `total` `GET /` requests from `threads` concurrent threads; stop
/// early once `done(pids seen)` is true. Never panics: the caller checks.
pub fn spread_requests(
    target: &Listen,
    total: usize,
    threads: usize,
    done: impl Fn(&BTreeSet<u32>) -> bool + Sync,
) -> Spread {
    let result = Mutex::new(Spread::default());
    let sent = std::sync::atomic::AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::SeqCst) || sent.fetch_add(1, Ordering::SeqCst) >= total {
                    return;
                }
                let r = http_get_listen(target, "/", Duration::from_secs(5));
                let mut res = result.lock().unwrap_or_else(|e| e.into_inner());
                match r.map(|resp| check_greeting(&resp)) {
                    Ok(Ok(pid)) => {
                        res.pids.insert(pid);
                        res.ok += 1;
                    }
                    Ok(Err(bad)) => res.bad.push(bad),
                    Err(e) => res.errors.push(format!("{e} ({:?})", e.kind())),
                }
                if !res.bad.is_empty() || done(&res.pids) {
                    stop.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    result.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Serve N: send requests until exactly the `expected` pids have been seen;
/// panics if another pid shows up, a request fails, or not all are seen
/// within `total` requests.
pub fn assert_served_by(target: &Listen, expected: &BTreeSet<u32>, total: usize) -> Spread {
    let spread = spread_requests(target, total, 4, |seen| {
        !seen.is_subset(expected) || seen == expected
    });
    assert!(
        spread.bad.is_empty(),
        "bad answer(s) to GET /: {:?}",
        spread.bad
    );
    assert!(
        spread.pids.is_subset(expected),
        "a response came from pid(s) {:?} not among the expected workers {expected:?}",
        spread.pids.difference(expected).collect::<Vec<_>>()
    );
    assert!(
        spread.errors.is_empty(),
        "{} request(s) failed: {:?}",
        spread.errors.len(),
        spread.errors
    );
    assert_eq!(
        &spread.pids, expected,
        "after {} requests only {:?} of the workers {expected:?} served",
        spread.ok, spread.pids
    );
    spread
}

// ---------------------------------------------------------------------------
// Misc
// ---------------------------------------------------------------------------

/// Can this machine bind [::1]?
pub fn ipv6_loopback_available() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// A unique path in the temp dir, `fl-TAG-PID-NANOS` then `suffix`, with nothing there.
fn unique_temp_path(tag: &str, suffix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let p = std::env::temp_dir().join(format!("fl-{tag}-{}-{nanos}{suffix}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// A unique unix socket path in the temp dir (removed by the guard on drop).
pub struct TempSock(pub PathBuf);

impl TempSock {
    pub fn new(tag: &str) -> TempSock {
        TempSock(unique_temp_path(tag, ".sock"))
    }
}

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A path in the temp dir that does not exist yet; removed on drop.
pub struct TempPath(pub PathBuf);

impl TempPath {
    pub fn new(tag: &str) -> TempPath {
        TempPath(unique_temp_path(tag, ""))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A fresh directory in the temp dir; removed with its contents on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = unique_temp_path(tag, "");
        std::fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Background client threads that run until [`Clients::finish`] (or their own deadline);
/// stopped and joined on drop, pass or fail.
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Clients {
    pub fn new() -> Clients {
        Clients {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// Starts a client; it should return once the flag it is given becomes true.
    pub fn spawn(&mut self, client: impl FnOnce(&AtomicBool) + Send + 'static) {
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || client(&stop)));
    }

    /// Stops the clients and waits for them.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The master's health port, from its `health port on http://ADDR/` log line.
pub fn health_addr(s: &Server) -> std::net::SocketAddr {
    let line = s
        .wait_stderr_contains("health port on http://", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no health port line; stderr:\n{}", s.stderr_text()));
    let rest = line.split("health port on http://").nth(1).unwrap();
    rest.split('/').next().unwrap().parse().unwrap()
}

/// Installs `content` (or a copy of the forklift binary) at `dir/forklift` atomically: a
/// temporary file beside it renamed over the target, as a package manager does.
pub fn install_binary(dir: &Path, content: Option<&[u8]>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let target = dir.join("forklift");
    let tmp = dir.join(".forklift.new");
    match content {
        Some(bytes) => std::fs::write(&tmp, bytes).expect("write the new binary"),
        None => {
            std::fs::copy(forklift_bin(), &tmp).expect("copy the forklift binary");
        }
    }
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, &target).expect("rename the new binary into place");
    target
}
