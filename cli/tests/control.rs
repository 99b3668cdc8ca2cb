//! The control socket: `serve --control PATH` answers `forklift status|reload|stop --control
//! PATH` (or FORKLIFT_CONTROL=PATH) on a Unix socket of mode 0600. A second master on the same
//! path is refused while the first answers, and a path that is not a socket is never removed.

mod common;

use common::*;

/// Request budget of `assert_served_by` (it stops as soon as every expected worker has answered;
/// on a shared socket one busy worker can win a few hundred accepts in a row).
const SPREAD: usize = 1000;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// How long a client command may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Output of one client run.
struct Client {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Run `forklift <args>` as a client (under the process-group guard, with a deadline).
fn client_env(args: &[&str], env: &[(&str, &str)]) -> Client {
    let mut all_env = vec![("RUST_LOG", "info")];
    all_env.extend_from_slice(env);
    let mut c = Server::start_with_env(args, &all_env);
    let status = c
        .try_wait_exit(Instant::now() + CLIENT_TIMEOUT)
        .unwrap_or_else(|| panic!("forklift {args:?} did not exit within {CLIENT_TIMEOUT:?}"));
    c.wait_output_closed(Instant::now() + Duration::from_secs(5));
    Client {
        status,
        stdout: c.stdout_text(),
        stderr: c.stderr_text(),
    }
}

fn client(args: &[&str]) -> Client {
    client_env(args, &[])
}

/// `forklift <cmd> --control PATH`, which must succeed.
fn ctl(cmd: &str, path: &str) -> String {
    let c = client(&[cmd, "--control", path]);
    assert!(
        c.status.success(),
        "forklift {cmd} --control {path}: {}\nstdout: {}\nstderr: {}",
        describe_status(&c.status),
        c.stdout,
        c.stderr
    );
    c.stdout
}

/// A parsed `status` answer.
#[derive(Debug)]
struct Status {
    header: String,
    /// (pid, generation, state, requests) per worker row
    rows: Vec<(u32, u64, String, u64)>,
}

impl Status {
    fn parse(text: &str) -> Status {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = lines.next().unwrap_or("").to_string();
        let titles = lines.next().unwrap_or("");
        assert!(
            titles.split_whitespace().collect::<Vec<_>>()
                == ["ID", "PID", "GEN", "STATE", "UPTIME", "REQUESTS", "RESTARTS", "CONNS"],
            "unexpected column titles {titles:?} in status:\n{text}"
        );
        let rows = lines
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert_eq!(f.len(), 8, "status row {l:?}");
                let num = |i: usize| -> u64 {
                    f[i].parse()
                        .unwrap_or_else(|_| panic!("column {i} of {l:?} is not a number"))
                };
                (num(1) as u32, num(2), f[3].to_string(), num(5))
            })
            .collect();
        Status { header, rows }
    }

    fn pids(&self) -> BTreeSet<u32> {
        self.rows.iter().map(|r| r.0).collect()
    }

    fn requests(&self) -> u64 {
        self.rows.iter().map(|r| r.3).sum()
    }
}

fn status(path: &str) -> Status {
    Status::parse(&ctl("status", path))
}

fn serve_with_control(path: &str) -> Server {
    Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--control",
        path,
    ])
}

fn sock_str(sock: &TempSock) -> &str {
    sock.0.to_str().expect("utf-8 temp path")
}

