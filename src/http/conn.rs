//! Serving one connection: hyper's settings, the protocol ALPN chose, the fast path then
//! hyper on the same bytes, the header-read timeout until the first request, and the graceful
//! shutdown of a connection when the worker stops, with the count of open connections that a
//! drain waits on.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as HttpBody, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto::{self, HttpServerConnExec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::debug;

use crate::error::BoxError;
use crate::http::access_log::TlsVersion;
use crate::http::body::Body;
use crate::http::client::ClientAddr;
use crate::http::fast;
use crate::http::h2::FloodGuard;
use crate::http::lot::{self, Lot};
use crate::http::proxy::{self, ProxyProtocol, Refusals};
use crate::http::{ResponseBody, WorkerService};

/// Runs `spawn_local`: HTTP/2 streams of `!Send` services stay on the worker's one thread.
#[derive(Clone, Copy, Debug)]
pub(super) struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

type ConnBuilder = Builders<LocalExec>;

/// hyper's builders: the auto builder (HTTP/1 or HTTP/2, sniffed) and one per protocol for
/// the connections whose protocol ALPN chose. The per-protocol builders take the same
/// settings as the auto builder's halves (the macros below).
pub(super) struct Builders<E> {
    auto: auto::Builder<E>,
    http1: http1::Builder,
    http2: http2::Builder<E>,
}

/// hyper's HTTP/1 settings, for hyper's `http1::Builder` and hyper-util's `Http1Builder`
/// alike (the same methods, no common trait).
///
/// hyper runs one timer from the moment it waits for a head until the head is complete.
/// forklift gives it the keep-alive timeout plus the header-read one, so that a request that
/// starts just before the keep-alive timeout still has the header-read timeout to finish its
/// head (nginx's rule, and what keeps a balancer's request from meeting a closing
/// connection); [`fast::Screened`] closes a head that takes longer than the header-read
/// timeout from its first byte, and [`drive`] bounds the first request's head. So on hyper's
/// path an idle connection closes between the keep-alive timeout and that plus the
/// header-read one (the fast path closes it at the keep-alive timeout).
macro_rules! http1_settings {
    ($builder:expr, $timeouts:expr) => {
        $builder
            .timer(TokioTimer::new())
            .header_read_timeout($timeouts.keep_alive.saturating_add($timeouts.header_read))
            // One write(2) of head and body beats writev(2) for the small responses that
            // dominate (measured: about 8% less CPU per request under keep-alive load).
            .writev(false)
            // A client that shuts its side after sending still gets its answers (as from the
            // fast path).
            .half_close(true)
            .keep_alive(!$timeouts.keep_alive.is_zero())
            // hyper's default, named: the screen keeps each read within it (`fast::screen`).
            .max_buf_size(fast::MAX_HYPER_HEAD)
    };
}

/// hyper's HTTP/2 settings, for hyper's `http2::Builder` and hyper-util's `Http2Builder`.
macro_rules! http2_settings {
    ($builder:expr) => {
        $builder.timer(TokioTimer::new())
    };
}

/// hyper's settings for the connections (or the rest of them) it serves.
pub(super) fn conn_builder<E: Clone>(exec: E, timeouts: &fast::Timeouts) -> Builders<E> {
    let mut auto = auto::Builder::new(exec.clone());
    http1_settings!(auto.http1(), timeouts);
    http2_settings!(auto.http2());
    let mut http1 = http1::Builder::new();
    http1_settings!(http1, timeouts);
    let mut http2 = http2::Builder::new(exec);
    http2_settings!(http2);
    Builders { auto, http1, http2 }
}

/// The protocol of a connection, as TLS's ALPN chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Protocol {
    /// No choice (cleartext, or a TLS client that offered no protocol we know): HTTP/1 or
    /// HTTP/2 with prior knowledge, told apart by the first bytes.
    Sniffed,
    /// `http/1.1`: HTTP/1 only, so an HTTP/2 preface is a bad HTTP/1 request.
    Http1,
    /// `h2`: HTTP/2 only, so anything but the preface is an HTTP/2 connection error
    /// (RFC 9113, section 3.3), never an HTTP/1 request.
    Http2,
}

impl Protocol {
    /// The protocol the ALPN identifier `alpn` names.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Sniffed,
        }
    }
}

