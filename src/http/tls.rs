//! HTTPS with rustls: certificate chains and keys from PEM files or from PEM bytes in memory,
//! one picked by SNI when there are several, and session tickets every worker can open
//! (`tickets.rs`).
//!
//! The master loads the configuration once before any worker starts, so a missing file, a
//! malformed PEM, a key that does not match its certificate or two certificates claiming one
//! name fail start-up with a clear error. Each worker loads it again when it boots, so a
//! worker started later (a respawn, a reload) serves the files as they are then: a renewed
//! certificate needs no restart of the master.
//!
//! With several certificates, each is served to the clients that ask for one of the DNS names
//! in its subjectAltName (exactly, or through a `*.` wildcard name one label deep); the first
//! one is served to clients that send no SNI or a name no certificate has.
//!
//! The cipher suite: a client that puts an AES-GCM suite first gets AES-128-GCM with SHA-256
//! if it offers it (Go's crypto/tls rule: AES-GCM suites are of equal preference, and the
//! client's order says only whether it has AES in hardware); any other client gets its own
//! first choice. OpenSSL clients (curl, Python, wrk, most service-to-service traffic) put
//! AES-256-GCM-SHA384 first, and its key schedule runs on SHA-512 blocks, which aws-lc has no
//! fast code for on AMD CPUs: a profile of resumed handshakes under load put 19% of a
//! worker's CPU in `sha512_block_data_order_nohw`; SHA-256 runs on the SHA extensions.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::error::{Error, Result};
use crate::http::tickets::{self, Secret, Ticketer};

/// Where one certificate chain and its private key come from.
#[derive(Clone)]
pub(crate) enum TlsSource {
    /// PEM files, read at start and again by each worker as it boots.
    Files { cert: PathBuf, key: PathBuf },
    /// PEM bytes held in memory (fasthttp's `ListenAndServeTLSEmbed`).
    Pem { cert: Vec<u8>, key: Vec<u8> },
}

impl fmt::Debug for TlsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSource::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            // Never print key material.
            TlsSource::Pem { cert, .. } => f
                .debug_struct("Pem")
                .field("cert_bytes", &cert.len())
                .finish_non_exhaustive(),
        }
    }
}

/// Every TLS setting of a worker: its certificates (none: cleartext) and its session tickets.
#[derive(Debug, Clone)]
pub(crate) struct TlsSettings {
    /// The certificates, the first the default; empty: no TLS.
    pub certs: Vec<TlsSource>,
    /// The secret of the ticket keys comes from this file instead of the master.
    pub ticket_key_file: Option<PathBuf>,
    /// A new ticket key every this long; tickets open for one period more.
    pub ticket_rotation: Duration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            certs: Vec::new(),
            ticket_key_file: None,
            ticket_rotation: tickets::DEFAULT_ROTATION,
        }
    }
}

/// Accepts a worker's TLS connections: reads the ClientHello, then answers with the
/// configuration for the client's cipher-suite order (see the module doc).
#[derive(Clone)]
pub(crate) struct Acceptor {
    /// The client's order.
    client_order: Arc<ServerConfig>,
    /// AES-128-GCM, then AES-256-GCM, then the rest, whatever the client's order.
    aes_first: Arc<ServerConfig>,
}

impl Acceptor {
    /// The TLS handshake on `io`.
    pub(crate) async fn accept<IO>(&self, io: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
        let ours = &self.client_order.crypto_provider().cipher_suites;
        let config = match aes_gcm_first(start.client_hello().cipher_suites(), ours) {
            true => &self.aes_first,
            false => &self.client_order,
        };
        start.into_stream(config.clone()).await
    }

    /// The configuration that follows the client's order.
    #[cfg(test)]
    fn config(&self) -> &ServerConfig {
        &self.client_order
    }
}

/// A TLS connection a worker accepted.
pub(crate) type TlsStream<IO> = tokio_rustls::server::TlsStream<IO>;

/// Whether the first of `offered` that is one of `ours` is an AES-GCM suite.
fn aes_gcm_first(offered: &[rustls::CipherSuite], ours: &[rustls::SupportedCipherSuite]) -> bool {
    offered
        .iter()
        .find(|&&s| ours.iter().any(|o| o.suite() == s))
        .is_some_and(|&s| is_aes_gcm(s))
}

