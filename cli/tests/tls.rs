//! HTTPS: real TLS handshakes with certificates made at test time (rcgen), HTTP/1.1 and
//! HTTP/2 over TLS through hyper's client, start-up refused with a clear message for bad
//! certificate input, and a renewed certificate served by a respawned worker.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};

/// A temporary directory with a certificate and key, removed on drop.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("forklift-tls-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Certs { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Writes a fresh self-signed certificate for localhost (atomically, as a renewal
    /// tool would) and returns its DER form.
    fn issue(&self) -> CertificateDer<'static> {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        replace(&self.cert(), made.cert.pem().as_bytes());
        replace(&self.key(), made.signing_key.serialize_pem().as_bytes());
        made.cert.der().clone()
    }

    fn args<'a>(&'a self, cert: &'a str, key: &'a str, workers: &'a str) -> Vec<&'a str> {
        vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            workers,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ]
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Answer {
    version: hyper::Version,
    status: u16,
    worker: String,
    body: String,
    alpn: Option<Vec<u8>>,
    peer_cert: CertificateDer<'static>,
}

/// One HTTPS GET over a new connection, trusting `roots`, offering `alpn`.
fn https_get(
    addr: std::net::SocketAddr,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> Result<Answer, String> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let work = async {
            let tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let name = ServerName::try_from("localhost").unwrap();
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            let (_, session) = tls.get_ref();
            let alpn = session.alpn_protocol().map(|p| p.to_vec());
            let peer_cert = session.peer_certificates().unwrap()[0].clone().into_owned();
            let req = hyper::Request::get("/")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = if alpn.as_deref() == Some(b"h2") {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .map_err(|e| format!("h2 handshake: {e}"))?;
                tokio::spawn(conn);
                let req = {
                    let (mut parts, body) = req.into_parts();
                    parts.uri = format!("https://localhost:{}/", addr.port())
                        .parse()
                        .unwrap();
                    hyper::Request::from_parts(parts, body)
                };
                send.send_request(req).await.map_err(|e| e.to_string())?
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| format!("http1 handshake: {e}"))?;
                tokio::spawn(conn);
                send.send_request(req).await.map_err(|e| e.to_string())?
            };
            let version = resp.version();
            let status = resp.status().as_u16();
            let worker = resp
                .headers()
                .get("x-forklift-worker")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok(Answer {
                version,
                status,
                worker,
                body: String::from_utf8_lossy(&body).into_owned(),
                alpn,
                peer_cert,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .map_err(|_| "timed out".to_string())?
    })
}

#[test]
fn https_serves_http1_and_h2_with_alpn() {
    let certs = Certs::new("alpn");
    let der = certs.issue();
    let (cert, key) = (certs.cert(), certs.key());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let s = Server::start_ready(&certs.args(cert, key, "2"));
    assert!(
        s.stdout_text().contains("listening on https://127.0.0.1:"),
        "{}",
        s.stdout_text()
    );
    let addr = s.addr();
    let pids = s.pids_from_ready();

    let h1 =
        https_get(addr, std::slice::from_ref(&der), &[b"http/1.1"]).expect("HTTPS over HTTP/1.1");
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.version, hyper::Version::HTTP_11);
    assert_eq!((h1.status, h1.body.as_str()), (200, "greeting!!!"));
    assert!(pids.contains(&h1.worker.parse().unwrap()));

    let h2 = https_get(addr, std::slice::from_ref(&der), &[b"h2", b"http/1.1"])
        .expect("HTTPS over HTTP/2");
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.version, hyper::Version::HTTP_2);
    assert_eq!((h2.status, h2.body.as_str()), (200, "greeting!!!"));
    assert_eq!(h2.peer_cert, der);

    // Plain HTTP on the TLS port gets no answer that looks like success.
    let plain = http_get(addr, "/");
    assert!(
        plain.as_ref().map(|r| r.status != 200).unwrap_or(true),
        "plain HTTP was served on the TLS port"
    );
    // A client that does not trust the certificate fails the handshake.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let err = https_get(addr, &[other.cert.der().clone()], &[b"http/1.1"]).err();
    assert!(
        err.as_deref().is_some_and(|e| e.contains("handshake")),
        "{err:?}"
    );
}

fn refused(args: &[&str], needle: &str) {
    let (s, status) = run_to_exit(args, Duration::from_secs(10));
    assert!(!status.success(), "started with bad TLS input: {args:?}");
    let err = s.stderr_text();
    assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    assert!(
        s.spawned_pids().is_empty(),
        "a worker was started: {:?}",
        s.stdout_lines()
    );
}

#[test]
fn bad_certificate_input_is_refused_before_any_worker() {
    let certs = Certs::new("bad");
    certs.issue();
    let (cert, key) = (certs.cert(), certs.key());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let missing = certs.dir.join("missing.pem");
    let missing = missing.to_str().unwrap();
    refused(
        &certs.args(missing, key, "2"),
        &format!("cannot read the TLS certificate {missing}"),
    );
    refused(
        &certs.args(cert, missing, "2"),
        &format!("cannot read the TLS private key {missing}"),
    );

    let garbage = certs.dir.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    refused(&certs.args(garbage, key, "2"), "no certificate in");
    refused(&certs.args(cert, garbage, "2"), "no private key in");

    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_key = certs.dir.join("other-key.pem");
    std::fs::write(&other_key, other.signing_key.serialize_pem()).unwrap();
    let other_key = other_key.to_str().unwrap();
    refused(
        &certs.args(cert, other_key, "2"),
        "does not match the certificate",
    );
}

#[test]
fn a_respawned_worker_serves_the_renewed_certificate() {
    let certs = Certs::new("renew");
    let first = certs.issue();
    let (cert, key) = (certs.cert(), certs.key());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let s = Server::start_ready(&certs.args(cert, key, "1"));
    let addr = s.addr();
    let old = s.pids_from_ready()[0];
    let answer = https_get(addr, std::slice::from_ref(&first), &[b"http/1.1"]).unwrap();
    assert_eq!(answer.peer_cert, first);

    let renewed = certs.issue();
    kill_pid(old, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        match https_get(addr, &[first.clone(), renewed.clone()], &[b"http/1.1"]) {
            Ok(a) if a.worker != old.to_string() => break a,
            _ => {
                assert!(Instant::now() < deadline, "no new worker served HTTPS");
                std::thread::sleep(POLL);
            }
        }
    };
    assert_eq!(answer.status, 200);
    assert!(
        answer.peer_cert == renewed,
        "the respawned worker still serves the old certificate"
    );
}

#[test]
fn a_reload_serves_the_renewed_certificate() {
    let certs = Certs::new("reload");
    let first = certs.issue();
    let (cert, key) = (certs.cert(), certs.key());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let s = Server::start_ready(&certs.args(cert, key, "2"));
    let addr = s.addr();
    let answer = https_get(addr, std::slice::from_ref(&first), &[b"http/1.1"]).unwrap();
    assert_eq!(answer.peer_cert, first);

    let renewed = certs.issue();
    s.send_signal(libc::SIGHUP);
    s.expect_line(
        "`reloaded generation=2`",
        |l| l.starts_with("reloaded generation=2"),
        Duration::from_secs(10),
    );
    // The old generation may still drain; the new one serves the renewed certificate.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = https_get(addr, &[first.clone(), renewed.clone()], &[b"http/1.1"]).unwrap();
        if a.peer_cert == renewed {
            assert_eq!(a.status, 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the reload, workers still serve the old certificate"
        );
        std::thread::sleep(POLL);
    }
}
