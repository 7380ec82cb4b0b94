//! Per-request routing: pick the steal route (if any) and the mirror routes a request
//! matches, then forward it, failing open to the app when a developer's upstream is down.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue};
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use shunt_proto::names::{HOP_HEADER_POD, HOP_HEADER_SESSION};

use super::body::{boxed, copy_channel, text, OutBody, Tee};
use super::client::{Proto, SendError, Sticky};
use super::Shared;
use crate::table::{ActiveRoute, PortRoutes};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Everything a request handler needs to know about its connection.
pub struct ConnInfo {
    /// The client.
    pub peer: SocketAddr,
    /// The client's address as an `x-forwarded-for` value (made once per connection).
    pub peer_header: HeaderValue,
    /// The app port the connection was for.
    pub port: u16,
    /// The protocol the client speaks (and that is spoken onwards).
    pub proto: Proto,
    /// The HTTP/1.1 connections onwards this client connection keeps.
    pub sticky: Sticky,
}

impl ConnInfo {
    /// Connection facts for a new client connection.
    pub fn new(peer: SocketAddr, port: u16, proto: Proto, clients: super::client::Clients) -> ConnInfo {
        let peer_header = HeaderValue::try_from(peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        ConnInfo {
            peer,
            peer_header,
            port,
            proto,
            sticky: Sticky::new(clients),
        }
    }

    fn sticky(&self) -> Option<&Sticky> {
        Some(&self.sticky)
    }
}

/// Routes one request. Never fails: problems become HTTP responses.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<OutBody>, std::convert::Infallible> {
    // hyper bounds the read buffer, but a head that arrives in one burst can get past it;
    // the limit is enforced here so it holds however the bytes arrive.
    if head_size(&req) > super::MAX_HEAD_BYTES {
        let mut resp = Response::new(text("shunt-sidecar: request header fields too large\n"));
        *resp.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        return Ok(resp);
    }
    let routes = shared.table.borrow().port(conn.port);
    let mut req = prepare(req.map(boxed), &conn);
    let Some(routes) = routes else {
        return Ok(to_app(&shared, &conn, None, req).await);
    };

    let (uri, headers) = (req.uri(), req.headers());
    let mut steal: Option<&Arc<ActiveRoute>> = None;
    let mut ambiguous = false;
    for route in &routes.steals {
        if route.route.filter.as_ref().is_none_or(|f| f.matches_head(uri, headers)) {
            ambiguous = steal.is_some();
            if ambiguous {
                break;
            }
            steal = Some(route);
        }
    }
    if ambiguous {
        // Filters are disjoint for one value per header; a request that repeats a
        // header can still match two. It belongs to nobody: the app serves it.
        routes.ambiguous.inc();
        tracing::debug!(
            port = conn.port,
            "request matched several steal routes; the app serves it"
        );
        steal = None;
    }

    if !is_upgrade(&req) {
        mirror(&shared, &conn, &routes, &mut req);
    }

    match steal {
        None => Ok(to_app(&shared, &conn, Some(&routes), req).await),
        Some(route) => Ok(to_upstream(&shared, &conn, route, req).await),
    }
}

/// Bytes of the request head as it would be written in HTTP/1.1.
fn head_size<B>(req: &Request<B>) -> usize {
    let line = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len()) + req.method().as_str().len() + 12;
    line + req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// Removes what must not travel onwards and records the client address.
fn prepare(mut req: Request<OutBody>, conn: &ConnInfo) -> Request<OutBody> {
    let upgrade = is_upgrade(&req);
    strip_hop_headers(req.headers_mut(), upgrade);
    // Hop headers of shunt itself are never taken from a client.
    req.headers_mut().remove(HOP_HEADER_SESSION);
    req.headers_mut().remove(HOP_HEADER_POD);
    let forwarded = match req.headers().get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::try_from(format!("{prior}, {}", conn.peer.ip())).ok(),
        None => Some(conn.peer_header.clone()),
    };
    if let Some(value) = forwarded {
        req.headers_mut().insert(X_FORWARDED_FOR.clone(), value);
    }
    req
}

