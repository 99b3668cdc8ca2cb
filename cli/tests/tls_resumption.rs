//! TLS session resumption across processes: a client resumes its session on every worker
//! (TLS 1.3 and 1.2, fork and exec spawn), on the workers of a reload (HUP) and of a binary
//! upgrade (USR2) with a ticket issued before, and on another server sharing a ticket key
//! file; a ticket older than the rotation window gets a full handshake, not an error.
//! Several certificates: SNI picks the one that names the host, the first without SNI.
//!
//! The client is rustls with a session store of the test's own (`Tickets`), which can stop
//! taking new tickets, so that what resumes is a ticket from before the reload or upgrade.

mod common;

use common::*;
use std::collections::{BTreeSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{HandshakeKind, NamedGroup, SupportedProtocolVersion};

const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// The client's tickets, each with the worker that issued it: every TLS 1.3 ticket kept
/// in order (each used once) and the first TLS 1.2 session (used again and again); once
/// frozen, nothing new is kept.
#[derive(Debug, Default)]
struct Tickets {
    tls13: Mutex<VecDeque<(Option<u32>, Tls13ClientSessionValue)>>,
    tls12: Mutex<Option<(Option<u32>, Tls12ClientSessionValue)>>,
    frozen: AtomicBool,
    /// The issuer of the ticket or session offered on the last connection.
    offered: Mutex<Option<u32>>,
}

impl Tickets {
    fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    fn tls13_count(&self) -> usize {
        self.tls13.lock().unwrap().len()
    }

    /// Names `worker` the issuer of what came in on the connection it just served.
    fn issued_by(&self, worker: u32) {
        for (issuer, _) in self.tls13.lock().unwrap().iter_mut() {
            issuer.get_or_insert(worker);
        }
        if let Some((issuer, _)) = &mut *self.tls12.lock().unwrap() {
            issuer.get_or_insert(worker);
        }
    }
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }

    fn set_tls12_session(&self, _: ServerName<'static>, value: Tls12ClientSessionValue) {
        let mut slot = self.tls12.lock().unwrap();
        if !self.frozen.load(Ordering::SeqCst) || slot.is_none() {
            *slot = Some((None, value));
        }
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        let slot = self.tls12.lock().unwrap();
        let (issuer, value) = slot.as_ref()?;
        *self.offered.lock().unwrap() = *issuer;
        Some(value.clone())
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        if !self.frozen.load(Ordering::SeqCst) {
            self.tls13.lock().unwrap().push_back((None, value));
        }
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let (issuer, value) = self.tls13.lock().unwrap().pop_front()?;
        *self.offered.lock().unwrap() = issuer;
        Some(value)
    }
}

/// Accepts any certificate: the tests look at the one served themselves.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A clock stopped when the client was made: the client never finds its tickets expired,
/// so whether an old ticket resumes is the server's decision alone.
#[derive(Debug)]
struct Stopped(UnixTime);

impl rustls::time_provider::TimeProvider for Stopped {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.0)
    }
}

struct Client {
    config: Arc<rustls::ClientConfig>,
    tickets: Arc<Tickets>,
}

impl Client {
    fn new(versions: &[&'static SupportedProtocolVersion]) -> Client {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let clock = Arc::new(Stopped(UnixTime::now()));
        let tickets = Arc::new(Tickets::default());
        let mut config = rustls::ClientConfig::builder_with_details(provider.clone(), clock)
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::store(tickets.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            config: Arc::new(config),
            tickets,
        }
    }

    /// One GET over a new connection to `name` (an IP address: no SNI).
    fn get(&self, addr: SocketAddr, name: &str) -> Result<Visit, String> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        *self.tickets.offered.lock().unwrap() = None;
        let conn =
            rustls::ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())?;
        let tcp = connect(addr, Duration::from_secs(10)).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(&get_request("localhost", "/", true))
            .map_err(|e| format!("handshake or write: {e}"))?;
        let mut buf = Vec::new();
        let resp = read_response(&mut tls, &mut buf).map_err(|e| format!("read: {e:?}"))?;
        // Read the rest, so the tickets that follow the response are taken in too.
        let _ = std::io::Read::read_to_end(&mut tls, &mut Vec::new());
        if resp.status != 200 {
            return Err(format!("status {}", resp.status));
        }
        self.tickets.issued_by(resp.worker_pid());
        Ok(Visit {
            kind: tls.conn.handshake_kind().unwrap(),
            issuer: self.tickets.offered.lock().unwrap().take(),
            worker: resp.worker_pid(),
            cert: tls.conn.peer_certificates().unwrap()[0]
                .clone()
                .into_owned(),
        })
    }
}

