//! `forklift-chaos`: does forklift keep serving, and lose nothing, under faults?
//!
//! Run it through `bench/chaos`, which builds everything first. Each scenario starts
//! `target/release/forklift serve` on 127.0.0.1 in its own process group, drives it with the
//! load generator below (threads with blocking std `TcpStream` clients, keep-alive or one
//! connection per request), injects the fault, measures, and stops everything. Every
//! scenario is bounded in time and requests. The report goes to
//! `bench/results/chaos-latest.md` and to stdout.
//!
//! Scenarios (the numbers of issue 5):
//! 1. a worker SIGKILLed every 500 ms under load;
//! 2. the master SIGKILLed under load;
//! 3. crash loops (a handler that aborts the worker; a handler that panics);
//! 4. slow clients (idle connections and slowloris);
//! 5. oversized and malformed requests, and the fuzz targets;
//! 6. exhaustion (EMFILE under `ulimit -n 256`; 10,000 keep-alive connections);
//! 7. signal storms (100 HUPs in a second; TERM or USR2 during a reload).

#[path = "machine.rs"]
mod machine;
use machine::{cpu_model, loadavg, read_trim};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;

/// Fault-injection scenarios against forklift on 127.0.0.1, with figures.
#[derive(Debug, Parser)]
#[command(name = "forklift-chaos")]
struct Args {
    /// Shorter runs (about 2 minutes in all): fewer kills, shorter loads, 20 s of fuzzing
    #[arg(long)]
    quick: bool,

    /// Scenarios to run, comma-separated numbers from 1 to 7 [default: all]
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    scenarios: Vec<u8>,

    /// The forklift binary [default: target/release/forklift of this repository]
    #[arg(long, value_name = "PATH")]
    forklift: Option<PathBuf>,

    /// Directory for chaos-latest.md [default: bench/results]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// Seconds of fuzzing in scenario 5 [default: 20 quick, 60 full]
    #[arg(long, value_name = "SECS")]
    fuzz_seconds: Option<f64>,

    /// Fuzzing engine: libfuzzer (cargo fuzz on nightly, built by bench/chaos), stable (the
    /// fuzz crate's `smoke` runner), auto (libfuzzer if its targets are built)
    #[arg(long, default_value = "auto", value_name = "ENGINE")]
    fuzz_engine: String,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = ctrlc::set_handler(|| {
        eprintln!("\nforklift-chaos: interrupted; killing every server");
        kill_all_groups();
        std::process::exit(130);
    }) {
        eprintln!("forklift-chaos: warning: cannot handle Ctrl-C: {e}");
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf();
    let bin = args
        .forklift
        .clone()
        .unwrap_or_else(|| repo.join("target/release/forklift"));
    if !bin.is_file() {
        eprintln!(
            "forklift-chaos: {} not found: build it with `cargo build --release -p forklift-cli` \
             (bench/chaos does)",
            bin.display()
        );
        std::process::exit(2);
    }
    let logs = repo.join("target/chaos-logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).expect("create target/chaos-logs");
    let nofile = raise_nofile(20_000);
    let scenarios: Vec<u8> = if args.scenarios.is_empty() {
        (1..=7).collect()
    } else {
        args.scenarios.clone()
    };
    let ctx = Ctx {
        bin,
        repo: repo.clone(),
        logs,
        quick: args.quick,
        fuzz_seconds: args
            .fuzz_seconds
            .unwrap_or(if args.quick { 20.0 } else { 60.0 }),
        fuzz_engine: args.fuzz_engine.clone(),
        nofile,
    };
    let started = Instant::now();
    let load_before = loadavg();
    let mut sections = Vec::new();
    for n in &scenarios {
        eprintln!("forklift-chaos: scenario {n} ...");
        let t = Instant::now();
        let section = match n {
            1 => s1_worker_kill(&ctx),
            2 => s2_master_kill(&ctx),
            3 => s3_crash_loops(&ctx),
            4 => s4_slow_clients(&ctx),
            5 => s5_malformed(&ctx),
            6 => s6_exhaustion(&ctx),
            7 => s7_signal_storms(&ctx),
            other => {
                eprintln!("forklift-chaos: no scenario {other} (1 to 7)");
                continue;
            }
        };
        let mut section = section;
        section.seconds = t.elapsed().as_secs_f64();
        eprintln!(
            "forklift-chaos: scenario {n} done in {:.1} s: {}",
            section.seconds,
            if section.failed_checks() == 0 {
                "all checks pass".to_string()
            } else {
                format!("{} check(s) FAIL", section.failed_checks())
            }
        );
        sections.push(section);
        kill_all_groups();
    }
    let load_after = loadavg();
    let md = render(
        &ctx,
        &sections,
        started.elapsed(),
        &load_before,
        &load_after,
    );
    let out = args.out.unwrap_or_else(|| repo.join("bench/results"));
    let _ = std::fs::create_dir_all(&out);
    let file = out.join("chaos-latest.md");
    match std::fs::write(&file, &md) {
        Ok(()) => eprintln!("forklift-chaos: wrote {}", file.display()),
        Err(e) => eprintln!("forklift-chaos: cannot write {}: {e}", file.display()),
    }
    println!("{md}");
    let failed: usize = sections.iter().map(Section::failed_checks).sum();
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

struct Ctx {
    bin: PathBuf,
    repo: PathBuf,
    logs: PathBuf,
    quick: bool,
    fuzz_seconds: f64,
    fuzz_engine: String,
    /// This process's RLIMIT_NOFILE soft limit after raising it.
    nofile: u64,
}

impl Ctx {
    fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

// =========================================================================================
// The report
// =========================================================================================

#[derive(Default)]
struct Table {
    head: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[&str]) -> Table {
        Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    fn render(&self, out: &mut String) {
        let esc = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let _ = writeln!(
            out,
            "| {} |",
            self.head
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let _ = writeln!(
            out,
            "|{}|",
            self.head
                .iter()
                .map(|_| "---")
                .collect::<Vec<_>>()
                .join("|")
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} |",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            );
        }
    }
}

struct Check {
    what: String,
    pass: bool,
    detail: String,
}

#[derive(Default)]
struct Section {
    title: String,
    intro: Vec<String>,
    tables: Vec<(String, Table)>,
    checks: Vec<Check>,
    notes: Vec<String>,
    commands: Vec<String>,
    seconds: f64,
}

impl Section {
    fn new(title: &str) -> Section {
        Section {
            title: title.to_string(),
            ..Default::default()
        }
    }
    fn check(&mut self, what: impl Into<String>, pass: bool, detail: impl Into<String>) {
        let c = Check {
            what: what.into(),
            pass,
            detail: detail.into(),
        };
        eprintln!(
            "  [{}] {}: {}",
            if c.pass { "pass" } else { "FAIL" },
            c.what,
            c.detail
        );
        self.checks.push(c);
    }
    fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }
    fn failed_checks(&self) -> usize {
        self.checks.iter().filter(|c| !c.pass).count()
    }
    fn command(&mut self, s: &Server) {
        let c = s.command_line();
        if !self.commands.contains(&c) {
            self.commands.push(c);
        }
    }
}

fn render(
    ctx: &Ctx,
    sections: &[Section],
    took: Duration,
    load_before: &str,
    load_after: &str,
) -> String {
    let mut out = String::new();
    let command = std::env::var("FORKLIFT_CHAOS_COMMAND").unwrap_or_else(|_| {
        std::env::args()
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    });
    let total: usize = sections.iter().map(|s| s.checks.len()).sum();
    let failed: usize = sections.iter().map(Section::failed_checks).sum();
    let _ = writeln!(out, "# forklift chaos run\n");
    let _ = writeln!(out, "- command: `{command}`");
    let _ = writeln!(
        out,
        "- mode: {}; took {:.0} s; {} checks, {} failed",
        if ctx.quick { "quick" } else { "full" },
        took.as_secs_f64(),
        total,
        failed
    );
    let _ = writeln!(out, "- date: {}", utc_now());
    let _ = writeln!(
        out,
        "- forklift: {} ({})",
        ctx.bin.display(),
        git_describe(&ctx.repo)
    );
    let _ = writeln!(
        out,
        "- machine: {} CPUs ({}), kernel {}, load average before {load_before}, after {load_after}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        read_trim("/proc/sys/kernel/osrelease")
    );
    let _ = writeln!(
        out,
        "- open-file limit of this harness: {} (raised with setrlimit); `ulimit -n` of a shell it starts: {}",
        ctx.nofile,
        shell_ulimit_n()
    );
    let _ = writeln!(
        out,
        "- net.ipv4.tcp_migrate_req = {}, net.core.somaxconn = {}",
        read_trim("/proc/sys/net/ipv4/tcp_migrate_req"),
        read_trim("/proc/sys/net/core/somaxconn")
    );
    let _ = writeln!(
        out,
        "- everything runs on 127.0.0.1; server logs go to target/chaos-logs/\n"
    );
    let _ = writeln!(out, "## Summary\n");
    let mut t = Table::new(&["scenario", "checks", "failed", "seconds"]);
    for s in sections {
        t.row(vec![
            s.title.clone(),
            s.checks.len().to_string(),
            if s.failed_checks() == 0 {
                "0".into()
            } else {
                format!("**{}**", s.failed_checks())
            },
            format!("{:.0}", s.seconds),
        ]);
    }
    t.render(&mut out);
    for s in sections {
        let _ = writeln!(out, "\n## {}\n", s.title);
        for l in &s.intro {
            let _ = writeln!(out, "{l}\n");
        }
        for (caption, table) in &s.tables {
            if !caption.is_empty() {
                let _ = writeln!(out, "{caption}\n");
            }
            table.render(&mut out);
            out.push('\n');
        }
        if !s.checks.is_empty() {
            let mut t = Table::new(&["check", "result", "measured"]);
            for c in &s.checks {
                t.row(vec![
                    c.what.clone(),
                    if c.pass {
                        "pass".into()
                    } else {
                        "**FAIL**".into()
                    },
                    c.detail.clone(),
                ]);
            }
            t.render(&mut out);
            out.push('\n');
        }
        for n in &s.notes {
            let _ = writeln!(out, "- {n}");
        }
        if !s.commands.is_empty() {
            let _ = writeln!(out, "\nServer command lines:\n");
            for c in &s.commands {
                let _ = writeln!(out, "    {c}");
            }
        }
    }
    out
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn command_output(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn utc_now() -> String {
    command_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]))
}

fn git_describe(repo: &Path) -> String {
    let head = command_output(
        Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(repo),
    );
    let dirty = !command_output(
        Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .current_dir(repo),
    )
    .is_empty();
    format!(
        "commit {}{}",
        if head.is_empty() { "?" } else { &head },
        if dirty { ", with local changes" } else { "" }
    )
}

fn shell_ulimit_n() -> String {
    command_output(Command::new("sh").args(["-c", "ulimit -n"]))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn ms_opt(d: Option<Duration>) -> String {
    d.map_or("–".into(), ms)
}

fn pct(part: u64, total: u64) -> String {
    if total == 0 {
        "–".into()
    } else {
        format!("{:.3} %", part as f64 * 100.0 / total as f64)
    }
}

/// (median, max) of durations.
fn med_max(v: &[Duration]) -> (Option<Duration>, Option<Duration>) {
    if v.is_empty() {
        return (None, None);
    }
    let mut s = v.to_vec();
    s.sort();
    (Some(s[s.len() / 2]), Some(s[s.len() - 1]))
}

// =========================================================================================
// Processes
// =========================================================================================

static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn kill_all_groups() {
    let groups = std::mem::take(&mut *GROUPS.lock().unwrap_or_else(|e| e.into_inner()));
    for g in groups {
        // SAFETY: killpg(2) on a group this harness created.
        unsafe { libc::killpg(g, libc::SIGKILL) };
    }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    state: char,
    ppid: u32,
    pgrp: i32,
    /// utime + stime, in clock ticks.
    ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

fn cpu_secs(pid: u32) -> Option<f64> {
    stat(pid).map(|s| s.ticks as f64 / clk_tck())
}

/// A field of /proc/PID/status, as a number (VmRSS in kB, voluntary_ctxt_switches...).
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS")
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Live (not zombie) children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.ppid == pid && s.state != 'Z' && s.state != 'X'))
        .collect();
    v.sort();
    v
}

/// Live (not zombie) members of a process group.
fn group_members(pgid: i32) -> Vec<u32> {
    let mut v: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|s| s.pgrp == pgid && s.state != 'Z' && s.state != 'X'))
        .collect();
    v.sort();
    v
}

fn max_open_files(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn send(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2); the pids are children of servers this harness started.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

/// Raises this process's open-file limit to `want` (the hard limit too, as root); returns
/// the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let mut new = lim;
        if new.rlim_max < want {
            new.rlim_max = want;
        }
        new.rlim_cur = want.min(new.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &new) != 0 {
            new = lim;
            new.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &new);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

fn poll_until(deadline: Instant, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
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

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        thread::sleep(t - now);
    }
}

// =========================================================================================
// A forklift server under test
// =========================================================================================

type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

struct Server {
    child: Child,
    pid: u32,
    pgid: i32,
    args: Vec<String>,
    nofile: Option<u64>,
    out: Lines,
    err: Lines,
    status: Option<ExitStatus>,
}

#[derive(Default)]
struct Opts {
    /// RLIMIT_NOFILE (soft and hard) for the server, as `ulimit -n`.
    nofile: Option<u64>,
    rust_log: Option<&'static str>,
}

