//! Screening the request heads hyper reads: [`Screened`] wraps the connection hyper serves
//! (all of it with `--no-fast-path`, the rest of it after the fast path's hand-off) and holds
//! each head to the rules the fast path applies, so that both answer alike.
//!
//! hyper-util's auto builder first reads 24 bytes to tell HTTP/1 from HTTP/2, and hyper then
//! parses a partial head again only once an end of head (an empty line) has arrived: a head
//! with a bad byte past the first read and no blank line after it got its 400 only at the
//! header-read timeout. hyper also takes a bare LF as a line end and does not check `Host`.
//! The screen follows the byte stream as hyper frames it (heads, `Content-Length` and chunked
//! bodies) and, when a head breaks a rule, makes hyper answer it as a malformed head at once:
//! it puts a NUL in place of the offending LF (or of the head's last byte, for the `Host`
//! rule), a byte httparse rejects there, and adds an empty line so that hyper parses again.
//! hyper then answers the requests before it, then its automatic 400, and closes: the same
//! bytes as the fast path's [`Parsed::Invalid`](super::Parsed::Invalid) answer.
//!
//! What the screen cannot frame exactly as hyper does (an upgrade or CONNECT, a head past
//! [`MAX_SCREENED`], more fields than hyper takes, a body hyper rejects, the HTTP/2 preface)
//! ends the screening for the rest of the connection, so a request it let through is never
//! changed: hyper's answer is then what it always was.
//!
//! The screen also makes hyper's head limit exact. hyper answers 431 when its buffer holds
//! [`MAX_HYPER_HEAD`] bytes of a head not yet complete, but it parses before it checks: a head
//! longer than the limit whose end came in the read that crossed it was served, so whether a
//! 450 KB head got 431 or 200 depended on how the bytes were cut by the network and by the
//! reads. The screen follows a long head to its end (as hyper finds it) and never lets a read
//! take hyper past the limit within a head: a head up to the limit is served, a longer one
//! gets 431, however it arrives.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tracing::debug;

use super::parse::{bare_lf, host_rule, BARE_LF, H2_START, MAX_HEAD};

/// The longest head the screen follows; a longer one and the rest of its connection are
/// hyper's alone (hyper takes about 400 KiB of head, and answers 431 beyond).
pub(crate) const MAX_SCREENED: usize = 64 * 1024;

/// hyper's limit on a request head (its `max_buf_size`, set to this in `conn.rs`: hyper's own
/// default): it answers 431 to a longer one.
pub(crate) const MAX_HYPER_HEAD: usize = 8192 + 4096 * 100;

/// hyper's limit on a request's header fields; it answers 431 beyond.
const HYPER_MAX_HEADERS: usize = 100;

/// What follows a rejected head: an end of head, so that hyper parses it again now.
const END_OF_HEAD: &[u8] = b"\r\n\r\n";

/// A connection for hyper whose request heads are screened; see the module doc.
///
/// It also bounds each head it follows by the header-read timeout from the head's first
/// byte: hyper's own timer runs from the moment it waits for a head, so forklift gives hyper
/// the (longer) keep-alive timeout and times the head itself here.
pub(crate) struct Screened<I> {
    io: I,
    screen: Screen,
    /// Bytes to hand hyper before reading more: what of [`END_OF_HEAD`] did not fit.
    inject: &'static [u8],
    header_read: Duration,
    /// Set while a head is partly read: when its header-read time runs out.
    head_timer: Option<Pin<Box<Sleep>>>,
}

impl<I> Screened<I> {
    /// Screens `io`, whose next byte starts a request head; a head must be complete within
    /// `header_read` of its first byte.
    pub(crate) fn new(io: I, header_read: Duration) -> Self {
        Screened {
            io,
            screen: Screen::default(),
            inject: &[],
            header_read,
            head_timer: None,
        }
    }

