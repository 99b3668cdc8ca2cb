//! `forklift serve --dir`: the static file server, over real HTTP on loopback with two
//! workers. Files and content types, index.html, ranges, ETag and Last-Modified with their
//! conditional requests, path traversal, and a bad `--dir`.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// A directory tree to serve, removed when the test ends
// ---------------------------------------------------------------------------------------------

const HELLO: &[u8] = b"hello, forklift\n";
const INDEX: &[u8] = b"<!doctype html><h1>home</h1>\n";
const SUB_INDEX: &[u8] = b"<!doctype html><p>sub</p>\n";
const JSON: &[u8] = b"{\"ok\":true}\n";
/// The PNG signature and the start of an IHDR chunk: the content type goes by the name.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR";
const DIGITS: &[u8] = b"0123456789";

/// `<base>/root/...` is served; `<base>/secret` sits next to the root, never inside it.
struct Tree {
    base: PathBuf,
    root: PathBuf,
    secret: String,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let base = std::env::temp_dir().join(format!(
            "forklift-static-{tag}-{}-{nanos}",
            std::process::id()
        ));
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let secret = format!("TOP-SECRET-{nanos}");
        let files: [(&str, &[u8]); 7] = [
            ("index.html", INDEX),
            ("hello.txt", HELLO),
            ("data.json", JSON),
            ("pixel.png", PNG),
            ("digits.txt", DIGITS),
            ("sub/index.html", SUB_INDEX),
            ("../secret", secret.as_bytes()),
        ];
        for (name, bytes) in files {
            std::fs::write(root.join(name), bytes).unwrap();
        }
        Tree { base, root, secret }
    }

    fn root(&self) -> &str {
        self.root.to_str().expect("a UTF-8 temp path")
    }

    /// `forklift serve --dir <root>` with two workers, ready.
    fn serve(&self) -> Server {
        Server::start_ready(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--dir",
            self.root(),
        ])
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

// ---------------------------------------------------------------------------------------------
// A client with methods and headers (common's client sends a bare GET)
// ---------------------------------------------------------------------------------------------

/// Sends `raw` on a new connection and reads the response until the server closes it.
/// `head` says the response has no body whatever its content-length says (a HEAD request).
fn send_raw(addr: SocketAddr, raw: &[u8], head: bool) -> io::Result<Response> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(raw)?;
    let mut data = Vec::new();
    stream.read_to_end(&mut data)?;
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of headers in {} bytes", data.len())))?;
    let text = String::from_utf8_lossy(&data[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let resp = Response {
        status,
        headers,
        body: data[end + 4..].to_vec(),
    };
    if head || status == 304 {
        if !resp.body.is_empty() {
            return Err(bad(format!(
                "{} body bytes after a bodiless response",
                resp.body.len()
            )));
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("content-length {len:?}")))?;
        if resp.body.len() != len {
            return Err(bad(format!(
                "{} body bytes, content-length {len}",
                resp.body.len()
            )));
        }
    }
    Ok(resp)
}

/// `method target` with extra headers, `Connection: close`.
fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    send_raw(addr, req.as_bytes(), method == "HEAD")
        .unwrap_or_else(|e| panic!("{method} {target} {headers:?}: {e}"))
}

fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Response {
    send(addr, "GET", target, headers)
}

fn header<'a>(r: &'a Response, name: &str) -> &'a str {
    r.header(name)
        .unwrap_or_else(|| panic!("no {name} header in {r:?}"))
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

#[test]
fn files_are_served_whole_with_their_content_types() {
    let tree = Tree::new("types");
    let s = tree.serve();
    let addr = s.addr();
    for (path, bytes, ctype) in [
        ("/hello.txt", HELLO, "text/plain"),
        ("/index.html", INDEX, "text/html"),
        ("/data.json", JSON, "application/json"),
        ("/pixel.png", PNG, "image/png"),
    ] {
        let r = get(addr, path, &[]);
        assert_eq!(r.status, 200, "GET {path}: {r:?}");
        assert_eq!(r.body, bytes, "GET {path}: the file's bytes");
        let ct = header(&r, "content-type");
        assert!(
            ct.starts_with(ctype),
            "GET {path}: content-type {ct:?}, want {ctype}"
        );
        assert_eq!(header(&r, "content-length"), bytes.len().to_string());
        assert_eq!(header(&r, "accept-ranges"), "bytes");
        r.worker_pid();
        println!("GET {path}: 200 {ct}, {} bytes", r.body.len());
    }
    let head = send(addr, "HEAD", "/hello.txt", &[]);
    assert_eq!(head.status, 200);
    assert_eq!(header(&head, "content-length"), HELLO.len().to_string());
    assert!(head.body.is_empty());
}

