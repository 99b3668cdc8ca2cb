//! Accepting connections in a worker: the listeners, and a loop per listener that hands each
//! connection to `conn.rs`.
//!
//! Each listener's registration in the worker's epoll carries `EPOLLEXCLUSIVE`
//! (`sys/epoll.rs`), so a connection on a shared socket wakes one waiting worker instead of
//! all of them; a worker that stops accepting for a while (at `max_connections`, or backing off
//! after EMFILE) takes its listener out of the set meanwhile, and one that accepted goes to
//! the back of the line (at most every 10 ms: [`Turns`]). Measured with 2 workers and a
//! connection per request against the build before (`bench/ab --rounds 8 OLD NEW`): 0.91
//! (0.85–0.98) × the CPU per connection, req/s 1.04 ×, context switches 0.57 → 0.47 per
//! connection (`perf stat`); keep-alive unchanged (6 rounds: CPU 0.97 ×). The accepts that find the queue empty stay (1.49 `accept4` calls
//! per connection): a worker busy when a connection comes still has the event recorded and
//! tries. (Waiting through a private epoll instance registered with the flag, nested in
//! tokio's, cost more than it saved: 36.7 against 33.3 µs; the kernel honours the flag only
//! for a thread waiting in `epoll_wait` on that instance itself.) Registering
//! connections for readability only, as nginx does (tokio registers for writability too, so
//! every ACK wakes the event loop), made no measurable difference (3 interleaved
//! rounds each: 32.5–34.5 against 31.8–36.3 µs per connection; 6.2–7.3 against 6.3–7.3 µs
//! per keep-alive request). Nor did reading a deferred connection's request right after
//! `accept`, before its first readiness event (29.5–30.3 against 28.0–29.5 µs).

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::http::conn::{serve_connection, spawn_conn, Conns, Tls};
use crate::http::{ResponseBody, WorkerService};
use crate::sys::epoll::Exclusive;

/// Something a worker accepts connections from: a connection, and its peer's address if it
/// has one (TCP).
pub(crate) trait Acceptor {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    async fn accept(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)>;
    /// The listener's exclusive registration, if it has one: see [`Exclusive`].
    fn exclusive(&self) -> Option<&Exclusive>;
}

/// At most how often a worker goes to the back of the line after accepting; see [`Turns`].
const TURN_EVERY: Duration = Duration::from_millis(10);

/// A listener's place in the line of workers waiting on it. With `EPOLLEXCLUSIVE` the kernel
/// wakes the waiting worker that registered first, so on an idle server one worker would take
/// every connection: a load balancer's few long-lived connections, opened one by one, landed
/// 7 or 8 of 8 on the same worker (2 workers, 8 connections opened 10–200 ms apart), which
/// leaves the other cores idle once those connections get busy. So after accepting, a worker
/// registers again, which puts it last ([`Exclusive::go_last`]), at most once every
/// [`TURN_EVERY`]: connections opened 10 ms or more apart then go round the workers (4 and 4
/// of 8), while connection-per-request load, thousands of accepts a second, pays nothing
/// measurable (8 interleaved rounds of oha -c 500: CPU per connection 0.95 ×, within noise).
/// A burst faster than that is spread anyway: a busy worker is passed over.
struct Turns {
    exclusive: Option<Exclusive>,
    /// Whether a connection was accepted since the accept queue was last found empty.
    accepted: Cell<bool>,
    /// When this worker last went to the back of the line.
    last: Cell<Option<Instant>>,
}

impl Turns {
    fn new(listener: BorrowedFd<'_>) -> io::Result<Turns> {
        Ok(Turns {
            exclusive: Exclusive::take_over(listener)?,
            accepted: Cell::new(false),
            last: Cell::new(None),
        })
    }

    /// Passes on what a `poll_accept` gave, going last once the accept queue is empty after
    /// accepting, when due.
    fn after<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => {
                if let Some(exclusive) = &self.exclusive {
                    if self.accepted.replace(false) {
                        let now = Instant::now();
                        if self.last.get().is_none_or(|t| now - t >= TURN_EVERY) {
                            self.last.set(Some(now));
                            exclusive.go_last();
                        }
                    }
                }
                Poll::Pending
            }
            ready => {
                self.accepted.set(true);
                ready
            }
        }
    }
}

