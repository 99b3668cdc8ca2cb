//! HTTPS with rustls: the certificate chain and key from PEM files or from PEM bytes in memory.
//!
//! The master loads the configuration once before any worker starts, so a missing file, a
//! malformed PEM or a key that does not match the certificate fails start-up with a clear
//! error. Each worker loads it again when it boots, so a worker started later (a respawn)
//! serves the files as they are then: a renewed certificate needs no restart of the master.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::error::{Error, Result};

/// Where the certificate chain and private key come from.
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

fn tls_error(reason: String) -> Error {
    Error::Tls(reason)
}

impl TlsSource {
    /// Builds the rustls configuration, with ALPN for HTTP/2 and HTTP/1.1 (each connection is
    /// then served in the protocol chosen: `Protocol` in `conn.rs`).
    pub fn load(&self) -> Result<Arc<ServerConfig>> {
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
            TlsSource::Pem { cert, key } => (
                parse_certs(cert, "the certificate bytes")?,
                parse_key(key, "the private key bytes")?,
                "the certificate bytes".to_string(),
                "the private key bytes".to_string(),
            ),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(format!("cannot configure TLS versions: {e}")))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => tls_error(format!(
                    "the private key in {key_name} does not match the certificate in {cert_name}"
                )),
                e => tls_error(format!(
                    "cannot use the certificate in {cert_name} with the key in {key_name}: {e}"
                )),
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
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

    fn pair() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn pem_in_memory_loads_with_alpn() {
        let (cert, key) = pair();
        let source = TlsSource::Pem {
            cert: cert.into_bytes(),
            key: key.into_bytes(),
        };
        let config = source.load().unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = pair();
        let (_, other_key) = pair();
        let err = TlsSource::Pem {
            cert: cert.into_bytes(),
            key: other_key.into_bytes(),
        }
        .load()
        .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[test]
    fn missing_and_malformed_inputs_say_which() {
        let err = TlsSource::Files {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        }
        .load()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("cannot read the TLS certificate /nonexistent/cert.pem"),
            "{err}"
        );
        let (cert, key) = pair();
        let err = TlsSource::Pem {
            cert: b"not a pem".to_vec(),
            key: key.into_bytes(),
        }
        .load()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("no certificate in the certificate bytes"),
            "{err}"
        );
        let err = TlsSource::Pem {
            cert: cert.into_bytes(),
            key: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
        }
        .load()
        .unwrap_err()
        .to_string();
        assert!(err.contains("private key bytes"), "{err}");
    }

    #[test]
    fn debug_never_prints_key_material() {
        let (cert, key) = pair();
        let text = format!(
            "{:?}",
            TlsSource::Pem {
                cert: cert.into_bytes(),
                key: key.clone().into_bytes()
            }
        );
        assert!(!text.contains("PRIVATE"), "{text}");
    }
}
