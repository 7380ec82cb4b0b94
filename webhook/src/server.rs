//! The HTTPS server: `POST /mutate-pods`, `/healthz`, `/readyz`, `/metrics`.
//!
//! The router is plain axum (tests drive it with `oneshot`); [`serve`] puts it behind
//! rustls with HTTP/2 and HTTP/1.1 (ALPN, keep-alive) and shuts down gracefully: stop
//! accepting, let requests in flight finish within the drain time, then return.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument as _;

use crate::inject::InjectConfig;
use crate::metrics::{Metrics, Outcome};
use crate::review;
use crate::tls::CertStore;

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// The injection configuration.
    pub inject: InjectConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The served certificate (readiness needs one).
    pub store: Arc<CertStore>,
    /// Largest accepted AdmissionReview body, in bytes.
    pub max_body_bytes: usize,
}

/// Time allowed for a TLS handshake before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a request body to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Past this many bytes an oversized body is no longer read to its end (the connection closes).
const DRAIN_LIMIT: usize = 64 << 20;

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate-pods", post(mutate_pods))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found; this server answers POST /mutate-pods, GET /healthz, /readyz and /metrics\n",
            )
        })
        .with_state(state)
}

async fn mutate_pods(State(state): State<Arc<AppState>>, body: Body) -> Response {
    let started = Instant::now();
    let bytes = read_body(body, state.max_body_bytes).await;
    // Mode self: the CA bundle of the Secret served now (sidecars verify the operator with it).
    let own_ca_bundle = state.store.ca_bundle();
    let result = bytes.and_then(|bytes| {
        review::answer(&bytes, &state.inject, own_ca_bundle.as_deref())
            .map_err(|bad| (StatusCode::BAD_REQUEST, format!("{bad}\n")))
    });
    match result {
        Ok(answer) => {
            if let Some(error) = &answer.error {
                tracing::error!(review.uid = %answer.uid, %error, "admitted a pod without the sidecar after an internal error");
            } else {
                tracing::debug!(review.uid = %answer.uid, outcome = ?answer.outcome, skip = ?answer.skip, "reviewed");
            }
            state
                .metrics
                .review(answer.outcome, answer.skip, started.elapsed().as_secs_f64());
            ([(header::CONTENT_TYPE, "application/json")], answer.body).into_response()
        }
        Err((status, message)) => {
            tracing::info!(
                http.status = status.as_u16(),
                error = message.trim_end(),
                "rejected a review request"
            );
            state
                .metrics
                .review(Outcome::rejected, None, started.elapsed().as_secs_f64());
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], message).into_response()
        }
    }
}

/// Reads at most `limit` bytes. A larger body is answered 413; the rest of it is read and
/// dropped (up to [`DRAIN_LIMIT`]) so that the client reads the answer instead of a reset
/// connection and an HTTP/1.1 connection stays usable.
async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, (StatusCode, String)> {
    let mut stream = body.into_data_stream();
    let mut buffer = bytes::BytesMut::new();
    let mut total = 0usize;
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| (StatusCode::BAD_REQUEST, format!("cannot read the request body: {e}\n")))?;
            total = total.saturating_add(chunk.len());
            if total <= limit {
                buffer.extend_from_slice(&chunk);
            } else if total > DRAIN_LIMIT {
                break;
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) if total <= limit => Ok(buffer.freeze()),
        Ok(Ok(())) => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes (--max-body-bytes); no Pod is that large\n"),
        )),
        Ok(Err(error)) => Err(error),
        Err(_) => Err((
            StatusCode::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {BODY_TIMEOUT:?}\n"),
        )),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.current() {
        Some(_) => (StatusCode::OK, "ready\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no certificate yet\n").into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Binds `addr`, with a message that names the flag.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr} (--listen): {e}")))
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then drains open
/// connections for at most `drain`.
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
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let span = tracing::debug_span!("connection", client.addr = %peer);
        tokio::spawn(
            async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                if let Err(error) = watcher.watch(connection).await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    tracing::info!("shutting down: draining open connections");
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(?drain, "connections still open after the drain time; closing them");
    }
}
