//! Relaying stolen and mirrored requests from a sidecar to the session's CLI.
//!
//! A request carrying `shunt-session` is accepted only on a connection whose routes
//! watch authenticated a pod, only if its `shunt-pod` names that same pod, and only if
//! the session selects that pod right now: a sidecar cannot inject requests
//! into sessions that are not its own (a session that has ended answers 503, see below).
//! The request then goes to the CLI unchanged (hop
//! headers included, so the CLI knows the session and pod; the CLI strips them before
//! its app). No CLI connected → 503 with `shunt-unavailable: 1` and the body unread, so
//! the sidecar can let the app serve the request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use shunt_proto::hub::HEADER_UNAVAILABLE;
use shunt_proto::names::HOP_HEADER_SESSION;

use super::auth::pod_header;
use super::routes::current_pod;
use super::{error, Conn, Ctx};
use crate::tunnel::{Body, ForwardError};

/// The session name of a route id: ids of multi-port sessions are `name:port`.
pub fn session_of_route(id: &str) -> &str {
    match id.rsplit_once(':') {
        Some((name, port)) if port.parse::<u16>().is_ok() => name,
        _ => id,
    }
}

/// 503 with `shunt-unavailable`: the body was not read, the sidecar may let the app serve it.
fn unavailable(metrics: &super::metrics::HubMetrics, message: &str) -> Response<Body> {
    metrics.outcome("unavailable");
    let mut resp = error::status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message);
    resp.headers_mut()
        .insert(HEADER_UNAVAILABLE, HeaderValue::from_static("1"));
    resp
}

/// Relays one request (see the module doc).
pub(crate) async fn relay(ctx: &Ctx, conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    let metrics = ctx.state.metrics();
    let refuse = |code: StatusCode, reason: &str, message: String| {
        metrics.outcome("refused");
        tracing::info!(%message, "relayed request refused");
        error::status(code, reason, &message)
    };
    let Some(pod) = current_pod(conn) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "this connection has no authenticated routes watch; open GET /hub/v1/routes first".into(),
        );
    };
    if pod_header(req.headers()) != Some((pod.namespace.clone(), pod.name.clone())) {
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "shunt-pod must name this connection's pod {}/{}",
                pod.namespace, pod.name
            ),
        );
    }
    let session = req
        .headers()
        .get(HOP_HEADER_SESSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let session = session_of_route(session).to_owned();
    if ctx.registry.get(&pod.namespace, &session).is_none() {
        // The session just ended and the sidecar has not received its new routes yet.
        // Nobody takes the request: say so like for a missing CLI, so the sidecar lets
        // the app serve it (a refusal here would fail the client's request).
        return unavailable(
            metrics,
            &format!("session {session:?} has ended; the body was not read"),
        );
    }
    let routes = ctx.registry.routes_for_pod(&pod.namespace, &pod.labels);
    if !routes.routes().iter().any(|r| session_of_route(&r.id) == session) {
        return refuse(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!(
                "session {session:?} does not exist in {} or does not target pod {}",
                pod.namespace, pod.name
            ),
        );
    }
    // A bodiless request with a safe method (RFC 9110 §9.2.1) that the CLI's side fails
    // (its tunnel cut mid-request) is handed back like an unsent one: the sidecar kept a
    // copy and lets the app serve it, instead of failing the client.
    let replayable = req.method().is_safe() && hyper::body::Body::is_end_stream(req.body());
    let in_flight = InFlight::enter(&conn.relays);
    let req = normalize(req).map(|b| b.map_err(Into::into).boxed());
    let span = tracing::debug_span!("relay", session.id = %session, pod.name = %pod.name);
    match tracing::Instrument::instrument(ctx.tunnels.forward(&pod.namespace, &session, req), span).await {
        Ok(resp) => {
            metrics.outcome("relayed");
            // In flight until the answer's body is over (or dropped).
            resp.map(|b| {
                b.map_err(Into::into)
                    .map_frame(move |frame| {
                        let _in_flight = &in_flight;
                        frame
                    })
                    .boxed()
            })
        }
        Err(ForwardError::Unavailable(_unsent)) => unavailable(
            metrics,
            &format!("session {session:?} has no CLI connected; the body was not read"),
        ),
        Err(ForwardError::Failed(e)) if replayable => {
            tracing::info!(error = %e, "the session's CLI failed a bodiless safe request; the app serves it");
            unavailable(
                metrics,
                &format!("the CLI of session {session:?} failed ({e}); a bodiless safe request, the app may serve it"),
            )
        }
        Err(ForwardError::Failed(e)) => {
            metrics.outcome("failed");
            tracing::info!(error = %e, "the session's CLI failed the request");
            error::status(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                &format!("the CLI of session {session:?} failed: {e}"),
            )
        }
    }
}

/// One relayed request in a connection's count while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> InFlight {
        count.fetch_add(1, Ordering::Relaxed);
        InFlight(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// HTTP/2 onwards needs a scheme and an authority; a request that arrived without one
/// (from an HTTP/1.1 client, relative URI) gets `http` and its `Host` (or `localhost`).
fn normalize<B>(mut req: Request<B>) -> Request<B> {
    let uri = req.uri().clone();
    if uri.authority().is_none() {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
        if let Ok(absolute) = format!("http://{host}{pq}").parse() {
            *req.uri_mut() = absolute;
        }
    }
    *req.version_mut() = http::Version::HTTP_2;
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_ids_map_to_session_names() {
        assert_eq!(session_of_route("alice"), "alice");
        assert_eq!(session_of_route("alice:8080"), "alice");
        assert_eq!(session_of_route("a:b"), "a:b");
    }
}
