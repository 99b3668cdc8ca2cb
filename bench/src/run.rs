//! One measurement: start a server on a free port, wait until it serves, load it while
//! sampling its processes, stop it. And the interleaved rounds of them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use forklift_testkit::{groups, http, process};
use serde::Serialize;

use crate::parse::{self, LoadReport, TlsSessions};
use crate::procs::{Group, Stopped};
use crate::tls::{self, Proto};
use crate::{docroot, idle};

/// How long a server may take to serve after it is started.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long a forklift server may answer HTTP without printing its ready line before the
/// first response is taken as its readiness.
const READY_LINE_GRACE: Duration = Duration::from_secs(3);
/// Grace after TERM before the server's process group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// RSS sampling period during the load.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Conn,
    Keepalive,
    Sleep,
    /// `/4k.bin` from the document root, 256 keep-alive connections.
    StaticSmall,
    /// `/1m.bin` from the document root, 32 keep-alive connections.
    StaticBig,
    /// 10,000 keep-alive connections held idle by the harness (bench/src/idle.rs).
    Idle,
    /// HTTPS keep-alive (HTTP/1.1), 256 connections.
    TlsKa,
    /// A TLS handshake per request, the client offering its last session.
    TlsResume,
    /// A TLS handshake per request, full: the client offers no session and nginx accepts none.
    TlsFull,
    /// HTTP/2 over TLS (h2load).
    H2,
    /// Cleartext HTTP/2 by prior knowledge (h2load).
    H2c,
}

/// The figure a workload's table leads with, and the one its ratio column pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    /// Responses per second (higher is better).
    ReqPerSec,
    /// MiB read per second (higher is better).
    MibPerSec,
    /// KiB of server memory (PSS) per idle connection (lower is better).
    KibPerConn,
}

impl Figure {
    pub fn unit(self) -> &'static str {
        match self {
            Figure::ReqPerSec => "req/s",
            Figure::MibPerSec => "MiB/s",
            Figure::KibPerConn => "KiB per idle connection",
        }
    }

    pub fn higher_is_better(self) -> bool {
        self != Figure::KibPerConn
    }
}

/// What a workload needs that not every load tool or server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Oha,
    Wrk,
    /// h2load, from Debian's nghttp2-client.
    H2load,
    /// The harness is the client (the idle workload).
    Harness,
}

