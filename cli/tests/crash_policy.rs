//! The crash policy with default settings (issue 13, part 1): workers that crash after they
//! served are always respawned, with backoff while they keep crashing, and the server never
//! stops because of them; the master stops only when a slot cannot boot 10 times in a row.
//! The log says what killed a worker and how often workers crash.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The newest live pid of each worker slot, from the `spawned` lines.
fn live_workers(s: &Server) -> BTreeMap<u32, u32> {
    let mut slots = BTreeMap::new();
    for h in s.hooks_of("spawned") {
        let pid = h.num("pid");
        if process_alive(pid) {
            slots.insert(h.num("worker"), pid);
        }
    }
    slots
}

/// Clients that send connection-per-request GETs to `path` until stopped; counts answers.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, path: &'static str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match http_get_timeout(addr, path, Duration::from_secs(5)) {
                            Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                            _ => failed.fetch_add(1, Ordering::SeqCst),
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the clients; returns (answered, failed).
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

#[test]
fn workers_killed_every_half_second_are_always_replaced() {
    let s = Server::start_ready(&["serve", "--listen", "127.0.0.1:0", "--workers", "2"]);
    let addr = s.addr();
    let load = Load::start(addr, "/", 4);
    let master_cpu_before = cpu_secs(s.pid).unwrap_or(0.0);
    let end = Instant::now() + Duration::from_secs(10);
    let mut kills = 0;
    let mut slot = 0u32;
    while Instant::now() < end {
        // The pace of an OOM killer or an impatient operator (load pacing, not a wait).
        thread::sleep(Duration::from_millis(500));
        if let Some(&pid) = live_workers(&s).get(&slot) {
            kill_pid(pid, libc::SIGKILL);
            kills += 1;
        }
        slot = 1 - slot;
        assert!(
            process_alive(s.pid),
            "the master exited after {kills} kills; stderr:\n{}",
            s.stderr_text()
        );
    }
    let master_cpu = cpu_secs(s.pid).unwrap_or(0.0) - master_cpu_before;
    let (ok, failed) = load.finish();
    let ratio = failed as f64 / (ok + failed).max(1) as f64;
    println!(
        "{kills} workers SIGKILLed in 10 s: {ok} answered, {failed} failed ({:.3} %); master CPU {:.0} ms",
        ratio * 100.0,
        master_cpu * 1000.0
    );
    assert!(kills >= 15, "only {kills} kills");
    assert!(process_alive(s.pid), "the master must keep serving");
    assert!(ok > 0);
    assert!(ratio < 0.01, "{failed} of {} requests failed", ok + failed);
    assert!(
        master_cpu < 2.0,
        "the master used {master_cpu:.2} s of CPU in 10 s"
    );
    // Back to two serving workers.
    assert!(
        poll_until(Instant::now() + Duration::from_secs(15), || {
            live_workers(&s).len() == 2
        }),
        "workers: {:?}",
        live_workers(&s)
    );
    assert_greeting(&http_get(addr, "/").unwrap());
    let stderr = s.stderr_text();
    assert!(
        stderr.contains("the OOM killer or an operator killed it"),
        "the log must say what SIGKILL means:\n{stderr}"
    );
    assert!(
        stderr.contains("crashes in the last"),
        "the log must give the crash rate:\n{stderr}"
    );
    assert!(
        !stderr.contains("recover threshold"),
        "no recover threshold by default:\n{stderr}"
    );
    let mut s = s;
    s.send_signal(libc::SIGTERM);
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert!(st.success(), "{}", describe_status(&st));
}

