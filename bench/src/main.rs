//! `forklift-bench`: forklift against nginx and fasthttp, side by side, in interleaved rounds.
//!
//! Run it through `bench/run`, which builds forklift in release mode first. See
//! bench/README.md for what the figures mean.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::Parser;
use forklift_bench::clock::{file_stamp, utc_date_time};
use forklift_bench::machine::{cpu_model, loadavg, read_trim};
use forklift_bench::procs;
use forklift_bench::run::{self, Plan, Run, ServerKind, ServerSpec, Tool, Workload, SERVERS};
use forklift_bench::{chart, docroot, report, tls};
use forklift_testkit::groups;

/// Benchmark forklift against its peers (nginx, fasthttp) and the ceiling on 127.0.0.1.
///
/// Each round runs every workload on every selected server in turn, each time on a fresh
/// server; the report gives medians and min–max over the rounds.
#[derive(Debug, Parser)]
#[command(name = "forklift-bench")]
struct Args {
    /// Short run: 1 round, 20000 requests for conn, 3 s for the wrk workloads; by default only
    /// conn, keepalive and sleep
    #[arg(long, conflicts_with = "full")]
    quick: bool,

    /// Full run (the default): 3 rounds, 100000 requests for conn, 10 s for the wrk workloads;
    /// every workload
    #[arg(long)]
    full: bool,

    /// Number of rounds [default: 3 full, 1 quick]; full mode needs at least 3
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    rounds: Option<u16>,

    /// Servers to run, comma-separated [default: all]: forklift, forklift-reuseport,
    /// forklift-pinned, forklift-single, nginx, nginx-reuseport, nginx-deferred, fasthttp-prefork,
    /// fasthttp-prefork-reuseport, fasthttp-single, ceiling (canned bytes for every request
    /// head and no HTTP work: the most this machine allows with one recv and one send per
    /// request; it needs no peers)
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    servers: Vec<String>,

    /// Workloads to run, comma-separated [default: all when full, conn,keepalive,sleep when
    /// quick]: conn, keepalive, sleep, static-small, static-big, idle, tls-ka, tls-resume,
    /// tls-full, h2, h2c
    #[arg(long, value_delimiter = ',', value_name = "A,B,...")]
    workloads: Vec<String>,

    /// Requests per conn run (oha -n), overriding the mode's
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,

    /// Requests per h2 and h2c run (h2load -n) [default: 1000000 full, 200000 quick]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    h2_requests: Option<u64>,

    /// Seconds per keepalive, sleep, static-small, static-big and tls-* run (wrk -d),
    /// overriding the mode's
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: Option<u64>,

    /// Connections the idle workload holds (at most 19000: nginx-static.conf.in lets one
    /// nginx worker take 20000)
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=19_000))]
    idle_connections: u64,

    /// Directory for the results [default: bench/results in the repository]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,

    /// The forklift repository [default: the one this binary was built from]
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = ctrlc::set_handler(|| {
        eprintln!("\nforklift-bench: interrupted; stopping servers and load generators");
        groups::interrupt_all();
        std::process::exit(130);
    }) {
        eprintln!("forklift-bench: warning: cannot handle Ctrl-C: {e}");
    }
    let code = match bench(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("forklift-bench: error: {e}");
            ExitCode::FAILURE
        }
    };
    if groups::interrupted() {
        // The Ctrl-C handler is stopping everything and then exits the process.
        loop {
            std::thread::park();
        }
    }
    // Nothing should be left, but make sure of it.
    groups::interrupt_all();
    code
}

