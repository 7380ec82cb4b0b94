//! The routes watch: `GET /hub/v1/routes` answers 200 with an ndjson stream of the
//! sidecar's pod's [`RouteSet`]s, one full document per line, sent when the set changes.
//!
//! The set is recomputed on every registry change and whenever the pod changes (its
//! labels decide which sessions select it). If the pod is deleted, starts terminating or
//! loses its injected label, the stream sends `{"routes": []}` and ends: the sidecar goes
//! dormant and its next connection is refused.
//!
//! The watch lives no longer than the token that opened it: just after the token's `exp`
//! (and at least every [`super::auth::REVIEW_EVERY`]) TokenReview is asked again. A token that no
//! longer authenticates ends the stream, without an empty document: the sidecar keeps its
//! routes for its lease and reconnects with the token the kubelet has rotated meanwhile
//! (it re-reads the file on every connection), so routing goes on; whoever holds only the
//! old token (a leaked one) is refused from then on. Before it ends, the stream waits up
//! to [`EXPIRED_DRAIN`] for relayed requests of the connection to finish, because the
//! sidecar closes the connection when its watch ends. A review that cannot be answered
//! (the API server is down) keeps the watch: the hub fails open like the sidecar.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use shunt_proto::route::RouteSet;
use tokio::sync::mpsc;

use super::auth::{authenticate, credentials, pod_allowed, review_deadline, PodIdentity, REVIEW_RETRY};
use super::{error, Conn, ConnInfo, Ctx};
use crate::tunnel::Body;

/// How long a watch whose token expired waits for the connection's relayed requests.
pub const EXPIRED_DRAIN: Duration = Duration::from_secs(10);

/// Answers the routes watch (authenticating the connection first).
pub(crate) async fn watch(ctx: Arc<Ctx>, conn: Arc<Conn>, req: Request<Incoming>) -> Response<Body> {
    let identity = match authenticate(&ctx.kube, req.headers()).await {
        Ok(identity) => identity,
        Err(denial) => {
            ctx.state.metrics().refused(denial.reason);
            tracing::info!(reason = denial.reason, message = %denial.message, "sidecar refused");
            let reason = if denial.code == StatusCode::UNAUTHORIZED {
                "Unauthorized"
            } else {
                "Forbidden"
            };
            return error::status(denial.code, reason, &denial.message);
        }
    };
    tracing::info!(pod.namespace = %identity.namespace, pod.name = %identity.name, "sidecar connected");
    *conn.pod.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity.clone());
    // What the token is reviewed with again, later.
    let credentials = credentials(req.headers());
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(stream_routes(ctx, conn, identity, credentials, tx));
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, crate::tunnel::BoxError>(Frame::data(line)), rx))
    }));
    let mut resp = Response::new(BodyExt::boxed(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"));
    resp.headers_mut().insert(
        shunt_proto::hub::HEADER_PROTOCOL,
        HeaderValue::from_static(shunt_proto::hub::PROTOCOL_VERSION),
    );
    resp
}

/// When the watch ends: the pod leaves the connected map (if still this connection's) and
/// the connection may relay no more requests.
struct Connected {
    ctx: Arc<Ctx>,
    conn: Arc<Conn>,
    key: (String, String),
    conn_id: u64,
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut map = self.ctx.state.connected.write().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.key).is_some_and(|c| c.conn_id == self.conn_id) {
            map.remove(&self.key);
        }
        drop(map);
        *self.conn.pod.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.ctx.state.metrics().connected.dec();
        tracing::info!(pod.namespace = %self.key.0, pod.name = %self.key.1, "sidecar routes watch ended");
    }
}

/// Why a watch ends.
enum End {
    /// The pod is no longer entitled to routes: an empty document, then the end.
    Revoked(String),
    /// The token no longer authenticates: the end, the routes stay with the sidecar.
    Expired(String),
}

/// Reviews the token again: `None` while it authenticates (the next review is planned).
async fn review(ctx: &Ctx, credentials: &HeaderMap, next: &mut std::pin::Pin<&mut tokio::time::Sleep>) -> Option<End> {
    match authenticate(&ctx.kube, credentials).await {
        Ok(_) => {
            next.as_mut().reset(review_deadline(credentials));
            None
        }
        Err(denial) if denial.code == StatusCode::SERVICE_UNAVAILABLE => {
            tracing::warn!(message = %denial.message, retry_in = ?REVIEW_RETRY, "cannot review the sidecar's token; the watch goes on");
            next.as_mut().reset(tokio::time::Instant::now() + REVIEW_RETRY);
            None
        }
        Err(denial) => {
            ctx.state.metrics().refused(denial.reason);
            Some(if denial.code == StatusCode::UNAUTHORIZED {
                End::Expired(denial.message)
            } else {
                End::Revoked(denial.message)
            })
        }
    }
}