#[test]
fn control_status_reload_stop() {
    let sock = TempSock::new("ctl");
    let path = sock_str(&sock);
    let mut s = serve_with_control(path);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();

    // a private socket
    let meta = std::fs::symlink_metadata(&sock.0).expect("the control socket exists");
    assert!(meta.file_type().is_socket(), "{path} is not a socket");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "mode of the control socket"
    );

    // status: the master, generation 1, one row per worker
    let st = status(path);
    assert!(
        st.header.starts_with(&format!("master pid {}", s.pid)),
        "status header {:?} (master pid {})",
        st.header,
        s.pid
    );
    assert!(st.header.contains("generation 1"), "{:?}", st.header);
    assert!(st.header.contains("running"), "{:?}", st.header);
    assert!(st.header.contains("2 workers"), "{:?}", st.header);
    assert_eq!(st.pids(), ready, "status rows vs the ready line: {st:?}");
    assert!(
        st.rows.iter().all(|r| r.1 == 1 && r.2 == "ready"),
        "rows must be generation 1, ready: {st:?}"
    );

    // requests show up within a couple of heartbeats
    let sent = 40;
    let spread = spread_requests(&Listen::Tcp(s.addr()), sent, 2, |_| false);
    assert!(
        spread.errors.is_empty() && spread.bad.is_empty(),
        "{spread:?}"
    );
    assert_eq!(spread.ok, sent);
    let t0 = Instant::now();
    let mut last = None;
    let counted = poll_until_every(
        t0 + Duration::from_secs(5),
        Duration::from_millis(200),
        || {
            let st = status(path);
            let n = st.requests();
            last = Some(st);
            n >= sent as u64
        },
    );
    let last = last.unwrap();
    assert!(
        counted,
        "REQUESTS column sums to {} after {sent} requests (5 s of heartbeats): {last:?}",
        last.requests()
    );
    println!(
        "CONTROL status: {} requests counted {} after the last of {sent} was answered",
        last.requests(),
        ms(t0.elapsed())
    );

    // reload over the socket
    let answer = ctl("reload", path);
    assert!(
        answer.starts_with("reloading"),
        "answer to reload: {answer:?}"
    );
    let reloaded = s.expect_line(
        "`reloaded generation=2`",
        |l| l.starts_with("reloaded generation=2"),
        Duration::from_secs(10),
    );
    let new: BTreeSet<u32> = parse_pid_list(&parse_hook(&reloaded).1["pids"])
        .into_iter()
        .collect();
    assert!(new.is_disjoint(&ready));
    // the old generation drains; then status lists exactly the new workers
    let mut last = None;
    let settled = poll_until(Instant::now() + Duration::from_secs(10), || {
        let st = status(path);
        let ok = st.header.contains("generation 2")
            && st.pids() == new
            && st.rows.iter().all(|r| r.1 == 2 && r.2 == "ready");
        last = Some(st);
        ok
    });
    assert!(
        settled,
        "status after the reload should show generation 2 with workers {new:?}: {:?}",
        last
    );

    // the environment variable instead of the flag
    let c = client_env(&["status"], &[("FORKLIFT_CONTROL", path)]);
    assert!(
        c.status.success(),
        "FORKLIFT_CONTROL=PATH forklift status: {}\nstderr: {}",
        describe_status(&c.status),
        c.stderr
    );
    let st = Status::parse(&c.stdout);
    assert!(
        st.header.starts_with(&format!("master pid {}", s.pid)),
        "{:?}",
        st.header
    );
    assert_eq!(st.pids(), new);

    // stop: graceful, exit 0, the socket file removed
    let answer = ctl("stop", path);
    assert_eq!(answer.trim(), "stopping", "answer to stop");
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "master: {}", describe_status(&st));
    s.expect_line("`stopped`", |l| l == "stopped", Duration::from_secs(2));
    assert!(
        !sock.0.exists(),
        "the control socket {path} is left after the master exited"
    );
    // and a client now fails clearly
    let c = client(&["status", "--control", path]);
    assert!(!c.status.success());
    assert!(c.stderr.contains(path), "stderr: {}", c.stderr);
}

#[test]
fn status_without_master_fails_clearly() {
    let path = "/nonexistent.sock";
    assert!(!Path::new(path).exists());
    let c = client(&["status", "--control", path]);
    assert!(
        !c.status.success(),
        "status on a missing socket must fail: {}",
        describe_status(&c.status)
    );
    println!("NO MASTER: stderr {:?}", c.stderr.trim());
    assert!(
        c.stderr.contains(path),
        "stderr must name the path: {}",
        c.stderr
    );
    assert!(
        c.stderr.starts_with("forklift: error: "),
        "stderr: {}",
        c.stderr
    );
    assert!(c.stdout.trim().is_empty(), "stdout: {}", c.stdout);
}