struct Visit {
    kind: HandshakeKind,
    /// The worker that issued the ticket or session the client offered.
    issuer: Option<u32>,
    worker: u32,
    cert: CertificateDer<'static>,
}

/// Connects until `want(resumed, across)` holds, where `resumed` are the workers (not in
/// `old`) seen resuming and `across` those seen resuming a ticket another worker issued;
/// every connection must succeed. Returns `across`.
fn resume_on(
    s: &Server,
    client: &Client,
    want: impl Fn(&BTreeSet<u32>, &BTreeSet<u32>) -> bool,
    old: &BTreeSet<u32>,
) -> BTreeSet<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut resumed = BTreeSet::new();
    let mut across = BTreeSet::new();
    let mut full = 0;
    while !want(&resumed, &across) {
        assert!(
            Instant::now() < deadline,
            "resumed on {resumed:?}, across workers on {across:?} only ({full} full \
             handshakes; tickets left {}); stderr:\n{}",
            client.tickets.tls13_count(),
            s.stderr_text()
        );
        let visit = client.get(s.addr(), "localhost").expect("an HTTPS request");
        match visit.kind {
            HandshakeKind::Resumed if !old.contains(&visit.worker) => {
                resumed.insert(visit.worker);
                if visit.issuer.is_some_and(|i| i != visit.worker) {
                    across.insert(visit.worker);
                }
            }
            HandshakeKind::Resumed => {}
            _ => full += 1,
        }
    }
    across
}

/// A full handshake, then connections until the client holds `n` TLS 1.3 tickets (each
/// connection spends one and brings two).
fn gather(s: &Server, client: &Client, n: usize) {
    let v = client.get(s.addr(), "localhost").expect("an HTTPS request");
    assert_eq!(v.kind, HandshakeKind::Full);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.tickets.tls13_count() < n {
        assert!(Instant::now() < deadline, "no more tickets");
        client.get(s.addr(), "localhost").expect("an HTTPS request");
    }
}

