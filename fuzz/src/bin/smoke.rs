//! `smoke`: a fuzz runner that needs no nightly compiler and no libFuzzer.
//!
//! It feeds each target of `forklift_fuzz` (the same properties the libFuzzer targets check)
//! with seeds mutated at random (bit flips, splices, dictionary tokens, long repeats) for a
//! bounded time, catching panics. With `--cli PATH` it also runs the `forklift` binary at
//! PATH with fuzzed command lines and environments (LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES,
//! the worker variables), each bounded in time, and counts as a crash an exit by a signal,
//! exit code 101 (a Rust panic) or "panicked at" on stderr.
//!
//! ```text
//! cargo run --release --no-default-features --bin smoke -- --seconds 20 [--cli target/release/forklift]
//! ```
//!
//! Prints one line per target: `fuzz target=NAME engine=stable execs=N crashes=N seconds=S`,
//! and exits 1 if anything crashed (the inputs go to `--artifacts`, default `artifacts/`).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use forklift_fuzz::{seeds, would_resolve, DICTIONARY, TARGETS};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const MAX_LEN: usize = 4096;

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(6) {
        let len = input.len();
        match rng.below(10) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(8)).min(len);
                input.drain(a..b);
            }
            4 | 5 => {
                let token = rng.pick(DICTIONARY).as_bytes();
                let i = rng.below(len + 1);
                input.splice(i..i, token.iter().copied());
            }
            6 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                let piece = input[a..b].to_vec();
                let i = rng.below(len + 1);
                input.splice(i..i, piece);
            }
            7 => input.truncate(rng.below(len + 1)),
            8 => {
                // a long run of one token: sizes, overflow, quadratic behaviour
                let token = rng.pick(DICTIONARY).as_bytes().to_vec();
                let times = 1 + rng.below(300);
                let i = rng.below(len + 1);
                let run: Vec<u8> = token
                    .iter()
                    .copied()
                    .cycle()
                    .take(token.len() * times)
                    .collect();
                input.splice(i..i, run);
            }
            _ => {
                let i = rng.below(len + 1);
                let digits = rng.next().to_string();
                input.splice(i..i, digits.bytes());
            }
        }
    }
    input.truncate(MAX_LEN);
}

/// The message of the last panic, recorded by the silent panic hook.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

struct Outcome {
    name: String,
    execs: u64,
    crashes: u64,
    seconds: f64,
    notes: Vec<String>,
}

fn fuzz_in_process(
    name: &str,
    f: fn(&[u8]),
    budget: Duration,
    rng: &mut Rng,
    artifacts: &Path,
) -> Outcome {
    let corpus = seeds(name);
    let start = Instant::now();
    let mut execs = 0u64;
    let mut crashes = 0u64;
    let mut notes = Vec::new();
    let mut input = Vec::new();
    while start.elapsed() < budget {
        for _ in 0..256 {
            if rng.chance(10) || corpus.is_empty() {
                let len = rng.below(64);
                input.clear();
                input.extend((0..len).map(|_| rng.next() as u8));
            } else {
                input.clear();
                let pick: &Vec<u8> = rng.pick(corpus.as_slice());
                input.extend_from_slice(pick);
                mutate(rng, &mut input);
            }
            execs += 1;
            let data = input.clone();
            if std::panic::catch_unwind(move || f(&data)).is_err() {
                crashes += 1;
                let msg = LAST_PANIC.lock().unwrap().take().unwrap_or_default();
                let file = save_artifact(artifacts, name, &input);
                if notes.len() < 5 {
                    notes.push(format!("{msg} (input saved to {})", file.display()));
                }
            }
        }
    }
    Outcome {
        name: name.to_string(),
        execs,
        crashes,
        seconds: start.elapsed().as_secs_f64(),
        notes,
    }
}