impl Workload {
    pub const ALL: [Workload; 11] = [
        Workload::Conn,
        Workload::Keepalive,
        Workload::Sleep,
        Workload::StaticSmall,
        Workload::StaticBig,
        Workload::Idle,
        Workload::TlsKa,
        Workload::TlsResume,
        Workload::TlsFull,
        Workload::H2,
        Workload::H2c,
    ];
    /// `--quick` without `--workloads`: the static ones only on request, so the quick run of
    /// every server stays under a minute.
    pub const QUICK: [Workload; 3] = [Workload::Conn, Workload::Keepalive, Workload::Sleep];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Conn => "conn",
            Workload::Keepalive => "keepalive",
            Workload::Sleep => "sleep",
            Workload::StaticSmall => "static-small",
            Workload::StaticBig => "static-big",
            Workload::Idle => "idle",
            Workload::TlsKa => "tls-ka",
            Workload::TlsResume => "tls-resume",
            Workload::TlsFull => "tls-full",
            Workload::H2 => "h2",
            Workload::H2c => "h2c",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Workload::Conn => "conn: a new connection per request (oha)",
            Workload::Keepalive => "keepalive: 512 keep-alive connections, GET / (wrk)",
            Workload::Sleep => "sleep: 512 keep-alive connections, GET /sleep?ms=100 (wrk)",
            Workload::StaticSmall => {
                "static-small: 256 keep-alive connections, GET /4k.bin from a document root (wrk)"
            }
            Workload::StaticBig => {
                "static-big: 32 keep-alive connections, GET /1m.bin from a document root (wrk)"
            }
            Workload::Idle => {
                "idle: 10,000 keep-alive connections, one GET /4k.bin each, then idle (the harness)"
            }
            Workload::TlsKa => "tls-ka: HTTPS, 256 keep-alive connections, GET / (wrk)",
            Workload::TlsResume => {
                "tls-resume: a TLS handshake per request, resuming the last session, 256 \
                 connections, GET / (wrk)"
            }
            Workload::TlsFull => {
                "tls-full: a full TLS handshake per request, no resumption, 256 connections, \
                 GET / (wrk)"
            }
            Workload::H2 => "h2: HTTP/2 over TLS, 100 connections × 10 streams, GET / (h2load)",
            Workload::H2c => {
                "h2c: cleartext HTTP/2 by prior knowledge, 100 connections × 10 streams, GET / \
                 (h2load)"
            }
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }

    /// Served from the document root: forklift `serve --dir`, nginx with
    /// bench/peers/nginx-static.conf.in.
    pub fn serves_files(self) -> bool {
        matches!(
            self,
            Workload::StaticSmall | Workload::StaticBig | Workload::Idle
        )
    }

    /// Served over TLS with the run's certificate.
    pub fn tls(self) -> bool {
        matches!(
            self,
            Workload::TlsKa | Workload::TlsResume | Workload::TlsFull | Workload::H2
        )
    }

    /// The TLS and HTTP/2 workloads: nginx from bench/peers/nginx-tls.conf.in, checked with
    /// curl in [`Workload::proto`].
    pub fn tls_or_h2(self) -> bool {
        self.proto().is_some()
    }

    /// The protocol of the TLS and HTTP/2 workloads.
    pub fn proto(self) -> Option<Proto> {
        match self {
            Workload::TlsKa | Workload::TlsResume | Workload::TlsFull => Some(Proto::Https1),
            Workload::H2 => Some(Proto::H2),
            Workload::H2c => Some(Proto::H2c),
            _ => None,
        }
    }

    /// A handshake per request (wrk with `Connection: close` and the session shim).
    pub fn handshakes(self) -> bool {
        matches!(self, Workload::TlsResume | Workload::TlsFull)
    }

    pub fn figure(self) -> Figure {
        match self {
            Workload::StaticBig => Figure::MibPerSec,
            Workload::Idle => Figure::KibPerConn,
            _ => Figure::ReqPerSec,
        }
    }

    pub fn tool(self) -> Tool {
        match self {
            Workload::Conn => Tool::Oha,
            Workload::Idle => Tool::Harness,
            Workload::H2 | Workload::H2c => Tool::H2load,
            _ => Tool::Wrk,
        }
    }

    /// The path asked for, and for the static workloads the file it is.
    fn target(self) -> (String, Option<docroot::File>) {
        match self {
            Workload::Conn
            | Workload::Keepalive
            | Workload::TlsKa
            | Workload::TlsResume
            | Workload::TlsFull
            | Workload::H2
            | Workload::H2c => ("/".into(), None),
            Workload::Sleep => ("/sleep?ms=100".into(), None),
            Workload::StaticSmall | Workload::Idle => (docroot::SMALL.path(), Some(docroot::SMALL)),
            Workload::StaticBig => (docroot::BIG.path(), Some(docroot::BIG)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// `forklift serve` with these extra arguments; it prints `ready pids=...` when serving.
    Forklift(&'static [&'static str]),
    /// A peer from ../shared/peers, started with its start.sh.
    Peer,
    /// nginx from ../shared/peers' start.sh, whose nginx.conf.in it fills in with these
    /// `listen` options; for the static workloads, bench/peers/nginx-static.conf.in with the
    /// same options.
    NginxPeer(&'static str),
    /// nginx from ../shared/peers' nginx.conf.in, with these extra `listen` options (start.sh
    /// knows only the plain and reuseport forms).
    NginxWith(&'static str),
    /// forklift-ceiling from this crate: canned bytes for every request head, no HTTP work.
    Ceiling,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSpec {
    pub name: &'static str,
    pub kind: ServerKind,
}

impl ServerSpec {
    /// Why this server does not run workload `w`, if it does not: only forklift's demo has
    /// `/sleep` (the ceiling would answer it at once); only forklift's prefork server and nginx
    /// serve files.
    pub fn skip_reason(&self, w: Workload) -> Option<&'static str> {
        match (w, self.kind) {
            (Workload::Sleep, ServerKind::Forklift(_)) => None,
            (Workload::Sleep, _) => Some("no /sleep endpoint"),
            (w, ServerKind::Forklift(extra)) if w.serves_files() => extra
                .contains(&"--single-process")
                .then_some("--single-process serves the demo only (no --dir)"),
            (w, ServerKind::Peer | ServerKind::Ceiling) if w.serves_files() => {
                Some("serves no files")
            }
            (w, ServerKind::Forklift(extra)) if w.tls_or_h2() => extra
                .contains(&"--single-process")
                .then_some("the TLS and HTTP/2 workloads run the prefork servers only"),
            (w, ServerKind::Peer | ServerKind::Ceiling) if w.tls_or_h2() => {
                Some("no TLS or HTTP/2 set up")
            }
            _ => None,
        }
    }

    pub fn serves(&self, w: Workload) -> bool {
        self.skip_reason(w).is_none()
    }
}

/// Every server the harness knows, in table order. The first is the reference of the ratio
/// column.
pub const SERVERS: [ServerSpec; 11] = [
    ServerSpec {
        name: "forklift",
        kind: ServerKind::Forklift(&["--workers", "2"]),
    },
    ServerSpec {
        name: "forklift-reuseport",
        kind: ServerKind::Forklift(&["--workers", "2", "--reuse-port"]),
    },
    ServerSpec {
        name: "forklift-pinned",
        kind: ServerKind::Forklift(&["--workers", "2", "--reuse-port", "--pin-workers"]),
    },
    ServerSpec {
        name: "forklift-single",
        kind: ServerKind::Forklift(&["--single-process"]),
    },
    ServerSpec {
        name: "nginx",
        kind: ServerKind::NginxPeer(""),
    },
    ServerSpec {
        name: "nginx-reuseport",
        kind: ServerKind::NginxPeer(" reuseport"),
    },
    // forklift's listeners use TCP_DEFER_ACCEPT; this is nginx with the same option.
    ServerSpec {
        name: "nginx-deferred",
        kind: ServerKind::NginxWith(" deferred"),
    },
    ServerSpec {
        name: "fasthttp-prefork",
        kind: ServerKind::Peer,
    },
    ServerSpec {
        name: "fasthttp-prefork-reuseport",
        kind: ServerKind::Peer,
    },
    ServerSpec {
        name: "fasthttp-single",
        kind: ServerKind::Peer,
    },
    // The upper bound: recv and send per request, no HTTP work (bench/src/ceiling.rs).
    ServerSpec {
        name: "ceiling",
        kind: ServerKind::Ceiling,
    },
];

/// nginx's config for the static workloads, filled in by [`nginx_static_conf`].
const NGINX_STATIC_CONF: &str = include_str!("../peers/nginx-static.conf.in");

/// Everything a run needs to know, resolved up front.
#[derive(Debug, Clone)]
pub struct Plan {
    pub rounds: usize,
    pub servers: Vec<ServerSpec>,
    pub workloads: Vec<Workload>,
    pub forklift: PathBuf,
    /// forklift-ceiling, built with this harness (bench/src/ceiling.rs).
    pub ceiling: PathBuf,
    pub peers_start: PathBuf,
    pub oha: PathBuf,
    pub wrk: PathBuf,
    pub h2load: PathBuf,
    /// h2load's `-n` for the h2 and h2c workloads.
    pub h2_requests: u64,
    /// The TLS workloads' certificate and key, and wrk's session shim.
    pub tls: tls::Files,
    /// oha's `-n` for the conn workload.
    pub conn_requests: u64,
    /// wrk's `-d` in seconds.
    pub wrk_secs: u64,
    /// Connections the idle workload holds.
    pub idle_connections: usize,
    /// The static workloads' files ([`docroot::create`]).
    pub docroot: PathBuf,
    pub log_dir: PathBuf,
}

impl Plan {
    /// The load generator's command line for `w` against `port`; None for the idle workload,
    /// whose client is the harness itself.
    pub fn load_command(&self, w: Workload, port: u16) -> Option<(PathBuf, Vec<String>)> {
        let base = format!("http://127.0.0.1:{port}");
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let wrk = |connections: &str| {
            let mut a = strs(&["-t", "2", "-c", connections, "-d"]);
            a.push(self.wrk_secs.to_string());
            a.push("--latency".into());
            a.push(format!("{base}{}", w.target().0));
            (self.wrk.clone(), a)
        };
        let https = format!("https://127.0.0.1:{port}/");
        let h2load = |url: String| {
            let mut a = strs(&["-n"]);
            a.push(self.h2_requests.to_string());
            a.extend(strs(&["-c", "100", "-m", "10"]));
            a.push(format!("--log-file={}", self.h2load_log().display()));
            a.push(url);
            (self.h2load.clone(), a)
        };
        match w {
            Workload::Conn => {
                let mut a = strs(&["-c", "500", "-n"]);
                a.push(self.conn_requests.to_string());
                a.extend(strs(&[
                    "--disable-keepalive",
                    "--no-tui",
                    "--output-format",
                    "json",
                ]));
                a.push(format!("{base}/"));
                Some((self.oha.clone(), a))
            }
            Workload::Keepalive | Workload::Sleep => Some(wrk("512")),
            Workload::StaticSmall => Some(wrk("256")),
            Workload::StaticBig => Some(wrk("32")),
            Workload::Idle => None,
            Workload::TlsKa | Workload::TlsResume | Workload::TlsFull => {
                let mut a = strs(&["-t", "2", "-c", "256", "-d"]);
                a.push(self.wrk_secs.to_string());
                a.push("--latency".into());
                if w.handshakes() {
                    a.extend(strs(&["-H", "Connection: close"]));
                }
                a.push(https);
                Some((self.wrk.clone(), a))
            }
            Workload::H2 => Some(h2load(https)),
            Workload::H2c => Some(h2load(format!("{base}/"))),
        }
    }

    /// The load generator's environment for `w`: the session shim for tls-resume and
    /// tls-full (the counts go to [`Plan::tls_counts`]).
    pub fn load_env(&self, w: Workload) -> Vec<(&'static str, String)> {
        if !w.handshakes() {
            return Vec::new();
        }
        let mut env = vec![
            ("LD_PRELOAD", self.tls.shim.display().to_string()),
            (tls::COUNTS_ENV, self.tls_counts().display().to_string()),
        ];
        if w == Workload::TlsFull {
            env.push((tls::NO_RESUME_ENV, "1".into()));
        }
        env
    }

    /// Where the session shim writes wrk's handshake counts.
    pub fn tls_counts(&self) -> PathBuf {
        self.log_dir.join("tls-sessions.txt")
    }

    /// h2load's per-request log (its latencies give p50 and p99).
    pub fn h2load_log(&self) -> PathBuf {
        self.log_dir.join("h2load-requests.tsv")
    }

    /// What the idle workload does, for the report's header.
    pub fn idle_text(&self) -> String {
        format!(
            "forklift-bench itself: {} connections ({} threads, each opening its next connection \
             once the last is answered), one keep-alive `GET {}` each, then idle; {} warm-up \
             connections first",
            self.idle_connections,
            idle::OPEN_THREADS,
            docroot::SMALL.path(),
            idle::WARM_UP,
        )
    }

    /// The wall-clock bound of one load-generator run (None for the idle workload: idle.rs
    /// bounds each of its steps).
    fn load_deadline(&self, w: Workload) -> Option<Duration> {
        match w.tool() {
            // Generous: even 500 req/s finishes in time.
            Tool::Oha => Some(Duration::from_secs(60 + self.conn_requests / 500)),
            Tool::Wrk => Some(Duration::from_secs(self.wrk_secs + 30)),
            // Generous: even 2,000 req/s finishes in time.
            Tool::H2load => Some(Duration::from_secs(60 + self.h2_requests / 2_000)),
            Tool::Harness => None,
        }
    }

    /// The server's command line on `port` for workload `w`. For nginx and the static
    /// workloads, it writes the config first.
    pub fn server_command(
        &self,
        s: &ServerSpec,
        w: Workload,
        port: u16,
    ) -> Result<Command, String> {
        let files = w.serves_files();
        Ok(match s.kind {
            ServerKind::Forklift(extra) => {
                let mut c = Command::new(&self.forklift);
                c.arg("serve");
                if files {
                    c.arg("--dir").arg(&self.docroot);
                }
                if w.tls() {
                    c.arg("--tls-cert")
                        .arg(&self.tls.cert)
                        .arg("--tls-key")
                        .arg(&self.tls.key);
                }
                c.arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .args(extra);
                c
            }
            ServerKind::NginxPeer(opts) | ServerKind::NginxWith(opts) if w.tls_or_h2() => {
                self.nginx_tls(s, w, opts, port)?
            }
            ServerKind::NginxPeer(opts) if files => self.nginx_static(s, opts, port)?,
            ServerKind::NginxWith(opts) if files => self.nginx_static(s, opts, port)?,
            ServerKind::Peer | ServerKind::NginxPeer(_) => {
                let mut c = Command::new(&self.peers_start);
                c.arg(s.name).arg(port.to_string());
                c
            }
            ServerKind::Ceiling => {
                let mut c = Command::new(&self.ceiling);
                c.arg("--listen")
                    .arg(format!("127.0.0.1:{port}"))
                    .args(["--workers", "2"]);
                c
            }
            ServerKind::NginxWith(opts) => {
                // start.sh's nginx_run, with other listen options.
                let peers = self.peers_start.parent().unwrap_or(Path::new("."));
                let conf_in = peers.join("nginx.conf.in");
                let rundir = self.log_dir.join(format!("{}-{port}", s.name));
                let script = "set -e; mkdir -p \"$1/tmp\"; \
                     sed -e \"s|@PORT@|$2|g\" -e \"s|@LISTEN_OPTS@|$3|g\" \
                     -e \"s|@RUNDIR@|$1|g\" \"$4\" > \"$1/nginx.conf\"; \
                     exec nginx -p \"$1/\" -c \"$1/nginx.conf\" -e \"$1/error.log\"";
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(script)
                    .arg("nginx-with")
                    .arg(&rundir)
                    .arg(port.to_string())
                    .arg(opts)
                    .arg(conf_in);
                c
            }
        })
    }

    /// nginx from bench/peers/nginx-static.conf.in, its config and run directory in the log
    /// directory.
    fn nginx_static(
        &self,
        s: &ServerSpec,
        listen_opts: &str,
        port: u16,
    ) -> Result<Command, String> {
        let rundir = self.log_dir.join(format!("{}-static-{port}", s.name));
        std::fs::create_dir_all(rundir.join("tmp"))
            .map_err(|e| format!("{}: {e}", rundir.display()))?;
        let conf = rundir.join("nginx.conf");
        let text = nginx_static_conf(NGINX_STATIC_CONF, port, listen_opts, &rundir, &self.docroot);
        std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
        let mut c = Command::new("nginx");
        c.arg("-p")
            .arg(format!("{}/", rundir.display()))
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(rundir.join("error.log"));
        Ok(c)
    }
}

impl Plan {
    /// nginx from bench/peers/nginx-tls.conf.in for the TLS and HTTP/2 workloads, its config
    /// and run directory in the log directory.
    fn nginx_tls(
        &self,
        s: &ServerSpec,
        w: Workload,
        listen_opts: &str,
        port: u16,
    ) -> Result<Command, String> {
        let rundir = self.log_dir.join(format!("{}-{}-{port}", s.name, w.name()));
        std::fs::create_dir_all(rundir.join("tmp"))
            .map_err(|e| format!("{}: {e}", rundir.display()))?;
        let conf = rundir.join("nginx.conf");
        let listen = format!(
            "{listen_opts}{}",
            if w.tls() { " ssl http2" } else { " http2" }
        );
        let sessions = if w == Workload::TlsFull {
            tls::NGINX_SESSIONS_OFF
        } else {
            tls::NGINX_SESSIONS_ON
        };
        let text = tls::nginx_conf(port, &listen, sessions, &rundir, &self.tls);
        std::fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
        let mut c = Command::new("nginx");
        c.arg("-p")
            .arg(format!("{}/", rundir.display()))
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(rundir.join("error.log"));
        Ok(c)
    }
}

/// Fills in nginx-static.conf.in's `@PORT@`, `@LISTEN_OPTS@`, `@RUNDIR@` and `@ROOT@`.
pub fn nginx_static_conf(
    template: &str,
    port: u16,
    listen_opts: &str,
    rundir: &Path,
    root: &Path,
) -> String {
    template
        .replace("@PORT@", &port.to_string())
        .replace("@LISTEN_OPTS@", listen_opts)
        .replace("@RUNDIR@", &rundir.display().to_string())
        .replace("@ROOT@", &root.display().to_string())
}

/// How the readiness time was measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadyBy {
    /// forklift's `ready pids=` line (all workers serve).
    ReadyLine,
    /// The first successful HTTP response.
    FirstResponse,
}

/// RSS figures in KiB.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rss {
    pub master_idle: u64,
    pub master_peak: u64,
    /// The largest idle RSS among the workers (None without workers).
    pub worker_idle: Option<u64>,
    /// The largest peak RSS among the workers during the load.
    pub worker_peak: Option<u64>,
    /// Peak per process (master included) during the load.
    pub peak_by_pid: BTreeMap<u32, u64>,
}

/// A successful measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub load: LoadReport,
    pub ready_ms: f64,
    pub ready_by: ReadyBy,
    pub master_pid: u32,
    pub worker_pids: Vec<u32>,
    pub rss_kib: Rss,
    /// Server CPU (user + sys, master and workers) spent during the load, in seconds.
    pub cpu_s: f64,
    /// `cpu_s` per completed request, in microseconds (idle: per connection opened).
    pub cpu_us_per_req: Option<f64>,
    pub stop: Option<Stopped>,
    /// The idle workload's memory figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<idle::Figures>,
}

