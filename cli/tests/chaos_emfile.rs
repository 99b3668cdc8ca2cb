//! Chaos (issue 5, scenario 6): out of file descriptors (EMFILE). Under `ulimit -n 64`, with
//! far more clients than fds, the worker neither crashes nor spins in its accept loop, and
//! serves again once the clients close.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn emfile_neither_crashes_nor_spins_and_service_resumes() {
    let mut cmd = Command::new("bash");
    cmd.args([
        "-c",
        "ulimit -n 64 && exec \"$0\" serve --listen 127.0.0.1:0 --workers 1",
        forklift_bin(),
    ])
    .env("RUST_LOG", DEFAULT_RUST_LOG);
    let s = Server::start_command(cmd, vec!["(ulimit -n 64) serve --workers 1".into()]);
    let worker = s.wait_ready()[0];
    let addr = s.addr();
    let limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("64")),
        "the worker should run with 64 fds:\n{limits}"
    );
    // 200 clients, each with a request on the wire, all held open.
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(addr).expect("connect (the backlog takes it)");
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        clients.push(c);
    }
    // Saturated: wait until the worker reports EMFILE, then measure its CPU over 2 s.
    let emfile = s.wait_stderr_contains("accept failed", Duration::from_secs(5));
    assert!(emfile.is_some(), "the worker never ran out of fds");
    let t0 = Instant::now();
    let c0 = cpu_ticks(worker).expect("read /proc/PID/stat");
    std::thread::sleep(Duration::from_secs(2));
    let cpu = (cpu_ticks(worker).expect("read /proc/PID/stat") - c0) as f64 / clk_tck();
    let window = t0.elapsed();
    let retries = s
        .stderr
        .snapshot()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    println!(
        "EMFILE: worker CPU {:.0} ms over {} while saturated; {retries} accept retries logged",
        cpu * 1000.0,
        ms(window)
    );
    assert!(process_alive(worker), "the worker died of EMFILE");
    assert!(
        cpu < 0.5,
        "the worker used {cpu:.2} CPU-seconds in {window:?} while out of fds: its accept loop spins"
    );
    assert!(
        retries < 40,
        "{retries} accept retries logged: the accept loop does not back off"
    );
    // The clients leave; the worker serves again.
    drop(clients);
    let t1 = Instant::now();
    let back = poll_until(t1 + Duration::from_secs(10), || {
        http_get_timeout(addr, "/", Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
    });
    println!(
        "EMFILE: served again {} after the clients closed",
        ms(t1.elapsed())
    );
    assert!(back, "no answer within 10 s after the clients closed");
    let r = http_get(addr, "/").unwrap();
    assert_greeting(&r);
    assert_eq!(r.worker_pid(), worker, "the same worker serves");
    assert!(s.hooks_of("exited").is_empty(), "no worker may exit");
}