#[test]
fn directories_serve_index_html_and_missing_files_are_404() {
    let tree = Tree::new("index");
    let s = tree.serve();
    let addr = s.addr();
    let home = get(addr, "/", &[]);
    assert_eq!(home.status, 200, "GET /: {home:?}");
    assert_eq!(home.body, INDEX);
    assert!(header(&home, "content-type").starts_with("text/html"));
    let sub = get(addr, "/sub/", &[]);
    assert_eq!(sub.status, 200, "GET /sub/: {sub:?}");
    assert_eq!(sub.body, SUB_INDEX);
    // Without its slash a directory redirects, so that relative links in its index work.
    let bare = get(addr, "/sub", &[]);
    assert!(
        bare.status == 307 || bare.status == 308 || bare.status == 301,
        "GET /sub: {bare:?}"
    );
    assert_eq!(header(&bare, "location"), "/sub/");
    for path in [
        "/missing.txt",
        "/sub/missing.html",
        "/missing/",
        "/hello.txt/x",
    ] {
        let r = get(addr, path, &[]);
        assert_eq!(r.status, 404, "GET {path}: {r:?}");
        r.worker_pid();
    }
    let post = send(addr, "POST", "/hello.txt", &[("content-length", "0")]);
    assert_eq!(post.status, 405, "POST: {post:?}");
}

// ---------------------------------------------------------------------------------------------
// Ranges
// ---------------------------------------------------------------------------------------------

#[test]
fn ranges_are_served_and_unsatisfiable_ones_refused() {
    let tree = Tree::new("ranges");
    let s = tree.serve();
    let addr = s.addr();
    let r = get(addr, "/digits.txt", &[("range", "bytes=2-4")]);
    assert_eq!(r.status, 206, "{r:?}");
    assert_eq!(r.body, b"234");
    assert_eq!(header(&r, "content-range"), "bytes 2-4/10");
    assert_eq!(header(&r, "content-length"), "3");
    let tail = get(addr, "/digits.txt", &[("range", "bytes=-3")]);
    assert_eq!((tail.status, tail.body.as_slice()), (206, &b"789"[..]));
    let open = get(addr, "/digits.txt", &[("range", "bytes=7-")]);
    assert_eq!((open.status, open.body.as_slice()), (206, &b"789"[..]));

    let r = get(addr, "/digits.txt", &[("range", "bytes=20-30")]);
    assert_eq!(r.status, 416, "{r:?}");
    assert_eq!(header(&r, "content-range"), "bytes */10");
    println!("bytes=2-4: 206 \"234\"; bytes=20-30: 416 bytes */10");
}

#[test]
fn if_range_serves_the_range_only_for_the_current_file() {
    let tree = Tree::new("ifrange");
    let s = tree.serve();
    let addr = s.addr();
    let full = get(addr, "/digits.txt", &[]);
    let lm = header(&full, "last-modified").to_string();
    let etag = header(&full, "etag").to_string();

    let same = get(
        addr,
        "/digits.txt",
        &[("range", "bytes=2-4"), ("if-range", &lm)],
    );
    assert_eq!(
        (same.status, same.body.as_slice()),
        (206, &b"234"[..]),
        "{same:?}"
    );

    let old = "Sat, 01 Jan 2000 00:00:00 GMT";
    let stale = get(
        addr,
        "/digits.txt",
        &[("range", "bytes=2-4"), ("if-range", old)],
    );
    assert_eq!(
        stale.status, 200,
        "a stale copy gets the whole file: {stale:?}"
    );
    assert_eq!(stale.body, DIGITS);
    assert_eq!(header(&stale, "etag"), etag);

    // A weak tag never passes If-Range's strong comparison (RFC 9110, 13.1.5).
    let weak = get(
        addr,
        "/digits.txt",
        &[("range", "bytes=2-4"), ("if-range", &etag)],
    );
    assert_eq!(weak.status, 200, "{weak:?}");
    assert_eq!(weak.body, DIGITS);
}

// ---------------------------------------------------------------------------------------------
// ETag and Last-Modified
// ---------------------------------------------------------------------------------------------