/// True for an HTTP/1.1 request that asks to switch protocols (e.g. WebSocket).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && req.headers().get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) concern one connection, not the message.
fn strip_hop_headers(headers: &mut http::HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        strip_connection_listed(headers, keep_upgrade);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHORIZATION,
        &header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
    if headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// Removes the headers a `Connection` header lists (they concern this hop only).
fn strip_connection_listed(headers: &mut http::HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(name);
    }
}

/// Sends copies of `req` to every matching mirror route that is keeping up.
fn mirror(shared: &Arc<Shared>, conn: &ConnInfo, routes: &PortRoutes, req: &mut Request<OutBody>) {
    let mut copies = Vec::new();
    for route in &routes.mirrors {
        if !route
            .route
            .filter
            .as_ref()
            .is_none_or(|f| f.matches_head(req.uri(), req.headers()))
        {
            continue;
        }
        let Ok(permit) = route.mirror_slots.clone().try_acquire_owned() else {
            route.counters.mirror_dropped.inc();
            continue;
        };
        let (tx, body) = copy_channel(route.counters.mirror_dropped.clone());
        let mut copy = Request::new(boxed(body));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copies.push(tx);
        let (shared, route, proto) = (shared.clone(), route.clone(), conn.proto);
        tokio::spawn(async move {
            let _permit = permit;
            let sent = match route.route.upstream.authority() {
                Some(dest) => shared.clients.send(dest.as_str(), proto, copy, None).await,
                None => shared.hub.send(&route.route.id, copy).await,
            };
            match sent {
                Ok(resp) if crate::hub::is_unavailable(&resp) => {
                    route.counters.mirror_dropped.inc();
                    tracing::debug!(route.id = %route.route.id, "mirror copy not delivered: the session has no CLI connected");
                }
                Ok(resp) => {
                    route.counters.mirror_sent.inc();
                    // Read the answer so the connection can be reused; nobody needs it.
                    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                }
                Err(error) => {
                    route.counters.mirror_dropped.inc();
                    tracing::debug!(route.id = %route.route.id, ?error, "mirror copy not delivered");
                }
            }
        });
    }
    if !copies.is_empty() {
        let body = std::mem::replace(req.body_mut(), super::body::empty());
        *req.body_mut() = boxed(Tee::new(body, copies));
    }
}

async fn to_app(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    routes: Option<&PortRoutes>,
    req: Request<OutBody>,
) -> Response<OutBody> {
    if let Some(routes) = routes {
        routes.app.inc();
    }
    forward(shared, conn, shared.app_authority(conn.port), req)
        .await
        .unwrap_or_else(|why| {
            if let Some(routes) = routes {
                routes.app_error.inc();
            }
            tracing::warn!(port = conn.port, error = %why, "app unreachable");
            bad_gateway("the app did not answer")
        })
}

async fn to_upstream(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    route: &ActiveRoute,
    req: Request<OutBody>,
) -> Response<OutBody> {
    let result = match route.route.upstream.authority() {
        Some(dest) => {
            // A developer's server may accept the connection and close it before answering
            // (it is restarting, or crashed on the request). Nothing reached the client yet,
            // so a request that is safe to repeat (RFC 9110 §9.2.1) and has no body is served
            // by the app instead; for anything else the developer may have acted on it.
            let replay = replayable(&req).filter(|head| head.method().is_safe() && !is_upgrade(head));
            match (send(shared, conn, dest.as_str(), req).await, replay) {
                (Err(SendError::Sent(e)), Some(head)) => Err(SendError::Unsent(
                    Box::new(head),
                    format!("the upstream failed before answering: {e}"),
                )),
                (result, _) => result,
            }
        }
        None => match send_hub(shared, route, req).await {
            Ok(result) => result,
            Err(refusal) => return refusal,
        },
    };
    match result {
        Ok(resp) => {
            route.counters.stolen.inc();
            resp
        }
        Err(SendError::Unsent(req, why)) => {
            // Fail open: the developer's side is down and the request is intact.
            route.counters.failed_open.inc();
            tracing::info!(route.id = %route.route.id, error = %why, "upstream down; the app serves the request");
            forward(shared, conn, shared.app_authority(conn.port), *req)
                .await
                .unwrap_or_else(|_| bad_gateway("neither the session's upstream nor the app answered"))
        }
        Err(SendError::Sent(error)) => {
            route.counters.upstream_error.inc();
            tracing::warn!(route.id = %route.route.id, %error, "upstream failed mid-request");
            bad_gateway("the session's upstream failed while handling the request")
        }
    }
}