/// One server under one workload in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub round: usize,
    pub workload: Workload,
    pub server: String,
    pub port: u16,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok(Box<Sample>),
    Failed(String),
}

/// Runs every round: within a round each workload, within it each server, so drift over
/// time hits all servers alike. Each round starts one server further down the list (round 2
/// with the second server, and so on), so no server always runs in the same place after the
/// previous workload, where a fixed order would turn any effect of the place into a bias
/// against one server. (Suspected after two runs where forklift, always first, was 0.91 and
/// 0.84 × forklift-reuseport, the same code one place later, in keep-alive; 4 rounds
/// alternating the two after `idle` then showed no effect of the place: forklift over
/// forklift-reuseport 1.01, 0.96, 1.12, 1.02, whichever ran first.)
pub fn run_all(plan: &Plan) -> Vec<Run> {
    let mut runs = Vec::new();
    for round in 1..=plan.rounds {
        for &w in &plan.workloads {
            for s in in_turn(&plan.servers, round).filter(|s| s.serves(w)) {
                if groups::interrupted() {
                    return runs;
                }
                eprint!(
                    "[round {round}/{}] {:<12} {:<27} ",
                    plan.rounds,
                    w.name(),
                    s.name
                );
                let (port, outcome) = match free_port() {
                    Ok(port) => (port, measure(plan, s, w, port, round)),
                    Err(e) => (0, Outcome::Failed(format!("no free port: {e}"))),
                };
                match &outcome {
                    Outcome::Ok(x) => eprintln!("{}", progress_line(w, x)),
                    Outcome::Failed(_) if groups::interrupted() => return runs,
                    Outcome::Failed(e) => eprintln!("FAILED: {e}"),
                }
                runs.push(Run {
                    round,
                    workload: w,
                    server: s.name.to_string(),
                    port,
                    outcome,
                });
            }
        }
    }
    runs
}

