//! `forklift`: the command-line face of the forklift library.
//!
//! `forklift serve` runs the built-in pre-forked HTTP server: the demo and the benchmark
//! target. It answers `GET /` with `greeting!!!` (the seeds' workload) and `GET /sleep?ms=N`
//! after N milliseconds, and every response names its worker in `x-forklift-worker`.
//!
//! Lifecycle lines go to stdout, one per event, as `key=value` so scripts can follow them;
//! logs go to stderr through `tracing` (RUST_LOG honoured).

use std::convert::Infallible;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http::header::{HeaderName, HeaderValue, ALLOW, CONTENT_TYPE};
use http::{Method, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};

use forklift::{Event, Prefork, Spawn};

mod check;
mod deploy;
mod lab;
mod logs;
mod reload;
mod settings;
mod single;
mod static_files;
mod tool;

/// Run a network server as a supervised pool of pre-forked worker processes: one per core,
/// all serving the same port.
#[derive(Debug, Parser)]
#[command(name = "forklift", version = tool::VERSION, about, long_about = None)]
struct Cli {
    /// Read settings from this TOML file (keys are the long option names; see
    /// docs/configuration.md). Flags and FORKLIFT_<OPTION> variables override it
    #[arg(long, global = true, value_name = "PATH", env = settings::CONFIG_ENV)]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the built-in HTTP demo (GET / answers "greeting!!!") from pre-forked workers.
    ///
    /// Signals to the master: TERM or QUIT stop gracefully (in-flight requests finish, up to
    /// --graceful-timeout); INT (Ctrl-C) stops fast. Lifecycle lines go to stdout, logs to
    /// stderr (set RUST_LOG, e.g. RUST_LOG=debug).
    Serve(Box<ServeArgs>),
    /// Pre-fork any program that accepts an inherited socket (systemd's LISTEN_FDS protocol):
    /// the master binds, starts N copies of COMMAND with the sockets as fds 3.. and
    /// LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES and FORKLIFT_WORKER_ID set, and supervises them
    /// (respawn with backoff, crash-loop stop, TERM for a graceful stop, HUP rolling reload,
    /// TTIN/TTOU). A worker is ready when it sends READY=1 to its NOTIFY_SOCKET, or, for
    /// programs that do not, once it has run for --ready-after seconds.
    ///
    /// Example: forklift run --listen 127.0.0.1:8000 -- gunicorn --bind fd://3 app:app
    #[command(arg_required_else_help = true)]
    Run(Box<RunArgs>),
    /// Print the workers of a running master (pid, generation, uptime, requests, restarts).
    Status(StatusArgs),
    /// Rolling reload of a running master, as SIGHUP. With --wait, returns once the new
    /// generation serves (exit 0) or was given up (exit 1, with the reason).
    Reload(WaitArgs),
    /// Binary upgrade of a running master, as SIGUSR2. With --wait, returns once the new
    /// master serves (exit 0) or failed (exit 1, with the reason; the old master serves on).
    Upgrade(WaitArgs),
    /// Graceful stop of a running master, as SIGTERM.
    Stop(ControlArgs),
    /// Take a running master out of its balancers' rotation: its health port's /readyz
    /// answers 503 while the workers keep serving.
    Drain(ControlArgs),
    /// Put a drained master back: /readyz answers 200 again.
    Undrain(ControlArgs),
    /// Check the settings of `serve` (the default) or `run` without binding or starting
    /// anything, like `nginx -t`: prints what it checked, exits 0, or each problem and 1.
    Check(check::CheckArgs),
    /// Print a shell completion script: forklift completions bash > /etc/bash_completion.d/forklift
    Completions(tool::CompletionArgs),
    /// Print forklift's manual page (roff): forklift man > forklift.1; forklift man serve >
    /// forklift-serve.1
    Man(tool::ManArgs),
    /// Reopen the log files of a running master and its workers (--error-log,
    /// --access-log PATH), as SIGUSR1: for logrotate's postrotate, after it renamed them.
    ReopenLogs(ControlArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    #[command(flatten)]
    pool: PoolArgs,

    #[command(flatten)]
    limits: LimitArgs,

    #[command(flatten)]
    privileges: PrivilegeArgs,

    #[command(flatten)]
    logs: logs::LogArgs,

    /// Kill and replace a worker that sent WATCHDOG=1 once and then nothing for this long;
    /// 0 turns the check off
    #[arg(long, value_name = "SECS", default_value_t = Secs(Duration::ZERO))]
    worker_timeout: Secs,

    /// Wait for READY=1 on the NOTIFY_SOCKET forklift gives each worker (sd_notify)
    #[arg(long, conflicts_with = "ready_after")]
    ready_notify: bool,

    /// Count a worker as ready once it has run this long (for programs that do not speak
    /// sd_notify)
    #[arg(long, value_name = "SECS", default_value_t = Secs(Duration::from_secs(1)))]
    ready_after: Secs,

    /// Prefix each line the workers print with [worker ID pid PID]
    #[arg(long)]
    prefix_output: bool,

    /// The program to run in each worker, and its arguments
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
}

#[derive(Debug, clap::Args)]
struct ControlArgs {
    /// The master's control socket (as given to `serve --control`)
    #[arg(long, value_name = "PATH", env = "FORKLIFT_CONTROL")]
    control: std::path::PathBuf,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    ctl: ControlArgs,

