//! `forklift serve --dir`, what its own file service adds to what `static_files.rs` checks:
//! the ways a file's bytes can leave (`sendfile` and a `pread` into the write buffer on the
//! fast path, hyper reading the body, TLS with HTTP/1.1 and HTTP/2) give the same bytes for
//! whole files and ranges; a large download does not hold up the other requests of its
//! worker; the open-file cache serves changed files fresh; links out of the root and
//! unreadable files are refused.

mod common;

use common::*;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

// ---------------------------------------------------------------------------------------------
// Files to serve
// ---------------------------------------------------------------------------------------------

/// Bytes that differ at every offset a wrong range would start at.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// `<base>/root` is served; `<base>/secret.txt` sits next to it.
struct Tree {
    base: PathBuf,
    root: PathBuf,
}

impl Tree {
    fn new(tag: &str) -> Tree {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let base = std::env::temp_dir().join(format!(
            "forklift-transfer-{tag}-{}-{nanos}",
            std::process::id()
        ));
        let root = base.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(base.join("secret.txt"), b"TOP-SECRET").unwrap();
        Tree { base, root }
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.root.join(name), bytes).unwrap();
    }

    fn root(&self) -> &str {
        self.root.to_str().unwrap()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// `method path` with extra headers and `Connection: close`, over plain TCP; the whole
/// response, its body checked against its `Content-Length`.
fn plain(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut stream = connect(addr, Duration::from_secs(10)).unwrap();
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path} {headers:?}: {e}"));
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no head in {} bytes", raw.len()));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let resp = Response {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    };
    if method != "HEAD" {
        if let Some(len) = resp.header("content-length") {
            assert_eq!(
                resp.body.len().to_string(),
                len,
                "{method} {path} {headers:?}: body against content-length",
                headers = resp.headers
            );
        }
    }
    resp
}

/// A certificate for localhost in a temporary directory.
struct Certs {
    dir: PathBuf,
    der: CertificateDer<'static>,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "forklift-transfer-tls-{tag}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
        Certs {
            dir,
            der: made.cert.der().clone(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Status, headers and body.
type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// GETs over one HTTPS connection speaking `alpn` (`h2` or `http/1.1`): status, headers
/// and body of each.
fn https(
    addr: SocketAddr,
    certs: &Certs,
    alpn: &[u8],
    requests: &[(&str, &[(&str, &str)])],
) -> Vec<Answer> {
    let mut store = rustls::RootCertStore::empty();
    store.add(certs.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let work = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let io = TokioIo::new(tls);
        let h2 = alpn == b"h2";
        let mut h1_send = None;
        let mut h2_send = None;
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
            tokio::spawn(conn);
            h2_send = Some(send);
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            h1_send = Some(send);
        }
        let mut out = Vec::new();
        for (path, headers) in requests {
            let mut req = hyper::Request::get(format!("https://localhost:{}{path}", addr.port()));
            if !h2 {
                req = hyper::Request::get(*path).header("host", "localhost");
            }
            for (k, v) in *headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Empty::<Bytes>::new()).unwrap();
            let resp = match (&mut h1_send, &mut h2_send) {
                (Some(s), _) => s.send_request(req).await.unwrap(),
                (_, Some(s)) => s.send_request(req).await.unwrap(),
                _ => unreachable!(),
            };
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let body = resp
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec();
            out.push((status, headers, body));
        }
        out
    };
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), work).await })
        .expect("the HTTPS requests finish within 30 s")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------------
// The same bytes, whichever way they leave
// ---------------------------------------------------------------------------------------------