/// The servers in the order round `round` (from 1) runs them: the list rotated left by
/// `round - 1`.
fn in_turn<T>(servers: &[T], round: usize) -> impl Iterator<Item = &T> {
    let start = (round - 1) % servers.len().max(1);
    servers[start..].iter().chain(&servers[..start])
}

/// One line of progress for a measurement: its workload's figure first.
fn progress_line(w: Workload, x: &Sample) -> String {
    let cpu = x
        .cpu_us_per_req
        .map_or_else(|| "-".into(), |v| format!("{v:.1}"));
    let tail = format!(
        "p50 {}  p99 {}  errors {}",
        fmt_opt_ms(x.load.p50_ms),
        fmt_opt_ms(x.load.p99_ms),
        x.load.errors.total()
    );
    match (w.figure(), &x.idle) {
        (Figure::KibPerConn, Some(i)) => format!(
            "{} KiB/conn ({} held)  PSS {:.1} → {:.1} → {:.1} MiB  {tail}  cpu {cpu} µs/conn",
            i.kib_per_conn
                .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            i.held,
            i.before.pss_kib as f64 / 1024.0,
            i.with.pss_kib as f64 / 1024.0,
            i.after.pss_kib as f64 / 1024.0,
        ),
        (Figure::MibPerSec, _) => format!(
            "{:>7.0} MiB/s  {:.0} req/s  {tail}  cpu {cpu} µs/req",
            x.load.mib_per_s().unwrap_or(0.0),
            x.load.rps
        ),
        _ => format!("{:>9.0} req/s  {tail}  cpu {cpu} µs/req", x.load.rps),
    }
}

