//! The outbound tunnel of a `shunt exec` session: `sessions/{name}/tunnel?dir=outbound`,
//! a WebSocket through kube-apiserver with HTTP/2 over it, the CLI as the **client**.
//!
//! - [`Outbound::connect`] sends `CONNECT host:port`; on 200 the HTTP/2 stream is a byte
//!   stream to a connection a pod of the target dialled ([`OutboundStream`]).
//! - [`Outbound::resolve`] asks `GET /dns?name=` and gets the pod resolver's addresses.
//!
//! The operator picks a pod whose sidecar has its reverse connection up and checks the
//! outgoing policies; refusals come back as [`OutboundError`]s whose text is the
//! operator's (or the pod's) sentence: which policy and rule, the pod's dial error, why no
//! pod can serve. A broken tunnel is reopened in the background with back-off (0.2 s
//! doubling to 10 s), as `shunt intercept` does; a session that was ended stops it.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http2;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shunt_proto::hub::{encode_query_value, DNS_PATH};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::cluster::{explain, Cluster};
use crate::tunnel::WsIo;

/// How long a call waits for the tunnel to come (back) up.
const WAIT_FOR_TUNNEL: Duration = Duration::from_secs(10);
/// How long a call waits for the operator's answer (it waits 15 s for the pod's dial).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Largest answer body read (DNS answers, error messages).
const MAX_ANSWER: usize = 64 * 1024;

type Sender = http2::SendRequest<Empty<Bytes>>;

#[derive(Clone)]
enum Link {
    /// Opening (again); the last error, if any.
    Connecting(Option<String>),
    Up(Sender),
    /// The session was ended or the tunnel refused: no more reconnects.
    Ended(String),
}

/// Why an outbound call failed. The texts are the operator's or the pod's own words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// A policy forbids it (403): the message names the policy and the rule.
    #[error("{0}")]
    Forbidden(String),
    /// The pod could not connect (502): the pod's dial error.
    #[error("{0}")]
    Unreachable(String),
    /// No pod can carry outbound traffic now, or a limit was reached (503).
    #[error("{0}")]
    Unavailable(String),
    /// The pod's resolver does not know the name (404).
    #[error("{0}")]
    NotFound(String),
    /// The tunnel is not up (it is being reopened).
    #[error("the outbound tunnel of session {session} is not connected: {why}")]
    Tunnel {
        /// The session.
        session: String,
        /// The last error.
        why: String,
    },
    /// The session ended: nothing more will go through it.
    #[error("{0}")]
    Ended(String),
    /// The request itself is invalid (not `host:port`, an empty name).
    #[error("{0}")]
    Invalid(String),
    /// An answer the CLI did not expect.
    #[error("unexpected answer {status} from the operator: {message}")]
    Unexpected {
        /// Its status.
        status: StatusCode,
        /// Its message.
        message: String,
    },
}

/// The outbound tunnel of one session. Cheap to clone; the tunnel closes when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Outbound {
    link: watch::Receiver<Link>,
    session: String,
    _keeper: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// Opens the tunnel once: the HTTP/2 sender and the connection to drive.
async fn open_once(
    cluster: &Cluster,
    namespace: &str,
    session: &str,
) -> Result<
    (
        Sender,
        http2::Connection<TokioIo<WsIo<TokioIo<Upgraded>>>, Empty<Bytes>, TokioExecutor>,
    ),
    kube::Error,
> {
    let path = format!("/apis/api.shunt.dev/v1/namespaces/{namespace}/sessions/{session}/tunnel?dir=outbound");
    let req = Request::get(path).body(Vec::new()).map_err(kube::Error::HttpError)?;
    let ws = cluster.client.connect(req).await?;
    http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(WsIo::new(ws.into_stream())))
        .await
        .map_err(|e| kube::Error::Service(Box::new(e)))
}

