//! Theme 4: `kill -9` of the master: every worker is gone within 1 s and a new
//! `forklift serve` on the same port binds and serves at once.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn kill9_master(extra: &[&str]) {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--workers", "2"];
    args.extend_from_slice(extra);
    let mut s = Server::start_ready(&args);
    let ready = s.pids_from_ready();
    let addr = s.addr();
    assert_served_by(&Listen::Tcp(addr), &ready.iter().copied().collect(), 200);

    s.send_signal(libc::SIGKILL);
    let t0 = Instant::now();
    let gone = poll_until_every(t0 + Duration::from_secs(1), MEASURE_POLL, || {
        ready.iter().all(|p| !process_alive(*p))
    });
    let orphan_time = t0.elapsed();
    let left: Vec<u32> = ready
        .iter()
        .copied()
        .filter(|p| process_alive(*p))
        .collect();
    println!(
        "ORPHANS {args:?}: all workers gone {} after kill -9 of the master (left: {left:?})",
        ms(orphan_time)
    );
    assert!(
        gone,
        "workers {left:?} still alive {orphan_time:?} after kill -9 of the master"
    );
    let st = s.wait_exit(Instant::now() + Duration::from_secs(1));
    assert_eq!(
        st.code(),
        None,
        "master should have died of SIGKILL: {}",
        describe_status(&st)
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || group_empty(
            s.pgid
        )),
        "processes left in the group: {:?}",
        group_members(s.pgid)
    );

    // a new server on the same port binds and serves at once
    let listen = addr.to_string();
    let mut args2 = vec!["serve", "--listen", listen.as_str(), "--workers", "2"];
    args2.extend_from_slice(extra);
    let t1 = Instant::now();
    let s2 = Server::start(&args2);
    let ready_line = s2.wait_for_line(|l| l.starts_with("ready "), t1 + READY_TIMEOUT);
    if ready_line.is_none() {
        panic!(
            "new server on {addr} never became ready (already in use: {})",
            s2.stderr_text().contains("already in use")
        );
    }
    assert_eq!(
        s2.addr(),
        addr,
        "the new server must listen on the same address"
    );
    let ready2: BTreeSet<u32> = s2.pids_from_ready().into_iter().collect();
    let r = http_get(addr, "/").expect("GET / on the new server");
    assert_greeting(&r);
    println!(
        "ORPHANS {args:?}: new server on the same port served {} after its start",
        ms(t1.elapsed())
    );
    // only the new workers answer (no orphan shares the port)
    assert_served_by(&Listen::Tcp(addr), &ready2, 200);
}

#[test]
fn kill9_master_workers_exit_fork() {
    kill9_master(&[]);
}

#[test]
fn kill9_master_workers_exit_exec() {
    kill9_master(&["--spawn", "exec"]);
}

#[test]
fn kill9_master_workers_exit_reuse_port() {
    kill9_master(&["--reuse-port"]);
}