impl<E> Builders<E> {
    /// hyper serving `io` in `protocol`, HTTP/2 behind the flood guard of `h2.rs`; `tcp` is
    /// the TCP socket under `io`, if it is one.
    pub(super) fn serve<I, S, B>(
        &self,
        io: I,
        service: S,
        protocol: Protocol,
        tcp: Option<RawFd>,
    ) -> HyperConn<'_, I, S, E>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<Incoming>, Response = Response<B>, Future: 'static>,
        S::Error: Into<BoxError>,
        B: HttpBody + 'static,
        B::Error: Into<BoxError>,
        E: HttpServerConnExec<S::Future, B>,
    {
        match protocol {
            Protocol::Sniffed => HyperConn::Auto {
                conn: self.auto.serve_connection_with_upgrades(
                    TokioIo::new(FloodGuard::new(io, false, tcp)),
                    service,
                ),
            },
            Protocol::Http1 => HyperConn::Http1 {
                conn: self
                    .http1
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            },
            Protocol::Http2 => HyperConn::Http2 {
                conn: self
                    .http2
                    .serve_connection(TokioIo::new(FloodGuard::new(io, true, tcp)), service),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// A hyper connection of any of the three builders.
    #[project = HyperConnProj]
    pub(super) enum HyperConn<'a, I, S, E>
    where
        S: hyper::service::HttpService<Incoming>,
    {
        Auto { #[pin] conn: auto::UpgradeableConnection<'a, TokioIo<FloodGuard<I>>, S, E> },
        Http1 { #[pin] conn: http1::UpgradeableConnection<TokioIo<I>, S> },
        Http2 { #[pin] conn: http2::Connection<TokioIo<FloodGuard<I>>, S, E> },
    }
}

impl<I, S, E, B> HyperConn<'_, I, S, E>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Future: 'static>,
    S::Error: Into<BoxError>,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
    E: HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        match self.project() {
            HyperConnProj::Auto { conn } => conn.graceful_shutdown(),
            HyperConnProj::Http1 { conn } => conn.graceful_shutdown(),
            HyperConnProj::Http2 { conn } => conn.graceful_shutdown(),
        }
    }
}

impl<I, S, E, B> Future for HyperConn<'_, I, S, E>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Future: 'static>,
    S::Error: Into<BoxError>,
    B: HttpBody + 'static,
    B::Error: Into<BoxError>,
    E: HttpServerConnExec<S::Future, B>,
{
    type Output = Result<(), BoxError>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            HyperConnProj::Auto { conn } => conn.poll(cx),
            HyperConnProj::Http1 { conn } => conn.poll(cx).map_err(Into::into),
            HyperConnProj::Http2 { conn } => conn.poll(cx).map_err(Into::into),
        }
    }
}

/// How long, at most, a connection accepted just before a graceful stop has to deliver its
/// first request, which is then served before the connection closes.
pub(super) const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// What every connection of a worker shares, and the count a graceful stop waits on.
pub(super) struct Conns<T> {
    pub(super) builder: ConnBuilder,
    // Read only by the TLS handshake, compiled with the `tls` feature.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(super) tls: Option<T>,
    /// The header-read timeout (also the TLS handshake's) and the first-request grace.
    pub(super) timeouts: fast::Timeouts,
    /// Whether connections start on the fast path.
    pub(super) fast_path: bool,
    /// Whether requests carry a [`ClientAddr`] (see `HttpConfig::client_addr`).
    pub(super) client_addr: bool,
    /// The PROXY protocol on TCP connections, and the connections it refused.
    pub(super) proxy: Option<ProxyProtocol>,
    pub(super) refusals: Refusals,
    /// Whether requests carry what only the access log reads (the TLS version).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(super) access_log: bool,
    /// Becomes true when the worker stops accepting.
    pub(super) stop: watch::Receiver<bool>,
    /// Becomes true when the shutdown delay begins (the master's `drain` line): each HTTP/2
    /// connection then gets a GOAWAY ([`drive`]). HTTP/1 responses read the guard's `Cell`
    /// instead (`guard.rs`), so no HTTP/1 connection waits on this.
    pub(super) drain: watch::Receiver<bool>,
    pub(super) live: Cell<usize>,
    /// Of those, the connections parked while idle (see [`Parking`]).
    pub(super) parked: Cell<usize>,
    /// Where the parked connections wait: their keep-alive deadlines.
    pub(super) lot: Rc<Lot>,
    /// The most connections open, and the most busy ones (open, not parked), since the heap
    /// was last trimmed.
    pub(super) peak: Cell<(usize, usize)>,
    /// The heap is to be trimmed at the next heartbeat: after a burst's closes trimmed it,
    /// for the memory of the connections that ended after (and of the tasks, freed after
    /// their count), or after a burst's connections were parked.
    pub(super) trim_again: Cell<bool>,
    pub(super) idle: tokio::sync::Notify,
}

impl<T> Conns<T> {
    fn enter(self: &Rc<Self>, permit: Option<OwnedSemaphorePermit>) -> Live<T> {
        self.live.set(self.live.get() + 1);
        self.note_busy();
        Live(self.clone(), permit)
    }

    /// Connections with a task of their own that serves them: open and not parked.
    fn busy(&self) -> usize {
        self.live.get() - self.parked.get()
    }

    fn note_busy(&self) {
        let (live, busy) = self.peak.get();
        self.peak
            .set((live.max(self.live.get()), busy.max(self.busy())));
    }

    /// Whether the open or the busy connections fell by `by` since their peak (which it
    /// moves to now): a burst is ending, and what its connections held is free but still
    /// resident (the allocator keeps freed memory below live allocations).
    pub(super) fn quieter(&self, by: usize) -> bool {
        let (live, busy) = (self.live.get(), self.busy());
        let (peak_live, peak_busy) = self.peak.get();
        let quieter = peak_live - live >= by || peak_busy - busy >= by;
        if quieter {
            self.peak.set((live, busy));
        }
        quieter
    }

    /// Resolves once every connection has ended.
    pub(super) async fn drained(&self) {
        while self.live.get() > 0 {
            self.idle.notified().await;
        }
    }
}

/// One open connection, counted until it is dropped, with its place under
/// `--max-connections` if there is one.
struct Live<T>(
    Rc<Conns<T>>,
    // Held, not read: given back as the connection's `Live` is dropped.
    #[allow(dead_code)] Option<OwnedSemaphorePermit>,
);

impl<T> Drop for Live<T> {
    fn drop(&mut self) {
        let left = self.0.live.get() - 1;
        self.0.live.set(left);
        if left == 0 {
            self.0.idle.notify_one();
        }
        // Trim as a burst of closes goes on (see `quieter`), and when its last connection
        // closes, without waiting up to a second for the heartbeat; the heartbeat trims once
        // more (`trim_again`) for what the last of them leave.
        if self.0.quieter(TRIM_AFTER_QUIETER) || (left == 0 && self.0.trim_again.get()) {
            crate::sys::trim::release_free_heap();
            self.0.trim_again.set(true);
        }
    }
}

/// A parked connection, counted until it goes on or closes, with its place in the worker's
/// [`Lot`].
struct Parked<T> {
    live: Option<Live<T>>,
    key: usize,
}

impl<T> Parked<T> {
    /// Parks a connection until `until` at the latest.
    fn new(live: Live<T>, until: tokio::time::Instant) -> Self {
        let conns = &live.0;
        conns.parked.set(conns.parked.get() + 1);
        if conns.quieter(TRIM_AFTER_QUIETER) {
            // The tasks that served them are freed as they return: the heartbeat trims.
            conns.trim_again.set(true);
        }
        let (key, sweep) = conns.lot.enter(until);
        if sweep {
            tokio::task::spawn_local(lot::sweep(conns.lot.clone(), conns.stop.clone()));
        }
        Parked {
            live: Some(live),
            key,
        }
    }

    /// Its next request has started.
    fn resume(mut self) -> Live<T> {
        let live = self.live.take().expect("a parked connection resumes once");
        live.0.parked.set(live.0.parked.get() - 1);
        live.0.lot.leave(self.key);
        live.0.note_busy();
        live
    }

    fn conns(&self) -> &Conns<T> {
        &self.live.as_ref().expect("parked").0
    }
}

impl<T> Drop for Parked<T> {
    fn drop(&mut self) {
        // Before the `Live` in it: a parked connection is counted among the live ones.
        if let Some(live) = &self.live {
            live.0.parked.set(live.0.parked.get() - 1);
            live.0.lot.leave(self.key);
        }
    }
}

/// Busy connections fewer than at the busiest moment (closed or parked) after which a worker
/// gives its heap's free pages back (a few MiB's worth: each held some KiB).
const TRIM_AFTER_QUIETER: usize = 512;

/// The same, checked at each heartbeat: a burst that ended by less than
/// [`TRIM_AFTER_QUIETER`] (its last connections parked, say) still left a few hundred KiB.
pub(super) const TRIM_AT_HEARTBEAT: usize = 64;

/// Stands in for the TLS acceptor when forklift is built without TLS.
#[cfg(not(feature = "tls"))]
pub(super) struct NoTls;

#[cfg(feature = "tls")]
pub(super) type Tls = crate::http::tls::Acceptor;
#[cfg(not(feature = "tls"))]
pub(super) type Tls = NoTls;

/// Serves one accepted connection from `peer` (TCP), after its PROXY header if the worker
/// takes the PROXY protocol, and after a TLS handshake if the worker has TLS. `permit`, the
/// connection's place under `--max-connections`, is given back when it closes.
pub(super) async fn serve_connection<I, S, B>(
    mut stream: I,
    peer: Option<SocketAddr>,
    service: S,
    conns: Rc<Conns<Tls>>,
    permit: Option<OwnedSemaphorePermit>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let live = conns.enter(permit);
    let tcp = tcp_fd(&stream);
    let mut client = peer;
    if let (Some(proxy), Some(peer)) = (&conns.proxy, peer) {
        // Boxed, so that the header's reading does not enlarge every connection's task.
        match Box::pin(proxy_header(&mut stream, peer, proxy, &conns)).await {
            Some(named) => client = Some(named),
            None => return,
        }
    }
    let service = Started {
        inner: service,
        first: Rc::new(FirstRequest::default()),
        client: client.filter(|_| conns.client_addr).map(ClientAddr),
        tls: None,
    };
    #[cfg(feature = "tls")]
    if let Some(tls) = &conns.tls {
        // Boxed, so that the TLS state does not enlarge every plain connection's task.
        Box::pin(async {
            let handshake =
                tokio::time::timeout(conns.timeouts.header_read, tls.accept(stream)).await;
            match handshake {
                Ok(Ok(stream)) => {
                    let protocol = Protocol::from_alpn(stream.get_ref().1.alpn_protocol());
                    let version = match conns.access_log {
                        true => stream.get_ref().1.protocol_version().map(tls_version),
                        false => None,
                    };
                    let resume = fast::Resume::NEW;
                    serve_stream(stream, service, live, protocol, tcp, version, resume).await
                }
                Ok(Err(e)) => debug!("TLS handshake failed: {e}"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        })
        .await;
        return;
    }
    let resume = fast::Resume::NEW;
    serve_stream(stream, service, live, Protocol::Sniffed, tcp, None, resume).await;
}

/// Spawns the task that serves a connection, its future (made by `conn`) built in a box. A
/// connection's future is large (about 4 KiB: the largest state a request needs), and tokio
/// copies a task's future as it spawns it (several times) and as it ends (twice more), into a
/// task it allocates 128-byte aligned (`posix_memalign`, which glibc serves without its
/// per-thread cache). Built in its box, the future is not copied at all, and the task is
/// small: a connection per request costs 12,424 user-space instructions, against 15,441
/// spawned as it is and 12,766 boxed after it was built (`bench/instructions --close`; nginx
/// 9,959).
pub(super) fn spawn_conn<F: Future<Output = ()> + 'static>(conn: impl FnOnce() -> F) {
    // Allocated first, so that the future can be built in its box rather than copied there.
    let boxed = Box::<F>::new_uninit();
    tokio::task::spawn_local(Box::into_pin(Box::write(boxed, conn())));
}

/// The access log's name of a TLS version.
#[cfg(feature = "tls")]
fn tls_version(v: rustls::ProtocolVersion) -> TlsVersion {
    TlsVersion(match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS",
    })
}

/// The client a TCP connection's PROXY header names (see `proxy.rs`), read within the
/// header-read timeout, or within the first-request grace once the worker stops; `None`:
/// close the connection.
async fn proxy_header<I: 'static>(
    stream: &mut I,
    peer: SocketAddr,
    proxy: &ProxyProtocol,
    conns: &Conns<Tls>,
) -> Option<SocketAddr> {
    let stream: &mut dyn std::any::Any = stream;
    let stream = stream.downcast_mut::<tokio::net::TcpStream>()?;
    let timeout = conns.timeouts.header_read;
    let mut stop = conns.stop.clone();
    let grace_over = async {
        let _ = stop.wait_for(|stopped| *stopped).await;
        tokio::time::sleep(conns.timeouts.first_request_grace).await;
    };
    tokio::select! {
        client = proxy::accept(stream, peer, proxy, &conns.refusals, timeout) => client,
        _ = grace_over => {
            debug!("no PROXY header from {peer} within the first-request grace of a stop");
            None
        }
    }
}

/// The socket of a TCP connection, for the HTTP/2 guard's TCP_NOTSENT_LOWAT. The acceptors
/// hand over tokio's `TcpStream` or `UnixStream`; a downcast keeps them free of a bound
/// that only this needs.
fn tcp_fd<I: 'static>(stream: &I) -> Option<RawFd> {
    let stream: &dyn std::any::Any = stream;
    stream
        .downcast_ref::<tokio::net::TcpStream>()
        .map(AsRawFd::as_raw_fd)
}

