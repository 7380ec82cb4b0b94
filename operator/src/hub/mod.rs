//! The sidecar hub: the TLS endpoint (HTTP/2 only) that every injected sidecar dials.
//!
//! Protocol: [`shunt_proto::hub`]. On one connection a sidecar
//! - opens the routes watch (`GET /hub/v1/routes`), which authenticates the connection
//!   ([`auth`]: TokenReview of its pod-bound token, then the pod itself) and streams its
//!   routes as ndjson ([`routes`]);
//! - sends each request a hub route stole or mirrored, marked with `shunt-session`;
//!   [`relay`] checks that the session targets this pod and hands it to the session's
//!   CLI through [`Tunnels`].
//!
//! A second, HTTP/1.1 connection of a sidecar ([`reverse`]) is upgraded for outbound
//! traffic of `shunt exec`: the operator is the HTTP/2 client on it ([`crate::outbound`]).
//!
//! A relayed request is accepted only on a connection whose routes watch was
//! authenticated: the stolen request keeps the client's own `Authorization` header for
//! the developer's app, so the sidecar's token cannot travel on it.
//!
//! Wiring (the operator's `run`):
//! ```ignore
//! let state = hub::HubState::default();
//! state.metrics().register(&mut prometheus_registry);
//! tokio::spawn(hub::serve(hub_config, registry.clone(), tunnels.clone(), kube.clone(), state.clone()));
//! ```

pub mod auth;
mod error;
pub mod metrics;
pub mod relay;
mod reverse;
pub mod routes;
mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::registry::Registry;
use crate::tunnel::Tunnels;
pub use auth::PodIdentity;
pub use metrics::HubMetrics;
pub use tls::with_resolver as tls_config;

/// How long a sidecar may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive PINGs towards sidecars: a dead peer is noticed within twice this.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Configuration of the hub endpoint.
#[derive(Clone)]
pub struct HubConfig {
    /// Address to listen on (port [`shunt_proto::hub::DEFAULT_HUB_PORT`] by default).
    pub listen: SocketAddr,
    /// The server certificate chain (PEM); its names must include what sidecars dial
    /// (`SHUNT_OPERATOR_SERVER_NAME`, default `shunt-operator`).
    pub cert_pem: String,
    /// The private key (PEM).
    pub key_pem: String,
}

impl std::fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("HubConfig")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl HubConfig {
    /// Reads the certificate and key from PEM files.
    pub fn from_files(listen: SocketAddr, cert: &Path, key: &Path) -> anyhow::Result<HubConfig> {
        use anyhow::Context;
        let read = |p: &Path| {
            std::fs::read_to_string(p).with_context(|| format!("cannot read the hub's TLS file {}", p.display()))
        };
        Ok(HubConfig {
            listen,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }
}

/// A sidecar whose routes watch is open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// The sidecar's address.
    pub peer: SocketAddr,
    /// Since when.
    pub since: SystemTime,
    /// The pod's UID.
    pub pod_uid: String,
    /// Routes last sent.
    pub routes: usize,
    /// Identifies the connection (a pod that reconnects gets a new one).
    pub conn_id: u64,
}

/// What the hub shares with the rest of the operator: connected sidecars and metrics.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct HubState {
    /// Connected sidecars by (namespace, pod name).
    pub connected: Arc<RwLock<BTreeMap<(String, String), ConnInfo>>>,
    metrics: HubMetrics,
    next_conn: Arc<std::sync::atomic::AtomicU64>,
    /// Sidecars' reverse connections for outbound traffic (`shunt exec`).
    pub reverse: crate::outbound::Reverse,
}

impl HubState {
    /// The hub's metrics (register them in the operator's `/metrics` registry).
    pub fn metrics(&self) -> &HubMetrics {
        &self.metrics
    }

