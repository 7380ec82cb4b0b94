//! Outbound traffic of `shunt exec`: the sidecar dials connections and answers DNS
//! questions in the pod's network for a developer's program on their laptop.
//!
//! While the operator's routes stream says `outbound: true` ([`HubLink::outbound_wanted`]),
//! [`run`] ([`keeper`]) keeps a **reverse connection** to the hub up: TLS (same CA and
//! server name as the routes connection, ALPN `http/1.1`), `GET /hub/v1/reverse` with
//! `Upgrade: shunt-reverse` and the pod's projected token ([`dial`]), then — after the
//! 101 — the sidecar is the HTTP/2 **server** on that stream (protocol:
//! [`shunt_proto::hub`], step 3):
//!
//! - `CONNECT host:port`: the name is resolved by the pod's resolver (`/etc/hosts`,
//!   `resolv.conf` search domains: `reviews` works) and dialled within [`DIAL_TIMEOUT`];
//!   200 and the bytes flow, or 502 `{"message"}` with the dial error. At most
//!   [`MAX_OPEN`] connections at once (503 beyond).
//! - `GET /dns?name=<name>`: 200 `{"addresses": [...]}` or 404 `{"message"}`.
//!
//! When the flag goes back to `false` the connection is closed (its streams with it). The
//! hub ends a connection whose token expired, so a rotated token gets a new connection
//! before that happens (make-before-break, see [`keeper`]).
//!
//! [`HubLink::outbound_wanted`]: crate::hub::HubLink::outbound_wanted

mod dial;
mod keeper;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shunt_proto::hub::{query_value, DNS_PATH};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Semaphore};

use crate::hub::conn::HubError;
use crate::metrics::{Metrics, OutboundLabels};
use crate::proxy::body::{empty, text, OutBody};

pub use keeper::run;

