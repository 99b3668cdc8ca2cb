//! forklift's HTTP/1 fast path: serves the requests that make up most traffic (HTTP/1.x
//! requests without a body: GET, HEAD, DELETE, OPTIONS ...) with less work per request than
//! hyper, and hands the connection to hyper for everything else.
//!
//! What it serves itself: a request head that httparse parses completely within
//! [`MAX_HEAD`] bytes and [`MAX_HEADERS`](parse::MAX_HEADERS) fields, with a method other than
//! CONNECT, a valid URI, and none of `Content-Length`, `Transfer-Encoding`, `Expect` or
//! `Upgrade`. Keep-alive and pipelining follow RFC 9112 as hyper does (HTTP/1.1 keeps the
//! connection unless a `Connection: close`; HTTP/1.0 closes unless `Connection: keep-alive`),
//! and responses are framed as hyper frames them: `Content-Length` when the body's size is
//! known, chunked encoding otherwise (close-delimited for HTTP/1.0), no body for HEAD, 204 and
//! 304, trailers only when the client sent `TE: trailers` and the response declared them.
//!
//! What no server should take it answers at once with hyper's automatic 400 and closes: a
//! head with a byte httparse rejects (as soon as that byte is in: hyper would wait for an
//! empty line), a line ending in a bare LF, an HTTP/1.1 request without `Host`, a request
//! with two (see [`Parsed::Invalid`]).
//!
//! Everything else (a request with a body, an upgrade, the HTTP/2 preface, an oversized head,
//! a name or value `http` rejects) goes to hyper with the bytes already read, so hyper's
//! answer (a 431, a streamed body, an HTTP/2 connection) is exactly what it would have been
//! without the fast path. `tests/fast_path.rs` sends the same bytes to both and compares the
//! answers.
//!
//! Why: under keep-alive load hyper's per-request work (its header-read timer, its 8 KiB read
//! and write buffers, the dispatcher's state machine) was most of forklift's user CPU; see
//! `bench/results/` for the figures before and after.
//!
//! `parse.rs` reads a request head, `encode.rs` writes a response head as hyper would,
//! `conn.rs` holds a connection's buffers and writes responses with their bodies, and
//! [`serve`] here runs the loop: read a head, call the service, answer, until hyper takes over
//! or the connection ends.

mod buffers;
mod conn;
mod encode;
mod parse;
mod screen;
mod sendfile;

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Body as HttpBody;
use hyper::service::Service;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use self::conn::Conn;
pub(crate) use self::parse::{parse, Parsed};
use self::parse::{Head, MAX_HEAD};
pub(crate) use self::screen::{Screen, Screened, MAX_HYPER_HEAD};
use crate::error::BoxError;
use crate::http::body::Body;

/// The first read reserves this much; the buffer doubles while reads fill it.
pub(super) const READ_INIT: usize = 2048;

/// Timeouts of a fast-path connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From a connection's start until its first request head is complete, and from the
    /// first byte of each later head until that head is complete.
    pub header_read: Duration,
    /// How long a connection may wait idle between requests (from the moment the server
    /// waits for the next request until its first byte); zero: no keep-alive, each
    /// connection closes after one response.
    pub keep_alive: Duration,
    /// How long a connection that has not sent its first request gets once the worker stops.
    pub first_request_grace: Duration,
}

/// How a fast-path connection ended.
pub(crate) enum Outcome {
    /// Closed: by either side, an error, a timeout or the worker's stop.
    Closed,
    /// Hyper serves the rest of the connection, starting with these bytes already read.
    Handoff(Bytes),
    /// Idle between requests for [`PARK_AFTER`], with nothing buffered either way: the caller
    /// parks the connection until its next request starts (then [`serve`] again with
    /// `resume`) or the keep-alive timeout ends at `until`.
    Idle { until: Instant, resume: Resume },
}

/// Where a connection served before left off, for [`serve`] to go on with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Resume {
    /// Requests served so far.
    served: u64,
    /// The HTTP version of the last of them (hyper answers a malformed head in it).
    last_version: http::Version,
}

impl Resume {
    /// A new connection.
    pub(crate) const NEW: Resume = Resume {
        served: 0,
        last_version: http::Version::HTTP_11,
    };
}

