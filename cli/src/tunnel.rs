//! The session's inbound tunnel: a WebSocket to `sessions/{name}/tunnel?dir=inbound`
//! through kube-apiserver, used as a byte stream on which the CLI is the HTTP/2 server
//! (stolen and mirrored requests arrive as HTTP/2 requests, see ARCHITECTURE.md).

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::Client;

use crate::forward::Forwarder;

/// An open inbound tunnel.
pub type Tunnel = WsIo<TokioIo<hyper::upgrade::Upgraded>>;

/// Opens the inbound tunnel of session `namespace/name`.
pub async fn open(client: &Client, namespace: &str, name: &str) -> Result<Tunnel, kube::Error> {
    let path = format!("/apis/api.shunt.dev/v1/namespaces/{namespace}/sessions/{name}/tunnel?dir=inbound");
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    let conn = client.connect(req).await?;
    Ok(WsIo::new(conn.into_stream()))
}

/// Serves HTTP/2 on `tunnel` until it ends, each request forwarded by `forwarder`.
pub async fn serve(tunnel: Tunnel, forwarder: Forwarder) -> Result<(), hyper::Error> {
    let service = hyper::service::service_fn(move |req| {
        let forwarder = forwarder.clone();
        async move { Ok::<_, std::convert::Infallible>(forwarder.forward(req).await) }
    });
    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(std::time::Duration::from_secs(10))
        .keep_alive_timeout(std::time::Duration::from_secs(20))
        .serve_connection(TokioIo::new(tunnel), service)
        .await
}

/// A WebSocket as a byte stream (each write one binary message; a Close is EOF): the
/// same adapter the operator uses at the other end of the tunnel.
pub use shunt_operator::api::tunnel::WsIo;
