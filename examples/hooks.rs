//! Every hook and every lifecycle event, printed as it fires.
//!
//! Shows `on_event` (all [`forklift::Event`]s, in order), `on_worker_spawn`,
//! `on_master_ready`, `on_worker_exit`, `on_worker_recover` (in the master) and
//! `on_master_death` (in each worker). Run it with two workers:
//!
//! ```text
//! cargo run --example hooks -- 127.0.0.1:8080
//! ```
//!
//! It prints the master's pid, then `Listening`, a `WorkerSpawned` and `on_worker_spawn` pair
//! per worker, a `WorkerReady` per worker, then `MasterReady` and `on_master_ready`. Then,
//! from another terminal:
//!
//! - `kill -9 <a worker pid>`: a crash. The master prints `WorkerExited` (`expected: false`,
//!   killed by SIGKILL) and `on_worker_exit`, starts a replacement at once (`WorkerSpawned`,
//!   `on_worker_spawn`), then `WorkerRecovered` and `on_worker_recover` with the old and new
//!   pids. Kill the replacement quickly and the next one waits (100 ms, then 200 ms, ...: the
//!   backoff); kill more than ten within a minute and the master stops with an error.
//! - `kill -TERM <master pid>`: a graceful stop. `Stopping { graceful: true }`, then a
//!   `WorkerExited` with `expected: true` per worker, and the master returns `Ok`.
//! - `kill -9 <master pid>`: the master cannot say anything, but each worker notices and runs
//!   `on_master_death` before it drains and exits; no process keeps the port.
//!
//! `curl http://127.0.0.1:8080/` names the worker that answered.

use std::convert::Infallible;
use std::io::Write;

use forklift::{Event, Prefork};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};

/// Prints one line with a single write, so that lines from several processes sharing the
/// terminal do not interleave.
fn say(line: String) {
    let _ = std::io::stdout().write_all(format!("{line}\n").as_bytes());
}

async fn hello(_req: Request<forklift::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("hello from worker pid {}\n", std::process::id());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

fn main() -> forklift::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    say(format!("master pid {}", std::process::id()));
    let result = Prefork::new()
        .workers(2)
        .listen(&addr)?
        // Every event, before the hook that matches it.
        .on_event(|event: &Event| say(format!("event  {event:?}")))
        .on_worker_spawn(|w| {
            say(format!(
                "hook   on_worker_spawn    worker={} pid={} generation={}",
                w.id, w.pid, w.generation
            ));
            // An error here would stop the server: `Err("no more workers".into())`.
            Ok(())
        })
        .on_master_ready(|workers| {
            let pids: Vec<String> = workers.iter().map(|w| w.pid.to_string()).collect();
            say(format!("hook   on_master_ready    pids={}", pids.join(",")));
            Ok(())
        })
        .on_worker_exit(|w, status| {
            say(format!(
                "hook   on_worker_exit     worker={} pid={} {status}",
                w.id, w.pid
            ));
        })
        .on_worker_recover(|old, new| {
            say(format!(
                "hook   on_worker_recover  worker={} old_pid={} new_pid={}",
                new.id, old.pid, new.pid
            ));
        })
        // Runs in a worker, not in the master: the master is gone.
        .on_master_death(|| {
            say(format!(
                "hook   on_master_death    in worker pid {}: draining and exiting",
                std::process::id()
            ));
        })
        .serve(|| service_fn(hello));
    match &result {
        Ok(()) => say("master: stopped".to_string()),
        Err(e) => say(format!("master: stopped with an error: {e}")),
    }
    result
}