async fn stream_routes(
    ctx: Arc<Ctx>,
    conn: Arc<Conn>,
    identity: PodIdentity,
    credentials: HeaderMap,
    tx: mpsc::Sender<Bytes>,
) {
    let key = (identity.namespace.clone(), identity.name.clone());
    ctx.state.metrics().connected.inc();
    ctx.state.connected.write().unwrap_or_else(|p| p.into_inner()).insert(
        key.clone(),
        ConnInfo {
            peer: conn.peer,
            since: std::time::SystemTime::now(),
            pod_uid: identity.uid.clone(),
            routes: 0,
            conn_id: conn.id,
        },
    );
    let _connected = Connected {
        ctx: ctx.clone(),
        conn: conn.clone(),
        key: key.clone(),
        conn_id: conn.id,
    };

    let pods = kube::Api::<Pod>::namespaced(ctx.kube.clone(), &identity.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", identity.name));
    let mut pod_events = watcher(pods, config).boxed();
    let mut changes = ctx.registry.changes();
    let mut labels = identity.labels.clone();
    let mut last: Option<RouteSet> = None;
    let mut seen_in_init = false;
    let next_review = tokio::time::sleep_until(review_deadline(&credentials));
    tokio::pin!(next_review);
    loop {
        let set = ctx.registry.routes_for_pod(&identity.namespace, &labels);
        if last.as_ref() != Some(&set) {
            let count = set.routes().len();
            if tx.send(ndjson(&set)).await.is_err() {
                break;
            }
            tracing::debug!(routes.count = count, "routes sent");
            if let Some(c) = ctx
                .state
                .connected
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&key)
            {
                c.routes = count;
            }
            last = Some(set);
        }
        let end = tokio::select! {
            _ = tx.closed() => break,
            () = &mut next_review => review(&ctx, &credentials, &mut next_review).await,
            changed = changes.changed() => match changed {
                Ok(()) => None,
                Err(_) => Some(End::Revoked("the registry closed".to_owned())),
            },
            event = pod_events.next() => pod_event(event, &conn, &identity, &key, &mut labels, &mut seen_in_init).await.map(End::Revoked),
        };
        match end {
            None => {}
            Some(End::Revoked(why)) => {
                tracing::info!(%why, "sidecar no longer entitled to routes; sending none and closing");
                let _ = tx.send(ndjson(&RouteSet::default())).await;
                break;
            }
            Some(End::Expired(why)) => {
                tracing::info!(%why, "the sidecar's token no longer authenticates; closing its routes watch (it reconnects with its current token)");
                let drain = tokio::time::Instant::now() + EXPIRED_DRAIN;
                while conn.relays.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < drain {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                break;
            }
        }
    }
}

/// One event of the pod's watch: `Some(why)` when the pod is no longer entitled to routes.
async fn pod_event(
    event: Option<Result<watcher::Event<Pod>, watcher::Error>>,
    conn: &Conn,
    identity: &PodIdentity,
    key: &(String, String),
    labels: &mut std::collections::BTreeMap<String, String>,
    seen_in_init: &mut bool,
) -> Option<String> {
    match event {
        Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
            *seen_in_init = true;
            match pod_allowed(&pod, &identity.namespace, &identity.name, &identity.uid) {
                Ok(now) => {
                    set_labels(conn, &now.labels);
                    *labels = now.labels;
                    None
                }
                Err(denial) => Some(denial.message),
            }
        }
        Some(Ok(watcher::Event::Delete(_))) => Some(format!("pod {}/{} was deleted", key.0, key.1)),
        Some(Ok(watcher::Event::Init)) => {
            *seen_in_init = false;
            None
        }
        Some(Ok(watcher::Event::InitDone)) if !*seen_in_init => Some(format!("pod {}/{} is gone", key.0, key.1)),
        Some(Ok(watcher::Event::InitDone)) => None,
        Some(Err(error)) => {
            // The watcher re-lists by itself; wait a little so a failing API is not hammered.
            tracing::warn!(%error, "watching the sidecar's pod failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
        None => Some("the pod watch ended".to_owned()),
    }
}

/// One line of the stream: the routes document, compact (`RouteSet::to_json` is pretty).
fn ndjson(set: &RouteSet) -> Bytes {
    Bytes::from(format!("{}\n", set.to_json_line()))
}

/// The current labels of the connection's pod, if the connection is authenticated.
pub(crate) fn current_pod(conn: &Conn) -> Option<PodIdentity> {
    conn.pod.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Records new labels for the connection (the relay checks sessions against them).
pub(crate) fn set_labels(conn: &Conn, labels: &std::collections::BTreeMap<String, String>) {
    if let Some(pod) = conn.pod.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        pod.labels = labels.clone();
    }
}
