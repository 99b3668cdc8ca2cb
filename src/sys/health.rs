//! The master's health port: a small HTTP/1.1 server that the master's poll loop drives
//! without ever blocking. Non-blocking sockets; one request per connection, answered with
//! `Connection: close`; at most [`MAX_CLIENTS`] at a time (more are closed at once); a client
//! that has not sent its request head, or taken its answer, within [`CLIENT_DEADLINE`] is
//! dropped. What the answers say is the master's business (`master/health.rs`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Connections served at once; one past it is closed at once.
pub(crate) const MAX_CLIENTS: usize = 64;
/// How long a client has to send its request head and take its answer.
pub(crate) const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// The longest request head read.
const MAX_HEAD: usize = 4096;

/// An answer of the health port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

struct Client {
    stream: TcpStream,
    inbuf: Vec<u8>,
    /// The answer, and how much of it is written.
    out: Option<(Vec<u8>, usize)>,
    deadline: Instant,
}

/// The listening socket and the connections in progress.
#[derive(Debug)]
pub(crate) struct HealthServer {
    listener: TcpListener,
    clients: Vec<Client>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("fd", &self.stream.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl HealthServer {
    /// Binds the health port (`SO_REUSEADDR`, non-blocking).
    ///
    /// # Errors
    /// [`Error::AddrInUse`] for a taken port, [`Error::Bind`] otherwise.
    pub fn bind(addr: SocketAddr) -> Result<HealthServer> {
        let listener =
            match crate::sys::listener::Listener::bind(&crate::addr::ListenAddr::tcp(addr), 128) {
                Ok(crate::sys::listener::Listener::Tcp(l)) => l,
                Ok(_) => unreachable!("a TCP address binds a TCP socket"),
                Err(Error::AddrInUse { .. }) => {
                    return Err(Error::AddrInUse {
                        addr: format!("health port {addr}"),
                    })
                }
                Err(e) => return Err(e),
            };
        HealthServer::from_listener(listener)
    }

    /// The health port a previous master handed over (binary upgrade).
    pub fn from_listener(listener: TcpListener) -> Result<HealthServer> {
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("health port", e))?;
        Ok(HealthServer {
            listener,
            clients: Vec::new(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The listening socket, to hand to the next master.
    pub fn handover_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// What to poll: the listener for readability, each client for what it waits on.
    pub fn poll_fds(&self) -> Vec<(RawFd, libc::c_short)> {
        let mut fds = vec![(self.listener.as_raw_fd(), libc::POLLIN)];
        fds.extend(self.clients.iter().map(|c| {
            let events = if c.out.is_some() {
                libc::POLLOUT
            } else {
                libc::POLLIN
            };
            (c.stream.as_raw_fd(), events)
        }));
        fds
    }

    /// The nearest client deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().map(|c| c.deadline).min()
    }

    /// Accepts, reads, answers and writes as far as possible without blocking; drops clients
    /// that are done or past their deadline. `answer` gets the method and the path.
    pub fn serve(&mut self, now: Instant, mut answer: impl FnMut(&str, &str) -> Reply) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                        continue; // dropped: closed at once
                    }
                    let _ = stream.set_nodelay(true);
                    self.clients.push(Client {
                        stream,
                        inbuf: Vec::new(),
                        out: None,
                        deadline: now + CLIENT_DEADLINE,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock, or EMFILE and the like: try again next tick.
                Err(_) => break,
            }
        }
        self.clients.retain_mut(|c| {
            if now >= c.deadline {
                return false;
            }
            if c.out.is_none() {
                match read_head(c) {
                    Progress::Wait => return true,
                    Progress::Gone => return false,
                    Progress::Head(end) => {
                        let reply = match parse_request_line(&c.inbuf[..end]) {
                            Some((method, path)) if method == "GET" || method == "HEAD" => {
                                let reply = answer(method, path);
                                reply.encode(method == "HEAD")
                            }
                            Some(_) => Reply::text(405, "GET or HEAD\n").encode(false),
                            None => Reply::text(400, "bad request\n").encode(false),
                        };
                        c.out = Some((reply, 0));
                    }
                }
            }
            write_out(c)
        });
    }
}

enum Progress {
    Wait,
    Gone,
    /// The head ends at this offset.
    Head(usize),
}

fn read_head(c: &mut Client) -> Progress {
    let mut buf = [0u8; 1024];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return Progress::Gone,
            Ok(n) => {
                c.inbuf.extend_from_slice(&buf[..n]);
                if let Some(end) = find(&c.inbuf, b"\r\n\r\n").or_else(|| find(&c.inbuf, b"\n\n")) {
                    return Progress::Head(end);
                }
                if c.inbuf.len() > MAX_HEAD {
                    return Progress::Head(c.inbuf.len());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Wait,
            Err(_) => return Progress::Gone,
        }
    }
}

/// Writes what it can; false once the client is done with (answer written, or an error).
fn write_out(c: &mut Client) -> bool {
    let Some((out, written)) = &mut c.out else {
        return true;
    };
    while *written < out.len() {
        match c.stream.write(&out[*written..]) {
            Ok(0) => return false,
            Ok(n) => *written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    false
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GET /path?query HTTP/1.1` → ("GET", "/path"): the query is dropped.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let method = parts.next().filter(|m| !m.is_empty())?;
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || parts.next().is_some() || !target.starts_with('/') {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some((method, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_to_method_and_path() {
        assert_eq!(
            parse_request_line(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/readyz"))
        );
        assert_eq!(
            parse_request_line(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(("HEAD", "/metrics"))
        );
        assert_eq!(parse_request_line(b"GET readyz HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"GET / HTTP/2\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"\xff\r\n\r\n"), None);
    }

    #[test]
    fn a_reply_is_a_closed_http_response() {
        let r = Reply::text(503, "draining\n").encode(false);
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("content-length: 9\r\n"));
        assert!(text.contains("connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\ndraining\n"));
        let head = String::from_utf8(Reply::text(200, "ok\n").encode(true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }

    fn drive(server: &mut HealthServer, until: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !until() && Instant::now() < deadline {
            server.serve(Instant::now(), |_, path| {
                Reply::text(200, format!("{path}\n"))
            });
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn it_answers_without_blocking_and_drops_slow_clients() {
        let mut server = HealthServer::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        // A client that never sends anything does not stop the next one being answered.
        let silent = TcpStream::connect(addr).unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        client
            .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        client.set_nonblocking(true).unwrap();
        let got = std::cell::RefCell::new(Vec::new());
        drive(&mut server, || {
            let mut buf = [0u8; 512];
            match (&client).read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    got.borrow_mut().extend_from_slice(&buf[..n]);
                    false
                }
                Err(_) => false,
            }
        });
        let text = String::from_utf8(got.into_inner()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("/livez\n"), "{text}");
        assert_eq!(server.clients.len(), 1, "the silent client waits");
        server.serve(Instant::now() + CLIENT_DEADLINE, |_, _| {
            Reply::text(200, "")
        });
        assert!(server.clients.is_empty(), "past its deadline it is dropped");
        drop(silent);
    }
}