    /// One JSON object, for scripts
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct WaitArgs {
    #[command(flatten)]
    ctl: ControlArgs,

    /// Wait until it has served or failed, and say which in the exit status
    #[arg(long)]
    wait: bool,

    /// With --wait: give up waiting after this many seconds
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_secs)]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct PoolArgs {
    /// Address to listen on; repeat for several. Forms: 127.0.0.1:8080, [::1]:8080, :8080
    /// (all interfaces), tcp4://:8080, tcp6://[::]:8080, unix:/path/to.sock. Port 0 picks a
    /// free port.
    #[arg(
        short,
        long = "listen",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    listen: Vec<String>,

    /// Number of worker processes [default: the CPUs this process may use]
    #[arg(short, long, value_name = "N")]
    workers: Option<usize>,

    /// Give each worker its own SO_REUSEPORT socket instead of sharing one
    #[arg(long)]
    reuse_port: bool,

    /// Seconds a graceful stop waits for in-flight requests before killing workers
    #[arg(long, value_name = "SECS", default_value_t = Secs(forklift::DEFAULT_GRACEFUL_TIMEOUT))]
    graceful_timeout: Secs,

    /// Stop when more than N workers crash within the recover window (fasthttp's
    /// RecoverThreshold). Default: never; workers that served are always respawned, with
    /// backoff. Workers that cannot boot stop the server whatever this says
    #[arg(long, value_name = "N")]
    recover_threshold: Option<usize>,

    /// Seconds over which crashes are counted (for the log, and --recover-threshold)
    #[arg(long, value_name = "SECS", default_value_t = Secs(forklift::DEFAULT_RECOVER_WINDOW))]
    recover_window: Secs,

    /// Seconds a worker may take to report ready before it counts as failing to boot
    #[arg(long, value_name = "SECS", default_value_t = Secs(forklift::DEFAULT_BOOT_TIMEOUT))]
    boot_timeout: Secs,

    /// Answer `forklift status|reload|stop|drain|undrain|reopen-logs --control PATH` on a
    /// Unix socket (mode 0600)
    #[arg(long, value_name = "PATH")]
    control: Option<std::path::PathBuf>,

    /// Seconds a graceful stop keeps serving after it turns unready (/readyz 503), with
    /// connections closed after each request, before it stops accepting: set it above the
    /// time your balancer takes to notice (see docs/deploying.md)
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_secs)]
    shutdown_delay: Duration,

    /// What USR2 (binary upgrade) executes [default: the binary as invoked, symlinks not
    /// resolved, so swapping a `current` symlink upgrades to the new release]
    #[arg(long, value_name = "PATH")]
    reexec_as: Option<std::path::PathBuf>,

    /// Answer health checks from the master on this address: GET /livez, /readyz (503 while
    /// starting, draining or stopping) and /metrics (Prometheus)
    #[arg(long, value_name = "ADDR")]
    health: Option<std::net::SocketAddr>,

    /// Listen backlog (capped by net.core.somaxconn)
    #[arg(long, value_name = "N", default_value_t = forklift::DEFAULT_BACKLOG)]
    backlog: u32,
}

