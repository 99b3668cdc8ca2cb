//! Recycling (--max-requests): a worker that served its share of requests is
//! replaced, one worker at a time, without failing a request; the recycled
//! workers exit with code 0 and the pool stays at N.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

/// Every spawned pid that is not alive has a clean `exited` line, and exactly `n` workers live.
fn settled(s: &Server, n: usize) -> bool {
    let alive = worker_procs(s);
    if alive.len() != n {
        return false;
    }
    let exited: BTreeSet<u32> = s.hooks_of("exited").iter().map(|h| h.num("pid")).collect();
    s.spawned_pids()
        .iter()
        .all(|p| alive.contains(p) || exited.contains(p))
}

#[test]
fn max_requests_recycles_workers() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--max-requests",
        "50",
    ]);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let addr = s.addr();

    // 400 sequential `Connection: close` requests, paced over ~4 s so the workers'
    // once-a-second check sees them reach the limit while the load runs
    const REQUESTS: usize = 400;
    const PACE: Duration = Duration::from_millis(10);
    let t0 = Instant::now();
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    let mut failures = Vec::new();
    for i in 0..REQUESTS {
        let due = t0 + PACE * i as u32;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        match http_get(addr, "/") {
            Ok(r) if r.status == 200 && r.body == b"greeting!!!" => {
                let pid = r.worker_pid();
                if seen.insert(pid) {
                    order.push((pid, t0.elapsed()));
                }
            }
            Ok(r) => failures.push(format!("request {i}: bad answer {r:?}")),
            Err(e) => failures.push(format!(
                "request {i} at {}: {e} ({:?})",
                ms(t0.elapsed()),
                e.kind()
            )),
        }
    }
    let took = t0.elapsed();
    let recycles = s.spawned_pids().len() - 2;
    println!(
        "RECYCLE: {REQUESTS} requests in {:.2} s, {} failed, {} distinct pids served, {recycles} replacements spawned so far",
        took.as_secs_f64(),
        failures.len(),
        seen.len()
    );
    println!(
        "RECYCLE: first answer of each pid: {:?}",
        order
            .iter()
            .map(|(p, t)| format!("{p}@{:.2}s", t.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    let dropped: Vec<String> = s
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("connection ended with an error"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} request(s) failed while workers were recycled: {failures:#?}\n\
         worker log lines about dropped connections: {dropped:#?}",
        failures.len()
    );
    assert!(
        seen.len() > 2,
        "the serving pids never changed with --max-requests 50 over {REQUESTS} requests: {seen:?}"
    );

    // Quiet: the pool settles at 2 workers and stays so for more than a heartbeat
    // period (a worker at its limit asks within 1 s of reaching it).
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut quiet_since: Option<Instant> = None;
    let quiet = poll_until(deadline, || {
        if settled(&s, 2) {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            since.elapsed() >= Duration::from_millis(1500)
        } else {
            quiet_since = None;
            false
        }
    });
    assert!(
        quiet,
        "the pool did not settle at 2 workers: alive {:?}, stdout {:?}",
        worker_procs(&s),
        s.stdout_lines()
    );
    let alive = worker_procs(&s);
    assert_eq!(alive.len(), 2, "exactly 2 workers at the end: {alive:?}");
    assert!(
        ready.iter().any(|p| !alive.contains(p)),
        "none of the first workers {ready:?} was recycled"
    );

    // every recycled worker exited cleanly, after its replacement was spawned, one at a time
    let hooks = s.hooks();
    let mut live = 0i32;
    let mut max_live = 0;
    for h in &hooks {
        match h.kind.as_str() {
            "spawned" => {
                assert_eq!(
                    h.num("generation"),
                    1,
                    "a recycle keeps the generation: {:?}",
                    h.line
                );
                live += 1;
                max_live = max_live.max(live);
            }
            "exited" => {
                live -= 1;
                assert_eq!(
                    h.get("status"),
                    "exited with code 0",
                    "a recycled worker exits cleanly: {:?}",
                    h.line
                );
                let worker = h.num("worker");
                let pid = h.num("pid");
                let born = hooks
                    .iter()
                    .find(|x| x.kind == "spawned" && x.num("pid") == pid)
                    .expect("spawned line of an exited worker")
                    .index;
                let replacement = hooks.iter().any(|x| {
                    x.kind == "spawned"
                        && x.num("worker") == worker
                        && x.index > born
                        && x.index < h.index
                });
                assert!(
                    replacement,
                    "worker {worker} (pid {pid}) exited before its replacement was spawned: {:?}",
                    s.stdout_lines()
                );
            }
            "timed" | "recovered" | "reloading" | "reload" => {
                panic!("unexpected line during recycling: {:?}", h.line)
            }
            _ => {}
        }
    }
    let exited = hooks.iter().filter(|h| h.kind == "exited").count();
    let spawned = hooks.iter().filter(|h| h.kind == "spawned").count();
    println!("RECYCLE: {exited} workers recycled (exited code 0), {spawned} spawned in all");
    assert!(exited >= 1);
    assert_eq!(
        spawned,
        exited + 2,
        "spawned = recycled + 2: {:?}",
        s.stdout_lines()
    );
    // One replacement at a time: the stdout lines cannot show it (a retired worker may
    // still be draining when the next replacement starts, so up to N + 2 processes live),
    // the master's debug lines can: workers spawned minus workers retired never exceeds
    // N + 1.
    let mut serving = 0i32;
    let mut max_serving = 0;
    let mut retirements = 0;
    for l in s.stderr.snapshot() {
        if l.contains("forklift::master") && l.contains(" spawned as pid ") {
            serving += 1;
            max_serving = max_serving.max(serving);
        } else if l.contains("forklift::master") && l.contains("retiring worker ") {
            serving -= 1;
            retirements += 1;
        }
    }
    println!(
        "RECYCLE: at most {max_live} worker processes at once, at most {max_serving} not retired"
    );
    assert_eq!(
        retirements, exited,
        "the master's `retiring worker` debug lines (one per recycle) are missing or differ"
    );
    assert!(
        max_serving <= 3,
        "more than one replacement at a time: {max_serving} workers not retired at once"
    );
    assert!(max_live <= 4, "{max_live} worker processes at once");
    // Both serve. These requests may push a worker over its limit again: a pid that shows
    // up besides them must then be a replacement announced by a later `spawned` line.
    let known_before: BTreeSet<u32> = s.spawned_pids().into_iter().collect();
    let spread = spread_requests(&Listen::Tcp(addr), 1000, 4, |seen| seen.is_superset(&alive));
    assert!(
        spread.errors.is_empty() && spread.bad.is_empty(),
        "requests failed at the end: {:?} {:?}",
        spread.errors,
        spread.bad
    );
    assert!(
        spread.pids.is_superset(&alive),
        "after {} requests only {:?} of the workers {alive:?} served",
        spread.ok,
        spread.pids
    );
    let spawned_now: BTreeSet<u32> = s.spawned_pids().into_iter().collect();
    for p in spread.pids.difference(&alive) {
        assert!(
            spawned_now.contains(p) && !known_before.contains(p),
            "pid {p} answered but is neither a live worker nor a new replacement"
        );
    }
}