/// Serves a connection with the fast path while it can, then with hyper; an HTTP/2 one
/// (by ALPN) with hyper alone. A plain TCP keep-alive connection that goes idle is parked
/// ([`Parking`]).
async fn serve_stream<I, S, B>(
    mut io: I,
    service: Started<S>,
    live: Live<Tls>,
    protocol: Protocol,
    tcp: Option<RawFd>,
    tls: Option<TlsVersion>,
    resume: fast::Resume,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let conns = live.0.clone();
    let conns = &*conns;
    let mut service = service;
    service.tls = tls;
    let first = service.first.clone();
    let read = if conns.fast_path && protocol != Protocol::Http2 {
        // Only a plain TCP stream is parked (its type says so: a TLS one is not).
        let park = (&io as &dyn std::any::Any).is::<tokio::net::TcpStream>();
        let stop = conns.stop.clone();
        match fast::serve(&mut io, &service, conns.timeouts, stop, park, resume).await {
            fast::Outcome::Closed => return,
            fast::Outcome::Handoff(read) => read,
            fast::Outcome::Idle { until, resume } => {
                // (Only with `park`, so `io` is a TcpStream.)
                let mut io = Some(io);
                let io = &mut io as &mut dyn std::any::Any;
                if let Some(stream) = io.downcast_mut::<Option<tokio::net::TcpStream>>() {
                    let stream = stream.take().expect("taken once");
                    let parked = Parked::new(live, until);
                    tokio::task::spawn_local(Parking::new(stream, service, parked, resume));
                }
                return;
            }
        }
    } else {
        bytes::Bytes::new()
    };
    // Boxed: hyper's connection state is large, and most connections never need it.
    // Screened: hyper's HTTP/1 heads follow the fast path's rules (a bad one is answered at
    // once); the HTTP/2 preface turns the screen off.
    let io = fast::Screened::new(Prefixed { read, io }, conns.timeouts.header_read);
    Box::pin(drive(io, service, first, conns, protocol, tcp)).await;
}

