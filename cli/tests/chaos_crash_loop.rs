//! Chaos (issue 5, scenario 3): a handler that aborts the worker process on every request.
//! The master backs off between respawns without spinning, and stops with a clear error once
//! the crashes pass `--recover-threshold`.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

#[test]
fn abort_on_every_request_stops_the_master_after_the_threshold() {
    let mut s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--fault",
        "block-route",
        "--recover-threshold",
        "3",
        "--graceful-timeout",
        "5",
    ]);
    let addr = s.addr();
    // One client aborts a worker with each request until the master has exited.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut sent = 0u32;
            while !stop.load(Ordering::SeqCst) && sent < 1000 {
                sent += 1;
                if let Err(e) = http_get_timeout(addr, "/abort", Duration::from_secs(2)) {
                    if e.kind() == std::io::ErrorKind::ConnectionRefused {
                        thread::sleep(POLL);
                    }
                }
            }
            sent
        })
    };
    // Read the master's CPU time while it is a zombie (exited, not yet reaped).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ticks = 0;
    let exited = poll_until_every(deadline, MEASURE_POLL, || match stat(s.pid) {
        Some(st) => {
            ticks = st.ticks;
            !st.is_live()
        }
        None => true,
    });
    stop.store(true, Ordering::SeqCst);
    let sent = client.join().unwrap();
    assert!(exited, "the master did not stop within 30 s of crash loop");
    let st = s.wait_exit(Instant::now() + Duration::from_secs(5));
    let took = s.started.elapsed();
    s.wait_output_closed(Instant::now() + Duration::from_secs(5));
    let cpu = ticks as f64 / clk_tck();
    let crashes = s
        .hooks_of("exited")
        .iter()
        .filter(|h| h.get("status").contains("SIGABRT"))
        .count();
    let backoffs: Vec<String> = s
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("(backoff)"))
        .collect();
    println!(
        "CRASH LOOP: {} after {} ({sent} GET /abort sent, {crashes} crashes, {} delayed respawns); master CPU {:.0} ms",
        describe_status(&st),
        ms(took),
        backoffs.len(),
        cpu * 1000.0
    );
    assert!(
        !st.success(),
        "the master must fail: {}",
        describe_status(&st)
    );
    assert!(
        st.code().is_some(),
        "the master should exit, not die of a signal: {}",
        describe_status(&st)
    );
    let err = error_line(&s).expect("a `forklift: error: ` line");
    assert!(
        err.contains("recover threshold (3)"),
        "the error must name the threshold: {err}"
    );
    assert_eq!(crashes, 4, "threshold 3: the 4th crash stops the server");
    assert!(
        !backoffs.is_empty(),
        "repeated crashes of a slot must be respawned with a backoff"
    );
    assert!(
        cpu < 0.25,
        "the master used {cpu:.3} s of CPU during a crash loop of {took:?}: it must not spin"
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(2), || group_empty(
            s.pgid
        )),
        "processes left: {:?}",
        group_members(s.pgid)
    );
}
