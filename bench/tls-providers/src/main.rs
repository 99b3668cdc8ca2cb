//! Server-side CPU of rustls with ring and with aws-lc-rs: full handshakes, resumed
//! handshakes (stateless tickets) and bulk records, client and server in memory on one thread.
//! Only the server's calls are timed, in CPU time of the thread (so a busy machine's other
//! processes do not count); the client always uses ring, so its cost is the same for both.
//! The providers take turns in each round; the best round of each is shown.
//! Run: `cargo run --release --manifest-path bench/tls-providers/Cargo.toml -- [ROUNDS]`.

use std::sync::Arc;
use std::time::Duration;

/// The CPU time of this thread so far: clock_gettime(2) `CLOCK_THREAD_CPUTIME_ID`.
#[derive(Clone, Copy)]
struct Instant(Duration);

impl Instant {
    fn now() -> Instant {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime(2) fills the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Instant(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(&self) -> Duration {
        Instant::now().0.saturating_sub(self.0)
    }
}

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection};

#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

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
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Moves bytes until neither side has anything to send; returns the server's time.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Duration {
    let mut server_time = Duration::ZERO;
    let mut buf = Vec::new();
    loop {
        let mut moved = false;
        while client.wants_write() {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            let t = Instant::now();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
            }
            server_time += t.elapsed();
            moved = true;
        }
        let t = Instant::now();
        let mut out = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut out).unwrap();
        }
        server_time += t.elapsed();
        if !out.is_empty() {
            let mut rd = &out[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            moved = true;
        }
        if !moved {
            return server_time;
        }
    }
}

struct Case {
    name: &'static str,
    provider: Arc<CryptoProvider>,
    ticketer: fn() -> Arc<dyn rustls::server::ProducesTickets>,
}

fn server_config(case: &Case, cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(case.provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap(),
        )
        .unwrap();
    config.ticketer = (case.ticketer)();
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(config)
}

fn client_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::in_memory_sessions(64);
    Arc::new(config)
}

fn handshakes(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>, n: u32, resume: bool) -> f64 {
    let name = ServerName::try_from("localhost").unwrap();
    let mut total = Duration::ZERO;
    let mut resumed = 0;
    for _ in 0..n {
        // Without resumption the client offers nothing: a full handshake.
        let config = if resume {
            client.clone()
        } else {
            let mut fresh = (**client).clone();
            fresh.resumption = rustls::client::Resumption::disabled();
            Arc::new(fresh)
        };
        let mut c = ClientConnection::new(config, name.clone()).unwrap();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        total += pump(&mut c, &mut s);
        match c.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => resumed += 1,
            kind => assert!(resume || kind == Some(rustls::HandshakeKind::Full), "{kind:?}"),
        }
    }
    if resume {
        assert!(resumed >= n - 1, "only {resumed} of {n} resumed");
    }
    f64::from(n) / total.as_secs_f64()
}

fn bulk(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>, mib: usize) -> (f64, f64) {
    use std::io::{Read, Write};
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    pump(&mut c, &mut s);
    let chunk = vec![7u8; 16 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let (mut enc, mut dec) = (Duration::ZERO, Duration::ZERO);
    let mut wire = Vec::new();
    for _ in 0..mib * 64 {
        // Server encrypts 16 KiB...
        let t = Instant::now();
        s.writer().write_all(&chunk).unwrap();
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        enc += t.elapsed();
        let mut rd = &wire[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        while c.reader().read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        // ...and decrypts 16 KiB from the client.
        c.writer().write_all(&chunk).unwrap();
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let t = Instant::now();
        let mut rd = &wire[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        while s.reader().read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        dec += t.elapsed();
    }
    let mib = mib as f64;
    (mib / enc.as_secs_f64(), mib / dec.as_secs_f64())
}

fn main() {
    let rounds: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let ecdsa = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let rsa_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256);
    let rsa = rsa_key.ok().map(|key| {
        let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        rcgen::CertifiedKey { cert, signing_key: key }
    });
    let cases = [
        Case {
            name: "ring",
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            ticketer: || rustls::crypto::ring::Ticketer::new().unwrap(),
        },
        Case {
            name: "aws-lc-rs",
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
            ticketer: || rustls::crypto::aws_lc_rs::Ticketer::new().unwrap(),
        },
    ];
    let tls13 = client_config(&[&rustls::version::TLS13]);
    let tls12 = client_config(&[&rustls::version::TLS12]);
    println!("server-side figures, per core; best of {rounds} rounds");
    println!("| provider | key | full TLS1.3 /s | resumed TLS1.3 /s | full TLS1.2 /s | resumed TLS1.2 /s | encrypt MiB/s | decrypt MiB/s |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut keys = vec![("ECDSA P-256", &ecdsa)];
    if let Some(rsa) = &rsa {
        keys.push(("RSA 2048", rsa));
    }
    for (key_name, key) in keys {
        let servers: Vec<_> = cases.iter().map(|c| server_config(c, key)).collect();
        let mut best = vec![[0f64; 6]; cases.len()];
        for _ in 0..rounds {
            for (server, best) in servers.iter().zip(&mut best) {
                let (enc, dec) = bulk(server, &tls13, 128);
                let figures = [
                    handshakes(server, &tls13, 1000, false),
                    handshakes(server, &tls13, 2000, true),
                    handshakes(server, &tls12, 1000, false),
                    handshakes(server, &tls12, 2000, true),
                    enc,
                    dec,
                ];
                for (b, f) in best.iter_mut().zip(figures) {
                    *b = b.max(f);
                }
            }
        }
        for (case, b) in cases.iter().zip(&best) {
            println!(
                "| {} | {key_name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                case.name, b[0], b[1], b[2], b[3], b[4], b[5]
            );
        }
    }
}
