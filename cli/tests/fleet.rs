//! A CI-sized fleet check, `bench/fleet`'s small sibling: two forklift hosts on 127.0.0.1
//! behind HAProxy (HTTP mode, `option httpchk GET /readyz` on each host's health port every
//! 100 ms), about 5 s of keep-alive load from client threads, and one host stopped with TERM
//! and started again under it. It counts the requests that failed and prints the count. It
//! asserts that none failed only when the binary has `--shutdown-delay` (which it then
//! passes): without the delay a stop races the balancer's checks, and the count is what the
//! delay is for. Skipped with a notice where `haproxy` is not installed; it installs nothing.

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the load runs at least, and after the restarted host is back.
const LOAD: Duration = Duration::from_secs(5);
const AFTER_BACK: Duration = Duration::from_secs(1);
/// Keep-alive client connections.
const CLIENTS: usize = 8;
/// The delay passed when the binary has `--shutdown-delay`: a few of the balancer's check
/// periods (two failed checks 100 ms apart take a host out).
const SHUTDOWN_DELAY: &str = "1";

fn haproxy_installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn has_shutdown_delay() -> bool {
    let out = Command::new(forklift_bin())
        .args(["serve", "--help"])
        .output()
        .expect("forklift serve --help");
    String::from_utf8_lossy(&out.stdout).contains("--shutdown-delay")
}

/// `n` distinct free ports on 127.0.0.1 in 20000-29999: outside the ephemeral range that the
/// clients' and HAProxy's own connections take ports from, so a host restarted on its port
/// finds it free.
fn free_ports(n: usize) -> Vec<u16> {
    let seed = std::process::id() as usize * 7919;
    let held: Vec<TcpListener> = (0..10_000)
        .map(|i| 20_000 + (seed + i * 104_729) % 10_000)
        .filter_map(|p| TcpListener::bind(("127.0.0.1", p as u16)).ok())
        .take(n)
        .collect();
    assert_eq!(held.len(), n, "no {n} free ports in 20000-29999");
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// One forklift host: its serving and health addresses, and the flags it is started with.
struct Host {
    args: Vec<String>,
    health: SocketAddr,
}

impl Host {
    fn new(port: u16, health: u16, delay: bool) -> Host {
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--workers",
            "1",
            "--health",
            &format!("127.0.0.1:{health}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if delay {
            args.extend(["--shutdown-delay".into(), SHUTDOWN_DELAY.into()]);
        }
        Host {
            args,
            health: ([127, 0, 0, 1], health).into(),
        }
    }

    /// Starts it and waits until its `/readyz` answers 200.
    fn start(&self) -> Server {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let s = Server::start_ready(&args);
        let ready = poll_until(Instant::now() + Duration::from_secs(10), || {
            http_get_timeout(self.health, "/readyz", Duration::from_secs(1))
                .is_ok_and(|r| r.status == 200)
        });
        assert!(ready, "/readyz of {:?} is not 200 within 10 s", self.args);
        s
    }
}

/// HAProxy's status of server `name` in its CSV stats (`UP`, `DOWN`, `UP 1/2`...).
fn server_status(stats: SocketAddr, name: &str) -> String {
    let Ok(r) = http_get_timeout(stats, "/stats;csv", Duration::from_secs(1)) else {
        return String::new();
    };
    let text = r.body_str();
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = header.iter().position(|c| *c == "status").unwrap_or(17);
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.len() > col && f[0] == "hosts" && f[1] == name)
        .map(|f| f[col].to_string())
        .unwrap_or_default()
}

fn wait_status(stats: SocketAddr, name: &str, want: &str, within: Duration) {
    let mut last = String::new();
    let ok = poll_until(Instant::now() + within, || {
        last = server_status(stats, name);
        last == want
    });
    assert!(
        ok,
        "HAProxy's status of {name} is {last:?}, not {want:?}, after {within:?}"
    );
}

/// What the load's clients saw.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    /// Answers other than 200 (HAProxy's 502 and 503).
    status: AtomicU64,
    /// Connections refused or broken before a whole answer came.
    socket: AtomicU64,
}