/// Requests whose answers every path must agree on, with the bytes each must carry.
fn cases(small: &[u8], big: &[u8]) -> Vec<(&'static str, Option<&'static str>, Vec<u8>)> {
    let n = big.len();
    vec![
        // 4 KiB: read into the fast path's write buffer.
        ("/small.bin", None, small.to_vec()),
        (
            "/small.bin",
            Some("bytes=100-2099"),
            small[100..2100].to_vec(),
        ),
        // 3 MiB: sendfile, in slices.
        ("/big.bin", None, big.to_vec()),
        (
            "/big.bin",
            Some("bytes=1000-2500000"),
            big[1000..2_500_001].to_vec(),
        ),
        ("/big.bin", Some("bytes=-70000"), big[n - 70_000..].to_vec()),
        // A small range of a big file goes to the buffer.
        (
            "/big.bin",
            Some("bytes=3000000-3000099"),
            big[3_000_000..3_000_100].to_vec(),
        ),
    ]
}

#[test]
fn sendfile_hyper_and_tls_send_the_same_bytes() {
    let tree = Tree::new("same");
    let small = pattern(4096, 1);
    let big = pattern(3 * 1024 * 1024 + 17, 2);
    tree.write("small.bin", &small);
    tree.write("big.bin", &big);
    let certs = Certs::new("same");
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--dir",
        tree.root(),
    ]);
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let tls = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--dir",
        tree.root(),
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let cases = cases(&small, &big);
    for (path, range, want) in &cases {
        let headers: Vec<(&str, &str)> = range.iter().map(|r| ("range", *r)).collect();
        let status = if range.is_some() { 206 } else { 200 };
        let what = format!("{path} {range:?}");
        // The fast path: sendfile or the write buffer.
        let fast = plain(s.addr(), "GET", path, &headers);
        assert_eq!(fast.status, status, "fast path {what}: {:?}", fast.headers);
        assert!(
            fast.body == *want,
            "fast path {what}: {} bytes differ",
            fast.body.len()
        );
        fast.worker_pid();
        // A GET with a Content-Length goes to hyper, which reads the body in 64 KiB preads.
        let mut with_length = headers.clone();
        with_length.push(("content-length", "0"));
        let hyper = plain(s.addr(), "GET", path, &with_length);
        assert_eq!(hyper.status, status, "hyper {what}");
        assert!(
            hyper.body == *want,
            "hyper {what}: {} bytes differ",
            hyper.body.len()
        );
        assert_eq!(hyper.header("etag"), fast.header("etag"), "{what}");
        assert_eq!(
            hyper.header("content-range"),
            fast.header("content-range"),
            "{what}"
        );
        println!("{what}: {} bytes, fast path and hyper agree", want.len());
    }
    // TLS, both protocols, all the requests on one connection each.
    let requests: Vec<(&str, Vec<(&str, &str)>)> = cases
        .iter()
        .map(|(p, r, _)| (*p, r.iter().map(|r| ("range", *r)).collect()))
        .collect();
    let requests: Vec<(&str, &[(&str, &str)])> =
        requests.iter().map(|(p, h)| (*p, h.as_slice())).collect();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let answers = https(tls.addr(), &certs, alpn, &requests);
        for ((path, range, want), (status, headers, body)) in cases.iter().zip(answers) {
            let what = format!("{} {path} {range:?}", String::from_utf8_lossy(alpn));
            assert_eq!(status, if range.is_some() { 206 } else { 200 }, "{what}");
            assert!(body == *want, "{what}: {} bytes differ", body.len());
            assert_eq!(
                header(&headers, "content-length"),
                Some(want.len().to_string().as_str()),
                "{what}"
            );
        }
        println!(
            "TLS {}: {} requests agree",
            String::from_utf8_lossy(alpn),
            cases.len()
        );
    }
}

