//! An HTTPS client for the tests that trusts only a given CA bundle (as the API server
//! trusts only `caBundle`), speaking HTTP/1.1 or HTTP/2 over one keep-alive connection.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One open connection.
pub struct Conn {
    sender: Sender,
    authority: String,
    /// The server's leaf certificate (DER) of this connection.
    pub peer_leaf: Vec<u8>,
}

/// The TLS client configuration that trusts only the certificates of `bundle_pem`.
pub fn client_config(bundle_pem: &[u8], http2: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in shunt_webhook::tls::parse_bundle(bundle_pem).map_err(|e| e.to_string())? {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(shunt_webhook::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    Ok(Arc::new(config))
}

/// Connects to `addr`, verifying the server as `server_name` against `bundle_pem` only.
pub async fn connect(addr: SocketAddr, bundle_pem: &[u8], server_name: &str, http2: bool) -> Result<Conn, String> {
    let config = client_config(bundle_pem, http2)?;
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let expected: &[u8] = if http2 { b"h2" } else { b"http/1.1" };
    if alpn.as_deref() != Some(expected) {
        return Err(format!("ALPN: server chose {alpn:?}"));
    }
    let peer_leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let peer_leaf = peer_leaf.unwrap_or_default();
    let io = TokioIo::new(tls);
    let sender = if http2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Sender::H1(sender)
    };
    Ok(Conn {
        sender,
        authority: server_name.to_owned(),
        peer_leaf,
    })
}

impl Conn {
    /// Sends one request and reads the whole response.
    pub async fn send(&mut self, method: &str, path: &str, body: Vec<u8>) -> Result<(StatusCode, Bytes), String> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(match self.sender {
                // HTTP/1.1 sends the origin form, HTTP/2 needs scheme and authority.
                Sender::H1(_) => path.to_owned(),
                Sender::H2(_) => format!("https://{}{path}", self.authority),
            })
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = match &mut self.sender {
            Sender::H1(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                sender.ready().await.map_err(|e| e.to_string())?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// Posts an AdmissionReview to `/mutate-pods`.
    pub async fn review(&mut self, review: &serde_json::Value) -> Result<(StatusCode, serde_json::Value), String> {
        let (status, body) = self
            .send("POST", "/mutate-pods", serde_json::to_vec(review).unwrap())
            .await?;
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    }
}
