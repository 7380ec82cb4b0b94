//! The operator's hub as a route source, and the link that carries `hub` routes' requests.
//!
//! Protocol: [`shunt_proto::hub`]. [`run`] ([`keeper`]) dials the hub (TLS, HTTP/2
//! client, keep-alive PINGs), opens the routes watch with the pod's projected token and
//! publishes each document into the routing table ([`conn`]). When the kubelet rotates
//! the token, a second connection is opened with the new one while the first keeps
//! serving (make-before-break). A watch the operator ends is redialled at once, a failed
//! one with capped back-off (0.5 s → 10 s). Cut off from the operator, the sidecar keeps
//! its routes only for the lease, then goes dormant.
//!
//! [`HubLink`] is the connection the proxy uses for requests of `hub` routes: each is its
//! own HTTP/2 request with `shunt-session` and `shunt-pod`. Without a connection the
//! request comes back unsent and the app serves it.

pub mod conn;
pub(crate) mod keeper;
pub(crate) mod redial;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use shunt_proto::names::{HOP_HEADER_POD, HOP_HEADER_SESSION};
use tokio::sync::watch;

use crate::proxy::body::OutBody;
use crate::proxy::client::SendError;

pub use keeper::run;

/// First retry delay after a failed or lost connection.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// One hub connection as the link uses it: its sender and how many requests on it are
/// waiting for their response head (the connection is not closed under them).
pub(crate) struct Connection {
    sender: http2::SendRequest<OutBody>,
    sending: AtomicUsize,
}

impl Connection {
    fn new(sender: http2::SendRequest<OutBody>) -> Connection {
        Connection {
            sender,
            sending: AtomicUsize::new(0),
        }
    }

    /// Requests handed to this connection that have no response head yet.
    fn sending(&self) -> usize {
        self.sending.load(Ordering::Acquire)
    }
}

/// Counts one request in [`Connection::sending`] until dropped.
struct Sending(Arc<Connection>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.sending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The hub connection requests of `hub` routes travel on, and whether the operator wants
/// the reverse connection for outbound traffic up. Cheap to clone.
#[derive(Clone)]
pub struct HubLink {
    connection: Arc<Mutex<Option<Arc<Connection>>>>,
    pod: Option<HeaderValue>,
    outbound: Arc<watch::Sender<bool>>,
}

impl Default for HubLink {
    fn default() -> HubLink {
        HubLink {
            connection: Arc::default(),
            pod: None,
            outbound: Arc::new(watch::channel(false).0),
        }
    }
}

impl HubLink {
    /// A link (disconnected for now) for pod `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> HubLink {
        HubLink {
            pod: HeaderValue::try_from(format!("{namespace}/{name}")).ok(),
            ..HubLink::default()
        }
    }

    /// Records the routes stream's `outbound` flag.
    pub(crate) fn want_outbound(&self, wanted: bool) {
        self.outbound
            .send_if_modified(|now| std::mem::replace(now, wanted) != wanted);
    }

    /// Follows the `outbound` flag ([`crate::outbound`] keeps the reverse connection up
    /// while it is `true`).
    pub fn outbound_wanted(&self) -> watch::Receiver<bool> {
        self.outbound.subscribe()
    }

    /// Sends the next requests on `connection` (none: the app serves them).
    pub(crate) fn set(&self, connection: Option<Arc<Connection>>) {
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = connection;
    }

    /// Whether a hub connection is up.
    pub fn is_connected(&self) -> bool {
        self.connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|u| !u.sender.is_closed())
    }

    /// The connection to send on, counted as sending (under the lock, so a connection
    /// being replaced sees the request before it closes).
    fn checkout(&self) -> Option<(http2::SendRequest<OutBody>, Sending)> {
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let connection = connection.as_ref().filter(|c| !c.sender.is_closed())?;
        connection.sending.fetch_add(1, Ordering::AcqRel);
        Some((connection.sender.clone(), Sending(connection.clone())))
    }

    /// Sends `req` for route `route_id` to the operator. Nothing sent (no connection, an
    /// upgrade, a connection that just closed) → [`SendError::Unsent`] with the request.
    pub async fn send(&self, route_id: &str, mut req: Request<OutBody>) -> Result<Response<Incoming>, SendError> {
        let (Some((mut sender, _sending)), Some(pod)) = (self.checkout(), self.pod.clone()) else {
            return Err(SendError::Unsent(Box::new(req), "no connection to the operator".into()));
        };
        if crate::proxy::route::is_upgrade(&req) {
            // HTTP/2 to the operator carries no HTTP/1.1 upgrades: the app serves them.
            return Err(SendError::Unsent(
                Box::new(req),
                "upgrades are not relayed through the operator".into(),
            ));
        }
        let Ok(session) = HeaderValue::try_from(session_of_route(route_id)) else {
            return Err(SendError::Unsent(
                Box::new(req),
                format!("route id {route_id:?} is not a header value"),
            ));
        };
        let (uri, version) = (req.uri().clone(), req.version());
        // An unsent request goes to the app: as it came, without shunt's hop headers.
        let unsent = |mut req: Request<OutBody>, why: String| {
            req.headers_mut().remove(HOP_HEADER_SESSION);
            req.headers_mut().remove(HOP_HEADER_POD);
            *req.uri_mut() = uri.clone();
            *req.version_mut() = version;
            SendError::Unsent(Box::new(req), why)
        };
        req.headers_mut().insert(HOP_HEADER_SESSION, session);
        req.headers_mut().insert(HOP_HEADER_POD, pod);
        absolute_uri(&mut req);
        if let Err(e) = sender.ready().await {
            return Err(unsent(req, format!("operator connection: {e}")));
        }
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(back) => Err(unsent(back, e.into_error().to_string())),
                None => Err(SendError::Sent(e.into_error())),
            },
        }
    }
}

/// The session name of a route id (multi-port sessions have ids `name:port`).
pub fn session_of_route(id: &str) -> &str {
    match id.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => id,
    }
}

/// Whether an operator answer means "nobody takes this session now; body unread".
pub fn is_unavailable<B>(resp: &Response<B>) -> bool {
    resp.status() == http::StatusCode::SERVICE_UNAVAILABLE
        && resp.headers().contains_key(shunt_proto::hub::HEADER_UNAVAILABLE)
}

/// HTTP/2 needs `:scheme` and `:authority`: a request from an HTTP/1.1 client (origin
/// form) gets `http` and its `Host` (or `localhost`).
fn absolute_uri<B>(req: &mut Request<B>) {
    if req.uri().authority().is_none() {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        if let Ok(uri) = format!("http://{host}{pq}").parse() {
            *req.uri_mut() = uri;
        }
    }
    *req.version_mut() = http::Version::HTTP_2;
}