impl PoolArgs {
    /// The pool settings `serve` and `run` share.
    fn apply(&self, mut server: Prefork) -> forklift::Result<Prefork> {
        server = server
            .reuse_port(self.reuse_port)
            .graceful_timeout(self.graceful_timeout.0)
            .recover_window(self.recover_window.0)
            .boot_timeout(self.boot_timeout.0)
            .backlog(self.backlog);
        if let Some(n) = self.workers {
            server = server.workers(n);
        }
        if let Some(n) = self.recover_threshold {
            server = server.recover_threshold(n);
        }
        if let Some(path) = &self.control {
            server = server.control_socket(path);
        }
        if let Some(addr) = self.health {
            server = server.health(addr);
        }
        if let Some(path) = &self.reexec_as {
            server = server.reexec_as(path);
        }
        server = server.shutdown_delay(self.shutdown_delay);
        for addr in &self.listen {
            server = server.listen(addr)?;
        }
        Ok(server)
    }
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    pool: PoolArgs,

    #[command(flatten)]
    limits: LimitArgs,

    #[command(flatten)]
    privileges: PrivilegeArgs,

    #[command(flatten)]
    logs: logs::LogArgs,

    /// How workers are started: fork (fast, default) or exec (re-execute this binary)
    #[arg(long, value_enum, default_value_t = SpawnMode::Fork)]
    spawn: SpawnMode,

    /// Seconds a worker may go without a heartbeat before it is killed and replaced (a
    /// handler stuck in a loop); 0 turns the check off
    #[arg(long, value_name = "SECS", default_value_t = Secs(forklift::DEFAULT_WORKER_TIMEOUT))]
    worker_timeout: Secs,

    /// Replace each worker after this many requests (plus up to --max-requests-jitter more),
    /// one worker at a time, without failing a request
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,

    /// Up to this many requests added at random to --max-requests, per worker
    #[arg(long, value_name = "N", default_value_t = 0, requires = "max_requests")]
    max_requests_jitter: u64,

    /// The most connections each worker holds open at once; at the limit a worker stops
    /// accepting and further connections wait in the listen backlog until one closes
    /// [default: no limit]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,

    /// Read HAProxy's PROXY protocol header (v1 or v2) at the start of every TCP connection,
    /// from the --trusted-proxies only, and take the client's address from it; connections
    /// from elsewhere or without a valid header are closed
    #[arg(long, requires = "trusted_proxies")]
    proxy_protocol: bool,

    /// The balancers whose PROXY headers are believed: addresses or ranges, comma-separated
    /// (10.0.0.0/8,fd00::/8,127.0.0.1)
    #[arg(
        long,
        value_name = "CIDR,...",
        value_delimiter = ',',
        requires = "proxy_protocol"
    )]
    trusted_proxies: Vec<String>,

    /// Pin worker i to the i-th usable CPU (and, with --reuse-port, prefer it for
    /// connections arriving on that CPU)
    #[arg(long)]
    pin_workers: bool,

    /// Seconds a client may take to send its request headers
    #[arg(long, value_name = "SECS", default_value_t = Secs(forklift::DEFAULT_HEADER_READ_TIMEOUT))]
    header_read_timeout: Secs,

    /// Seconds an HTTP/1 connection may wait idle for its next request; keep it above the
    /// idle timeout of the balancer in front (AWS ALB: 60). 0 turns keep-alive off
    #[arg(long, value_name = "SECS", default_value_t = Secs(forklift::DEFAULT_KEEP_ALIVE_TIMEOUT))]
    keep_alive_timeout: Secs,

    /// Serve HTTPS with this PEM certificate chain (needs --tls-key). Read before the
    /// workers start, and again by each worker as it boots (renewals need no restart).
    /// Repeat --tls-cert/--tls-key for several certificates, chosen by SNI among each one's
    /// DNS names; the first serves clients without SNI or with an unknown name
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Vec<std::path::PathBuf>,

    /// The PEM private key of the --tls-cert in the same position
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Vec<std::path::PathBuf>,

    /// Take the TLS session-ticket secret from this file (at least 32 bytes, e.g. `openssl
    /// rand 80`), read by each worker as it boots: hosts sharing it resume each other's
    /// sessions. Default: a secret the master makes, shared by its workers, reloads, upgrades
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_ticket_key_file: Option<std::path::PathBuf>,

    /// Seconds between TLS session-ticket key rotations (tickets open for one period more)
    #[arg(long, value_name = "SECS", requires = "tls_cert", value_parser = clap::value_parser!(u64).range(1..))]
    tls_ticket_rotation: Option<u64>,

    /// Serve the files under this directory instead of the demo (ranges, ETag,
    /// Last-Modified, content types; index.html for directories)
    #[arg(long, value_name = "PATH")]
    dir: Option<std::path::PathBuf>,

    /// Log every request (client, method, path, version, status, bytes, duration, request
    /// id, user agent, referer, TLS version, worker): on stderr alone or with `-`, else to
    /// the file PATH (reopened on SIGUSR1 or `forklift reopen-logs`)
    #[arg(long, value_name = "PATH", num_args = 0..=1)]
    access_log: Option<Option<std::path::PathBuf>>,

    /// Serve every request with hyper, without forklift's HTTP/1 fast path for requests
    /// without a body
    #[arg(long)]
    no_fast_path: bool,

    /// Accept each connection as soon as it is made, not once the client has sent its
    /// request (TCP_DEFER_ACCEPT, on by default on Linux)
    #[arg(long)]
    no_defer_accept: bool,

    /// Serve from this one process on a multi-thread runtime (--workers threads) instead of
    /// pre-forking: the benchmark's baseline
    #[arg(long)]
    single_process: bool,

    /// Inject a fault, for forklift's own tests
    #[arg(long, value_enum, hide = true)]
    fault: Option<Fault>,

    /// The file --fault boot-panic-if-file looks for
    #[arg(long, value_name = "PATH", hide = true)]
    fault_file: Option<std::path::PathBuf>,

    /// Serve the test-only /lab routes (see lab.rs), for forklift's own tests
    #[arg(long, hide = true)]
    lab_routes: bool,
}

