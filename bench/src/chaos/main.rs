//! `forklift-chaos`: does forklift keep serving, and lose nothing, under faults?
//!
//! Run it through `bench/chaos`, which builds everything first. Each scenario starts
//! `target/release/forklift serve` on 127.0.0.1 in its own process group (`server.rs`, on
//! forklift-testkit's guard), drives it with the load generator of `load.rs` (threads with
//! blocking std `TcpStream` clients, keep-alive or one connection per request), injects the
//! fault, measures, and stops everything. Every scenario is bounded in time and requests.
//! The report (`report.rs`) goes to `bench/results/chaos-latest.md` and to stdout.
//!
//! Scenarios (the numbers of issue 5), one file each:
//! 1. `s1_worker_kill.rs`: a worker SIGKILLed every 500 ms under load;
//! 2. `s2_master_kill.rs`: the master SIGKILLed under load;
//! 3. `s3_crash_loops.rs`: crash loops (a handler that aborts the worker; a handler that panics);
//! 4. `s4_slow_clients.rs`: slow clients (idle connections and slowloris);
//! 5. `s5_malformed.rs`: oversized and malformed requests; `s5_fuzz.rs`: a wire fuzzer and
//!    the fuzz targets;
//! 6. `s6_exhaustion.rs`: exhaustion (EMFILE under `ulimit -n 256`; 10,000 keep-alive connections);
//! 7. `s7_signal_storms.rs`: signal storms (100 HUPs in a second; TERM or USR2 during a reload).

mod client;
mod context;
mod load;
mod report;
mod s1_worker_kill;
mod s2_master_kill;
mod s3_crash_loops;
mod s4_slow_clients;
mod s5_fuzz;
mod s5_malformed;
mod s6_exhaustion;
mod s7_signal_storms;
mod server;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use forklift_bench::machine::loadavg;
use forklift_testkit::groups;

use context::{raise_nofile, Ctx};
use report::Section;

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
        groups::kill_all();
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
            1 => s1_worker_kill::run(&ctx),
            2 => s2_master_kill::run(&ctx),
            3 => s3_crash_loops::run(&ctx),
            4 => s4_slow_clients::run(&ctx),
            5 => s5_malformed::run(&ctx),
            6 => s6_exhaustion::run(&ctx),
            7 => s7_signal_storms::run(&ctx),
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
        groups::kill_all();
    }
    let load_after = loadavg();
    let md = report::render(
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
