//! Scenario 1: a worker SIGKILLed every 500 ms under load, with a shared socket and with one
//! SO_REUSEPORT socket per worker, keep-alive and connection-per-request clients.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use forklift_testkit::hooks::hook_field;
use forklift_testkit::process::{children, signal};
use forklift_testkit::server::serve_args;
use forklift_testkit::time::{poll_until_every, sleep_until};
use forklift_testkit::Server;

use crate::client::Fail;
use crate::context::Ctx;
use crate::load::{FailRec, FirstSeen, Load, LoadSpec, Mode};
use crate::report::{med_max, ms_opt, pct, Section, Table};
use crate::server::{ready, respawn_delays, start, Opts};

pub fn run(ctx: &Ctx) -> Section {
    let mut sec = Section::new("1. Worker SIGKILLed every 500 ms under load");
    let kill_for = ctx.pick(Duration::from_secs(5), Duration::from_secs(30));
    sec.intro.push(format!(
        "2 workers; a SIGKILL every 500 ms for {} s to the worker of slot 0, 1, 0, 1... (a slot \
         whose replacement is still in its respawn backoff is skipped). Load: 32 keep-alive \
         connections, or 16 threads opening a connection per request, plus a probe opening a \
         connection every 5 ms; client timeout 5 s. Default settings: workers that served are \
         always respawned (no recover threshold). **Recovery** = time from a \
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
            let mut args = serve_args("2", &[]);
            if reuse {
                args.push("--reuse-port");
            }
            let mut server = start(ctx, &name, &args, Opts::default());
            sec.command(&server);
            ready(&server);
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
                match live_by_slot(&server).get(&slot) {
                    Some(&pid) => {
                        signal(pid, libc::SIGKILL);
                        kills.push((Instant::now(), pid, slot));
                    }
                    None => {
                        skipped += 1;
                        if std::env::var_os("CHAOS_DEBUG").is_some() {
                            eprintln!(
                                "  kill {i}: slot {slot} has no live worker: children {:?}, slots {:?}",
                                children(server.pid),
                                slots(&server)
                            );
                        }
                    }
                }
            }
            // Let the last replacement come up (its backoff may be long), then stop the load.
            let end = t0 + kill_for + Duration::from_secs(3);
            poll_until_every(end, Duration::from_millis(20), || {
                live_by_slot(&server).len() == 2
                    && kills.last().is_none_or(|(_, pid, _)| {
                        replacement_of(&server, *pid)
                            .is_some_and(|p| seen.lock().unwrap().contains_key(&p))
                    })
            });
            let mut tally = load.finish();
            let probe_tally = probe.finish();
            tally.merge(probe_tally);
            let final_workers = live_by_slot(&server).len();
            // Recovery per kill.
            let lines = server.stdout.timed();
            let seen = seen.lock().unwrap().clone();
            let mut recov = Vec::new();
            let mut respawn = Vec::new();
            let mut not_recovered = 0;
            let mut over_1s = 0;
            for (at, pid, _) in &kills {
                match replacement_of(&server, *pid) {
                    Some(new) => {
                        if let Some((t, _)) = lines.iter().find(|(_, l)| {
                            l.starts_with("spawned ")
                                && hook_field(l, "pid") == Some(new.to_string())
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
            let backoff = server.stderr.count_containing("(backoff)");
            if backoff > 0 {
                let delays = respawn_delays(&server);
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
    server.stdout.snapshot().iter().find_map(|l| {
        (l.starts_with("recovered ") && hook_field(l, "old_pid").as_deref() == Some(old.as_str()))
            .then(|| hook_field(l, "new_pid")?.parse().ok())
            .flatten()
    })
}

/// worker pid -> slot id, from the `spawned` lines.
fn slots(server: &Server) -> HashMap<u32, usize> {
    server
        .hooks_of("spawned")
        .iter()
        .map(|h| (h.num("pid"), h.num("worker") as usize))
        .collect()
}

/// The live worker of each slot (children of the master).
fn live_by_slot(server: &Server) -> BTreeMap<usize, u32> {
    let slots = slots(server);
    let mut out = BTreeMap::new();
    for pid in children(server.pid) {
        if let Some(&s) = slots.get(&pid) {
            out.insert(s, pid);
        }
    }
    out
}