#[test]
fn second_master_on_same_control_path_is_refused() {
    let sock = TempSock::new("ctl-dup");
    let path = sock_str(&sock);
    let mut first = serve_with_control(path);
    let ready: BTreeSet<u32> = first.pids_from_ready().into_iter().collect();

    let (second, st) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--control",
            path,
        ],
        Duration::from_secs(10),
    );
    assert!(
        !st.success(),
        "a second master on {path} must fail: {}",
        describe_status(&st)
    );
    let err = error_line(&second)
        .unwrap_or_else(|| panic!("no `forklift: error:` line: {}", second.stderr_text()));
    println!("SECOND MASTER: {err}");
    assert!(err.contains(path), "error must name the path: {err}");
    assert!(err.contains("in use"), "error must say `in use`: {err}");
    assert!(
        second.spawned_pids().is_empty(),
        "{:?}",
        second.stdout_lines()
    );

    // the first master is untouched: running, its socket answers, its workers serve
    assert!(first.try_exit().is_none(), "the first master exited");
    assert!(sock.0.exists(), "the first master's socket was removed");
    let st = status(path);
    assert!(
        st.header.starts_with(&format!("master pid {}", first.pid)),
        "{:?}",
        st.header
    );
    assert_eq!(st.pids(), ready);
    assert_served_by(&Listen::Tcp(first.addr()), &ready, SPREAD);
    assert_eq!(first.spawned_pids().len(), 2, "{:?}", first.stdout_lines());
}

#[test]
fn control_path_that_is_a_regular_file_is_refused() {
    let file = TempSock::new("ctl-file");
    std::fs::write(&file.0, b"precious\n").unwrap();
    let path = sock_str(&file);
    let (s, st) = run_to_exit(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--control",
            path,
        ],
        Duration::from_secs(10),
    );
    assert!(
        !st.success(),
        "--control on a regular file must fail: {}",
        describe_status(&st)
    );
    let err =
        error_line(&s).unwrap_or_else(|| panic!("no `forklift: error:` line: {}", s.stderr_text()));
    println!("REGULAR FILE: {err}");
    assert!(err.contains(path), "error must name the path: {err}");
    assert!(s.spawned_pids().is_empty(), "{:?}", s.stdout_lines());
    assert_eq!(
        std::fs::read(&file.0).expect("the regular file must still exist"),
        b"precious\n",
        "the file at the control path was changed"
    );
}

/// The raw protocol: one command per connection (incr, decr, unknown).
fn raw(path: &Path, command: &str) -> String {
    let mut s = UnixStream::connect(path).expect("connect to the control socket");
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.write_all(format!("{command}\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn control_incr_decr_and_unknown_command() {
    let sock = TempSock::new("ctl-raw");
    let path = sock_str(&sock);
    let s = serve_with_control(path);
    let ready: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();

    assert_eq!(raw(&sock.0, "incr").trim(), "workers: 3");
    s.expect_line("`workers=3`", |l| l == "workers=3", Duration::from_secs(5));
    let mut last = None;
    assert!(
        poll_until(Instant::now() + Duration::from_secs(10), || {
            let st = status(path);
            let ok = st.rows.len() == 3 && st.rows.iter().all(|r| r.2 == "ready");
            last = Some(st);
            ok
        }),
        "status should show 3 ready workers: {last:?}"
    );
    let three = last.unwrap().pids();
    assert!(ready.is_subset(&three));
    assert_served_by(&Listen::Tcp(s.addr()), &three, SPREAD);

    assert_eq!(raw(&sock.0, "decr").trim(), "workers: 2");
    s.expect_line("`workers=2`", |l| l == "workers=2", Duration::from_secs(5));
    assert!(
        poll_until(Instant::now() + Duration::from_secs(10), || status(path)
            .rows
            .len()
            == 2),
        "status should show 2 workers after decr"
    );

    let answer = raw(&sock.0, "rm -rf /");
    assert!(
        answer.starts_with("error: unknown command"),
        "answer to an unknown command: {answer:?}"
    );
    // still serving
    let st = status(path);
    assert!(st.header.contains("running"), "{:?}", st.header);
}
