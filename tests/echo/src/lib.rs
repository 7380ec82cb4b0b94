//! An echo server for tests and the demo: HTTP/1.1 and HTTP/2 with prior knowledge on
//! one port. Every answer names the server (`x-served-by` header and the `served_by`
//! JSON field) and echoes the request's method, path, headers and body size, so a test
//! can tell who served a request and what arrived there.
//!
//! `/slow?ms=N` answers after N milliseconds; `/status/N` answers with status N. A request
//! with an `x-echo-trailers` header gets gRPC-style trailers (`grpc-status: 0` and
//! `x-trailer-served-by: NAME`); HTTP/2 carries them, HTTP/1.1 drops them (the body has a
//! length, so it is not chunked).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A running echo server.
#[derive(Clone, Debug)]
pub struct Echo {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Requests answered so far.
    pub requests: Arc<AtomicU64>,
}

impl Echo {
    /// Requests answered so far.
    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Serves on `listener` in the background (on the current tokio runtime).
pub fn spawn(listener: TcpListener, name: &str) -> std::io::Result<Echo> {
    let addr = listener.local_addr()?;
    let requests = Arc::new(AtomicU64::new(0));
    let echo = Echo {
        addr,
        requests: requests.clone(),
    };
    tokio::spawn(serve(listener, name.to_owned(), requests));
    Ok(echo)
}

/// Serves on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, name: String, requests: Arc<AtomicU64>) {
    let name: Arc<str> = name.into();
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (name, requests) = (name.clone(), requests.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(name.clone(), requests.clone(), peer, req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer's body: the JSON, then trailers if they were asked for.
type EchoBody = WithTrailers<Full<Bytes>, std::future::Ready<Option<Result<HeaderMap, Infallible>>>>;

async fn answer(
    name: Arc<str>,
    requests: Arc<AtomicU64>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<EchoBody>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read the whole body (so clients that stream see it consumed) but keep only its size.
    let body_bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => 0,
    };
    let path = parts.uri.path();
    if path == "/slow" {
        let ms = parts
            .uri
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = path
        .strip_prefix("/status/")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    requests.fetch_add(1, Ordering::SeqCst);
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
            )
        })
        .collect();
    let json = serde_json::json!({
        "served_by": &*name,
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "peer": peer.to_string(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let trailers = parts.headers.contains_key("x-echo-trailers").then(|| {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        if let Ok(v) = HeaderValue::from_str(&name) {
            trailers.insert("x-trailer-served-by", v);
        }
        Ok(trailers)
    });
    let body = Full::new(Bytes::from(format!("{json}\n"))).with_trailers(std::future::ready(trailers));
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-served-by", v);
    }
    Ok(resp)
}