impl Server {
    fn start(ctx: &Ctx, name: &str, args: &[&str], opts: Opts) -> Server {
        let log = ctx.logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)
            .ok()
            .map(|f| Arc::new(Mutex::new(f)));
        let mut cmd = Command::new(&ctx.bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", opts.rust_log.unwrap_or("info"))
            .process_group(0);
        let nofile = opts.nofile;
        // SAFETY: only async-signal-safe calls (prctl, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if let Some(n) = nofile {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", ctx.bin.display()));
        let pid = child.id();
        groups.push(pid as i32);
        drop(groups);
        let out: Lines = Arc::default();
        let err: Lines = Arc::default();
        reader(child.stdout.take().unwrap(), out.clone(), file.clone(), "");
        reader(child.stderr.take().unwrap(), err.clone(), file, "stderr| ");
        Server {
            child,
            pid,
            pgid: pid as i32,
            args: args.iter().map(|s| s.to_string()).collect(),
            nofile,
            out,
            err,
            status: None,
        }
    }

    fn command_line(&self) -> String {
        let mut s = String::new();
        if let Some(n) = self.nofile {
            let _ = write!(s, "prlimit --nofile={n}:{n} -- ");
        }
        s.push_str("target/release/forklift");
        for a in &self.args {
            s.push(' ');
            s.push_str(&shell_quote(a));
        }
        s
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.out.lock().unwrap().clone()
    }

    fn err_lines(&self) -> Vec<(Instant, String)> {
        self.err.lock().unwrap().clone()
    }

    fn wait_line(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self.out.lock().unwrap();
                for (t, l) in lines.iter().skip(seen) {
                    if pred(l) {
                        return Some((*t, l.clone()));
                    }
                }
                seen = lines.len();
            }
            if Instant::now() >= deadline || !alive(self.pid) {
                // one more look: the line may have come with the exit
                let lines = self.out.lock().unwrap();
                return lines.iter().skip(seen).find(|(_, l)| pred(l)).cloned();
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits for `ready pids=...`; returns the pids.
    fn ready(&self) -> Vec<u32> {
        match self.wait_line(|l| l.starts_with("ready "), Duration::from_secs(20)) {
            Some((_, l)) => pids_field(&l, "pids"),
            None => {
                let err: Vec<String> = self.err_lines().into_iter().map(|(_, l)| l).collect();
                panic!(
                    "forklift {:?} did not get ready; stderr tail:\n{}",
                    self.args,
                    err[err.len().saturating_sub(20)..].join("\n")
                )
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        self.lines()
            .iter()
            .find_map(|(_, l)| {
                l.strip_prefix("listening on http://")
                    .and_then(|a| a.trim().parse().ok())
            })
            .expect("a `listening on http://` line")
    }

    /// worker pid -> slot id, from the `spawned` lines.
    fn slots(&self) -> HashMap<u32, usize> {
        self.lines()
            .iter()
            .filter(|(_, l)| l.starts_with("spawned "))
            .filter_map(|(_, l)| {
                Some((
                    field(l, "pid")?.parse().ok()?,
                    field(l, "worker")?.parse().ok()?,
                ))
            })
            .collect()
    }

    /// The live worker of each slot (children of the master).
    fn live_by_slot(&self) -> BTreeMap<usize, u32> {
        let slots = self.slots();
        let mut out = BTreeMap::new();
        for pid in children(self.pid) {
            if let Some(&s) = slots.get(&pid) {
                out.insert(s, pid);
            }
        }
        out
    }

    fn count_lines(&self, prefix: &str) -> usize {
        self.out
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.starts_with(prefix))
            .count()
    }

    fn count_err(&self, needle: &str) -> usize {
        self.err
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.status = Some(st);
            }
        }
        self.status
    }

    /// Waits until the master has exited. Reads its CPU time while it is a zombie (not yet
    /// reaped, so /proc still has it), then reaps it.
    fn wait_exit_with_cpu(&mut self, timeout: Duration) -> Option<(ExitStatus, f64)> {
        let deadline = Instant::now() + timeout;
        let mut last_cpu = cpu_secs(self.pid).unwrap_or(0.0);
        loop {
            match stat(self.pid) {
                Some(s) if s.state == 'Z' || s.state == 'X' => {
                    last_cpu = s.ticks as f64 / clk_tck();
                    break;
                }
                Some(s) => last_cpu = s.ticks as f64 / clk_tck(),
                None => break,
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(1));
        }
        let st = loop {
            if let Some(st) = self.try_exit() {
                break st;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(1));
        };
        Some((st, last_cpu))
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Graceful stop (TERM to the master), then KILL to the group. Returns the exit status
    /// if the master exited by itself.
    fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.try_exit().is_none() {
            send(self.pid, libc::SIGTERM);
        }
        let st = self.wait_exit(grace);
        self.kill();
        st
    }

    fn kill(&mut self) {
        // SAFETY: killpg(2) on the group this server leads.
        unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        // Workers that left the group (none should): kill the ones we know of.
        for pid in self.slots().keys() {
            if stat(*pid).is_some_and(|s| s.state != 'Z' && s.ppid == 1) {
                send(*pid, libc::SIGKILL);
            }
        }
        GROUPS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&g| g != self.pgid);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn reader<R: Read + Send + 'static>(
    pipe: R,
    sink: Lines,
    file: Option<Arc<Mutex<std::fs::File>>>,
    prefix: &'static str,
) {
    thread::spawn(move || {
        let mut r = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let now = Instant::now();
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if let Some(f) = &file {
                        let _ = writeln!(f.lock().unwrap(), "{prefix}{line}");
                    }
                    let mut v = sink.lock().unwrap();
                    if v.len() < 200_000 {
                        v.push((now, line));
                    }
                }
            }
        }
    });
}

/// `key=value` (value up to the next space) of a lifecycle line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn pids_field(line: &str, key: &str) -> Vec<u32> {
    field(line, key)
        .unwrap_or("")
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

// =========================================================================================
// HTTP client and load generator
// =========================================================================================

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Fail {
    Refused,
    ConnectTimeout,
    Reset,
    /// End of file before the whole response.
    Closed,
    Timeout,
    Non2xx,
    Other,
}

impl Fail {
    fn name(self) -> &'static str {
        match self {
            Fail::Refused => "refused",
            Fail::ConnectTimeout => "connect timeout",
            Fail::Reset => "reset",
            Fail::Closed => "incomplete",
            Fail::Timeout => "timeout",
            Fail::Non2xx => "non-2xx",
            Fail::Other => "other",
        }
    }
}

fn classify(e: &io::Error) -> Fail {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Fail::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Fail::Reset,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Fail::Timeout,
        io::ErrorKind::UnexpectedEof => Fail::Closed,
        _ => Fail::Other,
    }
}

struct Resp {
    status: u16,
    pid: Option<u32>,
    close: bool,
}

/// A request failed: how, and whether any byte of a response had come.
struct ReqErr {
    fail: Fail,
    got_bytes: bool,
}

fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Fail> {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
            Ok(s)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(Fail::ConnectTimeout)
        }
        Err(e) => Err(classify(&e)),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response (headers, then a Content-Length body).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Resp, ReqErr> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let err = |fail, got: &Vec<u8>| ReqErr {
        fail,
        got_bytes: !got.is_empty(),
    };
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(err(Fail::Closed, buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(classify(&e), buf)),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or(ReqErr {
            fail: Fail::Other,
            got_bytes: true,
        })?;
    let (mut len, mut pid, mut close) = (0usize, None, false);
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => len = v.parse().unwrap_or(0),
                "x-forklift-worker" => pid = v.parse().ok(),
                "connection" => close = v.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let body_start = head_end + 4;
    while buf.len() < body_start + len {
        match s.read(&mut chunk) {
            Ok(0) => return Err(err(Fail::Closed, buf)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(classify(&e), buf)),
        }
    }
    Ok(Resp { status, pid, close })
}

fn get_request(path: &str, close: bool) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: forklift-chaos\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// One `GET path` on a new connection.
fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Resp, Fail> {
    let mut s = connect(addr, timeout)?;
    s.write_all(&get_request(path, true))
        .map_err(|e| classify(&e))?;
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf).map_err(|e| e.fail)
}

/// Whether the server has not closed (or reset) an idle kept-alive connection: one
/// non-blocking peek, as HTTP clients check a pooled connection before reuse.
fn still_open(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: recv(2) into a valid one-byte buffer on a socket we own.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    KeepAlive,
    PerRequest,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::PerRequest => "connection per request",
        }
    }
}

#[derive(Clone)]
struct LoadSpec {
    addr: SocketAddr,
    mode: Mode,
    threads: usize,
    path: String,
    /// Wall-clock end of the load.
    duration: Duration,
    /// Bound on the number of requests.
    max_requests: u64,
    timeout: Duration,
    /// Each thread waits this long between requests (None: back to back).
    pace: Option<Duration>,
}

impl LoadSpec {
    fn new(addr: SocketAddr, mode: Mode, threads: usize, duration: Duration) -> LoadSpec {
        LoadSpec {
            addr,
            mode,
            threads,
            path: "/".into(),
            duration,
            max_requests: 3_000_000,
            timeout: Duration::from_secs(5),
            pace: None,
        }
    }
}

