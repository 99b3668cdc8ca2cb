//! Theme 7: the order of the hook lines on stdout over a whole lifetime:
//! start, kill -9 of a worker, SIGTERM.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn lifecycle(extra: &[&str]) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--workers", "3"];
    args.extend_from_slice(extra);
    let mut s = Server::start_ready(&args);

    // --- start: every initial `spawned` before `ready`, same pids
    let hooks = s.hooks();
    let ready = hooks
        .iter()
        .find(|h| h.kind == "ready")
        .expect("ready line");
    let ready_pids: BTreeSet<u32> = parse_pid_list(ready.get("pids")).into_iter().collect();
    let initial: Vec<&Hook> = hooks
        .iter()
        .filter(|h| h.kind == "spawned" && h.index < ready.index)
        .collect();
    let spawned_pids: BTreeSet<u32> = initial.iter().map(|h| h.num("pid")).collect();
    assert_eq!(
        initial.len(),
        3,
        "3 spawned lines before ready: {:?}",
        s.stdout_lines()
    );
    assert_eq!(
        spawned_pids, ready_pids,
        "ready pids must be the spawned pids"
    );
    let workers: BTreeSet<u32> = initial.iter().map(|h| h.num("worker")).collect();
    assert_eq!(workers, (0..3).collect(), "worker indices 0..3");
    let generations: BTreeSet<u32> = initial.iter().map(|h| h.num("generation")).collect();
    assert_eq!(
        generations.len(),
        1,
        "initial workers share one generation: {generations:?}"
    );
    assert_eq!(
        hooks.iter().filter(|h| h.kind == "ready").count(),
        1,
        "exactly one ready line"
    );
    let listening = hooks
        .iter()
        .filter(|h| h.line.starts_with("listening on "))
        .count();
    assert_eq!(listening, 1, "one listening line");
    assert!(!hooks
        .iter()
        .any(|h| h.kind == "exited" || h.kind == "recovered" || h.kind == "stopped"));

    // --- kill -9 of one worker: exited -> spawned -> recovered
    let victim_hook = initial[1];
    let victim = victim_hook.num("pid");
    let victim_worker = victim_hook.num("worker");
    kill_pid(victim, libc::SIGKILL);
    let rec_line = s.expect_line(
        "`recovered`",
        |l| l.starts_with("recovered "),
        Duration::from_secs(2),
    );
    let hooks = s.hooks();
    let rec = hooks.iter().find(|h| h.line == rec_line).unwrap();
    assert_eq!(rec.num("old_pid"), victim);
    assert_eq!(rec.num("worker"), victim_worker);
    let new_pid = rec.num("new_pid");
    assert!(
        !ready_pids.contains(&new_pid),
        "the replacement has a new pid"
    );
    let after_ready: Vec<&Hook> = hooks
        .iter()
        .filter(|h| h.index > ready.index && h.index <= rec.index)
        .collect();
    let kinds: Vec<&str> = after_ready.iter().map(|h| h.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec!["exited", "spawned", "recovered"],
        "lines after kill -9: {:?}",
        after_ready.iter().map(|h| &h.line).collect::<Vec<_>>()
    );
    assert_eq!(after_ready[0].num("pid"), victim);
    assert_eq!(after_ready[0].num("worker"), victim_worker);
    assert!(
        after_ready[0].get("status").contains("SIGKILL"),
        "status of kill -9: {:?}",
        after_ready[0].line
    );
    assert_eq!(after_ready[1].num("pid"), new_pid);
    assert_eq!(after_ready[1].num("worker"), victim_worker);

    let mut current = ready_pids.clone();
    current.remove(&victim);
    current.insert(new_pid);
    // the replacement serves (so it is fully up before the stop)
    assert_served_by(&Listen::Tcp(s.addr()), &current, 200);

    // --- TERM: an `exited` line for each worker, then `stopped` last
    let before_term = s.stdout_lines().len();
    s.send_signal(libc::SIGTERM);
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(
        s.wait_output_closed(Instant::now() + Duration::from_secs(2)),
        "stdout not closed"
    );
    let hooks = s.hooks();
    let tail: Vec<&Hook> = hooks.iter().filter(|h| h.index >= before_term).collect();
    let stopped = tail.last().expect("lines after TERM");
    assert_eq!(
        stopped.line,
        "stopped",
        "last line after TERM: {:?}",
        tail.iter().map(|h| &h.line).collect::<Vec<_>>()
    );
    assert_eq!(
        hooks.iter().filter(|h| h.kind == "stopped").count(),
        1,
        "one stopped line"
    );
    let exited_pids: BTreeSet<u32> = tail
        .iter()
        .filter(|h| h.kind == "exited")
        .map(|h| h.num("pid"))
        .collect();
    assert_eq!(
        exited_pids, current,
        "an exited line for each worker on TERM"
    );
    let exited_count = tail.iter().filter(|h| h.kind == "exited").count();
    assert_eq!(exited_count, 3, "one exited line per worker");
    assert!(
        !tail
            .iter()
            .any(|h| h.kind == "spawned" || h.kind == "recovered"),
        "no respawn during a stop: {:?}",
        tail.iter().map(|h| &h.line).collect::<Vec<_>>()
    );
}

#[test]
fn hooks_order_fork() {
    lifecycle(&[]);
}

#[test]
fn hooks_order_exec() {
    lifecycle(&["--spawn", "exec"]);
}