fn bench(args: Args) -> Result<ExitCode, String> {
    let quick = args.quick;
    let rounds = args.rounds.map_or(if quick { 1 } else { 3 }, usize::from);
    if !quick && rounds < 3 {
        return Err("full mode runs at least 3 rounds; use --quick for fewer".into());
    }

    let repo = match args.repo {
        Some(r) => r,
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("no repository root")?
            .to_path_buf(),
    };
    let repo = repo
        .canonicalize()
        .map_err(|e| format!("{}: {e}", repo.display()))?;
    let out_dir = args.out.unwrap_or_else(|| repo.join("bench/results"));
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| repo.join("target/release"));
    let forklift = [
        exe_dir.join("forklift"),
        repo.join("target/release/forklift"),
    ]
    .into_iter()
    .find(|p| procs::is_executable(p))
    .ok_or("target/release/forklift is missing: build it (bench/run does)")?;
    // Built with this harness (`cargo build -p forklift-bench` builds every bin of it).
    let ceiling = [
        exe_dir.join("forklift-ceiling"),
        repo.join("target/release/forklift-ceiling"),
    ]
    .into_iter()
    .find(|p| procs::is_executable(p));

    let mut notices = Vec::new();

    // Servers.
    let wanted: Vec<ServerSpec> = if args.servers.is_empty() {
        SERVERS.to_vec()
    } else {
        args.servers
            .iter()
            .map(|name| {
                SERVERS
                    .iter()
                    .find(|s| s.name == name.trim())
                    .copied()
                    .ok_or_else(|| format!("unknown server {name:?}; known: {}", names()))
            })
            .collect::<Result<_, _>>()?
    };
    let serve_help = output_text(Command::new(&forklift).args(["serve", "--help"]));
    let peers_dir = repo.join("../shared/peers");
    let peers_start = peers_dir.join("start.sh");
    let peers_ready = peers_available(&peers_start);
    let mut servers = Vec::new();
    for s in wanted {
        match s.kind {
            ServerKind::Forklift(extra) => {
                if let Some(flag) = extra
                    .iter()
                    .find(|a| a.starts_with("--") && !serve_help.contains(**a))
                {
                    let n = format!(
                        "{} skipped: this forklift has no `serve {flag}` yet",
                        s.name
                    );
                    eprintln!("forklift-bench: {n}");
                    notices.push(n);
                    continue;
                }
            }
            ServerKind::Ceiling => {
                if ceiling.is_none() {
                    let n = format!(
                        "{} skipped: forklift-ceiling is missing next to forklift-bench \
                         (cargo build --release -p forklift-bench builds it)",
                        s.name
                    );
                    eprintln!("forklift-bench: {n}");
                    notices.push(n);
                    continue;
                }
            }
            ServerKind::Peer | ServerKind::NginxPeer(_) | ServerKind::NginxWith(_) => {
                if let Err(why) = &peers_ready {
                    let n = format!("{} skipped: {why}", s.name);
                    eprintln!("forklift-bench: {n}");
                    notices.push(n);
                    continue;
                }
            }
        }
        servers.push(s);
    }
    if servers.is_empty() {
        return Err("no server to run".into());
    }

    // Workloads and their tools.
    let mut workloads: Vec<Workload> = if args.workloads.is_empty() {
        if quick {
            Workload::QUICK.to_vec()
        } else {
            Workload::ALL.to_vec()
        }
    } else {
        args.workloads
            .iter()
            .map(|w| {
                Workload::parse(w.trim()).ok_or_else(|| {
                    format!(
                        "unknown workload {w:?}; known: {}",
                        Workload::ALL.map(Workload::name).join(", ")
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    workloads.dedup();
    let oha = find_oha();
    let wrk = procs::on_path("wrk");
    let h2load = procs::on_path("h2load");
    let missing = |tool: Tool| match tool {
        Tool::Oha => oha
            .is_none()
            .then_some("oha not found (cargo install oha --locked)"),
        Tool::Wrk => wrk
            .is_none()
            .then_some("wrk not found (../shared/peers/setup.sh installs it)"),
        Tool::H2load => h2load
            .is_none()
            .then_some("h2load not found (apt-get install nghttp2-client; bench/run does)"),
        Tool::Harness => None,
    };
    // The TLS and HTTP/2 workloads: the run's certificate, wrk's session shim, curl.
    let target_dir = exe_dir
        .parent()
        .map_or_else(|| repo.join("target"), Path::to_path_buf);
    let log_dir = target_dir.join("bench-logs");
    let tls_files = tls::Files::under(&log_dir.join("tls"));
    let tls_setup = if workloads.iter().any(|w| w.tls_or_h2()) {
        let curl = procs::on_path("curl")
            .map(|_| ())
            .ok_or_else(|| "curl not found (apt-get install curl)".to_string());
        let cert = curl.and_then(|()| tls::make_certificate(&tls_files));
        let shim = if workloads.iter().any(|w| w.handshakes()) {
            tls::build_shim(&tls_files)
        } else {
            Ok(())
        };
        if cert.is_ok() {
            notices.push(format!(
                "TLS certificate of both servers: ECDSA P-256, self-signed for 127.0.0.1 and \
                 localhost, made by this run with openssl: {}",
                tls_files.cert.display()
            ));
        }
        Some((cert, shim))
    } else {
        None
    };
    let tls_missing = |w: Workload| -> Option<String> {
        let (cert, shim) = tls_setup.as_ref()?;
        if let (true, Err(e)) = (w.tls_or_h2(), cert) {
            return Some(e.clone());
        }
        if let (true, Err(e)) = (w.handshakes(), shim) {
            return Some(format!("wrk's session shim: {e}"));
        }
        None
    };
    let mut runnable = Vec::new();
    for w in workloads {
        match missing(w.tool())
            .map(str::to_string)
            .or_else(|| tls_missing(w))
        {
            Some(why) => {
                let n = format!("{} skipped: {why}", w.name());
                eprintln!("forklift-bench: {n}");
                notices.push(n);
            }
            None => runnable.push(w),
        }
    }
    let mut workloads = runnable;
    if workloads.is_empty() {
        return Err("no workload to run".into());
    }
    for w in &workloads {
        let skipped: Vec<String> = servers
            .iter()
            .filter_map(|s| s.skip_reason(*w).map(|why| format!("{} ({why})", s.name)))
            .collect();
        if !skipped.is_empty() {
            notices.push(format!("{}: skipped {}", w.name(), skipped.join(", ")));
        }
    }

    let files = workloads.iter().any(|w| w.serves_files());
    let docroot = if files {
        std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
        let root = docroot::create(&log_dir).map_err(|e| {
            format!(
                "cannot write the document root in {}: {e}",
                log_dir.display()
            )
        })?;
        notices.push(format!(
            "document root of the static workloads: {} (4k.bin, 1m.bin: random bytes)",
            root.display()
        ));
        root
    } else {
        log_dir.join("docroot")
    };
    let idle_connections = args.idle_connections as usize;
    if workloads.contains(&Workload::Idle) {
        // The harness holds every connection and each server may hold them all in one worker;
        // the servers inherit the harness's limit (nginx sets its own, worker_rlimit_nofile).
        let want = (idle_connections as u64 + 1024).max(20_000);
        match procs::raise_nofile(want) {
            Ok((old, new)) if new >= idle_connections as u64 + 256 => {
                notices.push(format!(
                    "idle: RLIMIT_NOFILE of the harness and the servers it starts {}",
                    if old == new {
                        format!("{new} (already enough)")
                    } else {
                        format!("raised from {old} to {new}")
                    }
                ));
            }
            Ok((_, new)) => {
                let n = format!(
                    "idle skipped: RLIMIT_NOFILE is {new}, too few for {idle_connections} \
                     connections (raise the hard limit)"
                );
                eprintln!("forklift-bench: {n}");
                notices.push(n);
                workloads.retain(|w| *w != Workload::Idle);
            }
            Err(e) => {
                let n = format!("idle skipped: cannot read or raise RLIMIT_NOFILE: {e}");
                eprintln!("forklift-bench: {n}");
                notices.push(n);
                workloads.retain(|w| *w != Workload::Idle);
            }
        }
        if workloads.is_empty() {
            return Err("no workload to run".into());
        }
    }

    let plan = Plan {
        rounds,
        servers,
        workloads,
        forklift: forklift.clone(),
        ceiling: ceiling.unwrap_or_else(|| "forklift-ceiling".into()),
        peers_start,
        oha: oha.clone().unwrap_or_else(|| "oha".into()),
        wrk: wrk.clone().unwrap_or_else(|| "wrk".into()),
        h2load: h2load.clone().unwrap_or_else(|| "h2load".into()),
        h2_requests: args
            .h2_requests
            .unwrap_or(if quick { 200_000 } else { 1_000_000 }),
        tls: tls_files,
        conn_requests: args
            .requests
            .unwrap_or(if quick { 20_000 } else { 100_000 }),
        wrk_secs: args.duration.unwrap_or(if quick { 3 } else { 10 }),
        idle_connections,
        docroot,
        log_dir,
    };

    let mut tools = vec![format!("forklift {}", forklift.display())];
    if let Some(o) = &oha {
        tools.push(first_line(&output_text(Command::new(o).arg("--version"))));
    }
    if let Some(w) = &wrk {
        let v = output_text(Command::new(w).arg("-v"));
        tools.push(
            first_line(&v)
                .split(" Copyright")
                .next()
                .unwrap_or("wrk")
                .trim()
                .to_string(),
        );
    }
    if let (Some(h), true) = (
        &h2load,
        plan.workloads.iter().any(|w| w.tool() == Tool::H2load),
    ) {
        tools.push(first_line(&output_text(Command::new(h).arg("--version"))));
    }
    if plan.workloads.iter().any(|w| w.tls_or_h2()) {
        tools.push(first_line(&output_text(
            Command::new("openssl").arg("version"),
        )));
    }
    if plan.servers.iter().any(|s| s.name.starts_with("nginx")) {
        tools.push(first_line(&output_text(Command::new("nginx").arg("-v"))));
    }

    let started = std::time::SystemTime::now();
    let mut meta = report::Meta {
        date_utc: utc_date_time(started),
        command: std::env::var("FORKLIFT_BENCH_COMMAND")
            .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" ")),
        mode: if quick { "quick" } else { "full" }.into(),
        rounds,
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpu_model: cpu_model(),
        loadavg_before: loadavg(),
        loadavg_after: String::new(),
        tools,
        load_commands: plan
            .workloads
            .iter()
            .map(|&w| {
                let text = match w.tool() {
                    Tool::Harness => plan.idle_text(),
                    Tool::Oha | Tool::Wrk | Tool::H2load => {
                        format!("`{}`", load_command_text(&plan, w))
                    }
                };
                (w, text)
            })
            .collect(),
        notices,
    };

    eprintln!(
        "forklift-bench: {} mode, {} round(s), servers {}, workloads {}; load average {}",
        meta.mode,
        rounds,
        plan.servers
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(","),
        plan.workloads
            .iter()
            .map(|w| w.name())
            .collect::<Vec<_>>()
            .join(","),
        meta.loadavg_before,
    );
    let runs = run::run_all(&plan);
    if groups::interrupted() {
        // The Ctrl-C handler is ending the process; leave the last results as they were.
        return Err("interrupted; no results written".into());
    }
    meta.loadavg_after = loadavg();

    write_results(&out_dir, &meta, &runs, &plan, started)?;
    let all_failed = runs
        .iter()
        .all(|r| matches!(r.outcome, run::Outcome::Failed(_)));
    Ok(if all_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn write_results(
    out_dir: &Path,
    meta: &report::Meta,
    runs: &[Run],
    plan: &Plan,
    started: std::time::SystemTime,
) -> Result<(), String> {
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let write = |name: &str, text: &str| {
        let p = out_dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let md = report::markdown(meta, runs, &plan.servers, &plan.workloads);
    println!("{md}");
    write("latest.md", &md)?;
    write(&format!("{}.md", file_stamp(started)), &md)?;
    let json = serde_json::to_string_pretty(&report::RawResults { meta, runs })
        .map_err(|e| e.to_string())?;
    write("latest.json", &json)?;
    let svg = out_dir.join("latest.svg");
    if let Err(e) = chart::svg(&svg, meta, runs, &plan.servers, &plan.workloads) {
        eprintln!("forklift-bench: warning: {e}");
    }
    eprintln!(
        "forklift-bench: wrote {}/latest.md, latest.json, latest.svg and {}.md",
        out_dir.display(),
        file_stamp(started)
    );
    Ok(())
}

fn names() -> String {
    SERVERS
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether ../shared/peers/setup.sh has run: its Go peer is built and nginx is installed.
fn peers_available(start: &Path) -> Result<(), String> {
    if !start.exists() {
        return Err(format!("{} not found", start.display()));
    }
    let home = std::env::var_os("PEERS_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/forklift-peers")))
        .ok_or("no HOME")?;
    if !home.join("fasthttp-greet").exists() {
        return Err(format!(
            "{} is missing: run ../shared/peers/setup.sh",
            home.join("fasthttp-greet").display()
        ));
    }
    if procs::on_path("nginx").is_none() {
        return Err("nginx is not on PATH: run ../shared/peers/setup.sh".into());
    }
    Ok(())
}

fn find_oha() -> Option<PathBuf> {
    procs::on_path("oha").or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
        let p = cargo_home.join("bin/oha");
        procs::is_executable(&p).then_some(p)
    })
}

/// A command's stdout and stderr together (empty if it cannot run).
fn output_text(cmd: &mut Command) -> String {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) => {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        }
        Err(_) => String::new(),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// The load generator's command line, with PORT for the port (empty for the idle workload).
fn load_command_text(plan: &Plan, w: Workload) -> String {
    let Some((prog, args)) = plan.load_command(w, 0) else {
        return String::new();
    };
    let prog = prog.file_name().map_or_else(
        || prog.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            let a = a.replace("127.0.0.1:0", "127.0.0.1:PORT");
            if a.contains('?') || a.contains(' ') {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect();
    let env: String = plan
        .load_env(w)
        .into_iter()
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    format!("{env}{prog} {}", args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_name_is_unique_and_forklift_comes_first() {
        assert_eq!(SERVERS[0].name, report::REFERENCE);
        let mut names: Vec<_> = SERVERS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SERVERS.len());
    }

    #[test]
    fn load_commands_match_the_seeds() {
        let plan = Plan {
            rounds: 1,
            servers: SERVERS.to_vec(),
            workloads: Workload::ALL.to_vec(),
            forklift: "forklift".into(),
            ceiling: "forklift-ceiling".into(),
            peers_start: "start.sh".into(),
            oha: "/x/oha".into(),
            wrk: "/usr/bin/wrk".into(),
            h2load: "/usr/bin/h2load".into(),
            h2_requests: 1_000_000,
            tls: forklift_bench::tls::Files::under(Path::new("/t")),
            conn_requests: 100_000,
            wrk_secs: 10,
            idle_connections: 10_000,
            docroot: "/tmp/docroot".into(),
            log_dir: "/tmp".into(),
        };
        assert_eq!(
            load_command_text(&plan, Workload::Conn),
            "oha -c 500 -n 100000 --disable-keepalive --no-tui --output-format json http://127.0.0.1:PORT/"
        );
        assert_eq!(
            load_command_text(&plan, Workload::Keepalive),
            "wrk -t 2 -c 512 -d 10 --latency http://127.0.0.1:PORT/"
        );
        assert_eq!(
            load_command_text(&plan, Workload::Sleep),
            "wrk -t 2 -c 512 -d 10 --latency 'http://127.0.0.1:PORT/sleep?ms=100'"
        );
        assert_eq!(
            load_command_text(&plan, Workload::StaticSmall),
            "wrk -t 2 -c 256 -d 10 --latency http://127.0.0.1:PORT/4k.bin"
        );
        assert_eq!(
            load_command_text(&plan, Workload::StaticBig),
            "wrk -t 2 -c 32 -d 10 --latency http://127.0.0.1:PORT/1m.bin"
        );
        assert_eq!(load_command_text(&plan, Workload::Idle), "");
        assert_eq!(
            load_command_text(&plan, Workload::TlsKa),
            "wrk -t 2 -c 256 -d 10 --latency https://127.0.0.1:PORT/"
        );
        assert_eq!(
            load_command_text(&plan, Workload::TlsResume),
            "LD_PRELOAD=/t/tls-sessions.so FORKLIFT_BENCH_TLS_COUNTS=/tmp/tls-sessions.txt \
             wrk -t 2 -c 256 -d 10 --latency -H 'Connection: close' https://127.0.0.1:PORT/"
        );
        assert_eq!(
            load_command_text(&plan, Workload::TlsFull),
            "LD_PRELOAD=/t/tls-sessions.so FORKLIFT_BENCH_TLS_COUNTS=/tmp/tls-sessions.txt \
             FORKLIFT_BENCH_TLS_NO_RESUME=1 \
             wrk -t 2 -c 256 -d 10 --latency -H 'Connection: close' https://127.0.0.1:PORT/"
        );
        assert_eq!(
            load_command_text(&plan, Workload::H2),
            "h2load -n 1000000 -c 100 -m 10 --log-file=/tmp/h2load-requests.tsv \
             https://127.0.0.1:PORT/"
        );
        assert_eq!(
            load_command_text(&plan, Workload::H2c),
            "h2load -n 1000000 -c 100 -m 10 --log-file=/tmp/h2load-requests.tsv \
             http://127.0.0.1:PORT/"
        );
        assert!(plan.idle_text().contains("10000 connections"));
    }
}
