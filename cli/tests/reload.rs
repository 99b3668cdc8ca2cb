//! Rolling reload (SIGHUP): a new generation replaces every worker, no request
//! fails while it happens, a HUP during a reload is queued, and a reload whose
//! workers cannot boot leaves the old generation serving.

mod common;

use common::*;
use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// Parse a stdout line; the two-word `reload failed` comes back as the word `reload failed`.
fn parse_line(line: &str) -> Hook {
    let (kind, fields) = match line.strip_prefix("reload failed ") {
        Some(rest) => (
            "reload failed".to_string(),
            parse_hook(&format!("x {rest}")).1,
        ),
        None => parse_hook(line),
    };
    Hook {
        index: 0,
        kind,
        fields,
        line: line.to_string(),
    }
}

/// Wait for the stdout line `<word> generation=<g> ...` (e.g. `reloaded generation=2 pids=..`).
fn expect_generation_line(s: &Server, word: &str, generation: u64, timeout: Duration) -> Hook {
    let g = generation.to_string();
    let matches = |l: &str| {
        let h = parse_line(l);
        h.kind == word && h.fields.get("generation") == Some(&g)
    };
    let line = s.expect_line(
        &format!("`{word} generation={generation}`"),
        matches,
        timeout,
    );
    let index = s
        .stdout_lines()
        .iter()
        .position(|l| *l == line)
        .expect("the line just seen");
    Hook {
        index,
        ..parse_line(&line)
    }
}

/// The pids of a `reloaded generation=N pids=a,b` line.
fn reloaded_pids(h: &Hook) -> BTreeSet<u32> {
    parse_pid_list(h.get("pids")).into_iter().collect()
}

/// The `exited` line of `pid`, if printed yet.
fn exited_line(s: &Server, pid: u32) -> Option<Hook> {
    let p = pid.to_string();
    s.hooks_of("exited")
        .into_iter()
        .find(|h| h.fields.get("pid") == Some(&p))
}

/// Wait for the `exited` lines of all `pids` and check each says code 0.
fn assert_exited_cleanly(s: &Server, pids: &BTreeSet<u32>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let all = poll_until(deadline, || {
        pids.iter().all(|p| exited_line(s, *p).is_some())
    });
    assert!(
        all,
        "no `exited` line within {timeout:?} for pid(s) {:?}",
        pids.iter()
            .filter(|p| exited_line(s, **p).is_none())
            .collect::<Vec<_>>()
    );
    for p in pids {
        let h = exited_line(s, *p).unwrap();
        assert_eq!(
            h.get("status"),
            "exited with code 0",
            "a retired worker must exit with code 0: {:?}",
            h.line
        );
        assert!(
            !process_alive(*p),
            "pid {p} has an exited line but is alive"
        );
    }
}

/// Wait until the live workers of the group (every member but the master) are exactly `want`.
fn assert_workers_are(s: &Server, want: &BTreeSet<u32>, timeout: Duration) {
    let workers = || -> BTreeSet<u32> {
        group_members(s.pgid)
            .into_iter()
            .filter(|p| *p != s.pid)
            .collect()
    };
    let ok = poll_until(Instant::now() + timeout, || workers() == *want);
    assert!(
        ok,
        "worker processes of the group: {:?}, expected {want:?}",
        workers()
    );
}

