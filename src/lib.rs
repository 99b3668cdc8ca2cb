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
//! - **Supervision**: a worker that crashes after it served is always respawned (at once,
//!   then with capped exponential backoff if it keeps crashing), and the log says what
//!   killed it. The master stops only when workers cannot boot ([`Error::WorkerBoot`]): the
//!   first generation cannot become ready, or 10 spawns in a row of one slot fail before
//!   ready. An opt-in `recover_threshold` (fasthttp's) stops the server after that many
//!   crashes within the recover window ([`Error::OverRecovery`]).
//! - **Master death**: workers notice at once (end-of-file on their channel; on Linux also a
//!   parent-death signal checked against the master's pid), run `on_master_death`, drain and
//!   exit. No worker keeps the port after `kill -9` of the master.
//!
//! ## Signals (to the master)
//!
//! Every signal, control-socket word ([`control`]) and API call ([`request_stop`],
//! [`request_reload`], [`request_scale`]) becomes the same command, applied in one place.
//!
//! | signal | control socket | API | effect |
//! |---|---|---|---|
//! | TERM, QUIT | `stop` | `request_stop(true)` | graceful stop: unready at once; after the shutdown delay (default none) workers stop accepting, serve what waits in the accept queue and finish in-flight requests within the graceful timeout, then are killed; `serve` returns `Ok` |
//! | INT | | `request_stop(false)` | fast stop: workers drop their connections and exit; killed after 1 s |
//! | HUP | `reload` | `request_reload()` | rolling reload: a new generation starts; the old one drains once all of it serves |
//! | USR1 | `reopen-logs` | `request_reopen_logs()` | reopen the log files ([`Prefork::error_log`], [`Prefork::access_log_file`]) after logrotate renamed them: the master its own, each worker its own, told on its channel; a line goes whole to the old file or the new one |
//! | USR2 | `upgrade` | | binary upgrade: the binary (as invoked) runs again as a new master with the sockets; the old one drains once it serves |
//! | TTIN, TTOU | `incr`, `decr` | `request_scale(..)` | one worker more, one fewer |
//! | CHLD | | | reap and respawn |
//! | | `status`, `status-json` | | the master and one row per worker |
//! | | `drain`, `undrain` | `request_drain(..)` | the health port's `/readyz` answers 503 (200 again) while the workers keep serving |
//!
//! ## Feature flags
//!
//! - `tls`: HTTPS with rustls and aws-lc-rs ([`Prefork::tls_files`], [`Prefork::tls_pem`],
//!   several certificates chosen by SNI), with session tickets every worker opens, across
//!   reloads and binary upgrades ([`Prefork::tls_ticket_rotation`],
//!   [`Prefork::tls_ticket_key_file`]).
//! - `tower`: [`Prefork::serve_tower`] for any tower `Service` (tower-http, axum).
//! - `axum`: an alias of `tower`, for the axum example.
//!
//! ## Hooks
//!
//! [`Prefork::on_worker_spawn`], [`Prefork::on_master_ready`], [`Prefork::on_worker_recover`],
//! [`Prefork::on_worker_exit`] and [`Prefork::on_master_death`] (fasthttp's hooks, plus exit),
//! [`Prefork::on_reload`] (re-read settings on SIGHUP, [`ReloadSettings`]),
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
mod files;
mod hooks;
mod http;
mod internal;
mod master;
mod protocol;
mod reload_settings;
mod spawn;
mod sys;
mod worker;

pub use addr::{ListenAddr, Network};
pub use builder::Prefork;
pub use config::{
    default_workers, DEFAULT_BACKLOG, DEFAULT_BOOT_TIMEOUT, DEFAULT_GRACEFUL_TIMEOUT,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT, DEFAULT_RECOVER_WINDOW,
    DEFAULT_WORKER_TIMEOUT,
};
pub use error::{BoxError, Error, Result};
pub use files::{FileBody, StaticFiles};
pub use hooks::{Event, WorkerInfo};
pub use http::access_log::LogFormat;
pub use http::body::Body;
pub use http::client::ClientAddr;
#[doc(hidden)]
pub use internal::{
    check as __check, defer_accept as __defer_accept, fuzz as __fuzz,
    serve_connection as __serve_connection,
};
pub use sys::control::control;
pub use sys::process::ExitStatus;

pub use master::{request_drain, request_reload, request_reopen_logs, request_scale, request_stop};
pub use protocol::BOOT_ERROR_EXIT_CODE;
pub use reload_settings::ReloadSettings;
pub use spawn::{CommandProducer, Readiness, Spawn, WorkerSlot};
pub use sys::listener::Listener;
pub use worker::{is_worker, Worker};
