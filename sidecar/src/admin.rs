//! The admin HTTP server: `/healthz`, `/readyz`, `/metrics` (Prometheus text) and
//! `/routes` (the routes in force, as a routes document).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::body::{text, OutBody};
use crate::table::Table;

/// What the admin server reports on.
pub struct Admin {
    /// The metrics registry.
    pub registry: Registry,
    /// Set once start-up is complete.
    pub ready: AtomicBool,
    /// The routing table in force.
    pub table: watch::Receiver<Arc<Table>>,
}

/// Serves the admin endpoints on `listener` forever.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(admin.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds the admin port.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on admin address {addr} (SHUNT_ADMIN_PORT): {e}"),
        )
    })
}

async fn answer(admin: Arc<Admin>, req: Request<Incoming>) -> Result<Response<OutBody>, Infallible> {
    let (status, content_type, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if admin.ready.load(Ordering::Relaxed) => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", "starting\n".to_owned()),
        "/metrics" => {
            let mut out = String::new();
            match prometheus_client::encoding::text::encode(&mut out, &admin.registry) {
                Ok(()) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    out,
                ),
                Err(_) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    "cannot encode metrics\n".to_owned(),
                ),
            }
        }
        "/routes" => (StatusCode::OK, "application/json", admin.table.borrow().set().to_json()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz, /metrics or /routes\n".to_owned(),
        ),
    };
    let mut resp = Response::new(text(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    Ok(resp)
}
