//! HTTP/2 connections: the guard against PING and SETTINGS floods, and the GOAWAY a bad
//! preface gets when ALPN chose h2.
//!
//! The h2 crate answers every PING and SETTINGS frame before it reads the next frame, and
//! stops reading while it cannot write the answer. A client that sends those frames in a
//! tight loop and never reads fills the socket buffers both ways (about a second on
//! loopback), and then holds its connection, its fd and hyper's state for ever: nothing in
//! h2 or hyper times out a connection whose writes are blocked. nginx and Go's HTTP/2 server
//! count the control frames they owe the peer but cannot send, and close past a limit
//! (10,000 queued frames); h2 gives no such count, so [`FloodGuard`] keeps it beneath h2:
//!
//! - it follows the frame boundaries both ways (9-byte headers; payloads are skipped) and
//!   counts the answers owed: non-ACK PING and SETTINGS frames received, less the PING and
//!   SETTINGS ACKs handed to the socket;
//! - while a write is blocked it keeps reading on h2's behalf, up to [`READ_AHEAD`] bytes
//!   held for h2 to read later, so a peer that keeps sending is still counted;
//! - while a write is blocked, a backlog of more than [`FLOOD_LIMIT`] answers that has not
//!   cleared within [`FLOOD_GRACE`] is a flood (answers come in faster than they go out), and
//!   so is an answer owed with no write progress for [`STALL_LIMIT`] (a peer that filled the
//!   buffers and stopped, or one whose frames are too large to count many).
//!
//! Time, not the count alone, is the verdict: a client that pipelines many PINGs but reads
//! the answers owes many for a moment only. And a backlog stays one until it has cleared:
//! a flooding peer's receive window still opens by a few KiB now and then, enough for h2 to
//! answer a thousand PINGs at once, never enough to catch up.
//! On a flood the guard writes a GOAWAY with ENHANCE_YOUR_CALM if the socket takes it at a
//! frame boundary (it rarely can: the peer is not reading) and fails h2's I/O, so hyper drops
//! the connection and the socket closes. Legitimate clients owe nothing for long: browsers,
//! h2load and gRPC send a few PINGs and SETTINGS and read their ACKs.
//!
//! On TCP, a connection that owes more than [`FLOOD_LIMIT`] answers also gets
//! TCP_NOTSENT_LOWAT ([`UNSENT_LIMIT`]): Linux grows a socket's send buffer towards
//! `tcp_wmem`'s maximum (4 MiB) whatever the peer reads, so a flood's answers used to fill
//! megabytes of it (a quarter of a million PING ACKs, 1 to 5 s of a loaded debug-build
//! worker) before a write blocked and the clock could start. Only suspects get it: on every
//! HTTP/2 connection it cost 1.5 to 2 times the CPU for 10 MB responses over loopback TLS
//! (the worker refills the socket in 128 KiB steps).
//!
//! Where the guard is not on the preface's path it costs a branch per read and write: it
//! watches the first 24 bytes, and turns itself off if they are not the HTTP/2 preface (an
//! HTTP/1 connection of hyper-util's auto builder).

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::debug;

/// The client connection preface (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Answers owed (PING and SETTINGS ACKs) beyond which the backlog must clear within
/// [`FLOOD_GRACE`]. Clients have a few outstanding at most; a flood reaches this within
/// [`READ_AHEAD`] bytes of 17-byte PINGs (963) or 9-byte SETTINGS (1,820).
pub(super) const FLOOD_LIMIT: u32 = 100;

/// How long a backlog of more than [`FLOOD_LIMIT`] answers may take to clear. Writes that
/// trickle out as the peer's receive window opens a little do not reset it.
pub(super) const FLOOD_GRACE: Duration = Duration::from_millis(500);

/// The most the guard reads on h2's behalf while a write is blocked.
pub(super) const READ_AHEAD: usize = 16 * 1024;

