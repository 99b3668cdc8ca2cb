//! The guard of a server under test.
//!
//! [`Server::spawn`] starts a command as the leader of its own process group (recorded in
//! [`groups`]), with stdin null and stdout and stderr captured line by line
//! by reader threads. Dropping the guard kills the whole group, and any worker it announced
//! that left the group, pass or fail; when the thread is panicking it also prints the
//! server's output (or names the file that has it).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::groups;
use crate::hooks::{hook_field, parse_hook, parse_listen, parse_pid_list, Hook, Listen};
use crate::process::{group_empty, kill_pid, process_alive, runs_binary, signal};
use crate::time::{poll_until, MEASURE_POLL, POLL};

/// How long a server may take to print its `ready` line in [`Server::wait_ready`].
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often [`Server::wait_for_line_while_alive`] looks again.
const ALIVE_POLL: Duration = Duration::from_millis(2);

// ---------------------------------------------------------------------------
// Captured output
// ---------------------------------------------------------------------------

/// Lines read from one pipe by a reader thread, each with the time it was read.
#[derive(Default)]
pub struct Captured {
    lines: Mutex<Vec<(Instant, String)>>,
    eof: AtomicBool,
    /// Lines beyond this many are dropped.
    max_lines: Option<usize>,
}

impl Captured {
    fn lines(&self) -> std::sync::MutexGuard<'_, Vec<(Instant, String)>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Vec<String> {
        self.lines().iter().map(|(_, l)| l.clone()).collect()
    }

    /// The lines with the time each was read.
    pub fn timed(&self) -> Vec<(Instant, String)> {
        self.lines().clone()
    }

    pub fn eof(&self) -> bool {
        self.eof.load(Ordering::SeqCst)
    }

    pub fn text(&self) -> String {
        let mut s = self.snapshot().join("\n");
        s.push('\n');
        s
    }

    /// How many lines start with `prefix`.
    pub fn count_starting_with(&self, prefix: &str) -> usize {
        self.lines()
            .iter()
            .filter(|(_, l)| l.starts_with(prefix))
            .count()
    }

    /// How many lines contain `needle`.
    pub fn count_containing(&self, needle: &str) -> usize {
        self.lines()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    fn push(&self, at: Instant, line: String) {
        let mut lines = self.lines();
        if self.max_lines.is_none_or(|max| lines.len() < max) {
            lines.push((at, line));
        }
    }
}

/// Copies of the output lines in a file, stderr's marked.
type LogFile = Arc<Mutex<File>>;

fn spawn_reader<R: Read + Send + 'static>(
    pipe: R,
    sink: Arc<Captured>,
    log: Option<(LogFile, &'static str)>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {
                    let now = Instant::now();
                    while matches!(buf.last(), Some(b'\n') | Some(b'\r')) {
                        buf.pop();
                    }
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    if let Some((file, prefix)) = &log {
                        let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
                        let _ = writeln!(file, "{prefix}{line}");
                    }
                    sink.push(now, line);
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

// ---------------------------------------------------------------------------
// Starting
// ---------------------------------------------------------------------------

/// How [`Server::spawn`] labels and watches a server.
#[derive(Clone, Debug)]
#[must_use]
pub struct Launch {
    label: Vec<String>,
    binary: PathBuf,
    log: Option<PathBuf>,
    max_lines: Option<usize>,
}

impl Launch {
    /// A server whose processes run `binary` (on drop, a worker that left the process group
    /// is killed only if it still runs it, so a reused pid is spared), described by `label`
    /// in the failure report.
    pub fn new(binary: impl Into<PathBuf>, label: Vec<String>) -> Launch {
        Launch {
            label,
            binary: binary.into(),
            log: None,
            max_lines: None,
        }
    }

    /// Copies every output line to this file, stderr's prefixed with `stderr| `.
    pub fn log(mut self, path: impl Into<PathBuf>) -> Launch {
        self.log = Some(path.into());
        self
    }

    /// Keeps at most this many lines of each stream in memory (the log file gets them all).
    pub fn max_lines(mut self, n: usize) -> Launch {
        self.max_lines = Some(n);
        self
    }
}

/// `serve --listen 127.0.0.1:0 --workers N`, then `extra`: the arguments of a demo server on
/// a free loopback port.
pub fn serve_args<'a>(workers: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--workers", workers];
    args.extend_from_slice(extra);
    args
}

// ---------------------------------------------------------------------------
// The server guard
// ---------------------------------------------------------------------------

/// A server started by [`Server::spawn`]; see the [module](self) documentation.
pub struct Server {
    child: Option<Child>,
    pub pid: u32,
    pub pgid: i32,
    /// What the failure report prints as the arguments.
    pub label: Vec<String>,
    pub stdout: Arc<Captured>,
    pub stderr: Arc<Captured>,
    pub started: Instant,
    binary: PathBuf,
    log: Option<PathBuf>,
    status: Option<ExitStatus>,
}