fn save_artifact(dir: &Path, name: &str, input: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in input {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    let file = dir.join(format!("crash-{name}-{h:016x}"));
    let _ = std::fs::write(&file, input);
    file
}

// ---------------------------------------------------------------------------------------
// The command line and environment of the real binary
// ---------------------------------------------------------------------------------------

fn fuzz_string(rng: &mut Rng, seeds: &[&str]) -> String {
    let mut bytes = rng.pick(seeds).as_bytes().to_vec();
    if rng.chance(50) {
        mutate(rng, &mut bytes);
    }
    bytes.truncate(200);
    // argv and the environment cannot hold NUL.
    bytes.retain(|&b| b != 0);
    String::from_utf8_lossy(&bytes).into_owned()
}

const SECS: &[&str] = &[
    "0",
    "1",
    "2.5",
    "-1",
    "1e9",
    "1e10",
    "inf",
    "NaN",
    "-0",
    "0x10",
    "1e-400",
    "",
    " 3",
    "30s",
    "1_000",
    "4294967296",
    "0.0000001",
];
const COUNTS: &[&str] = &[
    "0",
    "1",
    "3",
    "-1",
    "",
    "x",
    "18446744073709551615",
    "18446744073709551616",
    "4294967295",
    " 2",
    "+5",
    "1.5",
];
/// `--workers` values: never more than 3, whatever parses (each is a process).
const WORKERS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "",
    "x",
    "99999999999999999999999",
    "+1",
    "1.0",
    " 1",
];

/// A `--listen` value: fuzzed, then made safe: nothing is bound outside loopback or the
/// scratch directory, and no name is resolved.
fn listen_value(rng: &mut Rng, scratch: &Path) -> String {
    let corpus = seeds("listen_addr");
    let mut bytes = rng.pick(corpus.as_slice()).clone();
    if rng.chance(60) {
        mutate(rng, &mut bytes);
    }
    bytes.truncate(200);
    bytes.retain(|&b| b != 0);
    let s = String::from_utf8_lossy(&bytes).into_owned();
    if would_resolve(&s) {
        return "127.0.0.1:0".into();
    }
    match s.parse::<forklift::ListenAddr>() {
        Err(_) => s, // refused before anything is bound: the interesting case
        Ok(forklift::ListenAddr::Unix(_)) => {
            format!(
                "unix:{}",
                scratch.join(format!("s{}.sock", rng.below(1000))).display()
            )
        }
        Ok(forklift::ListenAddr::Tcp { addr, .. }) if addr.is_ipv6() => "[::1]:0".into(),
        Ok(_) => "127.0.0.1:0".into(),
    }
}

struct CliCase {
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Put a real listening socket at fd 3 and set LISTEN_PID to the process's own pid.
    with_socket: bool,
}

fn cli_case(rng: &mut Rng, scratch: &Path) -> CliCase {
    let mut args = vec!["serve".to_string()];
    let mut has_listen = false;
    let mut has_workers = false;
    for _ in 0..rng.below(6) {
        match rng.below(14) {
            0 | 1 => {
                args.push("--listen".into());
                args.push(listen_value(rng, scratch));
                has_listen = true;
            }
            2 => {
                args.push("--workers".into());
                args.push(fuzz_string(rng, WORKERS));
                if args
                    .last()
                    .is_some_and(|w| w.trim().parse::<u64>().map_or(true, |n| n > 3))
                {
                    // keep the process count bounded
                    *args.last_mut().unwrap() = "x".into();
                }
                has_workers = true;
            }
            3 => {
                let flag = *rng.pick(&[
                    "--graceful-timeout",
                    "--recover-window",
                    "--boot-timeout",
                    "--worker-timeout",
                    "--header-read-timeout",
                ]);
                args.push(flag.into());
                args.push(fuzz_string(rng, SECS));
            }
            4 => {
                let flag = *rng.pick(&[
                    "--recover-threshold",
                    "--backlog",
                    "--max-requests",
                    "--max-requests-jitter",
                ]);
                args.push(flag.into());
                args.push(fuzz_string(rng, COUNTS));
            }
            5 => {
                args.push("--spawn".into());
                args.push(fuzz_string(rng, &["fork", "exec", "", "FORK", "spawn"]));
            }
            6 => args.push((*rng.pick(&["--reuse-port", "--access-log", "--pin-workers"])).into()),
            7 => args.push(fuzz_string(
                rng,
                &[
                    "--",
                    "-",
                    "--unknown",
                    "-w",
                    "-l",
                    "--listen=",
                    "--workers=1",
                    "serve",
                    "-h",
                ],
            )),
            8 => {
                // the control socket, in the scratch directory only
                args.push("--control".into());
                args.push(
                    scratch
                        .join(format!("c{}.sock", rng.below(1000)))
                        .display()
                        .to_string(),
                );
            }
            _ => {}
        }
    }
    if !has_listen {
        args.push("--listen".into());
        args.push("127.0.0.1:0".into());
    }
    if !has_workers {
        args.push("--workers".into());
        args.push("1".into());
    }
    let mut env = Vec::new();
    let with_socket = rng.chance(35);
    if with_socket || rng.chance(20) {
        env.push((
            "LISTEN_FDS".into(),
            fuzz_string(rng, &["1", "0", "2", "1025", "-1", "x", " 1", ""]),
        ));
        if rng.chance(70) {
            env.push((
                "LISTEN_FDNAMES".into(),
                fuzz_string(
                    rng,
                    &[
                        "forklift.0.shared",
                        "forklift.0.0",
                        "http",
                        "a:b:c",
                        "",
                        "forklift.9.9",
                        "forklift.0.18446744073709551616",
                    ],
                ),
            ));
        }
        if !with_socket {
            env.push((
                "LISTEN_PID".into(),
                fuzz_string(rng, &["1", "0", "x", "", "4294967296"]),
            ));
        }
    }
    if rng.chance(15) {
        // As if started as an exec'd worker.
        for (k, seeds) in [
            (
                "FORKLIFT_WORKER_ID",
                &["0", "1", "x", "", "18446744073709551616"][..],
            ),
            ("FORKLIFT_GENERATION", &["1", "0", "x", ""][..]),
            (
                "FORKLIFT_MASTER_PID",
                &["1", "0", "x", "", "4294967295"][..],
            ),
            (
                "FORKLIFT_STATUS_FD",
                &["3", "4", "0", "-1", "x", "99999", ""][..],
            ),
        ] {
            if rng.chance(80) {
                env.push((k.into(), fuzz_string(rng, seeds)));
            }
        }
    }
    CliCase {
        args,
        env,
        with_socket,
    }
}