#[derive(Clone, Debug)]
struct FailRec {
    at: Instant,
    fail: Fail,
    /// The request went out on a kept-alive connection and not one byte came back (the
    /// case HTTP clients retry).
    stale: bool,
    /// The worker that served the connection's previous request, if any.
    conn_pid: Option<u32>,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    fails: Vec<FailRec>,
    lat_us: Vec<u32>,
    /// Responses per worker pid.
    by_pid: HashMap<u32, u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Tally {
    fn total(&self) -> u64 {
        self.ok + self.fails.len() as u64
    }
    fn failed(&self) -> u64 {
        self.fails.len() as u64
    }
    fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.fails.extend(o.fails);
        self.lat_us.extend(o.lat_us);
        for (k, v) in o.by_pid {
            *self.by_pid.entry(k).or_default() += v;
        }
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = match (self.last, o.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    fn count(&self, f: Fail) -> u64 {
        self.fails.iter().filter(|r| r.fail == f).count() as u64
    }
    /// "3 reset (2 stale), 1 incomplete" or "none".
    fn breakdown(&self) -> String {
        if self.fails.is_empty() {
            return "none".into();
        }
        let mut m: BTreeMap<Fail, (u64, u64)> = BTreeMap::new();
        for r in &self.fails {
            let e = m.entry(r.fail).or_default();
            e.0 += 1;
            if r.stale {
                e.1 += 1;
            }
        }
        m.iter()
            .map(|(f, (n, stale))| {
                if *stale > 0 {
                    format!("{n} {} ({stale} of them sent on a reused keep-alive connection, no response byte back)", f.name())
                } else {
                    format!("{n} {}", f.name())
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
    fn percentile(&self, q: f64) -> Option<Duration> {
        if self.lat_us.is_empty() {
            return None;
        }
        let mut v = self.lat_us.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        Some(Duration::from_micros(u64::from(v[i])))
    }
}

/// When each worker pid first answered a request (any load of a scenario).
type FirstSeen = Arc<Mutex<HashMap<u32, Instant>>>;

struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<thread::JoinHandle<Tally>>,
}

impl Load {
    fn start(spec: &LoadSpec, first_seen: &FirstSeen) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + spec.duration;
        let handles = (0..spec.threads)
            .map(|_| {
                let (spec, stop, sent, seen) =
                    (spec.clone(), stop.clone(), sent.clone(), first_seen.clone());
                thread::spawn(move || load_thread(&spec, until, &stop, &sent, &seen))
            })
            .collect();
        Load { stop, handles }
    }

    /// Stops the load now and returns its figures.
    fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Waits until the load ends by itself (its duration or request bound).
    fn join(self) -> Tally {
        let mut t = Tally::default();
        for h in self.handles {
            if let Ok(x) = h.join() {
                t.merge(x);
            }
        }
        t
    }
}

fn load_thread(
    spec: &LoadSpec,
    until: Instant,
    stop: &AtomicBool,
    sent: &AtomicU64,
    first_seen: &FirstSeen,
) -> Tally {
    let mut t = Tally::default();
    let mut known: BTreeSet<u32> = BTreeSet::new();
    let mut conn: Option<(TcpStream, Option<u32>)> = None;
    let keep = spec.mode == Mode::KeepAlive;
    let req = get_request(&spec.path, !keep);
    let mut buf = Vec::with_capacity(4096);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        if sent.fetch_add(1, Ordering::Relaxed) >= spec.max_requests {
            break;
        }
        if let Some(p) = spec.pace {
            sleep_until(next);
            next += p;
        }
        let start = Instant::now();
        // Like an HTTP client's connection pool: a kept-alive connection the server has
        // closed meanwhile (a retiring worker closes its idle connections) is not reused.
        let pooled = conn.take().filter(|(s, _)| still_open(s));
        let (mut s, conn_pid, reused) = match pooled {
            Some((s, pid)) => (s, pid, true),
            None => match connect(spec.addr, spec.timeout) {
                Ok(s) => (s, None, false),
                Err(fail) => {
                    t.fails.push(FailRec {
                        at: Instant::now(),
                        fail,
                        stale: false,
                        conn_pid: None,
                    });
                    if fail == Fail::Refused {
                        thread::sleep(Duration::from_millis(1));
                    }
                    continue;
                }
            },
        };
        let result = match s.write_all(&req) {
            Ok(()) => read_response(&mut s, &mut buf),
            Err(e) => Err(ReqErr {
                fail: classify(&e),
                got_bytes: false,
            }),
        };
        let now = Instant::now();
        t.first.get_or_insert(start);
        t.last = Some(now);
        match result {
            Ok(r) => {
                if let Some(pid) = r.pid {
                    *t.by_pid.entry(pid).or_default() += 1;
                    if known.insert(pid) {
                        first_seen.lock().unwrap().entry(pid).or_insert(now);
                    }
                }
                if (200..300).contains(&r.status) {
                    t.ok += 1;
                    t.lat_us
                        .push((now - start).as_micros().min(u32::MAX as u128) as u32);
                } else {
                    t.fails.push(FailRec {
                        at: now,
                        fail: Fail::Non2xx,
                        stale: false,
                        conn_pid: r.pid,
                    });
                }
                if keep && !r.close {
                    conn = Some((s, r.pid));
                }
            }
            Err(e) => t.fails.push(FailRec {
                at: now,
                fail: e.fail,
                stale: reused && !e.got_bytes,
                conn_pid,
            }),
        }
    }
    t
}

// =========================================================================================
// Scenario 1: a worker SIGKILLed every 500 ms
// =========================================================================================

fn s1_worker_kill(ctx: &Ctx) -> Section {
    let mut sec = Section::new("1. Worker SIGKILLed every 500 ms under load");
    let kill_for = ctx.pick(Duration::from_secs(5), Duration::from_secs(10));
    sec.intro.push(format!(
        "2 workers; a SIGKILL every 500 ms for {} s to the worker of slot 0, 1, 0, 1... (a slot \
         whose replacement is still in its respawn backoff is skipped). Load: 32 keep-alive \
         connections, or 16 threads opening a connection per request, plus a probe opening a \
         connection every 5 ms; client timeout 5 s. `--recover-threshold 1000`, so that the \
         crash-loop guard (scenario 3) does not stop the server. **Recovery** = time from a \
         kill until the replacement worker (the `recovered ... new_pid=` line) answers a \
         request; **respawn** = time until its `spawned` line. A failure is **attributed** to \
         a kill if it happens within 1 s after one (6 s for timeouts); in keep-alive mode it \
         must also be on a connection last served by a killed worker.",
        kill_for.as_secs()
    ));
    let mut t = Table::new(&[
        "sockets",
        "load",
        "requests",
        "failed",
        "failed / total",
        "failures by kind",
        "kills (skipped)",
        "failed per kill",
        "not attributed",
        "recovery median / max",
        "kills recovered > 1 s",
        "respawn median / max",
        "final workers",
    ]);
    for reuse in [false, true] {
        for mode in [Mode::KeepAlive, Mode::PerRequest] {
            let sockets = if reuse {
                "SO_REUSEPORT per worker"
            } else {
                "shared"
            };
            let name = format!(
                "s1-{}-{}",
                if reuse { "reuseport" } else { "shared" },
                if mode == Mode::KeepAlive {
                    "keepalive"
                } else {
                    "conn"
                }
            );
            let mut args = vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--recover-threshold",
                "1000",
            ];
            if reuse {
                args.push("--reuse-port");
            }
            let mut server = Server::start(ctx, &name, &args, Opts::default());
            sec.command(&server);
            server.ready();
            let addr = server.addr();
            let seen: FirstSeen = Arc::default();
            let total_time = kill_for + Duration::from_secs(4);
            let threads = if mode == Mode::KeepAlive { 32 } else { 16 };
            let load = Load::start(&LoadSpec::new(addr, mode, threads, total_time), &seen);
            let mut probe_spec = LoadSpec::new(addr, Mode::PerRequest, 1, total_time);
            probe_spec.pace = Some(Duration::from_millis(5));
            let probe = Load::start(&probe_spec, &seen);
            thread::sleep(Duration::from_millis(500));
            let t0 = Instant::now();
            let mut kills: Vec<(Instant, u32, usize)> = Vec::new();
            let mut skipped = 0;
            let n_kills = (kill_for.as_millis() / 500) as usize;
            for i in 0..n_kills {
                sleep_until(t0 + Duration::from_millis(500 * i as u64));
                let slot = i % 2;
                match server.live_by_slot().get(&slot) {
                    Some(&pid) => {
                        send(pid, libc::SIGKILL);
                        kills.push((Instant::now(), pid, slot));
                    }
                    None => {
                        skipped += 1;
                        if std::env::var_os("CHAOS_DEBUG").is_some() {
                            eprintln!(
                                "  kill {i}: slot {slot} has no live worker: children {:?}, slots {:?}",
                                children(server.pid),
                                server.slots()
                            );
                        }
                    }
                }
            }
            // Let the last replacement come up (its backoff may be long), then stop the load.
            let end = t0 + kill_for + Duration::from_secs(3);
            poll_until(end, Duration::from_millis(20), || {
                server.live_by_slot().len() == 2
                    && kills.last().map_or(true, |(_, pid, _)| {
                        replacement_of(&server, *pid)
                            .is_some_and(|p| seen.lock().unwrap().contains_key(&p))
                    })
            });
            let mut tally = load.finish();
            let probe_tally = probe.finish();
            tally.merge(probe_tally);
            let final_workers = server.live_by_slot().len();
            // Recovery per kill.
            let lines = server.lines();
            let seen = seen.lock().unwrap().clone();
            let mut recov = Vec::new();
            let mut respawn = Vec::new();
            let mut not_recovered = 0;
            let mut over_1s = 0;
            for (at, pid, _) in &kills {
                match replacement_of(&server, *pid) {
                    Some(new) => {
                        if let Some((t, _)) = lines.iter().find(|(_, l)| {
                            l.starts_with("spawned ") && field(l, "pid") == Some(&new.to_string())
                        }) {
                            respawn.push(t.saturating_duration_since(*at));
                        }
                        match seen.get(&new) {
                            Some(t) => {
                                let d = t.saturating_duration_since(*at);
                                if d > Duration::from_secs(1) {
                                    over_1s += 1;
                                }
                                recov.push(d);
                            }
                            None => not_recovered += 1,
                        }
                    }
                    None => not_recovered += 1,
                }
            }
            // Attribution of failures.
            let killed: BTreeSet<u32> = kills.iter().map(|k| k.1).collect();
            let unattributed: Vec<&FailRec> = tally
                .fails
                .iter()
                .filter(|f| {
                    let window = if f.fail == Fail::Timeout {
                        Duration::from_secs(6)
                    } else {
                        Duration::from_secs(1)
                    };
                    let in_window = kills.iter().any(|(at, _, _)| {
                        f.at + Duration::from_millis(5) >= *at && f.at <= *at + window
                    });
                    let on_killed = match (mode, f.conn_pid) {
                        (Mode::KeepAlive, Some(p)) => killed.contains(&p),
                        _ => true,
                    };
                    !(in_window && on_killed)
                })
                .collect();
            let (rm, rx) = med_max(&recov);
            let (sm, sx) = med_max(&respawn);
            t.row(vec![
                sockets.into(),
                mode.name().into(),
                tally.total().to_string(),
                tally.failed().to_string(),
                pct(tally.failed(), tally.total()),
                tally.breakdown(),
                format!("{} ({skipped})", kills.len()),
                if kills.is_empty() {
                    "–".into()
                } else {
                    format!("{:.1}", tally.failed() as f64 / kills.len() as f64)
                },
                unattributed.len().to_string(),
                format!("{} / {}", ms_opt(rm), ms_opt(rx)),
                format!(
                    "{over_1s} of {}{}",
                    kills.len(),
                    if not_recovered > 0 {
                        format!(" (+{not_recovered} not seen serving)")
                    } else {
                        String::new()
                    }
                ),
                format!("{} / {}", ms_opt(sm), ms_opt(sx)),
                final_workers.to_string(),
            ]);
            let label = format!("{sockets}, {}", mode.name());
            sec.check(
                format!("{label}: no connection refused while the master lives"),
                tally.count(Fail::Refused) == 0,
                format!("{} refused", tally.count(Fail::Refused)),
            );
            sec.check(
                format!("{label}: every failure is a request in flight on a killed worker"),
                unattributed.is_empty(),
                if unattributed.is_empty() {
                    format!("{} failures, all within a kill's window", tally.failed())
                } else {
                    format!(
                        "{} of {} failures not attributable to a kill, e.g. {:?}",
                        unattributed.len(),
                        tally.failed(),
                        unattributed
                            .iter()
                            .take(3)
                            .map(|f| (f.fail.name(), f.stale, f.conn_pid))
                            .collect::<Vec<_>>()
                    )
                },
            );
            sec.check(
                format!("{label}: 2 workers serve again within 1 s of each kill"),
                over_1s == 0 && not_recovered == 0 && final_workers == 2,
                format!(
                    "recovery median {} max {}; {over_1s} over 1 s, {not_recovered} not seen serving; {final_workers} workers at the end",
                    ms_opt(rm),
                    ms_opt(rx)
                ),
            );
            let backoff = server.count_err("(backoff)");
            if backoff > 0 {
                let delays: Vec<String> = server
                    .err_lines()
                    .iter()
                    .filter_map(|(_, l)| {
                        l.split("restarts in ")
                            .nth(1)
                            .map(|r| r.split(' ').next().unwrap_or("").to_string())
                    })
                    .collect();
                sec.note(format!(
                    "{label}: {backoff} respawns were delayed by the crash backoff ({})",
                    delays.join(", ")
                ));
            }
            server.stop(Duration::from_secs(10));
        }
    }
    sec.tables.push((String::new(), t));
    sec.note(
        "The master cannot tell an operator's SIGKILL from a crash: each kill counts as a crash, \
         and a slot killed again within 10 s of its previous start is respawned after a backoff \
         of 100 ms, 200 ms, 400 ms... (reset once a worker has stayed up 10 s). Killing each of \
         2 slots once a second therefore makes the backoff exceed 1 s from the 5th kill of a \
         slot on: the \"within 1 s\" figure measures the backoff policy as much as the respawn.",
    );
    sec
}

/// The pid that replaced `old` (from `recovered ... old_pid=OLD new_pid=NEW`).
fn replacement_of(server: &Server, old: u32) -> Option<u32> {
    let old = old.to_string();
    server.lines().iter().find_map(|(_, l)| {
        (l.starts_with("recovered ") && field(l, "old_pid") == Some(&old))
            .then(|| field(l, "new_pid")?.parse().ok())
            .flatten()
    })
}

// =========================================================================================
// Scenario 2: the master SIGKILLed
// =========================================================================================

fn s2_master_kill(ctx: &Ctx) -> Section {
    let mut sec = Section::new("2. Master SIGKILLed under load");
    sec.intro.push(
        "2 workers under load (16 keep-alive connections and 8 connection-per-request threads). \
         SIGKILL to the master; then: time until every worker has exited (polled every 1 ms), \
         time until a connect is refused (the port is free), and a new `forklift serve` on the \
         same address started at once: whether it binds, and the time until it answers."
            .into(),
    );
    let mut t = Table::new(&[
        "sockets",
        "requests (whole run)",
        "failed before kill",
        "workers gone after",
        "port refuses after",
        "new server binds",
        "new server answers after",
        "failures after the kill (by kind)",
    ]);
    for reuse in [false, true] {
        let sockets = if reuse {
            "SO_REUSEPORT per worker"
        } else {
            "shared"
        };
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--workers", "2"];
        if reuse {
            args.push("--reuse-port");
        }
        let name = format!("s2-{}", if reuse { "reuseport" } else { "shared" });
        let mut server = Server::start(ctx, &name, &args, Opts::default());
        sec.command(&server);
        let workers = server.ready();
        let addr = server.addr();
        let seen: FirstSeen = Arc::default();
        let dur = Duration::from_secs(8);
        let ka = Load::start(&LoadSpec::new(addr, Mode::KeepAlive, 16, dur), &seen);
        let pr = Load::start(&LoadSpec::new(addr, Mode::PerRequest, 8, dur), &seen);
        thread::sleep(Duration::from_millis(1000));
        // The clock starts before the kill: a load thread may see its effect before this
        // thread runs again.
        let t0 = Instant::now();
        send(server.pid, libc::SIGKILL);
        let gone = poll_until(
            t0 + Duration::from_secs(5),
            Duration::from_millis(1),
            || workers.iter().all(|p| !alive(*p)),
        );
        let gone_after = t0.elapsed();
        let refused = poll_until(
            t0 + Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                matches!(
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused
                )
            },
        );
        let refused_after = t0.elapsed();
        let mut tally = ka.finish();
        tally.merge(pr.finish());
        let (before, after): (Vec<FailRec>, Vec<FailRec>) =
            tally.fails.iter().cloned().partition(|f| f.at < t0);
        let requests_before = tally.total();
        let mut after_t = Tally {
            fails: after,
            ..Default::default()
        };
        after_t.ok = 0;
        // A new server on the same port, at once.
        let listen = addr.to_string();
        let mut args2 = vec!["serve", "--listen", listen.as_str(), "--workers", "2"];
        if reuse {
            args2.push("--reuse-port");
        }
        let t1 = Instant::now();
        let mut s2 = Server::start(ctx, &format!("{name}-new"), &args2, Opts::default());
        let ready = s2.wait_line(|l| l.starts_with("ready "), Duration::from_secs(10));
        let answered = ready.is_some()
            && poll_until(
                t1 + Duration::from_secs(10),
                Duration::from_millis(1),
                || get(addr, "/", Duration::from_secs(2)).is_ok_and(|r| r.status == 200),
            );
        let answered_after = t1.elapsed();
        let in_use = s2.count_err("already in use") > 0;
        let _ = server.wait_exit(Duration::from_secs(1));
        let left = group_members(server.pgid);
        t.row(vec![
            sockets.into(),
            requests_before.to_string(),
            before.len().to_string(),
            if gone {
                ms(gone_after)
            } else {
                format!(
                    "> 5 s ({} alive)",
                    workers.iter().filter(|p| alive(**p)).count()
                )
            },
            if refused {
                ms(refused_after)
            } else {
                "> 5 s".into()
            },
            if ready.is_some() {
                "yes".into()
            } else if in_use {
                "no: address in use".into()
            } else {
                "no".into()
            },
            if answered {
                ms(answered_after)
            } else {
                "never".into()
            },
            after_t.breakdown(),
        ]);
        sec.check(
            format!("{sockets}: every worker gone within 1 s"),
            gone && gone_after <= Duration::from_secs(1),
            format!("{} ({} left in the group)", ms(gone_after), left.len()),
        );
        sec.check(
            format!("{sockets}: the port is free and a new forklift binds it at once"),
            refused && ready.is_some() && answered,
            format!(
                "refused after {}, new server answered {} after its start",
                ms(refused_after),
                ms(answered_after)
            ),
        );
        sec.check(
            format!("{sockets}: no failure before the kill"),
            before.is_empty(),
            format!("{} failed", before.len()),
        );
        s2.stop(Duration::from_secs(10));
        server.kill();
    }
    sec.tables.push((String::new(), t));
    sec.note(
        "Failures after the kill are expected: the workers drain and exit when their master \
         dies, so requests in flight then, and connections made once the port is closed, fail.",
    );
    sec
}

// =========================================================================================
// Scenario 3: crash loops
// =========================================================================================

fn s3_crash_loops(ctx: &Ctx) -> Section {
    let mut sec = Section::new("3. Crash loops");
    sec.intro.push(
        "(a) `--fault block-route`: GET /abort aborts the worker process. One client sends \
         GET /abort on a new connection, again and again, until the master exits. The master's \
         CPU time (utime+stime from /proc/PID/stat, read while it is a zombie) is measured from \
         the first crash to its exit. (b) GET /panic makes the handler panic: 300 such \
         requests, half on one keep-alive connection, half on connections of their own."
            .into(),
    );
    // (a) abort on every request
    let mut a = Table::new(&[
        "recover threshold",
        "workers killed by SIGABRT (incl. during the stop)",
        "respawn delays (backoff)",
        "first crash to exit",
        "master CPU first crash to exit",
        "master CPU share",
        "master wakeups (voluntary ctx switches)",
        "exit",
        "error line",
    ]);
    for threshold in [3usize, 10] {
        let th = threshold.to_string();
        let args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--fault",
            "block-route",
            "--recover-threshold",
            th.as_str(),
            "--graceful-timeout",
            "5",
        ];
        let mut server = Server::start(
            ctx,
            &format!("s3-abort-{threshold}"),
            &args,
            Opts::default(),
        );
        sec.command(&server);
        server.ready();
        let addr = server.addr();
        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut sent = 0u64;
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && sent < 10_000 {
                    sent += 1;
                    if let Err(Fail::Refused) = get(addr, "/abort", Duration::from_secs(2)) {
                        thread::sleep(Duration::from_millis(5));
                    }
                }
                sent
            })
        };
        let first = server.wait_line(|l| l.starts_with("exited "), Duration::from_secs(10));
        let cpu0 = cpu_secs(server.pid).unwrap_or(0.0);
        let csw0 = status_field(server.pid, "voluntary_ctxt_switches").unwrap_or(0);
        let mut csw1 = csw0;
        // Sample the wakeups while it runs; the CPU comes from the zombie.
        let deadline = Instant::now() + Duration::from_secs(90);
        while alive(server.pid) && Instant::now() < deadline {
            if let Some(c) = status_field(server.pid, "voluntary_ctxt_switches") {
                csw1 = c;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let exit = server.wait_exit_with_cpu(Duration::from_secs(10));
        let t_exit = Instant::now();
        stop.store(true, Ordering::SeqCst);
        let sent = client.join().unwrap_or(0);
        // Crashes: the workers that aborted (not those stopped with the server).
        let crashes = server
            .lines()
            .iter()
            .filter(|(_, l)| l.starts_with("exited ") && l.contains("SIGABRT"))
            .count();
        let delays: Vec<String> = server
            .err_lines()
            .iter()
            .filter_map(|(_, l)| {
                l.split("restarts in ")
                    .nth(1)
                    .map(|r| r.split(' ').next().unwrap_or("").to_string())
            })
            .collect();
        let error = server
            .err_lines()
            .iter()
            .find(|(_, l)| l.starts_with("forklift: error:"))
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
        let span = first
            .as_ref()
            .map(|(t, _)| t_exit.saturating_duration_since(*t));
        let (cpu_used, status) = match &exit {
            Some((st, cpu)) => (Some(cpu - cpu0), describe(st)),
            None => (None, "did not exit".into()),
        };
        let share = match (cpu_used, span) {
            (Some(c), Some(s)) if s.as_secs_f64() > 0.0 => {
                format!("{:.2} %", c * 100.0 / s.as_secs_f64())
            }
            _ => "–".into(),
        };
        a.row(vec![
            threshold.to_string(),
            crashes.to_string(),
            if delays.is_empty() {
                "none".into()
            } else {
                delays.join(", ")
            },
            ms_opt(span),
            cpu_used.map_or("–".into(), |c| format!("{:.0} ms", c * 1000.0)),
            share.clone(),
            (csw1 - csw0).to_string(),
            status.clone(),
            error.clone(),
        ]);
        let exited_nonzero = exit
            .as_ref()
            .is_some_and(|(st, _)| !st.success() && st.code().is_some());
        sec.check(
            format!("threshold {threshold}: the master stops with a clear error"),
            exited_nonzero
                && error.contains(&format!("recover threshold ({threshold})"))
                && error.contains(&format!("crashed {} times", threshold + 1)),
            format!("{status} after {crashes} crashes ({sent} GET /abort sent); {error}"),
        );
        sec.check(
            format!("threshold {threshold}: the master does not spin while it backs off"),
            cpu_used.is_some_and(|c| span.is_some_and(|s| c <= 0.02 * s.as_secs_f64().max(1.0))),
            format!(
                "{} ms of CPU over {} ({share})",
                cpu_used.map_or(-1.0, |c| c * 1000.0),
                ms_opt(span)
            ),
        );
        sec.check(
            format!("threshold {threshold}: respawns back off"),
            delays.len() >= threshold / 2,
            format!("{} delayed respawns: {}", delays.len(), delays.join(", ")),
        );
        let left = group_members(server.pgid);
        sec.check(
            format!("threshold {threshold}: no worker left after the stop"),
            poll_until(
                Instant::now() + Duration::from_secs(2),
                Duration::from_millis(10),
                || group_members(server.pgid).is_empty(),
            ),
            format!("{} process(es) left just after the exit", left.len()),
        );
        server.kill();
    }
    sec.tables.push((
        "(a) A handler that aborts the worker on every request".into(),
        a,
    ));

    // (b) panic: 500 and the worker survives
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--fault",
        "block-route",
    ];
    let mut server = Server::start(ctx, "s3-panic", &args, Opts::default());
    sec.command(&server);
    let workers = server.ready();
    let addr = server.addr();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut pids = BTreeSet::new();
    let t0 = Instant::now();
    // 150 on one keep-alive connection
    match connect(addr, Duration::from_secs(5)) {
        Ok(mut s) => {
            let mut buf = Vec::new();
            for _ in 0..150 {
                let r = s
                    .write_all(&get_request("/panic", false))
                    .map_err(|e| classify(&e))
                    .and_then(|()| read_response(&mut s, &mut buf).map_err(|e| e.fail));
                match r {
                    Ok(r) => {
                        *codes
                            .entry(format!("{} (keep-alive)", r.status))
                            .or_default() += 1
                    }
                    Err(f) => {
                        *codes
                            .entry(format!("{} (keep-alive)", f.name()))
                            .or_default() += 1;
                        match connect(addr, Duration::from_secs(5)) {
                            Ok(n) => s = n,
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        Err(f) => *codes.entry(f.name().into()).or_default() += 1,
    }
    for _ in 0..150 {
        match get(addr, "/panic", Duration::from_secs(5)) {
            Ok(r) => {
                *codes
                    .entry(format!("{} (new connection)", r.status))
                    .or_default() += 1
            }
            Err(f) => {
                *codes
                    .entry(format!("{} (new connection)", f.name()))
                    .or_default() += 1
            }
        }
    }
    let took = t0.elapsed();
    for _ in 0..50 {
        if let Ok(r) = get(addr, "/", Duration::from_secs(5)) {
            if r.status == 200 {
                pids.extend(r.pid);
            }
        }
    }
    let exited = server.count_lines("exited ");
    let panics_logged = server.count_err("a request handler panicked");
    let mut b = Table::new(&[
        "requests",
        "answers",
        "panics logged",
        "worker exits",
        "workers after (same pids)",
        "time",
    ]);
    let all_500 = codes.keys().all(|k| k.starts_with("500"));
    b.row(vec![
        "300 GET /panic".into(),
        codes
            .iter()
            .map(|(k, v)| format!("{v} × {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        panics_logged.to_string(),
        exited.to_string(),
        format!(
            "{} ({})",
            pids.len(),
            pids.iter().all(|p| workers.contains(p))
        ),
        ms(took),
    ]);
    sec.tables.push(("(b) A handler that panics".into(), b));
    sec.check(
        "a panicking handler answers 500",
        all_500 && codes.values().sum::<u64>() == 300,
        codes
            .iter()
            .map(|(k, v)| format!("{v} × {k}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    sec.check(
        "the worker survives a panicking handler",
        exited == 0 && pids.len() == 2 && pids.iter().all(|p| workers.contains(p)),
        format!("{exited} worker exits; GET / then served by {pids:?} (started as {workers:?})"),
    );
    server.stop(Duration::from_secs(10));
    sec.note(
        "Backoff: the first crash of a slot respawns at once, then 100 ms doubling to 10 s; \
         each slot keeps its own count, so with 2 workers the delays interleave.",
    );
    sec
}

fn describe(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

// =========================================================================================
// Scenario 4: slow clients
// =========================================================================================

#[derive(Clone, Copy, PartialEq, Eq)]
enum Slow {
    /// Connects and sends nothing.
    Idle,
    /// Sends `GET / HTTP/1.1`, then a header byte a second.
    Headers,
    /// Sends the HTTP/2 connection preface a byte a second.
    H2Preface,
}

struct SlowConn {
    s: TcpStream,
    opened: Instant,
    closed: Option<Instant>,
    answered: bool,
    sent: usize,
    kind: Slow,
}

fn s4_slow_clients(ctx: &Ctx) -> Section {
    let mut sec = Section::new("4. Slow clients: idle connections and slowloris");
    let n_idle = 1000;
    let n_slow = 800;
    let n_h2 = 200;
    let hrt = 3u64;
    let attack_for = Duration::from_secs(hrt + 4);
    sec.intro.push(format!(
        "2 workers, `--header-read-timeout {hrt}`. {n_idle} connections that send nothing, \
         {n_slow} slowloris connections that send `GET / HTTP/1.1` and then one header byte a \
         second, and {n_h2} that send the HTTP/2 connection preface (`PRI * HTTP/2.0...`) one \
         byte a second, held for {} s. Meanwhile a normal client sends GET / every 20 ms on a new \
         connection and every 20 ms on a keep-alive connection; its latency before the attack \
         (1.5 s) is the baseline.",
        attack_for.as_secs()
    ));
    let hrt_s = hrt.to_string();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--header-read-timeout",
        hrt_s.as_str(),
    ];
    let mut server = Server::start(ctx, "s4-slow", &args, Opts::default());
    sec.command(&server);
    let workers = server.ready();
    let addr = server.addr();
    let seen: FirstSeen = Arc::default();
    let normal = |dur: Duration| {
        let mut a = LoadSpec::new(addr, Mode::PerRequest, 1, dur);
        a.pace = Some(Duration::from_millis(20));
        let mut b = LoadSpec::new(addr, Mode::KeepAlive, 1, dur);
        b.pace = Some(Duration::from_millis(20));
        (Load::start(&a, &seen), Load::start(&b, &seen))
    };
    let (a, b) = normal(Duration::from_millis(1500));
    let mut base = a.join();
    base.merge(b.join());
    let (a, b) = normal(attack_for + Duration::from_secs(1));
    // Open the slow connections.
    let t_open = Instant::now();
    let mut conns: Vec<SlowConn> = Vec::new();
    let mut open_errors = 0;
    for i in 0..(n_idle + n_slow + n_h2) {
        match connect(addr, Duration::from_secs(5)) {
            Ok(s) => {
                let _ = s.set_nonblocking(true);
                conns.push(SlowConn {
                    s,
                    opened: Instant::now(),
                    closed: None,
                    answered: false,
                    sent: 0,
                    kind: if i < n_idle {
                        Slow::Idle
                    } else if i < n_idle + n_slow {
                        Slow::Headers
                    } else {
                        Slow::H2Preface
                    },
                });
            }
            Err(_) => open_errors += 1,
        }
    }
    let opened_in = t_open.elapsed();
    let payload = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slowloris: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let first_line = b"GET / HTTP/1.1\r\n".len();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let end = t_open + attack_for;
    let mut next_byte = Instant::now();
    let mut buf = [0u8; 1024];
    while Instant::now() < end {
        let now = Instant::now();
        let trickle = now >= next_byte;
        if trickle {
            next_byte += Duration::from_secs(1);
        }
        for c in conns.iter_mut().filter(|c| c.closed.is_none()) {
            let (bytes, first): (&[u8], usize) = match c.kind {
                Slow::Idle => (b"", 0),
                Slow::Headers => (payload, first_line),
                Slow::H2Preface => (preface, 1),
            };
            if trickle && c.sent < bytes.len() {
                let n = if c.sent == 0 { first } else { 1 };
                match c.s.write(&bytes[c.sent..c.sent + n]) {
                    Ok(k) => c.sent += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => c.closed = Some(now),
                }
            }
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        c.closed = Some(now);
                        break;
                    }
                    Ok(_) => c.answered = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.closed = Some(now);
                        break;
                    }
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let mut attack = a.finish();
    attack.merge(b.finish());
    let mut t = Table::new(&[
        "kind",
        "opened",
        "closed by the server",
        "answered first (e.g. 408)",
        "closed after (median / max)",
        "still open at the end",
    ]);
    for kind in [Slow::Idle, Slow::Headers, Slow::H2Preface] {
        let group: Vec<&SlowConn> = conns.iter().filter(|c| c.kind == kind).collect();
        let closed: Vec<Duration> = group
            .iter()
            .filter_map(|c| c.closed.map(|t| t - c.opened))
            .collect();
        let (m, x) = med_max(&closed);
        let open = group.len() - closed.len();
        t.row(vec![
            match kind {
                Slow::Idle => "idle (nothing sent)",
                Slow::Headers => "slowloris: request head, 1 byte/s",
                Slow::H2Preface => "slowloris: HTTP/2 preface, 1 byte/s",
            }
            .into(),
            group.len().to_string(),
            closed.len().to_string(),
            group.iter().filter(|c| c.answered).count().to_string(),
            format!("{} / {}", ms_opt(m), ms_opt(x)),
            open.to_string(),
        ]);
        let kind = match kind {
            Slow::Idle => "idle",
            Slow::Headers => "slowloris (request head)",
            Slow::H2Preface => "slowloris (HTTP/2 preface)",
        };
        sec.check(
            format!("the header-read timeout closes the {kind} connections"),
            open == 0 && !group.is_empty(),
            format!(
                "{} of {} closed by the server (median {}, max {} after opening); {open} still open after {} s",
                closed.len(),
                group.len(),
                ms_opt(m),
                ms_opt(x),
                attack_for.as_secs()
            ),
        );
    }
    drop(conns);
    let mut n = Table::new(&["normal client", "requests", "failed", "p50", "p99", "max"]);
    for (label, tally) in [("before the attack", &base), ("during the attack", &attack)] {
        n.row(vec![
            label.into(),
            tally.total().to_string(),
            format!("{} ({})", tally.failed(), tally.breakdown()),
            ms_opt(tally.percentile(0.5)),
            ms_opt(tally.percentile(0.99)),
            ms_opt(tally.percentile(1.0)),
        ]);
    }
    sec.tables.push((
        format!(
            "{} connections opened in {} ({open_errors} could not be opened).",
            n_idle + n_slow + n_h2,
            ms(opened_in)
        ),
        t,
    ));
    sec.tables.push((String::new(), n));
    let p99 = attack.percentile(0.99);
    sec.check(
        "a normal client keeps getting answers, p99 under 100 ms",
        attack.failed() == 0
            && attack.ok > 0
            && p99.is_some_and(|p| p < Duration::from_millis(100)),
        format!(
            "{} requests, {} failed, p99 {}",
            attack.total(),
            attack.failed(),
            ms_opt(p99)
        ),
    );
    let exited = server.count_lines("exited ");
    sec.check(
        "the workers survive",
        exited == 0 && workers.iter().all(|p| alive(*p)),
        format!("{exited} worker exits"),
    );
    server.stop(Duration::from_secs(10));
    sec
}

// =========================================================================================
// Scenario 5: oversized and malformed requests; fuzzing
// =========================================================================================

struct Probe {
    name: &'static str,
    bytes: Vec<u8>,
    /// An error status or a closed connection is required (else: informational).
    must_reject: bool,
    /// A second request is smuggled after the first: it must not be answered.
    smuggled: bool,
}

fn probes() -> Vec<Probe> {
    let p = |name, bytes: Vec<u8>, must_reject, smuggled| Probe {
        name,
        bytes,
        must_reject,
        smuggled,
    };
    let smuggle = b"GET /sleep?ms=1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let cat = |a: &[u8], b: &[u8]| [a, b].concat();
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        many.extend(format!("X-H{i}: v\r\n").bytes());
    }
    many.extend(b"\r\n");
    vec![
        p(
            "1 MiB header value",
            cat(&cat(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", &vec![b'a'; 1 << 20]), b"\r\n\r\n"),
            true,
            false,
        ),
        p("200 header fields", many, true, false),
        p(
            "64 KiB header value (informational)",
            cat(&cat(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", &vec![b'a'; 64 << 10]), b"\r\n\r\n"),
            false,
            false,
        ),
        p(
            "70 KB request target",
            cat(&cat(b"GET /", &vec![b'a'; 70_000]), b" HTTP/1.1\r\nHost: x\r\n\r\n"),
            true,
            false,
        ),
        p("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), true, false),
        p("NUL in the request line", b"GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), true, false),
        p("bad method token", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), true, false),
        p("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), true, false),
        p("HTTP/0.9 style", b"GET /\r\n\r\n".to_vec(), true, false),
        p("header without a colon", b"GET / HTTP/1.1\r\nHost x\r\n\r\n".to_vec(), true, false),
        p("space before the colon", b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n".to_vec(), true, false),
        p("obs-fold header line", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n".to_vec(), true, false),
        p(
            "invalid chunk size",
            cat(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "chunk size overflow",
            cat(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "chunk without its CRLF",
            cat(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "Content-Length + Transfer-Encoding (CL.TE)",
            cat(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "Transfer-Encoding + Content-Length (TE.CL)",
            cat(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "two different Content-Lengths",
            cat(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", &smuggle),
            true,
            true,
        ),
        p(
            "Transfer-Encoding: chunked, identity",
            cat(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p("Transfer-Encoding: xchunked", b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n".to_vec(), true, false),
        p("Content-Length: -1", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), true, false),
        p("Content-Length: 2^70", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1180591620717411303424\r\n\r\n".to_vec(), true, false),
        p("Content-Length: 1, 2", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab".to_vec(), true, false),
        p(
            "HTTP/2 preface, then garbage",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x08\x00\x00\x00\x00\x00garbage-garbage".to_vec(),
            true,
            false,
        ),
        p("4 KiB of binary noise", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(), true, false),
    ]
}

struct ProbeResult {
    statuses: Vec<u16>,
    closed: bool,
    smuggled_answered: bool,
    took: Duration,
}

fn run_probe(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Result<ProbeResult, Fail> {
    let mut s = connect(addr, Duration::from_secs(5))?;
    let _ = s.set_read_timeout(Some(wait));
    let t0 = Instant::now();
    // The server may answer and close before it has read everything: ignore write errors.
    let writer = {
        let mut w = s.try_clone().map_err(|e| classify(&e))?;
        let bytes = bytes.to_vec();
        thread::spawn(move || {
            let _ = w.write_all(&bytes);
        })
    };
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break false
            }
            Err(_) => break true,
        }
    };
    let took = t0.elapsed();
    let _ = s.shutdown(Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&got);
    let statuses = text
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3).and_then(|c| c.parse().ok()))
        .collect();
    Ok(ProbeResult {
        statuses,
        closed,
        smuggled_answered: text.contains("slept 1 ms"),
        took,
    })
}

fn s5_malformed(ctx: &Ctx) -> Section {
    let mut sec = Section::new("5. Oversized and malformed requests; fuzzing");
    sec.intro.push(
        "2 workers, `--fault block-route`. Each probe goes on a new connection; the answer is \
         read for up to 2 s. Required: an error status or a closed connection, no answer to a \
         request smuggled after the first, and afterwards GET / still answered by the same \
         worker processes (no worker exit). Then a wire fuzzer mutates valid requests at \
         random (one connection each, write side shut after the request), and the fuzz \
         targets of `fuzz/` run for a bounded time."
            .into(),
    );
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--fault",
        "block-route",
    ];
    let mut server = Server::start(ctx, "s5-malformed", &args, Opts::default());
    sec.command(&server);
    let workers = server.ready();
    let addr = server.addr();
    let mut t = Table::new(&[
        "probe",
        "answer",
        "connection",
        "smuggled request answered",
        "workers alive after",
        "verdict",
    ]);
    let mut failed_probes = Vec::new();
    for p in probes() {
        let r = run_probe(addr, &p.bytes, Duration::from_secs(2));
        let after = get(addr, "/", Duration::from_secs(5));
        let alive_after = workers.iter().all(|w| alive(*w)) && server.count_lines("exited ") == 0;
        let serves = after
            .as_ref()
            .is_ok_and(|r| r.status == 200 && r.pid.is_some_and(|p| workers.contains(&p)));
        let (answer, conn, smuggled, ok) = match &r {
            Ok(r) => {
                let rejected = r.closed || r.statuses.first().is_some_and(|s| *s >= 400);
                let ok = (!p.must_reject || rejected)
                    && !(p.smuggled && (r.smuggled_answered || r.statuses.len() > 1));
                (
                    if r.statuses.is_empty() {
                        "none".to_string()
                    } else {
                        r.statuses
                            .iter()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    if r.closed {
                        format!("closed after {}", ms(r.took))
                    } else {
                        "left open (2 s)".into()
                    },
                    if p.smuggled {
                        if r.smuggled_answered {
                            "YES"
                        } else {
                            "no"
                        }
                    } else {
                        "–"
                    }
                    .to_string(),
                    ok,
                )
            }
            Err(f) => (
                format!("connect: {}", f.name()),
                "–".into(),
                "–".into(),
                false,
            ),
        };
        let verdict = ok && alive_after && serves;
        if !verdict && p.must_reject {
            failed_probes.push(p.name);
        }
        t.row(vec![
            p.name.into(),
            answer,
            conn,
            smuggled,
            format!("{}", alive_after && serves),
            if !p.must_reject {
                "info".into()
            } else if verdict {
                "pass".into()
            } else {
                "**FAIL**".into()
            },
        ]);
    }
    sec.tables.push((String::new(), t));
    sec.check(
        "every malformed request gets an error status or a closed connection, nothing smuggled, the worker alive",
        failed_probes.is_empty(),
        if failed_probes.is_empty() { "all probes".to_string() } else { failed_probes.join(", ") },
    );
    // Wire fuzz
    let wire_for = ctx.pick(Duration::from_secs(3), Duration::from_secs(10));
    let (sent, classes) = wire_fuzz(addr, wire_for);
    let exited = server.count_lines("exited ");
    let serves = get(addr, "/", Duration::from_secs(5)).is_ok_and(|r| r.status == 200);
    let mut w = Table::new(&[
        "wire fuzz",
        "requests",
        "answers by class",
        "worker exits",
        "GET / after",
    ]);
    w.row(vec![
        format!("{} s", wire_for.as_secs()),
        sent.to_string(),
        classes
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        exited.to_string(),
        if serves {
            "200".into()
        } else {
            "failed".into()
        },
    ]);
    sec.tables.push((String::new(), w));
    sec.check(
        "no mutated request crashes a worker",
        exited == 0 && workers.iter().all(|p| alive(*p)) && serves,
        format!("{sent} mutated requests, {exited} worker exits"),
    );
    let panics = server.count_err("panicked");
    sec.check(
        "no panic logged",
        panics == 0,
        format!("{panics} panic lines on stderr"),
    );
    server.stop(Duration::from_secs(10));
    fuzz_targets(ctx, &mut sec);
    sec.note(
        "hyper's default limits apply: a request head up to about 400 KiB (its max buffer \
         size) and 100 header fields are accepted; beyond, 431. The 64 KiB header row shows \
         that a single header line far beyond nginx's 8 KiB default is served.",
    );
    sec
}

/// Sends random mutations of valid requests; returns (requests, answers by class).
fn wire_fuzz(addr: SocketAddr, dur: Duration) -> (u64, BTreeMap<String, u64>) {
    let templates: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /sleep?ms=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ];
    let tokens: [&[u8]; 16] = [
        b"\r\n",
        b"\n",
        b"\r",
        b":",
        b" ",
        b"\t",
        b"\0",
        b"chunked",
        b"Content-Length: ",
        b"Transfer-Encoding: ",
        b"HTTP/1.0",
        b"HTTP/2.0",
        b"ffffffffffffffff",
        b"-1",
        b"\xff\xfe",
        b"%00",
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (std::process::id() as u64);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let end = Instant::now() + dur;
    let mut sent = 0;
    while Instant::now() < end && sent < 100_000 {
        let mut m = templates[(next() % 5) as usize].to_vec();
        for _ in 0..1 + next() % 4 {
            let len = m.len();
            let i = (next() as usize) % (len + 1);
            match next() % 5 {
                0 if len > 0 => m[i.min(len - 1)] = next() as u8,
                1 if len > 0 => {
                    let j = (i + 1 + (next() as usize) % 8).min(len);
                    m.drain(i.min(len - 1)..j);
                }
                2 => {
                    let t = tokens[(next() % tokens.len() as u64) as usize];
                    m.splice(i..i, t.iter().copied());
                }
                3 if len > 0 => m[i.min(len - 1)] ^= 1 << (next() % 8),
                _ => {
                    let n = (next() % 64) as usize;
                    m.splice(i..i, std::iter::repeat(b'A').take(n));
                }
            }
        }
        sent += 1;
        let class = match connect(addr, Duration::from_secs(2)) {
            Err(f) => format!("connect {}", f.name()),
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = s.write_all(&m);
                let _ = s.shutdown(Shutdown::Write);
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                let closed = loop {
                    match s.read(&mut chunk) {
                        Ok(0) => break true,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            break false
                        }
                        Err(_) => break true,
                    }
                };
                match got.get(9..10) {
                    Some([c]) if got.starts_with(b"HTTP/1.1 ") => format!("{}xx", *c as char),
                    _ if got.is_empty() && closed => "closed without answer".into(),
                    _ if got.is_empty() => "no answer in 500 ms".into(),
                    _ => "other bytes".into(),
                }
            }
        };
        *classes.entry(class).or_default() += 1;
    }
    (sent, classes)
}

fn fuzz_targets(ctx: &Ctx, sec: &mut Section) {
    let fuzz = ctx.repo.join("fuzz");
    let libfuzzer_dir = fuzz.join("target/x86_64-unknown-linux-gnu/release");
    let targets = ["listen_addr", "listen_fds", "status_messages", "fd_name"];
    let have_libfuzzer = targets.iter().all(|t| libfuzzer_dir.join(t).is_file());
    let smoke = fuzz.join("target/release/smoke");
    let engine = match ctx.fuzz_engine.as_str() {
        "libfuzzer" if have_libfuzzer => "libfuzzer",
        "auto" if have_libfuzzer => "libfuzzer",
        _ => "stable",
    };
    if ctx.fuzz_engine == "libfuzzer" && !have_libfuzzer {
        sec.note("libFuzzer targets not built (bench/chaos builds them with `cargo +nightly fuzz build` when cargo-fuzz and a nightly toolchain are present): using the stable runner");
    }
    if !smoke.is_file() {
        sec.check(
            "fuzz targets run",
            false,
            format!("{} is missing: bench/chaos builds it", smoke.display()),
        );
        return;
    }
    // A network namespace of its own (only loopback), when this machine allows it: the
    // targets never resolve names, and this makes sure nothing leaves the machine anyway.
    let netns = Command::new("unshare")
        .args(["--net", "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let wrap = |cmd: Vec<String>| -> Command {
        if netns {
            let mut c = Command::new("unshare");
            c.args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up 2>/dev/null; exec \"$@\"",
                "sh",
            ]);
            c.args(cmd);
            c
        } else {
            let mut c = Command::new(&cmd[0]);
            c.args(&cmd[1..]);
            c
        }
    };
    let artifacts = fuzz.join("artifacts");
    let _ = std::fs::create_dir_all(&artifacts);
    let mut t = Table::new(&[
        "target",
        "engine",
        "seconds",
        "executions",
        "crashes",
        "notes",
    ]);
    let mut crashes_total = 0u64;
    let mut ran = 0;
    let per = ctx.fuzz_seconds / 5.0;
    let mut rows: Vec<(String, String, f64, u64, u64, String)> = Vec::new();
    let bin = ctx.bin.display().to_string();
    if engine == "libfuzzer" {
        let corpus_root = fuzz.join("corpus");
        // seed the corpora
        let _ = Command::new(&smoke)
            .args(["--write-seeds", &corpus_root.display().to_string()])
            .status();
        for target in targets {
            let corpus = corpus_root.join(target);
            let _ = std::fs::create_dir_all(&corpus);
            let t0 = Instant::now();
            let out = wrap(vec![
                libfuzzer_dir.join(target).display().to_string(),
                corpus.display().to_string(),
                format!("-max_total_time={}", per.ceil() as u64),
                "-max_len=4096".into(),
                "-print_final_stats=1".into(),
                format!("-artifact_prefix={}/", artifacts.display()),
            ])
            .stdin(Stdio::null())
            .output();
            let took = t0.elapsed().as_secs_f64();
            match out {
                Ok(o) => {
                    let text = String::from_utf8_lossy(&o.stderr).to_string()
                        + &String::from_utf8_lossy(&o.stdout);
                    let execs = text
                        .lines()
                        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
                        .and_then(|v| v.trim().parse().ok())
                        .or_else(|| {
                            text.lines().find_map(|l| {
                                l.strip_prefix("Done ")
                                    .and_then(|r| r.split(' ').next()?.parse().ok())
                            })
                        })
                        .unwrap_or(0);
                    let crashed = !o.status.success();
                    let note = if crashed {
                        text.lines()
                            .filter(|l| {
                                l.contains("panicked")
                                    || l.contains("ERROR")
                                    || l.contains("artifact")
                            })
                            .take(3)
                            .collect::<Vec<_>>()
                            .join(" / ")
                    } else {
                        let cov = text
                            .lines()
                            .rev()
                            .find(|l| l.contains(" cov: "))
                            .and_then(|l| l.split(" cov: ").nth(1))
                            .and_then(|r| r.split_whitespace().next())
                            .map(|c| format!("coverage {c} edges"))
                            .unwrap_or_default();
                        cov
                    };
                    rows.push((
                        target.into(),
                        "libFuzzer".into(),
                        took,
                        execs,
                        u64::from(crashed),
                        note,
                    ));
                }
                Err(e) => rows.push((
                    target.into(),
                    "libFuzzer".into(),
                    took,
                    0,
                    1,
                    format!("cannot run: {e}"),
                )),
            }
        }
        rows.extend(run_smoke(&wrap, &smoke, &artifacts, per, &["cli"], &bin));
    } else {
        rows.extend(run_smoke(
            &wrap,
            &smoke,
            &artifacts,
            per * 5.0,
            &[
                "listen_addr",
                "listen_fds",
                "status_messages",
                "fd_name",
                "cli",
            ],
            &bin,
        ));
    }
    for (target, eng, took, execs, crashes, note) in rows {
        ran += 1;
        crashes_total += crashes;
        t.row(vec![
            target,
            eng,
            format!("{took:.1}"),
            execs.to_string(),
            crashes.to_string(),
            note,
        ]);
    }
    sec.tables.push((
        format!(
            "Fuzz targets (`fuzz/`), {:.0} s in all{}:",
            ctx.fuzz_seconds,
            if netns {
                ", in a network namespace of their own"
            } else {
                ""
            }
        ),
        t,
    ));
    sec.check(
        "fuzz targets: no crash",
        ran >= 5 && crashes_total == 0,
        format!("{ran} targets run, {crashes_total} crashes (artifacts in fuzz/artifacts/)"),
    );
}

fn run_smoke(
    wrap: &dyn Fn(Vec<String>) -> Command,
    smoke: &Path,
    artifacts: &Path,
    seconds: f64,
    targets: &[&str],
    forklift: &str,
) -> Vec<(String, String, f64, u64, u64, String)> {
    let out = wrap(vec![
        smoke.display().to_string(),
        "--seconds".into(),
        format!("{seconds:.1}"),
        "--targets".into(),
        targets.join(","),
        "--cli".into(),
        forklift.into(),
        "--artifacts".into(),
        artifacts.display().to_string(),
    ])
    .stdin(Stdio::null())
    .output();
    let Ok(o) = out else {
        return vec![(
            "smoke".into(),
            "stable".into(),
            0.0,
            0,
            1,
            "cannot run the smoke runner".into(),
        )];
    };
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let mut rows = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with("fuzz target=") {
            continue;
        }
        let name = field(l, "target").unwrap_or("?").to_string();
        let execs = field(l, "execs").and_then(|v| v.parse().ok()).unwrap_or(0);
        let crashes = field(l, "crashes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let secs = field(l, "seconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let notes: Vec<String> = lines[i + 1..]
            .iter()
            .take_while(|n| n.starts_with("  "))
            .map(|n| {
                n.trim()
                    .split_once(": ")
                    .map_or(n.trim(), |(_, r)| r)
                    .to_string()
            })
            .take(2)
            .collect();
        let label = if name == "cli" {
            "cli (forklift serve argv + LISTEN_FDS env)".to_string()
        } else {
            name
        };
        rows.push((
            label,
            "stable (random mutation)".into(),
            secs,
            execs,
            crashes,
            notes.join(" / "),
        ));
    }
    if rows.is_empty() {
        rows.push((
            "smoke".into(),
            "stable".into(),
            0.0,
            0,
            1,
            format!("no output; exit {:?}", o.status.code()),
        ));
    }
    rows
}

// =========================================================================================
// Scenario 6: exhaustion
// =========================================================================================

fn s6_exhaustion(ctx: &Ctx) -> Section {
    let mut sec = Section::new("6. Exhaustion: EMFILE, and 10,000 keep-alive connections");
    // (a) EMFILE
    let n_clients = 1000;
    sec.intro.push(format!(
        "(a) forklift under `ulimit -n 256` (RLIMIT_NOFILE 256 set before exec), 2 workers; \
         {n_clients} clients each connect and send one keep-alive GET, and hold their \
         connection. Measured over 2 s while saturated: the workers' CPU time and how often \
         they log `accept failed`. Then the clients close their connections once answered (the \
         answered ones at once): time until every waiting client is answered, and the latency \
         of a new client arriving then. (b) 10,000 \
         keep-alive connections, one GET each, held open: worker RSS before, during and after."
    ));
    let args = ["serve", "--listen", "127.0.0.1:0", "--workers", "2"];
    let mut server = Server::start(
        ctx,
        "s6-emfile",
        &args,
        Opts {
            nofile: Some(256),
            ..Default::default()
        },
    );
    sec.command(&server);
    let workers = server.ready();
    let addr = server.addr();
    let limits: Vec<String> = workers.iter().map(|p| max_open_files(*p)).collect();
    struct Held {
        s: TcpStream,
        answered: Option<Instant>,
        buf: Vec<u8>,
    }
    let mut held: Vec<Held> = Vec::new();
    let mut connect_fail = 0;
    for _ in 0..n_clients {
        match connect(addr, Duration::from_secs(3)) {
            Ok(mut s) => {
                let _ = s.write_all(&get_request("/", false));
                let _ = s.set_nonblocking(true);
                held.push(Held {
                    s,
                    answered: None,
                    buf: Vec::new(),
                });
            }
            Err(_) => connect_fail += 1,
        }
    }
    let pump = |held: &mut Vec<Held>| {
        let mut chunk = [0u8; 1024];
        for h in held.iter_mut().filter(|h| h.answered.is_none()) {
            loop {
                match h.s.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        h.buf.extend_from_slice(&chunk[..n]);
                        if find(&h.buf, b"greeting!!!").is_some() {
                            h.answered = Some(Instant::now());
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    };
    // Let the workers take what they can.
    let t_sat = Instant::now();
    let mut last = 0;
    let mut stable_since = Instant::now();
    while t_sat.elapsed() < Duration::from_secs(5) {
        pump(&mut held);
        let n = held.iter().filter(|h| h.answered.is_some()).count();
        if n != last {
            last = n;
            stable_since = Instant::now();
        } else if stable_since.elapsed() > Duration::from_millis(500) {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let answered_before = held.iter().filter(|h| h.answered.is_some()).count();
    // Saturated: measure for 2 s.
    let cpu0: Vec<f64> = workers
        .iter()
        .map(|p| cpu_secs(*p).unwrap_or(0.0))
        .collect();
    let m0 = cpu_secs(server.pid).unwrap_or(0.0);
    let warn0 = server.count_err("accept failed");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        pump(&mut held);
        thread::sleep(Duration::from_millis(50));
    }
    let window = t0.elapsed();
    let cpu1: Vec<f64> = workers
        .iter()
        .map(|p| cpu_secs(*p).unwrap_or(0.0))
        .collect();
    let m1 = cpu_secs(server.pid).unwrap_or(0.0);
    let warns = server.count_err("accept failed") - warn0;
    let worker_cpu: f64 = cpu1.iter().zip(&cpu0).map(|(a, b)| a - b).sum();
    let sample_warning = server
        .err_lines()
        .iter()
        .find(|(_, l)| l.contains("accept failed"))
        .map(|(_, l)| {
            l.split("accept failed")
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    let alive_saturated = workers.iter().all(|p| alive(*p)) && server.count_lines("exited ") == 0;
    let waiting_before = held.iter().filter(|h| h.answered.is_none()).count();
    // Now the clients behave: each closes its connection once answered. A new client
    // comes too (on a thread: it waits in the accept queue behind the others).
    let t_close = Instant::now();
    let newcomer = thread::spawn(move || {
        let t = Instant::now();
        get(addr, "/", Duration::from_secs(10))
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| t.elapsed())
    });
    let mut closed = 0;
    let mut all_answered = None;
    let deadline = t_close + Duration::from_secs(10);
    while Instant::now() < deadline {
        pump(&mut held);
        held.retain(|h| {
            if h.answered.is_some() {
                closed += 1;
                false
            } else {
                true
            }
        });
        if held.is_empty() {
            all_answered = Some(t_close.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let new_client = newcomer.join().ok().flatten();
    let held_left = held.len();
    drop(held);
    let exited = server.count_lines("exited ");
    let serves_after = poll_until(
        Instant::now() + Duration::from_secs(5),
        Duration::from_millis(50),
        || get(addr, "/", Duration::from_secs(1)).is_ok_and(|r| r.status == 200),
    );
    let mut a = Table::new(&[
        "worker fd limit",
        "clients",
        "answered while saturated",
        "left waiting",
        "worker CPU over 2 s saturated",
        "master CPU",
        "`accept failed` logs in 2 s",
        "a new client answered after",
        "every waiting client answered after",
        "worker exits",
    ]);
    a.row(vec![
        limits.join(", "),
        format!(
            "{} ({connect_fail} could not connect)",
            n_clients - connect_fail
        ),
        answered_before.to_string(),
        waiting_before.to_string(),
        format!(
            "{:.0} ms ({:.1} % of a CPU)",
            worker_cpu * 1000.0,
            worker_cpu * 100.0 / window.as_secs_f64()
        ),
        format!("{:.0} ms", (m1 - m0) * 1000.0),
        warns.to_string(),
        ms_opt(new_client),
        match all_answered {
            Some(d) => ms(d),
            None => format!("{} still waiting after 10 s", held_left),
        },
        exited.to_string(),
    ]);
    sec.tables.push((
        format!("(a) EMFILE. The log says: `accept failed {sample_warning}`"),
        a,
    ));
    sec.check(
        "EMFILE: the workers do not crash",
        alive_saturated && exited == 0 && workers.iter().all(|p| alive(*p)),
        format!("{exited} worker exits"),
    );
    sec.check(
        "EMFILE: the accept loop does not spin (backs off and retries)",
        worker_cpu < 0.2 && warns <= 40,
        format!(
            "{:.0} ms of worker CPU and {warns} accept retries logged in {}",
            worker_cpu * 1000.0,
            ms(window)
        ),
    );
    sec.check(
        "EMFILE: service resumes as connections close",
        new_client.is_some() && all_answered.is_some() && serves_after,
        format!(
            "a new client answered after {}, every waiting client after {}",
            ms_opt(new_client),
            ms_opt(all_answered)
        ),
    );
    server.stop(Duration::from_secs(10));

    // (b) 10,000 keep-alive connections
    let n_conns = ctx.pick(10_000, 10_000);
    let args = ["serve", "--listen", "127.0.0.1:0", "--workers", "2"];
    let mut server = Server::start(
        ctx,
        "s6-10k",
        &args,
        Opts {
            nofile: Some(16_384),
            ..Default::default()
        },
    );
    sec.command(&server);
    let workers = server.ready();
    let addr = server.addr();
    let rss =
        |pids: &[u32]| -> Vec<u64> { pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect() };
    let idle = rss(&workers);
    let master_idle = rss_kib(server.pid).unwrap_or(0);
    let t0 = Instant::now();
    let (conns, by_pid, fails) = open_keepalive(addr, n_conns);
    let opened_in = t0.elapsed();
    thread::sleep(Duration::from_millis(300));
    let full = rss(&workers);
    let master_full = rss_kib(server.pid).unwrap_or(0);
    // A normal client meanwhile.
    let seen: FirstSeen = Arc::default();
    let mut spec = LoadSpec::new(addr, Mode::PerRequest, 1, Duration::from_secs(3));
    spec.max_requests = 300;
    let normal = Load::start(&spec, &seen).join();
    let held = conns.len();
    drop(conns);
    thread::sleep(Duration::from_millis(1000));
    let after = rss(&workers);
    // More rounds: memory the allocator keeps and reuses levels off; a leak keeps growing.
    let rounds = ctx.pick(4, 6);
    let mut later: Vec<(Vec<u64>, Vec<u64>)> = Vec::new();
    let mut later_ok = true;
    for _ in 1..rounds {
        let (c, _, f) = open_keepalive(addr, n_conns);
        later_ok &= c.len() == n_conns && f == 0;
        thread::sleep(Duration::from_millis(300));
        let peak = rss(&workers);
        drop(c);
        thread::sleep(Duration::from_millis(1000));
        later.push((peak, rss(&workers)));
    }
    let mut b = Table::new(&[
        "worker",
        "fd limit",
        "connections held",
        "RSS idle",
        "RSS with the connections",
        "per connection",
        "RSS 1 s after they closed",
        "later rounds: RSS after each (MiB)",
    ]);
    for (i, pid) in workers.iter().enumerate() {
        let n = by_pid.get(pid).copied().unwrap_or(0);
        b.row(vec![
            pid.to_string(),
            max_open_files(*pid),
            n.to_string(),
            format!("{:.1} MiB", idle[i] as f64 / 1024.0),
            format!("{:.1} MiB", full[i] as f64 / 1024.0),
            if n > 0 {
                format!("{:.1} KiB", (full[i] as f64 - idle[i] as f64) / n as f64)
            } else {
                "–".into()
            },
            format!("{:.1} MiB", after[i] as f64 / 1024.0),
            later
                .iter()
                .map(|(_, a)| format!("{:.0}", a[i] as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    b.row(vec![
        format!("master {}", server.pid),
        max_open_files(server.pid),
        "–".into(),
        format!("{:.1} MiB", master_idle as f64 / 1024.0),
        format!("{:.1} MiB", master_full as f64 / 1024.0),
        "–".into(),
        "–".into(),
        "–".into(),
    ]);
    sec.tables.push((
        format!(
            "(b) {held} of {n_conns} keep-alive connections open and served ({fails} failed) in {}; \
             a normal client meanwhile: {} requests, {} failed, p50 {}, p99 {}",
            ms(opened_in),
            normal.total(),
            normal.failed(),
            ms_opt(normal.percentile(0.5)),
            ms_opt(normal.percentile(0.99))
        ),
        b,
    ));
    sec.check(
        "10,000 concurrent keep-alive connections are served",
        held == n_conns && later_ok && normal.failed() == 0,
        format!(
            "{held} held, {fails} failed; {} more rounds {}; normal client {} failed",
            rounds - 1,
            if later_ok {
                "all served"
            } else {
                "with failures"
            },
            normal.failed()
        ),
    );
    // Growth of the last round against the one before, per worker.
    let last_growth: Vec<f64> = workers
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let n = later.len();
            let prev = if n >= 2 { later[n - 2].1[i] } else { after[i] };
            later
                .last()
                .map_or(0.0, |l| (l.1[i] as f64 - prev as f64) / 1024.0)
        })
        .collect();
    let first_growth: Vec<f64> = workers
        .iter()
        .enumerate()
        .map(|(i, _)| {
            later
                .first()
                .map_or(0.0, |l| (l.1[i] as f64 - after[i] as f64) / 1024.0)
        })
        .collect();
    sec.note(format!(
        "10,000 connections, {rounds} rounds of open-serve-close: worker RSS grew by {} MiB in \
         round 2 and by {} MiB in the last round. The memory is not given back to the system \
         after the connections close (the allocator keeps it); {}.",
        first_growth
            .iter()
            .map(|g| format!("{g:+.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        last_growth
            .iter()
            .map(|g| format!("{g:+.1}"))
            .collect::<Vec<_>>()
            .join(", "),
        if last_growth
            .iter()
            .zip(&first_growth)
            .all(|(l, f)| *l < 8.0 || *l < f / 4.0)
        {
            "the growth levels off, so it is reused, not leaked"
        } else {
            "**it still grows in the last round: a leak is possible**"
        }
    ));
    server.stop(Duration::from_secs(10));
    sec
}

/// Opens `n` keep-alive connections (4 threads), one GET / each; returns the open ones, how
/// many each worker pid answered, and the failures.
fn open_keepalive(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, HashMap<u32, usize>, usize) {
    let per_thread = n / 4;
    let handles: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut conns = Vec::new();
                let mut by_pid: HashMap<u32, usize> = HashMap::new();
                let mut fails = 0;
                let mut buf = Vec::new();
                for _ in 0..per_thread {
                    match connect(addr, Duration::from_secs(5)) {
                        Ok(mut s) => {
                            let r = s
                                .write_all(&get_request("/", false))
                                .map_err(|e| classify(&e))
                                .and_then(|()| read_response(&mut s, &mut buf).map_err(|e| e.fail));
                            match r {
                                Ok(r) if r.status == 200 => {
                                    *by_pid.entry(r.pid.unwrap_or(0)).or_default() += 1;
                                    conns.push(s);
                                }
                                _ => fails += 1,
                            }
                        }
                        Err(_) => fails += 1,
                    }
                }
                (conns, by_pid, fails)
            })
        })
        .collect();
    let mut conns = Vec::new();
    let mut by_pid: HashMap<u32, usize> = HashMap::new();
    let mut fails = 0;
    for h in handles {
        if let Ok((c, b, f)) = h.join() {
            conns.extend(c);
            for (k, v) in b {
                *by_pid.entry(k).or_default() += v;
            }
            fails += f;
        }
    }
    (conns, by_pid, fails)
}

// =========================================================================================
// Scenario 7: signal storms
// =========================================================================================

struct StatusRow {
    pid: u32,
    generation: u64,
    state: String,
}

struct Status {
    master_state: String,
    generation: u64,
    rows: Vec<StatusRow>,
    raw: String,
}

fn forklift_status(ctx: &Ctx, control: &Path) -> Option<Status> {
    let out = Command::new(&ctx.bin)
        .args(["status", "--control"])
        .arg(control)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let raw = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = raw.lines();
    // master pid 2937, running, generation 1, 2 workers, up 3s
    let head = lines.next()?;
    let parts: Vec<&str> = head.split(", ").collect();
    let master_state = parts.get(1)?.to_string();
    let generation = parts.get(2)?.strip_prefix("generation ")?.parse().ok()?;
    lines.next(); // column titles
    let rows = lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(StatusRow {
                pid: f.get(1)?.parse().ok()?,
                generation: f.get(2)?.parse().ok()?,
                state: f.get(3)?.to_string(),
            })
        })
        .collect();
    Some(Status {
        master_state,
        generation,
        rows,
        raw,
    })
}

/// N workers, all ready, of the master's generation, and no other process in the group.
fn consistent(ctx: &Ctx, server: &Server, control: &Path, n: usize) -> Option<Status> {
    let st = forklift_status(ctx, control)?;
    let ok = st.master_state == "running"
        && st.rows.len() == n
        && st
            .rows
            .iter()
            .all(|r| r.state == "ready" && r.generation == st.generation);
    let pids: BTreeSet<u32> = st.rows.iter().map(|r| r.pid).collect();
    let kids: BTreeSet<u32> = children(server.pid).into_iter().collect();
    let group: BTreeSet<u32> = group_members(server.pgid).into_iter().collect();
    let mut expected = pids.clone();
    expected.insert(server.pid);
    (ok && kids == pids && group == expected).then_some(st)
}

fn s7_signal_storms(ctx: &Ctx) -> Section {
    let mut sec = Section::new("7. Signal storms");
    sec.intro.push(
        "2 workers with `--control PATH`, under light load (4 keep-alive connections and 2 \
         connection-per-request threads, each pacing 5 ms). The final state is read with \
         `forklift status --control PATH` and /proc: consistent = the master running, exactly \
         2 workers, all ready and of the master's generation, and no other process in the \
         server's process group."
            .into(),
    );
    let dir = std::env::temp_dir().join(format!("forklift-chaos-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let mut t = Table::new(&[
        "storm",
        "signals sent",
        "generations started",
        "reloads completed",
        "settled after",
        "final state",
        "load: requests / failed (kinds)",
        "processes left",
    ]);
    let start = |name: &str, extra: &[&str]| -> (Server, PathBuf) {
        let control = dir.join(format!("{name}.sock"));
        let c = control.display().to_string();
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--control",
            c.as_str(),
        ];
        args.extend_from_slice(extra);
        let s = Server::start(ctx, name, &args, Opts::default());
        (s, control)
    };
    let light_load = |addr: SocketAddr, seen: &FirstSeen, dur: Duration| {
        let mut a = LoadSpec::new(addr, Mode::KeepAlive, 4, dur);
        a.pace = Some(Duration::from_millis(5));
        let mut b = LoadSpec::new(addr, Mode::PerRequest, 2, dur);
        b.pace = Some(Duration::from_millis(5));
        (Load::start(&a, seen), Load::start(&b, seen))
    };

    // (a) 100 HUPs in a second
    {
        let (mut server, control) = start("s7-hup-storm", &[]);
        sec.command(&server);
        server.ready();
        let addr = server.addr();
        let seen: FirstSeen = Arc::default();
        let (a, b) = light_load(addr, &seen, Duration::from_secs(40));
        thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        for i in 0..100u64 {
            sleep_until(t0 + Duration::from_millis(10 * i));
            send(server.pid, libc::SIGHUP);
        }
        let last = Instant::now();
        let storm_took = last - t0;
        let settled = poll_until(
            last + Duration::from_secs(30),
            Duration::from_millis(50),
            || consistent(ctx, &server, &control, 2).is_some(),
        );
        let settled_after = last.elapsed();
        // keep the load a little longer after settling, then stop it
        thread::sleep(Duration::from_millis(300));
        let mut tally = a.finish();
        tally.merge(b.finish());
        let st = consistent(ctx, &server, &control, 2);
        let generations = server.count_lines("reloading generation=");
        let reloaded = server.count_lines("reloaded generation=");
        let exited = server.count_lines("exited ");
        t.row(vec![
            "100 SIGHUP in 1 s".into(),
            format!("100 in {}", ms(storm_took)),
            generations.to_string(),
            reloaded.to_string(),
            if settled {
                ms(settled_after)
            } else {
                "not within 30 s".into()
            },
            st.as_ref().map_or("inconsistent".into(), |s| {
                format!("{} workers, generation {}", s.rows.len(), s.generation)
            }),
            format!(
                "{} / {} ({})",
                tally.total(),
                tally.failed(),
                tally.breakdown()
            ),
            "–".into(),
        ]);
        sec.check(
            "100 HUPs: no crash, final state consistent",
            settled && alive(server.pid) && server.count_err("panicked") == 0,
            format!(
                "settled {} after the last HUP; {generations} generations started, {reloaded} completed, {exited} old workers exited",
                ms(settled_after)
            ),
        );
        lost_check(
            &mut sec,
            "100 HUPs: no request lost (rolling reloads)",
            &tally,
        );
        if let Some(s) = &st {
            sec.note(format!(
                "After the HUP storm, `forklift status`:\n\n```\n{}```",
                s.raw
            ));
        }
        // then TERM: exit 0, nothing left
        send(server.pid, libc::SIGTERM);
        let st = server.wait_exit(Duration::from_secs(35));
        let left = poll_until(
            Instant::now() + Duration::from_secs(2),
            Duration::from_millis(10),
            || group_members(server.pgid).is_empty(),
        );
        sec.check(
            "then SIGTERM: the master exits 0, no worker left",
            st.is_some_and(|s| s.success()) && left,
            format!(
                "{}; {} process(es) left",
                st.map_or("still running".into(), |s| describe(&s)),
                group_members(server.pgid).len()
            ),
        );
        server.kill();
    }

    // (b) SIGTERM during a reload: right behind the HUP (repeated: the outcome depends on
    // where the just-forked workers are when the TERM reaches them), or once the reload has
    // started (with exec'd workers, whose start takes longer, so the TERM lands before the
    // new generation is ready).
    for back_to_back in [true, false] {
        let reps = if back_to_back { ctx.pick(6, 12) } else { 1 };
        let mut times = Vec::new();
        let mut codes: BTreeMap<String, usize> = BTreeMap::new();
        let (mut total, mut lost_before, mut left_total, mut reload_started, mut reload_done) =
            (0, 0, 0, 0, 0);
        let mut killed_lines = Vec::new();
        for rep in 0..reps {
            let (name, extra): (String, &[&str]) = if back_to_back {
                (
                    format!("s7-term-in-reload-{rep}"),
                    &["--graceful-timeout", "3"],
                )
            } else {
                (
                    "s7-term-in-reload-exec".into(),
                    &["--graceful-timeout", "3", "--spawn", "exec"],
                )
            };
            let (mut server, _control) = start(&name, extra);
            sec.command(&server);
            server.ready();
            let addr = server.addr();
            let seen: FirstSeen = Arc::default();
            let (a, b) = light_load(addr, &seen, Duration::from_secs(10));
            thread::sleep(Duration::from_millis(300));
            send(server.pid, libc::SIGHUP);
            if !back_to_back {
                server.wait_line(|l| l.starts_with("reloading "), Duration::from_secs(5));
            }
            send(server.pid, libc::SIGTERM);
            let t0 = Instant::now();
            let st = server.wait_exit(Duration::from_secs(10));
            times.push(t0.elapsed());
            *codes
                .entry(st.map_or("still running".into(), |s| describe(&s)))
                .or_default() += 1;
            if server
                .wait_line(|l| l.starts_with("reloading "), Duration::from_millis(100))
                .is_some()
            {
                reload_started += 1;
            }
            reload_done += server.count_lines("reloaded ");
            let mut tally = a.finish();
            tally.merge(b.finish());
            total += tally.total();
            // Failures before the stop are losses; after it, refusals are expected.
            lost_before += tally.fails.iter().filter(|f| f.at < t0).count();
            poll_until(
                Instant::now() + Duration::from_secs(2),
                Duration::from_millis(10),
                || group_members(server.pgid).is_empty(),
            );
            left_total += group_members(server.pgid).len();
            killed_lines.extend(
                server
                    .err_lines()
                    .into_iter()
                    .filter(|(_, l)| l.contains("did not stop in time"))
                    .map(|(_, l)| {
                        l.split("forklift::master: ")
                            .nth(1)
                            .unwrap_or(&l)
                            .to_string()
                    }),
            );
            server.kill();
        }
        let (tm, tx) = med_max(&times);
        let slow = times
            .iter()
            .filter(|t| **t > Duration::from_secs(2))
            .count();
        let codes_s = codes
            .iter()
            .map(|(k, v)| format!("{v} × {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        t.row(vec![
            if back_to_back {
                format!("SIGHUP and SIGTERM back to back, {reps} times")
            } else {
                "SIGHUP, SIGTERM once `reloading` is printed (--spawn exec)".into()
            },
            "HUP + TERM".into(),
            reload_started.to_string(),
            reload_done.to_string(),
            format!("exit after {} median, {} max", ms_opt(tm), ms_opt(tx)),
            codes_s.clone(),
            format!("{total} / {lost_before} before TERM"),
            left_total.to_string(),
        ]);
        let variant = if back_to_back {
            "back to back"
        } else {
            "after `reloading`"
        };
        sec.check(
            format!("TERM during a reload ({variant}): exit 0, no leaked worker"),
            codes.len() == 1 && codes.contains_key("exit code 0") && left_total == 0,
            format!("{codes_s}; {left_total} process(es) left"),
        );
        sec.check(
            format!("TERM during a reload ({variant}): a prompt stop (nothing in flight to wait for)"),
            slow == 0,
            if slow == 0 {
                format!("every stop within 2 s (max {})", ms_opt(tx))
            } else {
                format!(
                    "{slow} of {reps} stops waited for the graceful timeout (3 s) and then killed a worker: {}",
                    killed_lines.join("; ")
                )
            },
        );
    }

    // (c) SIGUSR2 during a reload (binary upgrade); without --control first, since the new
    // master would need the control socket too.
    for (with_control, back_to_back) in [(false, true), (false, false), (true, false)] {
        let name = match (with_control, back_to_back) {
            (true, _) => "s7-usr2-in-reload-control",
            (false, true) => "s7-usr2-in-reload",
            (false, false) => "s7-usr2-in-reload-exec",
        };
        let (mut server, control) = if with_control {
            start(name, &["--graceful-timeout", "5", "--spawn", "exec"])
        } else {
            let mut args = vec![
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--graceful-timeout",
                "5",
            ];
            if !back_to_back {
                args.extend(["--spawn", "exec"]);
            }
            let s = Server::start(ctx, name, &args, Opts::default());
            (s, PathBuf::new())
        };
        sec.command(&server);
        server.ready();
        let addr = server.addr();
        let seen: FirstSeen = Arc::default();
        let (a, b) = light_load(addr, &seen, Duration::from_secs(20));
        thread::sleep(Duration::from_millis(300));
        send(server.pid, libc::SIGHUP);
        if !back_to_back {
            server.wait_line(|l| l.starts_with("reloading "), Duration::from_secs(5));
        }
        send(server.pid, libc::SIGUSR2);
        let reloading = server.wait_line(|l| l.starts_with("reloading "), Duration::from_secs(5));
        let t0 = Instant::now();
        let upgrading = server.wait_line(|l| l.starts_with("upgrading "), Duration::from_secs(5));
        let new_master: Option<u32> = upgrading
            .as_ref()
            .and_then(|(_, l)| field(l, "new_master_pid")?.parse().ok());
        // The old master exits once the new one serves (or keeps serving if it failed).
        let mut old_exit = None;
        poll_until(
            Instant::now() + Duration::from_secs(15),
            Duration::from_millis(2),
            || {
                old_exit = server.try_exit();
                old_exit.is_some() || server.count_lines("upgrade failed") > 0
            },
        );
        let took = t0.elapsed();
        let failed_line = server
            .lines()
            .iter()
            .find(|(_, l)| l.starts_with("upgrade failed"))
            .map(|(_, l)| l.clone());
        // Final state: the new master (if it took over) with 2 workers of one generation.
        let mut final_state = String::from("–");
        let mut consistent_end = false;
        let settle = Instant::now() + Duration::from_secs(15);
        while Instant::now() < settle {
            let master = match (old_exit.is_some(), new_master) {
                (true, Some(p)) => p,
                _ => server.pid,
            };
            let kids = children(master);
            let group: BTreeSet<u32> = group_members(server.pgid).into_iter().collect();
            let mut expected: BTreeSet<u32> = kids.iter().copied().collect();
            expected.insert(master);
            let status_ok = if with_control {
                forklift_status(ctx, &control).is_some_and(|s| {
                    s.master_state == "running"
                        && s.rows.len() == 2
                        && s.rows
                            .iter()
                            .all(|r| r.state == "ready" && r.generation == s.generation)
                })
            } else {
                true
            };
            let served = get(addr, "/", Duration::from_secs(1))
                .is_ok_and(|r| r.status == 200 && r.pid.is_some_and(|p| kids.contains(&p)));
            final_state = format!(
                "master {master} ({}), {} workers{}",
                if master == server.pid { "old" } else { "new" },
                kids.len(),
                if group == expected {
                    ""
                } else {
                    ", other processes in the group"
                }
            );
            if alive(master) && kids.len() == 2 && group == expected && status_ok && served {
                consistent_end = true;
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let mut tally = a.finish();
        tally.merge(b.finish());
        let label = match (with_control, back_to_back) {
            (true, _) => "SIGHUP, SIGUSR2 once `reloading` is printed (--spawn exec, --control)",
            (false, true) => "SIGHUP and SIGUSR2 back to back",
            (false, false) => "SIGHUP, SIGUSR2 once `reloading` is printed (--spawn exec)",
        };
        let variant = match (with_control, back_to_back) {
            (true, _) => " (with --control)",
            (false, true) => " (back to back)",
            (false, false) => " (after `reloading`)",
        };
        t.row(vec![
            label.into(),
            "HUP + USR2".into(),
            usize::from(reloading.is_some()).to_string(),
            server.count_lines("reloaded ").to_string(),
            match (&old_exit, &failed_line) {
                (Some(st), _) => format!("old master {} after {}", describe(st), ms(took)),
                (None, Some(l)) => l.clone(),
                (None, None) => "old master still running, no upgrade".into(),
            },
            final_state.clone(),
            format!(
                "{} / {} ({})",
                tally.total(),
                tally.failed(),
                tally.breakdown()
            ),
            "–".into(),
        ]);
        sec.check(
            format!("USR2 during a reload{variant}: no crash, a single master with 2 workers of one generation"),
            reloading.is_some() && consistent_end && server.count_err("panicked") == 0,
            format!("{final_state}; new master {new_master:?}; {}", failed_line.clone().unwrap_or_else(|| "upgrade went through".into())),
        );
        sec.check(
            format!("USR2 during a reload{variant}: the upgrade takes over"),
            old_exit.is_some_and(|s| s.success()) && failed_line.is_none(),
            match (&old_exit, &failed_line) {
                (_, Some(l)) => {
                    let why = server
                        .err_lines()
                        .iter()
                        .find(|(_, l)| l.starts_with("forklift: error:"))
                        .map(|(_, l)| l.clone())
                        .unwrap_or_default();
                    format!("{l}: {why}")
                }
                (Some(st), None) => format!("old master {}", describe(st)),
                (None, None) => "the old master did not exit".into(),
            },
        );
        lost_check(
            &mut sec,
            &format!("USR2 during a reload{variant}: no request lost"),
            &tally,
        );
        // Stop whichever master serves, gracefully, and make sure nothing is left.
        if let Some(p) = new_master {
            if alive(p) {
                send(p, libc::SIGTERM);
            }
        }
        send(server.pid, libc::SIGTERM);
        poll_until(
            Instant::now() + Duration::from_secs(10),
            Duration::from_millis(20),
            || group_members(server.pgid).is_empty(),
        );
        server.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
    sec.tables.push((String::new(), t));
    sec.note(
        "A HUP received during a reload is queued: one more reload runs after the current \
         one (a reload takes a few ms here, so most HUPs still start a generation of their own).",
    );
    sec.note(
        "Keep-alive clients check a pooled connection before reusing it (as HTTP clients do). \
         A request that goes out just as a retiring worker closes that idle connection gets \
         no byte back: HTTP/1.1 allows a client to retry it (RFC 9112, 9.3.1), and such \
         requests are counted apart; every other failure counts as a lost request.",
    );
    sec
}

/// "No request lost": no failure other than the keep-alive close race (see the note).
fn lost_check(sec: &mut Section, what: &str, tally: &Tally) {
    let stale = tally.fails.iter().filter(|f| f.stale).count();
    let lost = tally.fails.len() - stale;
    sec.check(
        what,
        lost == 0,
        format!(
            "{lost} lost of {} requests; {stale} more were sent on a kept-alive connection that a retiring worker closed at that moment ({})",
            tally.total(),
            tally.breakdown()
        ),
    );
}
