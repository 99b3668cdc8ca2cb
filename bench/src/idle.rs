//! The idle workload: the harness itself opens 10,000 keep-alive connections, asks for
//! `/4k.bin` once on each and then leaves them idle. What they cost the server in memory (PSS,
//! summed over the master and its workers, before and with the connections), and whether it
//! gives the memory back once they close.
//!
//! The steps, each bounded in time:
//!
//! 1. Warm up: [`WARM_UP`] connections, one GET each, closed, so that what a server sets up
//!    once (a worker's first request) is not counted per connection.
//! 2. Memory before, once it has stopped moving.
//! 3. Open the connections, [`OPEN_THREADS`] threads with blocking sockets, each connection
//!    answered before the next is opened (so the accept queue never overflows).
//! 4. Memory with the connections, once stable; the connections still open on both sides
//!    (a non-blocking read on the client's; the server's from /proc/net/tcp).
//! 5. Close them all; wait until the server has closed its side (/proc/net/tcp); memory
//!    after, once stable.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use forklift_testkit::http::{connect, get_request, read_response};
use forklift_testkit::process;
use serde::Serialize;

use crate::parse::{Errors, LoadReport};

/// Connections opened (and closed) before the memory "before" is read.
pub const WARM_UP: usize = 64;
/// Threads opening the connections.
pub const OPEN_THREADS: usize = 4;
/// Connect, write and read timeout of each connection while it is opened.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening all the connections may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(60);
/// How long the server may take to close its side once the client has closed.
const CLOSE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the memory may take to level off.
const SETTLE_DEADLINE: Duration = Duration::from_secs(3);
/// The memory is read this often while it settles.
const SETTLE_EVERY: Duration = Duration::from_millis(200);

/// What the idle workload asks for.
#[derive(Debug, Clone)]
pub struct Spec {
    pub port: u16,
    pub connections: usize,
    /// The URL path each connection asks for once.
    pub path: String,
    /// The length of its body.
    pub body_len: usize,
}

/// Memory of a process tree, summed over its processes, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Sum of VmRSS: pages shared between the master and its workers count once per process.
    pub rss_kib: u64,
    /// Sum of PSS (/proc/PID/smaps_rollup): each shared page divided among its sharers, so the
    /// sum is what the server as a whole holds.
    pub pss_kib: u64,
}

/// The idle workload's own figures (the rest is in the run's [`LoadReport`]).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Connections asked for.
    pub connections: usize,
    /// Connections answered and still open on both sides when the memory was read: the
    /// divisor of the per-connection figures.
    pub held: usize,
    /// The server's sockets on its port that were established then (/proc/net/tcp).
    pub server_side_open: usize,
    /// Seconds to open and get an answer on every connection.
    pub open_s: f64,
    pub before: Memory,
    pub with: Memory,
    pub after: Memory,
    /// PSS growth per connection held, in KiB: the table's figure.
    pub kib_per_conn: Option<f64>,
    /// The same from VmRSS.
    pub kib_per_conn_rss: Option<f64>,
    /// PSS after the connections closed over PSS before they opened.
    pub after_over_before: Option<f64>,
    /// Milliseconds from closing the connections until the server had closed every one
    /// (None: not within the deadline).
    pub server_closed_ms: Option<f64>,
    /// The soft RLIMIT_NOFILE of each server process, master first.
    pub fd_limits: Vec<String>,
}

/// Growth per connection in KiB: `(with - before) / held`; None without connections.
pub fn per_connection_kib(before_kib: u64, with_kib: u64, held: usize) -> Option<f64> {
    (held > 0).then(|| (with_kib as f64 - before_kib as f64) / held as f64)
}

/// `after / before`; None for an empty `before`.
pub fn after_over_before(before_kib: u64, after_kib: u64) -> Option<f64> {
    (before_kib > 0).then(|| after_kib as f64 / before_kib as f64)
}

/// The `Pss:` line of /proc/PID/smaps_rollup, in KiB.
pub fn parse_pss_kib(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The memory of `root` and its descendants.
pub fn tree_memory(root: u32) -> Memory {
    let mut m = Memory::default();
    for pid in process::tree(root) {
        // Zombies have neither.
        if let Some(rss) = process::rss_kib(pid) {
            m.rss_kib += rss;
        }
        if let Some(pss) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .as_deref()
            .and_then(parse_pss_kib)
        {
            m.pss_kib += pss;
        }
    }
    m
}

/// Reads the memory of the tree until two readings [`SETTLE_EVERY`] apart agree to 0.5% (or
/// 256 KiB), or [`SETTLE_DEADLINE`] passes; returns the last reading.
fn settle(root: u32) -> Memory {
    let end = Instant::now() + SETTLE_DEADLINE;
    let mut last = tree_memory(root);
    while Instant::now() < end {
        std::thread::sleep(SETTLE_EVERY);
        let now = tree_memory(root);
        let tolerance = (last.pss_kib / 200).max(256);
        if now.pss_kib.abs_diff(last.pss_kib) <= tolerance {
            return now;
        }
        last = now;
    }
    last
}

/// TCP states of /proc/net/tcp in which the server still holds the socket open.
const ESTABLISHED: &str = "01";
const CLOSE_WAIT: &str = "08";

/// Sockets in /proc/net/tcp whose local port is `port` and whose state is one of `states`
/// (hex codes: 01 established, 08 close-wait, 0A listen...).
pub fn sockets_on_port(proc_net_tcp: &str, port: u16, states: &[&str]) -> usize {
    proc_net_tcp
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().take(4).collect();
            let [_, local, _, state] = f[..] else {
                return false;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && states.contains(&state)
        })
        .count()
}