/// The most unsent bytes the kernel queues for a connection that owes more than
/// [`FLOOD_LIMIT`] answers (TCP_NOTSENT_LOWAT; the bytes in flight are not counted).
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
pub(super) const UNSENT_LIMIT: u32 = 128 * 1024;

/// How long an answer may stay owed with no write progress. Longer than a TCP retransmission
/// stall of a lossy but live link (1 s, then 2 s), short enough that a peer that filled the
/// buffers and stopped does not hold the connection.
pub(super) const STALL_LIMIT: Duration = Duration::from_secs(4);

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

const PROTOCOL_ERROR: u32 = 0x1;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A frame header: type, flags and stream id (the length only matters to [`Frames`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    kind: u8,
    flags: u8,
    stream: u32,
}

/// Follows the frame boundaries of one direction of an HTTP/2 connection.
#[derive(Debug, Default)]
struct Frames {
    /// The current frame header's bytes seen so far.
    head: [u8; 9],
    have: u8,
    /// Payload bytes of the current frame still to pass.
    skip: u32,
}

impl Frames {
    /// Follows `bytes`, the next bytes of the stream, calling `seen` with each complete header.
    fn feed(&mut self, mut bytes: &[u8], mut seen: impl FnMut(Header)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                self.skip -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let have = usize::from(self.have);
            let n = bytes.len().min(9 - have);
            self.head[have..have + n].copy_from_slice(&bytes[..n]);
            self.have += n as u8;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = &self.head;
                self.have = 0;
                self.skip = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                seen(Header {
                    kind: h[3],
                    flags: h[4],
                    stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                });
            }
        }
    }

    /// Whether the stream is between two frames.
    fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }
}

/// What the guard knows of the connection's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Comparing the first bytes with the preface; `expected` when ALPN chose h2, so that
    /// anything else is a connection error (otherwise it is HTTP/1, and the guard turns off).
    Preface { seen: u8, expected: bool },
    /// HTTP/2: counting.
    On,
    /// Not HTTP/2, or flooded: nothing to do.
    Off,
}

/// The I/O of a connection hyper may serve as HTTP/2; see the module doc.
#[derive(Debug)]
pub(super) struct FloodGuard<I> {
    io: I,
    /// The TCP socket under `io`, if it is one, until it gets [`UNSENT_LIMIT`].
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    tcp: Option<RawFd>,
    mode: Mode,
    inbound: Frames,
    outbound: Frames,
    /// PING and SETTINGS ACKs owed to the peer, since when some are, and since when more than
    /// [`FLOOD_LIMIT`] were (until the peer has every answer: a flood whose backlog drains
    /// in bursts, as the peer's receive window opens a little, stays one).
    owed: u32,
    owed_since: Option<Instant>,
    over_since: Option<Instant>,
    /// The highest stream a HEADERS frame of the peer opened: the GOAWAY's last stream.
    last_stream: u32,
    /// Read while writes were blocked, not yet read by h2 (from `ahead_at`).
    ahead: Vec<u8>,
    ahead_at: usize,
    ahead_eof: bool,
    /// Since when writes have made no progress, and the timer for [`STALL_LIMIT`].
    blocked_since: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    flooded: bool,
}

impl<I> FloodGuard<I> {
    /// Guards `io` if it starts with the HTTP/2 preface; `h2` when ALPN chose h2, so that a
    /// bad preface gets a GOAWAY. `tcp` is the socket under `io` if it is a TCP one: it stays
    /// open as long as `io`.
    pub(super) fn new(io: I, h2: bool, tcp: Option<RawFd>) -> FloodGuard<I> {
        FloodGuard {
            io,
            tcp,
            mode: Mode::Preface {
                seen: 0,
                expected: h2,
            },
            inbound: Frames::default(),
            outbound: Frames::default(),
            owed: 0,
            owed_since: None,
            over_since: None,
            last_stream: 0,
            ahead: Vec::new(),
            ahead_at: 0,
            ahead_eof: false,
            blocked_since: None,
            timer: None,
            flooded: false,
        }
    }

