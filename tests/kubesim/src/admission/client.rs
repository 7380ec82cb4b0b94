//! The API server's outgoing HTTPS: to admission webhooks and to aggregated API servers.
//!
//! Like kube-apiserver, it trusts only the CA bundle the configuration names (no
//! system roots: an empty or wrong `caBundle` fails the TLS handshake), may present a
//! client certificate (the front-proxy one, to aggregated servers), and speaks
//! HTTP/1.1 so that upgrades (WebSocket) can pass through.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::pki::CertPair;

/// How the server at the other end is verified.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// Only certificates chaining to these PEM roots (`caBundle`, decoded).
    Roots(&'a [u8]),
    /// Anything (`insecureSkipTLSVerify` of an APIService).
    Insecure,
}

/// A TLS client configuration for one upstream: `trust` for the server, `client` as
/// our own certificate, HTTP/1.1 only.
pub fn tls_config(trust: Trust<'_>, client: Option<&CertPair>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match trust {
        Trust::Roots(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("the caBundle is not valid PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("the caBundle holds an unusable certificate: {e}"))?;
            }
            builder.with_root_certificates(roots)
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider))),
    };
    let mut config = match client {
        Some(pair) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pair.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("the client certificate is not valid PEM: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(pair.key_pem.as_bytes())
                .map_err(|e| format!("the client key is not valid PEM: {e}"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("the client certificate is unusable: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connects to `addr` and completes a TLS handshake for `server_name` (a DNS name such
/// as `svc.ns.svc`, or an IP address). Errors read like Go's, which is what users of
/// kube-apiserver see in messages: `dial tcp 127.0.0.1:9: connect: connection refused`,
/// `tls: failed to verify certificate: x509: certificate signed by unknown authority`.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("invalid server name {server_name:?}: {e}"))?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: connect: {}", go_io_error(&e)))?;
    let _ = tcp.set_nodelay(true);
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| tls_error(&e))
}

fn go_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset by peer".into(),
        _ => e.to_string(),
    }
}

fn tls_error(e: &std::io::Error) -> String {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match inner {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            "tls: failed to verify certificate: x509: certificate signed by unknown authority".into()
        }
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
        | Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext { .. })) => {
            format!("tls: failed to verify certificate: x509: certificate is not valid for the requested name ({e})")
        }
        Some(rustls::Error::InvalidCertificate(err)) => format!("tls: failed to verify certificate: {err:?}"),
        Some(err) => format!("remote error: tls: {err}"),
        None => format!("tls handshake failed: {}", go_io_error(e)),
    }
}

/// Accepts any server certificate (still checking the handshake signatures).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