impl Outbound {
    /// Opens the outbound tunnel of session `session` in `namespace` (an error if it cannot
    /// be opened now: no such session, not yours, no operator) and keeps it open.
    pub async fn open(cluster: &Cluster, namespace: &str, session: &str) -> anyhow::Result<Outbound> {
        use anyhow::Context as _;
        let (sender, conn) = open_once(cluster, namespace, session)
            .await
            .map_err(explain)
            .with_context(|| format!("cannot open the outbound tunnel of session {namespace}/{session}"))?;
        let (tx, rx) = watch::channel(Link::Up(sender));
        let keeper = tokio::spawn(keep(
            cluster.clone(),
            namespace.to_owned(),
            session.to_owned(),
            conn,
            tx,
        ));
        tracing::info!(session.namespace = %namespace, session.name = %session, "outbound tunnel open");
        Ok(Outbound {
            link: rx,
            session: format!("{namespace}/{session}"),
            _keeper: Arc::new(AbortOnDrop(keeper)),
        })
    }

    /// Whether the tunnel is connected right now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.link.borrow(), Link::Up(s) if !s.is_closed())
    }

    async fn sender(&self) -> Result<Sender, OutboundError> {
        let mut link = self.link.clone();
        let ready = |l: &Link| match l {
            Link::Up(s) => !s.is_closed(),
            Link::Ended(_) => true,
            Link::Connecting(_) => false,
        };
        let waited = tokio::time::timeout(WAIT_FOR_TUNNEL, async { link.wait_for(ready).await.map(|_| ()) }).await;
        let state = self.link.borrow().clone();
        match (waited, state) {
            (Ok(Ok(_)), Link::Up(sender)) => Ok(sender),
            (_, Link::Ended(why)) => Err(OutboundError::Ended(why)),
            (_, Link::Connecting(why)) => Err(OutboundError::Tunnel {
                session: self.session.clone(),
                why: why.unwrap_or_else(|| "reconnecting".into()),
            }),
            (_, Link::Up(_)) => Err(OutboundError::Tunnel {
                session: self.session.clone(),
                why: "the connection just closed; reconnecting".into(),
            }),
        }
    }

    async fn send(&self, req: Request<Empty<Bytes>>) -> Result<http::Response<hyper::body::Incoming>, OutboundError> {
        let mut sender = self.sender().await?;
        let tunnel_err = |e: hyper::Error| OutboundError::Tunnel {
            session: self.session.clone(),
            why: e.to_string(),
        };
        let exchange = async {
            sender.ready().await.map_err(tunnel_err)?;
            sender.send_request(req).await.map_err(tunnel_err)
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| OutboundError::Tunnel {
                session: self.session.clone(),
                why: format!("no answer within {ANSWER_TIMEOUT:?}"),
            })?
    }

    /// A byte stream to `authority` (`host:port`) dialled from a pod of the target.
    pub async fn connect(&self, authority: &str) -> Result<OutboundStream, OutboundError> {
        let invalid = || OutboundError::Invalid(format!("{authority:?} is not host:port (e.g. reviews:8080)"));
        let uri: http::Uri = authority.parse().map_err(|_| invalid())?;
        if uri.authority().and_then(|a| a.port_u16()).is_none() || uri.path_and_query().is_some() {
            return Err(invalid());
        }
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .body(Empty::new())
            .map_err(|_| invalid())?;
        let mut resp = self.send(req).await?;
        if resp.status() == StatusCode::OK {
            let upgraded = hyper::upgrade::on(&mut resp).await.map_err(|e| OutboundError::Tunnel {
                session: self.session.clone(),
                why: format!("the stream to {authority} did not open: {e}"),
            })?;
            tracing::debug!(dest = %authority, "outbound connection open");
            return Ok(OutboundStream(TokioIo::new(upgraded)));
        }
        Err(refusal(resp).await)
    }

    /// The pod resolver's addresses for `name` (`reviews`, `reviews.shop.svc.cluster.local`).
    pub async fn resolve(&self, name: &str) -> Result<Vec<IpAddr>, OutboundError> {
        if name.is_empty() {
            return Err(OutboundError::Invalid("an empty name cannot be resolved".into()));
        }
        let uri = format!("http://shunt{DNS_PATH}?name={}", encode_query_value(name));
        let req = Request::get(uri)
            .body(Empty::new())
            .map_err(|e| OutboundError::Invalid(format!("{name:?}: {e}")))?;
        let resp = self.send(req).await?;
        if resp.status() != StatusCode::OK {
            return Err(refusal(resp).await);
        }
        let body = read(resp.into_body()).await;
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let addresses: Option<Vec<IpAddr>> = doc["addresses"]
            .as_array()
            .map(|list| list.iter().filter_map(|a| a.as_str()?.parse().ok()).collect());
        addresses.ok_or_else(|| OutboundError::Unexpected {
            status: StatusCode::OK,
            message: format!("no addresses in {}", String::from_utf8_lossy(&body)),
        })
    }
}

