//! Scenario 3: crash loops. A handler that aborts the worker on every request (does the
//! master back off without spinning, and stop with a clear error past an opt-in recover
//! threshold? with default settings, does it keep serving the other routes?), and one that
//! panics (500, and the worker survives).

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use forklift_testkit::process::{
    clk_tck, cpu_secs, describe_status, group_members, process_alive, stat, status_field,
};
use forklift_testkit::server::{error_line, serve_args};
use forklift_testkit::time::{ms, poll_until_every};
use forklift_testkit::Server;

use crate::client::{connect, exchange, get, request, Fail};
use crate::context::Ctx;
use crate::load::{FirstSeen, Load, LoadSpec, Mode};
use crate::report::{ms_opt, Section, Table};
use crate::server::{ready, respawn_delays, start, Opts};

pub fn run(ctx: &Ctx) -> Section {
    let mut sec = Section::new("3. Crash loops");
    sec.intro.push(
        "(a) `--fault block-route`: GET /abort aborts the worker process. One client sends \
         GET /abort on a new connection, again and again, until the master exits. The master's \
         CPU time (utime+stime from /proc/PID/stat, read while it is a zombie) is measured from \
         the first crash to its exit. (b) GET /panic makes the handler panic: 300 such \
         requests, half on one keep-alive connection, half on connections of their own. \
         (c) Default settings (no recover threshold): GET /abort every 300 ms for the run's \
         length while 8 threads send GET / on connections of their own."
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
        let args = serve_args(
            "2",
            &[
                "--fault",
                "block-route",
                "--recover-threshold",
                th.as_str(),
                "--graceful-timeout",
                "5",
            ],
        );
        let mut server = start(
            ctx,
            &format!("s3-abort-{threshold}"),
            &args,
            Opts::default(),
        );
        sec.command(&server);
        ready(&server);
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
        let first =
            server.wait_for_line_while_alive(|l| l.starts_with("exited "), Duration::from_secs(10));
        let cpu0 = cpu_secs(server.pid).unwrap_or(0.0);
        let csw0 = status_field(server.pid, "voluntary_ctxt_switches").unwrap_or(0);
        let mut csw1 = csw0;
        // Sample the wakeups while it runs; the CPU comes from the zombie.
        let deadline = Instant::now() + Duration::from_secs(90);
        while process_alive(server.pid) && Instant::now() < deadline {
            if let Some(c) = status_field(server.pid, "voluntary_ctxt_switches") {
                csw1 = c;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let exit = wait_exit_with_cpu(&mut server, Duration::from_secs(10));
        let t_exit = Instant::now();
        stop.store(true, Ordering::SeqCst);
        let sent = client.join().unwrap_or(0);
        // Crashes: the workers that aborted (not those stopped with the server).
        let crashes = server
            .stdout
            .snapshot()
            .iter()
            .filter(|l| l.starts_with("exited ") && l.contains("SIGABRT"))
            .count();
        let delays = respawn_delays(&server);
        let error = error_line(&server).unwrap_or_default();
        let span = first
            .as_ref()
            .map(|(t, _)| t_exit.saturating_duration_since(*t));
        let (cpu_used, status) = match &exit {
            Some((st, cpu)) => (Some(cpu - cpu0), describe_status(st)),
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
            poll_until_every(
                Instant::now() + Duration::from_secs(2),
                Duration::from_millis(10),
                || group_members(server.pgid).is_empty(),
            ),
            format!("{} process(es) left just after the exit", left.len()),
        );
        server.kill_all();
    }
    sec.tables.push((
        "(a) A handler that aborts the worker on every request".into(),
        a,
    ));

    abort_with_defaults(ctx, &mut sec);

    // (b) panic: 500 and the worker survives
    let args = serve_args("2", &["--fault", "block-route"]);
    let mut server = start(ctx, "s3-panic", &args, Opts::default());
    sec.command(&server);
    let workers = ready(&server);
    let addr = server.addr();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut pids = BTreeSet::new();
    let t0 = Instant::now();
    // 150 on one keep-alive connection
    match connect(addr, Duration::from_secs(5)) {
        Ok(mut s) => {
            let mut buf = Vec::new();
            for _ in 0..150 {
                match exchange(&mut s, &request("/panic", false), &mut buf) {
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
                pids.extend(r.worker());
            }
        }
    }
    let exited = server.stdout.count_starting_with("exited ");
    let panics_logged = server.stderr.count_containing("a request handler panicked");
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

/// (c) With default settings an aborting handler never stops the server: the slots back off,
/// the other route keeps answering, and the log gives the crash rate.
fn abort_with_defaults(ctx: &Ctx, sec: &mut Section) {
    let run_for = ctx.pick(Duration::from_secs(8), Duration::from_secs(30));
    let args = serve_args("2", &["--fault", "block-route"]);
    let mut server = start(ctx, "s3-abort-defaults", &args, Opts::default());
    sec.command(&server);
    ready(&server);
    let addr = server.addr();
    let seen: FirstSeen = Arc::default();
    let load = Load::start(
        &LoadSpec::new(addr, Mode::PerRequest, 8, run_for + Duration::from_secs(1)),
        &seen,
    );
    let cpu0 = cpu_secs(server.pid).unwrap_or(0.0);
    let t0 = Instant::now();
    let mut aborts = 0u64;
    let mut master_alive = true;
    while t0.elapsed() < run_for {
        // The pace of the aborting route (load pacing, not a wait).
        thread::sleep(Duration::from_millis(300));
        let _ = get(addr, "/abort", Duration::from_secs(2));
        aborts += 1;
        master_alive &= process_alive(server.pid);
    }
    let cpu = cpu_secs(server.pid).unwrap_or(0.0) - cpu0;
    let tally = load.finish();
    let crashes = server
        .stdout
        .snapshot()
        .iter()
        .filter(|l| l.starts_with("exited ") && l.contains("SIGABRT"))
        .count();
    let delays = respawn_delays(&server);
    let rate_lines = server.stderr.count_containing("crashes in the last");
    let back = poll_until_every(
        Instant::now() + Duration::from_secs(30),
        Duration::from_millis(20),
        || get(addr, "/", Duration::from_secs(2)).is_ok_and(|r| r.status == 200),
    );
    let mut c = Table::new(&[
        "GET /abort sent",
        "workers killed by SIGABRT",
        "respawn delays (backoff)",
        "GET / answered",
        "GET / failed",
        "master CPU",
        "crash-rate log lines",
    ]);
    c.row(vec![
        aborts.to_string(),
        crashes.to_string(),
        delays.join(", "),
        (tally.total() - tally.failed()).to_string(),
        format!("{} ({})", tally.failed(), tally.breakdown()),
        format!("{:.0} ms", cpu * 1000.0),
        rate_lines.to_string(),
    ]);
    sec.tables.push((
        "(c) Default settings: an aborting route beside a working one".into(),
        c,
    ));
    sec.check(
        "default settings: the server never stops for workers that served",
        master_alive && process_alive(server.pid) && back,
        format!(
            "{crashes} crashes in {} s; GET / answers after: {back}",
            run_for.as_secs()
        ),
    );
    sec.check(
        "default settings: the other route keeps answering",
        tally.total() > tally.failed() * 2,
        format!(
            "GET / {} answered, {} failed",
            tally.total() - tally.failed(),
            tally.failed()
        ),
    );
    sec.check(
        "default settings: respawns back off and the log gives the crash rate",
        !delays.is_empty() && rate_lines > 0,
        format!(
            "{} delayed respawns, {rate_lines} crash-rate lines",
            delays.len()
        ),
    );
    sec.check(
        "default settings: the master does not spin",
        cpu <= 0.02 * run_for.as_secs_f64(),
        format!("{:.0} ms of CPU over {} s", cpu * 1000.0, run_for.as_secs()),
    );
    server.stop(Duration::from_secs(10));
}

/// Waits until the master has exited. Reads its CPU time while it is a zombie (not yet
/// reaped, so /proc still has it), then reaps it.
fn wait_exit_with_cpu(server: &mut Server, timeout: Duration) -> Option<(ExitStatus, f64)> {
    let deadline = Instant::now() + timeout;
    let mut last_cpu = cpu_secs(server.pid).unwrap_or(0.0);
    loop {
        match stat(server.pid) {
            Some(s) if !s.is_live() => {
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
    let st = server.try_wait_exit(deadline)?;
    Some((st, last_cpu))
}
