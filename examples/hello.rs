//! The smallest forklift HTTP server: one worker per CPU, all answering on one port.
//!
//! Shows `Prefork::serve` with a hyper `service_fn`, the hooks, and `on_master_death`.
//!
//! Run it, then try it:
//!
//! ```text
//! cargo run --example hello -- 127.0.0.1:8080
//! curl -i http://127.0.0.1:8080/
//! ```
//!
//! Stop it with Ctrl-C (fast) or `kill -TERM <master pid>` (graceful).

use std::convert::Infallible;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};

async fn hello(_req: Request<forklift::Body>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("hello from worker pid {}\n", std::process::id());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

fn main() -> forklift::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    forklift::Prefork::new()
        .listen(&addr)?
        .on_event(|event| {
            if let forklift::Event::Listening { addresses } = event {
                println!("listening on {}", addresses.join(", "));
            }
        })
        .on_worker_spawn(|w| {
            println!("spawned worker={} pid={}", w.id, w.pid);
            Ok(())
        })
        .on_master_ready(|workers| {
            let pids: Vec<String> = workers.iter().map(|w| w.pid.to_string()).collect();
            println!("ready pids={}", pids.join(","));
            Ok(())
        })
        .on_master_death(|| {
            // One write, so lines from several workers sharing stderr do not interleave.
            let line = format!("master died: worker {} drains\n", std::process::id());
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        })
        .serve(|| service_fn(hello))
}
