//! Chaos (issue 5, scenario 5): oversized and malformed requests get an error status or a
//! closed connection, a request smuggled behind a malformed one is never served, and the
//! worker that read them keeps serving.

mod common;

use common::*;
use std::time::{Duration, Instant};

const SMUGGLED: &[u8] = b"GET /sleep?ms=1 HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn malformed_requests_are_refused_and_the_worker_survives() {
    let s = Server::start_ready(&["serve", "--listen", "127.0.0.1:0", "--workers", "1"]);
    let worker = s.pids_from_ready()[0];
    let addr = s.addr();
    let big = [
        &b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "[..],
        &vec![b'a'; 1 << 20],
        b"\r\n\r\n",
    ]
    .concat();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("1 MiB header", big, false),
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec(), false),
        (
            "NUL in the request line",
            b"GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            false,
        ),
        (
            "invalid chunk size",
            [
                &b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"[..],
                SMUGGLED,
            ]
            .concat(),
            true,
        ),
        (
            "Content-Length and Transfer-Encoding (CL.TE)",
            [
                &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
                SMUGGLED,
            ]
            .concat(),
            true,
        ),
        (
            "Transfer-Encoding and Content-Length (TE.CL)",
            [
                &b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n"[..],
                SMUGGLED,
            ]
            .concat(),
            true,
        ),
        (
            "two Content-Lengths",
            [
                &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"[..],
                SMUGGLED,
            ]
            .concat(),
            true,
        ),
    ];
    for (name, bytes, smuggles) in cases {
        let t0 = Instant::now();
        let a = send_raw(addr, &bytes, Duration::from_secs(3));
        println!(
            "MALFORMED {name}: statuses {:?}, closed {} after {}",
            a.statuses,
            a.closed,
            ms(t0.elapsed())
        );
        if smuggles {
            // The first request may be answered (its body is never read); the one behind
            // it must not be, and the connection must end.
            assert!(
                !a.text.contains("slept 1 ms") && a.statuses.len() <= 1,
                "{name}: a smuggled request was served: {:?}",
                a.text
            );
            assert!(a.closed, "{name}: the connection must be closed");
        } else {
            let error = a.statuses.first().is_some_and(|s| *s >= 400);
            assert!(
                error || (a.closed && a.statuses.is_empty()),
                "{name}: want an error status or a closed connection, got {:?}",
                a.text
            );
            assert!(
                a.closed || error,
                "{name}: the connection was left open without an error"
            );
        }
        // The same worker still answers.
        let r = http_get(addr, "/").unwrap_or_else(|e| panic!("GET / after {name}: {e}"));
        assert_greeting(&r);
        assert_eq!(
            r.worker_pid(),
            worker,
            "after {name}: another worker answered (the first one died?)"
        );
    }
    assert!(
        s.hooks_of("exited").is_empty(),
        "no worker may exit: {:?}",
        s.hooks_of("exited")
    );
    assert!(
        !s.stderr_text().contains("panicked"),
        "no panic may be logged"
    );
}