impl Server {
    /// Starts `cmd` in a new process group with stdin null, `NO_COLOR=1`, and stdout and
    /// stderr captured; panics if it cannot start.
    pub fn spawn(mut cmd: Command, launch: Launch) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        let log = launch
            .log
            .as_ref()
            .and_then(|p| File::create(p).ok())
            .map(|f| Arc::new(Mutex::new(f)));
        let started = Instant::now();
        let mut child =
            groups::spawn(&mut cmd).unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let captured = || {
            Arc::new(Captured {
                max_lines: launch.max_lines,
                ..Captured::default()
            })
        };
        let (stdout, stderr) = (captured(), captured());
        let out_log = log.clone().map(|f| (f, ""));
        spawn_reader(child.stdout.take().unwrap(), stdout.clone(), out_log);
        let err_log = log.map(|f| (f, "stderr| "));
        spawn_reader(child.stderr.take().unwrap(), stderr.clone(), err_log);
        let pid = child.id();
        Server {
            child: Some(child),
            pid,
            pgid: pid as i32,
            label: launch.label,
            stdout,
            stderr,
            started,
            binary: launch.binary,
            log: launch.log,
            status: None,
        }
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

    /// The first line of `stream` from index `seen` on that satisfies `pred`, with its index
    /// and the time it was read; looks every `every` until the deadline or until `over` (read
    /// before the lines, so that a line pushed just before it is seen).
    fn scan(
        &self,
        stream: Stream,
        pred: impl Fn(&str) -> bool,
        deadline: Instant,
        every: Duration,
        over: impl Fn(&Captured) -> bool,
    ) -> Option<(usize, Instant, String)> {
        let cap = self.captured(stream);
        let mut seen = 0;
        loop {
            let over = over(cap);
            {
                let lines = cap.lines();
                for (i, (t, l)) in lines.iter().enumerate().skip(seen) {
                    if pred(l) {
                        return Some((i, *t, l.clone()));
                    }
                }
                seen = lines.len();
            }
            if over || Instant::now() >= deadline {
                return None;
            }
            thread::sleep(every);
        }
    }

    /// Wait until a line of `stream` satisfies `pred`; `None` on deadline or
    /// when the stream is closed without such a line.
    pub fn wait_for_line_in(
        &self,
        stream: Stream,
        pred: impl Fn(&str) -> bool,
        deadline: Instant,
    ) -> Option<(usize, String)> {
        self.scan(stream, pred, deadline, POLL, Captured::eof)
            .map(|(i, _, l)| (i, l))
    }

    /// Wait for a stdout line satisfying `pred`.
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool, deadline: Instant) -> Option<String> {
        self.wait_for_line_in(Stream::Stdout, pred, deadline)
            .map(|(_, l)| l)
    }

    /// Waits up to `timeout` for a stdout line satisfying `pred`, looking every 2 ms, and
    /// gives up once the master has exited (after a last look at the lines read by then).
    /// Returns the line with the time it was read.
    pub fn wait_for_line_while_alive(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<(Instant, String)> {
        let pid = self.pid;
        self.scan(
            Stream::Stdout,
            pred,
            Instant::now() + timeout,
            ALIVE_POLL,
            |_| !process_alive(pid),
        )
        .map(|(_, t, l)| (t, l))
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
        let pids = hook_field(&line, "pids")
            .unwrap_or_else(|| panic!("ready line without pids=: {line:?}"));
        parse_pid_list(&pids)
    }

    /// The pids of the `ready` line (which must already have been printed).
    pub fn pids_from_ready(&self) -> Vec<u32> {
        let line = self
            .stdout_lines()
            .into_iter()
            .find(|l| l.starts_with("ready "))
            .expect("no ready line yet");
        parse_pid_list(&hook_field(&line, "pids").expect("ready line without pids="))
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

    /// Sends `sig` to the master; panics if kill(2) fails.
    pub fn send_signal(&self, sig: i32) {
        kill_pid(self.pid, sig);
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

    /// Graceful stop: TERM to the master (unless it has exited), up to `grace` for it to
    /// exit, then [`kill_all`](Self::kill_all). The exit status if the master exited by
    /// itself.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.try_exit().is_none() {
            signal(self.pid, libc::SIGTERM);
        }
        let st = self.try_wait_exit(Instant::now() + grace);
        self.kill_all();
        st
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
            // SAFETY: killpg(2) on the group this server leads.
            unsafe {
                libc::killpg(self.pgid, libc::SIGKILL);
            }
        }
        // Workers that might have left the group (setsid/setpgid): kill the ones we
        // know of, if they are still our binary.
        for pid in self.spawned_pids() {
            if process_alive(pid) && runs_binary(pid, &self.binary) {
                signal(pid, libc::SIGKILL);
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
        groups::forget(self.pgid);
    }
}

/// The first stderr line starting with `forklift: error: `, if any.
pub fn error_line(s: &Server) -> Option<String> {
    s.stderr
        .snapshot()
        .into_iter()
        .find(|l| l.starts_with("forklift: error: "))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_all();
        // let the reader threads drain the pipes
        let _ = self.wait_output_closed(Instant::now() + Duration::from_secs(2));
        if thread::panicking() {
            eprintln!(
                "===== {} {:?} (pid {}) exit status: {:?}",
                self.binary.display(),
                self.label,
                self.pid,
                self.status
            );
            if let Some(log) = &self.log {
                eprintln!("===== its output is in {}", log.display());
                return;
            }
            eprintln!("===== stdout:");
            for l in self.stdout.snapshot() {
                eprintln!("  | {l}");
            }
            eprintln!("===== stderr:");
            for l in self.stderr.snapshot() {
                eprintln!("  | {l}");
            }
            eprintln!("===== end of output");
        }
    }
}
