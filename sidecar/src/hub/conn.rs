//! One connection to the hub: TLS (trusting `SHUNT_OPERATOR_CA`, ALPN `h2`), an HTTP/2
//! client with keep-alive PINGs, the routes watch, and the documents it streams. When the
//! connection is replaced ([`super::keeper`]), [`Watch::retire`] closes it without
//! cutting off the requests on it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use shunt_proto::hub::{HEADER_POD, HEADER_PROTOCOL, PROTOCOL_VERSION, ROUTES_PATH};
use shunt_proto::route::{RouteSet, Upstream};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{Connection, HubLink};
use crate::config::HubSettings;
use crate::metrics::{Metrics, ResultLabels};
use crate::proxy::body::{empty, OutBody};
use crate::table::Table;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// PING interval; a peer that does not answer within the same time is dead.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Longest routes document accepted.
const MAX_LINE: usize = 4 << 20;

/// Why a connection to the hub ended.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No CA to trust the hub with.
    #[error("neither SHUNT_OPERATOR_CA nor SHUNT_OPERATOR_CA_PEM is set: the sidecar cannot verify the operator and stays dormant; give the webhook --operator-ca-file, or mount the operator's CA and set SHUNT_OPERATOR_CA")]
    NoCa,
    /// A file could not be read or used (CA bundle, token).
    #[error("{what} {path}: {why}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        why: String,
    },
    /// Dialling, TLS or the HTTP/2 handshake failed.
    #[error("cannot reach the operator at {addr}: {why}")]
    Connect {
        /// The hub address.
        addr: String,
        /// Why.
        why: String,
    },
    /// The operator refused the watch.
    #[error("the operator refused the routes watch with {status}: {message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
    /// The stream broke.
    #[error("the routes stream broke: {0}")]
    Stream(String),
}

