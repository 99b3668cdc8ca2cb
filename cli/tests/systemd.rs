//! systemd socket activation and sd_notify, with the test playing systemd: it binds the
//! listening socket itself and hands it to forklift as fd 3 (LISTEN_FDS=1, LISTEN_PID = the
//! forklift process), and listens on a datagram socket named by NOTIFY_SOCKET for READY=1,
//! RELOADING=1 and STOPPING=1.

mod common;

use common::*;

/// Request budget of `assert_served_by` (it stops as soon as every expected worker has answered;
/// on a shared socket one busy worker can win a few hundred accepts in a row).
const SPREAD: usize = 1000;
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// The notify socket systemd would listen on, with what it received so far.
struct NotifySocket {
    sock: UnixDatagram,
    _path: TempSock,
    got: Vec<String>,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let path = TempSock::new("notify");
        let sock = UnixDatagram::bind(&path.0).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            sock,
            _path: path,
            got: Vec::new(),
        }
    }

    fn path(&self) -> &str {
        self._path.0.to_str().expect("utf-8 temp path")
    }

    /// The next datagram, or `None` at the deadline.
    fn next(&mut self, deadline: Instant) -> Option<String> {
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.got.push(msg.clone());
                    return Some(msg);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("recv on the notify socket: {e}"),
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// The next datagram must start with `prefix`.
    fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        match self.next(Instant::now() + timeout) {
            Some(m) if m.starts_with(prefix) => m,
            Some(m) => panic!(
                "notify datagram {m:?} does not start with {prefix:?} (all received: {:?})",
                self.got
            ),
            None => panic!(
                "no notify datagram starting with {prefix:?} within {timeout:?} (received: {:?})",
                self.got
            ),
        }
    }

    /// Datagrams already queued (non-blocking).
    fn drain(&mut self) -> Vec<String> {
        self.sock.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.sock.set_nonblocking(false).unwrap();
        out
    }
}

/// `KEY=value` of a notify datagram.
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Start forklift as systemd would: `listener` at fd 3, LISTEN_FDS=1, LISTEN_PID = its pid
/// (the shell's `exec` keeps the pid, so `$$` is forklift's pid), NOTIFY_SOCKET.
fn start_activated(listener: &TcpListener, notify: &NotifySocket, args: &[&str]) -> Server {
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(forklift_bin())
        .args(args)
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_FDNAMES")
        .env("NOTIFY_SOCKET", notify.path())
        .env("RUST_LOG", DEFAULT_RUST_LOG);
    // SAFETY: dup2 and fcntl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears close-on-exec, but not when fd is already 3
            let flags = libc::fcntl(3, libc::F_GETFD);
            if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server::start_command(cmd, args.iter().map(|s| s.to_string()).collect())
}

fn socket_activation(args: &[&str]) -> (Server, SocketAddr, NotifySocket) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let notify = NotifySocket::bind();
    let s = start_activated(&listener, &notify, args);
    // forklift holds its own copy now; closing the test's leaves forklift's the only one
    drop(listener);
    (s, addr, notify)
}