/// Spin (no sleep) until a stdout line satisfies `pred`: for the few-ms window of a reload.
fn spin_for_line(s: &Server, pred: impl Fn(&str) -> bool, deadline: Instant) -> bool {
    loop {
        if s.stdout.snapshot().iter().any(|l| pred(l)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::yield_now();
    }
}

// ---------------------------------------------------------------------------
// (a) one HUP replaces every worker
// ---------------------------------------------------------------------------

#[test]
fn hup_replaces_every_worker() {
    let s = Server::start_ready(&serve_args("2", &[]));
    let old: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    assert_eq!(old.len(), 2);
    let target = Listen::Tcp(s.addr());
    assert_served_by(&target, &old, 1000);

    s.send_signal(libc::SIGHUP);
    let t0 = Instant::now();
    let reloading = expect_generation_line(&s, "reloading", 2, Duration::from_secs(5));
    let reloaded = expect_generation_line(&s, "reloaded", 2, Duration::from_secs(10));
    println!("RELOAD: generation 2 ready {} after HUP", ms(t0.elapsed()));
    let new = reloaded_pids(&reloaded);
    assert_eq!(
        new.len(),
        2,
        "reloaded line must list 2 pids: {:?}",
        reloaded.line
    );
    assert!(
        new.is_disjoint(&old),
        "new generation {new:?} shares pids with the old {old:?}"
    );

    // the spawned lines between `reloading` and `reloaded` are the new pids, generation 2
    let hooks = s.hooks();
    let spawned: Vec<&Hook> = hooks
        .iter()
        .filter(|h| h.kind == "spawned" && h.index > reloading.index && h.index < reloaded.index)
        .collect();
    let spawned_pids: BTreeSet<u32> = spawned.iter().map(|h| h.num("pid")).collect();
    assert_eq!(
        spawned_pids,
        new,
        "spawned lines of the reload vs the reloaded line: {:?}",
        s.stdout_lines()
    );
    for h in &spawned {
        assert_eq!(
            h.num("generation"),
            2,
            "spawned line of a reload: {:?}",
            h.line
        );
    }
    let indexes: BTreeSet<u32> = spawned.iter().map(|h| h.num("worker")).collect();
    assert_eq!(
        indexes,
        BTreeSet::from([0, 1]),
        "worker indexes of the new generation"
    );

    // the old generation exits cleanly, after the reloaded line
    assert_exited_cleanly(&s, &old, Duration::from_secs(5));
    for p in &old {
        let h = exited_line(&s, *p).unwrap();
        assert!(
            h.index > reloaded.index,
            "old worker exited before the new generation was ready: {:?}",
            s.stdout_lines()
        );
    }
    assert_workers_are(&s, &new, Duration::from_secs(2));
    assert_served_by(&target, &new, 1000);
    assert!(
        !s.stdout_lines()
            .iter()
            .any(|l| l.starts_with("reload failed")),
        "{:?}",
        s.stdout_lines()
    );
}

// ---------------------------------------------------------------------------
// (b) no request fails across 20 reloads under load
// ---------------------------------------------------------------------------

#[derive(Default)]
struct LoadStats {
    ok: AtomicUsize,
    keepalive_ok: AtomicUsize,
    close_ok: AtomicUsize,
    failed: AtomicUsize,
    refused: AtomicUsize,
    /// A reused keep-alive connection closed before any response byte: retried on a new one.
    retried: AtomicUsize,
    /// A keep-alive connection found closed by the server before the next request was sent.
    idle_closed: AtomicUsize,
    ka_connections: AtomicUsize,
    failures: Mutex<Vec<String>>,
    pids: Mutex<BTreeSet<u32>>,
}

impl LoadStats {
    fn fail(&self, started: Instant, what: String) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() < 50 {
            f.push(format!("[{}] {what}", ms(started.elapsed())));
        }
    }

    fn answered(&self, started: Instant, r: &Response, keepalive: bool) {
        match greeting_pid(r) {
            Ok(pid) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
                if keepalive {
                    self.keepalive_ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    self.close_ok.fetch_add(1, Ordering::SeqCst);
                }
                self.pids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(pid);
            }
            Err(e) => self.fail(started, format!("bad answer: {e}")),
        }
    }

    fn connect_failed(&self, started: Instant, e: &io::Error, what: &str) {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        self.fail(started, format!("{what}: connect: {e} ({:?})", e.kind()));
    }
}

/// How a request on a keep-alive connection went wrong (read through `Debug`).
#[allow(dead_code)]
#[derive(Debug)]
enum KaError {
    /// The connection ended (EOF, reset, broken pipe) before any byte of the response.
    NothingBack(String),
    /// Anything else: a partial answer, a timeout, garbage.
    Other(String),
}

struct KaConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Responses received on this connection so far.
    served: usize,
}

const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

