//! Test harness for the `forklift` CLI integration tests.
//!
//! Every test starts the real `forklift` binary in its own process group and
//! talks to it over real loopback sockets. The [`Server`] guard kills the whole
//! process group (and any worker it announced) when it is dropped, pass or
//! fail, and prints the captured output of the server when the test panics.
//!
//! Nothing here sleeps for a fixed time to synchronise: every wait is a poll
//! against a deadline.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often the polling loops look again.
pub const POLL: Duration = Duration::from_millis(10);

/// Poll interval of the loops whose elapsed time the tests print (master exit,
/// workers gone): fine enough that the printed time is not the poll interval.
pub const MEASURE_POLL: Duration = Duration::from_millis(1);

/// The default log filter: debug for forklift and the CLI (the `sleep started`
/// event is a DEBUG event of `forklift_cli`), info for the rest.
pub const DEFAULT_RUST_LOG: &str = "forklift=debug,forklift_cli=debug,info";

/// How long a server may take to print its `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn forklift_bin() -> &'static str {
    env!("CARGO_BIN_EXE_forklift")
}

// ---------------------------------------------------------------------------
// Captured output
// ---------------------------------------------------------------------------

/// Lines read from one pipe by a reader thread.
#[derive(Default)]
pub struct Captured {
    lines: Mutex<Vec<String>>,
    eof: AtomicBool,
}

impl Captured {
    pub fn snapshot(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn eof(&self) -> bool {
        self.eof.load(Ordering::SeqCst)
    }

    pub fn text(&self) -> String {
        let mut s = self.snapshot().join("\n");
        s.push('\n');
        s
    }
}

fn spawn_reader<R: Read + Send + 'static>(pipe: R, sink: Arc<Captured>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    while matches!(buf.last(), Some(b'\n') | Some(b'\r')) {
                        buf.pop();
                    }
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    sink.lines.lock().unwrap().push(line);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        sink.eof.store(true, Ordering::SeqCst);
    })
}

/// Which output stream of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A listener announced by a `listening on ...` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Listen {
    pub fn tcp(&self) -> SocketAddr {
        match self {
            Listen::Tcp(a) => *a,
            Listen::Unix(p) => panic!("expected a TCP listener, got unix:{}", p.display()),
        }
    }
}

/// Parse the text after `listening on `.
pub fn parse_listen(rest: &str) -> Option<Listen> {
    let rest = rest.trim();
    if let Some(addr) = rest
        .strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))
    {
        let addr = addr.trim_end_matches('/');
        addr.parse::<SocketAddr>().ok().map(Listen::Tcp)
    } else {
        rest.strip_prefix("unix:")
            .map(|p| Listen::Unix(PathBuf::from(p)))
    }
}

// ---------------------------------------------------------------------------
// Hook lines on stdout
// ---------------------------------------------------------------------------

/// Split a hook line such as `exited worker=0 pid=12 status="killed by SIGKILL"`
/// into its first word and its `key=value` fields (values may be double-quoted).
pub fn parse_hook(line: &str) -> (String, HashMap<String, String>) {
    let line = line.trim();
    let (word, mut rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let mut fields = HashMap::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            // quoted value, with \" and \\ escapes
            let mut out = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            value = out;
            rest = &r[end.min(r.len())..];
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            value = rest[..end].to_string();
            rest = &rest[end..];
        }
        fields.insert(key, value);
    }
    (word.to_string(), fields)
}

/// A parsed hook line with its index among the stdout lines.
#[derive(Clone, Debug)]
pub struct Hook {
    pub index: usize,
    pub kind: String,
    pub fields: HashMap<String, String>,
    pub line: String,
}

impl Hook {
    pub fn num(&self, key: &str) -> u32 {
        let v = self
            .fields
            .get(key)
            .unwrap_or_else(|| panic!("hook line {:?} has no field {key}", self.line));
        v.parse().unwrap_or_else(|_| {
            panic!(
                "hook line {:?}: field {key}={v:?} is not a number",
                self.line
            )
        })
    }

    pub fn get(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("hook line {:?} has no field {key}", self.line))
    }
}

pub fn parse_pid_list(s: &str) -> Vec<u32> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("bad pid {p:?} in pid list {s:?}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The server guard
// ---------------------------------------------------------------------------

pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    pub pgid: i32,
    pub args: Vec<String>,
    pub stdout: Arc<Captured>,
    pub stderr: Arc<Captured>,
    pub started: Instant,
    status: Option<ExitStatus>,
}

