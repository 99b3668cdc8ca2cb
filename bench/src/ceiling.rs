//! `forklift-ceiling`: the reference that does no HTTP work, for comparison.
//!
//! It answers every request head it sees (every `\r\n\r\n`) with the same canned 87-byte
//! response, the size class of forklift's. It parses nothing: no request line, no headers, no
//! body (a request with a body would be miscounted; the benchmark sends only GETs). Each
//! process has its own SO_REUSEPORT listener and one edge-triggered epoll loop; per request
//! batch it makes one `recv` and one `send`, with TCP_NODELAY, like a tokio server reading
//! what one readiness event brings.
//!
//! So its figures say what a server with one recv and one send per request and no HTTP work
//! gets from this machine, with the same load generator on the same cores: the ceiling.
//! forklift and nginx should be judged against it rather than against each other alone.
//!
//! Usage: `forklift-ceiling --listen 127.0.0.1:PORT [--workers N]` (N = 2 by default). The
//! first process forks N-1 children (they die with it: PR_SET_PDEATHSIG), then every process
//! binds its own socket. It prints nothing but errors; TERM or INT end it.

use std::convert::Infallible;
use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::IntoRawFd;
use std::process::exit;

/// The request-head terminator.
const TERMINATOR: &[u8; 4] = b"\r\n\r\n";
/// One receive buffer per process.
const RECV_BUF: usize = 64 * 1024;
/// Output a client leaves unread beyond this closes its connection.
const MAX_PENDING: usize = 4 * 1024 * 1024;
/// The listener's epoll token; connections use their fd.
const LISTENER: u64 = u64::MAX;
const CONN_EVENTS: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32;

const USAGE: &str = "usage: forklift-ceiling --listen ADDR:PORT [--workers N]";

fn main() {
    let (addr, workers) = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("forklift-ceiling: {e}\n{USAGE}");
            exit(2);
        }
    };

    // Fork first, before any socket exists: every process binds its own.
    // SAFETY: plain libc calls; the process is single-threaded here, so fork is sound.
    unsafe {
        let parent = libc::getpid();
        for _ in 1..workers {
            match libc::fork() {
                -1 => {
                    eprintln!("forklift-ceiling: fork: {}", io::Error::last_os_error());
                    exit(1);
                }
                0 => {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    if libc::getppid() != parent {
                        exit(0);
                    }
                    break;
                }
                _ => {}
            }
        }
    }

    let response = response(&http_date_now());
    match serve(addr, &response) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("forklift-ceiling: {e}");
            exit(1);
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(SocketAddr, u32), String> {
    let mut listen = None;
    let mut workers = 2u32;
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {v}: {e}"))?,
                );
            }
            "--workers" => {
                let v = value()?;
                workers = v
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or(format!("--workers {v}: not a number from 1 up"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                exit(0);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok((listen.ok_or("--listen is required")?, workers))
}

/// The canned response for every request head.
fn response(date: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\ncontent-length: 11\r\ndate: {date}\r\n\r\ngreeting!!!").into_bytes()
}

/// The current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), computed once.
fn http_date_now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// Counts the request heads that `bytes` completes. `matched` is how many bytes of
/// `\r\n\r\n` the connection's previous reads ended with (0 to 3); it is updated.
fn count_heads(matched: &mut u8, bytes: &[u8]) -> usize {
    let mut m = *matched as usize;
    let mut heads = 0;
    for &b in bytes {
        if b == TERMINATOR[m] {
            m += 1;
            if m == TERMINATOR.len() {
                heads += 1;
                m = 0;
            }
        } else {
            // The only proper prefix of the terminator that can restart a match is `\r`.
            m = usize::from(b == b'\r');
        }
    }
    *matched = m as u8;
    heads
}

/// Per-connection state, indexed by fd.
#[derive(Default)]
struct Conn {
    /// Bytes of the terminator matched at the end of the last read.
    matched: u8,
    /// Output the socket did not take yet (EPOLLOUT is registered while it is non-empty).
    pending: Vec<u8>,
    /// The peer has closed its side: close once `pending` is sent.
    closing: bool,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(last_err())
    } else {
        Ok(ret)
    }
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a c_int living for the call.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A non-blocking SO_REUSEPORT listener on `addr` (backlog 4096).
fn listener(addr: SocketAddr) -> io::Result<i32> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into_raw_fd())
}

