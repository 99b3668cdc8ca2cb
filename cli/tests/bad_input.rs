//! Theme 6: bad input: a taken port, unparsable addresses, `--workers 0`, and a
//! thread started before forking.

mod common;

use common::*;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Common checks for a command that must be refused before any worker starts.
fn refused(args: &[&str]) -> Server {
    let (s, st) = run_to_exit(args, Duration::from_secs(5));
    println!(
        "forklift {args:?}: {} after {}",
        describe_status(&st),
        ms(s.started.elapsed())
    );
    assert!(!st.success(), "forklift {args:?} must fail");
    assert!(
        st.code().is_some(),
        "should exit with an error code, not a signal: {}",
        describe_status(&st)
    );
    s.wait_output_closed(Instant::now() + Duration::from_secs(2));
    assert!(
        !s.stdout_lines().iter().any(|l| l.starts_with("spawned ")),
        "no worker may be spawned"
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || group_empty(
            s.pgid
        )),
        "processes left: {:?}",
        group_members(s.pgid)
    );
    s
}

fn taken_port(extra: &[&str]) {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let mut args = vec!["serve", "--listen", addr.as_str(), "--workers", "2"];
    args.extend_from_slice(extra);
    let s = refused(&args);
    let err = s.stderr_text();
    assert!(
        err.contains("already in use"),
        "stderr must say `already in use`"
    );
    assert!(
        error_line(&s).is_some(),
        "stderr must have a `forklift: error: ` line"
    );
    drop(holder);
}

#[test]
fn taken_port_is_refused() {
    taken_port(&[]);
}

#[test]
fn taken_port_is_refused_reuse_port() {
    taken_port(&["--reuse-port"]);
}

#[test]
fn taken_port_is_refused_exec() {
    taken_port(&["--spawn", "exec"]);
}

fn bad_address(addr: &str) {
    let s = refused(&["serve", "--listen", addr, "--workers", "2"]);
    let err = s.stderr_text();
    assert!(
        err.contains(addr),
        "the error must name the address {addr:?}"
    );
    if error_line(&s).is_none() {
        println!("NOTE: no `forklift: error: ` line for bad address {addr:?}; stderr was:\n{err}");
    }
}

#[test]
fn bad_address_port_not_a_number() {
    bad_address("127.0.0.1:notaport");
}

#[test]
fn bad_address_nonsense() {
    bad_address("nonsense");
}

#[test]
fn zero_workers_is_refused() {
    let s = refused(&["serve", "--listen", "127.0.0.1:0", "--workers", "0"]);
    let err = s.stderr_text();
    assert!(
        err.to_lowercase().contains("worker"),
        "the error must talk about workers"
    );
    if error_line(&s).is_none() {
        println!("NOTE: no `forklift: error: ` line for --workers 0; stderr was:\n{err}");
    }
}

#[test]
fn thread_before_fork_is_refused() {
    let s = refused(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--fault",
        "thread-before-fork",
    ]);
    let err = s.stderr_text();
    assert!(
        err.to_lowercase().contains("thread"),
        "the error must mention threads"
    );
    assert!(
        error_line(&s).is_some(),
        "stderr must have a `forklift: error: ` line"
    );
}

/// The refusal is specific to fork: with `--spawn exec` a thread in the master
/// is harmless, so the server must start and serve.
#[test]
fn thread_before_fork_is_fine_with_exec() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--spawn",
        "exec",
        "--fault",
        "thread-before-fork",
    ]);
    let ready = s.pids_from_ready().into_iter().collect();
    assert_served_by(&Listen::Tcp(s.addr()), &ready, 200);
}