    /// Follows bytes received. Returns true if they break the preface ALPN promised.
    fn received(&mut self, mut bytes: &[u8]) -> bool {
        if let Mode::Preface { seen, expected } = self.mode {
            let seen = usize::from(seen);
            let n = bytes.len().min(PREFACE.len() - seen);
            if bytes[..n] != PREFACE[seen..seen + n] {
                self.mode = Mode::Off;
                return expected;
            }
            bytes = &bytes[n..];
            self.mode = if seen + n == PREFACE.len() {
                Mode::On
            } else {
                Mode::Preface {
                    seen: (seen + n) as u8,
                    expected,
                }
            };
        }
        if self.mode != Mode::On {
            return false;
        }
        let (mut owed, mut last_stream) = (self.owed, self.last_stream);
        self.inbound.feed(bytes, |h| match h.kind {
            PING | SETTINGS if h.flags & ACK == 0 => owed = owed.saturating_add(1),
            HEADERS => last_stream = last_stream.max(h.stream),
            _ => {}
        });
        if self.owed == 0 && owed > 0 {
            self.owed_since = Some(Instant::now());
        }
        if self.owed <= FLOOD_LIMIT && owed > FLOOD_LIMIT {
            self.over_since = Some(Instant::now());
            self.limit_unsent();
        }
        (self.owed, self.last_stream) = (owed, last_stream);
        false
    }

    /// Follows bytes handed to the socket.
    fn sent(&mut self, bytes: &[u8]) {
        // h2 writes its SETTINGS before it reads the preface.
        if matches!(self.mode, Mode::Off) || bytes.is_empty() {
            return;
        }
        let mut owed = self.owed;
        self.outbound.feed(bytes, |h| {
            if matches!(h.kind, PING | SETTINGS) && h.flags & ACK != 0 {
                owed = owed.saturating_sub(1);
            }
        });
        self.owed = owed;
        if owed == 0 {
            self.owed_since = None;
            self.over_since = None;
        }
        self.blocked_since = None;
    }