/// A plain TCP keep-alive connection that went idle ([`fast::Outcome::Idle`]), as the task
/// that waits for its next request: the task that served it has ended, and with it the
/// memory of the largest state a request needs, and its buffers went back to the worker's
/// spares. So an idle connection holds its socket, this task (384 bytes with the demo's
/// service), its place in the worker's [`Lot`] and little else, as in nginx, which frees an
/// idle connection's buffers.
///
/// A future written out rather than an `async fn`, which would keep its arguments and its
/// locals apart, and with no timer or stop-waiter of its own: the [`Lot`]'s sweep wakes it at
/// its keep-alive deadline and when the worker stops. Once its next request starts it goes
/// on in a new task ([`serve_stream`]); a client that closed (the usual end of an idle
/// connection) is closed here, not in a new task that would take a request's state and
/// buffers to read the end.
struct Parking<S, B> {
    /// Taken as it goes on.
    idle: Option<Idle<S>>,
    _body: PhantomData<fn() -> B>,
}

struct Idle<S> {
    stream: tokio::net::TcpStream,
    service: Started<S>,
    parked: Parked<Tls>,
    resume: fast::Resume,
}

// No field is pinned: `poll` moves them on.
impl<S, B> Unpin for Parking<S, B> {}

impl<S, B> Parking<S, B> {
    fn new(
        stream: tokio::net::TcpStream,
        service: Started<S>,
        parked: Parked<Tls>,
        resume: fast::Resume,
    ) -> Self {
        let idle = Idle {
            stream,
            service,
            parked,
            resume,
        };
        Parking {
            idle: Some(idle),
            _body: PhantomData,
        }
    }
}

