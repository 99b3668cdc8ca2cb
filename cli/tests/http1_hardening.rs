//! HTTP/1 hardening (issue 13, part 2): request heads no server should take get a 400 at once,
//! smuggling probes never get the request behind them answered, and the fast path
//! (`forklift serve`) and hyper (`forklift serve --no-fast-path`) answer every case alike.
//!
//! Each case is raw request bytes and the statuses it must get, in order, before the server
//! closes the connection. The client keeps its side open, so a server that waits for more
//! (hyper parses a partial head again only once an empty line has come) is caught: the
//! header-read timeout is 30 s, and a case fails if the connection is still open after
//! [`DEADLINE`] (a bound on correctness, far below the timeout, not a measure of speed). The
//! same worker must answer before and after the cases: none may die. `cargo nextest run -p
//! forklift-cli --test http1_hardening --no-capture` prints every case's answers and times.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// How long a case may take before its connection counts as held open.
const DEADLINE: Duration = Duration::from_secs(5);

/// The request a smuggling probe hides: answered, its body says `slept 7 ms`.
const SMUGGLED: &[u8] = b"GET /sleep?ms=7 HTTP/1.1\r\nHost: x\r\n\r\n";

// ---------------------------------------------------------------------------
// The two servers
// ---------------------------------------------------------------------------

struct Pair {
    fast: Server,
    hyper: Server,
    /// The worker of each (fast, hyper), from the `ready` line.
    workers: (u32, u32),
}

impl Pair {
    fn start() -> Pair {
        let base = [
            "serve",
            "--workers",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--header-read-timeout",
            "30",
        ];
        let mut slow = base.to_vec();
        slow.push("--no-fast-path");
        let (fast, hyper) = thread::scope(|s| {
            let f = s.spawn(|| Server::start_ready(&base));
            let h = s.spawn(|| Server::start_ready(&slow));
            (f.join().unwrap(), h.join().unwrap())
        });
        let workers = (fast.pids_from_ready()[0], hyper.pids_from_ready()[0]);
        let pair = Pair {
            fast,
            hyper,
            workers,
        };
        pair.assert_workers_alive("at the start");
        pair
    }

