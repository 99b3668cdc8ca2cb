//! HTTP/2 hardening (issue 13, part 3), against the real binary: the protocol ALPN chose is
//! the one served (an HTTP/1 request after ALPN h2 gets an HTTP/2 GOAWAY, an HTTP/2 preface
//! after ALPN http/1.1 no HTTP/2), and PING and SETTINGS floods from clients that never read
//! the ACKs are closed within seconds, over TLS and cleartext, while the same worker keeps
//! serving a normal HTTP/2 client on another connection.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A flood must be closed well within this (a correctness bound, not a benchmark).
const FLOOD_BOUND: Duration = Duration::from_secs(10);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const ALPN_H2: &[&[u8]] = &[b"h2"];
const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
const ALPN_BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
const ALPN_NONE: &[&[u8]] = &[];
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// Every frame in `bytes`: type, flags, stream, payload.
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut all = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
        let end = (9 + len).min(bytes.len());
        all.push((bytes[3], bytes[4], stream, bytes[9..end].to_vec()));
        bytes = &bytes[end..];
    }
    all
}

/// The preface, an empty SETTINGS and a GET / on stream 1 (HPACK static table entries and a
/// literal authority), so that the connection has served a request before it floods.
fn h2_opening(tls: bool) -> Vec<u8> {
    let scheme = if tls { 0x87 } else { 0x86 };
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, b""));
    bytes.extend(frame(0x1, 0x5, 1, &[0x82, scheme, 0x84, 0x41, 0x01, b'x']));
    bytes
}

/// A self-signed certificate for localhost in a temporary directory, removed on drop.
struct Certs {
    dir: PathBuf,
    der: CertificateDer<'static>,
}

impl Certs {
    fn new() -> Certs {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("forklift-h2-{}-{n}", std::process::id()));
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

    /// A one-worker TLS server.
    fn serve(&self) -> Server {
        let (cert, key) = (self.path("cert.pem"), self.path("key.pem"));
        Server::start_ready(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ])
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config).into()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to `addr`, through TLS with `alpn` offered when `tls` is given; the protocol
/// ALPN chose.
async fn connect(
    addr: SocketAddr,
    tls: Option<(&Certs, &[&[u8]])>,
) -> (Box<dyn Io>, Option<Vec<u8>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let Some((certs, alpn)) = tls else {
        return (Box::new(tcp), None);
    };
    let name = ServerName::try_from("localhost").unwrap();
    let stream = certs
        .client(alpn)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let chosen = stream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    (Box::new(stream), chosen)
}

/// Writes `bytes`, then reads until the server closes (or `within` passes): what it answered
/// and whether it closed.
async fn send_and_read(mut io: Box<dyn Io>, bytes: &[u8], within: Duration) -> (Vec<u8>, bool) {
    io.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(within, read).await.is_ok();
    (answer, closed)
}

/// hyper's HTTP/2 client on `io`.
async fn h2_handshake(io: Box<dyn Io>) -> Result<SendRequest<Empty<Bytes>>, String> {
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(send)
}

/// A GET / on an HTTP/2 connection: status and worker pid.
async fn h2_request(
    send: &mut SendRequest<Empty<Bytes>>,
    authority: &str,
) -> Result<(u16, u32), String> {
    let req = hyper::Request::get(format!("{authority}/"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let status = resp.status().as_u16();
    let worker = resp.headers()["x-forklift-worker"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, worker))
}

/// A GET / with hyper's HTTP/2 client on `io`.
async fn h2_get(io: Box<dyn Io>, authority: &str) -> Result<(u16, u32), String> {
    h2_request(&mut h2_handshake(io).await?, authority).await
}

/// An open HTTP/2 connection of hyper's client: TLS with ALPN h2, or cleartext prior
/// knowledge.
struct H2Client {
    rt: tokio::runtime::Runtime,
    send: SendRequest<Empty<Bytes>>,
    authority: String,
}

impl H2Client {
    fn connect(addr: SocketAddr, certs: Option<&Certs>) -> H2Client {
        let rt = runtime();
        let send = rt.block_on(async {
            let (io, alpn) = connect(addr, certs.map(|c| (c, ALPN_H2))).await;
            if certs.is_some() {
                assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
            }
            h2_handshake(io).await.unwrap()
        });
        let authority = match certs {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        H2Client {
            rt,
            send,
            authority,
        }
    }

    fn get(&mut self) -> Result<(u16, u32), String> {
        let H2Client {
            rt,
            send,
            authority,
        } = self;
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), h2_request(send, authority))
                .await
                .map_err(|_| "timed out".to_string())?
        })
    }
}