fn activated_lifecycle(args: &[&str]) {
    let (mut s, addr, mut notify) = socket_activation(args);
    let ready: BTreeSet<u32> = s.wait_ready().into_iter().collect();
    assert_eq!(
        s.listeners(),
        vec![Listen::Tcp(addr)],
        "forklift must serve on the inherited socket only"
    );
    assert!(
        s.wait_stderr_contains("inherited sockets (LISTEN_FDS)", Duration::from_secs(2))
            .is_some(),
        "no log line about the inherited sockets"
    );
    let r = http_get(addr, "/").expect("GET / on the inherited socket");
    assert_greeting(&r);
    assert_served_by(&Listen::Tcp(addr), &ready, SPREAD);

    // READY=1 once every worker serves, from the master itself
    let msg = notify.expect("READY=1", Duration::from_secs(5));
    assert_eq!(
        field(&msg, "MAINPID"),
        Some(s.pid.to_string().as_str()),
        "MAINPID of {msg:?} (forklift pid {})",
        s.pid
    );
    assert!(field(&msg, "STATUS").is_some(), "no STATUS= in {msg:?}");

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 once generation 2 serves
    let before = monotonic_usec();
    s.send_signal(libc::SIGHUP);
    let msg = notify.expect("RELOADING=1", Duration::from_secs(5));
    let after = monotonic_usec();
    let usec: u64 = field(&msg, "MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC= in {msg:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("MONOTONIC_USEC of {msg:?} is not a number"));
    assert!(
        before <= usec && usec <= after,
        "MONOTONIC_USEC={usec} not between {before} and {after} (CLOCK_MONOTONIC around the HUP)"
    );
    let reloaded = s.expect_line(
        "`reloaded generation=2`",
        |l| l.starts_with("reloaded generation=2"),
        Duration::from_secs(10),
    );
    let msg = notify.expect("READY=1", Duration::from_secs(5));
    assert_eq!(field(&msg, "MAINPID"), Some(s.pid.to_string().as_str()));
    let new: BTreeSet<u32> = parse_pid_list(&parse_hook(&reloaded).1["pids"])
        .into_iter()
        .collect();
    // the old generation drains after the `reloaded` line; then only the new one answers
    assert!(
        poll_until(Instant::now() + Duration::from_secs(10), || ready
            .iter()
            .all(|&p| !process_alive(p))),
        "generation 1 workers {ready:?} still alive after the reload"
    );
    assert_served_by(&Listen::Tcp(addr), &new, SPREAD);

    // SIGTERM: STOPPING=1, exit 0
    s.send_signal(libc::SIGTERM);
    notify.expect("STOPPING=1", Duration::from_secs(5));
    let st = s.wait_exit(Instant::now() + Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    // nothing else: no worker talks to the notify socket
    let extra = notify.drain();
    assert!(
        extra.is_empty(),
        "unexpected notify datagrams after STOPPING=1: {extra:?} (all: {:?})",
        notify.got
    );
    println!("NOTIFY {args:?}: {:?}", notify.got);
}

#[test]
fn socket_activation_and_notify() {
    activated_lifecycle(&["serve", "--workers", "2"]);
}

#[test]
fn socket_activation_and_notify_exec_workers() {
    activated_lifecycle(&["serve", "--workers", "2", "--spawn", "exec"]);
}

/// With LISTEN_FDS set, a --listen address is not bound (it would fail: the port is taken),
/// and the log says so.
#[test]
fn socket_activation_ignores_listen_flag() {
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let (s, addr, mut notify) =
        socket_activation(&["serve", "--workers", "2", "--listen", &busy_addr]);
    let ready: BTreeSet<u32> = s.wait_ready().into_iter().collect();
    assert_eq!(s.listeners(), vec![Listen::Tcp(addr)]);
    let line = s
        .wait_stderr_contains("configured addresses are not bound", Duration::from_secs(2))
        .expect("a log line saying the --listen address is ignored");
    assert!(line.contains("LISTEN_FDS"), "{line:?}");
    assert_served_by(&Listen::Tcp(addr), &ready, SPREAD);
    notify.expect("READY=1", Duration::from_secs(5));
    drop(busy);
}

/// Workers do not inherit NOTIFY_SOCKET when executed (only the master talks to systemd).
#[test]
fn exec_workers_do_not_get_notify_socket() {
    let (s, _addr, mut notify) = socket_activation(&["serve", "--workers", "2", "--spawn", "exec"]);
    let ready = s.wait_ready();
    notify.expect("READY=1", Duration::from_secs(5));
    for pid in ready {
        let env = std::fs::read(format!("/proc/{pid}/environ")).expect("worker environ");
        let vars: Vec<String> = env
            .split(|&b| b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        assert!(
            !vars.iter().any(|v| v.starts_with("NOTIFY_SOCKET=")),
            "exec'd worker {pid} has NOTIFY_SOCKET in its environment"
        );
        assert!(
            vars.iter().any(|v| v == &format!("LISTEN_PID={pid}")),
            "exec'd worker {pid} has no LISTEN_PID of its own: {:?}",
            vars.iter()
                .filter(|v| v.starts_with("LISTEN_"))
                .collect::<Vec<_>>()
        );
    }
}
