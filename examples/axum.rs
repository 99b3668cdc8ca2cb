//! An axum application, pre-forked: each worker builds its own `Router` and its own state.
//!
//! Shows `Prefork::serve_tower` with an axum 0.8 `Router` of two routes and per-worker state.
//! The factory closure runs once in each worker, so the hit counter below is shared by the
//! requests one worker serves and by nothing else: workers are processes and share no memory.
//! Keep shared state (sessions, caches that must agree) outside, in a database or Redis.
//!
//! ```text
//! cargo run --example axum --features axum -- 127.0.0.1:8080
//! curl http://127.0.0.1:8080/            # which worker answered
//! curl http://127.0.0.1:8080/hits        # that worker's own count
//! ```
//!
//! Repeat the `curl`s: the pid changes from one connection to the next, and each worker counts
//! its own hits. Stop with Ctrl-C (fast) or `kill -TERM <master pid>` (graceful).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;

/// What one worker's handlers share. axum wants state that is `Clone + Send + Sync`, hence
/// the `Arc`, even though a worker serves on one thread.
#[derive(Clone)]
struct WorkerState {
    pid: u32,
    hits: Arc<AtomicU64>,
}

async fn hello(State(worker): State<WorkerState>) -> String {
    format!("hello from worker pid {}\n", worker.pid)
}

async fn hits(State(worker): State<WorkerState>) -> String {
    let n = worker.hits.fetch_add(1, Ordering::Relaxed) + 1;
    format!("worker pid {} has counted {n} hits\n", worker.pid)
}

/// Builds the application of one worker; called in the worker, after the fork.
fn app() -> Router {
    let state = WorkerState {
        pid: std::process::id(),
        hits: Arc::new(AtomicU64::new(0)),
    };
    Router::new()
        .route("/", get(hello))
        .route("/hits", get(hits))
        .with_state(state)
}

fn main() -> forklift::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    println!("master pid {}", std::process::id());
    forklift::Prefork::new()
        .listen(&addr)?
        .on_event(|event| {
            if let forklift::Event::Listening { addresses } = event {
                println!("listening on http://{}", addresses.join(", http://"));
            }
        })
        .on_master_ready(|workers| {
            let pids: Vec<String> = workers.iter().map(|w| w.pid.to_string()).collect();
            println!("ready pids={}", pids.join(","));
            Ok(())
        })
        .serve_tower(app)
}
