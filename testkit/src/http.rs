//! A blocking HTTP/1.1 client over std sockets, in three shapes:
//!
//! - one `GET` with `Connection: close`, read until the server closes ([`http_get`] and its
//!   siblings): what a test asserts on, the whole body included;
//! - responses read one at a time off a connection that stays open ([`read_response`]): what a
//!   load generator sends on kept-alive connections;
//! - raw bytes, and whatever comes back until the server closes ([`send_raw`]): malformed
//!   requests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::hooks::Listen;

/// A response: its status, its headers in order, and its decoded body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The pid of the `x-forklift-worker` header, if it has one.
    pub fn worker(&self) -> Option<u32> {
        self.header("x-forklift-worker")?.trim().parse().ok()
    }

    /// The pid of the `x-forklift-worker` header; panics without one.
    pub fn worker_pid(&self) -> u32 {
        let v = self
            .header("x-forklift-worker")
            .unwrap_or_else(|| panic!("response without x-forklift-worker header: {self:?}"));
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("x-forklift-worker header {v:?} is not a pid"))
    }

    /// Does the server close the connection after this response (`Connection: close`)?
    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

const HEAD_END: &[u8] = b"\r\n\r\n";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The head of a `GET path` request; with `close`, it asks for `Connection: close`.
pub fn get_request(host: &str, path: &str, close: bool) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{}User-Agent: forklift-testkit\r\n\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// Connects to `addr` within `timeout`, and gives every later read and write the same
/// timeout.
pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Is connecting to `addr` refused (nothing listening)?
pub fn connect_refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// The status line and the headers.
fn parse_head(head: &[u8]) -> io::Result<(u16, Vec<(String, String)>)> {
    let head = std::str::from_utf8(head).map_err(|_| bad("non-UTF-8 headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// How a body is delimited.
enum Framing {
    Chunked,
    Length(usize),
    /// Neither Content-Length nor chunked.
    Unframed,
}

fn framing(headers: &[(String, String)]) -> io::Result<Framing> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Ok(Framing::Chunked);
    }
    match get("content-length") {
        Some(len) => len
            .parse()
            .map(Framing::Length)
            .map_err(|_| bad(format!("bad content-length {len:?}"))),
        None => Ok(Framing::Unframed),
    }
}

/// Decodes the chunked body at the start of `data`: the body and the number of bytes it took
/// (up to the blank line after the last chunk and its trailers), or `None` while incomplete.
fn decode_chunked(mut data: &[u8]) -> io::Result<Option<(Vec<u8>, usize)>> {
    let total = data.len();
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let size_line = std::str::from_utf8(&data[..eol]).map_err(|_| bad("bad chunk size"))?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| bad(format!("bad chunk size {size_hex:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            let end = if data.starts_with(b"\r\n") {
                2
            } else {
                match find(data, HEAD_END) {
                    Some(i) => i + 4,
                    None => return Ok(None),
                }
            };
            return Ok(Some((out, total - data.len() + end)));
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Parses a whole response, as read until the server closed the connection: the body is
/// chunked, Content-Length bytes, or everything after the head.
pub fn parse_response(raw: &[u8]) -> io::Result<Response> {
    let head_end = find(raw, HEAD_END)
        .ok_or_else(|| bad(format!("no end of headers in {} bytes", raw.len())))?;
    let (status, headers) = parse_head(&raw[..head_end])?;
    let rest = &raw[head_end + 4..];
    let body = match framing(&headers)? {
        Framing::Chunked => decode_chunked(rest)?
            .map(|(body, _)| body)
            .ok_or_else(|| bad("truncated chunked body"))?,
        Framing::Length(len) if rest.len() < len => {
            return Err(bad(format!(
                "body truncated: {} of {len} bytes",
                rest.len()
            )))
        }
        Framing::Length(len) => rest[..len].to_vec(),
        Framing::Unframed => rest.to_vec(),
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

// ---------------------------------------------------------------------------
// One GET, read until the server closes
// ---------------------------------------------------------------------------

/// Sends one `Connection: close` GET and reads the whole response, until the server closes
/// the connection.
pub fn http_request<S: Read + Write>(
    mut stream: S,
    host: &str,
    path: &str,
) -> io::Result<Response> {
    stream.write_all(&get_request(host, path, true))?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// GET `path` from a TCP address with a connect, read and write timeout.
pub fn http_get_timeout(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    http_request(connect(addr, timeout)?, &addr.to_string(), path)
}

/// GET `path` with a 5 s timeout.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    http_get_timeout(addr, path, Duration::from_secs(5))
}

/// GET `path` over a unix socket.
pub fn http_get_unix(sock: &Path, path: &str, timeout: Duration) -> io::Result<Response> {
    let stream = UnixStream::connect(sock)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    http_request(stream, "localhost", path)
}

/// GET from any listener.
pub fn http_get_listen(l: &Listen, path: &str, timeout: Duration) -> io::Result<Response> {
    match l {
        Listen::Tcp(a) => http_get_timeout(*a, path, timeout),
        Listen::Unix(p) => http_get_unix(p, path, timeout),
    }
}

// ---------------------------------------------------------------------------
// Responses one at a time, on a connection that stays open
// ---------------------------------------------------------------------------

/// Why [`read_response`] failed, and whether any byte of a response had come by then (a
/// request that got no byte back on a reused keep-alive connection is the one an HTTP client
/// may retry).
#[derive(Debug)]
pub struct ReadError {
    pub error: io::Error,
    pub got_bytes: bool,
}

/// Reads the response to the one request in flight on `stream`, which stays open for the
/// next: the head, then a body of Content-Length bytes or a chunked one. A response with
/// neither ends with its head, as one that has no body (204, 304); forklift frames every body
/// it sends. The end of the stream before the end of the response is an `UnexpectedEof`
/// error. `buf` is scratch space, reused from one call to the next (bytes read beyond the
/// response are dropped: no pipelining).
pub fn read_response<S: Read>(stream: &mut S, buf: &mut Vec<u8>) -> Result<Response, ReadError> {
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, HEAD_END) {
            break i;
        }
        fill(stream, buf)?;
    };
    let invalid = |error| ReadError {
        error,
        got_bytes: true,
    };
    let (status, headers) = parse_head(&buf[..head_end]).map_err(invalid)?;
    let start = head_end + 4;
    let body = match framing(&headers).map_err(invalid)? {
        Framing::Length(len) => {
            while buf.len() < start + len {
                fill(stream, buf)?;
            }
            buf[start..start + len].to_vec()
        }
        Framing::Chunked => loop {
            if let Some((body, _)) = decode_chunked(&buf[start..]).map_err(invalid)? {
                break body;
            }
            fill(stream, buf)?;
        },
        Framing::Unframed => Vec::new(),
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One read more into `buf`.
fn fill<S: Read>(stream: &mut S, buf: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut chunk = [0u8; 4096];
    loop {
        let error = match stream.read(&mut chunk) {
            Ok(0) => io::ErrorKind::UnexpectedEof.into(),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => e,
        };
        return Err(ReadError {
            error,
            got_bytes: !buf.is_empty(),
        });
    }
}

// ---------------------------------------------------------------------------
// Raw bytes
// ---------------------------------------------------------------------------

/// What came back for bytes sent raw.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// The status of every `HTTP/1.1 NNN` in the answer, in order.
    pub statuses: Vec<u16>,
    /// The server closed (or reset) the connection; else it was still open when the reading
    /// timed out.
    pub closed: bool,
    pub text: String,
    /// From the start of the send to the end of the reading.
    pub took: Duration,
}

/// Sends `bytes` on a new connection to `addr`; see [`send_raw_on`]. Panics if it cannot
/// connect.
pub fn send_raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> RawAnswer {
    let stream = TcpStream::connect(addr).expect("connect");
    send_raw_on(stream, bytes, wait).expect("socket setup")
}

/// Sends `bytes` on `stream` (from a thread: the server may answer and close before it has
/// read them all) and reads until the server closes the connection or no byte comes for
/// `wait`. Errors only if the socket cannot be set up.
pub fn send_raw_on(mut stream: TcpStream, bytes: &[u8], wait: Duration) -> io::Result<RawAnswer> {
    stream.set_read_timeout(Some(wait))?;
    let t0 = Instant::now();
    let writer = {
        let mut w = stream.try_clone()?;
        let bytes = bytes.to_vec();
        // Write errors are expected: the server may close before it has read everything.
        thread::spawn(move || {
            let _ = w.write_all(&bytes);
        })
    };
    let mut got = Vec::new();
    let closed = read_until_close(&mut stream, &mut got);
    let took = t0.elapsed();
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&got).into_owned();
    let statuses = text
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3)?.parse().ok())
        .collect();
    Ok(RawAnswer {
        statuses,
        closed,
        text,
        took,
    })
}

/// Reads into `got` until the end of the stream or a reset (true: closed) or a read timeout
/// (false: still open).
pub fn read_until_close(stream: &mut TcpStream, got: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            // a reset: closed too
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_responses_are_framed_by_length_chunks_or_close() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abc"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\nX-A: b\r\n\r\nrest").unwrap();
        assert_eq!(
            (r.status, r.header("x-a"), r.body_str()),
            (404, Some("b"), "rest".into())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn responses_are_read_one_at_a_time() {
        let mut buf = Vec::new();
        let mut one =
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Forklift-Worker: 7\r\n\r\nhi"[..];
        let a = read_response(&mut one, &mut buf).unwrap();
        assert_eq!((a.status, a.worker(), a.closes()), (200, Some(7), false));
        let mut two = &b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1\r\nx\r\n0\r\n\r\n"[..];
        let b = read_response(&mut two, &mut buf).unwrap();
        assert_eq!(
            (b.status, b.body.as_slice(), b.closes()),
            (500, &b"x"[..], true)
        );
        let mut cut = &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"[..];
        let c = read_response(&mut cut, &mut buf).unwrap_err();
        assert_eq!(c.error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(c.got_bytes);
        let d = read_response(&mut &b""[..], &mut buf).unwrap_err();
        assert!(!d.got_bytes);
    }
}
