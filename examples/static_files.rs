//! Static files in an axum application, pre-forked: routes first, then the files of a
//! directory for every other path.
//!
//! Shows `forklift::StaticFiles` mounted with axum's `Router::fallback_service` (`nest_service`
//! works the same way under a prefix). It is the service behind `forklift serve --dir`, with
//! the same answers: ranges, `ETag` and `Last-Modified` with their conditional requests,
//! `index.html`, no path out of the directory. On plain HTTP/1.1 the worker sends the files
//! with `sendfile(2)`, through axum's body type too.
//!
//! ```text
//! cargo run --example static_files --features axum -- 127.0.0.1:8080 ./public
//! curl http://127.0.0.1:8080/api/hello           # a route
//! curl -i http://127.0.0.1:8080/index.html       # a file of ./public
//! curl -r 0-99 http://127.0.0.1:8080/big.bin     # its first 100 bytes
//! ```

use axum::routing::get;
use axum::Router;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let dir = args.next().unwrap_or_else(|| ".".to_string());
    // Opened once, in the master: a missing directory stops here with its name, before any
    // worker starts. Each worker's clone keeps its own open-file cache.
    let files = forklift::StaticFiles::new(&dir)?;
    println!("serving {}", files.root().display());
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
        .serve_tower(move || {
            Router::new()
                .route("/api/hello", get(|| async { "hello from axum\n" }))
                .fallback_service(files.clone())
        })?;
    Ok(())
}