/// Sends a request of a `hub` route over the operator connection.
///
/// Without a connection the request comes back unsent (the app serves it). If the
/// operator answers "unavailable" (no CLI for the session; it did not read the body), a
/// request without a body is rebuilt from its head and comes back unsent too; one whose
/// body already left cannot be replayed, so the client gets that 503 (outer `Err`). A
/// bodiless GET/HEAD/OPTIONS whose operator connection broke mid-request is replayed too.
async fn send_hub(
    shared: &Arc<Shared>,
    route: &ActiveRoute,
    req: Request<OutBody>,
) -> Result<Result<Response<OutBody>, SendError>, Response<OutBody>> {
    let replay = replayable(&req);
    match shared.hub.send(&route.route.id, req).await {
        Ok(resp) if crate::hub::is_unavailable(&resp) => match replay {
            Some(head) => Ok(Err(SendError::Unsent(
                Box::new(head),
                "the session has no CLI connected".into(),
            ))),
            None => {
                route.counters.upstream_error.inc();
                tracing::info!(route.id = %route.route.id, "session has no CLI connected and the request body was sent; 503");
                let mut resp = Response::new(text("shunt-sidecar: the session's developer is not connected and the request body cannot be replayed to the app; retry\n"));
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                Err(resp)
            }
        },
        Ok(mut resp) => {
            strip_hop_headers(resp.headers_mut(), false);
            Ok(Ok(resp.map(boxed)))
        }
        // The operator went away with the request in flight (e.g. killed). A bodiless
        // request with a safe method (RFC 9110 §9.2.1: no side effects to repeat) is served
        // by the app instead; anything else may have reached the developer, so it fails.
        Err(SendError::Sent(e)) if replay.as_ref().is_some_and(|h| h.method().is_safe()) => Ok(Err(SendError::Unsent(
            Box::new(replay.unwrap_or_else(|| Request::new(super::body::empty()))),
            format!("the operator connection failed mid-request: {e}"),
        ))),
        Err(e) => Ok(Err(e)),
    }
}

/// A copy of `req` to send elsewhere if it fails, when it has no body (a body is read
/// only once); extensions (an upgrade) are not copied.
fn replayable(req: &Request<OutBody>) -> Option<Request<OutBody>> {
    http_body::Body::is_end_stream(req.body()).then(|| {
        let mut head = Request::new(super::body::empty());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        head
    })
}

/// Forwards to `dest`; an unsent failure is retried nowhere else (the app is the last resort).
async fn forward(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    dest: &str,
    req: Request<OutBody>,
) -> Result<Response<OutBody>, String> {
    match send(shared, conn, dest, req).await {
        Ok(resp) => Ok(resp),
        Err(SendError::Unsent(_, why)) => Err(why),
        Err(SendError::Sent(e)) => Err(e.to_string()),
    }
}

async fn send(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    dest: &str,
    mut req: Request<OutBody>,
) -> Result<Response<OutBody>, SendError> {
    let downstream = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    if conn.proto == Proto::Http1 {
        // HTTP/1.1 upstreams take the origin form; the Host header carries the authority.
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = pq.into();
        }
    }
    let mut resp = match shared.clients.send(dest, conn.proto, req, conn.sticky()).await {
        Ok(resp) => resp,
        Err(SendError::Unsent(mut req, why)) => {
            // Give the request its upgrade back, so whoever serves it instead can tunnel.
            if let Some(downstream) = downstream {
                req.extensions_mut().insert(downstream);
            }
            return Err(SendError::Unsent(req, why));
        }
        Err(sent) => return Err(sent),
    };
    if let (Some(downstream), StatusCode::SWITCHING_PROTOCOLS) = (downstream, resp.status()) {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
                return;
            };
            let (mut down, mut up) = (hyper_util::rt::TokioIo::new(down), hyper_util::rt::TokioIo::new(up));
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        });
    } else {
        strip_hop_headers(resp.headers_mut(), false);
    }
    Ok(resp.map(boxed))
}

fn bad_gateway(why: &'static str) -> Response<OutBody> {
    let mut resp = Response::new(text(format!("shunt-sidecar: {why}\n")));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}