fn epoll_ctl(ep: i32, op: i32, fd: i32, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: ev lives for the call.
    check(unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) }).map(drop)
}

/// The accept and request loop of one process; returns only on an error.
fn serve(addr: SocketAddr, response: &[u8]) -> Result<Infallible, String> {
    let lfd = listener(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    // SAFETY: plain syscall.
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })
        .and_then(|ep| {
            epoll_ctl(ep, libc::EPOLL_CTL_ADD, lfd, libc::EPOLLIN as u32, LISTENER).map(|()| ep)
        })
        .map_err(|e| format!("epoll: {e}"))?;

    let mut s = Server {
        ep,
        conns: Vec::new(),
        buf: vec![0u8; RECV_BUF],
        out: Vec::with_capacity(RECV_BUF),
        response,
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        // SAFETY: events has room for its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = last_err();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("epoll_wait: {e}"));
        }
        for ev in &events[..n as usize] {
            let (flags, token) = (ev.events, ev.u64);
            if token == LISTENER {
                s.accept_all(lfd);
            } else {
                s.on_ready(token as i32, flags);
            }
        }
    }
}

struct Server<'a> {
    ep: i32,
    conns: Vec<Conn>,
    buf: Vec<u8>,
    out: Vec<u8>,
    response: &'a [u8],
}

impl Server<'_> {
    /// Accepts until EAGAIN (the listener is level-triggered).
    fn accept_all(&mut self, lfd: i32) {
        loop {
            // SAFETY: plain syscall; no peer address is asked for.
            let fd = unsafe {
                libc::accept4(
                    lfd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                match last_err().raw_os_error() {
                    Some(libc::EINTR) | Some(libc::ECONNABORTED) => continue,
                    // EAGAIN, or EMFILE and the like: the listener fires again later.
                    _ => return,
                }
            }
            let _ = setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
            let i = fd as usize;
            if self.conns.len() <= i {
                self.conns.resize_with(i + 1, Conn::default);
            }
            self.conns[i] = Conn::default();
            if epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, CONN_EVENTS, fd as u64).is_err() {
                // SAFETY: fd is ours.
                unsafe { libc::close(fd) };
            }
        }
    }

    fn close(&mut self, fd: i32) {
        let c = &mut self.conns[fd as usize];
        c.pending = Vec::new();
        c.matched = 0;
        c.closing = false;
        // SAFETY: fd is ours; closing it also removes it from the epoll set.
        unsafe { libc::close(fd) };
    }

    fn on_ready(&mut self, fd: i32, flags: u32) {
        let i = fd as usize;
        if i >= self.conns.len() {
            return;
        }
        let peer_done = flags & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0;
        let readable = flags & (libc::EPOLLIN as u32) != 0 || peer_done;
        self.out.clear();
        if readable {
            loop {
                // SAFETY: buf is RECV_BUF bytes long.
                let n = unsafe { libc::recv(fd, self.buf.as_mut_ptr().cast(), self.buf.len(), 0) };
                if n > 0 {
                    let n = n as usize;
                    let heads = count_heads(&mut self.conns[i].matched, &self.buf[..n]);
                    for _ in 0..heads {
                        self.out.extend_from_slice(self.response);
                    }
                    // A short read emptied the socket. Unless the peer has closed its
                    // side (there will be no edge for the end of stream), wait for the next
                    // edge rather than spend a recv on EAGAIN.
                    if n < self.buf.len() && !peer_done {
                        break;
                    }
                } else if n == 0 {
                    self.conns[i].closing = true;
                    break;
                } else {
                    match last_err().raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::EAGAIN) => break,
                        _ => return self.close(fd),
                    }
                }
            }
        }
        let writable = flags & (libc::EPOLLOUT as u32) != 0;
        let c = &mut self.conns[i];
        let was_waiting = !c.pending.is_empty();
        let sent = if was_waiting {
            // Earlier output still waits: keep the order.
            c.pending.extend_from_slice(&self.out);
            if writable || !self.out.is_empty() {
                send_once(fd, &c.pending).map(|n| drop(c.pending.drain(..n)))
            } else {
                Ok(())
            }
        } else if !self.out.is_empty() {
            send_once(fd, &self.out).map(|n| c.pending.extend_from_slice(&self.out[n..]))
        } else {
            Ok(())
        };
        let waiting = !c.pending.is_empty();
        if sent.is_err() || c.pending.len() > MAX_PENDING || (c.closing && !waiting) {
            return self.close(fd);
        }
        // What the socket did not take waits for EPOLLOUT, registered only while it waits.
        if waiting != was_waiting {
            let events = if waiting {
                CONN_EVENTS | libc::EPOLLOUT as u32
            } else {
                CONN_EVENTS
            };
            let _ = epoll_ctl(self.ep, libc::EPOLL_CTL_MOD, fd, events, fd as u64);
        }
    }
}