/// How long dialling one destination may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one DNS question may take.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once through the reverse connection.
pub const MAX_OPEN: usize = 512;
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Why a reverse connection could not be opened or ended.
#[derive(Debug, thiserror::Error)]
pub enum ReverseError {
    /// Dialling the hub or reading the token failed (the same causes as the routes watch).
    #[error(transparent)]
    Hub(#[from] HubError),
    /// The operator answered the upgrade with something else than 101.
    #[error("the operator refused the reverse connection with {status}: {message}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
    /// The operator said nothing on the upgraded connection in time, or closed it at once.
    #[error("the operator did not take the reverse connection: {0}")]
    NotTaken(String),
    /// The HTTP/2 connection broke.
    #[error("the reverse connection broke: {0}")]
    Broke(#[source] hyper::Error),
    /// The task serving the connection failed (a panic in a handler).
    #[error("the reverse connection's task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Serves HTTP/2 on an accepted reverse connection until it ends. Once `retire` fires
/// (a connection with a newer token has replaced this one) it sends GOAWAY: the hub opens
/// no new streams on it, the tunnels open on it finish, then it closes.
async fn serve(io: dial::Accepted, state: Arc<State>, retire: oneshot::Receiver<()>) -> Result<(), ReverseError> {
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .max_concurrent_streams(u32::try_from(MAX_OPEN * 2).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn, retire);
    let mut retiring = false;
    let result = loop {
        tokio::select! {
            result = conn.as_mut() => break result,
            signal = &mut retire, if !retiring => {
                retiring = true;
                // A dropped sender means the keeper is gone; it aborts this task then.
                if signal.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    };
    result.map_err(ReverseError::Broke)
}

struct State {
    metrics: Metrics,
    /// `namespace/name`, for messages.
    pod: String,
    open: Arc<Semaphore>,
}

fn message(code: StatusCode, what: &str) -> Response<OutBody> {
    let mut resp = Response::new(text(serde_json::json!({ "message": what }).to_string()));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<OutBody> {
    if req.method() == Method::CONNECT {
        let dest = req.uri().authority().map(ToString::to_string).unwrap_or_default();
        let span = tracing::info_span!("outbound.connect", dest = %dest);
        return tracing::Instrument::instrument(connect(state, req), span).await;
    }
    if req.method() == Method::GET && req.uri().path() == DNS_PATH {
        return dns(state, &req).await;
    }
    message(
        StatusCode::NOT_FOUND,
        &format!(
            "the sidecar serves CONNECT and GET {DNS_PATH}, not {} {}",
            req.method(),
            req.uri().path()
        ),
    )
}

fn count(metrics: &Metrics, outcome: &'static str) {
    metrics.outbound.get_or_create(&OutboundLabels { outcome }).inc();
}

async fn connect(state: &State, mut req: Request<Incoming>) -> Response<OutBody> {
    let Some(authority) = req.uri().authority().cloned() else {
        return message(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let Some(port) = authority.port_u16() else {
        return message(StatusCode::BAD_REQUEST, &format!("CONNECT {authority}: no port"));
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let Ok(permit) = state.open.clone().try_acquire_owned() else {
        count(&state.metrics, "limit");
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("pod {} has {MAX_OPEN} outbound connections open already", state.pod),
        );
    };
    let dialled = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect((host.as_str(), port))).await;
    let mut stream = match dialled {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            count(&state.metrics, "dial_failed");
            tracing::info!(%error, "outbound dial failed");
            return message(
                StatusCode::BAD_GATEWAY,
                &format!("pod {} cannot connect to {authority}: {error}", state.pod),
            );
        }
        Err(_) => {
            count(&state.metrics, "timeout");
            return message(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "pod {} cannot connect to {authority}: no answer within {DIAL_TIMEOUT:?}",
                    state.pod
                ),
            );
        }
    };
    let _ = stream.set_nodelay(true);
    count(&state.metrics, "connected");
    tracing::debug!(peer.addr = ?stream.peer_addr().ok(), "outbound connection open");
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _permit = permit;
            let upgraded = match upgrade.await {
                Ok(u) => u,
                Err(error) => return tracing::debug!(%error, "outbound stream not established"),
            };
            let mut upgraded = TokioIo::new(upgraded);
            match tokio::io::copy_bidirectional(&mut upgraded, &mut stream).await {
                Ok((up, down)) => tracing::debug!(bytes.up = up, bytes.down = down, "outbound connection closed"),
                Err(error) => tracing::debug!(%error, "outbound connection broke"),
            }
        },
        tracing::Span::current(),
    ));
    Response::new(empty())
}

async fn dns(state: &State, req: &Request<Incoming>) -> Response<OutBody> {
    let Some(name) = req
        .uri()
        .query()
        .and_then(|q| query_value(q, "name"))
        .filter(|n| !n.is_empty())
    else {
        return message(StatusCode::BAD_REQUEST, &format!("ask GET {DNS_PATH}?name=<name>"));
    };
    let answer = tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((name.as_str(), 0))).await;
    let result = match answer {
        Ok(Ok(addrs)) => {
            let mut list: Vec<IpAddr> = Vec::new();
            for a in addrs {
                if !list.contains(&a.ip()) {
                    list.push(a.ip());
                }
            }
            Ok(list)
        }
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {DNS_TIMEOUT:?}")),
    };
    match result {
        Ok(list) if !list.is_empty() => {
            state
                .metrics
                .dns_lookups
                .get_or_create(&OutboundLabels { outcome: "resolved" })
                .inc();
            tracing::debug!(dns.name = %name, addresses = ?list, "resolved");
            let body = serde_json::json!({ "addresses": list }).to_string();
            let mut resp = Response::new(text(body));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Ok(_) | Err(_) => {
            state
                .metrics
                .dns_lookups
                .get_or_create(&OutboundLabels { outcome: "not_found" })
                .inc();
            let why = result.err().unwrap_or_else(|| "no addresses".to_owned());
            message(
                StatusCode::NOT_FOUND,
                &format!("{name:?} does not resolve in pod {}: {why}", state.pod),
            )
        }
    }
}