    /// Sets [`UNSENT_LIMIT`] on the TCP socket, once (Linux); a failure leaves the default.
    fn limit_unsent(&mut self) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(fd) = self.tcp.take() {
            // SAFETY: `fd` is the socket under `self.io`, which is open while `self` lives.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            if let Err(e) = socket2::SockRef::from(&fd).set_tcp_notsent_lowat(UNSENT_LIMIT) {
                debug!("cannot set TCP_NOTSENT_LOWAT: {e}");
            }
        }
    }

    fn flood_error(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "HTTP/2 flood: PING or SETTINGS frames the peer does not read the answers to",
        )
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> FloodGuard<I> {
    /// A write is blocked: reads ahead, and decides whether the peer floods.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.mode != Mode::On {
            return Poll::Pending;
        }
        let now = Instant::now();
        let since = *self.blocked_since.get_or_insert(now);
        if let Err(e) = self.read_ahead(cx) {
            return Poll::Ready(Err(e));
        }
        // The sooner of the two limits that apply.
        let stall = self
            .owed_since
            .map(|t| (t.max(since) + STALL_LIMIT, "STALL_LIMIT"));
        let flood = self.over_since.map(|t| (t + FLOOD_GRACE, "FLOOD_GRACE"));
        let Some((deadline, limit)) = stall.into_iter().chain(flood).min() else {
            return Poll::Pending;
        };
        if now >= deadline {
            return self.flood(cx, limit);
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_ready() {
            return self.flood(cx, limit);
        }
        Poll::Pending
    }

    /// Reads what the peer sends while h2 cannot, up to [`READ_AHEAD`] bytes, counting it.
    fn read_ahead(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while !self.ahead_eof && self.ahead.len() < READ_AHEAD {
            let start = self.ahead.len();
            self.ahead.resize(READ_AHEAD, 0);
            let mut buf = ReadBuf::new(&mut self.ahead[start..]);
            let polled = Pin::new(&mut self.io).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            self.ahead.truncate(start + n);
            match polled {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) if n == 0 => self.ahead_eof = true,
                Poll::Ready(Ok(())) => {
                    let ahead = std::mem::take(&mut self.ahead);
                    self.received(&ahead[start..]);
                    self.ahead = ahead;
                }
            }
        }
        Ok(())
    }

    /// Ends a flooding connection: a GOAWAY if the socket takes it, then an error for h2.
    fn flood<T>(&mut self, cx: &mut Context<'_>, limit: &str) -> Poll<io::Result<T>> {
        debug!(
            "HTTP/2 flood: {} PING or SETTINGS ACKs owed past {limit}: closing with \
             ENHANCE_YOUR_CALM",
            self.owed
        );
        self.flooded = true;
        if self.outbound.at_boundary() {
            self.try_goaway(cx, ENHANCE_YOUR_CALM);
        }
        self.mode = Mode::Off;
        self.ahead = Vec::new();
        self.timer = None;
        Poll::Ready(Err(self.flood_error()))
    }

    /// Writes a GOAWAY if the socket takes it now, whole or in part: the connection closes next.
    fn try_goaway(&mut self, cx: &mut Context<'_>, code: u32) {
        let frame = goaway(self.last_stream, code);
        if let Poll::Ready(Ok(n)) = Pin::new(&mut self.io).poll_write(cx, &frame) {
            self.sent(&frame[..n]);
            let _ = Pin::new(&mut self.io).poll_flush(cx);
        }
    }
}