fn is_aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as C;
    matches!(
        suite,
        C::TLS13_AES_128_GCM_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

fn is_aes_gcm(suite: rustls::CipherSuite) -> bool {
    use rustls::CipherSuite as C;
    is_aes_128_gcm(suite)
        || matches!(
            suite,
            C::TLS13_AES_256_GCM_SHA384
                | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
}

fn tls_error(reason: String) -> Error {
    Error::Tls(reason)
}

/// aws-lc-rs: faster handshakes than ring (bench/tls-providers; docs/tls.md has the figures).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsSettings {
    /// Whether the worker serves TLS.
    pub fn is_on(&self) -> bool {
        !self.certs.is_empty()
    }

    /// In the master, before anything starts: every certificate, key and name, and the ticket
    /// key file, as the workers will load them.
    pub fn check(&self) -> Result<()> {
        self.resolver(&provider())?;
        if let Some(path) = &self.ticket_key_file {
            Secret::from_file(path)?;
        }
        Ok(())
    }

    /// Builds the worker's acceptor with tickets from `secret`: two rustls configurations,
    /// the client's order and AES-128-GCM first (see the module doc), with ALPN for HTTP/2
    /// and HTTP/1.1 (each connection is then served in the protocol chosen: `Protocol` in
    /// `conn.rs`). They share the resolver and the ticketer, so a ticket from either resumes
    /// in the other.
    pub fn acceptor(&self, secret: Secret) -> Result<Acceptor> {
        let provider = provider();
        let resolver: Arc<Sni> = Arc::new(self.resolver(&provider)?);
        // Resumption by tickets only (TLS 1.3 and 1.2): every worker opens every ticket, where
        // a per-worker session cache would resume 1 time in N and hold memory per session.
        let ticketer = Arc::new(Ticketer::new(secret, self.ticket_rotation));
        let config = |provider: Arc<CryptoProvider>, ignore_client_order: bool| {
            let mut config = ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_error(format!("cannot configure TLS versions: {e}")))?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config.ticketer = ticketer.clone();
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            // rustls' default, said here: two tickets, so a client can open two resumed
            // connections at once (browsers do) before it learns new ones.
            config.send_tls13_tickets = 2;
            config.ignore_client_order = ignore_client_order;
            Ok::<_, Error>(Arc::new(config))
        };
        let mut aes = (*provider).clone();
        aes.cipher_suites.sort_by_key(|suite| match suite.suite() {
            s if is_aes_128_gcm(s) => 0,
            s if is_aes_gcm(s) => 1,
            _ => 2,
        });
        Ok(Acceptor {
            client_order: config(provider, false)?,
            aes_first: config(Arc::new(aes), true)?,
        })
    }

    fn resolver(&self, provider: &CryptoProvider) -> Result<Sni> {
        let several = self.certs.len() > 1;
        let mut sni = Sni::default();
        // Which certificate claimed each name first, for the duplicate error.
        let mut owners: HashMap<String, String> = HashMap::new();
        for (i, source) in self.certs.iter().enumerate() {
            let (key, cert_name) = source.load(i, several, provider)?;
            let names = dns_names(&key.cert[0], &cert_name)?;
            if names.is_empty() && several {
                return Err(tls_error(format!(
                    "the certificate in {cert_name} names no DNS name (subjectAltName): with \
                     several certificates each must name the hosts it is chosen for by SNI"
                )));
            }
            let key = Arc::new(key);
            for name in names {
                if let Some(first) = owners.get(&name) {
                    return Err(tls_error(format!(
                        "the name {name} is in both the certificate in {first} and the one in \
                         {cert_name}: give each name to one certificate"
                    )));
                }
                owners.insert(name.clone(), cert_name.clone());
                sni.by_name.insert(name, key.clone());
            }
            sni.default.get_or_insert(key);
        }
        Ok(sni)
    }
}

impl TlsSource {
    /// The certificate and key as rustls signs with them, and how to name the certificate in
    /// errors (its file, or "the certificate bytes (pair i+1)").
    fn load(
        &self,
        i: usize,
        several: bool,
        provider: &CryptoProvider,
    ) -> Result<(CertifiedKey, String)> {
        let nth = if several {
            format!(" (pair {})", i + 1)
        } else {
            String::new()
        };
        let (certs, key, cert_name, key_name) = match self {
            TlsSource::Files { cert, key } => {
                let cert_pem = read(cert, "certificate")?;
                let key_pem = read(key, "private key")?;
                let certs = parse_certs(&cert_pem, &cert.display().to_string())?;
                let key_der = parse_key(&key_pem, &key.display().to_string())?;
                (
                    certs,
                    key_der,
                    cert.display().to_string(),
                    key.display().to_string(),
                )
            }
            TlsSource::Pem { cert, key } => {
                let cert_name = format!("the certificate bytes{nth}");
                let key_name = format!("the private key bytes{nth}");
                (
                    parse_certs(cert, &cert_name)?,
                    parse_key(key, &key_name)?,
                    cert_name,
                    key_name,
                )
            }
        };
        let key = CertifiedKey::from_der(certs, key, provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => tls_error(format!(
                "the private key in {key_name} does not match the certificate in {cert_name}"
            )),
            e => tls_error(format!(
                "cannot use the certificate in {cert_name} with the key in {key_name}: {e}"
            )),
        })?;
        Ok((key, cert_name))
    }
}