/// A client: one keep-alive connection at a time to `front`, a `GET /` after the other,
/// a new connection after any failure or `Connection: close`.
fn client(front: SocketAddr, counts: &Counts, stop: &AtomicBool) {
    let request = get_request("fleet", "/", false);
    let mut buf = Vec::new();
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::SeqCst) {
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect(front, Duration::from_secs(5)) {
                Ok(s) => conn.insert(s),
                Err(_) => {
                    counts.socket.fetch_add(1, Ordering::SeqCst);
                    // Pacing, not synchronisation: no tight loop while nothing answers.
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        if stream.write_all(&request).is_err() {
            counts.socket.fetch_add(1, Ordering::SeqCst);
            conn = None;
            continue;
        }
        match read_response(stream, &mut buf) {
            Ok(r) => {
                let counter = if r.status == 200 {
                    &counts.ok
                } else {
                    &counts.status
                };
                counter.fetch_add(1, Ordering::SeqCst);
                if r.closes() {
                    conn = None;
                }
            }
            Err(_) => {
                counts.socket.fetch_add(1, Ordering::SeqCst);
                conn = None;
            }
        }
    }
}

#[test]
fn a_host_restarted_behind_haproxy_under_load_and_the_failed_requests_counted() {
    if !haproxy_installed() {
        eprintln!(
            "notice: haproxy is not installed (apt-get install haproxy): the fleet test is \
             skipped"
        );
        return;
    }
    let delay = has_shutdown_delay();
    let ports = free_ports(6);
    let hosts = [
        Host::new(ports[0], ports[1], delay),
        Host::new(ports[2], ports[3], delay),
    ];
    let (front, stats): (SocketAddr, SocketAddr) = (
        ([127, 0, 0, 1], ports[4]).into(),
        ([127, 0, 0, 1], ports[5]).into(),
    );
    let mut servers: Vec<Server> = hosts.iter().map(Host::start).collect();

    let dir = TempDir::new("fleet");
    let cfg = dir.0.join("haproxy.cfg");
    let mut text = format!(
        "global\n    maxconn 1024\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    \
         timeout server 30s\n    timeout check 1s\n    retries 3\n    option redispatch\n    \
         default-server inter 100ms fall 2 rise 2\n\
         frontend fleet\n    bind {front}\n    default_backend hosts\n\
         backend hosts\n    balance roundrobin\n    option httpchk GET /readyz\n"
    );
    for (i, h) in hosts.iter().enumerate() {
        text += &format!(
            "    server h{i} 127.0.0.1:{} check port {}\n",
            ports[2 * i],
            h.health.port()
        );
    }
    text += &format!(
        "listen stats\n    mode http\n    bind {stats}\n    stats enable\n    stats uri /stats\n"
    );
    std::fs::write(&cfg, &text).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&cfg);
    let _haproxy = Server::spawn(cmd, Launch::new("haproxy", vec![text.clone()]));
    for name in ["h0", "h1"] {
        wait_status(stats, name, "UP", Duration::from_secs(10));
    }

    let counts = Arc::new(Counts::default());
    let mut clients = Clients::new();
    for _ in 0..CLIENTS {
        let counts = counts.clone();
        clients.spawn(move |stop| client(front, &counts, stop));
    }
    let t0 = Instant::now();
    poll_until(t0 + Duration::from_secs(10), || {
        counts.ok.load(Ordering::SeqCst) >= 100
    });

    // The deploy: TERM to host 0's master, its exit, a new master on the same addresses.
    let restart = Instant::now();
    servers[0].send_signal(libc::SIGTERM);
    let st = servers[0].wait_exit(Instant::now() + Duration::from_secs(40));
    assert!(st.success(), "host 0 exited with {st:?}");
    servers[0] = hosts[0].start();
    let back = restart.elapsed();
    wait_status(stats, "h0", "UP", Duration::from_secs(10));
    sleep_until((t0 + LOAD).max(Instant::now() + AFTER_BACK));
    clients.finish();

    let ok = counts.ok.load(Ordering::SeqCst);
    let status = counts.status.load(Ordering::SeqCst);
    let socket = counts.socket.load(Ordering::SeqCst);
    let failed = status + socket;
    let flags = if delay {
        format!("--shutdown-delay {SHUTDOWN_DELAY}")
    } else {
        "no --shutdown-delay (the binary has none)".into()
    };
    println!(
        "fleet: {failed} of {} requests failed ({status} not 200, {socket} socket errors) in \
         {:.1} s of load from {CLIENTS} keep-alive clients through HAProxy while host 0 was \
         stopped with TERM and started again (ready again {} after the TERM); flags: {flags}",
        ok + failed,
        t0.elapsed().as_secs_f64(),
        ms(back)
    );
    assert!(ok >= 100, "only {ok} requests served");
    // Both hosts serve at the end.
    for (i, h) in hosts.iter().enumerate() {
        let r = http_get_timeout(h.health, "/readyz", Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("/readyz of host {i}: {e}"));
        assert_eq!(r.status, 200, "/readyz of host {i}");
    }
    if delay {
        assert_eq!(
            failed, 0,
            "with --shutdown-delay {SHUTDOWN_DELAY} no request may fail"
        );
    }
}
