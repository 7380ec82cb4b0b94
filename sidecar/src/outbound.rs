//! Outbound traffic of `shunt exec`: the sidecar dials connections and answers DNS
//! questions in the pod's network for a developer's program on their laptop.
//!
//! While the operator's routes stream says `outbound: true` ([`HubLink::outbound_wanted`]),
//! [`run`] keeps a **reverse connection** to the hub up: TLS (same CA and server name as
//! the routes connection, ALPN `http/1.1`), `GET /hub/v1/reverse` with `Upgrade:
//! shunt-reverse` and the pod's projected token, then — after the 101 — the sidecar is
//! the HTTP/2 **server** on that stream (protocol: [`shunt_proto::hub`], step 3):
//!
//! - `CONNECT host:port`: the name is resolved by the pod's resolver (`/etc/hosts`,
//!   `resolv.conf` search domains: `reviews` works) and dialled within [`DIAL_TIMEOUT`];
//!   200 and the bytes flow, or 502 `{"message"}` with the dial error. At most
//!   [`MAX_OPEN`] connections at once (503 beyond).
//! - `GET /dns?name=<name>`: 200 `{"addresses": [...]}` or 404 `{"message"}`.
//!
//! When the flag goes back to `false` the connection is closed (its streams with it). A
//! broken connection is redialled with back-off while the flag stays `true`.
//!
//! [`HubLink::outbound_wanted`]: crate::hub::HubLink::outbound_wanted

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use shunt_proto::hub::{
    query_value, DNS_PATH, HEADER_POD, HEADER_PROTOCOL, PROTOCOL_VERSION, REVERSE_PATH, REVERSE_UPGRADE,
};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

use crate::config::HubSettings;
use crate::hub::conn::{tls_connector, HubError};
use crate::hub::{BACKOFF_MAX, BACKOFF_MIN};
use crate::metrics::{Metrics, OutboundLabels};
use crate::proxy::body::{empty, text, OutBody};

/// How long dialling one destination may take.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one DNS question may take.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once through the reverse connection.
pub const MAX_OPEN: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Keeps the reverse connection up while `wanted` is `true`, until its sender is gone.
pub async fn run(settings: HubSettings, mut wanted: watch::Receiver<bool>, metrics: Metrics) {
    let mut backoff = BACKOFF_MIN;
    loop {
        if wanted.wait_for(|w| *w).await.is_err() {
            return;
        }
        let started = Instant::now();
        let result = tokio::select! {
            result = connection(&settings, &metrics) => result,
            gone = wanted.wait_for(|w| !*w) => {
                if gone.is_err() {
                    return;
                }
                tracing::info!("outbound traffic no longer wanted: reverse connection closed");
                backoff = BACKOFF_MIN;
                continue;
            }
        };
        match result {
            Ok(()) => tracing::info!(retry_in = ?backoff, "the operator closed the reverse connection"),
            Err(error) => tracing::warn!(%error, retry_in = ?backoff, "reverse connection for outbound traffic failed"),
        }
        if started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One reverse connection: dial, upgrade, serve HTTP/2 until it ends.
async fn connection(settings: &HubSettings, metrics: &Metrics) -> Result<(), HubError> {
    let connect_err = |why: String| HubError::Connect {
        addr: settings.addr.clone(),
        why,
    };
    let connector = tls_connector(settings, b"http/1.1")?;
    let token = std::fs::read_to_string(&settings.token_file).map_err(|e| HubError::File {
        what: "cannot read the token file (SHUNT_TOKEN_FILE)",
        path: settings.token_file.display().to_string(),
        why: e.to_string(),
    })?;
    let name = ServerName::try_from(settings.server_name.clone())
        .map_err(|e| connect_err(format!("SHUNT_OPERATOR_SERVER_NAME {:?}: {e}", settings.server_name)))?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&settings.addr))
        .await
        .map_err(|_| connect_err(format!("timed out after {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| connect_err(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, OutBody>(TokioIo::new(tls))
        .await
        .map_err(|e| connect_err(format!("HTTP/1.1: {e}")))?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "reverse connection's HTTP/1.1 phase ended");
        }
    });
    let req = Request::get(REVERSE_PATH)
        .header(header::HOST, settings.server_name.as_str())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, REVERSE_UPGRADE)
        .header(header::AUTHORIZATION, format!("Bearer {}", token.trim()))
        .header(HEADER_POD, format!("{}/{}", settings.pod_namespace, settings.pod_name))
        .header(HEADER_PROTOCOL, PROTOCOL_VERSION)
        .body(empty())
        .map_err(|e| connect_err(format!("reverse request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| connect_err(e.to_string()))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(crate::hub::conn::refusal(resp).await);
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| connect_err(format!("upgrade: {e}")))?;
    tracing::info!(hub.addr = %settings.addr, "reverse connection up: serving outbound traffic");
    let state = Arc::new(State {
        metrics: metrics.clone(),
        pod: format!("{}/{}", settings.pod_namespace, settings.pod_name),
        open: Arc::new(Semaphore::new(MAX_OPEN)),
    });
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .max_concurrent_streams(u32::try_from(MAX_OPEN * 2).unwrap_or(u32::MAX))
        .serve_connection(upgraded, service)
        .await
        .map_err(|e| HubError::Stream(format!("reverse connection: {e}")))
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