    /// Connected sidecars of `namespace` (or of all namespaces), by pod.
    pub fn connected_pods(&self, namespace: Option<&str>) -> Vec<((String, String), ConnInfo)> {
        let map = self.connected.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|n| n == ns))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether the sidecar of pod `namespace/name` is connected.
    pub fn is_connected(&self, namespace: &str, name: &str) -> bool {
        let map = self.connected.read().unwrap_or_else(|p| p.into_inner());
        map.contains_key(&(namespace.to_owned(), name.to_owned()))
    }

    fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Everything a request handler needs.
pub(crate) struct Ctx {
    pub registry: Registry,
    pub tunnels: Tunnels,
    pub kube: kube::Client,
    pub state: HubState,
}

/// Per connection: the pod its routes watch authenticated, with the pod's current labels.
pub(crate) struct Conn {
    pub peer: SocketAddr,
    pub id: u64,
    pub pod: Mutex<Option<PodIdentity>>,
    /// Relayed requests whose answer is not over yet (an expired watch waits for none).
    pub relays: Arc<std::sync::atomic::AtomicUsize>,
}

/// Binds `config.listen` and serves sidecars until the future is dropped or fails.
pub async fn serve(
    config: HubConfig,
    registry: Registry,
    tunnels: Tunnels,
    kube: kube::Client,
    state: HubState,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen for sidecars on {}", config.listen))?;
    serve_on(listener, config, registry, tunnels, kube, state).await
}

/// Serves sidecars on an already bound listener (tests bind `127.0.0.1:0`).
/// Dropping the future closes every sidecar connection it accepted.
pub async fn serve_on(
    listener: TcpListener,
    config: HubConfig,
    registry: Registry,
    tunnels: Tunnels,
    kube: kube::Client,
    state: HubState,
) -> anyhow::Result<()> {
    let tls = tls::fixed(&config)?;
    serve_tls(listener, tls, registry, tunnels, kube, state).await
}

/// The hub's TLS configuration for the fixed pair of `config` (`--hub-tls-cert`).
pub fn fixed_tls_config(config: &HubConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    tls::fixed(config)
}

/// [`serve_on`] with the TLS configuration given, e.g. [`tls_config`] of a certificate
/// that changes without a restart (`--tls-secret`).
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    registry: Registry,
    tunnels: Tunnels,
    kube: kube::Client,
    state: HubState,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let ctx = Arc::new(Ctx {
        registry,
        tunnels,
        kube,
        state,
    });
    tracing::info!(listen = %listener.local_addr()?, "sidecar hub listening");
    // Connection tasks live in this set, so they end with this future.
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "hub accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
        let span = tracing::info_span!("hub.conn", client.addr = %peer);
        conns.spawn(tracing::Instrument::instrument(
            async move {
                let _ = stream.set_nodelay(true);
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
                // Sidecars speak HTTP/2; only their reverse connection negotiates
                // HTTP/1.1, for its upgrade (see `reverse`).
                if tls.get_ref().1.alpn_protocol() == Some(b"http/1.1".as_slice()) {
                    reverse::serve_http1(ctx, TokioIo::new(tls)).await;
                } else {
                    serve_conn(ctx, TokioIo::new(tls), peer).await;
                }
            },
            span,
        ));
    }
}

async fn serve_conn<I>(ctx: Arc<Ctx>, io: I, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn = Arc::new(Conn {
        peer,
        id: ctx.state.conn_id(),
        pod: Mutex::new(None),
        relays: Arc::default(),
    });
    let service = service_fn(move |req| {
        let (ctx, conn) = (ctx.clone(), conn.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(ctx, conn, req).await) }
    });
    let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .serve_connection(io, service)
        .await;
    if let Err(error) = result {
        tracing::debug!(%error, "sidecar connection ended");
    }
}

async fn handle(
    ctx: Arc<Ctx>,
    conn: Arc<Conn>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<crate::tunnel::Body> {
    if req.headers().contains_key(shunt_proto::names::HOP_HEADER_SESSION) {
        return relay::relay(&ctx, &conn, req).await;
    }
    if req.method() == http::Method::GET && req.uri().path() == shunt_proto::hub::ROUTES_PATH {
        return routes::watch(ctx, conn, req).await;
    }
    error::not_found(req.uri().path())
}