/// A GET / over a new HTTP/2 connection.
fn h2_get_new(addr: SocketAddr, certs: Option<&Certs>) -> Result<(u16, u32), String> {
    H2Client::connect(addr, certs).get()
}

#[test]
fn alpn_h2_is_http2_only() {
    let certs = Certs::new();
    let s = certs.serve();
    let addr = s.addr();
    let (answer, closed) = runtime().block_on(async {
        let (io, alpn) = connect(addr, Some((&certs, ALPN_BOTH))).await;
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        send_and_read(
            io,
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
            Duration::from_secs(5),
        )
        .await
    });
    let text = String::from_utf8_lossy(&answer);
    assert!(!text.contains("HTTP/1."), "served as HTTP/1: {text:?}");
    assert!(closed, "the connection stayed open");
    // The server's SETTINGS, then a connection error: GOAWAY PROTOCOL_ERROR (h2spec 3.5/2).
    let got = frames(&answer);
    assert_eq!(got.first().map(|f| f.0), Some(SETTINGS), "{got:?}");
    let goaway = got.iter().find(|f| f.0 == GOAWAY);
    assert_eq!(
        goaway.map(|f| &f.3[4..]),
        Some(&[0, 0, 0, 1][..]),
        "no GOAWAY PROTOCOL_ERROR: {got:?}"
    );

    // A real HTTP/2 client is served.
    let (status, worker) = h2_get_new(addr, Some(&certs)).unwrap();
    assert_eq!((status, worker), (200, s.pids_from_ready()[0]));
}

#[test]
fn alpn_http1_is_http1_only() {
    let certs = Certs::new();
    let s = certs.serve();
    let addr = s.addr();
    let mut preface = PREFACE.to_vec();
    preface.extend(frame(SETTINGS, 0, 0, b""));
    let (answer, closed) = runtime().block_on(async {
        let (io, alpn) = connect(addr, Some((&certs, ALPN_HTTP1))).await;
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
        send_and_read(io, &preface, Duration::from_secs(5)).await
    });
    // hyper's HTTP/1 parser recognises the preface and closes without an answer; a 400
    // would do as well. Anything but HTTP/2 frames.
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 400"),
        "answered as HTTP/2: {answer:?}"
    );
    assert!(closed, "the connection stayed open");

    // HTTP/1.1 requests are served, and so is HTTP/2 with prior knowledge when the client
    // offered no ALPN (sniffed, as on cleartext).
    let (answer, _) = runtime().block_on(async {
        let (io, _) = connect(addr, Some((&certs, ALPN_HTTP1))).await;
        let get = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        send_and_read(io, get, Duration::from_secs(5)).await
    });
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.ends_with("greeting!!!"), "{text:?}");
    let sniffed = runtime().block_on(async {
        let (io, alpn) = connect(addr, Some((&certs, ALPN_NONE))).await;
        assert_eq!(alpn, None);
        h2_get(io, &format!("https://localhost:{}", addr.port())).await
    });
    assert_eq!(sniffed.unwrap().0, 200);
}

/// What a flooding client saw.
struct Flood {
    /// From the first flood frame to the first write that did not complete within 200 ms.
    blocked_after: Option<Duration>,
    /// From the first flood frame to the first failed write (the server closed).
    closed_after: Option<Duration>,
    frames: usize,
}

/// Opens an HTTP/2 connection, makes one request, then writes `each` in a tight loop and
/// never reads, until the server closes or [`FLOOD_BOUND`] passes. `sent` counts the bytes
/// written, `closed` turns true at the end.
fn flood(
    addr: SocketAddr,
    certs: Option<&Certs>,
    each: Vec<u8>,
    sent: &AtomicUsize,
    closed: &AtomicBool,
) -> Flood {
    let flood = runtime().block_on(async {
        let (mut io, _) = connect(addr, certs.map(|c| (c, ALPN_H2))).await;
        io.write_all(&h2_opening(certs.is_some())).await.unwrap();
        let batch = each.repeat(256);
        let (mut at, mut written) = (0, 0);
        let mut flood = Flood {
            blocked_after: None,
            closed_after: None,
            frames: 0,
        };
        let start = Instant::now();
        while start.elapsed() < FLOOD_BOUND {
            // write(), not write_all(): a write given up on must not leave half a frame.
            let write = tokio::time::timeout(Duration::from_millis(200), io.write(&batch[at..]));
            match write.await {
                Ok(Ok(n)) if n > 0 => {
                    at = (at + n) % batch.len();
                    written += n;
                    sent.store(written, Ordering::SeqCst);
                }
                Ok(_) => {
                    flood.closed_after = Some(start.elapsed());
                    break;
                }
                Err(_) => {
                    flood.blocked_after.get_or_insert(start.elapsed());
                }
            }
        }
        flood.frames = written / each.len();
        flood
    });
    closed.store(true, Ordering::SeqCst);
    flood
}