/// How long a keep-alive connection waits idle for its next request before it is parked
/// ([`Outcome::Idle`]): its task, sized for the largest state a request needs, ends, and a
/// small one waits in its place. Short, so that a burst of connections does not hold the
/// large tasks long: with 10 ms, 10,000 idle connections took 1.6 KiB each; with 100 ms, 2.9
/// (`bench/run --workloads idle`, when a parked task had a timer of its own). Connections
/// under load wait less than this between requests and do not pay the trip (two task
/// spawns: at 2,000 requests/s over 50 connections each idle 25 ms, a worker's CPU per
/// request went from about 25 to 29-36 µs).
pub(crate) const PARK_AFTER: Duration = Duration::from_millis(10);

/// Connections a worker holds before the waiting ones give their buffers back at once (see
/// `buffers.rs`; they all do once parked).
const CROWDED: usize = 1024;

/// Serves requests on `io` until it closes or needs hyper; see the module doc.
///
/// `stop` turns true when the worker stops: an idle connection closes at once, one that has
/// not sent its first request gets `first_request_grace`, a request in progress is answered
/// with `Connection: close`. With `park` (the caller can park the connection), one idle for
/// [`PARK_AFTER`] between requests ends [`Outcome::Idle`]. `resume` says where the
/// connection left off ([`Resume::NEW`] for a new one).
pub(crate) async fn serve<I, S, B>(
    io: &mut I,
    service: &S,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
    park: bool,
    resume: Resume,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    let mut conn = Conn::new(io, READ_INIT);
    let stop_flag = stop.clone();
    let mut stopping = *stop.borrow_and_update();
    let now = Instant::now();
    let mut grace_until = stopping.then(|| now + timeouts.first_request_grace);
    let stopped = async move {
        if !*stop.borrow_and_update() {
            let _ = stop.changed().await;
        }
    };
    let mut stopped = pin!(stopped);
    // One timer for the connection's life, re-armed only when it fires before the deadline
    // of the current wait: cheaper than a timer per request.
    let first_deadline = match grace_until {
        Some(grace) => grace.min(now + timeouts.header_read),
        None => now + timeouts.header_read,
    };
    let mut timer = pin!(tokio::time::sleep_until(first_deadline));
    // The waker `stopped` and `timer` were last polled with (see the wait below), and whether
    // the timer still waits with it (a reset or a firing ends that).
    let mut armed: Option<std::task::Waker> = None;
    let mut timer_armed = false;
    let Resume {
        mut served,
        // hyper answers a malformed head in the version of the request before it.
        mut last_version,
    } = resume;
    loop {
        // Read until a complete head is buffered.
        let waiting_since = Instant::now();
        // When the head being waited for started: the connection's start for the first one,
        // its first byte for later ones (the wait before that byte is keep-alive idle time).
        let mut head_since = (served == 0 || !conn.rbuf.is_empty()).then_some(waiting_since);
        let idle_until = waiting_since + timeouts.keep_alive;
        // When this wait parks the connection, if it is still idle then.
        let mut park_at = None;
        if head_since.is_none() {
            let mut until = idle_until;
            if park && !stopping {
                let at = waiting_since + PARK_AFTER;
                park_at = Some(at);
                // A timer that fires within one more PARK_AFTER stays as it is (and is moved
                // on when it fires, below): re-arming it for every request of a busy
                // connection would cost more than a park a little late.
                if timer.deadline() > at + PARK_AFTER {
                    until = until.min(at);
                }
            }
            // The timer may stand past this wait's end only if keep-alive is the shorter.
            if until < timer.deadline() {
                timer.as_mut().reset(until);
                timer_armed = false;
            }
        }
        let head = loop {
            match parse(&mut conn.rbuf) {
                Parsed::Complete(head) => break head,
                Parsed::Rejected(bytes) => return conn.handoff(bytes, served).await,
                Parsed::Invalid(why) => {
                    debug!("{why}: answering 400");
                    return conn.bad_request(last_version).await;
                }
                Parsed::Handoff => return conn.handoff(Bytes::new(), served).await,
                Parsed::Partial if conn.rbuf.len() >= MAX_HEAD => {
                    return conn.handoff(Bytes::new(), served).await
                }
                Parsed::Partial => {
                    // The head's first bytes are in: from now the header-read timeout
                    // applies, which may end before the keep-alive deadline the timer is set
                    // to. (Noted here rather than at the read: most heads arrive whole, and
                    // then the clock is not read.)
                    if head_since.is_none() && !conn.rbuf.is_empty() {
                        let now = Instant::now();
                        head_since = Some(now);
                        let deadline = now + timeouts.header_read;
                        if deadline < timer.deadline() {
                            timer.as_mut().reset(deadline);
                            timer_armed = false;
                        }
                    }
                }
            }
            if stopping && conn.rbuf.is_empty() && served > 0 {
                return conn.close().await;
            }
            // Nothing more will arrive until the client has our answers.
            if !conn.wbuf.is_empty() && conn.write_out().await.is_err() {
                return Outcome::Closed;
            }
            let waited = poll_fn(|cx| {
                if let Poll::Ready(read) = conn.poll_read(cx) {
                    return Poll::Ready(Wait::Read(read));
                }
                // The stop and the timer are polled only when they may have changed: once
                // polled with this task's waker they keep it until they fire (the stop's
                // version moves, the timer leaves the wheel), and polling them again on every
                // read that would block cost ~300 instructions per keep-alive request.
                let same_task = armed.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
                // `armed` is set only by a poll that polled the stop too (unless stopping).
                let stop_waits = same_task && !stop_flag.has_changed().unwrap_or(true);
                if !stopping && !stop_waits && stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wait::Stop);
                }
                let timer_waits = same_task && timer_armed && !timer.is_elapsed();
                if !timer_waits {
                    if timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wait::Timer);
                    }
                    timer_armed = true;
                }
                if !same_task {
                    armed = Some(cx.waker().clone());
                }
                Poll::Pending
            })
            .await;
            let read = match waited {
                Wait::Read(read) => read,
                Wait::Stop => {
                    stopping = true;
                    grace_until = Some(Instant::now() + timeouts.first_request_grace);
                    timer.as_mut().reset(Instant::now());
                    timer_armed = false;
                    continue;
                }
                Wait::Timer => {
                    timer_armed = false;
                    let now = Instant::now();
                    if let (None, Some(at)) = (head_since, park_at) {
                        if now >= at && conn.rbuf.is_empty() && conn.wbuf.is_empty() {
                            let resume = Resume {
                                served,
                                last_version,
                            };
                            return Outcome::Idle {
                                until: idle_until,
                                resume,
                            };
                        }
                    }
                    let mut deadline = match head_since {
                        Some(since) => since + timeouts.header_read,
                        None => idle_until,
                    };
                    if let Some(grace) = grace_until {
                        deadline = deadline.min(grace);
                    }
                    if now >= deadline {
                        if head_since.is_some() {
                            debug!("no complete request head in time: closing");
                        } else {
                            debug!("idle for the keep-alive timeout: closing");
                        }
                        return Outcome::Closed;
                    }
                    let next = match (head_since, park_at) {
                        (None, Some(at)) if at > now => deadline.min(at),
                        _ => deadline,
                    };
                    timer.as_mut().reset(next);
                    continue;
                }
            };
            match read {
                Ok(0) => {
                    if !conn.rbuf.is_empty() {
                        debug!("connection closed inside a request head");
                    }
                    return conn.close().await;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!("read failed: {e}");
                    return Outcome::Closed;
                }
            }
        };
        let Head {
            req,
            keep_alive,
            te_trailers: trailers_allowed,
        } = head;
        served += 1;
        let method = req.method().clone();
        let version = req.version();
        last_version = version;
        // Run the handler; answers gathered so far go out before waiting on it.
        let mut call = pin!(service.call(req));
        let resp = match poll_once(call.as_mut()).await {
            Poll::Ready(resp) => resp,
            Poll::Pending => {
                if conn.write_out().await.is_err() {
                    return Outcome::Closed;
                }
                call.await
            }
        };
        let resp = match resp {
            Ok(resp) => resp,
            Err(e) => {
                debug!("the service failed: {}", e.into());
                return conn.close().await;
            }
        };
        stopping = stopping || *stop_flag.borrow();
        let keep_alive = keep_alive && !stopping && !timeouts.keep_alive.is_zero();
        match conn
            .write_response(resp, &method, version, keep_alive, trailers_allowed)
            .await
        {
            Ok(true) => {}
            Ok(false) => return conn.close().await,
            Err(e) => {
                debug!("writing a response failed: {e}");
                return Outcome::Closed;
            }
        }
        if conn.rbuf.is_empty() && conn.write_out().await.is_err() {
            return Outcome::Closed;
        }
    }
}

