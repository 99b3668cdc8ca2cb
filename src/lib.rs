//! # forklift
//!
//! Run a network server as a supervised pool of pre-forked worker processes: one process per
//! core, all serving the same port, each on its own single-threaded tokio runtime (no work
//! stealing, no cross-core sharing).
//!
//! ```
//! use std::convert::Infallible;
//! use http_body_util::Full;
//! use hyper::{body::Bytes, service::service_fn, Request, Response};
//!
//! async fn hello(_: Request<forklift::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
//!     Ok(Response::new(Full::new(Bytes::from("greeting!!!"))))
//! }
//!
//! fn main() -> forklift::Result<()> {
//!     forklift::Prefork::new()            // one worker per CPU by default
//!         .listen("127.0.0.1:0")?         // port 0: any free port
//!         .on_master_ready(|workers| {    // every worker serves now; this example stops
//!             println!("{} workers ready", workers.len());
//!             forklift::request_stop(true);
//!             Ok(())
//!         })
//!         .serve(|| service_fn(hello))    // called once in each worker
//! }
//! ```
//!
//! ## Processes
//!
//! ```text
//! master (single-threaded: binds, spawns, reaps, decides)
//!   ├─ worker 0  (listener fd(s) + a channel to the master)
//!   ├─ worker 1
//!   └─ ...
//! ```
//!
//! - **The master binds**, always, so a taken port or a bad address fails before any worker
//!   exists. Shared-socket mode (default): every worker accepts on the master's socket.
//!   Reuseport mode ([`Prefork::reuse_port`]): one `SO_REUSEPORT` socket per worker, which
//!   the master keeps across that worker's restarts.
//! - **Workers are spawned** by `fork` ([`Spawn::Fork`], default; refused if the master
//!   already runs several threads) or by re-executing the binary ([`Spawn::Exec`], fasthttp's
//!   model: the listeners arrive as fds from 3 with `LISTEN_FDS`/`LISTEN_PID`, and
//!   [`is_worker`] tells `main` which side it is on), or by a command of the caller's
//!   ([`Spawn::Command`]).
//! - **Readiness**: each worker reports on its channel when it serves; `on_master_ready`
//!   fires when all have.
//! - **Supervision**: a crashed worker is respawned (at once, then with capped exponential
//!   backoff if it keeps crashing); more than `recover_threshold` crashes within the recover
//!   window stop the server with [`Error::OverRecovery`]. A worker that fails before it is
//!   ready stops the server with [`Error::WorkerBoot`] instead of a respawn loop.
//! - **Master death**: workers notice at once (end-of-file on their channel; on Linux also a
//!   parent-death signal checked against the master's pid), run `on_master_death`, drain and
//!   exit. No worker keeps the port after `kill -9` of the master.
//!
//! ## Signals (to the master)
//!
//! | signal | effect |
//! |---|---|
//! | TERM, QUIT | graceful stop: workers stop accepting and finish in-flight requests within the graceful timeout, then are killed; `serve` returns `Ok` |
//! | INT | fast stop: workers drop their connections and exit; killed after 1 s |
//! | CHLD | reap and respawn |
//!
//! ## Feature flags
//!
//! - `tls`: HTTPS with rustls ([`Prefork::tls_files`], [`Prefork::tls_pem`]).
//! - `tower`: [`Prefork::serve_tower`] for any tower `Service` (tower-http, axum).
//! - `axum`: an alias of `tower`, for the axum example.
//!
//! ## Hooks
//!
//! [`Prefork::on_worker_spawn`], [`Prefork::on_master_ready`], [`Prefork::on_worker_recover`],
//! [`Prefork::on_worker_exit`] and [`Prefork::on_master_death`] (fasthttp's hooks, plus exit),
//! and [`Prefork::on_event`] for every lifecycle [`Event`]. A spawn or ready hook that returns
//! an error stops start-up, as in fasthttp.
#![deny(missing_docs, missing_debug_implementations)]
#![warn(unsafe_op_in_unsafe_fn)]

#[cfg(not(unix))]
compile_error!(
    "forklift runs on Unix (Linux first, macOS too): it is built on fork, fds and signals"
);

mod addr;
mod builder;
mod config;
mod error;
mod hooks;
mod http;
mod master;
mod protocol;
mod spawn;
mod sys;
mod worker;

pub use addr::{ListenAddr, Network};
pub use builder::Prefork;
pub use config::{
    default_workers, DEFAULT_BACKLOG, DEFAULT_BOOT_TIMEOUT, DEFAULT_GRACEFUL_TIMEOUT,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_RECOVER_THRESHOLD, DEFAULT_RECOVER_WINDOW,
    DEFAULT_WORKER_TIMEOUT,
};
pub use error::{BoxError, Error, Result};
pub use hooks::{Event, WorkerInfo};
#[doc(hidden)]
pub use http::__serve_connection;
pub use http::body::Body;
pub use sys::control::control;
pub use sys::process::ExitStatus;

/// Sets on `listener` what `Prefork::defer_accept` sets on the workers' listeners (for the
/// CLI's single-process baseline). Not a stable API.
#[doc(hidden)]
pub fn __defer_accept(listener: &std::net::TcpListener) {
    http::accept::defer_accept_on(listener)
}
pub use protocol::BOOT_ERROR_EXIT_CODE;
pub use spawn::{CommandProducer, Readiness, Spawn, WorkerSlot};
pub use sys::listener::Listener;
pub use sys::signals::{request_reload, request_scale, request_stop};
pub use worker::{is_worker, Worker};

/// Entry points for forklift's fuzz targets (`fuzz/`): the parsers of input that crosses a
/// process boundary. Not part of the API; may change at any time.
#[doc(hidden)]
pub mod __fuzz {
    /// `LISTEN_PID`/`LISTEN_FDS` as a worker or master reads them.
    pub fn listen_fds(
        pid: Option<&str>,
        fds: Option<&str>,
        me: u32,
    ) -> Result<Option<usize>, String> {
        crate::protocol::listen_fds(pid, fds, me)
    }

    /// The worker-to-master status channel: returns how many messages a buffer held.
    pub fn status_messages(bytes: &[u8]) -> usize {
        let mut buf = bytes.to_vec();
        crate::protocol::Message::drain(&mut buf).len()
    }

    /// A `LISTEN_FDNAMES` entry of a binary upgrade.
    pub fn fd_name(name: &str) -> Option<(usize, Option<usize>)> {
        crate::sys::listener::parse_fd_name(name)
    }

    /// What the HTTP/1 fast path makes of bytes a client sent.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Http1Head {
        /// A request it serves, taking `len` bytes: method, URI, header fields.
        Request {
            len: usize,
            method: String,
            uri: String,
            fields: usize,
            keep_alive: bool,
        },
        /// Not complete yet.
        Partial,
        /// For hyper, with the bytes left as they were.
        Handoff,
    }

    /// Parses the head at the start of `bytes` as a worker's fast path does.
    pub fn http1_head(bytes: &[u8]) -> Http1Head {
        let mut buf = bytes::BytesMut::from(bytes);
        match crate::http::fast::parse(&mut buf) {
            crate::http::fast::Parsed::Complete(head) => Http1Head::Request {
                len: bytes.len() - buf.len(),
                method: head.req.method().to_string(),
                uri: head.req.uri().to_string(),
                fields: head.req.headers().len(),
                keep_alive: head.keep_alive,
            },
            crate::http::fast::Parsed::Partial => Http1Head::Partial,
            crate::http::fast::Parsed::Handoff | crate::http::fast::Parsed::Rejected(_) => {
                Http1Head::Handoff
            }
        }
    }
}
