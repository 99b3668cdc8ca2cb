//! The access log: one line per request on stderr with `--access-log`, none without.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn access_log_names_request_status_bytes_and_worker() {
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--access-log",
    ]);
    let r = http_get(s.addr(), "/").expect("GET /");
    assert_eq!(r.status, 200);
    let pid = r.header("x-forklift-worker").unwrap().to_string();
    let missing = http_get(s.addr(), "/missing").expect("GET /missing");
    assert_eq!(missing.status, 404);

    let line = s
        .wait_stderr_contains("path=/ status=200", Duration::from_secs(5))
        .expect("no access line for GET /");
    assert!(line.contains("forklift::access"), "{line}");
    assert!(line.contains("method=GET"), "{line}");
    assert!(line.contains("bytes=11"), "{line}");
    assert!(line.contains("duration_ms="), "{line}");
    assert!(
        line.contains(&format!("pid={pid}")),
        "worker missing: {line}"
    );
    let line = s
        .wait_stderr_contains("path=/missing status=404", Duration::from_secs(5))
        .expect("no access line for GET /missing");
    assert!(line.contains("bytes=10"), "{line}");
}

#[test]
fn no_access_log_by_default() {
    let mut s = Server::start_ready(&["serve", "--listen", "127.0.0.1:0", "--workers", "1"]);
    let r = http_get(s.addr(), "/").expect("GET /");
    assert_eq!(r.status, 200);
    // Stop, and read stderr to its end: a log line, had there been one, is in it then.
    s.send_signal(libc::SIGTERM);
    let status = s.wait_exit(std::time::Instant::now() + Duration::from_secs(10));
    assert!(status.success());
    assert!(s.wait_output_closed(std::time::Instant::now() + Duration::from_secs(5)));
    assert!(
        s.stderr_text().contains("SIGTERM"),
        "the log itself works: {}",
        s.stderr_text()
    );
    assert!(
        !s.stderr_text().contains("forklift::access"),
        "{}",
        s.stderr_text()
    );
}
