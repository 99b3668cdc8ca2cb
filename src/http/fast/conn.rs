//! A fast-path connection's buffers: room for the next read, responses gathered and written
//! with their bodies, closing, and handing the connection to hyper.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, CONTENT_ENCODING};
use http::{Method, Response, Version};
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tracing::debug;

use super::buffers;
use super::encode::{encode_bad_request, encode_head, push_hex, write_trailers, Framing};
use super::parse::{recycle, MAX_HEAD};
use super::{poll_once, Outcome};
use crate::error::BoxError;
use crate::files::FileRegion;

/// Response bytes gathered before they are written even if more pipelined responses follow.
const WRITE_HIGH: usize = 64 * 1024;
/// Body chunks at least this long are written from their own buffer, not copied.
pub(super) const WRITE_DIRECT: usize = 16 * 1024;

/// The stack buffer an idle connection reads into: the size of a first read (most request
/// heads fit).
const IDLE_READ: usize = super::READ_INIT;

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(super) struct Conn<'a, I> {
    pub(super) io: &'a mut I,
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: Vec<u8>,
    pub(super) next_read: usize,
    /// How many times gathered bytes were written out.
    pub(super) flushes: u64,
}

impl<'a, I: AsyncRead + AsyncWrite + Unpin + 'static> Conn<'a, I> {
    /// A connection on `io`, with buffers from the worker's spares.
    pub(super) fn new(io: &'a mut I, first_read: usize) -> Self {
        buffers::opened();
        let (rbuf, wbuf) = buffers::take();
        Conn {
            io,
            rbuf,
            wbuf,
            next_read: first_read,
            flushes: 0,
        }
    }

    /// Reads what has arrived into the read buffer. In a worker that holds many connections
    /// (see `buffers.rs`), a connection with nothing buffered either way (a keep-alive
    /// connection between requests) first gives its buffers back to the worker's spares and
    /// reads into a buffer on the stack, taking them again only once bytes arrive: so a
    /// connection that waits idle holds no buffer, and one that is busy makes the same system
    /// calls as before.
    pub(super) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.is_empty() && self.wbuf.is_empty() && buffers::crowded() {
            // (Buffers already given back are empty ones, which `give` drops.)
            buffers::give(
                std::mem::take(&mut self.rbuf),
                std::mem::take(&mut self.wbuf),
            );
            let mut stack = [MaybeUninit::<u8>::uninit(); IDLE_READ];
            let mut buf = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut *self.io).poll_read(cx, &mut buf))?;
            let read = buf.filled();
            (self.rbuf, self.wbuf) = buffers::take();
            self.rbuf.reserve(self.next_read.max(read.len()));
            self.rbuf.extend_from_slice(read);
            return Poll::Ready(Ok(read.len()));
        }
        self.reserve();
        let len = self.rbuf.len();
        let mut buf = ReadBuf::uninit(self.rbuf.spare_capacity_mut());
        ready!(Pin::new(&mut *self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        // SAFETY: the reader initialised the `n` bytes it filled, right after the buffer's
        // `len` bytes.
        unsafe { self.rbuf.set_len(len + n) };
        Poll::Ready(Ok(n))
    }

    /// Makes room for the next read: at least a quarter of `next_read`, doubling it while
    /// reads fill the buffer.
    pub(super) fn reserve(&mut self) {
        let spare = self.rbuf.capacity() - self.rbuf.len();
        if spare == 0 && self.rbuf.capacity() > 0 {
            self.next_read = (self.next_read * 2).min(MAX_HEAD);
        }
        if spare < self.next_read / 4 {
            self.rbuf.reserve(self.next_read);
        }
    }

    pub(super) async fn write_out(&mut self) -> io::Result<()> {
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
    pub(super) async fn close(&mut self) -> Outcome {
        if self.write_out().await.is_ok() {
            let _ = self.io.shutdown().await;
        }
        Outcome::Closed
    }

    /// Answers a head no server should take as hyper answers a malformed head, after the
    /// answers gathered, and closes. `last` is the version of the request before it.
    pub(super) async fn bad_request(&mut self, last: Version) -> Outcome {
        encode_bad_request(last, &mut self.wbuf);
        self.close().await
    }

    /// Sends what is gathered and gives hyper `head` (a head taken out of the buffer, or
    /// nothing) followed by the unread rest of the buffer.
    /// `served` requests came before: such a connection speaks HTTP/1 and cannot turn to
    /// HTTP/2, so an HTTP/2 preface closes it (as hyper's HTTP/1 side does), where hyper's
    /// version sniffing would take it.
    pub(super) async fn handoff(&mut self, head: Bytes, served: u64) -> Outcome {
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
    pub(super) async fn write_response<B>(
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
        let region = parts.extensions.remove::<FileRegion>();
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
        // A file is sent by the server itself only as it is, not encoded.
        let region = region.filter(|_| !parts.headers.contains_key(CONTENT_ENCODING));
        recycle(&mut parts.headers);
        match framing.kind {
            Framing::Length(0) => {}
            kind => {
                let body = pin!(body);
                let trailers = if trailers_allowed {
                    framing.trailers
                } else {
                    None
                };
                let written = match (kind, region) {
                    // A file: the server sends it by itself (see `sendfile.rs`).
                    (Framing::Length(n), Some(FileRegion(region)))
                        if region.remaining() == n && body.size_hint().exact() == Some(n) =>
                    {
                        self.write_region(&region, n, body).await?
                    }
                    _ => self.write_body(body, kind, trailers).await?,
                };
                match written {
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
    pub(super) async fn write_body<B>(
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
pub(super) enum BodyEnd {
    Complete,
    /// It ended before its Content-Length: the connection closes.
    Short,
    /// It failed: the connection closes, and what of it was not sent yet is not.
    Failed,
}

impl<I> Drop for Conn<'_, I> {
    fn drop(&mut self) {
        buffers::closed();
        buffers::give(
            std::mem::take(&mut self.rbuf),
            std::mem::take(&mut self.wbuf),
        );
    }
}
