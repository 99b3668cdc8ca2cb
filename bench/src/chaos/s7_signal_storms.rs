//! Scenario 7: signal storms. 100 HUPs in a second, and TERM or USR2 during a reload: no
//! crash, no request lost, and a consistent final state (read with `forklift status` and
//! /proc).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use forklift_testkit::hooks::hook_field;
use forklift_testkit::process::{children, describe_status, group_members, process_alive, signal};
use forklift_testkit::server::{error_line, serve_args};
use forklift_testkit::time::{ms, poll_until_every, sleep_until};
use forklift_testkit::Server;

use crate::client::get;
use crate::context::Ctx;
use crate::load::{FirstSeen, Load, LoadSpec, Mode, Tally};
use crate::report::{med_max, ms_opt, Section, Table};
use crate::server::{ready, start, Opts};

/// A worker's row of `forklift status`.
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

pub fn run(ctx: &Ctx) -> Section {
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
    let start_with_control = |name: &str, extra: &[&str]| -> (Server, PathBuf) {
        let control = dir.join(format!("{name}.sock"));
        let c = control.display().to_string();
        let mut args = serve_args("2", &["--control", c.as_str()]);
        args.extend_from_slice(extra);
        let s = start(ctx, name, &args, Opts::default());
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
        let (mut server, control) = start_with_control("s7-hup-storm", &[]);
        sec.command(&server);
        ready(&server);
        let addr = server.addr();
        let seen: FirstSeen = Arc::default();
        let (a, b) = light_load(addr, &seen, Duration::from_secs(40));
        thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        for i in 0..100u64 {
            sleep_until(t0 + Duration::from_millis(10 * i));
            signal(server.pid, libc::SIGHUP);
        }
        let last = Instant::now();
        let storm_took = last - t0;
        let settled = poll_until_every(
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
        let generations = server.stdout.count_starting_with("reloading generation=");
        let reloaded = server.stdout.count_starting_with("reloaded generation=");
        let exited = server.stdout.count_starting_with("exited ");
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
            load_cell(&tally),
            "–".into(),
        ]);
        sec.check(
            "100 HUPs: no crash, final state consistent",
            settled && process_alive(server.pid) && server.stderr.count_containing("panicked") == 0,
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
        signal(server.pid, libc::SIGTERM);
        let st = server.try_wait_exit(Instant::now() + Duration::from_secs(35));
        let left = poll_until_every(
            Instant::now() + Duration::from_secs(2),
            Duration::from_millis(10),
            || group_members(server.pgid).is_empty(),
        );
        sec.check(
            "then SIGTERM: the master exits 0, no worker left",
            st.is_some_and(|s| s.success()) && left,
            format!(
                "{}; {} process(es) left",
                st.map_or("still running".into(), |s| describe_status(&s)),
                group_members(server.pgid).len()
            ),
        );
        server.kill_all();
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
            let (mut server, _control) = start_with_control(&name, extra);
            sec.command(&server);
            ready(&server);
            let addr = server.addr();
            let seen: FirstSeen = Arc::default();
            let (a, b) = light_load(addr, &seen, Duration::from_secs(10));
            thread::sleep(Duration::from_millis(300));
            signal(server.pid, libc::SIGHUP);
            if !back_to_back {
                server.wait_for_line_while_alive(
                    |l| l.starts_with("reloading "),
                    Duration::from_secs(5),
                );
            }
            signal(server.pid, libc::SIGTERM);
            let t0 = Instant::now();
            let st = server.try_wait_exit(Instant::now() + Duration::from_secs(10));
            times.push(t0.elapsed());
            *codes
                .entry(st.map_or("still running".into(), |s| describe_status(&s)))
                .or_default() += 1;
            if server
                .wait_for_line_while_alive(
                    |l| l.starts_with("reloading "),
                    Duration::from_millis(100),
                )
                .is_some()
            {
                reload_started += 1;
            }
            reload_done += server.stdout.count_starting_with("reloaded ");
            let mut tally = a.finish();
            tally.merge(b.finish());
            total += tally.total();
            // Failures before the stop are losses; after it, refusals are expected.
            lost_before += tally.fails.iter().filter(|f| f.at < t0).count();
            poll_until_every(
                Instant::now() + Duration::from_secs(2),
                Duration::from_millis(10),
                || group_members(server.pgid).is_empty(),
            );
            left_total += group_members(server.pgid).len();
            killed_lines.extend(
                server
                    .stderr
                    .snapshot()
                    .into_iter()
                    .filter(|l| l.contains("did not stop in time"))
                    .map(|l| {
                        l.split("forklift::master: ")
                            .nth(1)
                            .unwrap_or(&l)
                            .to_string()
                    }),
            );
            server.kill_all();
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
            start_with_control(name, &["--graceful-timeout", "5", "--spawn", "exec"])
        } else {
            let mut args = serve_args("2", &["--graceful-timeout", "5"]);
            if !back_to_back {
                args.extend(["--spawn", "exec"]);
            }
            let s = start(ctx, name, &args, Opts::default());
            (s, PathBuf::new())
        };
        sec.command(&server);
        ready(&server);
        let addr = server.addr();
        let seen: FirstSeen = Arc::default();
        let (a, b) = light_load(addr, &seen, Duration::from_secs(20));
        thread::sleep(Duration::from_millis(300));
        signal(server.pid, libc::SIGHUP);
        if !back_to_back {
            server
                .wait_for_line_while_alive(|l| l.starts_with("reloading "), Duration::from_secs(5));
        }
        signal(server.pid, libc::SIGUSR2);
        let reloading = server
            .wait_for_line_while_alive(|l| l.starts_with("reloading "), Duration::from_secs(5));
        let t0 = Instant::now();
        let upgrading = server
            .wait_for_line_while_alive(|l| l.starts_with("upgrading "), Duration::from_secs(5));
        let new_master: Option<u32> = upgrading
            .as_ref()
            .and_then(|(_, l)| hook_field(l, "new_master_pid")?.parse().ok());
        // The old master exits once the new one serves (or keeps serving if it failed).
        let mut old_exit = None;
        poll_until_every(
            Instant::now() + Duration::from_secs(15),
            Duration::from_millis(2),
            || {
                old_exit = server.try_exit();
                old_exit.is_some() || server.stdout.count_starting_with("upgrade failed") > 0
            },
        );
        let took = t0.elapsed();
        let failed_line = server
            .stdout
            .snapshot()
            .into_iter()
            .find(|l| l.starts_with("upgrade failed"));
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
                .is_ok_and(|r| r.status == 200 && r.worker().is_some_and(|p| kids.contains(&p)));
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
            if process_alive(master) && kids.len() == 2 && group == expected && status_ok && served
            {
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
            server.stdout.count_starting_with("reloaded ").to_string(),
            match (&old_exit, &failed_line) {
                (Some(st), _) => format!("old master {} after {}", describe_status(st), ms(took)),
                (None, Some(l)) => l.clone(),
                (None, None) => "old master still running, no upgrade".into(),
            },
            final_state.clone(),
            load_cell(&tally),
            "–".into(),
        ]);
        sec.check(
            format!("USR2 during a reload{variant}: no crash, a single master with 2 workers of one generation"),
            reloading.is_some() && consistent_end && server.stderr.count_containing("panicked") == 0,
            format!("{final_state}; new master {new_master:?}; {}", failed_line.clone().unwrap_or_else(|| "upgrade went through".into())),
        );
        sec.check(
            format!("USR2 during a reload{variant}: the upgrade takes over"),
            old_exit.is_some_and(|s| s.success()) && failed_line.is_none(),
            match (&old_exit, &failed_line) {
                (_, Some(l)) => {
                    let why = error_line(&server).unwrap_or_default();
                    format!("{l}: {why}")
                }
                (Some(st), None) => format!("old master {}", describe_status(st)),
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
            if process_alive(p) {
                signal(p, libc::SIGTERM);
            }
        }
        signal(server.pid, libc::SIGTERM);
        poll_until_every(
            Instant::now() + Duration::from_secs(10),
            Duration::from_millis(20),
            || group_members(server.pgid).is_empty(),
        );
        server.kill_all();
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

/// The "load: requests / failed (kinds)" cell.
fn load_cell(tally: &Tally) -> String {
    format!(
        "{} / {} ({})",
        tally.total(),
        tally.failed(),
        tally.breakdown()
    )
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
