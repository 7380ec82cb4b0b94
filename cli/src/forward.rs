//! Hands each request that arrives through the tunnel to the developer's local app and
//! streams the answer back. Method, path, headers, body and trailers pass unchanged; the
//! hop headers the system adds (`shunt-session`, `shunt-pod`) are removed first. gRPC
//! (`content-type: application/grpc…`) goes to the app as h2c, everything else as
//! HTTP/1.1, one local connection per request (loopback connections are cheap, and no
//! pool means no stale connection after the app restarts).
//!
//! Copies of a mirror session are bounded: at most [`MIRROR_IN_FLIGHT`] wait on the local
//! app at once; a copy beyond that is dropped at once (503 to the sidecar, which never
//! waits for copies) and counted, so a stalled consumer costs a bounded number of sockets
//! and memory instead of one connection per copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shunt_proto::names::{HOP_HEADER_POD, HOP_HEADER_SESSION};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of answers sent back through the tunnel.
pub type Body = BoxBody<Bytes, BoxError>;

/// Mirror copies that may wait on the local app at once.
pub const MIRROR_IN_FLIGHT: usize = 64;

/// What the status line shows.
#[derive(Default)]
pub struct Stats {
    /// Requests received through the tunnel.
    pub routed: AtomicU64,
    /// Mirror copies dropped because [`MIRROR_IN_FLIGHT`] were still waiting on the app.
    pub dropped: AtomicU64,
    /// The last failure to reach the local app.
    pub last_error: Mutex<Option<String>>,
}

/// Forwards tunnel requests to the local app. Cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    host: Arc<str>,
    /// `(app port in the pods, local port)`; the first is the default.
    ports: Arc<[(u16, u16)]>,
    /// Counters for the status line.
    pub stats: Arc<Stats>,
    /// Bounds requests waiting on the local app (mirror sessions only).
    limit: Option<Arc<tokio::sync::Semaphore>>,
}

impl Forwarder {
    /// Forwards to `host`, mapping pod ports to local ports by `ports`.
    pub fn new(host: &str, ports: &[(u16, u16)]) -> Forwarder {
        Forwarder {
            host: host.into(),
            ports: ports.into(),
            stats: Arc::default(),
            limit: None,
        }
    }

    /// Like [`Forwarder::new`], for copies: at most [`MIRROR_IN_FLIGHT`] in flight.
    pub fn for_mirror(host: &str, ports: &[(u16, u16)]) -> Forwarder {
        Forwarder {
            limit: Some(Arc::new(tokio::sync::Semaphore::new(MIRROR_IN_FLIGHT))),
            ..Forwarder::new(host, ports)
        }
    }

    /// The local port for a request: the route id in `shunt-session` is `<session>` for
    /// one port, `<session>:<port>` for several.
    fn local_port(&self, req: &Request<Incoming>) -> u16 {
        let port = req
            .headers()
            .get(HOP_HEADER_SESSION)
            .and_then(|v| v.to_str().ok())
            .and_then(|id| id.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<u16>().ok());
        let default = self.ports.first().map_or(80, |p| p.1);
        port.and_then(|p| self.ports.iter().find(|m| m.0 == p))
            .map_or(default, |m| m.1)
    }

    /// Forwards one request; failures become a 502 that says what went wrong.
    pub async fn forward(&self, mut req: Request<Incoming>) -> Response<Body> {
        self.stats.routed.fetch_add(1, Ordering::Relaxed);
        let _permit = match self.limit.as_ref().map(|l| l.clone().try_acquire_owned()) {
            Some(Err(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                let msg = format!("copy dropped: {MIRROR_IN_FLIGHT} copies still wait on the local app");
                return text_response(StatusCode::SERVICE_UNAVAILABLE, &msg);
            }
            Some(Ok(permit)) => Some(permit),
            None => None,
        };
        let port = self.local_port(&req);
        req.headers_mut().remove(HOP_HEADER_SESSION);
        req.headers_mut().remove(HOP_HEADER_POD);
        let addr = format!("{}:{port}", self.host);
        match send(&addr, req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_connection_headers(&mut parts.headers);
                Response::from_parts(parts, body.map_err(BoxError::from).boxed())
            }
            Err(error) => {
                let msg = format!("the local app at {addr} did not answer: {error}");
                tracing::debug!(local.addr = %addr, %error, "forward failed");
                *self.stats.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg.clone());
                text_response(StatusCode::BAD_GATEWAY, &msg)
            }
        }
    }
}

/// A plain-text answer `shunt: <msg>`.
pub(crate) fn text_response(status: StatusCode, msg: &str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(format!("shunt: {msg}\n")))
            .map_err(BoxError::from)
            .boxed(),
    );
    *resp.status_mut() = status;
    resp
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

async fn send(addr: &str, req: Request<Incoming>) -> Result<Response<Incoming>, BoxError> {
    send_on(TcpStream::connect(addr).await?, req).await
}

/// Sends `req` on a connection to the local app (`shunt exec` opens it itself, to know
/// its port): h2c for gRPC, else HTTP/1.1.
pub(crate) async fn send_on(tcp: TcpStream, mut req: Request<Incoming>) -> Result<Response<Incoming>, BoxError> {
    let _ = tcp.set_nodelay(true);
    let io = TokioIo::new(tcp);
    if is_grpc(&req) {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        *req.version_mut() = Version::HTTP_2;
        return Ok(sender.send_request(req).await?);
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn.with_upgrades());
    // HTTP/2 carries the authority in the URI; HTTP/1.1 wants it in `Host` and an origin-form target.
    if !req.headers().contains_key(header::HOST) {
        if let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(header::HOST, host);
        }
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    *req.uri_mut() = path.parse()?;
    *req.version_mut() = Version::HTTP_11;
    Ok(sender.send_request(req).await?)
}

/// Headers HTTP/2 forbids in answers (RFC 9113 §8.2.2).
pub(crate) fn strip_connection_headers(headers: &mut http::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| {
            v.split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        })
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}
