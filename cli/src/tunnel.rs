//! The session's inbound tunnel: a WebSocket to `sessions/{name}/tunnel?dir=inbound`
//! through kube-apiserver, used as a byte stream on which the CLI is the HTTP/2 server
//! (stolen and mirrored requests arrive as HTTP/2 requests, see ARCHITECTURE.md).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::Client;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

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

/// A WebSocket as a byte stream: each write is one binary message, reads return the
/// payloads of binary messages in order; a Close (or the end of the socket) is EOF.
/// (The operator has its own copy, `operator/src/api/tunnel.rs`: `proto` does no I/O,
/// and ~50 lines do not justify a crate.)
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