/// A TCP listener.
pub(crate) struct TcpAcceptor {
    listener: tokio::net::TcpListener,
    /// Whether accepted connections need TCP_NODELAY set one by one: Linux copies it from a
    /// listener that has it (forklift's own do; one from systemd may not).
    set_nodelay: bool,
    turns: Turns,
}

impl TcpAcceptor {
    /// `defer_accept`: see [`defer_accept_on`].
    pub fn new(listener: std::net::TcpListener, defer_accept: bool) -> io::Result<TcpAcceptor> {
        listener.set_nonblocking(true)?;
        if defer_accept {
            defer_accept_on(&listener);
        }
        let inherited = cfg!(any(target_os = "linux", target_os = "android"))
            && socket2::SockRef::from(&listener)
                .tcp_nodelay()
                .unwrap_or(false);
        let listener = tokio::net::TcpListener::from_std(listener)?;
        Ok(TcpAcceptor {
            turns: Turns::new(listener.as_fd())?,
            listener,
            set_nodelay: !inherited,
        })
    }
}

impl Acceptor for TcpAcceptor {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, peer) = poll_fn(|cx| self.turns.after(self.listener.poll_accept(cx))).await?;
        if self.set_nodelay {
            // Responses are small and written whole; do not let Nagle hold them back.
            let _ = stream.set_nodelay(true);
        }
        Ok((stream, Some(peer)))
    }

    fn exclusive(&self) -> Option<&Exclusive> {
        self.turns.exclusive.as_ref()
    }
}

/// How long the kernel holds a connection that has sent nothing before handing it over anyway
/// (then the header-read timeout applies): one SYN-ACK retransmission.
#[cfg(any(target_os = "linux", target_os = "android"))]
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Asks the kernel (Linux: TCP_DEFER_ACCEPT, as nginx's `listen ... deferred`) to hand a
/// connection to `accept` only once the client has sent data. An HTTP client speaks first, so
/// a worker then never wakes for a connection with nothing to read yet: measured with a
/// connection per request (oha -c 500, 3 interleaved rounds): 26.5 against 31.0 µs of CPU per
/// connection, 25.4k against 22.7k requests/s. A client that connects and stays silent is
/// handed over after about [`DEFER_ACCEPT_SECS`], and the header-read timeout closes it then.
/// Only for HTTP (`Prefork::serve`): a protocol where the server speaks first would hang.
/// A failure is logged and ignored (the option is an optimisation).
pub(crate) fn defer_accept_on(listener: &std::net::TcpListener) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let secs = DEFER_ACCEPT_SECS;
        // SAFETY: a valid socket, and a c_int option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&secs as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!("TCP_DEFER_ACCEPT not set: {}", io::Error::last_os_error());
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = listener;
}

/// A Unix domain socket listener.
pub(crate) struct UnixAcceptor {
    listener: tokio::net::UnixListener,
    turns: Turns,
}

impl UnixAcceptor {
    pub fn new(listener: std::os::unix::net::UnixListener) -> io::Result<UnixAcceptor> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        Ok(UnixAcceptor {
            turns: Turns::new(listener.as_fd())?,
            listener,
        })
    }
}

impl Acceptor for UnixAcceptor {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Stream, Option<SocketAddr>)> {
        let (stream, _) = poll_fn(|cx| self.turns.after(self.listener.poll_accept(cx))).await?;
        Ok((stream, None))
    }

    fn exclusive(&self) -> Option<&Exclusive> {
        self.turns.exclusive.as_ref()
    }
}

