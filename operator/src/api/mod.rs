//! The aggregated API server of `api.shunt.dev/v1` (axum over rustls, HTTP/1.1 and
//! HTTP/2): discovery, [`sessions`], `targets` and the `sessions/{name}/tunnel`
//! subresource ([`tunnel`]).
//!
//! kube-apiserver authenticates and authorizes callers (RBAC on `sessions`, `targets`)
//! and proxies to this server with its front-proxy client certificate and the caller in
//! `X-Remote-*` headers ([`auth`]); anything else is refused with 401.

pub mod auth;
pub mod objects;
pub mod sessions;
pub mod status;
pub mod tunnel;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use shunt_proto::session::TargetRef;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::hub::HubState;
use crate::lifecycle::Events;
use crate::registry::Registry;
use crate::targets::{self, TargetError};
use crate::tunnel::Tunnels;
use auth::{Caller, FrontProxy, PeerCn};
use status::{api_group, api_group_list, api_resource_list, json_response, ApiError};

/// How long a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
pub struct AppState {
    /// Sessions.
    pub registry: Registry,
    /// CLI tunnels.
    pub tunnels: Tunnels,
    /// The operator's own Kubernetes client (SubjectAccessReviews, targets, pods).
    pub client: kube::Client,
    /// Who may assert identities.
    pub trust: FrontProxy,
    /// Connected sidecars.
    pub hub: HubState,
    /// Events on targets.
    pub events: Events,
}

/// Query parameters of list and watch.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListParams {
    /// `true` or `1` for a watch.
    pub watch: Option<String>,
    /// Where a watch starts.
    pub resource_version: Option<String>,
    /// Only `metadata.name=<name>` is supported (what `kubectl delete --wait` uses).
    pub field_selector: Option<String>,
    /// Watch duration.
    pub timeout_seconds: Option<u64>,
}

impl ListParams {
    /// Whether this is a watch.
    pub fn is_watch(&self) -> bool {
        matches!(self.watch.as_deref(), Some("true" | "1"))
    }

    /// Whether the field selector admits `name`.
    pub fn selects_name(&self, name: &str) -> bool {
        self.field_selector
            .as_deref()
            .and_then(|f| f.strip_prefix("metadata.name="))
            .is_none_or(|n| n == name)
    }
}

/// A request over a verified front-proxy connection (no user needed): discovery, which
/// kube-aggregator's availability probe reads too.
pub struct FromFrontProxy;

impl FromRequestParts<Arc<AppState>> for FromFrontProxy {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<FromFrontProxy, ApiError> {
        match parts.extensions.get::<PeerCn>().and_then(|p| p.0.as_deref()) {
            Some(cn) if state.trust.allows(cn) => Ok(FromFrontProxy),
            _ => Err(ApiError::unauthorized(
                "no allowed client certificate from the front-proxy CA: the shunt API is served through \
                 kube-apiserver; use kubectl or the shunt CLI with your kubeconfig",
            )),
        }
    }
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    let v1 = "/apis/api.shunt.dev/v1";
    Router::new()
        .route(
            "/apis",
            get(|_: FromFrontProxy| async { json_response(StatusCode::OK, &api_group_list()) }),
        )
        .route(
            "/apis/api.shunt.dev",
            get(|_: FromFrontProxy| async { json_response(StatusCode::OK, &api_group()) }),
        )
        .route(
            v1,
            get(|_: FromFrontProxy| async { json_response(StatusCode::OK, &api_resource_list()) }),
        )
        .route(&format!("{v1}/sessions"), get(sessions::list_all))
        .route(
            &format!("{v1}/namespaces/{{ns}}/sessions"),
            get(sessions::list).post(sessions::create),
        )
        .route(
            &format!("{v1}/namespaces/{{ns}}/sessions/{{name}}"),
            get(sessions::get)
                .delete(sessions::delete)
                .put(sessions::immutable)
                .patch(sessions::immutable),
        )
        // GET is how the CLI (and kubectl-style clients) upgrade; some clients POST.
        .route(
            &format!("{v1}/namespaces/{{ns}}/sessions/{{name}}/tunnel"),
            get(open_tunnel).post(open_tunnel),
        )
        .route(
            &format!("{v1}/namespaces/{{ns}}/policyreviews"),
            axum::routing::post(crate::policy::review::create),
        )
        .route(&format!("{v1}/targets"), get(list_all_targets))
        .route(&format!("{v1}/namespaces/{{ns}}/targets"), get(list_targets))
        .route(&format!("{v1}/namespaces/{{ns}}/targets/{{name}}"), get(get_target))
        .fallback(|req: Request| async move {
            ApiError::not_found(format!(
                "the server could not find the requested resource ({} {})",
                req.method(),
                req.uri().path()
            ))
        })
        .with_state(state)
}