impl<S, B> Future for Parking<S, B>
where
    S: WorkerService<B>,
    B: ResponseBody,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(idle) = &self.idle else {
            return Poll::Ready(());
        };
        // `poll_read_ready`, not `readable()`: it takes the socket's one reader slot, where
        // the task that served the connection left its waker, and so lets that task be freed.
        match idle.stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => {
                debug!("waiting for a parked connection failed: {e}");
                return Poll::Ready(());
            }
            Poll::Pending => {
                // The lot decides when it closes: at its deadline, or at once on a stop.
                let conns = idle.parked.conns();
                if !conns.lot.expired(idle.parked.key, cx.waker()) {
                    return Poll::Pending;
                }
                if !*conns.stop.borrow() {
                    debug!("idle for the keep-alive timeout: closing");
                }
                return Poll::Ready(());
            }
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        if let Ok(0) = socket2::SockRef::from(&idle.stream).peek(&mut probe) {
            return Poll::Ready(());
        }
        let Idle {
            stream,
            service,
            parked,
            resume,
        } = self.idle.take().expect("checked above");
        let tcp = Some(stream.as_raw_fd());
        let live = parked.resume();
        spawn_conn(|| serve_stream(stream, service, live, Protocol::Sniffed, tcp, None, resume));
        Poll::Ready(())
    }
}

