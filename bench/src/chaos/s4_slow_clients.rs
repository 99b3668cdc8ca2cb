//! Scenario 4: slow clients. Idle connections and slowloris (a request head, or the HTTP/2
//! preface, a byte a second) against the header-read timeout, and a normal client's latency
//! meanwhile.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use forklift_testkit::process::process_alive;
use forklift_testkit::server::serve_args;
use forklift_testkit::time::ms;

use crate::client::connect;
use crate::context::Ctx;
use crate::load::{FirstSeen, Load, LoadSpec, Mode};
use crate::report::{med_max, ms_opt, Section, Table};
use crate::server::{ready, start, Opts};

/// What a slow connection sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slow {
    /// Connects and sends nothing.
    Idle,
    /// Sends `GET / HTTP/1.1`, then a header byte a second.
    Headers,
    /// Sends the HTTP/2 connection preface a byte a second.
    H2Preface,
}

struct SlowConn {
    s: TcpStream,
    opened: Instant,
    closed: Option<Instant>,
    answered: bool,
    sent: usize,
    kind: Slow,
}

pub fn run(ctx: &Ctx) -> Section {
    let mut sec = Section::new("4. Slow clients: idle connections and slowloris");
    let n_idle = 1000;
    let n_slow = 800;
    let n_h2 = 200;
    let hrt = 3u64;
    let attack_for = Duration::from_secs(hrt + 4);
    sec.intro.push(format!(
        "2 workers, `--header-read-timeout {hrt}`. {n_idle} connections that send nothing, \
         {n_slow} slowloris connections that send `GET / HTTP/1.1` and then one header byte a \
         second, and {n_h2} that send the HTTP/2 connection preface (`PRI * HTTP/2.0...`) one \
         byte a second, held for {} s. Meanwhile a normal client sends GET / every 20 ms on a new \
         connection and every 20 ms on a keep-alive connection; its latency before the attack \
         (1.5 s) is the baseline.",
        attack_for.as_secs()
    ));
    let hrt_s = hrt.to_string();
    let args = serve_args("2", &["--header-read-timeout", hrt_s.as_str()]);
    let mut server = start(ctx, "s4-slow", &args, Opts::default());
    sec.command(&server);
    let workers = ready(&server);
    let addr = server.addr();
    let seen: FirstSeen = Arc::default();
    let normal = |dur: Duration| {
        let mut a = LoadSpec::new(addr, Mode::PerRequest, 1, dur);
        a.pace = Some(Duration::from_millis(20));
        let mut b = LoadSpec::new(addr, Mode::KeepAlive, 1, dur);
        b.pace = Some(Duration::from_millis(20));
        (Load::start(&a, &seen), Load::start(&b, &seen))
    };
    let (a, b) = normal(Duration::from_millis(1500));
    let mut base = a.join();
    base.merge(b.join());
    let (a, b) = normal(attack_for + Duration::from_secs(1));
    // Open the slow connections.
    let t_open = Instant::now();
    let mut conns: Vec<SlowConn> = Vec::new();
    let mut open_errors = 0;
    for i in 0..(n_idle + n_slow + n_h2) {
        match connect(addr, Duration::from_secs(5)) {
            Ok(s) => {
                let _ = s.set_nonblocking(true);
                conns.push(SlowConn {
                    s,
                    opened: Instant::now(),
                    closed: None,
                    answered: false,
                    sent: 0,
                    kind: if i < n_idle {
                        Slow::Idle
                    } else if i < n_idle + n_slow {
                        Slow::Headers
                    } else {
                        Slow::H2Preface
                    },
                });
            }
            Err(_) => open_errors += 1,
        }
    }
    let opened_in = t_open.elapsed();
    let payload = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slowloris: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let first_line = b"GET / HTTP/1.1\r\n".len();
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let end = t_open + attack_for;
    let mut next_byte = Instant::now();
    let mut buf = [0u8; 1024];
    while Instant::now() < end {
        let now = Instant::now();
        let trickle = now >= next_byte;
        if trickle {
            next_byte += Duration::from_secs(1);
        }
        for c in conns.iter_mut().filter(|c| c.closed.is_none()) {
            let (bytes, first): (&[u8], usize) = match c.kind {
                Slow::Idle => (b"", 0),
                Slow::Headers => (payload, first_line),
                Slow::H2Preface => (preface, 1),
            };
            if trickle && c.sent < bytes.len() {
                let n = if c.sent == 0 { first } else { 1 };
                match c.s.write(&bytes[c.sent..c.sent + n]) {
                    Ok(k) => c.sent += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => c.closed = Some(now),
                }
            }
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        c.closed = Some(now);
                        break;
                    }
                    Ok(_) => c.answered = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        c.closed = Some(now);
                        break;
                    }
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let mut attack = a.finish();
    attack.merge(b.finish());
    let mut t = Table::new(&[
        "kind",
        "opened",
        "closed by the server",
        "answered first (e.g. 408)",
        "closed after (median / max)",
        "still open at the end",
    ]);
    for kind in [Slow::Idle, Slow::Headers, Slow::H2Preface] {
        let group: Vec<&SlowConn> = conns.iter().filter(|c| c.kind == kind).collect();
        let closed: Vec<Duration> = group
            .iter()
            .filter_map(|c| c.closed.map(|t| t - c.opened))
            .collect();
        let (m, x) = med_max(&closed);
        let open = group.len() - closed.len();
        t.row(vec![
            match kind {
                Slow::Idle => "idle (nothing sent)",
                Slow::Headers => "slowloris: request head, 1 byte/s",
                Slow::H2Preface => "slowloris: HTTP/2 preface, 1 byte/s",
            }
            .into(),
            group.len().to_string(),
            closed.len().to_string(),
            group.iter().filter(|c| c.answered).count().to_string(),
            format!("{} / {}", ms_opt(m), ms_opt(x)),
            open.to_string(),
        ]);
        let kind = match kind {
            Slow::Idle => "idle",
            Slow::Headers => "slowloris (request head)",
            Slow::H2Preface => "slowloris (HTTP/2 preface)",
        };
        sec.check(
            format!("the header-read timeout closes the {kind} connections"),
            open == 0 && !group.is_empty(),
            format!(
                "{} of {} closed by the server (median {}, max {} after opening); {open} still open after {} s",
                closed.len(),
                group.len(),
                ms_opt(m),
                ms_opt(x),
                attack_for.as_secs()
            ),
        );
    }
    drop(conns);
    let mut n = Table::new(&["normal client", "requests", "failed", "p50", "p99", "max"]);
    for (label, tally) in [("before the attack", &base), ("during the attack", &attack)] {
        n.row(vec![
            label.into(),
            tally.total().to_string(),
            format!("{} ({})", tally.failed(), tally.breakdown()),
            ms_opt(tally.percentile(0.5)),
            ms_opt(tally.percentile(0.99)),
            ms_opt(tally.percentile(1.0)),
        ]);
    }
    sec.tables.push((
        format!(
            "{} connections opened in {} ({open_errors} could not be opened).",
            n_idle + n_slow + n_h2,
            ms(opened_in)
        ),
        t,
    ));
    sec.tables.push((String::new(), n));
    let p99 = attack.percentile(0.99);
    sec.check(
        "a normal client keeps getting answers, p99 under 100 ms",
        attack.failed() == 0
            && attack.ok > 0
            && p99.is_some_and(|p| p < Duration::from_millis(100)),
        format!(
            "{} requests, {} failed, p99 {}",
            attack.total(),
            attack.failed(),
            ms_opt(p99)
        ),
    );
    let exited = server.stdout.count_starting_with("exited ");
    sec.check(
        "the workers survive",
        exited == 0 && workers.iter().all(|p| process_alive(*p)),
        format!("{exited} worker exits"),
    );
    server.stop(Duration::from_secs(10));
    sec
}