#[test]
fn a_handler_that_aborts_is_respawned_with_backoff_while_other_routes_answer() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--fault",
        "block-route",
    ]);
    let addr = s.addr();
    let load = Load::start(addr, "/", 2);
    let master_cpu_before = cpu_secs(s.pid).unwrap_or(0.0);
    let end = Instant::now() + Duration::from_secs(8);
    let mut aborts = 0;
    while Instant::now() < end {
        // One aborting request every 300 ms (load pacing, not a wait): workers keep dying
        // soon after they are ready, so respawns back off.
        thread::sleep(Duration::from_millis(300));
        let _ = http_get_timeout(addr, "/abort", Duration::from_secs(2));
        aborts += 1;
        assert!(
            process_alive(s.pid),
            "the master exited; stderr:\n{}",
            s.stderr_text()
        );
    }
    let master_cpu = cpu_secs(s.pid).unwrap_or(0.0) - master_cpu_before;
    let (ok, failed) = load.finish();
    let stderr = s.stderr_text();
    let crashes = s
        .hooks_of("exited")
        .iter()
        .filter(|h| h.get("status").contains("SIGABRT"))
        .count();
    println!(
        "{aborts} GET /abort, {crashes} crashes: GET / {ok} answered, {failed} failed; \
         master CPU {:.0} ms",
        master_cpu * 1000.0
    );
    assert!(crashes >= 5, "only {crashes} crashes");
    assert!(ok > 0, "the other route must keep answering");
    assert!(
        stderr.contains("(backoff"),
        "respawns of a crash loop must back off:\n{stderr}"
    );
    assert!(
        stderr.contains("crashes in the last"),
        "the log must give the crash rate:\n{stderr}"
    );
    assert!(stderr.contains("it aborted"), "{stderr}");
    assert!(
        master_cpu < 1.0,
        "the master used {master_cpu:.2} s of CPU: it must not spin"
    );
    // Once the aborts stop, both slots serve again.
    assert!(
        poll_until(Instant::now() + Duration::from_secs(30), || {
            live_workers(&s).len() == 2 && http_get(addr, "/").is_ok_and(|r| r.status == 200)
        }),
        "the pool did not come back: {:?}",
        live_workers(&s)
    );
}

/// A slot whose respawn cannot boot is retried with backoff while the other worker serves,
/// and recovers once the cause is gone.
#[test]
fn a_respawn_that_cannot_boot_is_retried_and_recovers() {
    let file = TempSock::new("boot-fault");
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--fault",
        "boot-panic-if-file",
        "--fault-file",
        file.0.to_str().unwrap(),
    ]);
    let addr = s.addr();
    std::fs::write(&file.0, b"fail").unwrap();
    let victim = live_workers(&s)[&0];
    kill_pid(victim, libc::SIGKILL);
    let third =
        s.wait_stderr_contains("failed to boot (3 of 10 in a row)", Duration::from_secs(20));
    assert!(
        third.is_some(),
        "no third boot attempt; stderr:\n{}",
        s.stderr_text()
    );
    // Meanwhile the other worker serves.
    assert_greeting(&http_get(addr, "/").unwrap());
    std::fs::remove_file(&file.0).unwrap();
    assert!(
        poll_until(Instant::now() + Duration::from_secs(20), || {
            live_workers(&s).len() == 2
                && s.hooks_of("exited").len() >= 4
                && s.stderr_text().matches("failed to boot").count()
                    == s.hooks_of("exited").len() - 1
        }),
        "slot 0 did not come back: {:?}\n{}",
        live_workers(&s),
        s.stderr_text()
    );
    assert!(process_alive(s.pid));
    assert_greeting(&http_get(addr, "/").unwrap());
}

/// A slot that cannot boot 10 times in a row stops the server with the worker's error.
#[test]
fn ten_failed_boots_in_a_row_stop_the_server() {
    let file = TempSock::new("boot-fault-stop");
    let mut s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--fault",
        "boot-panic-if-file",
        "--fault-file",
        file.0.to_str().unwrap(),
    ]);
    std::fs::write(&file.0, b"fail").unwrap();
    let victim = live_workers(&s)[&1];
    kill_pid(victim, libc::SIGKILL);
    // 10 tries with the slot's backoff take about 30 s.
    let st = s.wait_exit(Instant::now() + Duration::from_secs(90));
    // Its last lines may still be in the pipe: read to the end before looking.
    s.wait_output_closed(Instant::now() + Duration::from_secs(5));
    assert!(!st.success(), "{}", describe_status(&st));
    let err = error_line(&s).expect("a `forklift: error: ` line");
    assert!(err.contains("10 starts in a row failed"), "{err}");
    let tries = s.stderr_text().matches("failed to boot (").count();
    assert_eq!(tries, 9, "{}", s.stderr_text());
}