impl ServeArgs {
    /// The `--tls-cert`/`--tls-key` pairs, by position, or why they do not pair.
    fn tls_pairs(&self) -> Result<Vec<(&std::path::Path, &std::path::Path)>, String> {
        if self.tls_cert.len() != self.tls_key.len() {
            return Err(format!(
                "{} --tls-cert but {} --tls-key: give one key after each certificate (they \
                 pair by position)",
                self.tls_cert.len(),
                self.tls_key.len()
            ));
        }
        Ok(self
            .tls_cert
            .iter()
            .zip(&self.tls_key)
            .map(|(c, k)| (c.as_path(), k.as_path()))
            .collect())
    }
}

/// The limits past which a worker is replaced (new one ready first, then the old one
/// drains), for `serve` and `run` alike: the master reads each worker's memory and age.
#[derive(Debug, clap::Args)]
struct LimitArgs {
    /// Replace a worker whose resident memory (RSS, read from /proc twice a second)
    /// passes this many MiB, one worker at a time, without failing a request (Linux)
    #[arg(long, value_name = "MiB", value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    max_worker_memory: Option<u64>,

    /// Replace a worker once it has run this long, one worker at a time, without failing a
    /// request
    #[arg(long, value_name = "SECS")]
    max_worker_age: Option<Secs>,
}

impl LimitArgs {
    fn apply(&self, mut server: Prefork) -> Prefork {
        if let Some(mib) = self.max_worker_memory {
            server = server.max_worker_memory(mib << 20);
        }
        if let Some(age) = self.max_worker_age {
            server = server.max_worker_age(age.0);
        }
        server
    }
}

/// Who the workers run as, for `serve` and `run` alike.
#[derive(Debug, clap::Args)]
struct PrivilegeArgs {
    /// Run workers as this user (the master binds as root, workers drop privileges)
    #[arg(long, value_name = "NAME")]
    user: Option<String>,

    /// Run workers with this group [default: the user's primary group]
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
}