/// Runs hyper on a connection until it ends or the worker stops.
///
/// Until its first request starts, a connection gets the header-read timeout: hyper-util's
/// HTTP/1-or-HTTP/2 sniffing has no timeout of its own and hyper's header timer starts after
/// it, so a silent connection, or one trickling the HTTP/2 preface, would hold its fd for
/// ever. On a stop, a connection whose first request has not started gets a short grace to
/// deliver it (it may be in flight: the client connected while this worker still accepted);
/// then hyper finishes the request in progress and closes.
///
/// When the shutdown delay begins (`Conns::drain`), an HTTP/2 connection gets hyper's
/// graceful shutdown at once: a GOAWAY, so that its client opens its next streams elsewhere,
/// while the streams it has open finish. An HTTP/2 connection accepted during the delay gets
/// it as soon as its first request starts, and that request is answered: a GOAWAY before
/// any request would close a connection the client opened to be served (hyper closes an
/// HTTP/2 connection still in its handshake without a word). A connection is known to be
/// HTTP/2 by its first request's version (`FirstRequest::h2`), whether ALPN chose h2 or a
/// cleartext client sent the preface; HTTP/1 connections do not wait on the drain at all
/// (their responses say `Connection: close`, `guard.rs`), and hyper's graceful shutdown of
/// an idle HTTP/1 connection would close it under a client about to reuse it.
async fn drive<I, S, B>(
    io: I,
    service: Started<S>,
    first: Rc<FirstRequest>,
    conns: &Conns<Tls>,
    protocol: Protocol,
    tcp: Option<RawFd>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let conn = conns.builder.serve(io, ToBody(service), protocol, tcp);
    tokio::pin!(conn);
    let mut stop = conns.stop.clone();
    let stopping = async move {
        if !*stop.borrow_and_update() {
            let _ = stop.changed().await;
        }
    };
    tokio::pin!(stopping);
    let mut stop_requested = false;
    tokio::select! {
        ended = conn.as_mut() => return log_end(ended),
        _ = &mut stopping => stop_requested = true,
        _ = first.notify.notified() => {}
        _ = tokio::time::sleep(conns.timeouts.header_read) => {
            if !first.started.get() {
                debug!("no request within {:?}: closing", conns.timeouts.header_read);
                return;
            }
        }
    }
    if !stop_requested {
        let draining = async {
            let mut drain = conns.drain.clone();
            if drain.wait_for(|draining| *draining).await.is_err() {
                // The worker is ending: its stop reaches the connection through `stop`.
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            ended = conn.as_mut() => return log_end(ended),
            _ = &mut stopping => {}
            // Not polled, so not waiting, unless the connection is HTTP/2.
            _ = draining, if first.h2.get() => {
                debug!("draining: GOAWAY to an HTTP/2 connection");
                conn.as_mut().graceful_shutdown();
                return log_end(conn.await);
            }
        }
    }
    if !first.started.get() {
        tokio::select! {
            ended = conn.as_mut() => return log_end(ended),
            _ = tokio::time::sleep(conns.timeouts.first_request_grace) => {}
            _ = first.notify.notified() => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    log_end(conn.await);
}

fn log_end(ended: Result<(), BoxError>) {
    if let Err(e) = ended {
        debug!("connection ended with an error: {e}");
    }
}

/// Whether a connection's first request has started, and whether it was an HTTP/2 one.
#[derive(Default)]
struct FirstRequest {
    started: Cell<bool>,
    /// Set with `started`: the connection speaks HTTP/2, so a drain sends it a GOAWAY.
    h2: Cell<bool>,
    notify: tokio::sync::Notify,
}

/// A connection's service, noting its first request and giving each request the
/// connection's client, and its TLS version when the access log asked for it.
#[derive(Clone)]
struct Started<S> {
    inner: S,
    first: Rc<FirstRequest>,
    client: Option<ClientAddr>,
    tls: Option<TlsVersion>,
}

impl<S, B> Service<Request<B>> for Started<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        if !self.first.started.get() {
            self.first.started.set(true);
            self.first.h2.set(req.version() == hyper::Version::HTTP_2);
            self.first.notify.notify_one();
        }
        if let Some(client) = self.client {
            req.extensions_mut().insert(client);
        }
        if let Some(v) = self.tls {
            req.extensions_mut().insert(v);
        }
        self.inner.call(req)
    }
}

/// A hyper service from a service of [`Body`] requests.
#[derive(Clone)]
struct ToBody<S>(S);

impl<S> Service<Request<Incoming>> for ToBody<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.0.call(req.map(Body::from))
    }
}