impl KaConn {
    fn connect(addr: SocketAddr) -> io::Result<KaConn> {
        let stream = TcpStream::connect_timeout(&addr, LOAD_TIMEOUT)?;
        stream.set_read_timeout(Some(LOAD_TIMEOUT))?;
        stream.set_write_timeout(Some(LOAD_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(KaConn {
            stream,
            buf: Vec::new(),
            served: 0,
        })
    }

    /// Has the server closed this idle connection (EOF or reset waiting to be read)?
    fn closed_by_server(&self) -> Result<bool, String> {
        let mut b = [0u8; 1];
        self.stream
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let r = self.stream.peek(&mut b);
        self.stream
            .set_nonblocking(false)
            .map_err(|e| e.to_string())?;
        match r {
            Ok(0) => Ok(true),
            Ok(_) => Err("unsolicited bytes on an idle keep-alive connection".to_string()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(true),
            Err(e) => Err(format!("peek: {e}")),
        }
    }

    /// One keep-alive `GET /`; returns the response and whether the server will close.
    fn request(&mut self, host: &str) -> Result<(Response, bool), KaError> {
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: forklift-tests\r\n\r\n");
        if let Err(e) = self.stream.write_all(req.as_bytes()) {
            return Err(KaError::NothingBack(format!("write: {e} ({:?})", e.kind())));
        }
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(done) = self.parse()? {
                self.served += 1;
                return Ok(done);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => {
                    return Err(KaError::NothingBack("end of file".to_string()))
                }
                Ok(0) => {
                    return Err(KaError::Other(format!(
                        "end of file after {} bytes of the response: {:?}",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf)
                    )))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if self.buf.is_empty()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset
                                | io::ErrorKind::ConnectionAborted
                                | io::ErrorKind::BrokenPipe
                        ) =>
                {
                    return Err(KaError::NothingBack(format!("read: {e} ({:?})", e.kind())))
                }
                Err(e) => {
                    return Err(KaError::Other(format!(
                        "read: {e} ({:?}) after {} bytes of the response",
                        e.kind(),
                        self.buf.len()
                    )))
                }
            }
        }
    }

    /// A complete response at the start of the buffer, consumed; `None` if incomplete.
    fn parse(&mut self) -> Result<Option<(Response, bool)>, KaError> {
        let bad = |m: String| KaError::Other(m);
        let Some(head_end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| bad("non-UTF-8 headers".into()))?
            .to_string();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if version != "HTTP/1.1" {
            return Err(bad(format!("bad status line {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = resp
            .header("content-length")
            .ok_or_else(|| bad(format!("response without content-length: {head:?}")))?
            .parse()
            .map_err(|_| bad(format!("bad content-length in {head:?}")))?;
        let total = head_end + 4 + len;
        if self.buf.len() < total {
            return Ok(None);
        }
        resp.body = self.buf[head_end + 4..total].to_vec();
        self.buf.drain(..total);
        if !self.buf.is_empty() {
            return Err(bad(format!(
                "{} unexpected bytes after the response",
                self.buf.len()
            )));
        }
        let close = resp
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        Ok(Some((resp, close)))
    }
}

/// Keep-alive client: many requests per connection.
fn keepalive_client(
    addr: SocketAddr,
    stats: &LoadStats,
    stop: &AtomicBool,
    started: Instant,
    until: Instant,
) {
    let host = addr.to_string();
    let mut conn: Option<KaConn> = None;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match KaConn::connect(addr) {
                Ok(c) => {
                    stats.ka_connections.fetch_add(1, Ordering::SeqCst);
                    conn.insert(c)
                }
                Err(e) => {
                    stats.connect_failed(started, &e, "keep-alive");
                    continue;
                }
            },
        };
        if c.served > 0 {
            match c.closed_by_server() {
                Ok(true) => {
                    // closed while idle, before the request was sent: not a failure
                    stats.idle_closed.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    stats.fail(started, format!("keep-alive: {e}"));
                    conn = None;
                    continue;
                }
            }
        }
        let reused = c.served > 0;
        match c.request(&host) {
            Ok((resp, close)) => {
                stats.answered(started, &resp, true);
                if close {
                    conn = None;
                }
            }
            Err(KaError::NothingBack(why)) if reused => {
                // RFC 9112 9.3.1: the server closed the reused connection before any
                // byte of the answer; an idempotent request may be retried, once, on a
                // new connection, which must succeed.
                stats.retried.fetch_add(1, Ordering::SeqCst);
                conn = None;
                match KaConn::connect(addr) {
                    Ok(mut c2) => {
                        stats.ka_connections.fetch_add(1, Ordering::SeqCst);
                        match c2.request(&host) {
                            Ok((resp, close)) => {
                                stats.answered(started, &resp, true);
                                if !close {
                                    conn = Some(c2);
                                }
                            }
                            Err(e) => stats.fail(
                                started,
                                format!("keep-alive: retry after {why:?} failed: {e:?}"),
                            ),
                        }
                    }
                    Err(e) => stats.connect_failed(started, &e, "keep-alive retry"),
                }
            }
            Err(e) => {
                stats.fail(
                    started,
                    format!(
                        "keep-alive: request #{} on its connection: {e:?}",
                        c.served + 1
                    ),
                );
                conn = None;
            }
        }
    }
}

/// One connection per request (`Connection: close`).
fn close_client(
    addr: SocketAddr,
    stats: &LoadStats,
    stop: &AtomicBool,
    started: Instant,
    until: Instant,
) {
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        let stream = match TcpStream::connect_timeout(&addr, LOAD_TIMEOUT) {
            Ok(s) => s,
            Err(e) => {
                stats.connect_failed(started, &e, "connection-per-request");
                continue;
            }
        };
        let r = stream
            .set_read_timeout(Some(LOAD_TIMEOUT))
            .and_then(|_| stream.set_write_timeout(Some(LOAD_TIMEOUT)))
            .and_then(|_| http_request(stream, &addr.to_string(), "/"));
        match r {
            Ok(resp) => stats.answered(started, &resp, false),
            Err(e) => stats.fail(
                started,
                format!("connection-per-request: {e} ({:?})", e.kind()),
            ),
        }
    }
}

/// Background load; stops (and is joined) on drop, whatever happens to the test.
struct Load {
    stats: Arc<LoadStats>,
    clients: Clients,
}

impl Load {
    fn start(addr: SocketAddr, keepalive: usize, close: usize, limit: Duration) -> Load {
        let stats = Arc::new(LoadStats::default());
        let started = Instant::now();
        let until = started + limit;
        let mut clients = Clients::new();
        for i in 0..keepalive + close {
            let stats = stats.clone();
            clients.spawn(move |stop| {
                if i < keepalive {
                    keepalive_client(addr, &stats, stop, started, until)
                } else {
                    close_client(addr, &stats, stop, started, until)
                }
            });
        }
        Load { stats, clients }
    }

    fn ok(&self) -> usize {
        self.stats.ok.load(Ordering::SeqCst)
    }

    fn finish(&mut self) {
        self.clients.finish();
    }
}

const RELOADS: u64 = 20;

fn reloads_under_load(extra: &[&str]) {
    let args = serve_args("2", extra);
    let s = Server::start_ready(&args);
    let first: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let addr = s.addr();
    let mut load = Load::start(addr, 2, 2, Duration::from_secs(40));
    let t0 = Instant::now();
    // the load flows before the first reload
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || load.ok() >= 50),
        "load does not flow: {} answers, failures {:?}",
        load.ok(),
        load.stats.failures.lock().unwrap()
    );
    let mut last = BTreeSet::new();
    for generation in 2..=RELOADS + 1 {
        s.send_signal(libc::SIGHUP);
        let reloaded = expect_generation_line(&s, "reloaded", generation, Duration::from_secs(10));
        last = reloaded_pids(&reloaded);
        // the new generation takes some of the load before the next reload
        let base = load.ok();
        assert!(
            poll_until(Instant::now() + Duration::from_secs(5), || load.ok()
                >= base + 100),
            "load stalled after reload {generation}: {} answers",
            load.ok()
        );
    }
    let reload_time = t0.elapsed();
    load.finish();
    let st = &load.stats;
    let total = st.ok.load(Ordering::SeqCst) + st.failed.load(Ordering::SeqCst);
    let failed = st.failed.load(Ordering::SeqCst);
    let refused = st.refused.load(Ordering::SeqCst);
    println!(
        "RELOAD LOAD: {RELOADS} reloads, {total} requests, {failed} failed, {refused} refused connects, \
         {} retried (a reused keep-alive connection closed before any response byte) \
         [{extra:?}: {} keep-alive answers on {} connections, {} connection-per-request answers, \
         {} idle keep-alive connections found closed before sending; {} pids served; {:.2} s]",
        st.retried.load(Ordering::SeqCst),
        st.keepalive_ok.load(Ordering::SeqCst),
        st.ka_connections.load(Ordering::SeqCst),
        st.close_ok.load(Ordering::SeqCst),
        st.idle_closed.load(Ordering::SeqCst),
        st.pids.lock().unwrap().len(),
        reload_time.as_secs_f64(),
    );
    let failures = st.failures.lock().unwrap().clone();
    // what the workers said about the connections they dropped (hyper's `Cancelled`: a
    // graceful shutdown that reached a connection before its first bytes were read)
    let dropped: Vec<String> = s
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("connection ended with an error"))
        .collect();
    assert!(
        failed == 0,
        "{failed} request(s) failed across {RELOADS} reloads (first ones): {failures:#?}\n\
         worker log lines about dropped connections: {dropped:#?}"
    );

    // every generation before the last one exited cleanly; only the last remains
    let spawned: BTreeSet<u32> = s.spawned_pids().into_iter().collect();
    assert_eq!(
        spawned.len() as u64,
        2 * (RELOADS + 1),
        "spawned lines: 2 workers x {} generations expected: {:?}",
        RELOADS + 1,
        s.stdout_lines()
    );
    assert!(first.is_subset(&spawned));
    let retired: BTreeSet<u32> = spawned.difference(&last).copied().collect();
    assert_exited_cleanly(&s, &retired, Duration::from_secs(5));
    assert_workers_are(&s, &last, Duration::from_secs(2));
    let served = st.pids.lock().unwrap().clone();
    assert!(
        served.is_subset(&spawned),
        "answers from pids that are not workers: {:?}",
        served.difference(&spawned).collect::<Vec<_>>()
    );
    assert_served_by(&Listen::Tcp(addr), &last, 1000);
    assert!(
        !s.stdout_lines()
            .iter()
            .any(|l| l.starts_with("reload failed")),
        "{:?}",
        s.stdout_lines()
    );
}