#[derive(Debug, PartialEq)]
enum CliResult {
    Rejected,
    Served,
    Hung,
    Crashed(String),
}

fn run_cli_case(
    bin: &Path,
    case: &CliCase,
    scratch: &Path,
    socket: &std::net::TcpListener,
) -> CliResult {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let (Ok(out), Ok(err)) = (
        std::fs::File::create(&out_path),
        std::fs::File::create(&err_path),
    ) else {
        return CliResult::Crashed("cannot create scratch files".into());
    };
    let mut cmd = if case.with_socket {
        // sh's exec keeps the pid, so $$ is the pid forklift will have.
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg("LISTEN_PID=$$ exec \"$0\" \"$@\"").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(&case.args)
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env("RUST_BACKTRACE", "0")
        .env("NO_COLOR", "1")
        .current_dir(scratch)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    for (k, v) in &case.env {
        cmd.env(k, v);
    }
    let fd = socket.as_raw_fd();
    let with_socket = case.with_socket;
    // SAFETY: only async-signal-safe calls (prctl, dup2) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if with_socket && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return CliResult::Crashed(format!("cannot start {}: {e}", bin.display())),
    };
    let pgid = child.id() as i32;
    let start = Instant::now();
    let mut result = None;
    let mut status = None;
    while start.elapsed() < Duration::from_millis(2000) {
        if let Ok(Some(st)) = child.try_wait() {
            status = Some(st);
            break;
        }
        if start.elapsed() > Duration::from_millis(20) {
            let mut s = String::new();
            if let Ok(mut f) = std::fs::File::open(&out_path) {
                let _ = f.read_to_string(&mut s);
            }
            if s.starts_with("ready ") || s.contains("\nready ") {
                result = Some(CliResult::Served);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: killpg on the group this child leads (not reaped yet, or just reaped: the
    // group's other members keep the id from being reused).
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    if status.is_none() {
        status = child.wait().ok();
    }
    let mut stderr = String::new();
    if let Ok(mut f) = std::fs::File::open(&err_path) {
        let _ = f.read_to_string(&mut stderr);
    }
    if let Some(line) = stderr.lines().find(|l| l.contains("panicked at")) {
        return CliResult::Crashed(format!("panic: {line}"));
    }
    match (result, status) {
        (Some(r), _) => r,
        (None, Some(st)) if st.code() == Some(101) => CliResult::Crashed("exit code 101".into()),
        (None, Some(st)) if st.code().is_some() => CliResult::Rejected,
        (None, Some(st)) if start.elapsed() < Duration::from_millis(2000) => {
            CliResult::Crashed(format!("killed by signal {:?}", st.signal()))
        }
        _ => CliResult::Hung,
    }
}

fn fuzz_cli(bin: &Path, budget: Duration, rng: &mut Rng, artifacts: &Path) -> Outcome {
    let scratch = std::env::temp_dir().join(format!("forklift-fuzz-cli-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let start = Instant::now();
    let (mut execs, mut crashes) = (0u64, 0u64);
    let (mut rejected, mut served, mut hung) = (0u64, 0u64, 0u64);
    let mut notes = Vec::new();
    while start.elapsed() < budget {
        let case = cli_case(rng, &scratch);
        execs += 1;
        match run_cli_case(bin, &case, &scratch, &socket) {
            CliResult::Rejected => rejected += 1,
            CliResult::Served => served += 1,
            CliResult::Hung => hung += 1,
            CliResult::Crashed(why) => {
                crashes += 1;
                let line = format!("{why}: env {:?} args {:?}", case.env, case.args);
                save_artifact(artifacts, "cli", line.as_bytes());
                if notes.len() < 5 {
                    notes.push(line);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    notes.insert(
        0,
        format!("rejected={rejected} served={served} hung={hung}"),
    );
    Outcome {
        name: "cli".into(),
        execs,
        crashes,
        seconds: start.elapsed().as_secs_f64(),
        notes,
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: smoke [--seconds N] [--targets a,b,...] [--cli PATH/TO/forklift] [--seed N] \
         [--artifacts DIR] [--write-seeds DIR]\n targets: listen_addr, listen_fds, \
         status_messages, fd_name, cli (needs --cli)"
    );
    std::process::exit(2)
}

fn main() {
    let mut seconds = 20.0f64;
    let mut targets: Option<Vec<String>> = None;
    let mut cli: Option<PathBuf> = None;
    let mut seed: Option<u64> = None;
    let mut artifacts = PathBuf::from("artifacts");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--seconds" => seconds = val().parse().unwrap_or_else(|_| usage()),
            "--targets" => targets = Some(val().split(',').map(str::to_string).collect()),
            "--cli" => {
                let p = PathBuf::from(val());
                cli = Some(p.canonicalize().unwrap_or_else(|e| {
                    eprintln!("smoke: --cli {}: {e}", p.display());
                    std::process::exit(2)
                }));
            }
            "--seed" => seed = Some(val().parse().unwrap_or_else(|_| usage())),
            "--artifacts" => artifacts = PathBuf::from(val()),
            "--write-seeds" => {
                let dir = PathBuf::from(val());
                for (name, _) in TARGETS {
                    let d = dir.join(name);
                    std::fs::create_dir_all(&d).expect("create seed dir");
                    for (i, s) in seeds(name).iter().enumerate() {
                        std::fs::write(d.join(format!("seed-{i}")), s).expect("write seed");
                    }
                }
                return;
            }
            _ => usage(),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    });
    let mut rng = Rng(seed);
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    if cli.is_some() {
        names.push("cli".into());
    }
    if let Some(t) = targets {
        names.retain(|n| t.contains(n));
    }
    if names.is_empty() {
        usage();
    }
    std::panic::set_hook(Box::new(|info| {
        *LAST_PANIC.lock().unwrap() = Some(info.to_string());
    }));
    let per = Duration::from_secs_f64(seconds / names.len() as f64);
    let results = Arc::new(Mutex::new(Vec::new()));
    println!(
        "fuzz seed={seed} seconds={seconds} targets={}",
        names.join(",")
    );
    for name in &names {
        let outcome = if name == "cli" {
            fuzz_cli(cli.as_deref().unwrap(), per, &mut rng, &artifacts)
        } else {
            let f = TARGETS.iter().find(|(n, _)| n == name).unwrap().1;
            fuzz_in_process(name, f, per, &mut rng, &artifacts)
        };
        println!(
            "fuzz target={} engine=stable execs={} crashes={} seconds={:.1}",
            outcome.name, outcome.execs, outcome.crashes, outcome.seconds
        );
        for n in &outcome.notes {
            println!("  {}: {n}", outcome.name);
        }
        results.lock().unwrap().push(outcome);
    }
    let crashed: u64 = results.lock().unwrap().iter().map(|o| o.crashes).sum();
    std::process::exit(if crashed > 0 { 1 } else { 0 });
}
