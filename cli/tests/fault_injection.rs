//! Theme 5: injected faults: a worker panicking at boot, workers crashing after
//! they became ready (recover threshold).

mod common;

use common::*;
use std::time::{Duration, Instant};

fn boot_panic(extra: &[&str]) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--fault",
        "boot-panic",
    ];
    args.extend_from_slice(extra);
    let (s, st) = run_to_exit(&args, Duration::from_secs(5));
    let took = s.started.elapsed();
    println!(
        "BOOT PANIC {args:?}: master exited ({}) {} after start",
        describe_status(&st),
        ms(took)
    );
    assert!(!st.success(), "master must fail when workers panic at boot");
    assert!(
        st.code().is_some(),
        "master should exit, not die of a signal: {}",
        describe_status(&st)
    );
    s.wait_output_closed(Instant::now() + Duration::from_secs(2));
    assert!(
        s.stderr_text().contains("injected boot failure"),
        "stderr must carry the panic message"
    );
    assert!(
        error_line(&s).is_some(),
        "stderr must have a `forklift: error: ` line"
    );
    assert!(
        !s.stdout_lines().iter().any(|l| l.starts_with("ready ")),
        "no ready line when workers cannot boot"
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || group_empty(
            s.pgid
        )),
        "processes left: {:?}",
        group_members(s.pgid)
    );
}

#[test]
fn boot_panic_fails_fast_fork() {
    boot_panic(&[]);
}

#[test]
fn boot_panic_fails_fast_exec() {
    boot_panic(&["--spawn", "exec"]);
}

fn crash_after_ready(extra: &[&str]) {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--fault",
        "crash-after-ready",
        "--recover-threshold",
        "3",
    ];
    args.extend_from_slice(extra);
    let (s, st) = run_to_exit(&args, Duration::from_secs(15));
    let took = s.started.elapsed();
    println!(
        "CRASH AFTER READY {args:?}: master exited ({}) {} after start",
        describe_status(&st),
        ms(took)
    );
    assert!(
        !st.success(),
        "master must fail once the recover threshold is hit"
    );
    assert!(
        st.code().is_some(),
        "master should exit, not die of a signal: {}",
        describe_status(&st)
    );
    s.wait_output_closed(Instant::now() + Duration::from_secs(2));
    let err = s.stderr_text().to_lowercase();
    assert!(
        err.contains("threshold"),
        "stderr must mention the recover threshold"
    );
    assert!(
        error_line(&s).is_some(),
        "stderr must have a `forklift: error: ` line"
    );
    let exited = s.hooks_of("exited");
    assert!(
        exited.iter().any(|h| h.get("status").contains("code 70")),
        "an `exited` line with status `exited with code 70` expected: {:?}",
        exited.iter().map(|h| &h.line).collect::<Vec<_>>()
    );
    println!(
        "CRASH AFTER READY: {} spawned, {} exited, {} recovered lines",
        s.hooks_of("spawned").len(),
        exited.len(),
        s.hooks_of("recovered").len()
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || group_empty(
            s.pgid
        )),
        "processes left: {:?}",
        group_members(s.pgid)
    );
    for pid in s.spawned_pids() {
        assert!(!process_alive(pid), "worker {pid} still alive");
    }
}

#[test]
fn crash_after_ready_hits_recover_threshold_fork() {
    crash_after_ready(&[]);
}

#[test]
fn crash_after_ready_hits_recover_threshold_exec() {
    crash_after_ready(&["--spawn", "exec"]);
}

/// A handler that panics (unwinding) answers 500; the worker keeps serving.
#[test]
fn handler_panic_answers_500_and_the_worker_survives() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--fault",
        "block-route",
    ]);
    let pid = s.pids_from_ready()[0];
    for _ in 0..3 {
        let r = http_get(s.addr(), "/panic").expect("GET /panic");
        assert_eq!(r.status, 500);
        assert_eq!(
            r.header("x-forklift-worker"),
            None,
            "the handler never built its response"
        );
    }
    let r = http_get(s.addr(), "/").expect("GET / after the panics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-forklift-worker"),
        Some(pid.to_string().as_str())
    );
    assert!(process_alive(pid));
    assert!(
        s.wait_stderr_contains("answered 500", Duration::from_secs(5))
            .is_some(),
        "the panic is logged"
    );
}
