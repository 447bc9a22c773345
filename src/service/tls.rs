//! TLS for the doors that terminate it themselves (HTTP today; the gRPC door's is tonic's):
//! the certificate and key from `tls_cert_file`/`tls_key_file`, and with `tls_client_ca_file`
//! a client certificate that CA signed is required.

use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsPem;

/// Why the TLS settings cannot make an acceptor: the settings it concerns, what is wrong, and
/// the error behind it as its `source()`.
#[derive(Debug, thiserror::Error)]
#[error("{settings}: {what}")]
pub struct TlsSetupError {
    settings: &'static str,
    what: &'static str,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl TlsSetupError {
    fn new(
        settings: &'static str,
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        TlsSetupError {
            settings,
            what,
            source: source.into(),
        }
    }
}

/// An acceptor offering `alpn` (in order of preference; empty: none).
pub fn acceptor(pem: &TlsPem, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor, TlsSetupError> {
    let certs = CertificateDer::pem_slice_iter(&pem.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::new("tls_cert_file", "not a PEM certificate chain", e))?;
    let key = PrivateKeyDer::from_pem_slice(&pem.key)
        .map_err(|e| TlsSetupError::new("tls_key_file", "not a PEM private key", e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::new("TLS", "no protocol version to offer", e))?;
    let builder = match &pem.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(ca) {
                let cert =
                    cert.map_err(|e| TlsSetupError::new("tls_client_ca_file", "not PEM", e))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsSetupError::new("tls_client_ca_file", "not a usable CA", e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .map_err(|e| TlsSetupError::new("tls_client_ca_file", "not a usable CA", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsSetupError::new("tls_cert_file, tls_key_file", "not a usable pair", e))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_file_is_named_and_the_parser_error_kept_as_the_source() {
        let pem = TlsPem {
            cert: b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(),
            key: Vec::new(),
            client_ca: None,
        };
        let Err(e) = acceptor(&pem, &[]) else {
            panic!("a certificate that is not base64 was taken");
        };
        assert_eq!(e.to_string(), "tls_cert_file: not a PEM certificate chain");
        assert!(std::error::Error::source(&e).is_some());
    }
}