struct Pair {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn make_pair(dir: &TempDir, tag: &str, names: &[&str]) -> Pair {
    let key = rcgen::KeyPair::generate().unwrap();
    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let pair = Pair {
        cert: dir.0.join(format!("{tag}-cert.pem")),
        key: dir.0.join(format!("{tag}-key.pem")),
        der: cert.der().clone(),
    };
    std::fs::write(&pair.cert, cert.pem()).unwrap();
    std::fs::write(&pair.key, key.serialize_pem()).unwrap();
    pair
}

fn tls_args<'a>(pair: &'a Pair, workers: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--workers",
        workers,
        "--reuse-port",
        "--tls-cert",
        pair.cert.to_str().unwrap(),
        "--tls-key",
        pair.key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

fn every_worker_resumes(spawn: &str) {
    let dir = TempDir::new("tls-resume-every");
    let pair = make_pair(&dir, "a", &["localhost"]);
    let s = Server::start_ready(&tls_args(&pair, "3", &["--spawn", spawn]));
    let pids: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    for (versions, frozen) in [(TLS13, false), (TLS12, true)] {
        let client = Client::new(versions);
        gather(&s, &client, 0);
        if frozen {
            // TLS 1.2: the one session of the first connection, offered to every worker.
            client.tickets.freeze();
        }
        // Every worker resumes, and all but at most the issuer of a frozen session resume
        // tickets other workers issued.
        resume_on(
            &s,
            &client,
            |resumed, across| resumed.is_superset(&pids) && across.len() + 1 >= pids.len(),
            &BTreeSet::new(),
        );
    }
}

#[test]
fn a_session_resumes_on_every_worker() {
    every_worker_resumes("fork");
}

#[test]
fn a_session_resumes_on_every_exec_worker() {
    every_worker_resumes("exec");
}

fn reload_resumes(spawn: &str) {
    let dir = TempDir::new("tls-resume-hup");
    let pair = make_pair(&dir, "a", &["localhost"]);
    let s = Server::start_ready(&tls_args(&pair, "2", &["--spawn", spawn]));
    let old: BTreeSet<u32> = s.pids_from_ready().into_iter().collect();
    let client = Client::new(TLS13);
    // 24 tickets from the first generation, and no later one.
    gather(&s, &client, 24);
    client.tickets.freeze();
    s.send_signal(libc::SIGHUP);
    let line = s.expect_line(
        "`reloaded generation=2`",
        |l| l.starts_with("reloaded generation=2"),
        Duration::from_secs(20),
    );
    let new: BTreeSet<u32> = parse_pid_list(&hook_field(&line, "pids").unwrap())
        .into_iter()
        .collect();
    assert!(new.is_disjoint(&old), "{new:?} {old:?}");
    // The old workers drain for a moment, accepting still: let them go before spending the
    // tickets, so that every ticket meets a new worker.
    assert!(
        poll_until(Instant::now() + Duration::from_secs(20), || old
            .iter()
            .all(|&p| !process_alive(p))),
        "the old generation did not exit"
    );
    // Every ticket is from the old generation: each new worker resumes one.
    let seen = resume_on(&s, &client, |r, _| r.is_superset(&new), &old);
    assert!(seen.is_subset(&new), "{seen:?} resumed, not of {new:?}");
}

#[test]
fn a_reload_resumes_tickets_from_before() {
    reload_resumes("fork");
}

#[test]
fn an_exec_reload_resumes_tickets_from_before() {
    reload_resumes("exec");
}

#[test]
fn a_binary_upgrade_resumes_tickets_from_before() {
    let dir = TempDir::new("tls-resume-usr2");
    let pair = make_pair(&dir, "a", &["localhost"]);
    let bin = install_binary(&dir.0, None);
    let mut s = Server::start_program(&bin, &tls_args(&pair, "2", &[]));
    let old: BTreeSet<u32> = s.wait_ready().into_iter().collect();
    let client = Client::new(TLS13);
    gather(&s, &client, 24);
    client.tickets.freeze();
    install_binary(&dir.0, None);
    s.send_signal(libc::SIGUSR2);
    let upgrading = s.expect_line(
        "`upgrading new_master_pid=...`",
        |l| l.starts_with("upgrading "),
        Duration::from_secs(10),
    );
    let new_master: u32 = hook_field(&upgrading, "new_master_pid")
        .unwrap()
        .parse()
        .unwrap();
    let addr = s.addr();
    let status = s.wait_exit(Instant::now() + Duration::from_secs(20));
    assert_eq!(
        status.code(),
        Some(0),
        "the old master hands over and exits"
    );
    // Only the new master's workers serve now: two of them resume the old tickets.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut resumed = BTreeSet::new();
    while resumed.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "after the upgrade, resumed on {resumed:?} only; stderr:\n{}",
            s.stderr_text()
        );
        let v = client.get(addr, "localhost").expect("an HTTPS request");
        assert!(!old.contains(&v.worker), "an old worker still serves");
        if v.kind == HandshakeKind::Resumed {
            resumed.insert(v.worker);
        }
    }
    assert!(
        s.stderr_text()
            .contains("TLS session tickets: keys shared with the previous master"),
        "{}",
        s.stderr_text()
    );
    kill_pid(new_master, libc::SIGTERM);
}

#[test]
fn a_ticket_older_than_the_rotation_window_gets_a_full_handshake() {
    let dir = TempDir::new("tls-resume-old");
    let pair = make_pair(&dir, "a", &["localhost"]);
    // One worker: only the ticket's age decides.
    let s = Server::start_ready(&tls_args(&pair, "1", &["--tls-ticket-rotation", "3"]));
    // TLS 1.2: the client offers the same session again and again (a TLS 1.3 ticket goes
    // once), and its stopped clock never lets it expire on the client's side.
    let client = Client::new(TLS12);
    gather(&s, &client, 0);
    client.tickets.freeze();
    // Opens for the rest of its 3 s period and the next: at once it resumes...
    let first = client.get(s.addr(), "localhost").unwrap();
    assert_eq!(first.kind, HandshakeKind::Resumed);
    // ...and within two periods it is refused with a full handshake, never an error.
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    loop {
        let v = client.get(s.addr(), "localhost").expect("an HTTPS request");
        if v.kind == HandshakeKind::Full {
            break;
        }
        assert!(Instant::now() < deadline, "the old ticket still resumes");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "refused only after {:?}",
        start.elapsed()
    );
}