/// Out of fds or memory: accepting again at once would spin.
pub(crate) fn is_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The most connections a worker holds open at once (nginx's `worker_connections`), shared
/// by its accept loops: each connection holds a permit from before its `accept` until it
/// closes, and an accept loop with no permit to take does not call `accept`, so further
/// connections wait in the listen backlog (the kernel completes their handshake) instead of
/// costing an fd each. A permit is taken before `accept`, not counted once the connection's
/// task runs (as `Conns::live` is), so a burst of accepts cannot overshoot the limit.
pub(crate) struct ConnLimit {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
    /// Whether this worker has said once, at WARN, that it reached the limit.
    warned: Cell<bool>,
}

impl ConnLimit {
    pub fn new(max: usize) -> Rc<ConnLimit> {
        let max = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Rc::new(ConnLimit {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            warned: Cell::new(false),
        })
    }

    /// A permit for one more connection, if fewer than `max` are open.
    fn try_acquire(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// A permit for one more connection, waiting for one to close if `max` are open.
    async fn acquire(&self) -> tokio::sync::OwnedSemaphorePermit {
        if let Some(permit) = self.try_acquire() {
            return permit;
        }
        let note = format!(
            "{} connections open, the most this worker takes (max_connections): not accepting \
             until one closes",
            self.max
        );
        if self.warned.replace(true) {
            debug!("{note}");
        } else {
            warn!("{note}; further waits are logged at DEBUG");
        }
        // Never closed: the semaphore lives as long as the accept loops.
        self.permits
            .clone()
            .acquire_owned()
            .await
            .expect("the connection limit's semaphore is never closed")
    }
}

/// Spawns an accept loop for each listener.
pub(super) fn spawn_accept_loops<S, B>(
    service: S,
    tcp: Vec<TcpAcceptor>,
    unix: Vec<UnixAcceptor>,
    conns: &Rc<Conns<Tls>>,
    limit: Option<Rc<ConnLimit>>,
    until: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>>
where
    S: WorkerService<B>,
    B: ResponseBody,
{
    let mut loops = Vec::new();
    for l in tcp {
        let task = accept_loop(
            l,
            service.clone(),
            conns.clone(),
            limit.clone(),
            until.clone(),
        );
        loops.push(tokio::task::spawn_local(task));
    }
    for l in unix {
        let task = accept_loop(
            l,
            service.clone(),
            conns.clone(),
            limit.clone(),
            until.clone(),
        );
        loops.push(tokio::task::spawn_local(task));
    }
    loops
}

/// Accepts until `until` turns true, then takes what already waits in the accept queue
/// (connections the kernel completed before the stop: closing the listener would reset
/// them) and ends, dropping this worker's copy of the listener.
async fn accept_loop<A, S, B>(
    acceptor: A,
    service: S,
    conns: Rc<Conns<Tls>>,
    limit: Option<Rc<ConnLimit>>,
    until: watch::Receiver<bool>,
) where
    A: Acceptor,
    S: WorkerService<B>,
    B: ResponseBody,
{
    run_accept_loop(&acceptor, &service, &conns, limit, until).await;
    let mut queued = 0;
    while let Ok(Ok((stream, peer))) = tokio::time::timeout(Duration::ZERO, acceptor.accept()).await
    {
        queued += 1;
        let (service, conns) = (service.clone(), conns.clone());
        spawn_conn(|| serve_connection(stream, peer, service, conns, None));
    }
    if queued > 0 {
        debug!("served {queued} connections that waited in the accept queue at the stop");
    }
}

async fn run_accept_loop<A, S, B>(
    acceptor: &A,
    service: &S,
    conns: &Rc<Conns<Tls>>,
    limit: Option<Rc<ConnLimit>>,
    mut stop: watch::Receiver<bool>,
) where
    A: Acceptor,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let mut pause = Duration::from_millis(5);
    // The permit for the next connection, kept across failed accepts.
    let mut permit = None;
    loop {
        if let (Some(limit), None) = (&limit, &permit) {
            permit = match limit.try_acquire() {
                Some(p) => Some(p),
                None => {
                    // Out of the epoll set while at the limit: an exclusive wake-up would
                    // otherwise go to this worker, which does not accept, and not to another.
                    let _aside = acceptor.exclusive().map(Exclusive::stand_aside);
                    tokio::select! {
                        biased;
                        _ = stop.changed() => return,
                        p = limit.acquire() => Some(p),
                    }
                }
            };
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            accepted = acceptor.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                pause = Duration::from_millis(5);
                let (service, conns) = (service.clone(), conns.clone());
                let permit = permit.take();
                spawn_conn(|| serve_connection(stream, peer, service, conns, permit));
            }
            Err(e) if is_exhaustion(&e) => {
                // Out of fds or memory: accepting again at once would spin. Wait for
                // connections to close, backing off up to a second.
                warn!("accept failed: {e}; retrying in {pause:?}");
                let _aside = acceptor.exclusive().map(Exclusive::stand_aside);
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => debug!("accept failed: {e}"),
        }
    }
}
