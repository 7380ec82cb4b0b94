//! The `sessions/{name}/tunnel` subresource: a session's CLI opens it through
//! kube-apiserver as a WebSocket, and HTTP/2 runs over the WebSocket's byte stream.
//!
//! With `dir=inbound` the CLI is the HTTP/2 **server** (it receives the session's stolen
//! and mirrored requests), so the operator is the client: it runs
//! `hyper::client::conn::http2::handshake` over the stream and registers the
//! `SendRequest` in [`Tunnels`] until the connection ends. With `dir=outbound` (for
//! `shunt exec`) the CLI is the HTTP/2 client: [`crate::outbound::relay`] serves it.
//!
//! Router contract (the API server calls this once kube-apiserver has checked RBAC for
//! `sessions/tunnel` and the caller's identity is known from `X-Remote-User`):
//!
//! ```text
//! GET /apis/api.shunt.dev/v1/namespaces/{ns}/sessions/{name}/tunnel?dir=inbound
//! tunnel::handle(req, user, ns, name, &registry, &tunnels).await -> Response<tunnel::Body>
//! ```
//!
//! `req` may have any body type (axum's `Request` works): only its headers, query and
//! upgrade extension are used. Only the session's own user may open its tunnel (403),
//! an unknown session is 404; errors are Kubernetes `Status` objects.
//!
//! The answer echoes one of the WebSocket sub-protocols the client offered from
//! [`SUBPROTOCOLS`]: kube-rs' `Client::connect` insists on `v4`/`v5.channel.k8s.io`.
//! Their channel framing is *not* used: every binary message carries raw bytes of the
//! HTTP/2 connection ([`WsIo`]).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, Message};
use tokio_tungstenite::WebSocketStream;

use crate::outbound::relay::OutboundCtx;
use crate::registry::Registry;
pub use crate::tunnel::Body;
use crate::tunnel::Tunnels;

/// WebSocket sub-protocols accepted, in order of preference (see the module docs).
pub const SUBPROTOCOLS: [&str; 3] = ["v5.channel.k8s.io", "v4.channel.k8s.io", "tunnel.shunt.dev"];

/// Interval of HTTP/2 PINGs on a tunnel; a CLI silent for [`KEEPALIVE_TIMEOUT`] after one is gone.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Answers a tunnel request of session `namespace/name` made by `user` (inbound only;
/// [`handle_with_outbound`] serves both directions).
pub async fn handle<B>(
    req: Request<B>,
    user: &str,
    namespace: &str,
    name: &str,
    registry: &Registry,
    tunnels: &Tunnels,
) -> Response<Body> {
    handle_with_outbound(req, user, namespace, name, registry, tunnels, None).await
}

/// Answers a tunnel request: `dir=inbound` as [`handle`], `dir=outbound` served by
/// [`crate::outbound::relay::serve`] with `outbound` (refused with 400 without it).
pub async fn handle_with_outbound<B>(
    mut req: Request<B>,
    user: &str,
    namespace: &str,
    name: &str,
    registry: &Registry,
    tunnels: &Tunnels,
    outbound: Option<OutboundCtx>,
) -> Response<Body> {
    let dir = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("dir="))
        .unwrap_or("");
    let outbound = match (dir, outbound) {
        ("inbound", _) => None,
        ("outbound", Some(ctx)) => Some(ctx),
        ("outbound", None) => {
            let msg = "this operator does not serve dir=outbound tunnels";
            return status(StatusCode::BAD_REQUEST, "BadRequest", msg);
        }
        (other, _) => {
            let msg = format!("unknown tunnel direction {other:?}: use dir=inbound or dir=outbound");
            return status(StatusCode::BAD_REQUEST, "BadRequest", &msg);
        }
    };
    let Some(session) = registry.get(namespace, name) else {
        let msg = format!("sessions.api.shunt.dev {name:?} not found");
        return status(StatusCode::NOT_FOUND, "NotFound", &msg);
    };
    if session.user != user {
        let msg = format!(
            "sessions.api.shunt.dev {name:?} belongs to {:?}: only its own user may open its tunnel",
            session.user
        );
        return status(StatusCode::FORBIDDEN, "Forbidden", &msg);
    }
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).filter(|_| is_ws).cloned() else {
        let msg = "the tunnel is a WebSocket: send `Upgrade: websocket` with a Sec-WebSocket-Key";
        return status(StatusCode::BAD_REQUEST, "BadRequest", msg);
    };
    let offered: Vec<String> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let protocol = SUBPROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p));
    let upgrade = hyper::upgrade::on(&mut req);
    let (tunnels, ns, session_name) = (tunnels.clone(), namespace.to_owned(), name.to_owned());
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(error) => {
                tracing::warn!(session.namespace = %ns, session.name = %session_name, %error, "tunnel upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        match outbound {
            Some(ctx) => crate::outbound::relay::serve(WsIo::new(ws), ctx, &ns, &session_name).await,
            None => serve_inbound(WsIo::new(ws), &tunnels, &ns, &session_name).await,
        }
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if let Some(p) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    resp
}

/// Runs the HTTP/2 client side of an inbound tunnel over `io` and keeps it registered
/// for the session while the connection lives.
pub async fn serve_inbound<T>(io: T, tunnels: &Tunnels, namespace: &str, name: &str)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await;
    let (sender, conn) = match handshake {
        Ok(pair) => pair,
        Err(error) => {
            tracing::warn!(session.namespace = %namespace, session.name = %name, %error, "tunnel HTTP/2 handshake failed");
            return;
        }
    };
    tunnels.register(namespace, name, sender);
    tracing::info!(session.namespace = %namespace, session.name = %name, "tunnel connected");
    if let Err(error) = conn.await {
        tracing::info!(session.namespace = %namespace, session.name = %name, %error, "tunnel connection ended");
    } else {
        tracing::info!(session.namespace = %namespace, session.name = %name, "tunnel closed");
    }
    // A reconnect may already have registered a newer connection: forget only a dead one.
    tunnels.unregister_closed(namespace, name);
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

/// A Kubernetes `Status` answer.
fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A WebSocket as a byte stream: each write is one binary message, reads return the
/// payloads of binary messages in order; a Close (or the end of the socket) is EOF.
/// The CLI uses it too, at its end of the tunnel (`shunt_cli::tunnel`).
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    pending: Bytes,
}

impl<S> WsIo<S> {
    /// Wraps an open WebSocket.
    pub fn new(ws: WebSocketStream<S>) -> WsIo<S> {
        WsIo {
            ws,
            pending: Bytes::new(),
        }
    }
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Ok(_)) => {} // pings are answered by tungstenite; text is not part of the stream
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_close(cx).map_err(to_io)
    }
}

#[cfg(test)]
#[path = "tunnel_tests.rs"]
mod tests;
