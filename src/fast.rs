//! forklift's HTTP/1 fast path: serves the requests that make up most traffic (HTTP/1.x
//! requests without a body: GET, HEAD, DELETE, OPTIONS ...) with less work per request than
//! hyper, and hands the connection to hyper for everything else.
//!
//! What it serves itself: a request head that httparse parses completely within
//! [`MAX_HEAD`] bytes and [`MAX_HEADERS`] fields, with a method other than CONNECT, a valid
//! URI, and none of `Content-Length`, `Transfer-Encoding`, `Expect` or `Upgrade`. Keep-alive
//! and pipelining follow RFC 9112 as hyper does (HTTP/1.1 keeps the connection unless a
//! `Connection: close`; HTTP/1.0 closes unless `Connection: keep-alive`), and responses are
//! framed as hyper frames them: `Content-Length` when the body's size is known, chunked
//! encoding otherwise (close-delimited for HTTP/1.0), no body for HEAD, 204 and 304, trailers
//! only when the client sent `TE: trailers` and the response declared them.
//!
//! Everything else (a request with a body, an upgrade, the HTTP/2 preface, a malformed or
//! oversized head, a client that sends bytes httparse rejects) goes to hyper with the bytes
//! already read, so hyper's answer (a 400, a 431, a streamed body, an HTTP/2 connection) is
//! exactly what it would have been without the fast path. `tests/fast_path.rs` sends the same
//! bytes to both and compares the answers.
//!
//! Why: under keep-alive load hyper's per-request work (its header-read timer, its 8 KiB read
//! and write buffers, the dispatcher's state machine) was most of forklift's user CPU; see
//! `bench/results/` for the figures before and after.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Body as HttpBody;
use hyper::service::Service;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::body::Body;
use crate::error::BoxError;

/// The largest request head the fast path reads; a longer one goes to hyper (which accepts
/// up to about 400 KiB and answers 431 beyond).
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// The most header fields the fast path parses; more go to hyper (which answers 431 past 100).
pub(crate) const MAX_HEADERS: usize = 64;
/// The first read reserves this much; the buffer doubles while reads fill it.
const READ_INIT: usize = 2048;
/// Response bytes gathered before they are written even if more pipelined responses follow.
const WRITE_HIGH: usize = 64 * 1024;
/// Body chunks at least this long are written from their own buffer, not copied.
const WRITE_DIRECT: usize = 16 * 1024;

/// Timeouts of a fast-path connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// From the moment the server waits for a request head until the head is complete.
    pub header_read: Duration,
    /// How long a connection that has not sent its first request gets once the worker stops.
    pub first_request_grace: Duration,
}

/// How a fast-path connection ended.
pub(crate) enum Outcome {
    /// Closed: by either side, an error, a timeout or the worker's stop.
    Closed,
    /// Hyper serves the rest of the connection, starting with these bytes already read.
    Handoff(Bytes),
}