#[test]
fn head_states_the_length_and_sends_nothing() {
    let tree = Tree::new("head");
    tree.write("big.bin", &pattern(3 * 1024 * 1024, 3));
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--dir",
        tree.root(),
    ]);
    let r = plain(s.addr(), "HEAD", "/big.bin", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("3145728"));
    assert!(r.body.is_empty(), "{} body bytes after HEAD", r.body.len());
    let r = plain(s.addr(), "HEAD", "/big.bin", &[("range", "bytes=10-19")]);
    assert_eq!((r.status, r.header("content-length")), (206, Some("10")));
    assert_eq!(r.header("content-range"), Some("bytes 10-19/3145728"));
    assert!(r.body.is_empty());
    // Pipelined on one connection: HEAD, GET, HEAD; each framed by its own length.
    let mut stream = connect(s.addr(), Duration::from_secs(10)).unwrap();
    let tiny = "GET /tiny HTTP/1.1\r\nHost: x\r\n\r\n";
    tree.write("tiny", b"0123456789");
    let req = format!("HEAD /big.bin HTTP/1.1\r\nHost: x\r\n\r\n{tiny}HEAD /tiny HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    assert_eq!(text.matches("0123456789").count(), 1, "one body: {text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "the last HEAD ends with its head: {text}"
    );
}

#[test]
fn pipelined_files_keep_their_order() {
    let tree = Tree::new("pipeline");
    let big = pattern(2 * 1024 * 1024 + 5, 5);
    tree.write("big.bin", &big);
    tree.write("a.txt", b"first small file");
    tree.write("b.txt", b"second small file");
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--dir",
        tree.root(),
    ]);
    // Small answers gathered in the write buffer go out before the big one's sendfile.
    let get = |p: &str| format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n");
    let req = [
        get("/a.txt"),
        get("/big.bin"),
        get("/b.txt"),
        get("/big.bin"),
        get("/a.txt"),
    ]
    .concat()
        + "GET /b.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut stream = connect(s.addr(), Duration::from_secs(10)).unwrap();
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let mut rest = &raw[..];
    let a = &b"first small file"[..];
    let b = &b"second small file"[..];
    for want in [a, &big[..], b, &big[..], a, b] {
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head = String::from_utf8_lossy(&rest[..end]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200 ok"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", want.len())),
            "{head}"
        );
        let body = &rest[end + 4..end + 4 + want.len()];
        assert!(body == want, "a body of {} bytes out of place", want.len());
        rest = &rest[end + 4 + want.len()..];
    }
    assert!(
        rest.is_empty(),
        "{} bytes after the last response",
        rest.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A large download does not hold up its worker
// ---------------------------------------------------------------------------------------------

#[test]
fn a_large_download_does_not_stall_other_requests_of_its_worker() {
    const BIG: usize = 64 * 1024 * 1024;
    let tree = Tree::new("stall");
    let big = pattern(BIG, 4);
    tree.write("big.bin", &big);
    tree.write("small.txt", b"small and quick\n");
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--dir",
        tree.root(),
    ]);
    let addr = s.addr();
    let worker = s.pids_from_ready()[0];

    // The download: read steadily, a 64 KiB read every millisecond at most (64 MiB in a
    // second or more), so that it is still under way while the small requests are answered.
    let got = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let download = {
        let (got, done) = (got.clone(), done.clone());
        std::thread::spawn(move || -> io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut all = Vec::with_capacity(BIG + 1024);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                got.store(all.len() as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
            done.store(true, Ordering::SeqCst);
            Ok(all)
        })
    };
    assert!(
        poll_until(Instant::now() + Duration::from_secs(20), || {
            got.load(Ordering::SeqCst) >= 4 * 1024 * 1024
        }),
        "the download never reached 4 MiB"
    );
    let mut answered = 0;
    for _ in 0..20 {
        let started = Instant::now();
        let r = http_get_timeout(addr, "/small.txt", Duration::from_secs(5))
            .expect("a small request completes while the download runs");
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"small and quick\n"[..])
        );
        assert_eq!(r.worker_pid(), worker, "the same (only) worker");
        assert!(started.elapsed() < Duration::from_secs(5));
        answered += 1;
    }
    let at = got.load(Ordering::SeqCst);
    assert!(
        !done.load(Ordering::SeqCst),
        "the download ended before the small requests did: nothing was checked"
    );
    println!(
        "{answered} small requests answered while the download stood at {} MiB",
        at >> 20
    );
    let raw = download.join().unwrap().expect("the download completes");
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    assert!(raw[end + 4..] == big[..], "the 64 MiB body is the file");
}

