//! The public entry point: a consuming builder that configures and runs a pre-forked server.

use std::sync::Arc;
use std::time::Duration;

use crate::addr::ListenAddr;
use crate::config::{Config, DEFAULT_HEADER_READ_TIMEOUT};
use crate::error::{BoxError, Error, Result};
use crate::hooks::{Hooks, WorkerInfo};
use crate::http::{self, HttpConfig};
use crate::master;
use crate::spawn::Spawn;
use crate::sys::process::ExitStatus;
use crate::worker::{self, Worker, WorkerMain};

/// A pre-forked server: binds in the master, serves in one worker process per core.
///
/// ```
/// use std::convert::Infallible;
/// use http_body_util::Full;
/// use hyper::{body::Bytes, Request, Response};
/// use hyper::service::service_fn;
///
/// async fn hello(_: Request<forklift::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
///     Ok(Response::new(Full::new(Bytes::from("hello"))))
/// }
///
/// fn main() -> forklift::Result<()> {
///     forklift::Prefork::new()
///         .workers(2)
///         .listen("127.0.0.1:0")?
///         // A real server runs until a signal; this example stops once both workers serve.
///         .on_master_ready(|_| { forklift::request_stop(true); Ok(()) })
///         .serve(|| service_fn(hello))
/// }
/// ```
#[must_use = "a Prefork does nothing until serve() or run() is called"]
pub struct Prefork {
    config: Config,
    http: HttpConfig,
    hooks: Hooks,
}

impl std::fmt::Debug for Prefork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prefork")
            .field("config", &self.config)
            .field("http", &self.http)
            .field("hooks", &self.hooks)
            .finish()
    }
}

impl Default for Prefork {
    fn default() -> Self {
        Prefork::new()
    }
}

impl Prefork {
    /// A server with the defaults: one worker per usable CPU, shared socket, fork, 30 s
    /// graceful timeout, at most 10 crashes a minute.
    pub fn new() -> Self {
        Prefork {
            config: Config::default(),
            http: HttpConfig {
                header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
                ..HttpConfig::default()
            },
            hooks: Hooks::default(),
        }
    }

    /// How many worker processes to run. Default: [`default_workers`](crate::default_workers),
    /// the CPUs this process may use. 0 is refused when the server starts.
    ///
    /// ```
    /// let server = forklift::Prefork::new().workers(4);
    /// # let _ = server;
    /// ```
    pub fn workers(mut self, n: usize) -> Self {
        self.config.workers = n;
        self
    }

    /// Adds an address to listen on; repeat for several. See [`ListenAddr`] for the forms:
    /// `127.0.0.1:8080`, `[::]:8080`, `:8080`, `tcp4://:8080`, `unix:/path`.
    ///
    /// # Errors
    /// [`Error::InvalidAddress`] if the address cannot be parsed or resolved.
    ///
    /// ```
    /// let server = forklift::Prefork::new().listen("127.0.0.1:0")?.listen("[::1]:0")?;
    /// # let _ = server;
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn listen(self, addr: &str) -> Result<Self> {
        let addr: ListenAddr = addr.parse()?;
        Ok(self.listen_addr(addr))
    }

    /// Adds an already parsed address to listen on.
    ///
    /// ```
    /// let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    /// let server = forklift::Prefork::new().listen_addr(addr);
    /// # let _ = server;
    /// ```
    pub fn listen_addr(mut self, addr: impl Into<ListenAddr>) -> Self {
        self.config.addrs.push(addr.into());
        self
    }