fn fmt_opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2} ms"))
}

/// A free port on 127.0.0.1, outside the ephemeral range the load generators draw their
/// client ports from.
fn free_port() -> std::io::Result<u16> {
    let seed = (std::process::id() as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as u64)
                .unwrap_or(0),
        );
    const LO: u64 = 20_000;
    const SPAN: u64 = 10_000;
    for i in 0..SPAN {
        let port = (LO + (seed + i * 7919) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

fn measure(plan: &Plan, s: &ServerSpec, w: Workload, port: u16, round: usize) -> Outcome {
    match try_measure(plan, s, w, port, round) {
        Ok(sample) => Outcome::Ok(Box::new(sample)),
        Err(e) => Outcome::Failed(e),
    }
}

fn try_measure(
    plan: &Plan,
    s: &ServerSpec,
    w: Workload,
    port: u16,
    round: usize,
) -> Result<Sample, String> {
    std::fs::create_dir_all(&plan.log_dir).map_err(|e| format!("log dir: {e}"))?;
    let log_path = plan
        .log_dir
        .join(format!("round{round}-{}-{}.log", w.name(), s.name));
    let log = File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let err_log = log.try_clone().map_err(|e| e.to_string())?;

    let mut cmd = plan.server_command(s, w, port)?;
    cmd.stdin(Stdio::null()).stderr(err_log);
    let forklift = matches!(s.kind, ServerKind::Forklift(_));
    if forklift {
        cmd.stdout(Stdio::piped());
    } else {
        cmd.stdout(log.try_clone().map_err(|e| e.to_string())?);
    }

    let started = Instant::now();
    let mut server = Group::spawn(&mut cmd).map_err(|e| format!("cannot start: {e}"))?;
    let ready_rx = forklift.then(|| watch_stdout(&mut server, log));

    let result = serve_and_load(plan, w, port, started, &mut server, ready_rx, &log_path);
    let stopped = server.stop(STOP_GRACE);
    if let Stopped::Killed { .. } = stopped {
        eprint!("(had to be killed) ");
    }
    result.map(|mut sample| {
        sample.stop = Some(stopped);
        sample
    })
}

/// Copies a forklift server's stdout to its log and reports when `ready pids=` appears.
fn watch_stdout(server: &mut Group, mut log: File) -> mpsc::Receiver<(Instant, Vec<u32>)> {
    let (tx, rx) = mpsc::channel();
    let stdout = server.child_mut().stdout.take();
    std::thread::spawn(move || {
        let Some(stdout) = stdout else { return };
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let now = Instant::now();
            let _ = writeln!(log, "{line}");
            if let Some(pids) = line.strip_prefix("ready pids=") {
                let pids = pids.split(',').filter_map(|p| p.trim().parse().ok());
                let _ = tx.send((now, pids.collect()));
            }
        }
    });
    rx
}

fn serve_and_load(
    plan: &Plan,
    w: Workload,
    port: u16,
    started: Instant,
    server: &mut Group,
    ready_rx: Option<mpsc::Receiver<(Instant, Vec<u32>)>>,
    log_path: &Path,
) -> Result<Sample, String> {
    let (path, file) = w.target();
    // Only `GET /` answers 200 on every server; the static workloads' roots have no index.
    let probe = if file.is_some() { path.as_str() } else { "/" };
    let probe = Probe {
        path: probe,
        proto: w.proto(),
        cert: &plan.tls.cert,
    };
    let (ready_ms, ready_by) = wait_ready(server, port, &probe, started, ready_rx, log_path)?;
    if w.serves_files() {
        check_files(plan, port)?;
    }
    if let Some(proto) = w.proto() {
        tls::check(proto, port, &plan.tls.cert)?;
    }
    let master = server.pid();

    // Idle figures, right before the load.
    let idle: BTreeMap<u32, u64> = process::tree(master)
        .into_iter()
        .filter_map(|p| process::rss_kib(p).map(|r| (p, r)))
        .collect();
    let worker_pids: Vec<u32> = idle.keys().copied().filter(|&p| p != master).collect();
    let cpu_before = process::tree_cpu_secs(master);

    let sampler = RssSampler::start(master);
    let (load, idle_figures) = match w.tool() {
        Tool::Harness => {
            let spec = idle::Spec {
                port,
                connections: plan.idle_connections,
                path,
                body_len: file.map_or(0, |f| f.len),
            };
            match idle::run(master, &spec) {
                Ok((load, figures)) => (Ok(load), Some(figures)),
                Err(e) => (Err(e), None),
            }
        }
        Tool::Oha | Tool::Wrk | Tool::H2load => (run_load(plan, w, port), None),
    };
    let peak = sampler.finish();
    let cpu_s = process::tree_cpu_secs(master) - cpu_before;
    let load = load?;
    if load.requests == 0 {
        let e = load.errors.breakdown();
        return Err(format!(
            "no request completed{}",
            if e.is_empty() {
                String::new()
            } else {
                format!(" ({e})")
            }
        ));
    }

    let peak_of_workers = peak
        .iter()
        .filter(|(&p, _)| p != master)
        .map(|(_, &v)| v)
        .max();
    let rss_kib = Rss {
        master_idle: idle.get(&master).copied().unwrap_or(0),
        master_peak: peak.get(&master).copied().unwrap_or(0),
        worker_idle: idle
            .iter()
            .filter(|(&p, _)| p != master)
            .map(|(_, &v)| v)
            .max(),
        worker_peak: peak_of_workers,
        peak_by_pid: peak,
    };
    let cpu_us_per_req = (load.requests > 0).then(|| cpu_s * 1e6 / load.requests as f64);
    Ok(Sample {
        load,
        ready_ms,
        ready_by,
        master_pid: master,
        worker_pids,
        rss_kib,
        cpu_s,
        cpu_us_per_req,
        stop: None,
        idle: idle_figures,
    })
}

/// Does the server answer each file of the document root with its bytes? wrk counts any 2xx
/// as served; this makes sure a 200 is the file.
fn check_files(plan: &Plan, port: u16) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for f in docroot::FILES {
        let want = std::fs::read(plan.docroot.join(f.name))
            .map_err(|e| format!("{}: {e}", plan.docroot.join(f.name).display()))?;
        let got = http::http_get_timeout(addr, &f.path(), Duration::from_secs(5))
            .map_err(|e| format!("GET {}: {e}", f.path()))?;
        if got.status != 200 || got.body != want {
            return Err(format!(
                "GET {} answered {} with {} bytes, not the {} bytes of {}",
                f.path(),
                got.status,
                got.body.len(),
                want.len(),
                plan.docroot.join(f.name).display()
            ));
        }
    }
    Ok(())
}