/// Serves requests on `io` until it closes or needs hyper; see the module doc.
///
/// `stop` turns true when the worker stops: an idle connection closes at once, one that has
/// not sent its first request gets `first_request_grace`, a request in progress is answered
/// with `Connection: close`.
pub(crate) async fn serve<I, S, B>(
    io: &mut I,
    service: &S,
    timeouts: Timeouts,
    mut stop: watch::Receiver<bool>,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: HttpBody,
    B::Error: Into<BoxError>,
{
    let mut conn = Conn {
        io,
        rbuf: BytesMut::new(),
        wbuf: Vec::new(),
        next_read: READ_INIT,
    };
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
    let mut timer = pin!(tokio::time::sleep_until(now + timeouts.header_read));
    let mut served = 0u64;
    loop {
        // Read until a complete head is buffered.
        let waiting_since = Instant::now();
        let head = loop {
            match parse(&mut conn.rbuf) {
                Parsed::Complete(head) => break head,
                Parsed::Rejected(bytes) => return conn.handoff(bytes).await,
                Parsed::Handoff => return conn.handoff(Bytes::new()).await,
                Parsed::Partial if conn.rbuf.len() >= MAX_HEAD => {
                    return conn.handoff(Bytes::new()).await
                }
                Parsed::Partial => {}
            }
            if stopping && conn.rbuf.is_empty() && served > 0 {
                return conn.close().await;
            }
            // Nothing more will arrive until the client has our answers.
            if !conn.wbuf.is_empty() && conn.write_out().await.is_err() {
                return Outcome::Closed;
            }
            conn.reserve();
            let read = tokio::select! {
                biased;
                read = conn.io.read_buf(&mut conn.rbuf) => read,
                _ = &mut stopped, if !stopping => {
                    stopping = true;
                    grace_until = Some(Instant::now() + timeouts.first_request_grace);
                    timer.as_mut().reset(Instant::now());
                    continue;
                }
                _ = &mut timer => {
                    let mut deadline = waiting_since + timeouts.header_read;
                    if let Some(grace) = grace_until {
                        deadline = deadline.min(grace);
                    }
                    if Instant::now() >= deadline {
                        debug!("no complete request head in time: closing");
                        return Outcome::Closed;
                    }
                    timer.as_mut().reset(deadline);
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
        let keep_alive = keep_alive && !stopping;
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

/// Polls `fut` once.
async fn poll_once<F: Future>(mut fut: Pin<&mut F>) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

struct Conn<'a, I> {
    io: &'a mut I,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    next_read: usize,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<'_, I> {
    /// Makes room for the next read: at least a quarter of `next_read`, doubling it while
    /// reads fill the buffer.
    fn reserve(&mut self) {
        let spare = self.rbuf.capacity() - self.rbuf.len();
        if spare == 0 && self.rbuf.capacity() > 0 {
            self.next_read = (self.next_read * 2).min(MAX_HEAD);
        }
        if spare < self.next_read / 4 {
            self.rbuf.reserve(self.next_read);
        }
    }

    async fn write_out(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
            if self.wbuf.capacity() > 4 * WRITE_HIGH {
                self.wbuf = Vec::new();
            }
        }
        self.io.flush().await
    }

    /// Sends what is gathered and closes our side.
    async fn close(&mut self) -> Outcome {
        if self.write_out().await.is_ok() {
            let _ = self.io.shutdown().await;
        }
        Outcome::Closed
    }

    /// Sends what is gathered and gives hyper `head` (a head taken out of the buffer, or
    /// nothing) followed by the unread rest of the buffer.
    async fn handoff(&mut self, head: Bytes) -> Outcome {
        if self.write_out().await.is_err() {
            return Outcome::Closed;
        }
        let rest = self.rbuf.split().freeze();
        if head.is_empty() {
            return Outcome::Handoff(rest);
        }
        let mut all = BytesMut::with_capacity(head.len() + rest.len());
        all.extend_from_slice(&head);
        all.extend_from_slice(&rest);
        Outcome::Handoff(all.freeze())
    }

    /// Writes (or gathers) a response; `Ok(true)` if the connection stays open.
    async fn write_response<B>(
        &mut self,
        resp: Response<B>,
        method: &Method,
        version: Version,
        keep_alive: bool,
        trailers_allowed: bool,
    ) -> io::Result<bool>
    where
        B: HttpBody,
        B::Error: Into<BoxError>,
    {
        let (mut parts, body) = resp.into_parts();
        let length = if body.is_end_stream() {
            None
        } else {
            Some(body.size_hint().exact())
        };
        let start = self.wbuf.len();
        let head = encode_head(
            &mut parts,
            length,
            method,
            version,
            keep_alive,
            &mut self.wbuf,
        );
        let framing = match head {
            Ok(framing) => framing,
            Err(why) => {
                self.wbuf.truncate(start);
                tracing::warn!("cannot send the response: {why}; closing the connection");
                return Ok(false);
            }
        };
        let keep = !framing.last;
        match framing.kind {
            Framing::Length(0) => {}
            kind => {
                let body = pin!(body);
                let trailers = if trailers_allowed {
                    framing.trailers
                } else {
                    None
                };
                if !self.write_body(body, kind, trailers).await? {
                    return Ok(false);
                }
                if matches!(kind, Framing::Close) {
                    return Ok(false);
                }
            }
        }
        if self.wbuf.len() >= WRITE_HIGH {
            self.write_out().await?;
        }
        Ok(keep)
    }

    /// Writes a body with its framing; `Ok(false)` if it broke off (the connection closes).
    async fn write_body<B>(
        &mut self,
        mut body: Pin<&mut B>,
        kind: Framing,
        trailer_names: Option<Vec<HeaderName>>,
    ) -> io::Result<bool>
    where
        B: HttpBody,
        B::Error: Into<BoxError>,
    {
        let mut left = match kind {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        loop {
            let frame = match poll_once(pin!(poll_fn(|cx| body.as_mut().poll_frame(cx)))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.write_out().await?;
                    poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    debug!("the response body failed: {}", e.into());
                    return Ok(false);
                }
            };
            let frame = match frame.into_data() {
                Ok(mut data) => {
                    let len = data.remaining();
                    if len == 0 {
                        continue;
                    }
                    if let Framing::Length(_) = kind {
                        if len as u64 > left {
                            debug!("the response body is longer than its Content-Length");
                            return Ok(false);
                        }
                        left -= len as u64;
                    }
                    if let Framing::Chunked = kind {
                        push_hex(&mut self.wbuf, len);
                        self.wbuf.extend_from_slice(b"\r\n");
                    }
                    if len >= WRITE_DIRECT {
                        self.write_out().await?;
                        let bytes = data.copy_to_bytes(len);
                        self.io.write_all(&bytes).await?;
                    } else {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.wbuf.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                    }
                    if let Framing::Chunked = kind {
                        self.wbuf.extend_from_slice(b"\r\n");
                    }
                    if self.wbuf.len() >= WRITE_HIGH {
                        self.write_out().await?;
                    }
                    continue;
                }
                Err(frame) => frame,
            };
            if let (Ok(trailers), Framing::Chunked) = (frame.into_trailers(), kind) {
                if let Some(names) = &trailer_names {
                    self.wbuf.extend_from_slice(b"0\r\n");
                    write_trailers(&trailers, names, &mut self.wbuf);
                    self.wbuf.extend_from_slice(b"\r\n");
                    return Ok(true);
                }
            }
        }
        match kind {
            Framing::Length(_) if left != 0 => {
                debug!("the response body is shorter than its Content-Length");
                Ok(false)
            }
            Framing::Chunked => {
                self.wbuf.extend_from_slice(b"0\r\n\r\n");
                Ok(true)
            }
            _ => Ok(true),
        }
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    Close,
}

struct Framed {
    kind: Framing,
    /// The connection closes after this response.
    last: bool,
    /// Trailer fields the response declared (chunked responses only).
    trailers: Option<Vec<HeaderName>>,
}

/// Encodes the status line and headers as hyper does (see the module doc) into `dst`.
fn encode_head(
    parts: &mut http::response::Parts,
    length: Option<Option<u64>>,
    method: &Method,
    req_version: Version,
    keep_alive: bool,
    dst: &mut Vec<u8>,
) -> Result<Framed, &'static str> {
    let mut status = parts.status;
    let mut length = length;
    let mut last = !keep_alive;
    if status.is_informational() {
        // A service cannot answer 1xx (nor 101: upgrades go to hyper); hyper answers 500.
        tracing::warn!("response with 1xx status code not supported");
        status = StatusCode::INTERNAL_SERVER_ERROR;
        parts.headers.clear();
        length = None;
        last = true;
    }
    let http10 = req_version == Version::HTTP_10;
    if http10 {
        if !has_token(&parts.headers, "keep-alive") && keep_alive {
            parts
                .headers
                .append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        }
    } else if !keep_alive {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if status == StatusCode::OK && !http10 {
        dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        dst.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
        dst.extend_from_slice(status.as_str().as_bytes());
        dst.push(b' ');
        dst.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        dst.extend_from_slice(b"\r\n");
    }
    let can_chunk = !http10 && can_have_body(method, status);
    let mut kind = None;
    let mut wrote_date = false;
    let mut trailers: Option<Vec<HeaderName>> = None;
    let mut joined: Option<HeaderName> = None; // a special header whose line is still open
    let mut te_needs_chunked = false;
    for (name, value) in parts.headers.iter() {
        let special = matches!(
            *name,
            header::CONTENT_LENGTH
                | header::TRANSFER_ENCODING
                | header::CONNECTION
                | header::TRAILER
        );
        if joined.as_ref().is_some_and(|open| open != name) {
            end_joined(dst, &mut joined, te_needs_chunked);
        }
        if !special {
            if *name == header::DATE {
                wrote_date = true;
            }
            dst.extend_from_slice(name.as_str().as_bytes());
            dst.extend_from_slice(b": ");
            dst.extend_from_slice(value.as_bytes());
            dst.extend_from_slice(b"\r\n");
            continue;
        }
        let continuing = joined.as_ref() == Some(name);
        match *name {
            header::CONTENT_LENGTH => {
                if kind.is_some() && !continuing {
                    return Err("a Content-Length next to another length or Transfer-Encoding");
                }
                match length {
                    Some(Some(n)) => {
                        if !continuing {
                            kind = Some(Framing::Length(n));
                            dst.extend_from_slice(b"content-length: ");
                            dst.extend_from_slice(value.as_bytes());
                            joined = Some(name.clone());
                        }
                    }
                    Some(None) => {
                        let n =
                            parse_digits(value.as_bytes()).ok_or("an invalid Content-Length")?;
                        match kind {
                            Some(Framing::Length(prev)) if prev != n => {
                                return Err("Content-Length headers that differ")
                            }
                            Some(_) => {}
                            None => {
                                kind = Some(Framing::Length(n));
                                dst.extend_from_slice(b"content-length: ");
                                dst.extend_from_slice(value.as_bytes());
                                joined = Some(name.clone());
                            }
                        }
                    }
                    None if method == Method::HEAD => {
                        // A HEAD response may state the length its GET would have.
                        if !continuing {
                            kind = Some(Framing::Length(0));
                            dst.extend_from_slice(b"content-length: ");
                            dst.extend_from_slice(value.as_bytes());
                            joined = Some(name.clone());
                        }
                    }
                    None => {}
                }
            }
            header::TRANSFER_ENCODING => {
                if kind.is_some() && !continuing {
                    return Err("a Transfer-Encoding next to a Content-Length");
                }
                if !can_chunk {
                    continue;
                }
                kind = Some(Framing::Chunked);
                te_needs_chunked = !last_token_is(value, "chunked");
                if continuing {
                    dst.extend_from_slice(b", ");
                } else {
                    dst.extend_from_slice(b"transfer-encoding: ");
                    joined = Some(name.clone());
                }
                dst.extend_from_slice(value.as_bytes());
            }
            header::CONNECTION => {
                if token_in(value, "close") {
                    last = true;
                }
                if continuing {
                    dst.extend_from_slice(b", ");
                } else {
                    dst.extend_from_slice(b"connection: ");
                    joined = Some(name.clone());
                }
                dst.extend_from_slice(value.as_bytes());
            }
            _ => {
                // Trailer
                if !can_chunk {
                    continue;
                }
                if continuing {
                    dst.extend_from_slice(b", ");
                } else {
                    dst.extend_from_slice(b"trailer: ");
                    joined = Some(name.clone());
                }
                dst.extend_from_slice(value.as_bytes());
                if let Ok(list) = value.to_str() {
                    trailers.get_or_insert_with(Vec::new).extend(
                        list.split(',')
                            .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok()),
                    );
                }
            }
        }
    }
    end_joined(dst, &mut joined, te_needs_chunked);
    let mut kind = match kind {
        Some(kind) => kind,
        None => match length {
            Some(None) if !can_chunk => Framing::Close,
            Some(None) => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            None | Some(Some(0)) => {
                if can_have_content_length(status) && method != Method::HEAD {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            Some(Some(n)) => {
                if can_have_content_length(status) {
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    dst.extend_from_slice(b"\r\n");
                    Framing::Length(n)
                } else {
                    Framing::Length(0)
                }
            }
        },
    };
    if !can_have_body(method, status) {
        kind = Framing::Length(0);
    }
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        crate::date::extend(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    if kind == Framing::Close {
        last = true;
    }
    Ok(Framed {
        kind,
        last,
        trailers: if kind == Framing::Chunked {
            trailers
        } else {
            None
        },
    })
}

/// Ends a joined header line (`name: a, b`), adding `chunked` to a Transfer-Encoding that
/// does not end with it.
fn end_joined(dst: &mut Vec<u8>, joined: &mut Option<HeaderName>, te_needs_chunked: bool) {
    if let Some(name) = joined.take() {
        if name == header::TRANSFER_ENCODING && te_needs_chunked {
            dst.extend_from_slice(b", chunked");
        }
        dst.extend_from_slice(b"\r\n");
    }
}

fn write_trailers(trailers: &HeaderMap, allowed: &[HeaderName], dst: &mut Vec<u8>) {
    for (name, value) in trailers {
        let forbidden = matches!(
            *name,
            header::AUTHORIZATION
                | header::CACHE_CONTROL
                | header::CONTENT_ENCODING
                | header::CONTENT_LENGTH
                | header::CONTENT_RANGE
                | header::CONTENT_TYPE
                | header::HOST
                | header::MAX_FORWARDS
                | header::SET_COOKIE
                | header::TRAILER
                | header::TRANSFER_ENCODING
                | header::TE
        );
        if allowed.contains(name) && !forbidden {
            dst.extend_from_slice(name.as_str().as_bytes());
            dst.extend_from_slice(b": ");
            dst.extend_from_slice(value.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
    }
}

fn can_have_body(method: &Method, status: StatusCode) -> bool {
    *method != Method::HEAD
        && !status.is_informational()
        && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
}

fn can_have_content_length(status: StatusCode) -> bool {
    !status.is_informational()
        && !matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED)
}

/// Digits only: no sign, no spaces (as hyper reads Content-Length).
fn parse_digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitive).
fn token_in(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn last_token_is(value: &HeaderValue, token: &str) -> bool {
    value.to_str().is_ok_and(|s| {
        s.rsplit(',')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| token_in(v, token))
}

/// Appends `n` in upper-case hexadecimal (a chunk size).
fn push_hex(dst: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b"0123456789ABCDEF"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    dst.extend_from_slice(&digits[i..]);
}

/// Whether a comma-separated field value lists `token` (ASCII case-insensitive); like
/// hyper, a value that is not visible ASCII lists nothing.
fn bytes_list_token(value: &[u8], token: &str) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        && value
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// A request the fast path serves.
struct Head {
    req: Request<Body>,
    /// The client lets the connection stay open after the response.
    keep_alive: bool,
    /// The client accepts trailers (`TE: trailers`).
    te_trailers: bool,
}

enum Parsed {
    Complete(Head),
    Partial,
    /// Not for the fast path: hyper takes the connection, with the buffer as it is.
    Handoff,
    /// Not for the fast path after all: `http` rejected a name, value or URI that httparse
    /// let through. These are the head's bytes, taken out of the buffer.
    Rejected(Bytes),
}

/// Parses the head at the start of `buf`, taking it out of `buf` if the fast path serves it;
/// see the module doc for what it takes.
fn parse(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    // Offsets into the head (at most MAX_HEAD bytes: u16 holds them): name and value.
    let mut offsets = [(0u16, 0u16, 0u16, 0u16); MAX_HEADERS];
    let (len, method, path, version, count, keep_alive, te_trailers) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match req.parse_with_uninit_headers(bytes, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Handoff,
        };
        if len > MAX_HEAD {
            return Parsed::Handoff;
        }
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Parsed::Handoff;
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Parsed::Handoff;
        };
        if method == Method::CONNECT {
            return Parsed::Handoff;
        }
        let version = if version == 1 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        let base = bytes.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u16;
        let path_start = offset(path.as_bytes());
        let path = (path_start, path_start + path.len() as u16);
        let mut keep_alive = version == Version::HTTP_11;
        let mut te_trailers = false;
        let mut close = false;
        for (h, slot) in req.headers.iter().zip(offsets.iter_mut()) {
            let name = h.name.as_bytes();
            let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
            if is("content-length") || is("transfer-encoding") || is("expect") || is("upgrade") {
                return Parsed::Handoff;
            }
            if is("connection") {
                if close || bytes_list_token(h.value, "close") {
                    close = true;
                    keep_alive = false;
                } else if version == Version::HTTP_10 && bytes_list_token(h.value, "keep-alive") {
                    keep_alive = true;
                }
            } else if is("te") {
                te_trailers = te_trailers || bytes_list_token(h.value, "trailers");
            }
            let ns = offset(name);
            let vs = offset(h.value);
            *slot = (ns, ns + name.len() as u16, vs, vs + h.value.len() as u16);
        }
        let count = req.headers.len();
        (len, method, path, version, count, keep_alive, te_trailers)
    };
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &offsets[..count] {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize]);
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize));
        let (Ok(name), Ok(value)) = (name, value) else {
            return Parsed::Rejected(head);
        };
        headers.append(name, value);
    }
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path.0 as usize..path.1 as usize)) else {
        return Parsed::Rejected(head);
    };
    let mut req = Request::new(Body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Parsed::Complete(Head {
        req,
        keep_alive,
        te_trailers,
    })
}