/// What a wait for the next bytes of a head ended with.
enum Wait {
    Read(std::io::Result<usize>),
    Stop,
    Timer,
}

/// Polls `fut` once.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn answer(
        req: Request<Body>,
    ) -> Result<Response<http_body_util::Full<Bytes>>, std::convert::Infallible> {
        let text = format!("{} {}", req.method(), req.uri());
        Ok(Response::new(http_body_util::Full::new(Bytes::from(text))))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipelined_requests_are_answered_in_order_then_a_body_goes_to_hyper() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let (_stop_tx, stop) = watch::channel(false);
        let input = b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHost: x\r\n\r\nPOST /4 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi";
        client.write_all(input).await.unwrap();
        let timeouts = Timeouts {
            header_read: Duration::from_secs(5),
            keep_alive: Duration::from_secs(75),
            first_request_grace: Duration::from_secs(1),
        };
        let service = hyper::service::service_fn(answer);
        let outcome = serve(&mut server, &service, timeouts, stop, false, Resume::NEW).await;
        let Outcome::Handoff(rest) = outcome else {
            panic!("expected a handoff");
        };
        assert_eq!(
            &rest[..],
            b"POST /4 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        );
        drop(server);
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        let bodies: Vec<&str> = out
            .split("\r\n\r\n")
            .skip(1)
            .map(|b| b.split("HTTP/1.1").next().unwrap())
            .collect();
        assert_eq!(bodies, ["GET /1", "", "GET /3"], "{out}");
        // HEAD states the length its GET would have ("HEAD /2").
        assert_eq!(out.matches("content-length: 6").count(), 2, "{out}");
        assert_eq!(out.matches("content-length: 7").count(), 1, "{out}");
    }

    /// The next request gets the sent response's header map, emptied: its room, none of its
    /// fields (see `parse::recycle`).
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_gets_the_last_responses_header_map_emptied() {
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let (_stop_tx, stop) = watch::channel(false);
        client
            .write_all(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: y\r\n\r\n")
            .await
            .unwrap();
        drop(client);
        let seen = std::cell::RefCell::new(Vec::new());
        let service = hyper::service::service_fn(|req: Request<Body>| {
            let fields: Vec<String> = req
                .headers()
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
                .collect();
            let mut resp = Response::new(http_body_util::Full::new(Bytes::from_static(b"ok")));
            resp.headers_mut()
                .insert("x-from-the-response", http::HeaderValue::from_static("1"));
            let room = resp.headers().capacity();
            seen.borrow_mut()
                .push((fields, req.headers().capacity(), room));
            async { Ok::<_, std::convert::Infallible>(resp) }
        });
        let timeouts = header_read_3s();
        serve(&mut server, &service, timeouts, stop, false, Resume::NEW).await;
        let seen = seen.into_inner();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].0, ["host: x"]);
        assert_eq!(seen[1].0, ["host: y"], "a field of the response stayed");
        // The second request's map is the first response's (the worker's spare, which
        // the first request took, if this thread had one).
        assert_eq!(seen[1].1, seen[0].2, "{seen:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_crowded_worker_parks_idle_buffers_and_answers_the_same() {
        let timeouts = Timeouts {
            header_read: Duration::from_secs(5),
            keep_alive: Duration::from_secs(75),
            first_request_grace: Duration::from_secs(1),
        };
        let service = hyper::service::service_fn(answer);
        let mut answers = Vec::new();
        for crowded in [false, true] {
            buffers::pretend_open(if crowded { 5000 } else { 0 });
            let (mut client, mut server) = tokio::io::duplex(64);
            let (_stop_tx, stop) = watch::channel(false);
            let client = async move {
                let mut out = Vec::new();
                // One request at a time (each waits idle for the next), one split in three
                // writes, one long enough to outgrow the first read.
                let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(3000));
                let reqs: [&[&[u8]]; 3] = [
                    &[b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"],
                    &[b"GET /2 HT", b"TP/1.1\r\nHo", b"st: x\r\n\r\n"],
                    &[long.as_bytes()],
                ];
                for req in reqs {
                    for part in req {
                        client.write_all(part).await.unwrap();
                        tokio::task::yield_now().await;
                    }
                    let mut buf = [0u8; 8192];
                    let n = client.read(&mut buf).await.unwrap();
                    out.extend_from_slice(&buf[..n]);
                    while !out.ends_with(b"/1") && !out.ends_with(b"/2") && !out.ends_with(b"aaa") {
                        let n = client.read(&mut buf).await.unwrap();
                        assert!(n > 0, "closed early: {}", out.escape_ascii());
                        out.extend_from_slice(&buf[..n]);
                    }
                }
                drop(client);
                out
            };
            let (outcome, out) = tokio::join!(
                serve(&mut server, &service, timeouts, stop, false, Resume::NEW),
                client
            );
            assert!(matches!(outcome, Outcome::Closed));
            buffers::pretend_open(if crowded { -5000 } else { 0 });
            let text = String::from_utf8_lossy(&out).to_string();
            // Dates differ between the runs; the rest must not.
            let text: String = text
                .split("\r\n")
                .filter(|l| !l.starts_with("date:"))
                .collect::<Vec<_>>()
                .join("\r\n");
            answers.push(text);
        }
        assert!(answers[0].contains("GET /2"), "{}", answers[0]);
        assert_eq!(answers[0], answers[1]);
    }

    /// A header-read timeout of 3 s; keep-alive and the first-request grace as in a worker.
    fn header_read_3s() -> Timeouts {
        Timeouts {
            header_read: Duration::from_secs(3),
            keep_alive: Duration::from_secs(75),
            first_request_grace: Duration::from_secs(1),
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let (_stop_tx, stop) = watch::channel(false);
        let timeouts = header_read_3s();
        let start = Instant::now();
        let service = hyper::service::service_fn(answer);
        assert!(matches!(
            serve(&mut server, &service, timeouts, stop, false, Resume::NEW).await,
            Outcome::Closed
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    /// A head that trickles in keeps waking the connection with reads, each before the timer
    /// is due: the header-read timeout still ends it (for a first request, counted from the
    /// connection's start).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_trickled_head_is_closed_at_the_header_read_timeout() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let (_stop_tx, stop) = watch::channel(false);
        let timeouts = header_read_3s();
        let start = Instant::now();
        let trickle = async {
            for &b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if client.write_all(&[b]).await.is_err() {
                    break;
                }
            }
            std::future::pending::<()>().await
        };
        let service = hyper::service::service_fn(answer);
        let outcome = tokio::select! {
            outcome = serve(&mut server, &service, timeouts, stop, false, Resume::NEW) => outcome,
            _ = trickle => unreachable!(),
        };
        assert!(matches!(outcome, Outcome::Closed));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    /// Serves one request on a fresh connection, then (if `late` is given) sends these
    /// bytes after this many seconds: how long until the connection ended, and what the
    /// client got.
    async fn served_then(timeouts: Timeouts, late: Option<(u64, &[u8])>) -> (Duration, String) {
        let service = hyper::service::service_fn(answer);
        let (mut client, mut server) = tokio::io::duplex(1024);
        let (_stop_tx, stop) = watch::channel(false);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let sender = async {
            if let Some((secs, bytes)) = late {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                client.write_all(bytes).await.unwrap();
            }
            client
        };
        let start = Instant::now();
        let (outcome, mut client) = tokio::join!(
            serve(&mut server, &service, timeouts, stop, false, Resume::NEW),
            sender
        );
        assert!(matches!(outcome, Outcome::Closed));
        let took = start.elapsed();
        drop(server);
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        (took, out)
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_idle_connection_waits_the_keep_alive_timeout_and_a_late_head_the_header_read_one() {
        let timeouts = Timeouts {
            header_read: Duration::from_secs(3),
            keep_alive: Duration::from_secs(10),
            first_request_grace: Duration::from_secs(1),
        };
        // Served, then idle: open past the header-read timeout, closed at the keep-alive one.
        let (took, _) = served_then(timeouts, None).await;
        assert_eq!(took, Duration::from_secs(10));
        // Served, idle 8 s, then half a head: closed 3 s after its first byte.
        let (took, _) = served_then(timeouts, Some((8, b"GET / HT"))).await;
        assert_eq!(took, Duration::from_secs(11));
        // A keep-alive timeout shorter than the header-read one bounds the idle wait.
        let short = Timeouts {
            keep_alive: Duration::from_secs(1),
            ..timeouts
        };
        let (took, _) = served_then(short, None).await;
        assert_eq!(took, Duration::from_secs(1));
        // Zero: no keep-alive; the answer says close.
        let off = Timeouts {
            keep_alive: Duration::ZERO,
            ..timeouts
        };
        let (took, out) = served_then(off, None).await;
        assert_eq!(took, Duration::ZERO);
        assert!(out.contains("connection: close\r\n"), "{out}");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stop_closes_an_idle_connection_and_gives_a_new_one_its_grace() {
        let timeouts = Timeouts {
            header_read: Duration::from_secs(30),
            keep_alive: Duration::from_secs(75),
            first_request_grace: Duration::from_secs(1),
        };
        let service = hyper::service::service_fn(answer);
        // Served once, then idle: closes as the stop comes.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let (stop_tx, stop) = watch::channel(false);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop_tx.send(true).unwrap();
        };
        let start = Instant::now();
        let (outcome, ()) = tokio::join!(
            serve(&mut server, &service, timeouts, stop, false, Resume::NEW),
            stopper
        );
        assert!(matches!(outcome, Outcome::Closed));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Never sent a request, stop already under way: the grace, then closed.
        let (_client, mut server) = tokio::io::duplex(1024);
        let (_stop_tx, stop) = watch::channel(true);
        let start = Instant::now();
        assert!(matches!(
            serve(&mut server, &service, timeouts, stop, false, Resume::NEW).await,
            Outcome::Closed
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_bad_head_is_answered_400_at_once_after_the_answers_before_it() {
        let timeouts = Timeouts {
            header_read: Duration::from_secs(30),
            keep_alive: Duration::from_secs(75),
            first_request_grace: Duration::from_secs(1),
        };
        let service = hyper::service::service_fn(answer);
        for (input, last) in [
            // A bad byte past the first 24, no blank line.
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\rZ"[..], None),
            // A served request, then a bad head that never ends.
            (
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: example.com\r\n\x05\n",
                Some("GET /"),
            ),
            (b"GET / HTTP/1.1\r\n\r\n", None),
            (b"GET / HTTP/1.1\r\nHost: x\r\nDummy: x\nContent-Length: 23\r\n\r\n", None),
            // hyper answers in HTTP/1.0 after an HTTP/1.0 request.
            (
                b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Some("GET /a"),
            ),
        ] {
            let (mut client, mut server) = tokio::io::duplex(1 << 16);
            let (_stop_tx, stop) = watch::channel(false);
            // The client's side stays open: the answer may not wait for more.
            client.write_all(input).await.unwrap();
            let start = Instant::now();
            let outcome = serve(&mut server, &service, timeouts, stop, false, Resume::NEW).await;
            assert!(matches!(outcome, Outcome::Closed));
            assert_eq!(start.elapsed(), Duration::ZERO, "{}", input.escape_ascii());
            drop(server);
            let mut out = String::new();
            client.read_to_string(&mut out).await.unwrap();
            // The answer before it (its body says what it answered), then the 400.
            let bad = match last {
                Some(body) => match out.split_once(&format!("\r\n\r\n{body}HTTP/")) {
                    Some((_, rest)) => format!("HTTP/{rest}"),
                    None => panic!("no answer to {body}: {out:?}"),
                },
                None => out.clone(),
            };
            let http10 = input.starts_with(b"GET /a HTTP/1.0");
            let head = if http10 {
                "HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\ndate: "
            } else {
                "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: "
            };
            assert!(bad.starts_with(head), "{}: {out:?}", input.escape_ascii());
            assert!(bad.ends_with(" GMT\r\n\r\n"), "{out:?}");
        }
    }
}