/// Waits until the server serves: forklift's ready line plus an HTTP answer, or for peers
/// the first HTTP answer. Polls until [`READY_DEADLINE`].
fn wait_ready(
    server: &mut Group,
    port: u16,
    probe: &Probe,
    started: Instant,
    ready_rx: Option<mpsc::Receiver<(Instant, Vec<u32>)>>,
    log_path: &Path,
) -> Result<(f64, ReadyBy), String> {
    let deadline = started + READY_DEADLINE;
    let mut ready_line: Option<Instant> = None;
    let mut first_ok: Option<Instant> = None;
    let ms = |t: Instant| (t - started).as_secs_f64() * 1000.0;
    loop {
        if let Some(status) = server.try_wait() {
            return Err(format!(
                "server exited ({status}) before serving: {}",
                log_tail(log_path)
            ));
        }
        if let (Some(rx), None) = (&ready_rx, ready_line) {
            if let Ok((t, _pids)) = rx.try_recv() {
                ready_line = Some(t);
            }
        }
        if first_ok.is_none() && probe.ok(port) {
            first_ok = Some(Instant::now());
        }
        match (&ready_rx, ready_line, first_ok) {
            (Some(_), Some(r), Some(_)) => return Ok((ms(r), ReadyBy::ReadyLine)),
            (Some(_), None, Some(f)) if f.elapsed() > READY_LINE_GRACE => {
                return Ok((ms(f), ReadyBy::FirstResponse))
            }
            (None, _, Some(f)) => return Ok((ms(f), ReadyBy::FirstResponse)),
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not serving within {}s: {}",
                READY_DEADLINE.as_secs(),
                log_tail(log_path)
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What the readiness poll asks: `GET path` in plain HTTP/1.1, or for the TLS and HTTP/2
/// workloads `GET /` with curl in their protocol.
struct Probe<'a> {
    path: &'a str,
    proto: Option<Proto>,
    cert: &'a Path,
}

impl Probe<'_> {
    fn ok(&self, port: u16) -> bool {
        match self.proto {
            None => http_ok(port, self.path),
            // curl takes a few ms per try: connect first, so a port not yet bound costs none.
            Some(proto) => {
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    && tls::curl_get(proto, port, self.cert, Duration::from_secs(1)).is_ok()
            }
        }
    }
}

/// Does `GET path` on the port answer 200?
pub fn http_ok(port: u16, path: &str) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok()
        && (&head[..] == b"HTTP/1.1 200" || &head[..] == b"HTTP/1.0 200")
}

/// The last lines of a server's log, on one line, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        format!("(no output; log {})", path.display())
    } else {
        format!("{tail} (log {})", path.display())
    }
}