#[test]
fn servers_sharing_a_ticket_key_file_resume_each_others_sessions() {
    let dir = TempDir::new("tls-resume-keyfile");
    let pair = make_pair(&dir, "a", &["localhost"]);
    let key_file = dir.0.join("tickets.key");
    std::fs::write(&key_file, (0..80u8).collect::<Vec<_>>()).unwrap();
    let key_arg = key_file.to_str().unwrap();
    let extra = ["--tls-ticket-key-file", key_arg];
    let one = Server::start_ready(&tls_args(&pair, "1", &extra));
    let two = Server::start_ready(&tls_args(&pair, "1", &extra));
    let client = Client::new(TLS13);
    gather(&one, &client, 0);
    let v = client.get(two.addr(), "localhost").unwrap();
    assert_eq!(v.kind, HandshakeKind::Resumed, "another host's ticket");
    // A host with its own secret cannot open them.
    let three = Server::start_ready(&tls_args(&pair, "1", &[]));
    let v = client.get(three.addr(), "localhost").unwrap();
    assert_eq!(v.kind, HandshakeKind::Full);

    let short = dir.0.join("short.key");
    std::fs::write(&short, [1u8; 16]).unwrap();
    let (s, status) = run_to_exit(
        &tls_args(
            &pair,
            "1",
            &["--tls-ticket-key-file", short.to_str().unwrap()],
        ),
        Duration::from_secs(10),
    );
    assert!(!status.success());
    assert!(
        s.stderr_text()
            .contains("holds 16 bytes; a TLS ticket key needs at least 32"),
        "{}",
        s.stderr_text()
    );
}

#[test]
fn sni_picks_the_certificate_that_names_the_host() {
    let dir = TempDir::new("tls-sni");
    let a = make_pair(&dir, "a", &["a.test"]);
    let b = make_pair(&dir, "b", &["b.test", "*.b.test"]);
    let mut args = tls_args(&a, "2", &[]);
    args.extend([
        "--tls-cert",
        b.cert.to_str().unwrap(),
        "--tls-key",
        b.key.to_str().unwrap(),
    ]);
    let s = Server::start_ready(&args);
    let client = Client::new(TLS13);
    let cert_for = |name: &str| client.get(s.addr(), name).unwrap().cert;
    assert_eq!(cert_for("a.test"), a.der);
    assert_eq!(cert_for("b.test"), b.der);
    assert_eq!(cert_for("www.b.test"), b.der);
    // No SNI (an IP address), or a name no certificate has: the first certificate.
    assert_eq!(cert_for("127.0.0.1"), a.der);
    assert_eq!(cert_for("other.test"), a.der);

    // Bad pairings are refused with what to do.
    let refused = |args: &[&str], needle: &str| {
        let (s, status) = run_to_exit(args, Duration::from_secs(10));
        assert!(!status.success(), "{args:?}");
        let err = s.stderr_text();
        assert!(err.contains(needle), "stderr lacks {needle:?}:\n{err}");
    };
    let mut args = tls_args(&a, "1", &[]);
    args.extend(["--tls-cert", b.cert.to_str().unwrap()]);
    refused(&args, "2 --tls-cert but 1 --tls-key");
    let dup = make_pair(&dir, "dup", &["a.test"]);
    let mut args = tls_args(&a, "1", &[]);
    args.extend([
        "--tls-cert",
        dup.cert.to_str().unwrap(),
        "--tls-key",
        dup.key.to_str().unwrap(),
    ]);
    refused(
        &args,
        &format!(
            "the name a.test is in both the certificate in {} and the one in {}",
            a.cert.display(),
            dup.cert.display()
        ),
    );
    let nameless = make_pair(&dir, "nameless", &[]);
    let mut args = tls_args(&a, "1", &[]);
    args.extend([
        "--tls-cert",
        nameless.cert.to_str().unwrap(),
        "--tls-key",
        nameless.key.to_str().unwrap(),
    ]);
    refused(&args, "names no DNS name");
}