#[test]
fn reloads_under_load_shared_socket() {
    reloads_under_load(&[]);
}

#[test]
fn reloads_under_load_reuse_port() {
    reloads_under_load(&["--reuse-port"]);
}

#[test]
fn reloads_under_load_shared_socket_exec() {
    reloads_under_load(&["--spawn", "exec"]);
}

/// The accept queue length of the listening socket on 127.0.0.1:`port` (from /proc/net/tcp,
/// where a listening socket's rx_queue is its accept backlog).
fn accept_queue_len(port: u16) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 4 && f[1] == local && f[3] == "0A" {
            let rx = f[4].split(':').nth(1)?;
            u32::from_str_radix(rx, 16).ok()
        } else {
            None
        }
    })
}

/// The deterministic form of the load test's failures: a fresh connection accepted by the
/// old generation before the reload, whose request is sent once its worker was told to stop,
/// is still answered instead of being closed unanswered. (A client opening a connection and
/// writing its request at once cannot tell this case from a dropped request.)
#[test]
fn reload_answers_connection_accepted_before_it() {
    let s = Server::start_ready(&serve_args("2", &[]));
    let old: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let addr = s.addr();
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // an old worker accepted it: nothing left in the listening socket's accept queue
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || {
            accept_queue_len(addr.port()) == Some(0)
        }),
        "the connection was not accepted (accept queue {:?})",
        accept_queue_len(addr.port())
    );

    s.send_signal(libc::SIGHUP);
    expect_generation_line(&s, "reloaded", 2, Duration::from_secs(10));
    // every old worker has received its SIGTERM
    let told = |p: &u32| {
        let tag = format!("pid={p}}}");
        s.stderr
            .snapshot()
            .iter()
            .any(|l| l.contains(&tag) && l.contains("SIGTERM: graceful stop"))
    };
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || old
            .iter()
            .all(told)),
        "the old workers did not log their SIGTERM"
    );

    let sent = Instant::now();
    let r = http_request(stream, &addr.to_string(), "/");
    let dropped: Vec<String> = s
        .stderr
        .snapshot()
        .into_iter()
        .filter(|l| l.contains("connection ended with an error"))
        .collect();
    let r = r.unwrap_or_else(|e| {
        panic!(
            "the request on a connection accepted before the reload got no answer: {e} ({:?}); \
             worker log lines about dropped connections: {dropped:#?}",
            e.kind()
        )
    });
    println!(
        "ACCEPTED BEFORE RELOAD: answered {} by pid {:?} {} after the request",
        r.status,
        r.header("x-forklift-worker"),
        ms(sent.elapsed())
    );
    // Any worker may answer: the old one that accepted it (draining it), or a new one if
    // the connection only reaches a worker once its request is there.
    let pid = greeting_pid(&r).unwrap_or_else(|e| panic!("bad answer: {e}"));
    let spawned: BTreeSet<u32> = s.spawned_pids().into_iter().collect();
    assert!(spawned.contains(&pid), "answered by {pid}, not a worker");
}