async fn read(body: hyper::body::Incoming) -> Bytes {
    match tokio::time::timeout(ANSWER_TIMEOUT, Limited::new(body, MAX_ANSWER).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    }
}

/// The error of a non-200 answer, with the operator's message.
async fn refusal(resp: http::Response<hyper::body::Incoming>) -> OutboundError {
    let status = resp.status();
    let body = read(resp.into_body()).await;
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
    match status {
        StatusCode::FORBIDDEN => OutboundError::Forbidden(message),
        StatusCode::BAD_GATEWAY => OutboundError::Unreachable(message),
        StatusCode::SERVICE_UNAVAILABLE => OutboundError::Unavailable(message),
        StatusCode::NOT_FOUND => OutboundError::NotFound(message),
        StatusCode::BAD_REQUEST => OutboundError::Invalid(message),
        status => OutboundError::Unexpected { status, message },
    }
}

/// Drives the connection; when it ends, reopens the tunnel with back-off until the
/// session is gone (or every [`Outbound`] clone is dropped, which aborts this task).
async fn keep(
    cluster: Cluster,
    namespace: String,
    session: String,
    conn: http2::Connection<TokioIo<WsIo<TokioIo<Upgraded>>>, Empty<Bytes>, TokioExecutor>,
    tx: watch::Sender<Link>,
) {
    let mut conn = Some(conn);
    let mut backoff = BACKOFF_MIN;
    loop {
        if let Some(c) = conn.take() {
            let since = std::time::Instant::now();
            let why = match c.await {
                Ok(()) => "the tunnel closed".to_owned(),
                Err(e) => format!("the tunnel broke: {e}"),
            };
            tracing::info!(session.name = %session, %why, "outbound tunnel lost; reopening");
            tx.send_replace(Link::Connecting(Some(why)));
            if since.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        match open_once(&cluster, &namespace, &session).await {
            Ok((sender, c)) => {
                tracing::info!(session.name = %session, "outbound tunnel reopened");
                tx.send_replace(Link::Up(sender));
                conn = Some(c);
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 403 => {
                let why = format!(
                    "session {namespace}/{session}: the outbound tunnel cannot be reopened: {} ({})",
                    s.message, s.code
                );
                tracing::info!(%why, "outbound tunnel given up");
                tx.send_replace(Link::Ended(why));
                return;
            }
            Err(e) => {
                let why = format!("cannot reopen the tunnel: {e}");
                tx.send_replace(Link::Connecting(Some(why)));
            }
        }
    }
}

/// A byte stream to a connection a pod dialled (an HTTP/2 stream of the tunnel).
pub struct OutboundStream(TokioIo<Upgraded>);

impl std::fmt::Debug for OutboundStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OutboundStream")
    }
}

impl AsyncRead for OutboundStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for OutboundStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_the_operators_words() {
        let e = OutboundError::Forbidden("denied by ShuntPolicy shop/x (rule outgoing.block: 10.0.0.0/8)".into());
        assert_eq!(
            e.to_string(),
            "denied by ShuntPolicy shop/x (rule outgoing.block: 10.0.0.0/8)"
        );
        let t = OutboundError::Tunnel {
            session: "shop/a".into(),
            why: "reconnecting".into(),
        };
        assert_eq!(
            t.to_string(),
            "the outbound tunnel of session shop/a is not connected: reconnecting"
        );
    }
}