impl PrivilegeArgs {
    fn apply(&self, mut server: Prefork) -> Prefork {
        if let Some(user) = &self.user {
            server = server.user(user);
        }
        if let Some(group) = &self.group {
            server = server.group(group);
        }
        server
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SpawnMode {
    /// fork(2) the master
    Fork,
    /// Re-execute this binary with the sockets as fds 3.. (LISTEN_FDS)
    Exec,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Fault {
    /// Every worker panics while booting.
    BootPanic,
    /// Every worker exits with code 70 about 100 ms after it is ready.
    CrashAfterReady,
    /// Start a thread before forking (fork mode must refuse).
    ThreadBeforeFork,
    /// Workers panic while booting if --fault-file exists (a reload that cannot boot).
    BootPanicIfFile,
    /// GET /block?ms=N blocks the worker's event loop for N ms (a stuck handler); GET
    /// /panic panics in the handler; GET /abort aborts the worker process.
    BlockRoute,
}

/// Prints one lifecycle line on stdout. A closed stdout (`forklift serve | head -1`) must not
/// bring the master down, so write errors are ignored.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A duration given on the command line in seconds, fractions allowed (`SECS`). Its
/// `Display` is what it parses from, so clap shows a library default such as
/// [`forklift::DEFAULT_GRACEFUL_TIMEOUT`] in `--help` as `[default: 30]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Secs(Duration);

impl std::str::FromStr for Secs {
    type Err = String;

    fn from_str(s: &str) -> Result<Secs, String> {
        parse_secs(s).map(Secs)
    }
}

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.subsec_nanos() == 0 {
            write!(f, "{}", self.0.as_secs())
        } else {
            write!(f, "{}", self.0.as_secs_f64())
        }
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} is not a number of seconds from 0 to 1e9"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let cli: Cli = settings::parse_or_exit(check::default_mode(std::env::args_os().collect()));
    let log_args = match &cli.command {
        Command::Serve(a) => Some(&a.logs),
        Command::Run(a) => Some(&a.logs),
        _ => None,
    };
    logs::init_tracing(
        log_args.map_or(logs::Format::Text, |l| l.log_format),
        log_args.is_some_and(|l| l.error_log.is_some()),
    );
    let result = match cli.command {
        Command::Serve(args) => serve(*args).map(|()| "stopped\n".to_string()),
        Command::Run(args) => run(*args).map(|()| "stopped\n".to_string()),
        Command::Status(c) => forklift::control(
            &c.ctl.control,
            if c.json { "status-json" } else { "status" },
        )
        .map_err(Into::into),
        Command::Reload(c) => {
            deploy::reload(&c.ctl.control, c.wait.then_some(c.timeout)).map_err(Into::into)
        }
        Command::Upgrade(c) => {
            deploy::upgrade(&c.ctl.control, c.wait.then_some(c.timeout)).map_err(Into::into)
        }
        Command::Stop(c) => forklift::control(&c.control, "stop").map_err(Into::into),
        Command::Drain(c) => forklift::control(&c.control, "drain").map_err(Into::into),
        Command::Undrain(c) => forklift::control(&c.control, "undrain").map_err(Into::into),
        Command::Check(c) => return check::run(c),
        Command::Completions(c) => tool::completions(c).map_err(Into::into),
        Command::Man(m) => tool::man(m).map_err(Into::into),
        Command::ReopenLogs(c) => forklift::control(&c.control, "reopen-logs").map_err(Into::into),
    };
    match result {
        Ok(text) if text.starts_with("error:") => {
            eprint!("forklift: {text}");
            ExitCode::FAILURE
        }
        Ok(text) => {
            say!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("forklift: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), forklift::BoxError> {
    if args.single_process {
        return single::serve(
            &args.pool.listen,
            args.pool.workers.unwrap_or_else(forklift::default_workers),
            args.pool.backlog,
            args.pool.graceful_timeout.0,
            args.header_read_timeout.0,
        );
    }
    let mut server = args
        .pool
        .apply(Prefork::new())?
        .spawn(match args.spawn {
            SpawnMode::Fork => Spawn::Fork,
            SpawnMode::Exec => Spawn::Exec,
        })
        .header_read_timeout(args.header_read_timeout.0)
        .keep_alive_timeout(args.keep_alive_timeout.0)
        .http1_fast_path(!args.no_fast_path)
        .defer_accept(!args.no_defer_accept)
        .worker_timeout((!args.worker_timeout.0.is_zero()).then_some(args.worker_timeout.0));
    server = server.pin_workers(args.pin_workers);
    server = logs::apply_access_log(args.logs.apply(server), &args.access_log);
    server = reload::on_hup(server, "serve");
    server = args.privileges.apply(server);
    server = args.limits.apply(server);
    if let Some(n) = args.max_requests {
        server = server.max_requests(n, args.max_requests_jitter);
    }
    if let Some(n) = args.max_connections {
        server = server.max_connections(usize::try_from(n).unwrap_or(usize::MAX));
    }
    if args.proxy_protocol {
        server = server.proxy_protocol(&args.trusted_proxies)?;
    }
    for (cert, key) in args.tls_pairs()? {
        server = server.tls_files(cert, key);
    }
    if let Some(path) = &args.tls_ticket_key_file {
        server = server.tls_ticket_key_file(path);
    }
    if let Some(secs) = args.tls_ticket_rotation {
        server = server.tls_ticket_rotation(Duration::from_secs(secs));
    }
    let scheme = if args.tls_cert.is_empty() {
        "http"
    } else {
        "https"
    };
    if let Some(Fault::ThreadBeforeFork) = args.fault {
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    let fault = args.fault;
    let server = lifecycle_lines(server, scheme);
    let fault_file = args.fault_file.clone();
    let lab_routes = args.lab_routes;
    if let Some(dir) = &args.dir {
        let files = static_files::check_root(dir)?;
        server.serve(move || {
            inject(fault, fault_file.as_deref());
            static_files::service(&files)
        })?;
    } else {
        // What each worker's demo needs, after the fault injected at its start: the value of
        // `x-forklift-worker` and whether the blocking routes are on.
        let start = move || {
            inject(fault, fault_file.as_deref());
            let worker = HeaderValue::from(std::process::id());
            (worker, matches!(fault, Some(Fault::BlockRoute)))
        };
        if lab_routes {
            server.serve(move || {
                let (worker, block_route) = start();
                service_fn(move |req| {
                    let worker = worker.clone();
                    lab::route(req, move |req| demo(req, worker, block_route))
                })
            })?;
        } else {
            // The demo alone: without the lab's layer around each request (its future moved
            // the request once more; bench/instructions counts it).
            server.serve(move || {
                let (worker, block_route) = start();
                service_fn(move |req| demo(req, worker.clone(), block_route))
            })?;
        }
    }
    Ok(())
}

/// Prints each lifecycle event as one `key=value` line on stdout (the format scripts and
/// forklift's tests read).
fn lifecycle_lines(server: Prefork, scheme: &'static str) -> Prefork {
    server
        .on_event(move |event| match event {
            Event::Listening { addresses } => {
                for a in addresses {
                    if a.starts_with("unix:") {
                        say!("listening on {a}");
                    } else {
                        say!("listening on {scheme}://{a}");
                    }
                }
            }
            Event::ReloadStarted { generation } => say!("reloading generation={generation}"),
            Event::GenerationReady {
                generation,
                workers,
            } => {
                let pids: Vec<String> = workers.iter().map(|w| w.pid.to_string()).collect();
                say!("reloaded generation={generation} pids={}", pids.join(","));
            }
            Event::ReloadFailed { generation, reason } => {
                say!("reload failed generation={generation} reason=\"{reason}\"")
            }
            Event::WorkersChanged { workers } => say!("workers={workers}"),
            Event::WorkerTimedOut(w) => say!("timed out worker={} pid={}", w.id, w.pid),
            Event::UpgradeStarted { pid } => say!("upgrading new_master_pid={pid}"),
            Event::UpgradeFailed { pid, status } => {
                say!("upgrade failed new_master_pid={pid} status=\"{status}\"")
            }
            _ => {}
        })
        .on_worker_spawn(|w| {
            say!(
                "spawned worker={} pid={} generation={}",
                w.id,
                w.pid,
                w.generation
            );
            Ok(())
        })
        .on_master_ready(|workers| {
            let pids: Vec<String> = workers.iter().map(|w| w.pid.to_string()).collect();
            say!("ready pids={}", pids.join(","));
            Ok(())
        })
        .on_worker_exit(|w, status| {
            say!("exited worker={} pid={} status=\"{status}\"", w.id, w.pid);
        })
        .on_worker_recover(|old, new| {
            say!(
                "recovered worker={} old_pid={} new_pid={}",
                new.id,
                old.pid,
                new.pid
            );
        })
}

/// `forklift run -- COMMAND`: the library's supervision around a program of any language.
fn run(args: RunArgs) -> Result<(), forklift::BoxError> {
    let shown = args
        .command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let command = args.command.clone();
    let server = args
        .pool
        .apply(Prefork::new())?
        .spawn(Spawn::command(move |_slot| {
            let mut cmd = std::process::Command::new(&command[0]);
            cmd.args(&command[1..]);
            cmd
        }))
        .readiness(if args.ready_notify {
            forklift::Readiness::Notify
        } else {
            forklift::Readiness::After(args.ready_after.0)
        })
        .relay_output(args.prefix_output)
        .worker_timeout((!args.worker_timeout.0.is_zero()).then_some(args.worker_timeout.0));
    let server = args
        .logs
        .apply(args.limits.apply(args.privileges.apply(server)));
    let server = reload::on_hup(server, "run");
    lifecycle_lines(server, "http")
        .run(|_| Err("forklift run starts COMMAND in each worker; this is never called".into()))
        .map_err(|e| format!("{shown}: {e}").into())
}

/// Runs in each worker as it boots: the faults forklift's tests inject.
fn inject(fault: Option<Fault>, file: Option<&std::path::Path>) {
    match fault {
        Some(Fault::BootPanicIfFile) if file.is_some_and(|f| f.exists()) => {
            panic!("injected boot failure (--fault boot-panic-if-file)")
        }
        Some(Fault::BootPanic) => panic!("injected boot failure (--fault boot-panic)"),
        Some(Fault::CrashAfterReady) => {
            tokio::task::spawn_local(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                std::process::exit(70);
            });
        }
        _ => {}
    }
}

const GREETING: &[u8] = b"greeting!!!";
/// The longest /sleep the demo grants, so a typo cannot pin a connection for hours.
const MAX_SLEEP_MS: u64 = 60_000;

/// The header naming the worker that answered (checked once, at compile time).
const X_FORKLIFT_WORKER: HeaderName = HeaderName::from_static("x-forklift-worker");

/// Answers a demo request; `worker` names the worker (`x-forklift-worker`).
pub(crate) async fn demo(
    req: Request<forklift::Body>,
    worker: HeaderValue,
    block_route: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/block") if block_route => {
            let ms = query_param(req.uri().query(), "ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(100)
                .min(MAX_SLEEP_MS);
            tracing::debug!(ms, "block started");
            // Blocks the worker's event loop, as a handler stuck in a loop would.
            std::thread::sleep(Duration::from_millis(ms));
            (StatusCode::OK, Bytes::from(format!("blocked {ms} ms\n")))
        }
        (&Method::GET, "/panic") if block_route => panic!("injected handler panic (GET /panic)"),
        (&Method::GET, "/abort") if block_route => std::process::abort(),
        (&Method::GET | &Method::HEAD, "/") => (StatusCode::OK, Bytes::from_static(GREETING)),
        // Who the request came from: the peer, or the client a PROXY header named; `-` when
        // requests carry no forklift::ClientAddr (it is on with --access-log or
        // --proxy-protocol).
        (&Method::GET, "/client") => {
            let client = req.extensions().get::<forklift::ClientAddr>();
            let addr = client.map_or_else(|| "-".to_string(), |c| c.0.to_string());
            (StatusCode::OK, Bytes::from(format!("{addr}\n")))
        }
        (&Method::GET | &Method::HEAD, "/sleep") => {
            let ms = query_param(req.uri().query(), "ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(100)
                .min(MAX_SLEEP_MS);
            tracing::debug!(ms, "sleep started");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, Bytes::from(format!("slept {ms} ms\n")))
        }
        (_, "/" | "/sleep") => (
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"method not allowed\n"),
        ),
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    // The answer's fields go in the request's header map, cleared: its room is allocated
    // already, so the answer allocates none (and forklift's fast path hands a sent answer's
    // map to the connection's next request in turn).
    let mut headers = req.into_parts().0.headers;
    headers.clear();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    headers.insert(X_FORKLIFT_WORKER, worker);
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_found() {
        assert_eq!(query_param(Some("ms=5&x=1"), "ms"), Some("5"));
        assert_eq!(query_param(Some("x=1&ms=7"), "ms"), Some("7"));
        assert_eq!(query_param(Some("x=1"), "ms"), None);
        assert_eq!(query_param(None, "ms"), None);
    }

    #[test]
    fn seconds_parse_strictly() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("inf").is_err());
    }

    #[test]
    fn seconds_show_as_they_parse() {
        for text in ["0", "1", "30", "1.5", "0.25"] {
            let secs: Secs = text.parse().unwrap();
            assert_eq!(secs.to_string(), text);
        }
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
