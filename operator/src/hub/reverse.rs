//! The sidecar's reverse connection (protocol: [`shunt_proto::hub`], step 3): a TLS
//! connection negotiated as HTTP/1.1 whose only request is `GET /hub/v1/reverse` with
//! `Upgrade: shunt-reverse`. It is authenticated exactly like the routes watch
//! ([`authenticate`]: TokenReview of the pod-bound token, then the live injected pod);
//! after the 101 the operator runs the HTTP/2 **client** on the upgraded stream and
//! registers it in [`crate::outbound::Reverse`] until it closes.
//!
//! Like the routes watch, it lives no longer than its token: reviewed again just after
//! the token's `exp` (see [`super::auth::next_review`]), a token that no longer
//! authenticates takes the connection out of the registry, so no new outbound connection
//! goes through it; the connections open on it finish, and then it closes (the sidecar
//! dials a new one with its rotated token while outbound traffic is wanted).

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use shunt_proto::hub::{REVERSE_PATH, REVERSE_UPGRADE};

use super::auth::{authenticate, credentials, review_deadline, REVIEW_RETRY};
use super::{error, Ctx};
use crate::tunnel::Body;

/// HTTP/2 PINGs on reverse connections.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How long a sidecar may take to send its upgrade request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one HTTP/1.1 connection of a sidecar: the reverse upgrade, nothing else.
pub(crate) async fn serve_http1<I>(ctx: Arc<Ctx>, io: I)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(upgrade(ctx, req).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, service)
        .with_upgrades()
        .await;
    if let Err(error) = result {
        tracing::debug!(%error, "sidecar HTTP/1.1 connection ended");
    }
}

async fn upgrade(ctx: Arc<Ctx>, mut req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET || req.uri().path() != REVERSE_PATH {
        return error::status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!(
                "over HTTP/1.1 the sidecar hub serves only GET {REVERSE_PATH} with Upgrade: {REVERSE_UPGRADE}; \
                 everything else is HTTP/2"
            ),
        );
    }
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(REVERSE_UPGRADE));
    if !wants {
        return error::status(
            StatusCode::UPGRADE_REQUIRED,
            "UpgradeRequired",
            &format!("send Connection: Upgrade and Upgrade: {REVERSE_UPGRADE}"),
        );
    }
    let identity = match authenticate(&ctx.kube, req.headers()).await {
        Ok(identity) => identity,
        Err(denial) => {
            ctx.state.metrics().refused(denial.reason);
            tracing::info!(reason = denial.reason, message = %denial.message, "sidecar reverse connection refused");
            let reason = if denial.code == StatusCode::UNAUTHORIZED {
                "Unauthorized"
            } else {
                "Forbidden"
            };
            return error::status(denial.code, reason, &denial.message);
        }
    };
    let credentials = credentials(req.headers());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let span = tracing::info_span!("hub.reverse", pod.namespace = %identity.namespace, pod.name = %identity.name);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(error) => return tracing::info!(%error, "reverse connection upgrade failed"),
            };
            let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(KEEP_ALIVE)
                .keep_alive_timeout(KEEP_ALIVE)
                .keep_alive_while_idle(true)
                .handshake::<_, Body>(upgraded)
                .await;
            let (sender, conn) = match handshake {
                Ok(pair) => pair,
                Err(error) => return tracing::info!(%error, "reverse connection HTTP/2 handshake failed"),
            };
            let reverse = ctx.state.reverse.clone();
            let id = reverse.insert(&identity, sender);
            ctx.state.metrics().reverse_connected.inc();
            tracing::info!("sidecar reverse connection up");
            // Retired once its token no longer authenticates: out of the registry, which
            // held its last sender, so it closes once its open connections have ended.
            let mut registered = true;
            let review = tokio::time::sleep_until(review_deadline(&credentials));
            tokio::pin!(conn, review);
            let result = loop {
                tokio::select! {
                    result = &mut conn => break result,
                    () = &mut review, if registered => match authenticate(&ctx.kube, &credentials).await {
                        Ok(_) => review.as_mut().reset(review_deadline(&credentials)),
                        Err(denial) if denial.code == StatusCode::SERVICE_UNAVAILABLE => {
                            review.as_mut().reset(tokio::time::Instant::now() + REVIEW_RETRY);
                        }
                        Err(denial) => {
                            ctx.state.metrics().refused(denial.reason);
                            tracing::info!(message = %denial.message, "the sidecar's token no longer authenticates; no new outbound connections on its reverse connection");
                            reverse.remove(&identity.namespace, &identity.name, id);
                            registered = false;
                        }
                    },
                }
            };
            match result {
                Ok(()) => tracing::info!("sidecar reverse connection closed"),
                Err(error) => tracing::info!(%error, "sidecar reverse connection ended"),
            }
            reverse.remove(&identity.namespace, &identity.name, id);
            ctx.state.metrics().reverse_connected.dec();
        },
        span,
    ));
    let mut resp = Response::new(error::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(REVERSE_UPGRADE));
    resp
}
