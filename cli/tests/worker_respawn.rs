//! Theme 2: `kill -9` of one worker: a replacement serves within 1 s, the pool
//! is back to N workers, and the hook lines say exited -> spawned -> recovered.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn kill_one_worker(extra: &[&str]) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--workers", "2"];
    args.extend_from_slice(extra);
    let s = Server::start_ready(&args);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let target = Listen::Tcp(s.addr());
    // everyone serves before the kill
    assert_served_by(&target, &ready, 200);

    let victim = *ready.iter().next().unwrap();
    let victim_worker = s
        .hooks_of("spawned")
        .into_iter()
        .find(|h| h.num("pid") == victim)
        .expect("spawned line of the victim")
        .num("worker");

    kill_pid(victim, libc::SIGKILL);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(1);

    // Poll with bursts of concurrent requests until a pid that was not in the
    // ready line serves.
    let mut new_pid = None;
    let mut errors = Vec::new();
    let mut served = 0;
    while new_pid.is_none() && Instant::now() < deadline {
        let burst = spread_requests(&target, 8, 4, |seen| {
            seen.iter().any(|p| !ready.contains(p))
        });
        served += burst.ok;
        errors.extend(burst.errors);
        assert!(
            burst.bad.is_empty(),
            "bad answer(s) to GET / after kill -9: {:?}",
            burst.bad
        );
        assert!(
            !burst.pids.contains(&victim),
            "the killed worker {victim} answered a request sent after kill -9"
        );
        new_pid = burst.pids.iter().copied().find(|p| !ready.contains(p));
        if new_pid.is_none() {
            std::thread::sleep(POLL);
        }
    }
    let respawn = t0.elapsed();
    if !errors.is_empty() {
        println!(
            "NOTE: {} request(s) failed while the worker was down: {errors:?}",
            errors.len()
        );
    }
    let new_pid = new_pid.unwrap_or_else(|| {
        panic!(
            "no new worker served within 1 s of kill -9 {victim} ({served} requests answered, spawned lines: {:?})",
            s.spawned_pids()
        )
    });
    println!(
        "RESPAWN {args:?}: new worker pid {new_pid} served {} after kill -9 of {victim}",
        ms(respawn)
    );
    assert!(
        respawn <= Duration::from_secs(1),
        "respawn took {respawn:?}"
    );

    // back to N: the survivor and the new one, the victim gone
    assert!(!process_alive(victim), "killed worker {victim} still alive");
    let mut expected = ready.clone();
    expected.remove(&victim);
    expected.insert(new_pid);
    assert_served_by(&target, &expected, 200);

    // hook lines
    let recovered = s.expect_line(
        &format!("`recovered ... old_pid={victim}`"),
        |l| {
            l.starts_with("recovered ")
                && parse_hook(l).1.get("old_pid").map(String::as_str) == Some(&victim.to_string())
        },
        Duration::from_secs(2),
    );
    let hooks = s.hooks();
    let exited = hooks
        .iter()
        .find(|h| h.kind == "exited" && h.fields.get("pid") == Some(&victim.to_string()))
        .expect("an `exited` line for the killed worker");
    let spawned = hooks
        .iter()
        .find(|h| h.kind == "spawned" && h.fields.get("pid") == Some(&new_pid.to_string()))
        .expect("a `spawned` line for the replacement");
    let recovered = hooks.iter().find(|h| h.line == recovered).unwrap();
    assert!(
        exited.index < spawned.index && spawned.index < recovered.index,
        "order must be exited -> spawned -> recovered: {:?} / {:?} / {:?}",
        exited.line,
        spawned.line,
        recovered.line
    );
    assert_eq!(
        exited.num("worker"),
        victim_worker,
        "exited line worker index"
    );
    assert_eq!(
        spawned.num("worker"),
        victim_worker,
        "replacement keeps the worker index"
    );
    assert_eq!(
        recovered.num("worker"),
        victim_worker,
        "recovered line worker index"
    );
    assert_eq!(recovered.num("old_pid"), victim);
    assert_eq!(recovered.num("new_pid"), new_pid);
    let _ = spawned.num("generation");
    let status = exited.get("status");
    assert!(
        status.contains("SIGKILL"),
        "exit status text of a kill -9: {status:?}"
    );
    // exactly one replacement
    let respawns = hooks.iter().filter(|h| h.kind == "spawned").count();
    assert_eq!(
        respawns,
        3,
        "2 initial spawns + 1 respawn expected: {:?}",
        s.stdout_lines()
    );
}

#[test]
fn kill9_worker_respawns_fork() {
    kill_one_worker(&[]);
}

#[test]
fn kill9_worker_respawns_exec() {
    kill_one_worker(&["--spawn", "exec"]);
}

#[test]
fn kill9_worker_respawns_reuse_port() {
    kill_one_worker(&["--reuse-port"]);
}
