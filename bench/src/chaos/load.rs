//! The load generator: threads with blocking clients, keep-alive or one connection per
//! request, bounded in time and requests, that count every failure by kind and time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use forklift_testkit::time::sleep_until;

use crate::client::{classify, connect, read_response, request, still_open, Fail, ReqErr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    KeepAlive,
    PerRequest,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::PerRequest => "connection per request",
        }
    }
}

#[derive(Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub mode: Mode,
    pub threads: usize,
    pub path: String,
    /// Wall-clock end of the load.
    pub duration: Duration,
    /// Bound on the number of requests.
    pub max_requests: u64,
    pub timeout: Duration,
    /// Each thread waits this long between requests (None: back to back).
    pub pace: Option<Duration>,
}

impl LoadSpec {
    pub fn new(addr: SocketAddr, mode: Mode, threads: usize, duration: Duration) -> LoadSpec {
        LoadSpec {
            addr,
            mode,
            threads,
            path: "/".into(),
            duration,
            max_requests: 3_000_000,
            timeout: Duration::from_secs(5),
            pace: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FailRec {
    pub at: Instant,
    pub fail: Fail,
    /// The request went out on a kept-alive connection and not one byte came back (the
    /// case HTTP clients retry).
    pub stale: bool,
    /// The worker that served the connection's previous request, if any.
    pub conn_pid: Option<u32>,
}

#[derive(Default)]
pub struct Tally {
    pub ok: u64,
    pub fails: Vec<FailRec>,
    pub lat_us: Vec<u32>,
    /// Responses per worker pid.
    pub by_pid: HashMap<u32, u64>,
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

impl Tally {
    pub fn total(&self) -> u64 {
        self.ok + self.fails.len() as u64
    }
    pub fn failed(&self) -> u64 {
        self.fails.len() as u64
    }
    pub fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.fails.extend(o.fails);
        self.lat_us.extend(o.lat_us);
        for (k, v) in o.by_pid {
            *self.by_pid.entry(k).or_default() += v;
        }
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = match (self.last, o.last) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
    pub fn count(&self, f: Fail) -> u64 {
        self.fails.iter().filter(|r| r.fail == f).count() as u64
    }
    /// "3 reset (2 stale), 1 incomplete" or "none".
    pub fn breakdown(&self) -> String {
        if self.fails.is_empty() {
            return "none".into();
        }
        let mut m: BTreeMap<Fail, (u64, u64)> = BTreeMap::new();
        for r in &self.fails {
            let e = m.entry(r.fail).or_default();
            e.0 += 1;
            if r.stale {
                e.1 += 1;
            }
        }
        m.iter()
            .map(|(f, (n, stale))| {
                if *stale > 0 {
                    format!("{n} {} ({stale} of them sent on a reused keep-alive connection, no response byte back)", f.name())
                } else {
                    format!("{n} {}", f.name())
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        if self.lat_us.is_empty() {
            return None;
        }
        let mut v = self.lat_us.clone();
        v.sort_unstable();
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        Some(Duration::from_micros(u64::from(v[i])))
    }
}

/// When each worker pid first answered a request (any load of a scenario).
pub type FirstSeen = Arc<Mutex<HashMap<u32, Instant>>>;

pub struct Load {
    stop: Arc<AtomicBool>,
    handles: Vec<thread::JoinHandle<Tally>>,
}

impl Load {
    pub fn start(spec: &LoadSpec, first_seen: &FirstSeen) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + spec.duration;
        let handles = (0..spec.threads)
            .map(|_| {
                let (spec, stop, sent, seen) =
                    (spec.clone(), stop.clone(), sent.clone(), first_seen.clone());
                thread::spawn(move || load_thread(&spec, until, &stop, &sent, &seen))
            })
            .collect();
        Load { stop, handles }
    }

    /// Stops the load now and returns its figures.
    pub fn finish(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        self.join()
    }

    /// Waits until the load ends by itself (its duration or request bound).
    pub fn join(self) -> Tally {
        let mut t = Tally::default();
        for h in self.handles {
            if let Ok(x) = h.join() {
                t.merge(x);
            }
        }
        t
    }
}

fn load_thread(
    spec: &LoadSpec,
    until: Instant,
    stop: &AtomicBool,
    sent: &AtomicU64,
    first_seen: &FirstSeen,
) -> Tally {
    let mut t = Tally::default();
    let mut known: BTreeSet<u32> = BTreeSet::new();
    let mut conn: Option<(TcpStream, Option<u32>)> = None;
    let keep = spec.mode == Mode::KeepAlive;
    let req = request(&spec.path, !keep);
    let mut buf = Vec::with_capacity(4096);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
        if sent.fetch_add(1, Ordering::Relaxed) >= spec.max_requests {
            break;
        }
        if let Some(p) = spec.pace {
            sleep_until(next);
            next += p;
        }
        let start = Instant::now();
        // Like an HTTP client's connection pool: a kept-alive connection the server has
        // closed meanwhile (a retiring worker closes its idle connections) is not reused.
        let pooled = conn.take().filter(|(s, _)| still_open(s));
        let (mut s, conn_pid, reused) = match pooled {
            Some((s, pid)) => (s, pid, true),
            None => match connect(spec.addr, spec.timeout) {
                Ok(s) => (s, None, false),
                Err(fail) => {
                    t.fails.push(FailRec {
                        at: Instant::now(),
                        fail,
                        stale: false,
                        conn_pid: None,
                    });
                    if fail == Fail::Refused {
                        thread::sleep(Duration::from_millis(1));
                    }
                    continue;
                }
            },
        };
        let result = match s.write_all(&req) {
            Ok(()) => read_response(&mut s, &mut buf),
            Err(e) => Err(ReqErr {
                fail: classify(&e),
                got_bytes: false,
            }),
        };
        let now = Instant::now();
        t.first.get_or_insert(start);
        t.last = Some(now);
        match result {
            Ok(r) => {
                if let Some(pid) = r.worker() {
                    *t.by_pid.entry(pid).or_default() += 1;
                    if known.insert(pid) {
                        first_seen.lock().unwrap().entry(pid).or_insert(now);
                    }
                }
                if (200..300).contains(&r.status) {
                    t.ok += 1;
                    t.lat_us
                        .push((now - start).as_micros().min(u32::MAX as u128) as u32);
                } else {
                    t.fails.push(FailRec {
                        at: now,
                        fail: Fail::Non2xx,
                        stale: false,
                        conn_pid: r.worker(),
                    });
                }
                if keep && !r.closes() {
                    conn = Some((s, r.worker()));
                }
            }
            Err(e) => t.fails.push(FailRec {
                at: now,
                fail: e.fail,
                stale: reused && !e.got_bytes,
                conn_pid,
            }),
        }
    }
    t
}
