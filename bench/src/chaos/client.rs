//! The scenarios' HTTP client: forklift-testkit's, with every failure sorted by kind.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use forklift_testkit::http::{self, get_request};
use forklift_testkit::Response;

/// How a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fail {
    Refused,
    ConnectTimeout,
    Reset,
    /// End of file before the whole response.
    Closed,
    Timeout,
    Non2xx,
    Other,
}

impl Fail {
    pub fn name(self) -> &'static str {
        match self {
            Fail::Refused => "refused",
            Fail::ConnectTimeout => "connect timeout",
            Fail::Reset => "reset",
            Fail::Closed => "incomplete",
            Fail::Timeout => "timeout",
            Fail::Non2xx => "non-2xx",
            Fail::Other => "other",
        }
    }
}

pub fn classify(e: &io::Error) -> Fail {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Fail::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => Fail::Reset,
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Fail::Timeout,
        io::ErrorKind::UnexpectedEof => Fail::Closed,
        _ => Fail::Other,
    }
}

/// A request failed: how, and whether any byte of a response had come.
pub struct ReqErr {
    pub fail: Fail,
    pub got_bytes: bool,
}

/// The head of `GET path` to 127.0.0.1, with `Connection: close` when `close`.
pub fn request(path: &str, close: bool) -> Vec<u8> {
    get_request("127.0.0.1", path, close)
}

/// Connects with TCP_NODELAY and `timeout` for the connect, every read and every write.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Fail> {
    match http::connect(addr, timeout) {
        Ok(s) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(Fail::ConnectTimeout)
        }
        Err(e) => Err(classify(&e)),
    }
}

/// Reads the response to the request in flight on a connection that may stay open.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Response, ReqErr> {
    http::read_response(s, buf).map_err(|e| ReqErr {
        fail: classify(&e.error),
        got_bytes: e.got_bytes,
    })
}

/// Sends `req` on `s` and reads its response.
pub fn exchange(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<Response, Fail> {
    s.write_all(req).map_err(|e| classify(&e))?;
    read_response(s, buf).map_err(|e| e.fail)
}

/// One `GET path` on a new connection.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, Fail> {
    let mut s = connect(addr, timeout)?;
    exchange(&mut s, &request(path, true), &mut Vec::new())
}

/// Whether the server has not closed (or reset) an idle kept-alive connection: one
/// non-blocking peek, as HTTP clients check a pooled connection before reuse.
pub fn still_open(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: recv(2) into a valid one-byte buffer on a socket we own.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}