#[test]
fn etags_are_weak_and_the_same_in_every_worker() {
    let tree = Tree::new("etag");
    let s = tree.serve();
    let addr = s.addr();
    let workers: Vec<u32> = s.pids_from_ready();
    let mut seen: BTreeMap<u32, (String, String)> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut requests = 0;
    while seen.len() < workers.len() && Instant::now() < deadline {
        let r = get(addr, "/hello.txt", &[]);
        requests += 1;
        assert_eq!(r.status, 200);
        let tags = (
            header(&r, "etag").to_string(),
            header(&r, "last-modified").to_string(),
        );
        seen.insert(r.worker_pid(), tags);
    }
    assert_eq!(
        seen.len(),
        workers.len(),
        "after {requests} requests only workers {:?} of {workers:?} answered",
        seen.keys()
    );
    let first = seen.values().next().unwrap().clone();
    for (pid, tags) in &seen {
        assert_eq!(tags, &first, "worker {pid} tags the file differently");
    }
    let (etag, lm) = first;
    let mtime = std::fs::metadata(tree.root.join("hello.txt"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        etag,
        format!("W/\"{:x}-{mtime:x}\"", HELLO.len()),
        "W/\"<size hex>-<mtime hex>\""
    );
    println!(
        "{} workers, {requests} requests: etag {etag}, last-modified {lm}",
        seen.len()
    );

    let head = send(addr, "HEAD", "/hello.txt", &[]);
    assert_eq!(header(&head, "etag"), etag, "HEAD");
    let part = get(addr, "/hello.txt", &[("range", "bytes=0-4")]);
    assert_eq!(part.status, 206);
    assert_eq!(
        header(&part, "etag"),
        etag,
        "a range of the file has the file's tag"
    );
    let missing = get(addr, "/missing.txt", &[]);
    assert_eq!(missing.header("etag"), None, "a 404 has no tag");
}

/// A 304: no body, the file's validators, the worker header.
fn assert_not_modified(r: &Response, etag: &str, lm: &str, what: &str) {
    assert_eq!(r.status, 304, "{what}: {r:?}");
    assert!(r.body.is_empty(), "{what}: a 304 has no body");
    assert_eq!(r.header("etag"), Some(etag), "{what}: the ETag");
    assert_eq!(
        r.header("last-modified"),
        Some(lm),
        "{what}: the Last-Modified"
    );
    r.worker_pid();
}

#[test]
fn if_none_match_answers_304_for_the_current_tag() {
    let tree = Tree::new("inm");
    let s = tree.serve();
    let addr = s.addr();
    let full = get(addr, "/hello.txt", &[]);
    let etag = header(&full, "etag").to_string();
    let lm = header(&full, "last-modified").to_string();
    let strong = etag.trim_start_matches("W/").to_string();
    let listed = format!("\"nope\", {etag}");
    for value in [etag.as_str(), strong.as_str(), listed.as_str(), "*"] {
        let r = get(addr, "/hello.txt", &[("if-none-match", value)]);
        assert_not_modified(&r, &etag, &lm, &format!("GET If-None-Match: {value}"));
        let r = send(addr, "HEAD", "/hello.txt", &[("if-none-match", value)]);
        assert_not_modified(&r, &etag, &lm, &format!("HEAD If-None-Match: {value}"));
    }
    let other = get(addr, "/hello.txt", &[("if-none-match", "W/\"0-0\"")]);
    assert_eq!((other.status, other.body.as_slice()), (200, HELLO));

    // If-None-Match takes precedence: a mismatching tag beats a matching date.
    let both = get(
        addr,
        "/hello.txt",
        &[("if-none-match", "\"nope\""), ("if-modified-since", &lm)],
    );
    assert_eq!(both.status, 200, "{both:?}");
    assert_eq!(both.body, HELLO);

    // A range request for a file the client already has: 304, not 206.
    let ranged = get(
        addr,
        "/hello.txt",
        &[("if-none-match", &etag), ("range", "bytes=0-1")],
    );
    assert_not_modified(&ranged, &etag, &lm, "If-None-Match with Range");

    // A new version of the file gets a new tag, and the old one no longer matches.
    std::fs::write(tree.root.join("hello.txt"), b"hello again, a longer file\n").unwrap();
    let changed = get(addr, "/hello.txt", &[("if-none-match", &etag)]);
    assert_eq!(changed.status, 200, "{changed:?}");
    assert_eq!(changed.body, b"hello again, a longer file\n");
    let new_tag = header(&changed, "etag");
    assert_ne!(new_tag, etag);
    println!("304 for {etag}; after a rewrite 200 with {new_tag}");
}

#[test]
fn if_modified_since_answers_304_with_the_validators() {
    let tree = Tree::new("ims");
    let s = tree.serve();
    let addr = s.addr();
    let full = get(addr, "/data.json", &[]);
    let etag = header(&full, "etag").to_string();
    let lm = header(&full, "last-modified").to_string();
    let r = get(addr, "/data.json", &[("if-modified-since", &lm)]);
    assert_not_modified(&r, &etag, &lm, "If-Modified-Since: Last-Modified");
    let r = send(addr, "HEAD", "/data.json", &[("if-modified-since", &lm)]);
    assert_not_modified(&r, &etag, &lm, "HEAD If-Modified-Since");
    let future = "Fri, 01 Jan 2100 00:00:00 GMT";
    let r = get(addr, "/data.json", &[("if-modified-since", future)]);
    assert_not_modified(&r, &etag, &lm, "If-Modified-Since: a later date");

    let old = get(
        addr,
        "/data.json",
        &[("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")],
    );
    assert_eq!((old.status, old.body.as_slice()), (200, JSON), "{old:?}");
    let junk = get(addr, "/data.json", &[("if-modified-since", "last tuesday")]);
    assert_eq!(junk.status, 200, "a malformed date is ignored: {junk:?}");
}

// ---------------------------------------------------------------------------------------------
// Path traversal
// ---------------------------------------------------------------------------------------------

#[test]
fn traversal_never_reaches_outside_the_root() {
    let tree = Tree::new("traversal");
    let s = tree.serve();
    let addr = s.addr();
    let passwd = std::fs::read("/etc/passwd").unwrap_or_default();
    let targets = [
        "/../secret",
        "/%2e%2e/secret",
        "/%2E%2E/secret",
        "/sub/../../secret",
        "/sub/%2e%2e/%2e%2e/secret",
        "/./../secret",
        "/..%2fsecret",
        "/..%2Fsecret",
        "/%2e%2e%2fsecret",
        "/sub/..%2f..%2fsecret",
        "/..%5csecret",
        "/%00/../secret",
        "//etc/passwd",
        "/%2fetc/passwd",
        "/%2Fetc%2Fpasswd",
        "///etc/passwd",
        "http://127.0.0.1/../secret",
    ];
    for target in targets {
        for method in ["GET", "HEAD"] {
            let raw = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let r = match send_raw(addr, raw.as_bytes(), method == "HEAD") {
                Ok(r) => r,
                // A request-target hyper refuses to parse may end the connection: no content.
                Err(e) => {
                    println!("{method} {target}: {e}");
                    continue;
                }
            };
            let body = String::from_utf8_lossy(&r.body);
            assert!(
                !body.contains(&tree.secret),
                "{method} {target} returned the secret next to the root: {r:?}"
            );
            assert!(
                passwd.is_empty() || r.body != passwd,
                "{method} {target} returned /etc/passwd"
            );
            assert!(
                r.status == 404 || r.status == 400,
                "{method} {target}: status {} (want 404 or 400)",
                r.status
            );
            if method == "GET" {
                println!("{method} {target}: {}", r.status);
            }
        }
    }
    // The file is there, and the server still serves what is inside the root.
    assert!(tree.base.join("secret").exists());
    assert_eq!(get(addr, "/hello.txt", &[]).body, HELLO);
}

// ---------------------------------------------------------------------------------------------
// A bad --dir
// ---------------------------------------------------------------------------------------------

/// Runs `serve --dir <dir>`, which must fail before binding or spawning; returns the error.
fn refused_dir(dir: &Path) -> String {
    let dir = dir.to_str().unwrap();
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--dir",
        dir,
    ];
    let (s, st) = run_to_exit(&args, Duration::from_secs(5));
    assert!(!st.success(), "forklift {args:?} must fail");
    assert!(
        st.code().is_some(),
        "exit code, not a signal: {}",
        describe_status(&st)
    );
    s.wait_output_closed(Instant::now() + Duration::from_secs(2));
    let out = s.stdout_lines();
    assert!(
        !out.iter().any(|l| l.starts_with("spawned ")),
        "no worker may start: {out:?}"
    );
    assert!(
        poll_until(Instant::now() + Duration::from_secs(1), || group_empty(
            s.pgid
        )),
        "processes left: {:?}",
        group_members(s.pgid)
    );
    let err = error_line(&s)
        .unwrap_or_else(|| panic!("no `forklift: error: ` line; stderr:\n{}", s.stderr_text()));
    assert!(err.contains(dir), "the error names the directory: {err}");
    println!("--dir {dir}: {}: {err}", describe_status(&st));
    err
}

#[test]
fn a_missing_dir_is_refused_before_any_worker_starts() {
    let tree = Tree::new("missing");
    let err = refused_dir(&tree.base.join("no-such-dir"));
    assert!(err.contains("No such file or directory"), "{err}");
}

#[test]
fn a_file_as_dir_is_refused_before_any_worker_starts() {
    let tree = Tree::new("file");
    let err = refused_dir(&tree.root.join("hello.txt"));
    assert!(err.contains("not a directory"), "{err}");
}