/// Runs the load generator for `w`, bounded in time, and parses its report.
fn run_load(plan: &Plan, w: Workload, port: u16) -> Result<LoadReport, String> {
    let (Some((prog, args)), Some(deadline)) = (plan.load_command(w, port), plan.load_deadline(w))
    else {
        return Err(format!("{} has no load generator", w.name()));
    };
    let name = prog.file_name().map_or_else(
        || "load generator".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let counts = plan.tls_counts();
    let h2load_log = plan.h2load_log();
    for f in [&counts, &h2load_log] {
        match std::fs::remove_file(f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("{}: {e}", f.display()))
            }
            _ => {}
        }
    }
    let mut cmd = Command::new(&prog);
    cmd.args(&args)
        .envs(plan.load_env(w))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = Group::spawn(&mut cmd).map_err(|e| format!("cannot start {name}: {e}"))?;
    let out = read_in_background(g.child_mut().stdout.take());
    let err = read_in_background(g.child_mut().stderr.take());
    let status = g.wait_or_kill(deadline);
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    let err_line = err
        .lines()
        .chain(out.lines())
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    match status {
        None => Err(format!(
            "{name} did not finish within {}s and was killed",
            deadline.as_secs()
        )),
        Some(s) if !s.success() => Err(format!("{name} failed ({s}): {err_line}")),
        Some(_) => match w.tool() {
            Tool::Oha => parse::parse_oha(&out),
            Tool::H2load => {
                let log = std::fs::read_to_string(&h2load_log)
                    .map_err(|e| format!("{}: {e}", h2load_log.display()))?;
                parse::parse_h2load(&out, &log)
            }
            Tool::Wrk | Tool::Harness => {
                let mut report = parse::parse_wrk(&out)?;
                if w.handshakes() {
                    let text = std::fs::read_to_string(&counts)
                        .map_err(|e| format!("wrk's handshake counts {}: {e}", counts.display()))?;
                    report.tls_sessions = Some(TlsSessions::parse(&text).ok_or_else(|| {
                        format!("bad handshake counts in {}: {text:?}", counts.display())
                    })?);
                }
                Ok(report)
            }
        },
    }
}

fn read_in_background<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s
    })
}

/// Samples the VmRSS of a process tree every [`SAMPLE_EVERY`] and keeps each pid's peak.
struct RssSampler {
    stop: mpsc::Sender<()>,
    handle: std::thread::JoinHandle<BTreeMap<u32, u64>>,
}