async fn open_tunnel(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    policies: Option<axum::Extension<crate::policy::Policies>>,
    req: Request,
) -> Response {
    // A CLI reconnecting to a session a policy ended learns why.
    if state.registry.get(&namespace, &name).is_none() {
        if let Some(why) = state.registry.ended_reason(&namespace, &name) {
            return axum::response::IntoResponse::into_response(ApiError::not_found(format!("session {name:?} {why}")));
        }
    }
    let outbound = crate::outbound::relay::OutboundCtx {
        registry: state.registry.clone(),
        hub: state.hub.clone(),
        policies: policies.map(|axum::Extension(p)| p),
        client: state.client.clone(),
    };
    tunnel::handle_with_outbound(
        req,
        &caller.user,
        &namespace,
        &name,
        &state.registry,
        &state.tunnels,
        Some(outbound),
    )
    .await
    .map(axum::body::Body::new)
}

fn target_error(e: TargetError) -> ApiError {
    match e {
        TargetError::NotFound { .. } => ApiError::not_found(e.to_string()),
        TargetError::NoSelector { .. } => ApiError::bad_request(e.to_string()),
        TargetError::Kube { .. } => {
            tracing::warn!(error = %e, "listing targets failed");
            ApiError::internal("cannot read the workloads: see the operator's log")
        }
    }
}

/// The targets of `namespace`, with the hub's view of which sidecars are connected.
async fn list_targets_of(state: &AppState, namespace: &str) -> Result<Vec<targets::TargetInfo>, ApiError> {
    targets::list(&state.client, namespace, |pod| state.hub.is_connected(namespace, pod))
        .await
        .map_err(target_error)
}

fn targets_answer(items: &[(String, targets::TargetInfo)], headers: &HeaderMap) -> Response {
    let body = if objects::wants_table(headers) {
        objects::target_table(items)
    } else {
        objects::target_list(items)
    };
    json_response(StatusCode::OK, &body)
}

async fn list_targets(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(namespace): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let items = list_targets_of(&state, &namespace).await?;
    Ok(targets_answer(
        &items.into_iter().map(|t| (namespace.clone(), t)).collect::<Vec<_>>(),
        &headers,
    ))
}

async fn list_all_targets(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(state.client.clone());
    let namespaces = api.list(&kube::api::ListParams::default()).await.map_err(|error| {
        tracing::warn!(%error, "listing namespaces failed");
        ApiError::internal("cannot list namespaces: see the operator's log")
    })?;
    let mut items = Vec::new();
    for ns in namespaces.items.into_iter().filter_map(|n| n.metadata.name) {
        items.extend(list_targets_of(&state, &ns).await?.into_iter().map(|t| (ns.clone(), t)));
    }
    Ok(targets_answer(&items, &headers))
}

async fn get_target(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || {
        ApiError::not_found(format!(
            "targets.api.shunt.dev {name:?} not found: targets are named <kind>.<name>, e.g. deployment.api"
        ))
    };
    let target: TargetRef = name.replacen('.', "/", 1).parse().map_err(|_| missing())?;
    let items = list_targets_of(&state, &namespace).await?;
    let found = items.into_iter().find(|t| t.target == target).ok_or_else(missing)?;
    if objects::wants_table(&headers) {
        return Ok(targets_answer(&[(namespace, found)], &headers));
    }
    Ok(json_response(
        StatusCode::OK,
        &objects::target_object(&namespace, &found),
    ))
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then drains open
/// connections for at most `drain`. Each request carries the connection's verified
/// client certificate CN ([`PeerCn`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, router, builder, watcher) =
            (acceptor.clone(), router.clone(), builder.clone(), graceful.watcher());
        let span = tracing::debug_span!("api.conn", client.addr = %peer);
        tokio::spawn(
            async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
                let cn = PeerCn(auth::peer_cn(stream.get_ref().1.peer_certificates()));
                let service = router.map_request(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(cn.clone());
                    req
                });
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), TowerToHyperService::new(service))
                    .into_owned();
                if let Err(error) = watcher.watch(connection).await {
                    tracing::debug!(%error, "API connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    tracing::info!("API server shutting down: draining open connections");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(?drain, "API connections still open after the drain time; closing them");
    }
}