    /// `false` (default): every worker accepts on the master's socket, and a new connection
    /// wakes one waiting worker (Linux: `EPOLLEXCLUSIVE`), passing over busy ones, and the
    /// workers take turns, so connections opened one by one go round them. `true`: one
    /// `SO_REUSEPORT` socket per worker, so the kernel spreads connections evenly. The
    /// master keeps each worker's socket across restarts, so a crash loses no queued
    /// connection. Unix socket addresses are always shared.
    ///
    /// ```
    /// let server = forklift::Prefork::new().reuse_port(true);
    /// # let _ = server;
    /// ```
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.config.reuse_port = on;
        self
    }

    /// The listen backlog. Default 4096 (the kernel caps it at `net.core.somaxconn`).
    ///
    /// ```
    /// let server = forklift::Prefork::new().backlog(16_384);
    /// # let _ = server;
    /// ```
    pub fn backlog(mut self, n: u32) -> Self {
        self.config.backlog = n;
        self
    }

    /// How workers are started: [`Spawn::Fork`] (default), [`Spawn::Exec`], or a command.
    ///
    /// ```
    /// let server = forklift::Prefork::new().spawn(forklift::Spawn::Exec);
    /// # let _ = server;
    /// ```
    pub fn spawn(mut self, spawn: Spawn) -> Self {
        self.config.spawn = spawn;
        self
    }

    /// Stop everything once more than `n` workers crashed within the recover window
    /// (fasthttp's `RecoverThreshold`). Off by default: a worker that crashes after it served
    /// is always respawned, with backoff while it keeps crashing, because a server that stops
    /// serves nobody. Whatever this says, the master stops when workers cannot boot: the first
    /// generation cannot become ready, or 10 spawns in a row of one slot fail before ready
    /// (about 30 s of retries with the backoff).
    ///
    /// ```
    /// let server = forklift::Prefork::new().recover_threshold(3);
    /// # let _ = server;
    /// ```
    pub fn recover_threshold(mut self, n: usize) -> Self {
        self.config.recover_threshold = Some(n);
        self
    }

    /// The window crashes are counted over (default 60 s).
    ///
    /// ```
    /// let window = std::time::Duration::from_secs(300);
    /// let server = forklift::Prefork::new().recover_window(window);
    /// # let _ = server;
    /// ```
    pub fn recover_window(mut self, window: Duration) -> Self {
        self.config.recover_window = window;
        self
    }

    /// How long a graceful stop lets in-flight requests finish before workers are killed
    /// (default 30 s).
    ///
    /// ```
    /// let grace = std::time::Duration::from_secs(5);
    /// let server = forklift::Prefork::new().graceful_timeout(grace);
    /// # let _ = server;
    /// ```
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.config.graceful_timeout = timeout;
        self
    }

    /// How long a worker may take to report ready before it counts as failing to boot
    /// (default 60 s).
    ///
    /// ```
    /// let slow_start = std::time::Duration::from_secs(120);
    /// let server = forklift::Prefork::new().boot_timeout(slow_start);
    /// # let _ = server;
    /// ```
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.config.boot_timeout = timeout;
        self
    }

    /// How long a worker's event loop may go without a heartbeat before the master kills it
    /// (SIGABRT, then SIGKILL) and starts another: a handler stuck in a busy loop or a
    /// deadlock. Default 30 s; `None` turns the check off. HTTP workers send a heartbeat
    /// every second from their event loop; raw workers are not checked.
    ///
    /// ```
    /// let server = forklift::Prefork::new().worker_timeout(Some(std::time::Duration::from_secs(10)));
    /// # let _ = server;
    /// ```
    pub fn worker_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.worker_timeout = timeout;
        self
    }

    /// Pin worker `i` to the `i`-th CPU this process may use (`sched_setaffinity`), so each
    /// worker keeps its core's caches. In reuseport mode each worker's socket also asks the
    /// kernel (`SO_INCOMING_CPU`) to prefer it for connections that arrive on that CPU.
    /// Off by default.
    ///
    /// ```
    /// let server = forklift::Prefork::new().pin_workers(true);
    /// # let _ = server;
    /// ```
    pub fn pin_workers(mut self, on: bool) -> Self {
        self.config.pin_workers = on;
        self
    }

    /// Run workers as this user (and its primary group, unless [`group`](Prefork::group)
    /// says otherwise): the master binds as root, each worker drops its privileges before
    /// running any of its code. The master stays root to bind new sockets (TTIN) and to start
    /// workers. A user that does not exist is an error at start.
    ///
    /// ```
    /// let server = forklift::Prefork::new().listen("0.0.0.0:80")?.user("www-data");
    /// # let _ = server;
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn user(mut self, name: impl Into<String>) -> Self {
        self.config.user = Some(name.into());
        self
    }

    /// Run workers with this group; see [`user`](Prefork::user).
    ///
    /// ```
    /// let server = forklift::Prefork::new().user("nobody").group("nogroup");
    /// # let _ = server;
    /// ```
    pub fn group(mut self, name: impl Into<String>) -> Self {
        self.config.group = Some(name.into());
        self
    }

    /// How long a graceful stop (TERM, QUIT, `stop`) keeps serving before it stops accepting
    /// (default: zero). The host reports unready at once (the health port's `/readyz` answers
    /// 503, systemd hears `STOPPING=1`), and for the delay keeps accepting and serving, with
    /// `Connection: close` on HTTP/1 responses and a GOAWAY on HTTP/2 connections (at once
    /// on those open, after the first request on those opened during the delay) so clients
    /// move on; then it stops accepting, serves the connections already waiting in the
    /// accept queue, and finishes in-flight requests within the graceful timeout. Behind
    /// Kubernetes or a balancer with health checks, set it above the time the balancer takes
    /// to notice (a few probe periods; 5 s for checks every second): see docs/deploying.md.
    ///
    /// ```
    /// let server = forklift::Prefork::new().shutdown_delay(std::time::Duration::from_secs(5));
    /// # let _ = server;
    /// ```
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.config.shutdown_delay = delay;
        self
    }

    /// The binary a binary upgrade (USR2) executes. By default the one this process was
    /// invoked as (`argv[0]` as given, found on PATH if it has no slash; symlinks are not
    /// resolved), so a deploy that points a `current` symlink at a new release and sends
    /// USR2 starts the new release. Checked when the server starts.
    ///
    /// ```
    /// let server = forklift::Prefork::new().reexec_as("/srv/app/current/bin/app");
    /// # let _ = server;
    /// ```
    pub fn reexec_as(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.reexec_as = Some(path.into());
        self
    }

    /// Answer health checks on a TCP address of its own, from the master, so they work for
    /// any program (`forklift run` too): `GET /livez` (200 while the master runs),
    /// `GET /readyz` (200 while every worker slot has a ready worker and the host is neither
    /// draining nor stopping; 503 with the reason otherwise) and `GET /metrics` (Prometheus
    /// text format). The master never blocks on a client of this port. Kept across reloads
    /// and handed to the new master on a binary upgrade.
    ///
    /// ```
    /// let server = forklift::Prefork::new().health("127.0.0.1:9000".parse().unwrap());
    /// # let _ = server;
    /// ```
    pub fn health(mut self, addr: std::net::SocketAddr) -> Self {
        self.config.health = Some(addr);
        self
    }

    /// Answer commands on a Unix socket at `path` (mode 0600): `status` (a table of the
    /// workers: pid, generation, uptime, requests served, restarts), `reload`, `stop`, `incr`
    /// and `decr`, as the signals HUP, TERM, TTIN and TTOU would. See [`control`](crate::control()).
    ///
    /// ```
    /// let server = forklift::Prefork::new().control_socket("/run/app/forklift.ctl");
    /// # let _ = server;
    /// ```
    pub fn control_socket(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.control = Some(path.into());
        self
    }

    /// How the master learns that a worker serves: forklift's own channel (default), the
    /// worker's `READY=1` on systemd's notify protocol, or a delay. The last two are for
    /// [`Spawn::Command`] programs that are not built on forklift.
    ///
    /// ```
    /// use forklift::{Prefork, Readiness, Spawn};
    /// let server = Prefork::new()
    ///     .spawn(Spawn::command(|_| std::process::Command::new("my-python-server")))
    ///     .readiness(Readiness::Notify);
    /// # let _ = server;
    /// ```
    pub fn readiness(mut self, readiness: crate::spawn::Readiness) -> Self {
        self.config.readiness = readiness;
        self
    }

    /// Pass the workers' stdout and stderr through the master, line by line, so lines of
    /// several workers never interleave mid-line; with `prefix`, each line starts with
    /// `[worker ID pid PID] `. For workers started by exec or a command (a forked worker
    /// shares the master's streams).
    ///
    /// ```
    /// let server = forklift::Prefork::new().spawn(forklift::Spawn::Exec).relay_output(true);
    /// # let _ = server;
    /// ```
    pub fn relay_output(mut self, prefix: bool) -> Self {
        self.config.relay_output = Some(prefix);
        self
    }

    /// Whether the master raises its open-file limit (`RLIMIT_NOFILE`) from the soft value to
    /// the hard one as it starts, before it binds or spawns, so that every worker inherits it
    /// (default: on; nginx's `worker_rlimit_nofile`, and what Go's runtime does). The soft
    /// limit is often 1024, which a busy server reaches long before memory runs out; the
    /// master logs the change. Turn it off to keep the limit the process was started with.
    ///
    /// Programs run by [`Spawn::Command`] inherit the raised limit too: one that still
    /// uses `select(2)` must not be given fds past 1023, so keep the limit for it.
    ///
    /// ```
    /// let server = forklift::Prefork::new().raise_nofile_limit(false);
    /// # let _ = server;
    /// ```
    pub fn raise_nofile_limit(mut self, on: bool) -> Self {
        self.config.raise_nofile_limit = on;
        self
    }

    /// Replace each worker after about this many requests (plus a random `jitter` of up to
    /// that many, so workers do not all restart at once): a cap on slow leaks. The
    /// replacement is started first and the old worker drains once it serves, one worker at
    /// a time, so no request fails. Off by default.
    ///
    /// ```
    /// let server = forklift::Prefork::new().max_requests(100_000, 10_000);
    /// # let _ = server;
    /// ```
    pub fn max_requests(mut self, requests: u64, jitter: u64) -> Self {
        self.http.max_requests = Some((requests.max(1), jitter));
        self
    }

    /// Replace a worker whose resident memory (RSS) passes `bytes`: a cap on leaks and
    /// fragmentation (gunicorn users add a memory watchdog for this, puma users
    /// puma_worker_killer). The master reads each serving worker's RSS from
    /// `/proc/PID/statm` twice a second, so it works for any worker, raw ones and
    /// [`Spawn::Command`] programs included (the worker process itself, not its children).
    /// The RSS of a forked worker counts the pages it still shares with the master (a few
    /// MiB). As with [`max_requests`](Prefork::max_requests), the replacement starts first
    /// and the old worker drains once it serves, one worker at a time, and the master logs
    /// why (`worker 0 (pid 1234) uses 300 MiB of memory (resident), over its limit of 256
    /// MiB: replacing it`). A limit below what a fresh worker uses replaces workers over
    /// and over. Off by default. Linux only: elsewhere the master says once, at start, that
    /// it ignores the setting.
    ///
    /// ```
    /// let server = forklift::Prefork::new().max_worker_memory(512 << 20); // 512 MiB
    /// # let _ = server;
    /// ```
    pub fn max_worker_memory(mut self, bytes: u64) -> Self {
        self.config.max_worker_memory = Some(bytes);
        self
    }

    /// Replace a worker once it has run this long (gunicorn#124, asked since 2010): the
    /// replacement starts first and the old worker drains once it serves, one worker at a
    /// time, as for [`max_requests`](Prefork::max_requests). Workers started together reach
    /// the age together and are then replaced one after another; there is no jitter. The
    /// master checks twice a second. Off by default.
    ///
    /// ```
    /// let day = std::time::Duration::from_secs(24 * 3600);
    /// let server = forklift::Prefork::new().max_worker_age(day);
    /// # let _ = server;
    /// ```
    pub fn max_worker_age(mut self, age: Duration) -> Self {
        self.config.max_worker_age = Some(age);
        self
    }

    /// How long a client may take to send a request's headers before the connection is
    /// closed (default 30 s): the defence against slowloris.
    ///
    /// ```
    /// let patience = std::time::Duration::from_secs(5);
    /// let server = forklift::Prefork::new().header_read_timeout(patience);
    /// # let _ = server;
    /// ```
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.http.header_read_timeout = timeout;
        self
    }

    /// How long an HTTP/1 connection may wait idle between requests before it is closed
    /// (default 75 s, [`DEFAULT_KEEP_ALIVE_TIMEOUT`](crate::DEFAULT_KEEP_ALIVE_TIMEOUT)).
    /// Set it above the idle timeout of the balancer in front (AWS ALB: 60 s; Envoy: 1 h),
    /// so that the balancer never sends a request on a connection the server is closing.
    /// The time runs from the moment the previous response is sent to the next request's
    /// first byte; from there the [header-read timeout](Prefork::header_read_timeout)
    /// applies. Zero turns keep-alive off: each connection closes after one response.
    ///
    /// ```
    /// let envoy = std::time::Duration::from_secs(3600 + 5);
    /// let server = forklift::Prefork::new().keep_alive_timeout(envoy);
    /// # let _ = server;
    /// ```
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.http.keep_alive_timeout = timeout;
        self
    }

    /// Whether workers accept a TCP connection only once the client has sent its first bytes
    /// (default: on; Linux's `TCP_DEFER_ACCEPT`, nginx's `listen ... deferred`). A worker
    /// then never wakes up for a connection with nothing to read, which saves about a sixth
    /// of the CPU a connection costs when each carries one request. A client that connects
    /// and sends nothing is handed to a worker after about a second, and the header-read
    /// timeout closes it from then. Applies to [`serve`](Prefork::serve) only: in the raw
    /// form a protocol may have the server speak first.
    ///
    /// ```
    /// let server = forklift::Prefork::new().defer_accept(false);
    /// # let _ = server;
    /// ```
    pub fn defer_accept(mut self, on: bool) -> Self {
        self.http.defer_accept = on;
        self
    }

    /// The most connections each worker holds open at once (nginx's `worker_connections`).
    /// A worker with `n` open connections stops accepting until one closes: further
    /// connections wait in the listen backlog (the kernel completes their handshake; in
    /// shared-socket mode another worker may take them) instead of the worker running out of
    /// file descriptors (EMFILE) and accepting in fits. Each waiting client is served as soon
    /// as a connection closes; idle keep-alive connections count, and are closed by the
    /// header-read timeout. Default: no limit (the open-file limit, which the master raises,
    /// is then the bound). Applies to [`serve`](Prefork::serve) only.
    ///
    /// ```
    /// let server = forklift::Prefork::new().max_connections(10_000);
    /// # let _ = server;
    /// ```
    pub fn max_connections(mut self, n: usize) -> Self {
        self.http.max_connections = Some(n.max(1));
        self
    }

    /// Whether simple HTTP/1 requests (no body, no upgrade) are parsed and answered by
    /// forklift's own HTTP/1 code instead of hyper's (default: on). It answers as hyper
    /// would, with less work per request; requests with a body, upgrades, HTTP/2 and any
    /// head it does not take go to hyper on the same connection. Turn it off to serve
    /// everything with hyper.
    ///
    /// ```
    /// let server = forklift::Prefork::new().http1_fast_path(false); // hyper only
    /// # let _ = server;
    /// ```
    pub fn http1_fast_path(mut self, on: bool) -> Self {
        self.http.fast_path = on;
        self
    }

    /// Serves HTTPS with the PEM certificate chain and private key in these files (note the
    /// order: certificate first, unlike fasthttp's `ListenAndServeTLS`). Both are read
    /// before any worker starts, so a missing file, a malformed PEM or a key that does not
    /// match the certificate is an error from `serve`; each worker reads them again as it
    /// boots, so workers started later serve a renewed certificate. ALPN offers h2 and
    /// http/1.1. TLS applies to every listen address.
    ///
    /// Call it again (or [`tls_pem`](Prefork::tls_pem)) for more certificates, chosen by the
    /// client's SNI among the DNS names of each one's subjectAltName (`*.` wildcards one label
    /// deep); the first is served to clients that send no SNI or an unknown name. With several,
    /// each must name at least one host and no name may be in two of them.
    ///
    /// Sessions resume by stateless tickets every worker opens (after a reload or a binary
    /// upgrade too): see [`tls_ticket_rotation`](Prefork::tls_ticket_rotation) and
    /// [`tls_ticket_key_file`](Prefork::tls_ticket_key_file).
    ///
    /// ```
    /// # let dir = std::env::temp_dir().join(format!("forklift-doc-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir).unwrap();
    /// # let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    /// # std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    /// # std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    /// # let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    /// forklift::Prefork::new()
    ///     .workers(1)
    ///     .listen("127.0.0.1:0")?
    ///     .tls_files(&cert, &key)
    ///     .on_master_ready(|_| { forklift::request_stop(true); Ok(()) })
    ///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })?;
    /// // A key that is not the certificate's is refused before any worker starts.
    /// let err = forklift::Prefork::new()
    ///     .listen("127.0.0.1:0")?
    ///     .tls_files(&cert, &cert)
    ///     .serve(|| hyper::service::service_fn(|_| async {
    ///         Ok::<_, std::convert::Infallible>(hyper::Response::new(String::new()))
    ///     }))
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("no private key"), "{err}");
    /// # std::fs::remove_dir_all(&dir).unwrap();
    /// # Ok::<(), forklift::Error>(())
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_files(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        self.http
            .tls
            .certs
            .push(crate::http::tls::TlsSource::Files {
                cert: cert.into(),
                key: key.into(),
            });
        self
    }

    /// Forgets the certificates given so far (HTTPS off until one is given again): for an
    /// [`on_reload`](Prefork::on_reload) hook that gives the list anew, as
    /// [`tls_files`](Prefork::tls_files) adds to it.
    ///
    /// ```
    /// let mut server = forklift::Prefork::new().tls_files("old.pem", "old.key");
    /// server = server.tls_clear().tls_files("new.pem", "new.key");
    /// # let _ = server;
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_clear(mut self) -> Self {
        self.http.tls.certs.clear();
        self
    }

    /// Serves HTTPS with a PEM certificate chain and private key held in memory
    /// (fasthttp's `ListenAndServeTLSEmbed`). Checked as [`tls_files`](Prefork::tls_files)
    /// checks its files, and, like it, adds one more certificate at each call.
    ///
    /// ```no_run
    /// let cert = std::fs::read("cert.pem").unwrap();
    /// let key = std::fs::read("key.pem").unwrap();
    /// let server = forklift::Prefork::new().listen("127.0.0.1:8443")?.tls_pem(cert, key);
    /// # let _ = server;
    /// # Ok::<(), forklift::Error>(())
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.http.tls.certs.push(crate::http::tls::TlsSource::Pem {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// How often the TLS session-ticket key changes (default: every hour; at least a
    /// second). Every worker derives the key of the current period from one secret the
    /// master makes before it starts any (nginx shares its ticket keys the same way), so a
    /// client resumes on whichever worker takes its next connection, and on the workers of a
    /// reload (HUP) or a binary upgrade (USR2), which get the same secret. A ticket opens
    /// during the period it was issued in and the next one; an older ticket gets a full
    /// handshake. Clients are told the period as the ticket lifetime.
    ///
    /// ```
    /// let server = forklift::Prefork::new().tls_ticket_rotation(std::time::Duration::from_secs(600));
    /// # let _ = server;
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_ticket_rotation(mut self, period: std::time::Duration) -> Self {
        self.http.tls.ticket_rotation = period.max(std::time::Duration::from_secs(1));
        self
    }

    /// Takes the secret of the TLS session-ticket keys from this file instead of the master
    /// (nginx's `ssl_session_ticket_key`): hosts that share the file resume each other's
    /// sessions behind a load balancer. It must hold at least 32 bytes (`openssl rand 80 >
    /// FILE`), all of which are used; keep it private. Read before any worker starts (a
    /// missing or short file is an error from `serve`) and by each worker as it boots, so a
    /// reload (HUP) picks up a new file. Keys still rotate as
    /// [`tls_ticket_rotation`](Prefork::tls_ticket_rotation) says, by the clock, so hosts'
    /// clocks should agree to within a period.
    ///
    /// ```
    /// let server = forklift::Prefork::new().tls_ticket_key_file("/etc/forklift/tickets.key");
    /// # let _ = server;
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_ticket_key_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.http.tls.ticket_key_file = Some(path.into());
        self
    }

    /// Logs one line per request (method, path, status, bytes, duration, client address,
    /// HTTP version, request id, user agent, referer, TLS version, and the worker, from its
    /// span) through `tracing`, target `forklift::access`, level INFO. Each request gets an
    /// id, a sane incoming `x-request-id` or a generated one, also set on the response. Off
    /// by default: on a hot server it costs a formatted line per request
    /// ([`access_log_file`](Prefork::access_log_file) costs less than a tracing
    /// subscriber's formatting).
    ///
    /// This and [`access_log_file`](Prefork::access_log_file) replace each other: the last
    /// one called says where the lines go (`access_log(false)` turns the log off, file and
    /// all). So a reload's [`http`](crate::ReloadSettings::http) edit can move the log
    /// between a file, `tracing` and off.
    ///
    /// ```
    /// // Lines go wherever the program's tracing subscriber sends them.
    /// let server = forklift::Prefork::new().access_log(true);
    /// # let _ = server;
    /// ```
    pub fn access_log(mut self, on: bool) -> Self {
        self.http.access_log = on;
        self.config.access_log_file = None;
        self
    }

    /// Gives every request on a TCP listener its client's address as a
    /// [`ClientAddr`](crate::ClientAddr) request extension, read with
    /// `req.extensions().get::<forklift::ClientAddr>()`. It is on whenever the access log or
    /// the [PROXY protocol](Prefork::proxy_protocol) is; this turns it on without them. Off by
    /// default because inserting an extension costs allocations per request (measured with
    /// `bench/instructions`: 7,634 against 6,961 instructions per keep-alive request on the
    /// HTTP/1 fast path, 9.7% more).
    /// Requests on Unix-socket listeners have none.
    ///
    /// ```
    /// let server = forklift::Prefork::new().client_addr(true);
    /// # let _ = server;
    /// ```
    pub fn client_addr(mut self, on: bool) -> Self {
        self.http.client_addr = on;
        self
    }

    /// Takes HAProxy's PROXY protocol (versions 1 and 2, told apart by their first bytes) on
    /// the TCP listeners, from the proxies in `trusted`: ranges such as `"10.0.0.0/8"`,
    /// `"fd00::/8"` or single addresses such as `"127.0.0.1"`. Every connection must then
    /// start with a PROXY header, read within the header-read timeout and before TLS; the
    /// client address it names becomes the requests' [`ClientAddr`](crate::ClientAddr) (a v2
    /// LOCAL header, a proxy's own health check, keeps the proxy's address). A connection from
    /// a source outside `trusted`, or without a valid header, is closed without an answer
    /// (each worker says so once at WARN, then at DEBUG). There is no default range: list the
    /// balancers' addresses. Applies to [`serve`](Prefork::serve) and
    /// `serve_tower` only: in [`run`](Prefork::run) the program
    /// accepts its own connections. Unix-socket listeners are not affected.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a range that is not an address or `ADDRESS/PREFIX`, or for an
    /// empty list.
    ///
    /// ```
    /// let server = forklift::Prefork::new().proxy_protocol(["10.0.0.0/8", "::1"])?;
    /// # let _ = server;
    /// let err = forklift::Prefork::new().proxy_protocol(["10.0.0.0/40"]).unwrap_err();
    /// assert!(err.to_string().contains("prefix length must be 0 to 32"), "{err}");
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn proxy_protocol<I>(mut self, trusted: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let proxy = crate::http::proxy::ProxyProtocol::parse(trusted).map_err(Error::Config)?;
        self.http.proxy_protocol = Some(proxy);
        Ok(self)
    }

    /// Turns the access log on and writes it to the file at `path` (created, appended to)
    /// instead of through `tracing`: one line per request, each with one write(2), in the
    /// [`log_format`](Prefork::log_format) chosen. Each worker opens the file; USR1 to the
    /// master (or `reopen-logs` on the control socket) has them reopen it, for logrotate.
    /// The lines name the client ([`ClientAddr`](crate::ClientAddr)), HTTP version, user
    /// agent, referer, TLS version and a request id (a sane incoming `x-request-id`, or a
    /// generated one), which is also set on the response. With [`user`](Prefork::user), the
    /// master creates the file (and each new one at a reopen) owned by the workers' user, as
    /// nginx does, so that they may open it.
    ///
    /// `serve` opens the file once before binding, so a missing directory fails at once. A
    /// reload whose [`http`](crate::ReloadSettings::http) edit names another file has the
    /// master open that one before the new generation starts (a failure refuses the reload);
    /// the new workers write there, the old ones to the old file until they exit.
    ///
    /// ```
    /// let server = forklift::Prefork::new().access_log_file("/var/log/forklift/access.log");
    /// # let _ = server;
    /// ```
    pub fn access_log_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.http.access_log = true;
        self.config.access_log_file = Some(path.into());
        self
    }

    /// The form of the access log's lines in its file (see
    /// [`access_log_file`](Prefork::access_log_file)): text (default) or JSON, one object a
    /// line. Lines through `tracing` take the subscriber's form.
    ///
    /// ```
    /// let server = forklift::Prefork::new().log_format(forklift::LogFormat::Json);
    /// # let _ = server;
    /// ```
    pub fn log_format(mut self, format: crate::LogFormat) -> Self {
        self.http.log_format = format;
        self
    }

    /// Sends the master's and the workers' stderr (tracing output, panics) to the file at
    /// `path`, appended to, and reopens it on USR1 or `reopen-logs` (the master its own, each
    /// worker its own), so logrotate can rename it. Opened before binding: a missing
    /// directory fails at once. Programs run by [`Spawn::Command`](crate::Spawn::Command)
    /// inherit the file as their stderr and are not told to reopen it; with
    /// [`relay_output`](Prefork::relay_output) the master writes their lines, and they follow.
    ///
    /// ```
    /// let server = forklift::Prefork::new().error_log("/var/log/forklift/error.log");
    /// # let _ = server;
    /// ```
    pub fn error_log(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.error_log = Some(path.into());
        self
    }

    /// Writes the master's pid to the file at `path` (atomically: a temporary file renamed)
    /// once every worker serves, and removes it when the master exits if it still holds this
    /// master's pid. After a binary upgrade (USR2) the new master writes its own pid, and the
    /// old one leaves that file alone. The directory is checked before binding.
    ///
    /// ```
    /// let server = forklift::Prefork::new().pid_file("/run/forklift.pid");
    /// # let _ = server;
    /// ```
    pub fn pid_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.config.pid_file = Some(path.into());
        self
    }

    /// Called in the master after each worker is started, with its pid. An error stops the
    /// server and is returned by `serve`/`run`.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// let pids = Arc::new(Mutex::new(Vec::new()));
    /// let seen = pids.clone();
    /// forklift::Prefork::new()
    ///     .workers(2)
    ///     .listen("127.0.0.1:0")?
    ///     .on_worker_spawn(move |w| { seen.lock().unwrap().push(w.pid); Ok(()) })
    ///     .on_master_ready(|_| { forklift::request_stop(true); Ok(()) })
    ///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })?;
    /// assert_eq!(pids.lock().unwrap().len(), 2);
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn on_worker_spawn(
        mut self,
        hook: impl FnMut(&WorkerInfo) -> Result<(), BoxError> + Send + 'static,
    ) -> Self {
        self.hooks.on_worker_spawn = Some(Box::new(hook));
        self
    }

    /// Called in the master once every worker of the first generation serves. An error stops
    /// the server and is returned by `serve`/`run`.
    ///
    /// ```
    /// // A hook's error aborts start-up and is what serve/run return.
    /// let err = forklift::Prefork::new()
    ///     .workers(1)
    ///     .listen("127.0.0.1:0")?
    ///     .on_master_ready(|workers| Err(format!("{} workers are not enough", workers.len()).into()))
    ///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "hook on_master_ready failed: 1 workers are not enough");
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn on_master_ready(
        mut self,
        hook: impl FnMut(&[WorkerInfo]) -> Result<(), BoxError> + Send + 'static,
    ) -> Self {
        self.hooks.on_master_ready = Some(Box::new(hook));
        self
    }

    /// Called in the master when a crashed worker has been replaced: (crashed, replacement).
    /// It follows the replacement's `on_worker_spawn`.
    ///
    /// ```
    /// let server = forklift::Prefork::new().on_worker_recover(|old, new| {
    ///     eprintln!("worker {}: pid {} crashed, pid {} took over", new.id, old.pid, new.pid)
    /// });
    /// # let _ = server;
    /// ```
    pub fn on_worker_recover(
        mut self,
        hook: impl FnMut(&WorkerInfo, &WorkerInfo) + Send + 'static,
    ) -> Self {
        self.hooks.on_worker_recover = Some(Box::new(hook));
        self
    }

    /// Called in the master whenever a worker process ends, crashed or stopped.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// let statuses = Arc::new(Mutex::new(Vec::new()));
    /// let record = statuses.clone();
    /// forklift::Prefork::new()
    ///     .workers(1)
    ///     .listen("127.0.0.1:0")?
    ///     .on_worker_exit(move |_, status| record.lock().unwrap().push(status))
    ///     .on_master_ready(|_| { forklift::request_stop(true); Ok(()) })
    ///     // A raw worker keeps TERM's default action: the graceful stop kills it.
    ///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })?;
    /// assert_eq!(*statuses.lock().unwrap(), [forklift::ExitStatus::Signaled(15)]);
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn on_worker_exit(
        mut self,
        hook: impl FnMut(&WorkerInfo, ExitStatus) + Send + 'static,
    ) -> Self {
        self.hooks.on_worker_exit = Some(Box::new(hook));
        self
    }

    /// Called in a worker when its master has died (however it died), before the worker
    /// drains its connections and exits. Without it the worker just drains and exits.
    ///
    /// ```
    /// let server = forklift::Prefork::new()
    ///     .on_master_death(|| eprintln!("worker {}: master gone, draining", std::process::id()));
    /// # let _ = server;
    /// ```
    pub fn on_master_death(mut self, hook: impl Fn() + Send + Sync + 'static) -> Self {
        self.hooks.on_master_death = Some(Arc::new(hook));
        self
    }

    /// A builder holding `http` (for [`ReloadSettings::http`](crate::ReloadSettings::http)).
    pub(crate) fn with_http(http: HttpConfig) -> Prefork {
        let mut server = Prefork::new();
        // The access log's file is set on the config (the master creates it for the
        // workers); carry it both ways so a reload's edit can keep or change it.
        server.config.access_log_file = http.access_log_file.clone();
        Prefork { http, ..server }
    }

    /// Its HTTP settings, the access log's file included.
    pub(crate) fn into_http(mut self) -> HttpConfig {
        self.http.access_log_file = self.config.access_log_file;
        self.http
    }

    /// Refuses settings the master could not run with, as `serve`/`run` would before binding
    /// (for `forklift check`). Not part of the API.
    #[doc(hidden)]
    pub fn __validate(&self) -> Result<()> {
        self.config.validate()
    }

    /// Called in the master when a rolling reload (SIGHUP, `reload` on the control socket,
    /// [`request_reload`](crate::request_reload)) is asked for, before the new generation
    /// starts, with the settings it may change (worker count, timeouts, limits): re-read a
    /// configuration file here. The master applies what the hook leaves in
    /// [`ReloadSettings`](crate::ReloadSettings) to the new generation and the ones after.
    /// Fork-mode workers inherit the master's memory, so whatever the hook changes in the
    /// master (its own state) reaches the new workers too.
    ///
    /// An error refuses the reload: the master keeps its settings and its workers, logs the
    /// error, emits [`Event::ReloadFailed`](crate::Event::ReloadFailed), and the control
    /// socket answers `error: reload refused: ...`. So does a setting the master cannot run
    /// with (0 workers).
    ///
    /// ```
    /// use forklift::Event;
    /// use std::sync::{Arc, Mutex};
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let mut reloads = 0;
    /// forklift::Prefork::new()
    ///     .workers(1)
    ///     .listen("127.0.0.1:0")?
    ///     // A real hook re-reads a file; this one asks for 2 workers, then fails.
    ///     .on_reload(move |settings| {
    ///         reloads += 1;
    ///         if reloads > 1 {
    ///             return Err("forklift.toml:3: workers: not a number".into());
    ///         }
    ///         settings.workers = 2;
    ///         Ok(())
    ///     })
    ///     .on_event(move |e| match e {
    ///         Event::MasterReady(_) => forklift::request_reload(),
    ///         Event::GenerationReady { workers, .. } => {
    ///             log.lock().unwrap().push(format!("{} workers", workers.len()));
    ///             forklift::request_reload();
    ///         }
    ///         Event::ReloadFailed { reason, .. } => {
    ///             log.lock().unwrap().push(reason.clone());
    ///             forklift::request_stop(true);
    ///         }
    ///         _ => {}
    ///     })
    ///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })?;
    /// assert_eq!(
    ///     *seen.lock().unwrap(),
    ///     ["2 workers", "hook on_reload failed: forklift.toml:3: workers: not a number"]
    /// );
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn on_reload(
        mut self,
        hook: impl FnMut(&mut crate::ReloadSettings) -> Result<(), BoxError> + Send + 'static,
    ) -> Self {
        self.hooks.on_reload = Some(Box::new(hook));
        self
    }

    /// Called in the master with every lifecycle [`Event`](crate::Event), before the matching
    /// hook.
    ///
    /// ```
    /// use forklift::Event;
    /// use std::sync::{Arc, Mutex};
    /// let events = Arc::new(Mutex::new(Vec::new()));
    /// let log = events.clone();
    /// forklift::Prefork::new()
    ///     .workers(1)
    ///     .listen("127.0.0.1:0")?
    ///     .on_event(move |e| {
    ///         if matches!(e, Event::MasterReady(_)) { forklift::request_stop(true) }
    ///         log.lock().unwrap().push(format!("{e:?}"));
    ///     })
    ///     .run(|worker| { worker.ready()?; loop { std::thread::park() } })?;
    /// let events = events.lock().unwrap();
    /// assert!(events[0].starts_with("Listening"));
    /// assert!(events[1].starts_with("WorkerSpawned"));
    /// assert!(events[2].starts_with("WorkerReady"));
    /// assert!(events[3].starts_with("MasterReady"));
    /// # Ok::<(), forklift::Error>(())
    /// ```
    pub fn on_event(mut self, hook: impl FnMut(&crate::Event) + Send + 'static) -> Self {
        self.hooks.on_event = Some(Box::new(hook));
        self
    }

    /// Serves HTTP/1.1 and HTTP/2 with the service `factory` builds, called once in each
    /// worker. Blocks until the server stops: returns `Ok(())` after TERM, QUIT or INT, and
    /// an error if it could not start or its workers kept failing. In a worker it never
    /// returns.
    ///
    /// The service need not be `Send`: each worker serves on its own single-threaded runtime.
    ///
    /// ```
    /// # use std::convert::Infallible;
    /// # use http_body_util::Full;
    /// # use hyper::{body::Bytes, service::service_fn, Request, Response};
    /// async fn hello(_: Request<forklift::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    ///     Ok(Response::new(Full::new(Bytes::from("hello"))))
    /// }
    /// // Serving on a taken port fails before any worker starts.
    /// let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let err = forklift::Prefork::new()
    ///     .listen_addr(taken.local_addr().unwrap())
    ///     .serve(|| service_fn(hello))
    ///     .unwrap_err();
    /// assert!(matches!(err, forklift::Error::AddrInUse { .. }), "{err}");
    /// ```
    ///
    /// # Errors
    /// A bad or taken address, a worker that cannot boot, too many crashes, a failing hook.
    pub fn serve<F, S, B>(mut self, factory: F) -> Result<()>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: hyper::service::Service<hyper::Request<crate::Body>, Response = hyper::Response<B>>
            + Clone
            + 'static,
        S::Future: 'static,
        S::Error: Into<BoxError>,
        B: hyper::body::Body + 'static,
        B::Error: Into<BoxError>,
    {
        let mut http = self.http.clone();
        http.graceful_timeout = self.config.graceful_timeout;
        http.error_log = self.config.error_log.clone();
        http.access_log_file = self.config.access_log_file.clone();
        if let (Some(path), false) = (&http.access_log_file, worker::is_worker()) {
            // Fail before binding or starting anything; each worker opens it as it boots.
            crate::master::logs::open_access_log(path, None)?;
        }
        #[cfg(feature = "tls")]
        if http.tls.is_on() && !worker::is_worker() {
            // Fail before binding or starting anything; workers load it again as they boot.
            http.tls.check()?;
            if http.tls.ticket_key_file.is_none() {
                crate::http::tickets::use_master_secret();
            }
        }
        let on_death = self.hooks.on_master_death.clone();
        // A reload may change the HTTP settings; fork-mode workers read them as they start.
        let http = Arc::new(std::sync::Mutex::new(http));
        (self.hooks.on_reload, self.hooks.revert_reload) =
            crate::reload_settings::share_http(self.hooks.on_reload.take(), http.clone());
        self.run(move |worker| {
            let http = http
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            http::serve(worker, &factory, &http, on_death.as_deref())
        })
    }

    /// Serves HTTP with a tower `Service` (an axum `Router`, tower-http middleware, ...) that
    /// `factory` builds once in each worker. Otherwise as [`serve`](Prefork::serve).
    ///
    /// ```no_run
    /// # #[cfg(feature = "tower")] {
    /// use std::convert::Infallible;
    /// use http_body_util::Full;
    /// use hyper::{body::Bytes, Request, Response};
    ///
    /// #[derive(Clone)]
    /// struct Hello;
    ///
    /// impl tower_service::Service<Request<forklift::Body>> for Hello {
    ///     type Response = Response<Full<Bytes>>;
    ///     type Error = Infallible;
    ///     type Future = std::future::Ready<Result<Self::Response, Infallible>>;
    ///     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
    ///         std::task::Poll::Ready(Ok(()))
    ///     }
    ///     fn call(&mut self, _: Request<forklift::Body>) -> Self::Future {
    ///         std::future::ready(Ok(Response::new(Full::new(Bytes::from("hello")))))
    ///     }
    /// }
    ///
    /// forklift::Prefork::new().listen("127.0.0.1:8080")?.serve_tower(|| Hello)?;
    /// # }
    /// # Ok::<(), forklift::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`serve`](Prefork::serve).
    #[cfg(feature = "tower")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
    pub fn serve_tower<F, S, B>(self, factory: F) -> Result<()>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: tower_service::Service<hyper::Request<crate::Body>, Response = hyper::Response<B>>
            + Clone
            + 'static,
        S::Future: 'static,
        S::Error: Into<BoxError>,
        B: hyper::body::Body + 'static,
        B::Error: Into<BoxError>,
    {
        self.serve(move || hyper_util::service::TowerToHyperService::new(factory()))
    }

    /// The raw form: runs `worker_main` in each worker with its listeners, for any protocol or
    /// framework. `worker_main` must call [`Worker::ready`] once it serves, and return when it
    /// is done; an error or panic before `ready` stops the master (the worker failed to boot).
    /// Worker signal dispositions are the defaults, so TERM ends a raw worker unless it
    /// handles TERM itself.
    ///
    /// ```
    /// use std::io::Write;
    /// forklift::Prefork::new()
    ///     .workers(2)
    ///     .listen("127.0.0.1:0")?
    ///     .on_master_ready(|_| { forklift::request_stop(true); Ok(()) }) // an example: stop at once
    ///     .run(|worker| {
    ///         let forklift::Listener::Tcp(listener) = worker.take_listeners().remove(0) else {
    ///             return Err("expected TCP".into());
    ///         };
    ///         worker.ready()?;
    ///         for conn in listener.incoming() {
    ///             conn?.write_all(b"hello\n")?;
    ///         }
    ///         Ok(())
    ///     })?;
    /// # Ok::<(), forklift::Error>(())
    /// ```
    ///
    /// # Errors
    /// As for [`serve`](Prefork::serve).
    pub fn run<F>(self, worker_main: F) -> Result<()>
    where
        F: Fn(&mut Worker) -> Result<(), BoxError> + Send + Sync + 'static,
    {
        match Worker::from_env() {
            Ok(Some(w)) => worker::run(w, &worker_main),
            Ok(None) => {}
            Err(e) => return Err(Error::io("reading the worker environment", e)),
        }
        let main: Arc<WorkerMain> = Arc::new(worker_main);
        master::run(self.config, self.hooks, main)
    }
}