    fn servers(&self) -> [(&'static str, &Server, u32); 2] {
        [
            ("fast", &self.fast, self.workers.0),
            ("hyper", &self.hyper, self.workers.1),
        ]
    }

    /// Each server's one worker still answers `GET /`, no worker exited, nothing panicked.
    fn assert_workers_alive(&self, when: &str) {
        for (mode, server, worker) in self.servers() {
            let r = http_get(server.addr(), "/")
                .unwrap_or_else(|e| panic!("{mode}: GET / {when}: {e}"));
            assert_greeting(&r);
            assert_eq!(r.worker_pid(), worker, "{mode}: another worker {when}");
            assert!(
                server.hooks_of("exited").is_empty(),
                "{mode}: a worker exited {when}: {:?}",
                server.hooks_of("exited")
            );
            assert!(
                !server.stderr_text().contains("panicked"),
                "{mode}: a panic {when}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// One exchange
// ---------------------------------------------------------------------------

/// A response as read back: status line, headers, and the body's framing.
#[derive(Clone, Debug, PartialEq)]
struct Resp {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a server did with a case's bytes.
#[derive(Debug)]
struct Answer {
    resps: Vec<Resp>,
    /// Bytes after the last whole response (none, from a well-behaved server).
    trailing: Vec<u8>,
    /// The server closed the connection (end-of-file or reset) before the deadline.
    closed: bool,
    /// From the first byte sent to the close (or the deadline).
    took: Duration,
}

impl Answer {
    fn statuses(&self) -> Vec<u16> {
        self.resps.iter().map(|r| r.status).collect()
    }

    fn summary(&self) -> String {
        format!(
            "{:?} {} after {}",
            self.statuses(),
            if self.closed { "closed" } else { "OPEN" },
            ms(self.took)
        )
    }
}

/// Sends `input` (from a thread: the server may answer and close before reading it all),
/// keeps the connection open (or half-closes it after the input, with `half_close`) and
/// reads until the server closes or [`DEADLINE`] passes.
fn exchange(addr: SocketAddr, input: &[u8], half_close: bool) -> Answer {
    let stream = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let started = Instant::now();
    let (raw, closed) = thread::scope(|s| {
        s.spawn(|| {
            if writer.write_all(input).is_ok() && half_close {
                let _ = writer.shutdown(Shutdown::Write);
            }
        });
        let mut stream = &stream;
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let closed = loop {
            let Some(left) = DEADLINE.checked_sub(started.elapsed()) else {
                break false;
            };
            stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // A reset: the server closed with bytes of ours unread.
                Err(_) => break true,
            }
        };
        // Unblocks the writer if it still writes.
        let _ = stream.shutdown(Shutdown::Both);
        (raw, closed)
    });
    let took = started.elapsed();
    let (resps, trailing) = parse_responses(&raw);
    Answer {
        resps,
        trailing,
        closed,
        took,
    }
}

/// Splits `raw` into responses (each framed by its `content-length` or chunked encoding; a
/// response without either and not a 1xx, 204 or 304 runs to the end) and what is left.
fn parse_responses(mut raw: &[u8]) -> (Vec<Resp>, Vec<u8>) {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return (out, raw.to_vec());
        };
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or("").splitn(3, ' ');
        let version = status_line.next().unwrap_or("").to_string();
        let Some(status) = status_line.next().and_then(|s| s.parse::<u16>().ok()) else {
            return (out, raw.to_vec());
        };
        if !version.starts_with("HTTP/1.") {
            return (out, raw.to_vec());
        }
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut resp = Resp {
            version,
            status,
            headers,
            body: Vec::new(),
        };
        let rest = &raw[end + 4..];
        let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().ends_with("chunked"));
        let length = resp.header("content-length").and_then(|v| v.parse().ok());
        let used = if bodiless {
            0
        } else if chunked {
            match dechunk(rest) {
                Some((body, used)) => {
                    resp.body = body;
                    used
                }
                None => return (out, raw.to_vec()),
            }
        } else if let Some(n) = length {
            if rest.len() < n {
                return (out, raw.to_vec());
            }
            resp.body = rest[..n].to_vec();
            n
        } else {
            resp.body = rest.to_vec();
            rest.len()
        };
        out.push(resp);
        raw = &rest[used..];
        if raw.is_empty() {
            return (out, Vec::new());
        }
    }
}

/// A chunked body and how many bytes it took (trailers skipped).
fn dechunk(mut data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = data.len();
    let mut body = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            let end = data.windows(2).position(|w| w == b"\r\n")?;
            // Trailer lines, then the empty line.
            let mut at = 0;
            let mut line_end = end;
            while line_end != 0 {
                at += line_end + 2;
                line_end = data[at..].windows(2).position(|w| w == b"\r\n")?;
            }
            return Some((body, total - data.len() + at + 2));
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------

struct Case {
    name: &'static str,
    input: Vec<u8>,
    /// The statuses, in order, after which the server closes.
    want: &'static [u16],
}

fn case(name: &'static str, input: impl AsRef<[u8]>, want: &'static [u16]) -> Case {
    Case {
        name,
        input: input.as_ref().to_vec(),
        want,
    }
}

const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
const GET_CLOSE: &str = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The cases: the four findings first, then llhttp-style cases, request smuggling
/// classics, and pipelines. Every case ends in a close: a 400, a `Connection: close`, or an
/// error hyper closes on.
fn corpus() -> Vec<Case> {
    let long_field = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\n",
        "a".repeat(20_000)
    );
    let many_fields = {
        let mut s = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..101 {
            s.push_str(&format!("X-F{i}: {i}\r\n"));
        }
        s + "\r\n"
    };
    vec![
        // The findings.
        case("issue: bad byte past byte 24, no blank line", "GET / HTTP/1.1\r\nHost: x\r\n\rZ", &[400]),
        case(
            "issue: a served request, then a bad head that never ends",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: example.com\r\n\x05\n",
            &[200, 400],
        ),
        case("issue: HTTP/1.1 without Host", "GET / HTTP/1.1\r\n\r\n", &[400]),
        case("issue: two Host lines", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", &[400]),
        case(
            "issue: llhttp's missing CR between headers",
            "GET / HTTP/1.1\r\nHost: localhost\r\nDummy: x\nContent-Length: 23\r\n\r\nGET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
            &[400],
        ),
        // Host (RFC 9112 §3.2).
        case("host: one, then close", GET_CLOSE, &[200]),
        case("host: two lines, same value", "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", &[400]),
        case("host: HTTP/1.0 without", "GET / HTTP/1.0\r\n\r\n", &[200]),
        case("host: HTTP/1.0 with two", "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", &[400]),
        case("host: empty value", "GET / HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n", &[200]),
        case(
            "host: absolute-form with Host",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            &[200],
        ),
        case("host: absolute-form without Host", "GET http://x/ HTTP/1.1\r\nConnection: close\r\n\r\n", &[400]),
        case("host: POST with a body, no Host", "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", &[400]),
        case("host: CONNECT without Host", "CONNECT x:443 HTTP/1.1\r\n\r\n", &[400]),
        case("host: OPTIONS * without Host", "OPTIONS * HTTP/1.1\r\n\r\n", &[400]),
        case("host: missing in the second request", [GET, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n"].concat(), &[200, 400]),
        case("host: two in the second request", [GET, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"].concat(), &[200, 400]),
        case(
            "host: missing after a POST body",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
            &[405, 400],
        ),
        case(
            "host: missing after a chunked body",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            &[405, 400],
        ),
        // Bare LF (RFC 9112 §2.2).
        case("bare LF: request line", "GET / HTTP/1.1\nHost: x\r\n\r\n", &[400]),
        case("bare LF: every line", "GET / HTTP/1.1\nHost: x\n\n", &[400]),
        case("bare LF: the empty line", "GET / HTTP/1.1\r\nHost: x\r\n\n", &[400]),
        case("bare LF: an empty line first", "\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", &[400]),
        case("bare LF: in a head that never ends", "GET / HTTP/1.1\r\nHost: x\nX-A: 1", &[400]),
        case("bare LF: in the second request", [GET, "GET / HTTP/1.1\r\nHost: x\n\r\n"].concat(), &[200, 400]),
        case("bare LF: past 16 KiB of head", long_field, &[400]),
        case(
            "bare LF: after a POST body",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\n\r\n",
            &[405, 400],
        ),
        case(
            "bare LF: in a body is data",
            ["POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\na\nb\n", GET_CLOSE].concat(),
            &[405, 200],
        ),
        case(
            "bare LF: in chunk data is data",
            ["POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\n\n\n\r\n0\r\n\r\n", GET_CLOSE].concat(),
            &[405, 200],
        ),
        case("CRLF: an empty line first", ["\r\n", GET_CLOSE].concat(), &[200]),
        case("CRLF: an empty line between requests", [GET, "\r\n", GET_CLOSE].concat(), &[200, 200]),
        // llhttp-style: bad bytes and malformed lines.
        case("llhttp: CR without LF between headers", "GET / HTTP/1.1\r\nHost: x\r\nFoo: 1\rBar: 2\r\n\r\n", &[400]),
        case("llhttp: invalid header token", "GET / HTTP/1.1\r\nHost: x\r\nFo@: Failure\r\n\r\n", &[400]),
        case("llhttp: control byte in a header name", "GET / HTTP/1.1\r\nHost: x\r\nFoo\x01test: Bar\r\n\r\n", &[400]),
        case("llhttp: space in a header name", "GET / HTTP/1.1\r\nHost: x\r\nFoo bar: 1\r\n\r\n", &[400]),
        case("llhttp: space before the colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", &[400]),
        case("llhttp: header without a colon", "GET / HTTP/1.1\r\nHost: x\r\nFoo\r\n\r\n", &[400]),
        case("llhttp: line folding", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", &[400]),
        case("llhttp: NUL in a header value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", &[400]),
        case("llhttp: NUL in the target", "GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n", &[400]),
        case("llhttp: invalid HTTP version", "GET / HTTP/5.6\r\nHost: x\r\n\r\n", &[400]),
        case("llhttp: HTTP/1.10", "GET / HTTP/1.10\r\nHost: x\r\n\r\n", &[400]),
        case("llhttp: HTTP/2.0 in an HTTP/1 head", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", &[400]),
        case("llhttp: lowercase version", "GET / http/1.1\r\nHost: x\r\n\r\n", &[400]),
        case("llhttp: bad byte in the method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", &[400]),
        case("llhttp: unknown method is a method", "MKCOLA / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &[405]),
        case("llhttp: two spaces in the request line", "GET  / HTTP/1.1\r\nHost: x\r\n\r\n", &[400]),
        case(
            "llhttp: a header line ending in a bare LF before Transfer-Encoding",
            "POST / HTTP/1.1\r\nHost: x\r\nx:x\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n\r\n",
            &[400],
        ),
        case(
            "llhttp: an empty value ending in a bare LF",
            "POST / HTTP/1.1\r\nHost: x\r\nx:\nTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n\r\n",
            &[400],
        ),
        case(
            "llhttp: an empty value ending in a bare CR",
            "POST / HTTP/1.1\r\nHost: x\r\nx:\rTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n\r\n",
            &[400],
        ),
        case(
            "llhttp: CR and a byte between heads",
            "GET / HTTP/1.1\r\nConnection: close\r\nHost: a\r\n\rZGET /evil: HTTP/1.1\r\nHost: a\r\n\r\n",
            &[400],
        ),
        case("llhttp: empty header name", "GET / HTTP/1.1\r\nHost: x\r\n: Bar\r\n\r\n", &[400]),
        case("llhttp: folded header name", "GET / HTTP/1.1\r\nHost: x\r\nname\r\n : value\r\n\r\n", &[400]),
        case(
            "llhttp: corrupted Connection header",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection\r\x1b5\xd5eep-Alive\r\n\r\n".as_slice(),
            &[400],
        ),
        case("llhttp: space after the start line, no end", "GET / HTTP/1.1\r\n Host: foo", &[400]),
        case(
            "llhttp: only LFs, chunked",
            "POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n1\nA\n0\n\n",
            &[400],
        ),
        case(
            "llhttp: a folded line hiding Content-Length",
            "POST /hello HTTP/1.1\r\nHost: localhost\r\nFoo: bar\r\n Content-Length: 38\r\n\r\nGET /bye HTTP/1.1\r\nHost: localhost\r\n\r\n",
            &[400],
        ),
        case("llhttp: ICE protocol", "GET /music/sweet/music ICE/1.0\r\nHost: x\r\n\r\n", &[400]),
        case("llhttp: RTSP protocol", "PUT /music/sweet/music RTSP/1.0\r\nHost: x\r\n\r\n", &[400]),
        case("llhttp: CR in a Content-Length name", "PUT / HTTP/1.1\r\nHost: x\r\nContent\rLength: 3\r\n\r\nabc", &[400]),
        case("llhttp: space before a Content-Length colon", "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\nabc", &[400]),
        case("bad byte: DEL in a value, no end", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7f", &[400]),
        case("bad byte: in a long target, no end", b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x7f".as_slice(), &[400]),
        case("bad byte: version, no end", "GET / HTTP/1.2\r\n", &[400]),
        case(
            "bad byte: after a POST body, no end",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\rZ",
            &[405, 400],
        ),
        case(
            "bad byte: after a chunked body, no end",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHo st",
            &[405, 400],
        ),
        // Request smuggling classics: the request behind is never answered.
        case("smuggling: CL and TE", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", SMUGGLED]), &[405]),
        case("smuggling: TE and CL", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n", SMUGGLED]), &[405]),
        case("smuggling: TE chunked, identity", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", SMUGGLED]), &[400]),
        case("smuggling: TE with line folding", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", SMUGGLED]), &[400]),
        case("smuggling: TE with a space before the colon", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", SMUGGLED]), &[400]),
        case("smuggling: TE xchunked", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", SMUGGLED]), &[400]),
        case("smuggling: TE on HTTP/1.0", cat(&[b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", SMUGGLED]), &[400]),
        case("smuggling: two CLs that differ", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", SMUGGLED]), &[400]),
        case("smuggling: CL list", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", SMUGGLED]), &[400]),
        case("smuggling: CL with a sign", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", SMUGGLED]), &[400]),
        case("smuggling: CL with a space inside", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\nabc", SMUGGLED]), &[400]),
        case("smuggling: CL past 2^64", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1180591620717411303424\r\n\r\n", SMUGGLED]), &[400]),
        case("smuggling: chunk size past 2^64", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc\r\n0\r\n\r\n", SMUGGLED]), &[405]),
        case("smuggling: chunk size not hex", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", SMUGGLED]), &[405]),
        case("smuggling: chunk size line ends in a bare LF", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", SMUGGLED]), &[405]),
        case("smuggling: chunk extension with a bare LF", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nb\r\nabc\r\n0\r\n\r\n", SMUGGLED]), &[405]),
        case("smuggling: chunk longer than its size", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", SMUGGLED]), &[405]),
        case("smuggling: hidden in a bare-LF header", cat(&[b"POST / HTTP/1.1\r\nHost: x\r\nX: y\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n", SMUGGLED]), &[400]),
        // Too much.
        case("too long: 101 header fields", many_fields, &[431]),
        // hyper takes about 400 KiB of partial head (a longer head that comes in one burst may
        // be complete before hyper sees it past its limit, and served).
        case("too long: a 1 MiB field", format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "b".repeat(1 << 20)), &[431]),
        case("too long: a 70 KB target", format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(70_000)), &[414]),
        // Pipelines after served requests.
        case("pipeline: three served, then a bad byte", [GET, GET, GET, "GET / HTTP/1.1\r\nHost: x\r\nX: \x01"].concat(), &[200, 200, 200, 400]),
        case(
            "pipeline: HTTP/1.0 keep-alive, then a bad head",
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\nX(: 1\r\n\r\n",
            &[200, 400],
        ),
        case(
            "pipeline: HTTP/1.0 keep-alive, then two Hosts",
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            &[200, 400],
        ),
        case(
            "pipeline: a POST body, then good requests",
            ["POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", GET, GET_CLOSE].concat(),
            &[405, 200, 200],
        ),
        case(
            "pipeline: chunked with extension and trailer, then a good request",
            ["POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", GET_CLOSE].concat(),
            &[405, 200],
        ),
        case(
            "pipeline: duplicate equal CLs, then a good request",
            ["POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", GET_CLOSE].concat(),
            &[405, 200],
        ),
    ]
}

/// A 400 must be a whole response that closes the connection: `Bad Request`, a zero
/// `content-length`, `connection: close` in HTTP/1.1 (HTTP/1.0 closes by default), and
/// nothing after it.
fn check_400(r: &Resp, last: bool) -> Result<(), String> {
    if r.status != 400 {
        return Ok(());
    }
    let close = r.version == "HTTP/1.0" || r.header("connection") == Some("close");
    if !(last && close && r.header("content-length") == Some("0")) {
        return Err(format!("not a closing 400: {r:?} (last: {last})"));
    }
    Ok(())
}

/// Runs `case` on one server: the statuses wanted, a close, proper 400s. `Err` says what
/// went wrong.
fn run(addr: SocketAddr, c: &Case) -> (Answer, Result<(), String>) {
    let a = exchange(addr, &c.input, false);
    let verdict = (|| {
        if a.statuses() != c.want {
            return Err(format!("statuses {:?}, want {:?}", a.statuses(), c.want));
        }
        if !a.closed {
            return Err(format!("still open after {DEADLINE:?}"));
        }
        if !a.trailing.is_empty() {
            return Err(format!(
                "bytes after the responses: {:?}",
                a.trailing.escape_ascii().to_string()
            ));
        }
        for (i, r) in a.resps.iter().enumerate() {
            check_400(r, i + 1 == a.resps.len())?;
            if r.body.windows(7).any(|w| w == b"slept 7") {
                return Err("the smuggled request was answered".into());
            }
        }
        Ok(())
    })();
    (a, verdict)
}

#[test]
fn the_corpus_gets_the_same_answers_from_the_fast_path_and_hyper() {
    let pair = Pair::start();
    let cases = corpus();
    let mut failures = Vec::new();
    println!(
        "{:<70} | {:<32} | {:<32}",
        "case", "fast path", "hyper (--no-fast-path)"
    );
    for c in &cases {
        let mut row = Vec::new();
        let mut statuses = Vec::new();
        for (mode, server, _) in pair.servers() {
            // Timing may decide whether hyper drains a body it did not read or closes: a
            // real difference shows on every attempt.
            let mut tries = 0;
            let (a, verdict) = loop {
                tries += 1;
                let (a, verdict) = run(server.addr(), c);
                if verdict.is_ok() || tries == 3 {
                    break (a, verdict);
                }
            };
            if let Err(why) = &verdict {
                failures.push(format!(
                    "{mode}: {}: {why} ({:?})",
                    c.name,
                    c.input.escape_ascii().to_string()
                ));
            }
            let retried = if tries > 1 {
                format!(" (try {tries})")
            } else {
                String::new()
            };
            row.push(format!("{}{retried}", a.summary()));
            statuses.push(a.statuses());
        }
        println!("{:<70} | {:<32} | {:<32}", c.name, row[0], row[1]);
        if statuses[0] != statuses[1] {
            failures.push(format!(
                "{}: the fast path and hyper differ: {statuses:?}",
                c.name
            ));
        }
    }
    pair.assert_workers_alive("after the corpus");
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// About 200 smuggling probes: a `Content-Length` that covers [`SMUGGLED`] together with a
/// `Transfer-Encoding` variant (obfuscated, listed, folded, duplicated; before or after the
/// length), so a front end that frames by one and a server that frames by the other would
/// disagree on where the next request starts. Whatever the server makes of it (a 400, the
/// first request answered then a close, the smuggled bytes read as a body), it must never
/// answer the smuggled request, and the fast path and hyper must give the same statuses.
/// Sent with a half-close, so every exchange ends without waiting for the deadline.
#[test]
fn smuggling_probes_never_get_the_request_behind_answered() {
    let pair = Pair::start();
    let te_values: &[&[u8]] = &[
        b"chunked",
        b"Chunked",
        b"CHUNKED",
        b" chunked",
        b"chunked ",
        b"\tchunked",
        b"chunked\t",
        b"chunked, identity",
        b"identity, chunked",
        b"gzip, chunked",
        b"chunked, chunked",
        b"chunked,",
        b",chunked",
        b"\"chunked\"",
        b"chunk",
        b"xchunked",
        b"chunkedx",
        b"chu nked",
        b"chu\x00nked",
        b"chunked\x0b",
        b"\x0bchunked",
        b"chunked\r\n folded",
        b"\r\n chunked",
        b"identity",
        b"",
    ];
    let te_names: &[&[u8]] = &[
        b"Transfer-Encoding",
        b"transfer-encoding",
        b"Transfer-Encoding ",
        b"Transfer_Encoding",
    ];
    let body = b"0\r\n\r\n";
    let covered = body.len() + SMUGGLED.len();
    let cl_lines = [
        format!("Content-Length: {covered}\r\n"),
        format!("Content-Length: {covered}\r\nContent-Length: {covered}\r\n"),
        format!("Content-Length: {covered}\r\nContent-Length: 5\r\n"),
    ];
    let mut probes = Vec::new();
    for name in te_names {
        for value in te_values {
            for (i, cl) in cl_lines.iter().enumerate() {
                // The length before or after the encoding, in turn.
                let te = [*name, b": ", value, b"\r\n"].concat();
                let (first, second) = if (i + probes.len()) % 2 == 0 {
                    (cl.as_bytes().to_vec(), te)
                } else {
                    (te, cl.as_bytes().to_vec())
                };
                let head = [
                    &b"POST / HTTP/1.1\r\nHost: x\r\n"[..],
                    &first,
                    &second,
                    b"\r\n",
                ]
                .concat();
                probes.push([&head[..], body, SMUGGLED].concat());
            }
        }
    }
    // Framing errors inside a chunked body, and a second encoding line.
    for chunk in [
        &b"10000000000000000\r\na\r\n0\r\n\r\n"[..],
        b"3\nabc\r\n0\r\n\r\n",
        b"3;x\ny\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabcdef\r\n0\r\n\r\n",
        b"-3\r\nabc\r\n0\r\n\r\n",
        b"0x3\r\nabc\r\n0\r\n\r\n",
    ] {
        probes.push(
            [
                &b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                chunk,
                SMUGGLED,
            ]
            .concat(),
        );
        probes.push([&b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"[..], chunk, SMUGGLED].concat());
    }
    println!("{} probes", probes.len());
    let mut failures = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for probe in &probes {
        let mut statuses = Vec::new();
        for (mode, server, _) in pair.servers() {
            let a = exchange(server.addr(), probe, true);
            let shown = probe.escape_ascii().to_string();
            if a.resps
                .iter()
                .any(|r| r.body.windows(7).any(|w| w == b"slept 7"))
            {
                failures.push(format!(
                    "{mode}: the smuggled request was answered: {shown}"
                ));
            }
            if !a.closed {
                failures.push(format!("{mode}: still open after {DEADLINE:?}: {shown}"));
            }
            for (i, r) in a.resps.iter().enumerate() {
                if let Err(why) = check_400(r, i + 1 == a.resps.len()) {
                    failures.push(format!("{mode}: {why}: {shown}"));
                }
            }
            statuses.push(a.statuses());
        }
        if statuses[0] != statuses[1] {
            failures.push(format!(
                "the fast path and hyper differ: {statuses:?}: {}",
                probe.escape_ascii()
            ));
        }
        *outcomes.entry(format!("{:?}", statuses[0])).or_default() += 1;
    }
    println!("statuses: {outcomes:?}");
    pair.assert_workers_alive("after the probes");
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