/// Floods one connection with `each` while a normal client makes requests on another: the
/// flood is closed within the bound, the normal client is served during it by the same worker.
fn flood_is_closed(what: &str, s: &Server, certs: Option<&Certs>, each: Vec<u8>) {
    let addr = s.addr();
    let worker = s.pids_from_ready()[0];
    let mut client = H2Client::connect(addr, certs);
    assert_eq!(client.get(), Ok((200, worker)), "{what}: before");
    let sent = AtomicUsize::new(0);
    let closed = AtomicBool::new(false);
    let (report, served_during) = thread::scope(|scope| {
        let flooding = scope.spawn(|| flood(addr, certs, each, &sent, &closed));
        // Once the flood runs, requests on the other connection are answered.
        assert!(
            poll_until(Instant::now() + FLOOD_BOUND, || {
                sent.load(Ordering::SeqCst) >= 16 * 1024 || closed.load(Ordering::SeqCst)
            }),
            "{what}: the flood did not start"
        );
        let mut served_during = 0;
        while !closed.load(Ordering::SeqCst) {
            let answer = client.get();
            assert_eq!(answer, Ok((200, worker)), "{what}: during the flood");
            if !closed.load(Ordering::SeqCst) {
                served_during += 1;
            }
        }
        (flooding.join().unwrap(), served_during)
    });
    eprintln!(
        "{what}: writes blocked after {}, closed after {} ({} frames); {served_during} \
         requests served meanwhile",
        report.blocked_after.map(ms).unwrap_or("-".into()),
        report.closed_after.map(ms).unwrap_or("-".into()),
        report.frames,
    );
    let took = report
        .closed_after
        .unwrap_or_else(|| panic!("{what}: still open after {FLOOD_BOUND:?}"));
    assert!(took < FLOOD_BOUND, "{what}: closed after {took:?}");
    assert!(
        served_during > 0,
        "{what}: no request served during the flood"
    );
    assert_eq!(
        client.get(),
        Ok((200, worker)),
        "{what}: after, same connection"
    );
    assert_eq!(
        h2_get_new(addr, certs),
        Ok((200, worker)),
        "{what}: after, new connection"
    );
}

fn ping() -> Vec<u8> {
    frame(PING, 0, 0, b"flooding")
}

fn settings() -> Vec<u8> {
    frame(SETTINGS, 0, 0, b"")
}

fn assert_same_worker(s: &Server) {
    let worker = s.pids_from_ready()[0];
    assert!(process_alive(worker), "worker {worker} is gone");
    assert!(
        s.hooks_of("exited").is_empty(),
        "a worker exited: {:?}",
        s.stdout_lines()
    );
    // The guard's log line may reach stderr just after the close.
    let closes = || s.stderr_text().matches("HTTP/2 flood").count();
    poll_until(Instant::now() + Duration::from_secs(5), || closes() >= 2);
    assert_eq!(closes(), 2, "connections the flood guard closed");
}

#[test]
fn ping_and_settings_floods_over_tls_are_closed() {
    let certs = Certs::new();
    let s = certs.serve();
    flood_is_closed("TLS PING flood", &s, Some(&certs), ping());
    flood_is_closed("TLS SETTINGS flood", &s, Some(&certs), settings());
    assert_same_worker(&s);
}

#[test]
fn ping_and_settings_floods_over_cleartext_are_closed() {
    let s = Server::start_ready(&["serve", "--listen", "127.0.0.1:0", "--workers", "1"]);
    flood_is_closed("h2c PING flood", &s, None, ping());
    flood_is_closed("h2c SETTINGS flood", &s, None, settings());
    assert_same_worker(&s);
}