// ---------------------------------------------------------------------------
// (c) a HUP during a reload is queued
// ---------------------------------------------------------------------------

#[test]
fn hup_during_reload_is_queued() {
    let s = Server::start_ready(&serve_args("3", &["--spawn", "exec"]));
    let target = Listen::Tcp(s.addr());
    let mut generation = 1u64;
    // The second HUP must land while the first reload runs (a few ms). Signals of one
    // kind sent back to back coalesce in the kernel before the master runs, so the second
    // is sent as soon as `reloading` shows; if the reload was already over by then, the
    // attempt is a plain double reload and is made again.
    const ATTEMPTS: usize = 5;
    let mut queued_at = None;
    for attempt in 1..=ATTEMPTS {
        let queued_before = stderr_count(&s, "requested by SIGHUP during a reload");
        let g1 = generation + 1;
        let g2 = generation + 2;
        s.send_signal(libc::SIGHUP);
        let reloading = format!("reloading generation={g1}");
        assert!(
            spin_for_line(
                &s,
                |l| l == reloading,
                Instant::now() + Duration::from_secs(5)
            ),
            "no `{reloading}` line"
        );
        s.send_signal(libc::SIGHUP);
        let first = expect_generation_line(&s, "reloaded", g1, Duration::from_secs(10));
        let second = expect_generation_line(&s, "reloaded", g2, Duration::from_secs(10));
        generation = g2;
        let hooks = s.hooks();
        let start2 = hooks
            .iter()
            .find(|h| h.kind == "reloading" && h.fields.get("generation") == Some(&g2.to_string()))
            .expect("reloading line of the second reload");
        assert!(
            first.index < start2.index && start2.index < second.index,
            "generation {g2} must start after generation {g1} is ready: {:?}",
            s.stdout_lines()
        );
        // the master logs a queued HUP before it starts the queued reload; give the
        // stderr reader a moment to catch up with the stdout one
        let queued = poll_until(Instant::now() + Duration::from_secs(1), || {
            stderr_count(&s, "requested by SIGHUP during a reload") > queued_before
        });
        println!(
            "HUP DURING RELOAD: attempt {attempt}: second HUP {}",
            if queued {
                "queued during the reload"
            } else {
                "arrived after the reload (not queued)"
            }
        );
        if queued {
            queued_at = Some(attempt);
            break;
        }
    }
    let attempt = queued_at.unwrap_or_else(|| {
        panic!("in {ATTEMPTS} attempts the second HUP never reached the master during a reload")
    });
    println!("HUP DURING RELOAD: queued on attempt {attempt}, final generation {generation}");

    // only the final generation remains and serves
    let last = s
        .hooks_of("reloaded")
        .into_iter()
        .find(|h| h.fields.get("generation") == Some(&generation.to_string()))
        .unwrap();
    let last_pids = reloaded_pids(&last);
    assert_eq!(last_pids.len(), 3);
    for h in s.hooks_of("spawned") {
        if last_pids.contains(&h.num("pid")) {
            assert_eq!(h.num("generation") as u64, generation, "{:?}", h.line);
        }
    }
    let spawned: BTreeSet<u32> = s.spawned_pids().into_iter().collect();
    let retired: BTreeSet<u32> = spawned.difference(&last_pids).copied().collect();
    assert_exited_cleanly(&s, &retired, Duration::from_secs(5));
    assert_workers_are(&s, &last_pids, Duration::from_secs(2));
    assert_served_by(&target, &last_pids, 1000);
}