impl RssSampler {
    fn start(root: u32) -> RssSampler {
        let (stop, rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let mut peak = BTreeMap::new();
            loop {
                for pid in process::tree(root) {
                    if let Some(kib) = process::rss_kib(pid) {
                        let p = peak.entry(pid).or_insert(0);
                        *p = kib.max(*p);
                    }
                }
                match rx.recv_timeout(SAMPLE_EVERY) {
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    _ => break,
                }
            }
            peak
        });
        RssSampler { stop, handle }
    }

    fn finish(self) -> BTreeMap<u32, u64> {
        let _ = self.stop.send(());
        self.handle.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_round_starts_one_server_further() {
        let servers = ["a", "b", "c"];
        let order = |round| super::in_turn(&servers, round).copied().collect::<Vec<_>>();
        assert_eq!(order(1), ["a", "b", "c"]);
        assert_eq!(order(2), ["b", "c", "a"]);
        assert_eq!(order(3), ["c", "a", "b"]);
        assert_eq!(order(4), ["a", "b", "c"]);
        assert!(super::in_turn::<&str>(&[], 2).next().is_none());
    }

    use super::*;

    fn plan(log_dir: &Path) -> Plan {
        Plan {
            rounds: 1,
            servers: SERVERS.to_vec(),
            workloads: Workload::ALL.to_vec(),
            forklift: "/x/forklift".into(),
            ceiling: "/x/forklift-ceiling".into(),
            peers_start: "/peers/start.sh".into(),
            oha: "oha".into(),
            wrk: "wrk".into(),
            h2load: "h2load".into(),
            h2_requests: 1000,
            tls: tls::Files::under(Path::new("/t")),
            conn_requests: 1000,
            wrk_secs: 3,
            idle_connections: 10_000,
            docroot: "/run/docroot".into(),
            log_dir: log_dir.to_path_buf(),
        }
    }

    fn spec(name: &str) -> ServerSpec {
        *SERVERS.iter().find(|s| s.name == name).unwrap()
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn workload_names_round_trip_and_quick_leaves_out_the_static_ones() {
        for w in Workload::ALL {
            assert_eq!(Workload::parse(w.name()), Some(w));
        }
        assert!(Workload::QUICK.iter().all(|w| !w.serves_files()));
        assert_eq!(Workload::ALL.iter().filter(|w| w.serves_files()).count(), 3);
        assert_eq!(Workload::StaticBig.figure(), Figure::MibPerSec);
        assert!(!Workload::Idle.figure().higher_is_better());
        assert_eq!(Workload::Idle.tool(), Tool::Harness);
    }

    /// Asserts that of the servers, only forklift's prefork ones and nginx's run `workloads`.
    fn only_prefork_forklift_and_nginx_serve(workloads: &[Workload]) {
        for &w in workloads {
            let serving: Vec<&str> = SERVERS
                .iter()
                .filter(|s| s.serves(w))
                .map(|s| s.name)
                .collect();
            assert_eq!(
                serving,
                [
                    "forklift",
                    "forklift-reuseport",
                    "forklift-pinned",
                    "nginx",
                    "nginx-reuseport",
                    "nginx-deferred"
                ]
            );
        }
    }

    #[test]
    fn only_forklifts_prefork_server_and_nginx_serve_files() {
        only_prefork_forklift_and_nginx_serve(&[
            Workload::StaticSmall,
            Workload::StaticBig,
            Workload::Idle,
        ]);
        assert_eq!(
            spec("ceiling").skip_reason(Workload::Idle),
            Some("serves no files")
        );
        assert!(spec("forklift-single")
            .skip_reason(Workload::StaticSmall)
            .unwrap()
            .contains("--single-process"));
        // The greeting workloads as before.
        assert!(SERVERS.iter().all(|s| s.serves(Workload::Keepalive)));
        assert_eq!(
            spec("nginx").skip_reason(Workload::Sleep),
            Some("no /sleep endpoint")
        );
    }

    #[test]
    fn static_servers_serve_the_document_root() {
        let dir = std::env::temp_dir().join(format!("forklift-bench-run-{}", std::process::id()));
        let plan = plan(&dir);
        let c = plan
            .server_command(&spec("forklift-reuseport"), Workload::StaticSmall, 20_001)
            .unwrap();
        assert_eq!(
            args(&c),
            [
                "serve",
                "--dir",
                "/run/docroot",
                "--listen",
                "127.0.0.1:20001",
                "--workers",
                "2",
                "--reuse-port"
            ]
        );
        // The greeting workloads keep the demo.
        let c = plan
            .server_command(&spec("forklift"), Workload::Keepalive, 20_001)
            .unwrap();
        assert_eq!(
            args(&c),
            ["serve", "--listen", "127.0.0.1:20001", "--workers", "2"]
        );
        // nginx-reuseport: its config written into the log directory, with its listen option.
        let c = plan
            .server_command(&spec("nginx-reuseport"), Workload::Idle, 20_002)
            .unwrap();
        assert_eq!(c.get_program(), "nginx");
        let rundir = dir.join("nginx-reuseport-static-20002");
        let conf = std::fs::read_to_string(rundir.join("nginx.conf")).unwrap();
        assert!(conf.contains("listen 127.0.0.1:20002 reuseport;"), "{conf}");
        assert!(conf.contains("root /run/docroot;"));
        assert!(conf.contains(&format!("pid {}/nginx.pid;", rundir.display())));
        assert!(!conf.contains('@'), "{conf}");
        assert!(rundir.join("tmp").is_dir());
        // Without the static workloads nginx is start.sh's.
        let c = plan
            .server_command(&spec("nginx"), Workload::Keepalive, 20_003)
            .unwrap();
        assert_eq!(c.get_program(), "/peers/start.sh");
        assert_eq!(args(&c), ["nginx", "20003"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_and_h2_servers_share_the_runs_certificate() {
        let dir = std::env::temp_dir().join(format!("forklift-bench-tls-{}", std::process::id()));
        let plan = plan(&dir);
        let c = plan
            .server_command(&spec("forklift"), Workload::TlsResume, 20_001)
            .unwrap();
        assert_eq!(
            args(&c),
            [
                "serve",
                "--tls-cert",
                "/t/cert.pem",
                "--tls-key",
                "/t/key.pem",
                "--listen",
                "127.0.0.1:20001",
                "--workers",
                "2"
            ]
        );
        // h2c: plain.
        let c = plan
            .server_command(&spec("forklift"), Workload::H2c, 20_001)
            .unwrap();
        assert_eq!(
            args(&c),
            ["serve", "--listen", "127.0.0.1:20001", "--workers", "2"]
        );
        let conf = |name: &str, w: Workload, port: u16| {
            let c = plan.server_command(&spec(name), w, port).unwrap();
            assert_eq!(c.get_program(), "nginx");
            let rundir = dir.join(format!("{name}-{}-{port}", w.name()));
            std::fs::read_to_string(rundir.join("nginx.conf")).unwrap()
        };
        let ka = conf("nginx", Workload::TlsKa, 20_002);
        assert!(ka.contains("listen 127.0.0.1:20002 ssl http2;"), "{ka}");
        assert!(ka.contains("ssl_certificate     /t/cert.pem;"));
        assert!(ka.contains("ssl_session_tickets on;"));
        let full = conf("nginx-reuseport", Workload::TlsFull, 20_003);
        assert!(
            full.contains("listen 127.0.0.1:20003 reuseport ssl http2;"),
            "{full}"
        );
        assert!(full.contains("ssl_session_tickets off;"));
        assert!(full.contains("ssl_session_cache off;"));
        let h2c = conf("nginx", Workload::H2c, 20_004);
        assert!(h2c.contains("listen 127.0.0.1:20004 http2;"), "{h2c}");
        // Only the prefork forklift servers and nginx run them.
        only_prefork_forklift_and_nginx_serve(&[
            Workload::TlsKa,
            Workload::TlsFull,
            Workload::H2,
            Workload::H2c,
        ]);
        // The shim's environment: counts for both, no resumption for tls-full only.
        let env = |w| {
            plan.load_env(w)
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        assert_eq!(env(Workload::TlsKa), Vec::<&str>::new());
        assert_eq!(env(Workload::TlsResume), ["LD_PRELOAD", tls::COUNTS_ENV]);
        assert_eq!(
            env(Workload::TlsFull),
            ["LD_PRELOAD", tls::COUNTS_ENV, tls::NO_RESUME_ENV]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_static_nginx_config_is_what_the_issue_asks_for() {
        for line in [
            "worker_processes 2;",
            "worker_rlimit_nofile 20000;",
            "worker_connections 20000;",
            "sendfile on;",
            "tcp_nopush on;",
            "keepalive_requests 10000;",
            "access_log off;",
            "root @ROOT@;",
            "listen 127.0.0.1:@PORT@@LISTEN_OPTS@;",
        ] {
            assert!(NGINX_STATIC_CONF.contains(line), "{line}");
        }
        let conf = nginx_static_conf(
            "listen 1:@PORT@@LISTEN_OPTS@; root @ROOT@; pid @RUNDIR@/p;",
            20_001,
            " deferred",
            Path::new("/r"),
            Path::new("/d"),
        );
        assert_eq!(conf, "listen 1:20001 deferred; root /d; pid /r/p;");
    }
}