/// The server's sockets on `port` that it has not closed yet.
fn server_sockets_open(port: u16) -> usize {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    sockets_on_port(&text, port, &[ESTABLISHED, CLOSE_WAIT])
}

/// Polls until the server has closed every connection on `port`; the time it took.
fn wait_server_closed(port: u16, deadline: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    loop {
        if server_sockets_open(port) == 0 {
            return Some(t0.elapsed());
        }
        if t0.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connections opened and answered once, still open.
struct Opened {
    streams: Vec<TcpStream>,
    /// Microseconds from connect to the end of the response, per connection.
    latencies_us: Vec<u64>,
    errors: Errors,
}

/// Why one connection failed.
enum Failure {
    Connect,
    Write,
    Read,
    Timeout,
    Status,
    Deadline,
}

/// Opens `n` connections to `addr` on [`OPEN_THREADS`] threads, each answered once.
fn open(addr: SocketAddr, n: usize, path: &str, body_len: usize) -> Opened {
    let end = Instant::now() + OPEN_DEADLINE;
    let request = get_request(&addr.to_string(), path, false);
    let threads: Vec<_> = (0..OPEN_THREADS)
        .map(|t| {
            let request = request.clone();
            let count = n / OPEN_THREADS + usize::from(t < n % OPEN_THREADS);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut out = Vec::with_capacity(count);
                for _ in 0..count {
                    if Instant::now() >= end {
                        out.push(Err(Failure::Deadline));
                        continue;
                    }
                    out.push(open_one(addr, &request, body_len, &mut buf));
                }
                out
            })
        })
        .collect();
    let mut opened = Opened {
        streams: Vec::with_capacity(n),
        latencies_us: Vec::with_capacity(n),
        errors: Errors::default(),
    };
    for t in threads {
        for r in t.join().unwrap_or_default() {
            match r {
                Ok((s, us)) => {
                    opened.streams.push(s);
                    opened.latencies_us.push(us);
                }
                Err(f) => {
                    let e = &mut opened.errors;
                    match f {
                        Failure::Connect => e.connect += 1,
                        Failure::Write => e.write += 1,
                        Failure::Read => e.read += 1,
                        Failure::Timeout => e.timeout += 1,
                        Failure::Status => e.non_2xx += 1,
                        Failure::Deadline => {
                            *e.other
                                .entry("not opened within the deadline".into())
                                .or_insert(0) += 1
                        }
                    }
                }
            }
        }
    }
    opened
}

/// One connection: connect, one keep-alive GET, its whole response (status 200 and a body of
/// `body_len` bytes).
fn open_one(
    addr: SocketAddr,
    request: &[u8],
    body_len: usize,
    buf: &mut Vec<u8>,
) -> Result<(TcpStream, u64), Failure> {
    let timed_out = |e: &io::Error| {
        matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        )
    };
    let t0 = Instant::now();
    let mut s = connect(addr, IO_TIMEOUT).map_err(|e| {
        if timed_out(&e) {
            Failure::Timeout
        } else {
            Failure::Connect
        }
    })?;
    s.write_all(request).map_err(|e| {
        if timed_out(&e) {
            Failure::Timeout
        } else {
            Failure::Write
        }
    })?;
    let resp = read_response(&mut s, buf).map_err(|e| {
        if timed_out(&e.error) {
            Failure::Timeout
        } else {
            Failure::Read
        }
    })?;
    if resp.status != 200 || resp.body.len() != body_len {
        return Err(Failure::Status);
    }
    Ok((s, t0.elapsed().as_micros() as u64))
}

/// Is the connection still open (no end of stream or reset from the server)?
fn still_open(s: &mut TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    match s.read(&mut byte) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(0) => false,
        // Bytes nobody asked for; the connection is open all the same.
        Ok(_) => true,
    }
}

