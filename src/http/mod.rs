//! The worker's HTTP server: hyper-util's auto builder (HTTP/1.1 keep-alive and cleartext
//! HTTP/2) on a single-threaded tokio runtime, with graceful drain.
//!
//! Stop causes, in the worker: TERM or QUIT (graceful: stop accepting, finish in-flight
//! requests within the graceful timeout), INT (fast: drop everything), and the master's death
//! (end-of-file on the status channel, or the parent-death TERM): run `on_master_death`, then
//! drain gracefully.
//!
//! This file holds what the worker calls: [`serve`] and its [`HttpConfig`], the stop causes
//! and the heartbeat to the master. `accept.rs` accepts connections; `conn.rs` serves each
//! one (forklift's HTTP/1 fast path in `fast/`, then hyper) and shuts it down on a stop;
//! `h2.rs` guards hyper's HTTP/2 connections against PING and SETTINGS floods;
//! `guard.rs` and `access_log.rs` wrap the service; `body.rs` is the request body, `date.rs`
//! the `Date` header, `tls.rs` the certificates, `tickets.rs` the session tickets.

pub(crate) mod accept;
pub(crate) mod access_log;
pub(crate) mod body;
pub(crate) mod client;
mod conn;
pub(crate) mod date;
pub(crate) mod fast;
pub(crate) mod guard;
mod h2;
mod lot;
pub(crate) mod proxy;
#[cfg(feature = "tls")]
pub(crate) mod tickets;
#[cfg(feature = "tls")]
pub(crate) mod tls;

pub use conn::__serve_connection;

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::time::Duration;

use hyper::body::Body as HttpBody;
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::error::BoxError;
use crate::http::accept::{spawn_accept_loops, ConnLimit, TcpAcceptor, UnixAcceptor};
use crate::http::access_log::AccessLogWriter;
use crate::http::body::Body;
#[cfg(not(feature = "tls"))]
use crate::http::conn::NoTls;
use crate::http::conn::{conn_builder, Conns, LocalExec, Tls, FIRST_REQUEST_GRACE};
use crate::protocol::Message;
use crate::sys::listener::Listener;
use crate::worker::Worker;