// ---------------------------------------------------------------------------
// (d) a reload whose workers cannot boot is abandoned
// ---------------------------------------------------------------------------

#[test]
fn failed_reload_keeps_old_generation() {
    let fault = TempPath::new("boot-fault");
    let fault_path = fault.0.to_str().expect("utf-8 temp path").to_string();
    let s = Server::start_ready(&serve_args(
        "2",
        &["--fault", "boot-panic-if-file", "--fault-file", &fault_path],
    ));
    let old: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let target = Listen::Tcp(s.addr());
    assert_served_by(&target, &old, 1000);

    std::fs::write(&fault.0, b"fail\n").unwrap();
    s.send_signal(libc::SIGHUP);
    let t0 = Instant::now();
    let failed = expect_generation_line(&s, "reload failed", 2, Duration::from_secs(10));
    println!(
        "FAILED RELOAD: `{}` {} after HUP",
        failed.line,
        ms(t0.elapsed())
    );
    let reason = failed.get("reason").to_string();
    assert!(
        reason.contains("injected boot failure"),
        "reason should carry the worker's panic: {:?}",
        failed.line
    );
    assert!(
        !s.stdout_lines().iter().any(|l| l.starts_with("reloaded ")),
        "no reloaded line for a failed reload: {:?}",
        s.stdout_lines()
    );
    // the failed workers are gone, the old ones still serve
    let failed_pids: BTreeSet<u32> = s
        .hooks_of("spawned")
        .into_iter()
        .filter(|h| h.num("generation") == 2)
        .map(|h| h.num("pid"))
        .collect();
    assert!(
        !failed_pids.is_empty(),
        "no generation-2 worker was spawned"
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(5), || failed_pids
            .iter()
            .all(|p| exited_line(&s, *p).is_some())),
        "generation-2 workers without an exited line: {:?}",
        s.stdout_lines()
    );
    for p in &old {
        assert!(process_alive(*p), "old worker {p} died in a failed reload");
        assert!(
            exited_line(&s, *p).is_none(),
            "old worker {p} has an exited line"
        );
    }
    assert_workers_are(&s, &old, Duration::from_secs(2));
    assert_served_by(&target, &old, 1000);
    assert!(
        !s.stdout_lines().iter().any(|l| l == "stopped"),
        "the master must not stop"
    );

    // fixed: the next HUP succeeds
    std::fs::remove_file(&fault.0).unwrap();
    let n_reloading = s.hooks_of("reloading").len();
    s.send_signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    assert!(
        poll_until(deadline, || s.hooks_of("reloading").len() > n_reloading),
        "no reloading line after the second HUP"
    );
    let generation = s.hooks_of("reloading")[n_reloading].num("generation") as u64;
    let reloaded = expect_generation_line(&s, "reloaded", generation, Duration::from_secs(10));
    println!("FAILED RELOAD: the next HUP reloaded to generation {generation}");
    let new = reloaded_pids(&reloaded);
    assert_eq!(new.len(), 2);
    assert!(new.is_disjoint(&old) && new.is_disjoint(&failed_pids));
    assert_exited_cleanly(&s, &old, Duration::from_secs(5));
    assert_workers_are(&s, &new, Duration::from_secs(2));
    assert_served_by(&target, &new, 1000);
}