// ---------------------------------------------------------------------------------------------
// The open-file cache
// ---------------------------------------------------------------------------------------------

#[test]
fn changed_files_are_served_fresh() {
    let tree = Tree::new("fresh");
    tree.write("page.html", b"version 1");
    tree.write("a.txt", b"target a");
    tree.write("b.txt", b"target b");
    std::os::unix::fs::symlink("a.txt", tree.root.join("current.txt")).unwrap();
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--dir",
        tree.root(),
    ]);
    let addr = s.addr();
    let body = |path: &str| plain(addr, "GET", path, &[]).body;
    assert_eq!(body("/page.html"), b"version 1");
    assert_eq!(body("/current.txt"), b"target a");

    // Replaced by a rename (as deploy tools and editors write): at once.
    let tmp = tree.root.join("page.tmp");
    std::fs::write(&tmp, b"version 2, longer").unwrap();
    std::fs::rename(&tmp, tree.root.join("page.html")).unwrap();
    assert_eq!(body("/page.html"), b"version 2, longer");
    // Deleted: at once.
    std::fs::remove_file(tree.root.join("page.html")).unwrap();
    assert_eq!(plain(addr, "GET", "/page.html", &[]).status, 404);
    // A link pointed elsewhere: within the cache's validity (1 s).
    let started = Instant::now();
    std::fs::remove_file(tree.root.join("current.txt")).unwrap();
    std::os::unix::fs::symlink("b.txt", tree.root.join("current.txt")).unwrap();
    assert!(
        poll_until(started + Duration::from_secs(10), || body("/current.txt")
            == b"target b"),
        "the link's new target is never served"
    );
    println!(
        "a retargeted link was served fresh after {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn links_out_of_the_root_are_not_followed() {
    let tree = Tree::new("links");
    tree.write("inside.txt", b"inside");
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, tree.root.join(name)).unwrap()
    };
    link(Path::new("inside.txt"), "alias.txt");
    link(Path::new("../secret.txt"), "relative-out.txt");
    link(&tree.base.join("secret.txt"), "absolute-out.txt");
    link(&tree.base, "parent");
    link(Path::new("/etc"), "etc");
    let s = Server::start_ready(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--dir",
        tree.root(),
    ]);
    let addr = s.addr();
    assert_eq!(
        plain(addr, "GET", "/alias.txt", &[]).body,
        b"inside",
        "a link inside is followed"
    );
    for path in [
        "/relative-out.txt",
        "/absolute-out.txt",
        "/parent/secret.txt",
        "/etc/passwd",
        "/etc/hostname",
    ] {
        for method in ["GET", "HEAD"] {
            let r = plain(addr, method, path, &[]);
            assert_eq!(r.status, 404, "{method} {path}: {:?}", r.headers);
            assert!(!String::from_utf8_lossy(&r.body).contains("TOP-SECRET"));
        }
        println!("GET {path}: 404");
    }
}

#[test]
fn an_unreadable_file_is_forbidden() {
    let tree = Tree::new("forbidden");
    tree.write("open.txt", b"open");
    tree.write("closed.txt", b"closed");
    let closed = tree.root.join("closed.txt");
    std::fs::set_permissions(&closed, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--dir",
        tree.root(),
    ];
    if root {
        // root reads any file: serve as nobody, as a deployment would.
        args.extend(["--user", "nobody"]);
        for dir in [&tree.base, &tree.root] {
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
    }
    let s = Server::start_ready(&args);
    assert_eq!(plain(s.addr(), "GET", "/open.txt", &[]).body, b"open");
    let r = plain(s.addr(), "GET", "/closed.txt", &[]);
    assert_eq!(r.status, 403, "{:?}", r.headers);
    assert!(r.body.is_empty());
    r.worker_pid();
}
