//! The hub's TLS server configuration: the operator's certificate, HTTP/2 only (ALPN `h2`).

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::HubConfig;

/// Builds the acceptor from the PEM certificate chain and key of `config`.
pub(crate) fn acceptor(config: &HubConfig) -> anyhow::Result<TlsAcceptor> {
    let certs = CertificateDer::pem_slice_iter(config.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the hub certificate is not valid PEM")?;
    anyhow::ensure!(!certs.is_empty(), "the hub certificate PEM holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(config.key_pem.as_bytes())
        .context("the hub key is not a valid PEM private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the hub certificate and key do not form a usable pair")?;
    // Sidecars speak HTTP/2 only.
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(tls)))
}
