//! Opens one reverse connection: TLS to the hub (ALPN `http/1.1`), `GET /hub/v1/reverse`
//! with `Upgrade: shunt-reverse` and the pod's token, the 101, and then the hub's first
//! HTTP/2 bytes. A connection counts as accepted only once the hub has spoken on it: the
//! hub registers it right after sending its HTTP/2 preface, and only then may the
//! connection it replaces be retired without a moment in which the hub has none.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{header, Request, StatusCode};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use shunt_proto::hub::{HEADER_POD, HEADER_PROTOCOL, PROTOCOL_VERSION, REVERSE_PATH, REVERSE_UPGRADE};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::ReverseError;
use crate::config::HubSettings;
use crate::hub::conn::{connect_tls, refusal, HubError};
use crate::proxy::body::{empty, OutBody};

/// An upgraded reverse connection on which the hub has spoken: the bytes read to learn
/// that come first, then the stream.
pub(crate) struct Accepted {
    first: Bytes,
    io: TokioIo<Upgraded>,
}

/// Dials the hub (TCP, TLS) and upgrades with `token` ([`upgrade`]).
pub(super) async fn open(settings: &HubSettings, token: String) -> Result<Accepted, ReverseError> {
    let tls = connect_tls(settings, b"http/1.1").await?;
    upgrade(TokioIo::new(tls), settings, token).await
}

/// The reverse upgrade over `io` (any stream: tests use in-memory ones), then the hub's
/// first bytes.
pub(super) async fn upgrade<T>(io: T, settings: &HubSettings, token: String) -> Result<Accepted, ReverseError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let connect_err = |why: String| HubError::Connect {
        addr: settings.addr.clone(),
        why,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, OutBody>(io)
        .await
        .map_err(|e| connect_err(format!("HTTP/1.1: {e}")))?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "reverse connection's HTTP/1.1 phase ended");
        }
    });
    let req = Request::get(REVERSE_PATH)
        .header(header::HOST, settings.server_name.as_str())
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, REVERSE_UPGRADE)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(HEADER_POD, format!("{}/{}", settings.pod_namespace, settings.pod_name))
        .header(HEADER_PROTOCOL, PROTOCOL_VERSION)
        .body(empty())
        .map_err(|e| connect_err(format!("reverse request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(|e| connect_err(e.to_string()))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(match refusal(resp).await {
            HubError::Refused { status, message } => ReverseError::Refused { status, message },
            other => other.into(),
        });
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| connect_err(format!("upgrade: {e}")))?;
    let mut io = TokioIo::new(upgraded);
    let mut first = vec![0; 1024];
    let n = io
        .read(&mut first)
        .await
        .map_err(|e| ReverseError::NotTaken(format!("waiting for its HTTP/2 preface: {e}")))?;
    if n == 0 {
        return Err(ReverseError::NotTaken(
            "it closed the connection right after the 101".into(),
        ));
    }
    first.truncate(n);
    Ok(Accepted {
        first: Bytes::from(first),
        io,
    })
}

impl AsyncRead for Accepted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.first.has_remaining() {
            let n = self.first.len().min(buf.remaining());
            buf.put_slice(&self.first[..n]);
            self.first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