fn file_err(what: &'static str, path: &std::path::Path, why: impl ToString) -> HubError {
    HubError::File {
        what,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// A TLS connector that trusts the operator's CA and offers `alpn` (`h2` for the routes
/// connection, `http/1.1` for the reverse connection's upgrade).
pub(crate) fn tls_connector(settings: &HubSettings, alpn: &[u8]) -> Result<tokio_rustls::TlsConnector, HubError> {
    let inline = std::path::Path::new("$SHUNT_OPERATOR_CA_PEM");
    let (path, pem) = match (settings.ca_file.as_deref(), &settings.ca_pem) {
        (Some(path), _) => (
            path,
            std::fs::read(path).map_err(|e| file_err("cannot read the operator CA", path, e))?,
        ),
        (None, Some(pem)) => (inline, pem.as_bytes().to_vec()),
        (None, None) => return Err(HubError::NoCa),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| file_err("the operator CA is not valid PEM:", path, e))?;
        roots
            .add(cert)
            .map_err(|e| file_err("the operator CA holds an unusable certificate:", path, e))?;
    }
    if roots.is_empty() {
        return Err(file_err("the operator CA", path, "holds no certificate"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| file_err("TLS setup for", path, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Reads the projected token (kubelet rotates it: read it for every connection).
pub(crate) fn read_token(settings: &HubSettings) -> Result<String, HubError> {
    std::fs::read_to_string(&settings.token_file)
        .map(|token| token.trim().to_owned())
        .map_err(|e| file_err("cannot read the token file (SHUNT_TOKEN_FILE)", &settings.token_file, e))
}

/// An open routes watch: the HTTP/2 connection it runs on (which also carries relayed
/// requests, see [`Connection`]) and the token it was opened with.
pub(super) struct Watch {
    connection: Arc<Connection>,
    body: Incoming,
    buf: BytesMut,
    token: String,
    driver: AbortOnDrop,
}

impl Watch {
    /// The connection, for [`HubLink::set`].
    pub(super) fn connection(&self) -> Arc<Connection> {
        self.connection.clone()
    }

    /// The token the watch was opened with.
    pub(super) fn token(&self) -> &str {
        &self.token
    }

    /// The next routes document (a non-blank line); `None` when the operator ended the
    /// watch. Cancel-safe: a partial line stays buffered.
    pub(super) async fn next_document(&mut self) -> Result<Option<Bytes>, HubError> {
        loop {
            while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(end + 1).freeze().slice(..end);
                if !line.iter().all(u8::is_ascii_whitespace) {
                    return Ok(Some(line));
                }
            }
            if self.buf.len() > MAX_LINE {
                return Err(HubError::Stream(format!("a routes document exceeds {MAX_LINE} bytes")));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| HubError::Stream(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// Closes the watch without cutting requests short: waits (up to `grace`) until every
    /// request handed to this connection has its response head — the hub accepts relayed
    /// requests only while the connection's watch is open — then cancels the watch. The
    /// connection closes once the responses still streaming end.
    pub(super) async fn retire(self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.connection.sending() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.connection.sending() > 0 {
            tracing::warn!(
                ?grace,
                "requests still waiting on the old operator connection; closing it anyway"
            );
        }
        let Watch {
            connection,
            body,
            mut driver,
            ..
        } = self;
        // Without senders and streams hyper's dispatch task ends by itself (after a
        // GOAWAY); responses still streaming run on the connection task, not this one.
        drop((connection, body));
        if tokio::time::timeout(grace, &mut driver.0).await.is_err() {
            tracing::debug!("old operator connection still busy after the grace time; leaving it to finish");
        }
    }
}

/// Dials the hub (TLS) and opens the routes watch with `token`; returns the watch and its
/// first document.
pub(super) async fn open(settings: &HubSettings, token: String) -> Result<(Watch, Bytes), HubError> {
    let tls = connect_tls(settings, b"h2").await?;
    let opened = handshake(TokioIo::new(tls), settings, token).await?;
    tracing::info!(hub.addr = %settings.addr, "routes watch open");
    Ok(opened)
}

/// Dials the hub (TCP, then TLS offering `alpn`): the part the routes watch and the
/// reverse connection ([`crate::outbound::dial`]) share.
pub(crate) async fn connect_tls(
    settings: &HubSettings,
    alpn: &[u8],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, HubError> {
    let connector = tls_connector(settings, alpn)?;
    let connect_err = |why: String| HubError::Connect {
        addr: settings.addr.clone(),
        why,
    };
    let name = ServerName::try_from(settings.server_name.clone())
        .map_err(|e| connect_err(format!("SHUNT_OPERATOR_SERVER_NAME {:?}: {e}", settings.server_name)))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&settings.addr))
        .await
        .map_err(|_| connect_err(format!("timed out after {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| connect_err(format!("TLS: {e}")))
}

/// HTTP/2 over `io` (any stream: tests use in-memory ones), the routes watch with `token`,
/// and its first document (a watch counts as up once it has said which routes hold).
pub(super) async fn handshake<T>(io: T, settings: &HubSettings, token: String) -> Result<(Watch, Bytes), HubError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let connect_err = |why: String| HubError::Connect {
        addr: settings.addr.clone(),
        why,
    };
    let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .keep_alive_while_idle(true)
        .handshake::<_, OutBody>(io)
        .await
        .map_err(|e| connect_err(format!("HTTP/2: {e}")))?;
    let driver = AbortOnDrop(tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "operator connection ended");
        }
    }));
    let req = Request::get(format!("https://{}{ROUTES_PATH}", settings.server_name))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(HEADER_POD, format!("{}/{}", settings.pod_namespace, settings.pod_name))
        .header(HEADER_PROTOCOL, PROTOCOL_VERSION)
        .body(empty())
        .map_err(|e| connect_err(format!("routes request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| connect_err(e.to_string()))?;
    if resp.status() != StatusCode::OK {
        return Err(refusal(resp).await);
    }
    let mut watch = Watch {
        connection: Arc::new(Connection::new(sender)),
        body: resp.into_body(),
        buf: BytesMut::new(),
        token,
        driver,
    };
    match watch.next_document().await? {
        Some(first) => Ok((watch, first)),
        None => Err(HubError::Stream(
            "the operator ended the routes watch before its first document".into(),
        )),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Installs one routes document; an invalid one is logged and the routes in force stay.
pub(super) fn publish(
    line: &[u8],
    app_ports: &[u16],
    metrics: &Metrics,
    tx: &watch::Sender<Arc<Table>>,
    link: &HubLink,
) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let set = match RouteSet::from_json(line) {
        // The outbound flag drives the reverse connection, not the routing table.
        Ok(set) => {
            link.want_outbound(set.outbound());
            set.with_outbound(false)
        }
        Err(error) => {
            metrics
                .route_reloads
                .get_or_create(&ResultLabels { result: "error" })
                .inc();
            return tracing::error!(%error, "routes document from the operator rejected; the routes in force stay");
        }
    };
    // Only hub routes for ports this sidecar manages; others are reported and left out.
    let (keep, skip): (Vec<_>, Vec<_>) = set
        .routes()
        .iter()
        .cloned()
        .partition(|r| r.upstream == Upstream::Hub && app_ports.contains(&r.port));
    for route in &skip {
        tracing::warn!(route.id = %route.id, port = route.port, ?app_ports, "route from the operator ignored: not a hub route for a managed port");
    }
    let set = if skip.is_empty() {
        set
    } else {
        RouteSet::new(keep).unwrap_or_default()
    };
    if tx.borrow().set() == &set {
        return;
    }
    tracing::info!(routes.count = set.routes().len(), "routes updated from the operator");
    metrics
        .route_reloads
        .get_or_create(&ResultLabels { result: "ok" })
        .inc();
    metrics.routes.set(set.routes().len() as i64);
    tx.send_replace(Arc::new(Table::new(set, metrics)));
}

/// The operator's refusal of a hub request: its status and the `message` of its Status
/// body (or the body's text).
pub(crate) async fn refusal(resp: http::Response<hyper::body::Incoming>) -> HubError {
    let status = resp.status();
    let body = tokio::time::timeout(CONNECT_TIMEOUT, resp.into_body().collect()).await;
    let text = match body {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        _ => String::new(),
    };
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    HubError::Refused { status, message }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_outbound_flag_reaches_the_link_not_the_table() {
        let (metrics, link) = (Metrics::default(), HubLink::new("shop", "api-0"));
        let (tx, rx) = watch::channel(Arc::new(Table::default()));
        let wanted = link.outbound_wanted();
        let line = br#"{"routes":[{"id":"alice","port":8080,"mode":"steal","filter":"x-user: alice","upstream":"hub"}],"outbound":true}"#;
        publish(line, &[8080], &metrics, &tx, &link);
        assert!(*wanted.borrow());
        assert_eq!(rx.borrow().set().routes().len(), 1);
        assert!(!rx.borrow().set().outbound());
        publish(br#"{"routes":[]}"#, &[8080], &metrics, &tx, &link);
        assert!(!*wanted.borrow());
        assert!(rx.borrow().set().is_empty());
    }
}