/// Per-worker HTTP settings.
#[derive(Debug, Clone)]
pub(crate) struct HttpConfig {
    pub header_read_timeout: Duration,
    /// How long an HTTP/1 connection may wait idle between requests; zero: no keep-alive.
    pub keep_alive_timeout: Duration,
    pub graceful_timeout: Duration,
    pub access_log: bool,
    /// Write the access log to this file instead of through `tracing` (from
    /// `Config::access_log_file`).
    pub access_log_file: Option<std::path::PathBuf>,
    /// The form of the access log's lines in a file.
    pub log_format: crate::http::access_log::LogFormat,
    /// The error log the master put on fd 2, which a worker reopens when told (USR1).
    pub error_log: Option<std::path::PathBuf>,
    /// Replace the worker after this many requests plus up to this many more.
    pub max_requests: Option<(u64, u64)>,
    /// Serve simple HTTP/1 requests with forklift's fast path (see `fast/`).
    pub fast_path: bool,
    /// Accept TCP connections only once they have data (see `accept::defer_accept_on`).
    pub defer_accept: bool,
    /// The most connections the worker holds open at once (see `accept::ConnLimit`);
    /// `None`: no limit.
    pub max_connections: Option<usize>,
    /// Give every request on a TCP listener its [`ClientAddr`](crate::ClientAddr), even when
    /// neither the access log nor the PROXY protocol asks for it.
    pub client_addr: bool,
    /// Read a PROXY header from the trusted proxies before each TCP connection's first byte
    /// (see `proxy.rs`); `None`: off.
    pub proxy_protocol: Option<proxy::ProxyProtocol>,
    #[cfg(feature = "tls")]
    pub tls: crate::http::tls::TlsSettings,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: crate::config::DEFAULT_HEADER_READ_TIMEOUT,
            keep_alive_timeout: crate::config::DEFAULT_KEEP_ALIVE_TIMEOUT,
            graceful_timeout: crate::config::DEFAULT_GRACEFUL_TIMEOUT,
            access_log: false,
            access_log_file: None,
            log_format: crate::http::access_log::LogFormat::Text,
            error_log: None,
            max_requests: None,
            fast_path: true,
            defer_accept: true,
            max_connections: None,
            client_addr: false,
            proxy_protocol: None,
            #[cfg(feature = "tls")]
            tls: Default::default(),
        }
    }
}

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
            Listener::Unix(l) => unix.push(UnixAcceptor::new(l)?),
        }
    }
    // Loaded in the worker as it boots, so a respawned worker serves renewed files.
    #[cfg(feature = "tls")]
    let tls: Option<crate::http::tls::Acceptor> = if cfg.tls.is_on() {
        let secret =
            crate::http::tickets::worker_secret(worker, cfg.tls.ticket_key_file.as_deref())?;
        Some(cfg.tls.acceptor(secret)?)
    } else {
        None
    };
    #[cfg(not(feature = "tls"))]
    let tls: Option<NoTls> = None;
    let served = Rc::new(Cell::new(0u64));
    let draining = Rc::new(Cell::new(false));
    let service = crate::http::guard::Guarded {
        inner: factory(),
        served: served.clone(),
        draining: draining.clone(),
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut int = signal(SignalKind::interrupt())?;
    let watch_fd = worker.master_watch()?;
    watch_fd.set_nonblocking(true)?;
    let (mut master, to_master) = tokio::net::UnixStream::from_std(watch_fd)?.into_split();

    // `stop`: connections finish what they serve and close; `until`: the accept loops end.
    // A stop sets both. (A shutdown delay, the master's `drain`, sets `draining` and
    // `drain_tx` instead: HTTP/1 responses close their connection and HTTP/2 connections get
    // a GOAWAY, while the accept loops go on.)
    let (stop_tx, stop_rx) = watch::channel(false);
    let (until_tx, until_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let timeouts = fast::Timeouts {
        header_read: cfg.header_read_timeout,
        keep_alive: cfg.keep_alive_timeout,
        first_request_grace: cfg.graceful_timeout.min(FIRST_REQUEST_GRACE),
    };
    let conns = Rc::new(Conns {
        builder: conn_builder(LocalExec, &timeouts),
        tls,
        timeouts,
        fast_path: cfg.fast_path,
        client_addr: cfg.client_addr || cfg.access_log || cfg.proxy_protocol.is_some(),
        proxy: cfg.proxy_protocol.clone(),
        refusals: proxy::Refusals::default(),
        access_log: cfg.access_log,
        stop: stop_rx,
        drain: drain_rx,
        live: Cell::new(0),
        parked: Cell::new(0),
        lot: Rc::default(),
        peak: Cell::new((0, 0)),
        trim_again: Cell::new(false),
        idle: tokio::sync::Notify::new(),
    });
    let limit = cfg.max_connections.map(ConnLimit::new);
    let access_log = match cfg.access_log {
        true => Some(Rc::new(
            AccessLogWriter::new(cfg.access_log_file.as_deref(), cfg.log_format, worker.id())
                .map_err(|e| {
                    let path = cfg.access_log_file.as_deref().unwrap_or("-".as_ref());
                    format!("opening the access log {}: {e}", path.display())
                })?,
        )),
        false => None,
    };
    let logs = Rc::new(Logs {
        access: access_log.clone(),
        error: cfg.error_log.clone(),
    });
    // USR1 sent to a worker directly (`killall -USR1`) reopens too, instead of killing it.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let on_usr1 = logs.clone();
    let usr1_task = tokio::task::spawn_local(async move {
        while usr1.recv().await.is_some() {
            on_usr1.reopen();
        }
    });
    let loops = if let Some(writer) = access_log {
        spawn_accept_loops(
            crate::http::access_log::AccessLog {
                inner: service,
                writer,
            },
            tcp,
            unix,
            &conns,
            limit,
            until_rx,
        )
    } else {
        spawn_accept_loops(service, tcp, unix, &conns, limit, until_rx)
    };
    worker.ready()?;
    debug!("serving");
    let limit = cfg
        .max_requests
        .map(|(n, jitter)| n + random_below(jitter + 1));
    let heartbeat = tokio::task::spawn_local(heartbeat(to_master, served, conns.clone(), limit));

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
        _ = from_master(&mut master, &draining, &drain_tx, &logs) => { master_died("its channel closed"); false }
    };
    let _ = stop_tx.send(true);
    let _ = until_tx.send(true);
    heartbeat.abort();
    usr1_task.abort();
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

/// Tells the master, every second, that this worker's event loop runs, how many requests it
/// served and how many connections it holds; asks once to be replaced when it reaches
/// `limit`; finishes the heap trim a burst of closes began (`Conns::trim_again`), or trims
/// after a smaller burst. A task on the
/// worker's own runtime, so a handler that blocks the loop stops the heartbeat and is caught.
async fn heartbeat(
    to_master: tokio::net::unix::OwnedWriteHalf,
    served: Rc<Cell<u64>>,
    conns: Rc<Conns<Tls>>,
    limit: Option<u64>,
) {
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    let mut asked = false;
    loop {
        tick.tick().await;
        let requests = served.get();
        if conns.trim_again.take() | conns.quieter(conn::TRIM_AT_HEARTBEAT) {
            crate::sys::trim::release_free_heap();
        }
        // A full channel means the master is behind: skip this beat rather than block.
        let beat = Message::Heartbeat {
            requests,
            connections: conns.live.get() as u64,
        };
        let _ = to_master.try_write(&beat.encode());
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

/// The log files a worker reopens when the master says so.
struct Logs {
    access: Option<Rc<AccessLogWriter>>,
    error: Option<std::path::PathBuf>,
}

impl Logs {
    /// Reopens the access log's file and the error log (onto fd 2), after logrotate renamed
    /// them. A failure is logged and the old file kept.
    fn reopen(&self) {
        if let Some(path) = &self.error {
            if let Err(e) = crate::sys::log_file::redirect_stderr(path) {
                warn!("cannot reopen the error log {}: {e}", path.display());
            }
        }
        if let Some(Err(e)) = self.access.as_ref().map(|a| a.reopen()) {
            warn!("cannot reopen the access log: {e}");
        }
        debug!("log files reopened");
    }
}

/// Reads what the master says until its end of the channel is closed (then resolves): a
/// `drain` line starts the shutdown delay's behaviour, HTTP/1 responses closing their
/// connection (`draining`, read by each request) and HTTP/2 connections getting a GOAWAY
/// (`drain`, which wakes them) while the accept loops go on; a `reopen` line reopens the
/// log files.
async fn from_master(
    stream: &mut tokio::net::unix::OwnedReadHalf,
    draining: &Cell<bool>,
    drain: &watch::Sender<bool>,
    logs: &Logs,
) {
    let mut buf = [0u8; 64];
    let mut line = Vec::new();
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                line.extend_from_slice(&buf[..n]);
                while let Some(end) = line.iter().position(|&b| b == b'\n') {
                    if line[..=end] == *crate::protocol::DRAIN_LINE && !draining.get() {
                        info!(
                            "draining: connections close after their current request \
                             (HTTP/1: Connection: close; HTTP/2: GOAWAY)"
                        );
                        draining.set(true);
                        drain.send_replace(true);
                    }
                    if line[..=end] == *crate::protocol::REOPEN_LINE {
                        logs.reopen();
                    }
                    line.drain(..=end);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}