    /// Starts or ends the head's timer as the screen enters or leaves a head.
    fn time_head(&mut self) {
        match (&mut self.head_timer, self.screen.in_head()) {
            (None, true) => {
                self.head_timer = Some(Box::pin(tokio::time::sleep(self.header_read)));
            }
            (Some(_), false) => self.head_timer = None,
            _ => {}
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Screened<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.inject.is_empty() {
            let start = buf.filled().len();
            let polled = match this.screen.read_cap() {
                Some(cap) if cap < buf.remaining() => {
                    // A read that could take hyper past its head limit within a head is cut
                    // there (a cap of 0 is not asked for: hyper answers 431 at the limit).
                    let mut part = buf.take(cap);
                    let polled = Pin::new(&mut this.io).poll_read(cx, &mut part);
                    let n = part.filled().len();
                    // SAFETY: `part` is the start of `buf`'s unfilled bytes, and its first `n`
                    // bytes were filled by the read.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    if cap == 0 && polled.is_ready() {
                        // Not an end of stream: nothing may be read until hyper answers.
                        Poll::Pending
                    } else {
                        polled
                    }
                }
                _ => Pin::new(&mut this.io).poll_read(cx, buf),
            };
            if polled?.is_pending() {
                if let Some(timer) = &mut this.head_timer {
                    ready!(timer.as_mut().poll(cx));
                    debug!("no complete request head within the header-read timeout: closing");
                    return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
                }
                return Poll::Pending;
            }
            let read = &mut buf.filled_mut()[start..];
            let verdict = this.screen.feed(read);
            this.time_head();
            let Verdict::Reject { nul_at, why } = verdict else {
                return Poll::Ready(Ok(()));
            };
            debug!("{why}: hyper answers 400");
            if let Some(at) = nul_at {
                read[at] = 0;
            }
            this.inject = END_OF_HEAD;
        }
        let n = this.inject.len().min(buf.remaining());
        buf.put_slice(&this.inject[..n]);
        this.inject = &this.inject[n..];
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Screened<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What the screen makes of bytes read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// hyper may read them as they are.
    Pass,
    /// A head in them breaks a rule: the byte at `nul_at` (if any) becomes a NUL and an end
    /// of head follows, so that hyper answers 400 (an httparse error needs neither NUL nor
    /// more than the end of head). The screening ends.
    Reject {
        nul_at: Option<usize>,
        why: &'static str,
    },
}

/// Where in hyper's framing of the byte stream the screen is.
#[derive(Debug, Default)]
pub(crate) struct Screen {
    state: State,
    /// The current head's bytes so far.
    head: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a request head (or before one).
    #[default]
    Head,
    /// In a body of this many more bytes.
    Body(u64),
    /// In a chunked body.
    Chunked(Chunk),
    /// In a head past [`MAX_SCREENED`] bytes: `len` bytes so far, followed only to find its
    /// end as hyper does (`tail`: its last bytes) and to keep hyper within its limit. Its end
    /// turns the screening off.
    Long { len: usize, tail: [u8; 3] },
    /// Not screening: the rest of the connection is hyper's alone.
    Off,
}

/// hyper's chunked decoder, state for state (`proto/h1/decode.rs`): the screen must find the
/// end of a chunked body exactly where hyper does; where hyper would fail, it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Start,
    Size(u64),
    SizeLws(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

/// A complete head as hyper frames what follows it.
struct Framing {
    /// No line of it ends in a bare LF.
    crlf: bool,
    http11: bool,
    hosts: usize,
    /// Its body: `None` when hyper does not frame it as HTTP/1 (an upgrade, CONNECT) or
    /// rejects the request.
    next: Option<State>,
}

enum HeadStep {
    /// The head goes on past these bytes.
    More,
    /// The head ended this many bytes in; the state is what follows it.
    Done(usize),
    /// The head breaks a rule; `nul_at` is an index into these bytes.
    Reject {
        nul_at: Option<usize>,
        why: &'static str,
    },
    Off,
}

impl Screen {
    /// Follows `bytes`, the next bytes of the connection.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Verdict {
        let mut at = 0;
        while at < bytes.len() {
            match &mut self.state {
                State::Off => break,
                State::Body(left) | State::Chunked(Chunk::Data(left)) => {
                    let n = (*left).min((bytes.len() - at) as u64);
                    *left -= n;
                    at += n as usize;
                    if *left == 0 {
                        self.state = match self.state {
                            State::Body(_) => State::Head,
                            _ => State::Chunked(Chunk::DataCr),
                        };
                    }
                }
                State::Chunked(Chunk::EndLf) => {
                    self.state = if bytes[at] == b'\n' {
                        State::Head
                    } else {
                        State::Off
                    };
                    at += 1;
                }
                State::Chunked(chunk) => {
                    self.state = chunk.next(bytes[at]).map_or(State::Off, State::Chunked);
                    at += 1;
                }
                State::Long { len, tail } => {
                    let rest = &bytes[at..];
                    if hyper_end_of_head(*tail, rest) {
                        self.stop();
                        break;
                    }
                    *len += rest.len();
                    *tail = last_three(*tail, rest);
                    break;
                }
                State::Head => match self.head_step(&bytes[at..]) {
                    HeadStep::More => break,
                    HeadStep::Done(n) => at += n,
                    HeadStep::Reject { nul_at, why } => {
                        self.stop();
                        return Verdict::Reject {
                            nul_at: nul_at.map(|i| at + i),
                            why,
                        };
                    }
                    HeadStep::Off => self.stop(),
                },
            }
        }
        Verdict::Pass
    }

    /// Follows `input` read in pieces that end at `cuts` (ascending indices into it): whether
    /// the screen rejects a head in it, with where its NUL goes (an index into `input`) and
    /// why. For tests and the fuzz target.
    pub(crate) fn feed_reads(
        &mut self,
        input: &[u8],
        cuts: &[usize],
    ) -> Option<(Option<usize>, &'static str)> {
        let mut from = 0;
        for &to in cuts.iter().chain([&input.len()]) {
            let to = to.clamp(from, input.len());
            if let Verdict::Reject { nul_at, why } = self.feed(&input[from..to]) {
                return Some((nul_at.map(|i| from + i), why));
            }
            from = to;
        }
        None
    }

    /// Whether a head is partly read.
    pub(crate) fn in_head(&self) -> bool {
        match self.state {
            State::Head => !self.head.is_empty(),
            State::Long { .. } => true,
            _ => false,
        }
    }

    /// The most the next read may take: a head's bytes so far and the read's stay within
    /// [`MAX_HYPER_HEAD`]. `None` outside a head (a body, or screening off), where a read
    /// is hyper's buffer's size and a head in it starts after its first byte.
    pub(crate) fn read_cap(&self) -> Option<usize> {
        match self.state {
            State::Head => Some(MAX_HYPER_HEAD.saturating_sub(self.head.len())),
            State::Long { len, .. } => Some(MAX_HYPER_HEAD.saturating_sub(len)),
            _ => None,
        }
    }

    fn stop(&mut self) {
        self.state = State::Off;
        self.head = Vec::new();
    }

    /// Takes `new`, the next bytes of the current head (and maybe of what follows it).
    fn head_step(&mut self, new: &[u8]) -> HeadStep {
        let old = self.head.len();
        let prev = self.head.last().copied().unwrap_or(0);
        let (parsed, h2) = {
            // A head that comes in one read (most do) is parsed where it is.
            let head: &[u8] = if old == 0 {
                new
            } else {
                self.head.extend_from_slice(new);
                &self.head
            };
            // Past MAX_HEAD, parsing waits for an end of head, as hyper's does: only then
            // can the head be complete, and a bad byte waits for it too (a bare LF does not).
            let parsed = if old == 0 || head.len() <= MAX_HEAD || has_end_of_head(head, old) {
                parse(head)
            } else {
                Parse::Partial
            };
            let h2 = matches!(parsed, Parse::Error) && head.starts_with(H2_START);
            (parsed, h2)
        };
        match parsed {
            Parse::Partial => {
                if let Some(i) = bare_lf(new, prev) {
                    return HeadStep::Reject {
                        nul_at: Some(i),
                        why: BARE_LF,
                    };
                }
                if old == 0 {
                    self.head.extend_from_slice(new);
                }
                if self.head.len() > MAX_SCREENED {
                    debug!("a request head past {MAX_SCREENED} bytes: not screened");
                    let head = std::mem::take(&mut self.head);
                    self.state = State::Long {
                        len: head.len(),
                        tail: last_three([0; 3], &head),
                    };
                    return HeadStep::More;
                }
                HeadStep::More
            }
            Parse::TooManyFields => HeadStep::Off,
            Parse::Error if h2 => HeadStep::Off,
            Parse::Error => HeadStep::Reject {
                nul_at: None,
                why: "malformed request head",
            },
            Parse::Complete(len, framing) => {
                let Some(ends) = len.checked_sub(old).filter(|&n| n > 0) else {
                    // Not reached: the head was incomplete before these bytes.
                    return HeadStep::Off;
                };
                if !framing.crlf {
                    // The LF is in these bytes: the head's earlier bytes had none.
                    let Some(i) = bare_lf(&new[..ends], prev) else {
                        return HeadStep::Off;
                    };
                    return HeadStep::Reject {
                        nul_at: Some(i),
                        why: BARE_LF,
                    };
                }
                if let Some(why) = host_rule(framing.http11, framing.hosts) {
                    return HeadStep::Reject {
                        nul_at: Some(ends - 1),
                        why,
                    };
                }
                let Some(next) = framing.next else {
                    return HeadStep::Off;
                };
                self.state = next;
                self.head.clear();
                if self.head.capacity() > MAX_HEAD {
                    self.head = Vec::new();
                }
                HeadStep::Done(ends)
            }
        }
    }
}

/// Whether `new`, after a head's bytes ending in `tail`, ends the head as hyper finds an end
/// (`proto/h1/role.rs`, `is_complete_fast`: an LF then LF, or CR LF CR LF).
fn hyper_end_of_head(tail: [u8; 3], new: &[u8]) -> bool {
    let mut last = tail;
    for &b in new {
        let ended = match b {
            b'\n' => last[2] == b'\n' || last == *b"\r\n\r",
            _ => false,
        };
        if ended {
            return true;
        }
        last = [last[1], last[2], b];
    }
    false
}

/// The last three bytes of `tail` followed by `new`.
fn last_three(tail: [u8; 3], new: &[u8]) -> [u8; 3] {
    match *new {
        [.., a, b, c] => [a, b, c],
        [a, b] => [tail[2], a, b],
        [a] => [tail[1], tail[2], a],
        [] => tail,
    }
}

/// Whether the bytes of `head` from `from` on (with the two before) hold an end of head, an
/// LF followed by an empty line: a little more than hyper's rule ([`hyper_end_of_head`]
/// also wants the CR before a CRLF empty line), enough to know when parsing may complete.
fn has_end_of_head(head: &[u8], from: usize) -> bool {
    let tail = &head[from.saturating_sub(2)..];
    tail.windows(2).any(|w| w == b"\n\n") || tail.windows(3).any(|w| w == b"\n\r\n")
}

enum Parse {
    Partial,
    TooManyFields,
    Error,
    Complete(usize, Framing),
}

/// Parses a head as hyper does, and frames what follows it as hyper does
/// (`proto/h1/role.rs`, `Server::parse`).
fn parse(head: &[u8]) -> Parse {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HYPER_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(head, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parse::TooManyFields,
        Err(_) => return Parse::Error,
    };
    let http11 = req.version == Some(1);
    // As the fast path checks it: every LF in a head httparse took ends a line, so the byte
    // before each field's name, and the head's last four, tell a bare LF from a CRLF.
    let base = head.as_ptr() as usize;
    let skipped = req.method.map_or(0, |m| m.as_ptr() as usize - base);
    let mut crlf = head[..len].ends_with(b"\r\n\r\n") && bare_lf(&head[..skipped], 0).is_none();
    let mut hosts = 0;
    let mut length: Option<Option<u64>> = None;
    let mut chunked = false;
    let mut upgrade = req.method == Some("CONNECT");
    for h in req.headers.iter() {
        crlf &= head[h.name.as_ptr() as usize - base - 2] == b'\r';
        let is = |n: &str| h.name.eq_ignore_ascii_case(n);
        if is("host") {
            hosts += 1;
        } else if is("transfer-encoding") {
            chunked = true;
        } else if is("content-length") {
            let n = digits(h.value);
            length = match length {
                None => Some(n),
                Some(prev) if prev == n => Some(n),
                Some(_) => Some(None),
            };
        } else if is("upgrade") {
            upgrade = true;
        }
    }
    let next = if upgrade {
        None
    } else if chunked {
        // hyper takes a chunked body, or rejects the request (HTTP/1.0, or chunked not last).
        http11.then_some(State::Chunked(Chunk::Start))
    } else {
        match length {
            None | Some(Some(0)) => Some(State::Head),
            Some(Some(n)) => Some(State::Body(n)),
            // hyper rejects the request.
            Some(None) => None,
        }
    };
    Parse::Complete(
        len,
        Framing {
            crlf,
            http11,
            hosts,
            next,
        },
    )
}

/// A `Content-Length` value as hyper reads it: ASCII digits only.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| match b {
        b'0'..=b'9' => n.checked_mul(10)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

impl Chunk {
    /// The state after `b`; `None` where hyper fails.
    fn next(self, b: u8) -> Option<Chunk> {
        let hex = |b: u8| char::from(b).to_digit(16).map(u64::from);
        Some(match (self, b) {
            (Chunk::Start, b) => Chunk::Size(hex(b)?),
            (Chunk::Size(n), b) if hex(b).is_some() => {
                Chunk::Size(n.checked_mul(16)?.checked_add(hex(b)?)?)
            }
            (Chunk::Size(n) | Chunk::SizeLws(n), b'\t' | b' ') => Chunk::SizeLws(n),
            (Chunk::Size(n) | Chunk::SizeLws(n), b';') => Chunk::Extension(n),
            (Chunk::Size(n) | Chunk::SizeLws(n) | Chunk::Extension(n), b'\r') => Chunk::SizeLf(n),
            (Chunk::Extension(_), b'\n') => return None,
            (Chunk::Extension(n), _) => Chunk::Extension(n),
            (Chunk::SizeLf(0), b'\n') => Chunk::EndCr,
            (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Start,
            (Chunk::EndCr, b'\r') => Chunk::EndLf,
            (Chunk::Trailer, b'\r') => Chunk::TrailerLf,
            (Chunk::EndCr | Chunk::Trailer, _) => Chunk::Trailer,
            (Chunk::TrailerLf, b'\n') => Chunk::EndCr,
            // EndLf: the caller ends the body on an LF, or stops.
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_cut(input: &[u8], cuts: &[usize]) -> (Option<(Option<usize>, &'static str)>, Screen) {
        let mut screen = Screen::default();
        let verdict = screen.feed_reads(input, cuts);
        (verdict, screen)
    }

    /// The verdict on `input` whole, after checking that every way of cutting it in two, and
    /// byte by byte, gives the same (a bad byte httparse finds may be found a read later).
    fn verdict(input: &[u8]) -> Option<(Option<usize>, &'static str)> {
        let (whole, _) = feed_cut(input, &[]);
        let bytewise: Vec<usize> = (1..input.len()).collect();
        let splits = (1..input.len()).map(|i| vec![i]).chain([bytewise]);
        for cuts in splits {
            let (cut, _) = feed_cut(input, &cuts);
            assert_eq!(cut, whole, "{} cut at {cuts:?}", input.escape_ascii());
        }
        whole
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

    #[test]
    fn good_requests_pass_and_the_screen_finds_each_next_head() {
        for input in [
            GET.to_vec(),
            [GET, GET, b"\r\n", GET].concat(),
            [
                &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\nbody\nwith\rLF"[..],
                GET,
            ]
            .concat(),
            [
                &b"POST / HTTP/1.0\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n\n\n\n"[..],
                GET,
            ]
            .concat(),
            [
                &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                b"5\r\nhe\nlo\r\n1A ;ext=\"a\"\r\n",
                &[b'\n'; 26],
                b"\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n",
                GET,
            ]
            .concat(),
            [
                &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                    [..],
                GET,
            ]
            .concat(),
            b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".to_vec(),
            [
                &b"GET /"[..],
                &[b'a'; 20_000],
                b" HTTP/1.1\r\nHost: x\r\n\r\n",
                GET,
            ]
            .concat(),
        ] {
            let (verdict, screen) = feed_cut(&input, &[]);
            assert_eq!(verdict, None, "{}", input.escape_ascii());
            assert_eq!(screen.state, State::Head, "{}", input.escape_ascii());
            assert!(screen.head.is_empty());
            // Byte by byte (a long head in pieces of a few bytes: each read parses it again).
            let step = if input.len() > 4096 { 61 } else { 1 };
            let pieces: Vec<usize> = (step..input.len()).step_by(step).collect();
            let (verdict, screen) = feed_cut(&input, &pieces);
            assert_eq!(verdict, None, "{} in pieces", input.escape_ascii());
            assert_eq!(screen.state, State::Head);
        }
    }

    #[test]
    fn a_bare_lf_becomes_a_nul_wherever_the_reads_end() {
        for (input, lf) in [
            (&b"GET / HTTP/1.1\nHost: x\r\n\r\n"[..], 14),
            (b"GET / HTTP/1.1\r\nHost: x\n\r\n", 23),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\n", 25),
            (b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 0),
            (b"GET / HTTP/1.1\r\nHost: localhost\r\nDummy: x\nContent-Length: 23\r\n\r\nGET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n", 41),
            // In the next head, after a body and after a chunked body.
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\n\r\n", 50),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n\n\nGET / HTTP/1.1\n", 63),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n\n\r\n0\r\n\r\nGET / HTTP/1.1\n", 81),
        ] {
            assert_eq!(input[lf], b'\n');
            assert_eq!(verdict(input), Some((Some(lf), BARE_LF)), "{}", input.escape_ascii());
        }
    }

    #[test]
    fn a_head_that_breaks_the_host_rule_gets_a_nul_for_its_last_byte() {
        for input in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
        ] {
            let (nul, _) = verdict(input).expect("rejected");
            assert_eq!(nul, Some(input.len() - 1), "{}", input.escape_ascii());
        }
        let after_body = [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"GET / HTTP/1.1\r\n\r\n",
        ]
        .concat();
        assert_eq!(verdict(&after_body).unwrap().0, Some(after_body.len() - 1));
        assert_eq!(verdict(b"GET / HTTP/1.0\r\n\r\n"), None);
    }

    #[test]
    fn a_bad_byte_is_rejected_in_the_read_that_brings_it() {
        for (input, bad) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\rZ"[..], 26),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: example.com\r\n\x05\n", 65),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 20),
            (b"GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n", 24),
            (b"GET /\x00 HTTP/1.1\r\n", 5),
        ] {
            // Whole, the reads that end before the bad byte pass, the one with it does not.
            assert_eq!(verdict(input), Some((None, "malformed request head")));
            let mut screen = Screen::default();
            assert_eq!(screen.feed(&input[..bad]), Verdict::Pass, "{}", input.escape_ascii());
            assert!(
                matches!(screen.feed(&input[bad..]), Verdict::Reject { nul_at: None, .. }),
                "{}",
                input.escape_ascii()
            );
        }
    }

    #[test]
    fn what_hyper_does_not_frame_as_http1_ends_the_screening() {
        let bad = b"GET / HTTP/1.1\n\n";
        for head in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;a\nb\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
        ] {
            let (verdict, screen) = feed_cut(&[head, bad].concat(), &[head.len()]);
            assert_eq!(verdict, None, "{}", head.escape_ascii());
            assert_eq!(screen.state, State::Off, "{}", head.escape_ascii());
        }
        let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..HYPER_MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        assert_eq!(verdict(&[&many[..], bad].concat()), None);
        let long = [&b"GET / HTTP/1.1\r\nX: "[..], &[b'a'; MAX_SCREENED]].concat();
        assert_eq!(feed_cut(&[&long[..], bad].concat(), &[long.len()]).0, None);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn hyper_keeps_an_idle_connection_for_the_keep_alive_timeout_and_a_head_for_the_header_read_one(
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let timeouts = super::super::Timeouts {
            header_read: Duration::from_secs(3),
            keep_alive: Duration::from_secs(10),
            first_request_grace: Duration::from_secs(1),
        };
        let builder =
            crate::http::conn::conn_builder(hyper_util::rt::TokioExecutor::new(), &timeouts);
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"ok"),
            )))
        });
        // (idle seconds before a late partial head, or none; when the connection ends): an
        // idle one at the keep-alive timeout plus the header-read one, a late head at the
        // header-read timeout from its first byte.
        for (late_head, ends_at) in [(None, 13), (Some(8), 11)] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let start = tokio::time::Instant::now();
            let conn = builder.serve(
                Screened::new(server, timeouts.header_read),
                service,
                crate::http::conn::Protocol::Http1,
                None,
            );
            let client = async {
                if let Some(idle) = late_head {
                    tokio::time::sleep(Duration::from_secs(idle)).await;
                    client.write_all(b"GET / HT").await.unwrap();
                }
                let mut out = Vec::new();
                let _ = client.read_to_end(&mut out).await;
                out
            };
            let (_, out) = tokio::join!(conn, client);
            assert!(
                out.starts_with(b"HTTP/1.1 200 OK"),
                "{}",
                out.escape_ascii()
            );
            let took = start.elapsed();
            assert!(
                took >= Duration::from_secs(ends_at)
                    && took < Duration::from_secs(ends_at) + Duration::from_millis(100),
                "{late_head:?}: {took:?}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn hyper_answers_a_screened_head_at_once() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let builder = crate::http::conn::conn_builder(
            hyper_util::rt::TokioExecutor::new(),
            &super::super::Timeouts {
                header_read: Duration::from_secs(30),
                keep_alive: Duration::from_secs(75),
                first_request_grace: Duration::from_secs(1),
            },
        );
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"ok"),
            )))
        });
        for (input, answers) in [
            (&b"GET / HTTP/1.1\r\nHost: x\r\n\rZ"[..], 0),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: example.com\r\n\x05\n", 1),
            (b"GET / HTTP/1.1\r\nHost: x\r\nDummy: x\nContent-Length: 23\r\n\r\nGET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\nHost: x\r\n\r\n", 0),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n", 1),
        ] {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            // As the fast path would hand it over in one piece, and as it comes from the
            // socket: in two reads, the second past hyper-util's 24-byte sniff.
            client.write_all(&input[..25]).await.unwrap();
            let start = tokio::time::Instant::now();
            let rest = &input[25..];
            let conn = builder.serve(
                Screened::new(server, Duration::from_secs(30)),
                service,
                crate::http::conn::Protocol::Sniffed,
                None,
            );
            let send = async {
                tokio::task::yield_now().await;
                client.write_all(rest).await.unwrap();
                let mut out = String::new();
                client.read_to_string(&mut out).await.unwrap();
                out
            };
            let (ended, out) = tokio::join!(conn, send);
            assert!(ended.is_ok() || ended.is_err());
            assert_eq!(start.elapsed(), std::time::Duration::ZERO, "{}: {out:?}", input.escape_ascii());
            assert_eq!(out.matches("HTTP/1.1 200 OK").count(), answers, "{out:?}");
            assert!(
                out.ends_with("\r\n\r\n") && out.contains("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n"),
                "{}: {out:?}",
                input.escape_ascii()
            );
        }
    }

    #[test]
    fn a_long_head_is_followed_to_its_end_and_reads_stay_within_hyper_s_limit() {
        let head = |len: usize| {
            let mut h = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
            h.resize(len - 4, b'b');
            h.extend_from_slice(b"\r\n\r\n");
            h
        };
        for (len, served) in [(MAX_HYPER_HEAD, true), (MAX_HYPER_HEAD + 1, false)] {
            for piece in [1000, 4096, 65_536, 300_000, 1 << 20] {
                // Reads as hyper makes them, each cut to the screen's cap.
                let input = [head(len), GET.to_vec()].concat();
                let mut screen = Screen::default();
                let mut at = 0;
                while at < input.len() {
                    let cap = screen.read_cap().unwrap_or(usize::MAX);
                    if cap == 0 {
                        break;
                    }
                    let n = piece.min(cap).min(input.len() - at);
                    assert_eq!(screen.feed(&input[at..at + n]), Verdict::Pass);
                    at += n;
                }
                if served {
                    // All of it went through: a head that came in one read was screened
                    // whole, the end of one followed past MAX_SCREENED ended the screening.
                    assert_eq!(at, input.len(), "{len} in pieces of {piece}");
                    assert!(!screen.in_head());
                } else {
                    // hyper holds exactly its limit of an unfinished head: it answers 431.
                    assert_eq!(at, MAX_HYPER_HEAD, "{len} in pieces of {piece}");
                    assert!(screen.in_head());
                }
            }
        }
    }

    #[test]
    fn hyper_s_end_of_head_is_found_across_reads() {
        let ends = |input: &[u8]| {
            (0..=input.len()).all(|cut| {
                let (a, b) = input.split_at(cut);
                hyper_end_of_head([0; 3], a) || hyper_end_of_head(last_three([0; 3], a), b)
            })
        };
        for input in [&b"x\r\n\r\n"[..], b"x\n\n", b"x\r\n\n"] {
            assert!(ends(input), "{}", input.escape_ascii());
        }
        for input in [&b"x\r\n\r"[..], b"x\n\r\n", b"x\r\nY: 1\r\n", b"\r\r\n"] {
            assert!(!ends(input), "{}", input.escape_ascii());
        }
    }
}
