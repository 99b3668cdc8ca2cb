//! Scenario 5: oversized and malformed requests and request smuggling probes, then a wire
//! fuzzer and the fuzz targets of `fuzz/` (s5_fuzz.rs).

use std::net::SocketAddr;
use std::time::Duration;

use forklift_testkit::http::{send_raw_on, RawAnswer};
use forklift_testkit::process::process_alive;
use forklift_testkit::server::serve_args;
use forklift_testkit::time::ms;

use crate::client::{classify, connect, get, Fail};
use crate::context::Ctx;
use crate::report::{Section, Table};
use crate::s5_fuzz::{fuzz_targets, wire_fuzz};
use crate::server::{ready, start, Opts};

/// A malformed request and what it must get.
struct Probe {
    name: &'static str,
    bytes: Vec<u8>,
    /// An error status or a closed connection is required (else: informational).
    must_reject: bool,
    /// A second request is smuggled after the first: it must not be answered.
    smuggled: bool,
}

fn probes() -> Vec<Probe> {
    let p = |name, bytes: Vec<u8>, must_reject, smuggled| Probe {
        name,
        bytes,
        must_reject,
        smuggled,
    };
    let smuggle = b"GET /sleep?ms=1 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let cat = |a: &[u8], b: &[u8]| [a, b].concat();
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..200 {
        many.extend(format!("X-H{i}: v\r\n").bytes());
    }
    many.extend(b"\r\n");
    vec![
        p(
            "1 MiB header value",
            cat(&cat(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", &vec![b'a'; 1 << 20]), b"\r\n\r\n"),
            true,
            false,
        ),
        p("200 header fields", many, true, false),
        p(
            "64 KiB header value (informational)",
            cat(&cat(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", &vec![b'a'; 64 << 10]), b"\r\n\r\n"),
            false,
            false,
        ),
        p(
            "70 KB request target",
            cat(&cat(b"GET /", &vec![b'a'; 70_000]), b" HTTP/1.1\r\nHost: x\r\n\r\n"),
            true,
            false,
        ),
        p("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), true, false),
        p("NUL in the request line", b"GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), true, false),
        p("bad method token", b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), true, false),
        p("HTTP/9.9", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(), true, false),
        p("HTTP/0.9 style", b"GET /\r\n\r\n".to_vec(), true, false),
        p("header without a colon", b"GET / HTTP/1.1\r\nHost x\r\n\r\n".to_vec(), true, false),
        p("space before the colon", b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n".to_vec(), true, false),
        p("obs-fold header line", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n".to_vec(), true, false),
        p(
            "invalid chunk size",
            cat(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "chunk size overflow",
            cat(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nabc\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "chunk without its CRLF",
            cat(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "Content-Length + Transfer-Encoding (CL.TE)",
            cat(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "Transfer-Encoding + Content-Length (TE.CL)",
            cat(b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p(
            "two different Content-Lengths",
            cat(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", &smuggle),
            true,
            true,
        ),
        p(
            "Transfer-Encoding: chunked, identity",
            cat(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n", &smuggle),
            true,
            true,
        ),
        p("Transfer-Encoding: xchunked", b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n".to_vec(), true, false),
        p("Content-Length: -1", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), true, false),
        p("Content-Length: 2^70", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1180591620717411303424\r\n\r\n".to_vec(), true, false),
        p("Content-Length: 1, 2", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\nab".to_vec(), true, false),
        p(
            "HTTP/2 preface, then garbage",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x08\x00\x00\x00\x00\x00garbage-garbage".to_vec(),
            true,
            false,
        ),
        p("4 KiB of binary noise", (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect(), true, false),
    ]
}

/// Sends a probe on a new connection and reads the answer until the server closes or no
/// byte comes for `wait`.
fn run_probe(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Result<RawAnswer, Fail> {
    let s = connect(addr, Duration::from_secs(5))?;
    send_raw_on(s, bytes, wait).map_err(|e| classify(&e))
}

/// Was the request smuggled behind a probe (`GET /sleep?ms=1`) answered?
fn smuggled_answered(r: &RawAnswer) -> bool {
    r.text.contains("slept 1 ms")
}

pub fn run(ctx: &Ctx) -> Section {
    let mut sec = Section::new("5. Oversized and malformed requests; fuzzing");
    sec.intro.push(
        "2 workers, `--fault block-route`. Each probe goes on a new connection; the answer is \
         read for up to 2 s. Required: an error status or a closed connection, no answer to a \
         request smuggled after the first, and afterwards GET / still answered by the same \
         worker processes (no worker exit). Then a wire fuzzer mutates valid requests at \
         random (one connection each, write side shut after the request), and the fuzz \
         targets of `fuzz/` run for a bounded time."
            .into(),
    );
    let args = serve_args("2", &["--fault", "block-route"]);
    let mut server = start(ctx, "s5-malformed", &args, Opts::default());
    sec.command(&server);
    let workers = ready(&server);
    let addr = server.addr();
    let mut t = Table::new(&[
        "probe",
        "answer",
        "connection",
        "smuggled request answered",
        "workers alive after",
        "verdict",
    ]);
    let mut failed_probes = Vec::new();
    for p in probes() {
        let r = run_probe(addr, &p.bytes, Duration::from_secs(2));
        let after = get(addr, "/", Duration::from_secs(5));
        let alive_after = workers.iter().all(|w| process_alive(*w))
            && server.stdout.count_starting_with("exited ") == 0;
        let serves = after
            .as_ref()
            .is_ok_and(|r| r.status == 200 && r.worker().is_some_and(|p| workers.contains(&p)));
        let (answer, conn, smuggled, ok) = match &r {
            Ok(r) => {
                let rejected = r.closed || r.statuses.first().is_some_and(|s| *s >= 400);
                let ok = (!p.must_reject || rejected)
                    && !(p.smuggled && (smuggled_answered(r) || r.statuses.len() > 1));
                (
                    if r.statuses.is_empty() {
                        "none".to_string()
                    } else {
                        r.statuses
                            .iter()
                            .map(u16::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    if r.closed {
                        format!("closed after {}", ms(r.took))
                    } else {
                        "left open (2 s)".into()
                    },
                    if p.smuggled {
                        if smuggled_answered(r) {
                            "YES"
                        } else {
                            "no"
                        }
                    } else {
                        "–"
                    }
                    .to_string(),
                    ok,
                )
            }
            Err(f) => (
                format!("connect: {}", f.name()),
                "–".into(),
                "–".into(),
                false,
            ),
        };
        let verdict = ok && alive_after && serves;
        if !verdict && p.must_reject {
            failed_probes.push(p.name);
        }
        t.row(vec![
            p.name.into(),
            answer,
            conn,
            smuggled,
            format!("{}", alive_after && serves),
            if !p.must_reject {
                "info".into()
            } else if verdict {
                "pass".into()
            } else {
                "**FAIL**".into()
            },
        ]);
    }
    sec.tables.push((String::new(), t));
    sec.check(
        "every malformed request gets an error status or a closed connection, nothing smuggled, the worker alive",
        failed_probes.is_empty(),
        if failed_probes.is_empty() { "all probes".to_string() } else { failed_probes.join(", ") },
    );
    // Wire fuzz
    let wire_for = ctx.pick(Duration::from_secs(3), Duration::from_secs(10));
    let (sent, classes) = wire_fuzz(addr, wire_for);
    let exited = server.stdout.count_starting_with("exited ");
    let serves = get(addr, "/", Duration::from_secs(5)).is_ok_and(|r| r.status == 200);
    let mut w = Table::new(&[
        "wire fuzz",
        "requests",
        "answers by class",
        "worker exits",
        "GET / after",
    ]);
    w.row(vec![
        format!("{} s", wire_for.as_secs()),
        sent.to_string(),
        classes
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", "),
        exited.to_string(),
        if serves {
            "200".into()
        } else {
            "failed".into()
        },
    ]);
    sec.tables.push((String::new(), w));
    sec.check(
        "no mutated request crashes a worker",
        exited == 0 && workers.iter().all(|p| process_alive(*p)) && serves,
        format!("{sent} mutated requests, {exited} worker exits"),
    );
    let panics = server.stderr.count_containing("panicked");
    sec.check(
        "no panic logged",
        panics == 0,
        format!("{panics} panic lines on stderr"),
    );
    server.stop(Duration::from_secs(10));
    fuzz_targets(ctx, &mut sec);
    sec.note(
        "hyper's default limits apply: a request head up to about 400 KiB (its max buffer \
         size) and 100 header fields are accepted; beyond, 431. The 64 KiB header row shows \
         that a single header line far beyond nginx's 8 KiB default is served.",
    );
    sec
}
