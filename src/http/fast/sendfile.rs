//! Writing a file region (a [`StaticFiles`](crate::StaticFiles) response) on the fast path
//! without reading the body: a small file with one `pread(2)` straight into the write
//! buffer, where it joins the other responses gathered for one `write(2)`; a larger one, on
//! a plain TCP or Unix socket on Linux, with `sendfile(2)` from the open file to the socket,
//! a slice at a time. Anything else (TLS, other systems) reads the body as usual.
//!
//! Measured (4 KiB and 1 MiB files, see `docs/process-model.md`): the small-file path costs
//! one `pread(2)` per response; `sendfile` spares the copy of large files through user space.

use std::future::poll_fn;
use std::io;
use std::pin::{pin, Pin};

use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::conn::{BodyEnd, Conn, WRITE_DIRECT};
use super::encode::Framing;
use super::poll_once;
use crate::error::BoxError;
use crate::files::Region;
use crate::sys::file::pread_append;

/// Files up to this long are read into the write buffer (as body chunks this short are
/// copied there); longer ones go by `sendfile`.
const SMALL_FILE: u64 = WRITE_DIRECT as u64;

/// The most one `sendfile` call sends (nginx's `sendfile_max_chunk`), and how much a
/// connection sends before it lets the worker's other connections run.
#[cfg(any(target_os = "linux", target_os = "android"))]
const SLICE: u64 = 1024 * 1024;

impl<I: AsyncRead + AsyncWrite + Unpin + 'static> Conn<'_, I> {
    /// Writes the `n` bytes left of `region`, the whole body of the response whose head is
    /// gathered, then lets `body` (which shares the region, and now finds it sent) see its
    /// end, so that a wrapper counting or logging it finishes.
    pub(super) async fn write_region<B>(
        &mut self,
        region: &Region,
        n: u64,
        mut body: Pin<&mut B>,
    ) -> io::Result<BodyEnd>
    where
        B: HttpBody,
        B::Error: Into<BoxError>,
    {
        let end = if n <= SMALL_FILE {
            self.read_into_buffer(region, n)
        } else {
            match self.send_file(region, n).await? {
                Some(end) => end,
                None => return self.write_body(body, Framing::Length(n), None).await,
            }
        };
        if let BodyEnd::Complete = end {
            let _ = poll_once(pin!(poll_fn(|cx| body.as_mut().poll_frame(cx)))).await;
        }
        Ok(end)
    }

    fn read_into_buffer(&mut self, region: &Region, n: u64) -> BodyEnd {
        let file = std::os::fd::AsFd::as_fd(region.file());
        match pread_append(file, &mut self.wbuf, n as usize, region.next()) {
            Ok(()) => {
                region.advance_direct(n);
                BodyEnd::Complete
            }
            Err(e) => {
                debug!("reading the file failed: {e}");
                BodyEnd::Failed
            }
        }
    }

    /// Sends the gathered bytes, then the file, with `sendfile(2)`. `None` if this connection
    /// cannot (not a plain socket, not Linux, or a file system without `sendfile`), before
    /// anything of the file was sent.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    async fn send_file(&mut self, region: &Region, n: u64) -> io::Result<Option<BodyEnd>> {
        use std::os::fd::AsFd;

        use crate::sys::file::{send_more, sendfile};

        let Some(sock) = Socket::of(&*self.io) else {
            return Ok(None);
        };
        // The head (and any responses gathered before it) goes first, held back by MSG_MORE
        // so that it leaves with the file's first bytes.
        let mut at = 0;
        while at < self.wbuf.len() {
            match sock.try_write(|fd| send_more(fd, &self.wbuf[at..])) {
                Ok(k) => at += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if at > 0 {
            self.flushes += 1;
            self.wbuf.clear();
        }
        let file = region.file().as_fd();
        let mut left = n;
        let mut since_yield = 0;
        while left > 0 {
            let mut offset = region.next();
            let count = left.min(SLICE) as usize;
            match sock.try_write(|fd| sendfile(fd, file, &mut offset, count)) {
                Ok(0) => {
                    debug!("the file became shorter while it was being sent");
                    return Ok(Some(BodyEnd::Short));
                }
                Ok(k) => {
                    self.flushes += 1;
                    region.advance_direct(k as u64);
                    left -= k as u64;
                    since_yield += k as u64;
                    if since_yield >= SLICE && left > 0 {
                        // Let the worker's other connections run between slices.
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if left == n
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                        ) =>
                {
                    debug!("sendfile refused ({e}): reading the file instead");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(BodyEnd::Complete))
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    async fn send_file(&mut self, _region: &Region, _n: u64) -> io::Result<Option<BodyEnd>> {
        Ok(None)
    }
}

/// The connection as the socket it is, when it is one (not TLS, not a test's in-memory pipe).
#[cfg(any(target_os = "linux", target_os = "android"))]
enum Socket<'a> {
    Tcp(&'a tokio::net::TcpStream),
    Unix(&'a tokio::net::UnixStream),
}

#[cfg(any(target_os = "linux", target_os = "android"))]
impl<'a> Socket<'a> {
    fn of<I: 'static>(io: &'a I) -> Option<Socket<'a>> {
        let io: &'a dyn std::any::Any = io;
        if let Some(s) = io.downcast_ref::<tokio::net::TcpStream>() {
            return Some(Socket::Tcp(s));
        }
        io.downcast_ref::<tokio::net::UnixStream>()
            .map(Socket::Unix)
    }

    /// Runs a write system call on the socket if tokio thinks it writable; a `WouldBlock`
    /// from it clears that readiness, so that [`writable`](Self::writable) waits for the next.
    fn try_write<R>(
        &self,
        f: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> io::Result<R>,
    ) -> io::Result<R> {
        use std::os::fd::AsFd;
        let interest = tokio::io::Interest::WRITABLE;
        match self {
            Socket::Tcp(s) => s.try_io(interest, || f(s.as_fd())),
            Socket::Unix(s) => s.try_io(interest, || f(s.as_fd())),
        }
    }

    async fn writable(&self) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => s.writable().await,
            Socket::Unix(s) => s.writable().await,
        }
    }
}