/// One `send(MSG_NOSIGNAL)`: the bytes the socket took (0 on EAGAIN), or an error that
/// ends the connection.
fn send_once(fd: i32, data: &[u8]) -> io::Result<usize> {
    // SAFETY: data is a valid slice.
    let n = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if n >= 0 {
        return Ok(n as usize);
    }
    let e = last_err();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

    #[test]
    fn a_head_split_at_every_position_counts_once() {
        for cut in 0..=HEAD.len() {
            let mut m = 0;
            let a = count_heads(&mut m, &HEAD[..cut]);
            let b = count_heads(&mut m, &HEAD[cut..]);
            assert_eq!(
                (a, b, m),
                (
                    usize::from(cut == HEAD.len()),
                    usize::from(cut < HEAD.len()),
                    0
                ),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn a_head_split_byte_by_byte_counts_once() {
        let mut m = 0;
        let total: usize = HEAD
            .iter()
            .map(|b| count_heads(&mut m, std::slice::from_ref(b)))
            .sum();
        assert_eq!((total, m), (1, 0));
    }

    #[test]
    fn pipelined_heads_in_one_read() {
        let mut m = 0;
        assert_eq!(count_heads(&mut m, &HEAD.repeat(5)), 5);
        assert_eq!(m, 0);
    }

    #[test]
    fn bytes_after_the_last_head_carry_over() {
        let mut m = 0;
        let mut bytes = HEAD.repeat(2);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r");
        assert_eq!(count_heads(&mut m, &bytes), 2);
        assert_eq!(m, 3);
        assert_eq!(count_heads(&mut m, b"\nGET"), 1);
        assert_eq!(m, 0);
    }

    #[test]
    fn near_misses_are_not_heads() {
        let mut m = 0;
        assert_eq!(count_heads(&mut m, b"a\r\n\ra\n\r\n\n\r\r\n"), 0);
        assert_eq!(m, 2);
        // \r\r\n\r\n still ends a head: the second \r restarts the match.
        let mut m = 0;
        assert_eq!(count_heads(&mut m, b"x\r\r\n\r\n"), 1);
        assert_eq!(m, 0);
    }

    #[test]
    fn the_response_is_87_bytes_like_forklifts() {
        assert_eq!(http_date_now().len(), 29);
        let r = response(&http_date_now());
        assert_eq!(r.len(), 87);
        assert!(r.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(r.ends_with(b"\r\n\r\ngreeting!!!"));
    }

    #[test]
    fn args() {
        let a = |v: &[&str]| parse_args(v.iter().map(|s| s.to_string()));
        let (addr, n) = a(&["--listen", "127.0.0.1:18190"]).unwrap();
        assert_eq!((addr.port(), n), (18190, 2));
        let (addr, n) = a(&["--workers=3", "--listen=[::1]:1"]).unwrap();
        assert_eq!((addr.is_ipv6(), n), (true, 3));
        assert!(a(&[]).is_err());
        assert!(a(&["--listen", "127.0.0.1:1", "--workers", "0"]).is_err());
        assert!(a(&["--listen", "nope"]).is_err());
        assert!(a(&["--bogus"]).is_err());
    }
}
