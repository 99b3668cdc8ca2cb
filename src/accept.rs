//! Accepting connections in a worker.
//!
//! Measured here: waiting on a shared socket through a private epoll instance registered with
//! `EPOLLEXCLUSIVE` (nginx's cure for the thundering herd) cost more CPU per connection than
//! it saved with 2 workers (36.7 against 33.3 µs per connection, medians of 3, oha -c 500
//! with one connection per request), so workers use tokio's listeners directly. Registering
//! connections for readability only, as nginx does (tokio registers for writability too, so
//! every ACK wakes the event loop), made no measurable difference either (3 interleaved
//! rounds each: 32.5–34.5 against 31.8–36.3 µs per connection; 6.2–7.3 against 6.3–7.3 µs
//! per keep-alive request).

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

/// Something a worker accepts connections from.
pub(crate) trait Acceptor {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    async fn accept(&self) -> io::Result<Self::Stream>;
}

/// A TCP listener.
pub(crate) struct TcpAcceptor {
    listener: tokio::net::TcpListener,
    /// Whether accepted connections need TCP_NODELAY set one by one: Linux copies it from a
    /// listener that has it (forklift's own do; one from systemd may not).
    set_nodelay: bool,
}

impl TcpAcceptor {
    pub fn new(listener: std::net::TcpListener) -> io::Result<TcpAcceptor> {
        listener.set_nonblocking(true)?;
        let inherited = cfg!(any(target_os = "linux", target_os = "android"))
            && socket2::SockRef::from(&listener)
                .tcp_nodelay()
                .unwrap_or(false);
        Ok(TcpAcceptor {
            listener: tokio::net::TcpListener::from_std(listener)?,
            set_nodelay: !inherited,
        })
    }
}

impl Acceptor for TcpAcceptor {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        let (stream, _) = self.listener.accept().await?;
        if self.set_nodelay {
            // Responses are small and written whole; do not let Nagle hold them back.
            let _ = stream.set_nodelay(true);
        }
        Ok(stream)
    }
}

pub(crate) struct UnixAcceptor(pub tokio::net::UnixListener);

impl Acceptor for UnixAcceptor {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        let (stream, _) = self.0.accept().await?;
        Ok(stream)
    }
}

/// Out of fds or memory: accepting again at once would spin.
pub(crate) fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