/// A connection with bytes already read from it (by the fast path) in front.
struct Prefixed<I> {
    read: bytes::Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.read.is_empty() {
            return std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read.split_to(n));
        std::task::Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves one connection with forklift's HTTP stack (the HTTP/1 fast path, then hyper) on
/// any tokio runtime, multi-threaded included, until the client leaves or `stop` turns true
/// (idle connections close at once, a request in progress is answered first). The
/// single-process baseline of `forklift serve --single-process` uses it, so the benchmark
/// compares prefork with one process on equal terms. Not a stable API.
#[doc(hidden)]
pub async fn __serve_connection<I, S, B>(
    mut io: I,
    service: S,
    header_read_timeout: Duration,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let timeouts = fast::Timeouts {
        header_read: header_read_timeout,
        keep_alive: crate::config::DEFAULT_KEEP_ALIVE_TIMEOUT,
        first_request_grace: FIRST_REQUEST_GRACE,
    };
    let tcp = tcp_fd(&io);
    let read = match fast::serve(
        &mut io,
        &service,
        timeouts,
        stop.clone(),
        false,
        fast::Resume::NEW,
    )
    .await
    {
        fast::Outcome::Closed | fast::Outcome::Idle { .. } => return,
        fast::Outcome::Handoff(read) => read,
    };
    let builder = conn_builder(hyper_util::rt::TokioExecutor::new(), &timeouts);
    let io = fast::Screened::new(Prefixed { read, io }, header_read_timeout);
    let conn = builder.serve(io, ToBody(service), Protocol::Sniffed, tcp);
    tokio::pin!(conn);
    let mut stop = stop;
    tokio::select! {
        ended = conn.as_mut() => return log_end(ended),
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    conn.as_mut().graceful_shutdown();
    log_end(conn.await);
}
