//! The worker's HTTP server: hyper-util's auto builder (HTTP/1.1 keep-alive and cleartext
//! HTTP/2) on a single-threaded tokio runtime, with graceful drain.
//!
//! Stop causes, in the worker: TERM or QUIT (graceful: stop accepting, finish in-flight
//! requests within the graceful timeout), INT (fast: drop everything), and the master's death
//! (end-of-file on the status channel, or the parent-death TERM): run `on_master_death`, then
//! drain gracefully.

pub(crate) mod accept;
pub(crate) mod access_log;
pub(crate) mod body;
pub(crate) mod date;
pub(crate) mod fast;
pub(crate) mod guard;
#[cfg(feature = "tls")]
pub(crate) mod tls;

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use hyper::body::{Body as HttpBody, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::BoxError;
use crate::http::accept::{is_exhaustion, Acceptor, TcpAcceptor, UnixAcceptor};
use crate::http::body::Body;
use crate::protocol::Message;
use crate::sys::listener::Listener;
use crate::worker::Worker;

/// Per-worker HTTP settings.
#[derive(Debug, Clone)]
pub(crate) struct HttpConfig {
    pub header_read_timeout: Duration,
    pub graceful_timeout: Duration,
    pub access_log: bool,
    /// Replace the worker after this many requests plus up to this many more.
    pub max_requests: Option<(u64, u64)>,
    /// Serve simple HTTP/1 requests with forklift's fast path (see `fast.rs`).
    pub fast_path: bool,
    /// Accept TCP connections only once they have data (see `accept::defer_accept_on`).
    pub defer_accept: bool,
    #[cfg(feature = "tls")]
    pub tls: Option<crate::http::tls::TlsSource>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: Duration::from_secs(30),
            graceful_timeout: Duration::from_secs(30),
            access_log: false,
            max_requests: None,
            fast_path: true,
            defer_accept: true,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// Runs `spawn_local`: HTTP/2 streams of `!Send` services stay on the worker's one thread.
#[derive(Clone, Copy, Debug)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

type ConnBuilder = auto::Builder<LocalExec>;

/// A service a worker serves: it takes [`Body`] requests and need not be `Send` (each worker
/// serves on one thread). The bounds of every function below, in one place.
pub(crate) trait WorkerService<B>:
    Service<Request<Body>, Response = Response<B>, Future: 'static, Error: Into<BoxError>>
    + Clone
    + 'static
{
}

impl<S, B> WorkerService<B> for S where
    S: Service<Request<Body>, Response = Response<B>, Future: 'static, Error: Into<BoxError>>
        + Clone
        + 'static
{
}

/// The body of a worker's responses.
pub(crate) trait ResponseBody: HttpBody<Error: Into<BoxError>> + 'static {}

impl<B> ResponseBody for B where B: HttpBody<Error: Into<BoxError>> + 'static {}

/// hyper's settings for the connections (or the rest of them) it serves.
fn conn_builder<E>(exec: E, header_read_timeout: Duration) -> auto::Builder<E> {
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        // One write(2) of head and body beats writev(2) for the small responses that
        // dominate (measured: about 8% less CPU per request under keep-alive load).
        .writev(false)
        // A client that shuts its side after sending still gets its answers (as from the
        // fast path).
        .half_close(true)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves HTTP on the worker's listeners until a stop cause; see the module doc.
pub(crate) fn serve<F, S, B>(
    worker: &mut Worker,
    factory: &F,
    cfg: &HttpConfig,
    on_master_death: Option<&(dyn Fn() + Send + Sync)>,
) -> Result<(), BoxError>
where
    F: Fn() -> S,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve_async(worker, factory, cfg, on_master_death))
}

async fn serve_async<F, S, B>(
    worker: &mut Worker,
    factory: &F,
    cfg: &HttpConfig,
    on_master_death: Option<&(dyn Fn() + Send + Sync)>,
) -> Result<(), BoxError>
where
    F: Fn() -> S,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let mut tcp = Vec::new();
    let mut unix = Vec::new();
    for l in worker.take_listeners() {
        match l {
            Listener::Tcp(l) => tcp.push(TcpAcceptor::new(l, cfg.defer_accept)?),
            Listener::Unix(l) => {
                l.set_nonblocking(true)?;
                unix.push(tokio::net::UnixListener::from_std(l)?);
            }
        }
    }
    // Loaded in the worker as it boots, so a respawned worker serves renewed files.
    #[cfg(feature = "tls")]
    let tls: Option<tokio_rustls::TlsAcceptor> = match &cfg.tls {
        Some(source) => Some(source.load()?.into()),
        None => None,
    };
    #[cfg(not(feature = "tls"))]
    let tls: Option<NoTls> = None;
    let served = Rc::new(Cell::new(0u64));
    let service = crate::http::guard::Guarded {
        inner: factory(),
        served: served.clone(),
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut int = signal(SignalKind::interrupt())?;
    let watch_fd = worker.master_watch()?;
    watch_fd.set_nonblocking(true)?;
    let (mut master, to_master) = tokio::net::UnixStream::from_std(watch_fd)?.into_split();

    let (stop_tx, stop_rx) = watch::channel(false);
    let conns = Rc::new(Conns {
        builder: conn_builder(LocalExec, cfg.header_read_timeout),
        tls,
        timeouts: fast::Timeouts {
            header_read: cfg.header_read_timeout,
            first_request_grace: cfg.graceful_timeout.min(FIRST_REQUEST_GRACE),
        },
        fast_path: cfg.fast_path,
        stop: stop_rx,
        live: Cell::new(0),
        idle: tokio::sync::Notify::new(),
    });
    let loops = if cfg.access_log {
        spawn_accept_loops(
            crate::http::access_log::AccessLog(service),
            tcp,
            unix,
            &conns,
        )
    } else {
        spawn_accept_loops(service, tcp, unix, &conns)
    };
    worker.ready()?;
    debug!("serving");
    let limit = cfg
        .max_requests
        .map(|(n, jitter)| n + random_below(jitter + 1));
    let heartbeat = tokio::task::spawn_local(heartbeat(to_master, served, limit));

    let master_pid = worker.master_pid();
    let master_died = |why: &str| {
        warn!("the master (pid {master_pid}) is gone ({why}): draining and exiting");
        if let Some(hook) = on_master_death {
            hook();
        }
    };
    let fast = tokio::select! {
        _ = term.recv() => {
            // SAFETY: getppid(2) cannot fail.
            if unsafe { libc::getppid() } as u32 != master_pid {
                master_died("parent-death signal");
            } else {
                info!("SIGTERM: graceful stop");
            }
            false
        }
        _ = quit.recv() => { info!("SIGQUIT: graceful stop"); false }
        _ = int.recv() => { info!("SIGINT: fast stop"); true }
        _ = wait_eof(&mut master) => { master_died("its channel closed"); false }
    };
    let _ = stop_tx.send(true);
    heartbeat.abort();
    if fast {
        return Ok(());
    }
    // The accept loops end at once and close this worker's copies of the listeners.
    for l in loops {
        let _ = l.await;
    }
    let open = conns.live.get();
    if open > 0 {
        debug!("draining {open} connections");
    }
    match tokio::time::timeout(cfg.graceful_timeout, conns.drained()).await {
        Ok(()) => debug!("drained"),
        Err(_) => warn!(
            "graceful timeout ({:?}) passed: closing the remaining connections",
            cfg.graceful_timeout
        ),
    }
    Ok(())
}

/// Tells the master, every second, that this worker's event loop runs and how many requests
/// it served; asks once to be replaced when it reaches `limit`. A task on the worker's own
/// runtime, so a handler that blocks the loop stops the heartbeat and is caught.
async fn heartbeat(
    to_master: tokio::net::unix::OwnedWriteHalf,
    served: Rc<Cell<u64>>,
    limit: Option<u64>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut asked = false;
    loop {
        tick.tick().await;
        let requests = served.get();
        // A full channel means the master is behind: skip this beat rather than block.
        let _ = to_master.try_write(&Message::Heartbeat { requests }.encode());
        if let (Some(limit), false) = (limit, asked) {
            if requests >= limit {
                info!("served {requests} requests (limit {limit}): asking to be replaced");
                asked = to_master.try_write(&Message::Recycle.encode()).is_ok();
            }
        }
    }
}

/// How often a worker sends a heartbeat.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// A number below `n` (n > 0), random enough to spread worker restarts.
fn random_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x % n
}