/// The percentile `p` (0..=1) of sorted values, nearest rank.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Runs the idle workload against the server whose master is `root`: see the module's doc.
/// The report's requests are the connections answered, its req/s the connections opened per
/// second, its latencies those of connect plus the one GET.
pub fn run(root: u32, spec: &Spec) -> Result<(LoadReport, Figures), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], spec.port));
    let warm = open(addr, WARM_UP, &spec.path, spec.body_len);
    if warm.streams.is_empty() {
        return Err(format!(
            "no warm-up connection was answered ({})",
            warm.errors.breakdown()
        ));
    }
    drop(warm);
    wait_server_closed(spec.port, CLOSE_DEADLINE);
    let before = settle(root);

    let t0 = Instant::now();
    let mut opened = open(addr, spec.connections, &spec.path, spec.body_len);
    let open_s = t0.elapsed().as_secs_f64();
    let with = settle(root);
    let server_side_open = {
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        sockets_on_port(&text, spec.port, &[ESTABLISHED])
    };
    let answered = opened.streams.len();
    let held = opened
        .streams
        .iter_mut()
        .map(still_open)
        .filter(|open| *open)
        .count();
    if held < answered {
        opened.errors.other.insert(
            "closed by the server while idle".into(),
            (answered - held) as u64,
        );
    }
    let fd_limits = process::tree(root)
        .into_iter()
        .map(process::max_open_files)
        .collect();

    drop(opened.streams);
    let server_closed = wait_server_closed(spec.port, CLOSE_DEADLINE);
    let after = settle(root);

    let mut lat = opened.latencies_us;
    lat.sort_unstable();
    let ms = |p| percentile(&lat, p).map(|us| us as f64 / 1000.0);
    let report = LoadReport {
        requests: answered as u64,
        duration_s: open_s,
        rps: if open_s > 0.0 {
            answered as f64 / open_s
        } else {
            0.0
        },
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        errors: opened.errors,
        bytes_read: None,
        tls_sessions: None,
    };
    let figures = Figures {
        connections: spec.connections,
        held,
        server_side_open,
        open_s,
        before,
        with,
        after,
        kib_per_conn: per_connection_kib(before.pss_kib, with.pss_kib, held),
        kib_per_conn_rss: per_connection_kib(before.rss_kib, with.rss_kib, held),
        after_over_before: after_over_before(before.pss_kib, after.pss_kib),
        server_closed_ms: server_closed.map(|d| d.as_secs_f64() * 1000.0),
        fd_limits,
    };
    Ok((report, figures))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_arithmetic() {
        // 20 MiB more for 10,000 connections: 2.048 KiB each.
        let kib = per_connection_kib(30_000, 30_000 + 20_480, 10_000).unwrap();
        assert!((kib - 2.048).abs() < 1e-12);
        // Memory that shrank gives a negative figure, not a wrapped one.
        assert_eq!(per_connection_kib(1000, 900, 100), Some(-1.0));
        assert_eq!(per_connection_kib(1000, 2000, 0), None);
        assert_eq!(after_over_before(10_000, 15_000), Some(1.5));
        assert_eq!(after_over_before(0, 15_000), None);
    }

    #[test]
    fn pss_from_smaps_rollup() {
        let text = "\
55d0c0a00000-7ffd5e5f2000 ---p 00000000 00:00 0                          [rollup]
Rss:                5120 kB
Pss:                2231 kB
Pss_Dirty:          1200 kB
Pss_Anon:           1100 kB
Shared_Clean:       3000 kB
";
        assert_eq!(parse_pss_kib(text), Some(2231));
        assert_eq!(parse_pss_kib("Rss: 12 kB\n"), None);
        assert_eq!(parse_pss_kib(""), None);
        // This process has a PSS, and so has its tree.
        let me = tree_memory(std::process::id());
        assert!(me.pss_kib > 0 && me.rss_kib >= me.pss_kib, "{me:?}");
    }

    #[test]
    fn sockets_counted_by_local_port_and_state() {
        // Port 20001 is 4E21; 32770 is 8002.
        let text = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E21 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:4E21 0100007F:8002 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:8002 0100007F:4E21 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:4E21 0100007F:8003 08 00000000:00000000 00:00000000 00000000     0        0 4 1
   4: 0100007F:4E21 0100007F:8004 09 00000000:00000000 00:00000000 00000000     0        0 5 1
   5: 0100007F:4E22 0100007F:8005 01 00000000:00000000 00:00000000 00000000     0        0 6 1
";
        // The listener, the client's side and the other port are not counted.
        assert_eq!(sockets_on_port(text, 20001, &[ESTABLISHED]), 1);
        assert_eq!(sockets_on_port(text, 20001, &[ESTABLISHED, CLOSE_WAIT]), 2);
        assert_eq!(sockets_on_port(text, 20001, &["0A"]), 1);
        assert_eq!(sockets_on_port(text, 20002, &[ESTABLISHED]), 1);
        assert_eq!(sockets_on_port("", 20001, &[ESTABLISHED]), 0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
