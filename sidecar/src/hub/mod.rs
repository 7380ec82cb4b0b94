//! The operator's hub as a route source, and the link that carries `hub` routes' requests.
//!
//! Protocol: [`shunt_proto::hub`]. [`run`] dials the hub (TLS, HTTP/2 client, keep-alive
//! PINGs), opens the routes watch with the pod's projected token and publishes each
//! document into the routing table ([`conn`]). It redials with capped back-off
//! (0.5 s → 10 s), re-reading the token each time (kubelet rotates it). Cut off from the
//! operator, the sidecar keeps its routes only for the lease, then goes dormant.
//!
//! [`HubLink`] is the connection the proxy uses for requests of `hub` routes: each is its
//! own HTTP/2 request with `shunt-session` and `shunt-pod`. Without a connection the
//! request comes back unsent and the app serves it.

pub mod conn;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use shunt_proto::names::{HOP_HEADER_POD, HOP_HEADER_SESSION};
use tokio::sync::watch;

use crate::config::HubSettings;
use crate::metrics::Metrics;
use crate::proxy::body::OutBody;
use crate::proxy::client::SendError;
use crate::table::Table;

/// First retry delay after a failed or lost connection.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The hub connection requests of `hub` routes travel on, and whether the operator wants
/// the reverse connection for outbound traffic up. Cheap to clone.
#[derive(Clone)]
pub struct HubLink {
    sender: Arc<Mutex<Option<http2::SendRequest<OutBody>>>>,
    pod: Option<HeaderValue>,
    outbound: Arc<watch::Sender<bool>>,
}

impl Default for HubLink {
    fn default() -> HubLink {
        HubLink {
            sender: Arc::default(),
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

    pub(crate) fn set(&self, sender: Option<http2::SendRequest<OutBody>>) {
        *self.sender.lock().unwrap_or_else(|p| p.into_inner()) = sender;
    }

    /// Whether a hub connection is up.
    pub fn is_connected(&self) -> bool {
        self.sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    /// Sends `req` for route `route_id` to the operator. Nothing sent (no connection, an
    /// upgrade, a connection that just closed) → [`SendError::Unsent`] with the request.
    pub async fn send(&self, route_id: &str, mut req: Request<OutBody>) -> Result<Response<Incoming>, SendError> {
        let sender = self
            .sender
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|s| !s.is_closed());
        let (Some(mut sender), Some(pod)) = (sender, self.pod.clone()) else {
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

/// Runs the hub source until `tx` has no receivers: connect, watch, publish, redial.
pub async fn run(
    settings: HubSettings,
    app_ports: Vec<u16>,
    lease: Duration,
    metrics: Metrics,
    tx: watch::Sender<Arc<Table>>,
    link: HubLink,
) {
    let (up_tx, up_rx) = watch::channel(false);
    tokio::spawn(lease_keeper(up_rx, lease, tx.clone(), metrics.clone()));
    let mut backoff = BACKOFF_MIN;
    while !tx.is_closed() {
        let result = conn::session(&settings, &app_ports, &metrics, &tx, &link, &up_tx).await;
        link.set(None);
        // Without the routes watch nobody says the reverse connection is still wanted.
        link.want_outbound(false);
        let was_up = up_tx.send_replace(false);
        if was_up {
            backoff = BACKOFF_MIN;
        }
        match result {
            Ok(()) => tracing::info!(hub.addr = %settings.addr, "the operator ended the routes watch; reconnecting"),
            Err(error) => {
                tracing::warn!(hub.addr = %settings.addr, %error, retry_in = ?backoff, "no routes from the operator")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// While the watch is down for longer than `lease`, the routes are dropped (dormant).
async fn lease_keeper(mut up: watch::Receiver<bool>, lease: Duration, tx: watch::Sender<Arc<Table>>, metrics: Metrics) {
    loop {
        if up.wait_for(|up| !*up).await.is_err() {
            return;
        }
        let back = tokio::time::timeout(lease, up.wait_for(|up| *up))
            .await
            .map(|r| r.is_ok());
        match back {
            Ok(true) => continue,
            Ok(false) => return,
            Err(_) => {
                if !tx.borrow().set().is_empty() {
                    tracing::warn!(?lease, "no operator connection for the lease; routes dropped (dormant)");
                    metrics.routes.set(0);
                    tx.send_replace(Arc::new(Table::default()));
                }
                if up.wait_for(|up| *up).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_ids_map_to_session_names() {
        assert_eq!(session_of_route("alice"), "alice");
        assert_eq!(session_of_route("alice:8080"), "alice");
    }
}