impl Server {
    /// Start `forklift <args>` in a new process group with the default log filter.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[("RUST_LOG", DEFAULT_RUST_LOG)])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(forklift_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {args:?}: {e}", forklift_bin()));
        let stdout = Arc::new(Captured::default());
        let stderr = Arc::new(Captured::default());
        spawn_reader(child.stdout.take().unwrap(), stdout.clone());
        spawn_reader(child.stderr.take().unwrap(), stderr.clone());
        let pid = child.id();
        Server {
            child: Some(child),
            pid,
            pgid: pid as i32,
            args: args.iter().map(|s| s.to_string()).collect(),
            stdout,
            stderr,
            started,
            status: None,
        }
    }

    /// Start and wait for the `ready` line (panics with the output if it does not come).
    pub fn start_ready(args: &[&str]) -> Server {
        let s = Self::start(args);
        s.wait_ready();
        s
    }

    fn captured(&self, stream: Stream) -> &Captured {
        match stream {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.snapshot()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.text()
    }

    /// Wait until a line of `stream` satisfies `pred`; `None` on deadline or
    /// when the stream is closed without such a line.
    pub fn wait_for_line_in(
        &self,
        stream: Stream,
        pred: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Option<(usize, String)> {
        let cap = self.captured(stream);
        let mut seen = 0;
        loop {
            // read eof before the lines, so a line pushed just before eof is seen
            let eof = cap.eof();
            {
                let lines = cap.lines.lock().unwrap();
                for (i, l) in lines.iter().enumerate().skip(seen) {
                    if pred(l) {
                        return Some((i, l.clone()));
                    }
                }
                seen = lines.len();
            }
            if eof || Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }

    /// Wait for a stdout line satisfying `pred`.
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool, deadline: Instant) -> Option<String> {
        self.wait_for_line_in(Stream::Stdout, pred, deadline)
            .map(|(_, l)| l)
    }

    /// Like `wait_for_line` but panics with a description.
    pub fn expect_line(
        &self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> String {
        match self.wait_for_line(pred, Instant::now() + timeout) {
            Some(l) => l,
            None => panic!(
                "no stdout line {what} within {timeout:?} (stdout closed: {})",
                self.stdout.eof()
            ),
        }
    }

    /// Wait for a stderr line containing `needle`.
    pub fn wait_stderr_contains(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_for_line_in(
            Stream::Stderr,
            |l| l.contains(needle),
            Instant::now() + timeout,
        )
        .map(|(_, l)| l)
    }

    /// Wait for the `ready` line and return its pids.
    pub fn wait_ready(&self) -> Vec<u32> {
        let line = self.expect_line(
            "`ready pids=...`",
            |l| l.starts_with("ready "),
            READY_TIMEOUT,
        );
        let (_, f) = parse_hook(&line);
        let pids = f
            .get("pids")
            .unwrap_or_else(|| panic!("ready line without pids=: {line:?}"));
        parse_pid_list(pids)
    }

    /// The pids of the `ready` line (which must already have been printed).
    pub fn pids_from_ready(&self) -> Vec<u32> {
        let line = self
            .stdout_lines()
            .into_iter()
            .find(|l| l.starts_with("ready "))
            .expect("no ready line yet");
        let (_, f) = parse_hook(&line);
        parse_pid_list(f.get("pids").expect("ready line without pids="))
    }

    /// The listeners of the `listening on` lines printed so far.
    pub fn listeners(&self) -> Vec<Listen> {
        self.stdout_lines()
            .iter()
            .filter_map(|l| l.strip_prefix("listening on "))
            .map(|rest| {
                parse_listen(rest).unwrap_or_else(|| panic!("unparsable listening line: {rest:?}"))
            })
            .collect()
    }

    /// The first listener, which must be TCP.
    pub fn addr(&self) -> SocketAddr {
        let ls = self.listeners();
        assert!(!ls.is_empty(), "no `listening on` line");
        ls[0].tcp()
    }

    /// All hook lines (spawned/ready/exited/recovered/stopped/listening) on stdout so far.
    pub fn hooks(&self) -> Vec<Hook> {
        self.stdout_lines()
            .into_iter()
            .enumerate()
            .map(|(index, line)| {
                let (kind, fields) = parse_hook(&line);
                Hook {
                    index,
                    kind,
                    fields,
                    line,
                }
            })
            .collect()
    }

    pub fn hooks_of(&self, kind: &str) -> Vec<Hook> {
        self.hooks()
            .into_iter()
            .filter(|h| h.kind == kind)
            .collect()
    }

    /// Every worker pid announced by a `spawned` line so far.
    pub fn spawned_pids(&self) -> Vec<u32> {
        self.hooks_of("spawned")
            .iter()
            .map(|h| h.num("pid"))
            .collect()
    }

    pub fn send_signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}) failed: {}",
            self.pid,
            io::Error::last_os_error()
        );
    }

    /// Has the master exited (reaps it if so)?
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(st)) = child.try_wait() {
                    self.status = Some(st);
                }
            }
        }
        self.status
    }

    /// Wait for the master to exit; `None` if it is still running at the deadline.
    pub fn try_wait_exit(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(MEASURE_POLL);
        }
    }

    /// Wait for the master to exit; panics at the deadline.
    pub fn wait_exit(&mut self, deadline: Instant) -> ExitStatus {
        match self.try_wait_exit(deadline) {
            Some(st) => st,
            None => panic!("master pid {} still running at the deadline", self.pid),
        }
    }

    /// Wait until both output pipes are closed (every process holding them is gone).
    pub fn wait_output_closed(&self, deadline: Instant) -> bool {
        poll_until(deadline, || self.stdout.eof() && self.stderr.eof())
    }

    /// Kill everything this server started; idempotent.
    pub fn kill_all(&mut self) {
        // The master is not reaped yet (unless wait_exit saw it exit), so while it
        // is a zombie its pid and our pgid cannot be reused.
        let reaped = self.status.is_some();
        if !reaped || !group_empty(self.pgid) {
            unsafe {
                libc::kill(-self.pgid, libc::SIGKILL);
            }
        }
        // Workers that might have left the group (setsid/setpgid): kill the ones we
        // know of, if they are still our binary.
        for pid in self.spawned_pids() {
            if process_alive(pid) && is_our_binary(pid) {
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            if self.status.is_none() {
                let _ = child.kill();
                if let Ok(st) = child.wait() {
                    self.status = Some(st);
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_all();
        // let the reader threads drain the pipes
        let _ = self.wait_output_closed(Instant::now() + Duration::from_secs(2));
        if thread::panicking() {
            eprintln!(
                "===== forklift {:?} (pid {}) exit status: {:?}",
                self.args, self.pid, self.status
            );
            eprintln!("===== stdout:");
            for l in self.stdout.snapshot() {
                eprintln!("  | {l}");
            }
            eprintln!("===== stderr:");
            for l in self.stderr.snapshot() {
                eprintln!("  | {l}");
            }
            eprintln!("===== end of forklift output");
        }
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

pub fn describe_status(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// Poll `cond` until it is true or the deadline passes; returns the last result.
pub fn poll_until(deadline: Instant, cond: impl FnMut() -> bool) -> bool {
    poll_until_every(deadline, POLL, cond)
}

/// `poll_until` with a given poll interval.
pub fn poll_until_every(
    deadline: Instant,
    every: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// (state, pgrp, ppid) from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(char, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: the fields start after the last ')'
    let rest = &s[s.rfind(')')? + 1..];
    let mut it = rest.split_whitespace();
    let state = it.next()?.chars().next()?;
    let ppid = it.next()?.parse().ok()?;
    let pgrp = it.next()?.parse().ok()?;
    Some((state, pgrp, ppid))
}

/// Is the process alive? A zombie (state Z) or dead (X) process counts as dead.
pub fn process_alive(pid: u32) -> bool {
    match proc_stat(pid) {
        Some((state, _, _)) => state != 'Z' && state != 'X',
        None => false,
    }
}

fn is_our_binary(pid: u32) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let ours = Path::new(forklift_bin());
    let ours = ours.canonicalize().unwrap_or_else(|_| ours.to_path_buf());
    let exe = exe
        .to_string_lossy()
        .trim_end_matches(" (deleted)")
        .to_string();
    Path::new(&exe) == ours
}

/// Live (non-zombie) members of the process group.
pub fn group_members(pgid: i32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((state, pgrp, _)) = proc_stat(pid) {
            if pgrp == pgid && state != 'Z' && state != 'X' {
                out.push(pid);
            }
        }
    }
    out
}

/// No live (non-zombie) process left in the group.
pub fn group_empty(pgid: i32) -> bool {
    group_members(pgid).is_empty()
}

pub fn kill_pid(pid: u32, sig: i32) {
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}) failed: {}",
        io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The pid of the `x-forklift-worker` header.
    pub fn worker_pid(&self) -> u32 {
        let v = self
            .header("x-forklift-worker")
            .unwrap_or_else(|| panic!("response without x-forklift-worker header: {self:?}"));
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("x-forklift-worker header {v:?} is not a pid"))
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn find_crlf2(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("truncated chunk size"))?;
        let size_line = std::str::from_utf8(&data[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size_hex = size_line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| bad(format!("bad chunk size {size_hex:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Send one `Connection: close` request and read the whole response.
pub fn http_request<S: Read + Write>(
    mut stream: S,
    host: &str,
    path: &str,
) -> io::Result<Response> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: forklift-tests\r\n\r\n");
    stream.write_all(req.as_bytes())?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let head_end =
        find_crlf2(&raw).ok_or_else(|| bad(format!("no end of headers in {} bytes", raw.len())))?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| bad("non-UTF-8 headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let rest = &raw[head_end + 4..];
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = resp
        .header("transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false);
    resp.body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        if rest.len() < len {
            return Err(bad(format!(
                "body truncated: {} of {len} bytes",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

/// GET `path` from a TCP address with a read/write timeout.
pub fn http_get_timeout(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    http_request(stream, &addr.to_string(), path)
}

/// GET `path` with a 5 s timeout.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    http_get_timeout(addr, path, Duration::from_secs(5))
}

/// GET `path` over a unix socket.
pub fn http_get_unix(sock: &Path, path: &str, timeout: Duration) -> io::Result<Response> {
    let stream = UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    http_request(stream, "localhost", path)
}

/// GET from any listener.
pub fn http_get_listen(l: &Listen, path: &str, timeout: Duration) -> io::Result<Response> {
    match l {
        Listen::Tcp(a) => http_get_timeout(*a, path, timeout),
        Listen::Unix(p) => http_get_unix(p, path, timeout),
    }
}

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

fn check_greeting(r: &Response) -> Result<u32, String> {
    if r.status != 200 {
        return Err(format!("status {} (want 200): {r:?}", r.status));
    }
    if r.body != b"greeting!!!" {
        return Err(format!("body {:?} (want \"greeting!!!\")", r.body_str()));
    }
    let ct = r.header("content-type").unwrap_or("");
    if !ct.starts_with("text/plain") {
        return Err(format!("content-type {ct:?} (want text/plain)"));
    }
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

/// Is connecting to `addr` refused (nothing listening)?
pub fn connect_refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// A unique unix socket path in the temp dir (removed by the guard on drop).
pub struct TempSock(pub PathBuf);

impl TempSock {
    pub fn new(tag: &str) -> TempSock {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p = std::env::temp_dir().join(format!("fl-{tag}-{}-{nanos}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        TempSock(p)
    }
}

impl Drop for TempSock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The first stderr line starting with `forklift: error: `, if any.
pub fn error_line(s: &Server) -> Option<String> {
    s.stderr
        .snapshot()
        .into_iter()
        .find(|l| l.starts_with("forklift: error: "))
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

// ---------------------------------------------------------------------------
// Other programs under the same guard (binary upgrade, socket activation)
// ---------------------------------------------------------------------------

impl Server {
    /// Start `program <args>` (a copy of the forklift binary, say) like [`Server::start`]:
    /// its own process group, the default log filter, output captured.
    pub fn start_program(program: &Path, args: &[&str]) -> Server {
        let mut cmd = Command::new(program);
        cmd.args(args).env("RUST_LOG", DEFAULT_RUST_LOG);
        Self::start_command(cmd, args.iter().map(|s| s.to_string()).collect())
    }

    /// Start a prepared command (its own environment, a `pre_exec`...) under the guard: a new
    /// process group, stdin null, stdout and stderr captured. `label` is what the failure
    /// report prints as the arguments.
    pub fn start_command(mut cmd: Command, label: Vec<String>) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .process_group(0);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdout = Arc::new(Captured::default());
        let stderr = Arc::new(Captured::default());
        spawn_reader(child.stdout.take().unwrap(), stdout.clone());
        spawn_reader(child.stderr.take().unwrap(), stderr.clone());
        let pid = child.id();
        Server {
            child: Some(child),
            pid,
            pgid: pid as i32,
            args: label,
            stdout,
            stderr,
            started,
            status: None,
        }
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