/// The DNS names of a certificate's subjectAltName, lowercase.
fn dns_names(cert: &CertificateDer<'_>, cert_name: &str) -> Result<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| {
        tls_error(format!(
            "cannot read the certificate in {cert_name} as X.509: {e}"
        ))
    })?;
    let san = parsed.subject_alternative_name().map_err(|e| {
        tls_error(format!(
            "cannot read the subjectAltName of the certificate in {cert_name}: {e}"
        ))
    })?;
    let mut names = Vec::new();
    for general in san.map(|s| &s.value.general_names).into_iter().flatten() {
        if let GeneralName::DNSName(name) = general {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(names)
}

/// Picks the certificate by the client's SNI: an exact name, then a `*.` wildcard one label
/// deep, then the default (the first certificate).
#[derive(Debug, Default)]
struct Sni {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Sni {
    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(key) = self.by_name.get(&name) {
                return Some(key.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(key) = self.by_name.get(&format!("*.{parent}")) {
                    return Some(key.clone());
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for Sni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        tls_error(format!(
            "cannot read the TLS {what} {}: {e}",
            path.display()
        ))
    })
}

fn parse_certs(pem: &[u8], name: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_error(format!("malformed PEM in {name}: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(format!(
            "no certificate in {name} (expected a PEM block '-----BEGIN CERTIFICATE-----')"
        )));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], name: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => tls_error(format!(
            "no private key in {name} (expected a PEM block '-----BEGIN PRIVATE KEY-----', \
             RSA PRIVATE KEY or EC PRIVATE KEY)"
        )),
        e => tls_error(format!("malformed PEM in {name}: {e}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair_for(names: &[&str]) -> (String, String) {
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pair() -> (String, String) {
        pair_for(&["localhost"])
    }

    fn pem(pair: &(String, String)) -> TlsSource {
        TlsSource::Pem {
            cert: pair.0.clone().into_bytes(),
            key: pair.1.clone().into_bytes(),
        }
    }

    fn settings(certs: Vec<TlsSource>) -> TlsSettings {
        TlsSettings {
            certs,
            ..TlsSettings::default()
        }
    }

    fn secret() -> Secret {
        Secret::random().unwrap()
    }

    #[test]
    fn pem_in_memory_loads_with_alpn_and_shared_tickets() {
        let acceptor = settings(vec![pem(&pair())]).acceptor(secret()).unwrap();
        let config = acceptor.config();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(config.ticketer.enabled());
        assert_eq!(config.ticketer.lifetime(), 3600);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = pair();
        let (_, other_key) = pair();
        let err = settings(vec![pem(&(cert, other_key))]).check().unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn missing_and_malformed_inputs_say_which() {
        let err = settings(vec![TlsSource::Files {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        }])
        .check()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cannot read the TLS certificate /nonexistent/cert.pem"),
            "{err}"
        );
        let (cert, key) = pair();
        let err = settings(vec![pem(&("not a pem".into(), key))])
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no certificate in the certificate bytes"),
            "{err}"
        );
        let not_a_key = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = settings(vec![pem(&(cert, not_a_key.into()))])
            .check()
            .unwrap_err()
            .to_string();
        assert!(err.contains("private key bytes"), "{err}");
        let mut s = settings(vec![pem(&pair())]);
        s.ticket_key_file = Some("/nonexistent/tickets.key".into());
        let err = s.check().unwrap_err().to_string();
        assert!(
            err.contains("ticket key file /nonexistent/tickets.key"),
            "{err}"
        );
    }

    #[test]
    fn debug_never_prints_key_material() {
        let text = format!("{:?}", settings(vec![pem(&pair())]));
        assert!(!text.contains("PRIVATE"), "{text}");
    }

    #[test]
    fn sni_picks_by_name_and_wildcard_and_falls_back_to_the_first() {
        let first = pair_for(&["a.test"]);
        let second = pair_for(&["b.test", "*.wild.test"]);
        let sni = settings(vec![pem(&first), pem(&second)])
            .resolver(&provider())
            .unwrap();
        let leaf = |key: Option<Arc<CertifiedKey>>| key.unwrap().cert[0].clone();
        let a = leaf(sni.pick(Some("a.test")));
        let b = leaf(sni.pick(Some("b.test")));
        assert_ne!(a, b);
        assert_eq!(leaf(sni.pick(Some("B.Test."))), b);
        assert_eq!(leaf(sni.pick(Some("x.wild.test"))), b);
        assert_eq!(leaf(sni.pick(Some("x.y.wild.test"))), a);
        assert_eq!(leaf(sni.pick(Some("other.test"))), a);
        assert_eq!(leaf(sni.pick(None)), a);
    }

    #[test]
    fn several_certificates_need_names_and_distinct_ones() {
        let err = settings(vec![pem(&pair_for(&["a.test"])), pem(&pair_for(&[]))])
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the certificate bytes (pair 2) names no DNS name"),
            "{err}"
        );
        // One certificate needs no name: it is the default.
        settings(vec![pem(&pair_for(&[]))]).check().unwrap();
        let err = settings(vec![
            pem(&pair_for(&["a.test", "dup.test"])),
            pem(&pair_for(&["dup.test"])),
        ])
        .check()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(
                "dup.test is in both the certificate in the certificate bytes (pair 1) and \
                 the one in the certificate bytes (pair 2)"
            ),
            "{err}"
        );
    }

    /// The suite a client that offers `offered` (in its order, TLS `version` only) gets.
    async fn negotiated(
        acceptor: &Acceptor,
        cert_pem: &str,
        offered: &[rustls::CipherSuite],
        version: &'static rustls::SupportedProtocolVersion,
    ) -> rustls::CipherSuite {
        let all = rustls::crypto::aws_lc_rs::default_provider();
        let mut provider = all.clone();
        provider.cipher_suites = offered
            .iter()
            .map(|&s| *all.cipher_suites.iter().find(|o| o.suite() == s).unwrap())
            .collect();
        let mut roots = rustls::RootCertStore::empty();
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let (a, b) = tokio::io::duplex(1 << 16);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (server, client) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
        let (server, _client) = (server.unwrap(), client.unwrap());
        server
            .get_ref()
            .1
            .negotiated_cipher_suite()
            .unwrap()
            .suite()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_client_that_puts_aes_gcm_first_gets_aes_128_gcm_and_others_their_choice() {
        use rustls::CipherSuite as C;
        let pair = pair();
        let acceptor = settings(vec![pem(&pair)]).acceptor(secret()).unwrap();
        let tls13 = &rustls::version::TLS13;
        let tls12 = &rustls::version::TLS12;
        let cases: [(&[C], _, C); 6] = [
            // OpenSSL's order.
            (
                &[
                    C::TLS13_AES_256_GCM_SHA384,
                    C::TLS13_CHACHA20_POLY1305_SHA256,
                    C::TLS13_AES_128_GCM_SHA256,
                ],
                tls13,
                C::TLS13_AES_128_GCM_SHA256,
            ),
            (
                &[C::TLS13_AES_128_GCM_SHA256, C::TLS13_AES_256_GCM_SHA384],
                tls13,
                C::TLS13_AES_128_GCM_SHA256,
            ),
            // No AES-128 offered: the client's AES-GCM.
            (
                &[
                    C::TLS13_AES_256_GCM_SHA384,
                    C::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                tls13,
                C::TLS13_AES_256_GCM_SHA384,
            ),
            // A client without AES in hardware says so by putting ChaCha20 first.
            (
                &[
                    C::TLS13_CHACHA20_POLY1305_SHA256,
                    C::TLS13_AES_256_GCM_SHA384,
                    C::TLS13_AES_128_GCM_SHA256,
                ],
                tls13,
                C::TLS13_CHACHA20_POLY1305_SHA256,
            ),
            (
                &[
                    C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                    C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                ],
                tls12,
                C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            ),
            (
                &[
                    C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                    C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                ],
                tls12,
                C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ),
        ];
        for (offered, version, want) in cases {
            let got = negotiated(&acceptor, &pair.0, offered, version).await;
            assert_eq!(got, want, "offered {offered:?}");
        }
    }
}