/// A GOAWAY frame with `last_stream` and the error `code`.
fn goaway(last_stream: u32, code: u32) -> [u8; 17] {
    let mut frame = [0u8; 17];
    frame[..9].copy_from_slice(&[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
    frame[9..13].copy_from_slice(&last_stream.to_be_bytes());
    frame[13..].copy_from_slice(&code.to_be_bytes());
    frame
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for FloodGuard<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flooded {
            return Poll::Ready(Err(this.flood_error()));
        }
        if this.ahead_at < this.ahead.len() {
            let n = buf.remaining().min(this.ahead.len() - this.ahead_at);
            buf.put_slice(&this.ahead[this.ahead_at..this.ahead_at + n]);
            this.ahead_at += n;
            if this.ahead_at == this.ahead.len() {
                // Held only while a write is blocked: give the memory back.
                this.ahead = Vec::new();
                this.ahead_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if this.ahead_eof {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.mode != Mode::Off && this.received(&buf.filled()[before..]) {
            // RFC 9113, 3.4 and 5.4.1: a bad preface is a connection error, announced by a
            // GOAWAY. h2 fails on the same bytes and closes; it writes no GOAWAY itself.
            debug!("ALPN chose h2 but the client sent no HTTP/2 preface");
            if this.outbound.at_boundary() {
                this.try_goaway(cx, PROTOCOL_ERROR);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for FloodGuard<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.flooded {
            return Poll::Ready(Err(this.flood_error()));
        }
        match Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.sent(&buf[..n]);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.blocked(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.flooded {
            return Poll::Ready(Err(this.flood_error()));
        }
        match Pin::new(&mut this.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                let mut left = n;
                for b in bufs {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(b.len());
                    this.sent(&b[..take]);
                    left -= take;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.blocked(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.flooded {
            return Poll::Ready(Err(this.flood_error()));
        }
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                // Everything written reached the socket (TLS buffers included).
                this.blocked_since = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.blocked(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, flags]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    fn ping() -> Vec<u8> {
        frame(PING, 0, 0, b"12345678")
    }

    fn settings() -> Vec<u8> {
        frame(SETTINGS, 0, 0, b"")
    }

    /// GET / on stream 1, from HPACK's static table (and a literal authority).
    fn get() -> Vec<u8> {
        frame(HEADERS, 0x5, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'])
    }

    /// Every frame in `bytes`: type, flags, stream, payload.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut all = Vec::new();
        while bytes.len() >= 9 {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            let end = (9 + len).min(bytes.len());
            all.push((bytes[3], bytes[4], stream, bytes[9..end].to_vec()));
            bytes = &bytes[end..];
        }
        all
    }

    /// hyper's HTTP/2 server on `io` behind the guard, answering 200 to everything.
    async fn serve(io: DuplexStream, h2: bool) -> Result<(), hyper::Error> {
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            ))
        });
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(FloodGuard::new(io, h2, None)), service)
            .await
    }

    /// Writes `opening`, then `each` until the server closes, never reading.
    async fn flood(client: DuplexStream, opening: Vec<u8>, each: Vec<u8>) {
        let (_unread, mut w) = tokio::io::split(client);
        let batch = each.repeat(64);
        if w.write_all(&opening).await.is_ok() {
            while w.write_all(&batch).await.is_ok() {}
        }
    }

    #[test]
    fn frame_boundaries_are_followed_across_any_split() {
        let mut bytes = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
        bytes.extend(frame(HEADERS, 0x5, 7, b"abc"));
        bytes.extend(frame(PING, ACK, 0, b"12345678"));
        let expected =
            [(SETTINGS, 0, 0), (HEADERS, 0x5, 7), (PING, ACK, 0)].map(|(kind, flags, stream)| {
                Header {
                    kind,
                    flags,
                    stream,
                }
            });
        for size in 1..=bytes.len() {
            let mut f = Frames::default();
            let mut seen = Vec::new();
            for chunk in bytes.chunks(size) {
                f.feed(chunk, |h| seen.push(h));
            }
            assert_eq!(seen, expected, "chunks of {size}");
            assert!(f.at_boundary());
        }
    }

    #[test]
    fn answers_owed_count_pings_and_settings_less_their_acks() {
        let mut g = FloodGuard::new((), false, None);
        let mut input = PREFACE.to_vec();
        input.extend(settings());
        input.extend(ping());
        input.extend(ping());
        input.extend(frame(PING, ACK, 0, b"12345678"));
        input.extend(get());
        for chunk in input.chunks(5) {
            assert!(!g.received(chunk));
        }
        assert_eq!((g.mode, g.owed, g.last_stream), (Mode::On, 3, 1));
        assert!(g.owed_since.is_some());
        // The server's own SETTINGS is no answer; ACKs are.
        g.sent(&frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        assert_eq!(g.owed, 3);
        g.sent(&frame(SETTINGS, ACK, 0, b""));
        g.sent(&frame(PING, ACK, 0, b"12345678")[..10]);
        assert_eq!(g.owed, 1);
        g.sent(&frame(PING, ACK, 0, b"12345678")[10..]);
        g.sent(&frame(PING, ACK, 0, b"12345678"));
        assert_eq!(g.owed, 0);
        assert!(g.owed_since.is_none());
    }

    #[test]
    fn http1_turns_the_guard_off_and_a_bad_preface_after_alpn_h2_is_noticed() {
        let mut g = FloodGuard::new((), false, None);
        assert!(!g.received(b"GET / HTTP/1.1\r\n"));
        assert_eq!(g.mode, Mode::Off);
        let mut g = FloodGuard::new((), true, None);
        assert!(!g.received(&PREFACE[..14]));
        assert!(g.received(b"\r\n\r\nXX"));
        assert_eq!(g.mode, Mode::Off);
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn a_backlog_of_answers_limits_the_unsent_bytes_of_the_socket() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let lowat = |input: &[u8]| {
            let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let mut g = FloodGuard::new((), false, Some(tcp.as_raw_fd()));
            g.received(input);
            socket2::SockRef::from(&tcp).tcp_notsent_lowat().unwrap()
        };
        let mut flood = PREFACE.to_vec();
        flood.extend(settings());
        let quiet = lowat(&flood);
        assert_ne!(quiet, UNSENT_LIMIT);
        flood.extend(ping().repeat(FLOOD_LIMIT as usize));
        assert_eq!(lowat(&flood), UNSENT_LIMIT);
        let mut http1 = b"GET / HTTP/1.1\r\n\r\n".to_vec();
        http1.extend(ping().repeat(200));
        assert_eq!(lowat(&http1), quiet);
    }

    #[tokio::test(start_paused = true)]
    async fn ping_and_settings_floods_are_cut_off_by_the_count() {
        for each in [ping(), settings()] {
            let (client, server) = tokio::io::duplex(4096);
            let mut opening = PREFACE.to_vec();
            opening.extend(settings());
            let client = tokio::spawn(flood(client, opening, each));
            let start = Instant::now();
            let err = serve(server, true).await.unwrap_err();
            assert!(format!("{err:?}").contains("HTTP/2 flood"), "{err:?}");
            // The count, not the stall limit, ended it.
            let took = start.elapsed();
            assert!(took >= FLOOD_GRACE && took < STALL_LIMIT, "{took:?}");
            client.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_unread_is_cut_off_after_the_stall_limit() {
        let (mut client, server) = tokio::io::duplex(256);
        let mut opening = PREFACE.to_vec();
        opening.extend(settings());
        opening.extend(ping().repeat(40));
        let start = Instant::now();
        let writer = async {
            client.write_all(&opening).await.unwrap();
            // Holds the connection, reads nothing.
            std::future::pending::<()>().await
        };
        let err = tokio::select! {
            ended = serve(server, true) => ended.unwrap_err(),
            _ = writer => unreachable!(),
        };
        assert!(format!("{err:?}").contains("HTTP/2 flood"), "{err:?}");
        let took = start.elapsed();
        assert!(took >= STALL_LIMIT && took < STALL_LIMIT * 2, "{took:?}");
    }

    #[tokio::test]
    async fn a_client_that_reads_its_answers_may_ping_at_will() {
        let (client, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(serve(server, true));
        let (mut r, mut w) = tokio::io::split(client);
        const PINGS: usize = 5000;
        let writer = tokio::spawn(async move {
            let mut opening = PREFACE.to_vec();
            opening.extend(settings());
            w.write_all(&opening).await.unwrap();
            for _ in 0..PINGS / 50 {
                w.write_all(&ping().repeat(50)).await.unwrap();
            }
            w.write_all(&get()).await.unwrap();
            w
        });
        let mut seen = Frames::default();
        let (mut acks, mut answered) = (0, false);
        let mut buf = vec![0u8; 8192];
        while !(answered && acks == PINGS) {
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {acks} PING ACKs");
            seen.feed(&buf[..n], |h| match h.kind {
                PING if h.flags & ACK != 0 => acks += 1,
                HEADERS if h.stream == 1 => answered = true,
                _ => {}
            });
        }
        drop(writer.await.unwrap());
        drop(r);
        let _ = server.await.unwrap();
    }

    #[tokio::test]
    async fn a_bad_preface_after_alpn_h2_gets_a_goaway_protocol_error() {
        let (mut client, server) = tokio::io::duplex(4096);
        let server = tokio::spawn(serve(server, true));
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        let got = frames(&answer);
        assert_eq!(got.first().map(|f| f.0), Some(SETTINGS), "{got:?}");
        let goaway = got.iter().find(|f| f.0 == GOAWAY).expect("a GOAWAY");
        assert_eq!(goaway.3, [0, 0, 0, 0, 0, 0, 0, PROTOCOL_ERROR as u8]);
        assert!(server.await.unwrap().is_err());
    }
}
