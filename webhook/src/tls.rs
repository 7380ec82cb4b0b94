//! The served certificate: parsed from PEM, checked, and swapped without a restart.
//!
//! [`CertStore`] is the rustls certificate resolver. Every TLS handshake asks it for the
//! current certificate, so replacing the certificate takes effect for the next handshake;
//! connections already open keep the certificate they were set up with (which is why
//! certificate rotation keeps the old CA trusted for a while, see `certs/state.rs`).

use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;

/// A certificate that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No certificate in the PEM text.
    #[error("no PEM CERTIFICATE block found in the {0}")]
    NoCertificate(&'static str),
    /// The PEM is broken.
    #[error("cannot parse the {what} as PEM: {source}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate is not valid X.509.
    #[error("the certificate is not valid X.509: {0}")]
    X509(String),
    /// rustls refused the key, or the key does not belong to the certificate.
    #[error("the private key does not fit the certificate: {0}")]
    Key(#[source] rustls::Error),
    /// rustls refused the server configuration.
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// A parsed, checked certificate and key, ready to serve.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// `notAfter` of the leaf certificate, as a Unix time.
    pub not_after: i64,
    /// The leaf certificate's serial number in hex, for logs.
    pub serial: String,
}

/// The ring provider, used for every TLS configuration of this crate.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a certificate chain (leaf first) and its private key from PEM.
pub fn load_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "certificate",
            source,
        })?;
    let leaf = chain.first().ok_or(TlsError::NoCertificate("certificate"))?;
    let (not_after, serial) = validity(leaf)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| TlsError::Pem {
        what: "private key",
        source,
    })?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(TlsError::Key)?;
    Ok(Loaded {
        key: Arc::new(certified),
        not_after,
        serial,
    })
}

/// Parses every certificate of a PEM bundle (a CA bundle), in order.
pub fn parse_bundle(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "CA bundle",
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate("CA bundle"));
    }
    Ok(certs)
}

/// `notAfter` (Unix time) and serial number (hex) of a DER certificate.
pub fn validity(cert: &CertificateDer<'_>) -> Result<(i64, String), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::X509(e.to_string()))?;
    Ok((parsed.validity().not_after.timestamp(), parsed.raw_serial_as_string()))
}

/// The DNS names and IP addresses (as text, DNS names lowercase) a DER certificate is for.
pub fn subject_alt_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::X509(e.to_string()))?;
    let Some(san) = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::X509(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// The certificate being served, the rustls resolver of the server; in mode `self` also
/// the CA bundle that verifies it (what sidecars get as the operator's CA).
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Option<Loaded>>,
    ca_bundle: RwLock<Option<Arc<str>>>,
    metrics: Arc<Metrics>,
}

impl CertStore {
    /// An empty store: handshakes fail until [`CertStore::set`] is called.
    pub fn new(metrics: Arc<Metrics>) -> CertStore {
        CertStore {
            current: RwLock::new(None),
            ca_bundle: RwLock::new(None),
            metrics,
        }
    }

    /// Serves `loaded` from the next handshake on. Returns false (and changes nothing) when
    /// it is the certificate already served.
    pub fn set(&self, loaded: Loaded) -> bool {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.key.cert == loaded.key.cert) {
            return false;
        }
        self.metrics.certificate_loaded(loaded.not_after);
        tracing::info!(
            cert.serial = %loaded.serial,
            cert.not_after = loaded.not_after,
            "serving a new certificate"
        );
        *current = Some(loaded);
        true
    }

    /// The certificate served now.
    pub fn current(&self) -> Option<Loaded> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records the PEM CA bundle of the certificate Secret (mode `self`): every CA a client
    /// must trust now, the next one too during a rotation.
    pub fn set_ca_bundle(&self, pem: &str) {
        let mut bundle = self.ca_bundle.write().unwrap_or_else(PoisonError::into_inner);
        if bundle.as_deref() != Some(pem) {
            *bundle = Some(Arc::from(pem));
        }
    }

    /// The CA bundle last recorded by [`CertStore::set_ca_bundle`] (none in mode `files`).
    pub fn ca_bundle(&self) -> Option<Arc<str>> {
        self.ca_bundle.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A rustls server configuration that asks this store on every handshake and offers
    /// HTTP/2 and HTTP/1.1 (ALPN).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|c| c.key.clone())
    }
}