/// Resolves once the master's end of the channel is closed.
async fn wait_eof(stream: &mut tokio::net::unix::OwnedReadHalf) {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

fn spawn_accept_loops<S, B>(
    service: S,
    tcp: Vec<TcpAcceptor>,
    unix: Vec<tokio::net::UnixListener>,
    conns: &Rc<Conns<Tls>>,
) -> Vec<tokio::task::JoinHandle<()>>
where
    S: WorkerService<B>,
    B: ResponseBody,
{
    let mut loops = Vec::new();
    for l in tcp {
        let task = accept_loop(l, service.clone(), conns.clone());
        loops.push(tokio::task::spawn_local(task));
    }
    for l in unix {
        let task = accept_loop(UnixAcceptor(l), service.clone(), conns.clone());
        loops.push(tokio::task::spawn_local(task));
    }
    loops
}

/// How long, at most, a connection accepted just before a graceful stop has to deliver its
/// first request, which is then served before the connection closes.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// What every connection of a worker shares, and the count a graceful stop waits on.
struct Conns<T> {
    builder: ConnBuilder,
    // Read only by the TLS handshake, compiled with the `tls` feature.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    tls: Option<T>,
    /// The header-read timeout (also the TLS handshake's) and the first-request grace.
    timeouts: fast::Timeouts,
    /// Whether connections start on the fast path.
    fast_path: bool,
    /// Becomes true when the worker stops accepting.
    stop: watch::Receiver<bool>,
    live: Cell<usize>,
    idle: tokio::sync::Notify,
}

impl<T> Conns<T> {
    fn enter(self: &Rc<Self>) -> Live<T> {
        self.live.set(self.live.get() + 1);
        Live(self.clone())
    }

    /// Resolves once every connection has ended.
    async fn drained(&self) {
        while self.live.get() > 0 {
            self.idle.notified().await;
        }
    }
}

/// One open connection, counted until it is dropped.
struct Live<T>(Rc<Conns<T>>);

impl<T> Drop for Live<T> {
    fn drop(&mut self) {
        let left = self.0.live.get() - 1;
        self.0.live.set(left);
        if left == 0 {
            self.0.idle.notify_one();
        }
    }
}

/// Stands in for the TLS acceptor when forklift is built without TLS.
#[cfg(not(feature = "tls"))]
struct NoTls;

#[cfg(feature = "tls")]
type Tls = tokio_rustls::TlsAcceptor;
#[cfg(not(feature = "tls"))]
type Tls = NoTls;

async fn accept_loop<A, S, B>(acceptor: A, service: S, conns: Rc<Conns<Tls>>)
where
    A: Acceptor,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let mut stop = conns.stop.clone();
    let mut pause = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => return,
            accepted = acceptor.accept() => accepted,
        };
        match accepted {
            Ok(stream) => {
                pause = Duration::from_millis(5);
                let conn = serve_connection(stream, service.clone(), conns.clone());
                tokio::task::spawn_local(conn);
            }
            Err(e) if is_exhaustion(&e) => {
                // Out of fds or memory: accepting again at once would spin. Wait for
                // connections to close, backing off up to a second.
                warn!("accept failed: {e}; retrying in {pause:?}");
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

/// Serves one accepted connection, after a TLS handshake if the worker has TLS.
async fn serve_connection<I, S, B>(stream: I, service: S, conns: Rc<Conns<Tls>>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let _live = conns.enter();
    #[cfg(feature = "tls")]
    if let Some(tls) = &conns.tls {
        // Boxed, so that the TLS state does not enlarge every plain connection's task.
        Box::pin(async {
            let handshake =
                tokio::time::timeout(conns.timeouts.header_read, tls.accept(stream)).await;
            match handshake {
                Ok(Ok(stream)) => serve_stream(stream, service, &conns).await,
                Ok(Err(e)) => debug!("TLS handshake failed: {e}"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        })
        .await;
        return;
    }
    serve_stream(stream, service, &conns).await;
}

/// Serves a connection with the fast path while it can, then with hyper.
async fn serve_stream<I, S, B>(mut io: I, service: S, conns: &Conns<Tls>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let first = Rc::new(FirstRequest::default());
    let service = Started {
        inner: service,
        first: first.clone(),
    };
    let read = if conns.fast_path {
        match fast::serve(&mut io, &service, conns.timeouts, conns.stop.clone()).await {
            fast::Outcome::Closed => return,
            fast::Outcome::Handoff(read) => read,
        }
    } else {
        bytes::Bytes::new()
    };
    // Boxed: hyper's connection state is large, and most connections never need it.
    Box::pin(drive(Prefixed { read, io }, service, first, conns)).await;
}

/// Runs hyper on a connection until it ends or the worker stops.
///
/// Until its first request starts, a connection gets the header-read timeout: hyper-util's
/// HTTP/1-or-HTTP/2 sniffing has no timeout of its own and hyper's header timer starts after
/// it, so a silent connection, or one trickling the HTTP/2 preface, would hold its fd for
/// ever. On a stop, a connection whose first request has not started gets a short grace to
/// deliver it (it may be in flight: the client connected while this worker still accepted);
/// then hyper finishes the request in progress and closes.
async fn drive<I, S, B>(io: I, service: Started<S>, first: Rc<FirstRequest>, conns: &Conns<Tls>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: WorkerService<B>,
    B: ResponseBody,
{
    let conn = conns
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), ToBody(service));
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
        tokio::select! {
            ended = conn.as_mut() => return log_end(ended),
            _ = &mut stopping => {}
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

/// Whether a connection's first request has started.
#[derive(Default)]
struct FirstRequest {
    started: Cell<bool>,
    notify: tokio::sync::Notify,
}

/// A connection's service, noting its first request.
#[derive(Clone)]
struct Started<S> {
    inner: S,
    first: Rc<FirstRequest>,
}

impl<S, R> Service<R> for Started<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: R) -> Self::Future {
        if !self.first.started.get() {
            self.first.started.set(true);
            self.first.notify.notify_one();
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
        first_request_grace: FIRST_REQUEST_GRACE,
    };
    let read = match fast::serve(&mut io, &service, timeouts, stop.clone()).await {
        fast::Outcome::Closed => return,
        fast::Outcome::Handoff(read) => read,
    };
    let builder = conn_builder(hyper_util::rt::TokioExecutor::new(), header_read_timeout);
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(Prefixed { read, io }), ToBody(service));
    tokio::pin!(conn);
    let mut stop = stop;
    tokio::select! {
        ended = conn.as_mut() => return log_end(ended),
        _ = stop.wait_for(|stopped| *stopped) => {}
    }
    conn.as_mut().graceful_shutdown();
    log_end(conn.await);
}
