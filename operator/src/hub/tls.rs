//! The hub's TLS server configuration: the operator's certificate, ALPN `h2` (and
//! `http/1.1` for the reverse connection's upgrade),
//! either a fixed pair (`--hub-tls-cert`) or a resolver asked on every handshake
//! (`--tls-secret`, whose certificate changes without a restart).

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;

use super::HubConfig;

/// The server configuration for the PEM certificate chain and key of `config`.
pub(crate) fn fixed(config: &HubConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(config.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the hub certificate is not valid PEM")?;
    anyhow::ensure!(!certs.is_empty(), "the hub certificate PEM holds no certificate");
    let key = PrivateKeyDer::from_pem_slice(config.key_pem.as_bytes())
        .context("the hub key is not a valid PEM private key")?;
    let tls = builder()?
        .with_single_cert(certs, key)
        .context("the hub certificate and key do not form a usable pair")?;
    Ok(h2_only(tls))
}

/// The server configuration that asks `resolver` for the certificate of each handshake.
pub fn with_resolver(resolver: Arc<dyn ResolvesServerCert>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(h2_only(builder()?.with_cert_resolver(resolver)))
}

fn builder() -> anyhow::Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth())
}

fn h2_only(mut tls: rustls::ServerConfig) -> Arc<rustls::ServerConfig> {
    // Sidecars speak HTTP/2; `http/1.1` only for the upgrade of their reverse connection.
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(tls)
}
