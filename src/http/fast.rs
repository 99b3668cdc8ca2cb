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

use crate::error::BoxError;
use crate::http::body::Body;

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

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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
        flushes: 0,
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
    let first_deadline = match grace_until {
        Some(grace) => grace.min(now + timeouts.header_read),
        None => now + timeouts.header_read,
    };
    let mut timer = pin!(tokio::time::sleep_until(first_deadline));
    let mut served = 0u64;
    loop {
        // Read until a complete head is buffered.
        let waiting_since = Instant::now();
        let head = loop {
            match parse(&mut conn.rbuf) {
                Parsed::Complete(head) => break head,
                Parsed::Rejected(bytes) => return conn.handoff(bytes, served).await,
                Parsed::Handoff => return conn.handoff(Bytes::new(), served).await,
                Parsed::Partial if conn.rbuf.len() >= MAX_HEAD => {
                    return conn.handoff(Bytes::new(), served).await
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
    /// How many times gathered bytes were written out.
    flushes: u64,
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
            self.flushes += 1;
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
    /// `served` requests came before: such a connection speaks HTTP/1 and cannot turn to
    /// HTTP/2, so an HTTP/2 preface closes it (as hyper's HTTP/1 side does), where hyper's
    /// version sniffing would take it.
    async fn handoff(&mut self, head: Bytes, served: u64) -> Outcome {
        if served > 0 && head.is_empty() && self.rbuf.starts_with(H2_PREFACE) {
            debug!("an HTTP/2 preface after HTTP/1 requests: closing");
            return self.close().await;
        }
        if self.write_out().await.is_err() {
            return Outcome::Closed;
        }
        let rest = self.rbuf.split().freeze();
        let read = if head.is_empty() {
            rest
        } else {
            let mut all = BytesMut::with_capacity(head.len() + rest.len());
            all.extend_from_slice(&head);
            all.extend_from_slice(&rest);
            all.freeze()
        };
        Outcome::Handoff(read)
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
        let (start, flushes) = (self.wbuf.len(), self.flushes);
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
                match self.write_body(body, kind, trailers).await? {
                    BodyEnd::Complete => {}
                    BodyEnd::Short => return Ok(false),
                    BodyEnd::Failed => {
                        // As hyper does: what of this response is not sent yet never is.
                        let sent = self.flushes != flushes;
                        self.wbuf.truncate(if sent { 0 } else { start });
                        return Ok(false);
                    }
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

    /// Writes a body with its framing. A body longer than its length is cut at the length,
    /// and no more of it is polled (as hyper does).
    async fn write_body<B>(
        &mut self,
        mut body: Pin<&mut B>,
        kind: Framing,
        trailer_names: Option<Vec<HeaderName>>,
    ) -> io::Result<BodyEnd>
    where
        B: HttpBody,
        B::Error: Into<BoxError>,
    {
        let mut left = match kind {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        loop {
            if left == 0 {
                return Ok(BodyEnd::Complete);
            }
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
                    return Ok(BodyEnd::Failed);
                }
            };
            let frame = match frame.into_data() {
                Ok(mut data) => {
                    let mut len = data.remaining();
                    if len == 0 {
                        continue;
                    }
                    if let Framing::Length(_) = kind {
                        if len as u64 > left {
                            debug!("the response body is longer than its length: cut");
                            len = left as usize;
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
                        self.flushes += 1;
                        self.io.write_all(&bytes).await?;
                    } else {
                        let mut todo = len;
                        while todo > 0 {
                            let chunk = data.chunk();
                            let n = chunk.len().min(todo);
                            self.wbuf.extend_from_slice(&chunk[..n]);
                            data.advance(n);
                            todo -= n;
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
                    return Ok(BodyEnd::Complete);
                }
            }
        }
        match kind {
            Framing::Length(_) if left != 0 => {
                debug!("the response body is shorter than its Content-Length");
                Ok(BodyEnd::Short)
            }
            Framing::Chunked => {
                self.wbuf.extend_from_slice(b"0\r\n\r\n");
                Ok(BodyEnd::Complete)
            }
            _ => Ok(BodyEnd::Complete),
        }
    }
}

/// How a response body ended.
enum BodyEnd {
    Complete,
    /// It ended before its Content-Length: the connection closes.
    Short,
    /// It failed: the connection closes, and what of it was not sent yet is not.
    Failed,
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
    let status = parts.status;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        // A service cannot send an interim response: hyper answers this 500 in its place,
        // to any client, and closes.
        tracing::warn!("response with 1xx status code not supported");
        dst.extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\n");
        if method != Method::HEAD {
            dst.extend_from_slice(b"content-length: 0\r\n");
        }
        dst.extend_from_slice(b"date: ");
        crate::http::date::extend(dst);
        dst.extend_from_slice(b"\r\n\r\n");
        return Ok(Framed {
            kind: Framing::Length(0),
            last: true,
            trailers: None,
        });
    }
    // A 101 that is not an upgrade (upgrades go to hyper) ends the connection, as in hyper.
    let mut last = !keep_alive || status == StatusCode::SWITCHING_PROTOCOLS;
    // The status line's version: an HTTP/1.0 client gets HTTP/1.0; otherwise the response's.
    let http10 = if req_version == Version::HTTP_10 {
        if !has_token(&parts.headers, "keep-alive") {
            match parts.version {
                Version::HTTP_10 => last = true,
                Version::HTTP_11 if keep_alive => {
                    parts
                        .headers
                        .append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
                }
                _ => {}
            }
        }
        true
    } else {
        if !keep_alive && !has_token(&parts.headers, "close") {
            parts
                .headers
                .append(header::CONNECTION, HeaderValue::from_static("close"));
        }
        parts.version == Version::HTTP_10
    };
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
                    // Trust the header as hyper does; later values of it are dropped.
                    Some(Some(n)) if !continuing => {
                        kind = Some(Framing::Length(n));
                        dst.extend_from_slice(b"content-length: ");
                        dst.extend_from_slice(value.as_bytes());
                        joined = Some(name.clone());
                    }
                    Some(Some(_)) => {}
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
                    // A HEAD response may state the length its GET would have.
                    None if method == Method::HEAD && !continuing => {
                        kind = Some(Framing::Length(0));
                        dst.extend_from_slice(b"content-length: ");
                        dst.extend_from_slice(value.as_bytes());
                        joined = Some(name.clone());
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
        crate::http::date::extend(dst);
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
pub(crate) struct Head {
    pub(crate) req: Request<Body>,
    /// The client lets the connection stay open after the response.
    pub(crate) keep_alive: bool,
    /// The client accepts trailers (`TE: trailers`).
    te_trailers: bool,
}

// Returned by value once per request: boxing the request would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
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
pub(crate) fn parse(buf: &mut BytesMut) -> Parsed {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(bytes: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        (parse(&mut buf), buf)
    }

    #[test]
    fn a_get_is_parsed_and_taken_out_of_the_buffer() {
        let (parsed, rest) =
            head_of(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET /next");
        let Parsed::Complete(head) = parsed else {
            panic!("not complete");
        };
        assert_eq!(head.req.method(), Method::GET);
        assert_eq!(head.req.uri(), "/a?b=c");
        assert_eq!(head.req.version(), Version::HTTP_11);
        assert_eq!(head.req.headers()["host"], "x");
        assert_eq!(head.req.headers().get_all("x-a").iter().count(), 2);
        assert!(head.keep_alive && !head.te_trailers);
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        let ka = |req: &[u8]| match head_of(req).0 {
            Parsed::Complete(h) => h.keep_alive,
            _ => panic!("not complete: {}", String::from_utf8_lossy(req)),
        };
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(!ka(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"
        ));
    }

    #[test]
    fn what_the_fast_path_does_not_take_goes_to_hyper() {
        for req in [
            &b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.2\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"GET\x00 / HTTP/1.1\r\n\r\n",
        ] {
            let (parsed, rest) = head_of(req);
            assert!(
                matches!(parsed, Parsed::Handoff),
                "{}",
                String::from_utf8_lossy(req)
            );
            assert_eq!(&rest[..], req, "the buffer is left whole for hyper");
        }
    }

    #[test]
    fn too_many_fields_go_to_hyper() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            req.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert!(matches!(head_of(&req).0, Parsed::Handoff));
    }

    #[test]
    fn partial_heads_wait_for_more() {
        for req in [&b"G"[..], b"GET / HT", b"GET / HTTP/1.1\r\nHost: x\r\n"] {
            assert!(matches!(head_of(req).0, Parsed::Partial));
        }
        // Not HTTP/1 as soon as the version says so: hyper reads the rest.
        assert!(matches!(head_of(b"PRI * HTTP/2").0, Parsed::Handoff));
    }

    fn encode(
        resp: Response<()>,
        length: Option<Option<u64>>,
        method: Method,
        version: Version,
        keep_alive: bool,
    ) -> (String, Result<Framing, &'static str>, bool) {
        let (mut parts, ()) = resp.into_parts();
        let mut out = Vec::new();
        let framed = encode_head(&mut parts, length, &method, version, keep_alive, &mut out);
        let text = String::from_utf8(out).unwrap();
        // Drop the date line: it changes.
        let text = text
            .lines()
            .filter(|l| !l.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("|");
        let last = framed.as_ref().map(|f| f.last).unwrap_or(true);
        (text, framed.map(|f| f.kind), last)
    }

    fn resp(status: u16, headers: &[(&'static str, &'static str)]) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in headers {
            r.headers_mut().append(*n, HeaderValue::from_static(v));
        }
        r
    }

    #[test]
    fn lengths_are_framed_as_hyper_frames_them() {
        let get = || Method::GET;
        let v11 = Version::HTTP_11;
        assert_eq!(
            encode(resp(200, &[("x", "1")]), Some(Some(11)), get(), v11, true),
            (
                "HTTP/1.1 200 OK|x: 1|content-length: 11|".into(),
                Ok(Framing::Length(11)),
                false
            )
        );
        assert_eq!(
            encode(resp(200, &[]), Some(None), get(), v11, true),
            (
                "HTTP/1.1 200 OK|transfer-encoding: chunked|".into(),
                Ok(Framing::Chunked),
                false
            )
        );
        assert_eq!(
            encode(resp(200, &[]), Some(None), get(), Version::HTTP_10, true),
            (
                "HTTP/1.0 200 OK|connection: keep-alive|".into(),
                Ok(Framing::Close),
                true
            )
        );
        assert_eq!(
            encode(resp(200, &[]), None, get(), v11, true),
            (
                "HTTP/1.1 200 OK|content-length: 0|".into(),
                Ok(Framing::Length(0)),
                false
            )
        );
        assert_eq!(
            encode(resp(200, &[]), Some(Some(5)), Method::HEAD, v11, true),
            (
                "HTTP/1.1 200 OK|content-length: 5|".into(),
                Ok(Framing::Length(0)),
                false
            )
        );
        assert_eq!(
            encode(resp(200, &[]), None, Method::HEAD, v11, true),
            ("HTTP/1.1 200 OK|".into(), Ok(Framing::Length(0)), false)
        );
        assert_eq!(
            encode(resp(204, &[]), Some(Some(5)), get(), v11, true),
            (
                "HTTP/1.1 204 No Content|".into(),
                Ok(Framing::Length(0)),
                false
            )
        );
        assert_eq!(
            encode(resp(304, &[]), None, get(), v11, true),
            (
                "HTTP/1.1 304 Not Modified|".into(),
                Ok(Framing::Length(0)),
                false
            )
        );
    }

    #[test]
    fn user_framing_headers_are_honoured_or_refused() {
        let get = || Method::GET;
        let v11 = Version::HTTP_11;
        assert_eq!(
            encode(
                resp(200, &[("transfer-encoding", "gzip")]),
                Some(None),
                get(),
                v11,
                true
            ),
            (
                "HTTP/1.1 200 OK|transfer-encoding: gzip, chunked|".into(),
                Ok(Framing::Chunked),
                false
            )
        );
        assert_eq!(
            encode(
                resp(200, &[("content-length", "7")]),
                Some(None),
                get(),
                v11,
                true
            ),
            (
                "HTTP/1.1 200 OK|content-length: 7|".into(),
                Ok(Framing::Length(7)),
                false
            )
        );
        assert!(encode(
            resp(200, &[("content-length", "x")]),
            Some(None),
            get(),
            v11,
            true
        )
        .1
        .is_err());
        assert!(encode(
            resp(200, &[("content-length", "1"), ("content-length", "2")]),
            Some(None),
            get(),
            v11,
            true
        )
        .1
        .is_err());
        assert_eq!(
            encode(
                resp(200, &[("connection", "close")]),
                Some(Some(0)),
                get(),
                v11,
                true
            ),
            (
                "HTTP/1.1 200 OK|connection: close|content-length: 0|".into(),
                Ok(Framing::Length(0)),
                true
            )
        );
        assert_eq!(
            encode(resp(404, &[]), Some(Some(2)), get(), v11, false),
            (
                "HTTP/1.1 404 Not Found|connection: close|content-length: 2|".into(),
                Ok(Framing::Length(2)),
                true
            )
        );
    }

    #[test]
    fn chunk_sizes_are_hexadecimal() {
        for (n, hex) in [(0, "0"), (9, "9"), (10, "A"), (255, "FF"), (4096, "1000")] {
            let mut out = Vec::new();
            push_hex(&mut out, n);
            assert_eq!(out, hex.as_bytes());
        }
    }

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
        let input = b"GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\nPOST /4 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
        client.write_all(input).await.unwrap();
        let timeouts = Timeouts {
            header_read: Duration::from_secs(5),
            first_request_grace: Duration::from_secs(1),
        };
        let service = hyper::service::service_fn(answer);
        let outcome = serve(&mut server, &service, timeouts, stop).await;
        let Outcome::Handoff(rest) = outcome else {
            panic!("expected a handoff");
        };
        assert_eq!(
            &rest[..],
            b"POST /4 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
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

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_header_read_timeout() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let (_stop_tx, stop) = watch::channel(false);
        let timeouts = Timeouts {
            header_read: Duration::from_secs(3),
            first_request_grace: Duration::from_secs(1),
        };
        let start = Instant::now();
        let service = hyper::service::service_fn(answer);
        assert!(matches!(
            serve(&mut server, &service, timeouts, stop).await,
            Outcome::Closed
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stop_closes_an_idle_connection_and_gives_a_new_one_its_grace() {
        let timeouts = Timeouts {
            header_read: Duration::from_secs(30),
            first_request_grace: Duration::from_secs(1),
        };
        let service = hyper::service::service_fn(answer);
        // Served once, then idle: closes as the stop comes.
        let (mut client, mut server) = tokio::io::duplex(1024);
        let (stop_tx, stop) = watch::channel(false);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let stopper = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop_tx.send(true).unwrap();
        };
        let start = Instant::now();
        let (outcome, ()) = tokio::join!(serve(&mut server, &service, timeouts, stop), stopper);
        assert!(matches!(outcome, Outcome::Closed));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        // Never sent a request, stop already under way: the grace, then closed.
        let (_client, mut server) = tokio::io::duplex(1024);
        let (_stop_tx, stop) = watch::channel(true);
        let start = Instant::now();
        assert!(matches!(
            serve(&mut server, &service, timeouts, stop).await,
            Outcome::Closed
        ));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
