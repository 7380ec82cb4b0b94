//! The reverse connection's keeper against an in-memory hub (HTTP/1.1 upgrade, then the
//! hub as HTTP/2 client over `tokio::io::duplex`, registering the newest connection like
//! `operator/src/outbound` does): a CONNECT through the pod succeeds at every moment of a
//! token rotation; a refused new token leaves the old connection serving; how fast ended
//! and broken connections are redialled.

use std::collections::HashSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::hub::keeper::TOKEN_POLL;
use crate::hub::BACKOFF_MIN;
use crate::proxy::body::{empty, text, OutBody};

/// One reverse connection the hub accepted.
struct HubConn {
    token: String,
    opened: Instant,
    tasks: ConnTasks,
    /// Makes the sidecar's end read a reset instead of an end (see [`Resettable`]).
    reset: Arc<AtomicBool>,
}

/// The tasks of one of the hub's HTTP/2 connections (hyper spawns the connection itself
/// through the executor): all finished = closed; aborting them breaks the connection.
#[derive(Clone, Default)]
struct ConnTasks(Arc<Mutex<Vec<JoinHandle<()>>>>);

impl<F: std::future::Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for ConnTasks {
    fn execute(&self, fut: F) {
        self.0.lock().unwrap().push(tokio::spawn(fut));
    }
}

impl ConnTasks {
    fn finished(&self) -> bool {
        self.0.lock().unwrap().iter().all(JoinHandle::is_finished)
    }

    fn abort(&self) {
        self.0.lock().unwrap().iter().for_each(JoinHandle::abort);
    }
}

/// A hub in memory: accepts the tokens in `accepted`; the newest reverse connection takes
/// the outbound traffic (the registry holds one sender per pod).
#[derive(Default)]
struct FakeHub {
    accepted: Mutex<HashSet<String>>,
    refused: AtomicUsize,
    conns: Mutex<Vec<HubConn>>,
    /// The registered connection: its number (1-based) and sender.
    registry: Mutex<Option<(usize, SendRequest<OutBody>)>>,
    /// Keep a sender of every connection, so none closes from the hub's side: one that
    /// closes was closed by the sidecar.
    hold_senders: AtomicBool,
    held: Mutex<Vec<SendRequest<OutBody>>>,
}

impl FakeHub {
    fn accept(&self, token: &str) {
        self.accepted.lock().unwrap().insert(token.to_owned());
    }

    fn conn_count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    fn closed(&self, n: usize) -> bool {
        self.conns.lock().unwrap()[n - 1].tasks.finished()
    }

    fn registered(&self) -> Option<usize> {
        self.registry.lock().unwrap().as_ref().map(|(n, _)| *n)
    }

    /// What the hub does once `token` no longer authenticates: its connection leaves the
    /// registry (and closes once its tunnels end).
    fn expire(&self, token: &str) {
        let conns = self.conns.lock().unwrap();
        let mut registry = self.registry.lock().unwrap();
        if registry.as_ref().is_some_and(|(n, _)| conns[n - 1].token == token) {
            *registry = None;
        }
    }

    /// Breaks connection `n` as a crash of the hub would (over TLS an end without
    /// `close_notify` is an error, not a clean end).
    fn break_connection(&self, n: usize) {
        let conns = self.conns.lock().unwrap();
        conns[n - 1].reset.store(true, Ordering::SeqCst);
        conns[n - 1].tasks.abort();
    }

    /// Serves one sidecar connection: the HTTP/1.1 upgrade, then HTTP/2 as the client.
    /// Returns the flag [`FakeHub::break_connection`] sets.
    fn serve(self: &Arc<Self>, io: tokio::io::DuplexStream) -> Arc<AtomicBool> {
        let (hub, reset) = (self.clone(), Arc::new(AtomicBool::new(false)));
        let flag = reset.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (hub, reset) = (hub.clone(), reset.clone());
                async move { Ok::<_, std::convert::Infallible>(hub.upgrade(req, reset)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades()
                .await;
        });
        flag
    }

    fn upgrade(self: Arc<Self>, mut req: Request<Incoming>, reset: Arc<AtomicBool>) -> Response<OutBody> {
        let token = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        if !self.accepted.lock().unwrap().contains(&token) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            let mut resp = Response::new(text(r#"{"message":"the token has expired"}"#));
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            return resp;
        }
        let on_upgrade = hyper::upgrade::on(&mut req);
        let hub = self.clone();
        tokio::spawn(async move {
            let upgraded = on_upgrade.await.unwrap();
            let tasks = ConnTasks::default();
            let (sender, conn) = hyper::client::conn::http2::Builder::new(tasks.clone())
                .handshake::<_, OutBody>(upgraded)
                .await
                .unwrap();
            hyper::rt::Executor::execute(&tasks, async move {
                let _ = conn.await;
            });
            if hub.hold_senders.load(Ordering::SeqCst) {
                hub.held.lock().unwrap().push(sender.clone());
            }
            let mut conns = hub.conns.lock().unwrap();
            let n = conns.len() + 1;
            *hub.registry.lock().unwrap() = Some((n, sender));
            conns.push(HubConn {
                token,
                opened: Instant::now(),
                tasks,
                reset,
            });
        });
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(
            header::UPGRADE,
            http::HeaderValue::from_static(shunt_proto::hub::REVERSE_UPGRADE),
        );
        resp
    }

    /// `CONNECT dest` through the registered connection: its number and the tunnel.
    async fn connect(&self, dest: &str) -> Result<(usize, TokioIo<Upgraded>), String> {
        let picked = self.registry.lock().unwrap().clone();
        let Some((n, mut sender)) = picked else {
            return Err("no reverse connection registered".into());
        };
        let req = Request::connect(dest).body(empty()).unwrap();
        sender.ready().await.map_err(|e| format!("connection {n}: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("connection {n}: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("connection {n}: {}", resp.status()));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| format!("connection {n}: {e}"))?;
        Ok((n, TokioIo::new(upgraded)))
    }
}

/// The sidecar's end of an in-memory connection: once `reset` is set, the end of the
/// stream reads as a connection reset.
struct Resettable {
    io: tokio::io::DuplexStream,
    reset: Arc<AtomicBool>,
}

impl tokio::io::AsyncRead for Resettable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && self.reset.load(Ordering::SeqCst) => {
                Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()))
            }
            other => other,
        }
    }
}

impl tokio::io::AsyncWrite for Resettable {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A sidecar's reverse-connection keeper dialling `hub`, its token in a file of its own.
struct Sidecar {
    token_file: PathBuf,
    wanted: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.token_file);
    }
}

impl Sidecar {
    fn start(hub: &Arc<FakeHub>, token: &str, name: &str) -> Sidecar {
        let settings = crate::hub::tests::settings_with_token("reverse", name, token);
        let token_file = settings.token_file.clone();
        let (wanted, wanted_rx) = watch::channel(true);
        let dial_hub = hub.clone();
        let dial_settings = settings.clone();
        let dial = move |token: String| {
            let (hub, settings) = (dial_hub.clone(), dial_settings.clone());
            async move {
                let (client, server) = tokio::io::duplex(64 << 10);
                let reset = hub.serve(server);
                dial::upgrade(TokioIo::new(Resettable { io: client, reset }), &settings, token).await
            }
        };
        let task = tokio::spawn(async move {
            keeper::keep(&settings, wanted_rx, &Metrics::default(), dial).await;
        });
        Sidecar {
            token_file,
            wanted,
            task,
        }
    }

    fn rotate(&self, token: &str) {
        std::fs::write(&self.token_file, token).unwrap();
    }
}

/// Polls `f` every 10 ms until it holds.
async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An echo server on `127.0.0.1:0` (the destination outbound connections dial).
async fn echo_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn echoes(tunnel: &mut TokioIo<Upgraded>, what: &[u8]) -> bool {
    let mut back = vec![0; what.len()];
    tunnel.write_all(what).await.is_ok() && tunnel.read_exact(&mut back).await.is_ok() && back == what
}

/// Opens a tunnel to the echo server through the hub: which connection carried it.
async fn connect_through(hub: &FakeHub, echo: &str) -> Result<usize, String> {
    let (n, mut tunnel) = hub.connect(echo).await?;
    if !echoes(&mut tunnel, b"ping").await {
        return Err(format!("the tunnel through connection {n} does not echo"));
    }
    Ok(n)
}

// Real time: the tunnels reach a real TCP server, whose I/O paused time would not wait for.
#[tokio::test]
async fn an_outbound_connect_succeeds_at_every_moment_of_a_token_rotation() {
    let echo = echo_server().await;
    let hub = Arc::new(FakeHub::default());
    hub.accept("t1");
    hub.accept("t2");
    hub.hold_senders.store(true, Ordering::SeqCst);
    let sidecar = Sidecar::start(&hub, "t1\n", "rotate");
    eventually("the reverse connection to register", Duration::from_secs(5), || {
        hub.registered() == Some(1)
    })
    .await;
    // A tunnel is open on the old connection when the token rotates.
    let (n, mut open_tunnel) = hub.connect(&echo).await.unwrap();
    assert_eq!(n, 1);
    assert!(echoes(&mut open_tunnel, b"before").await);

    sidecar.rotate("t2\n");
    // Until the old token expires (at most TOKEN_POLL + 5 s here), the old connection or
    // the rotated token's one carries every CONNECT.
    let expiry = Instant::now() + TOKEN_POLL + Duration::from_secs(5);
    while hub.registered() != Some(2) && Instant::now() < expiry {
        assert_eq!(connect_through(&hub, &echo).await, Ok(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The hub reviews the old token after its expiry and retires its connection: outbound
    // traffic keeps flowing, through the new one (before, the sidecar redialled only now
    // and CONNECTs found no pod).
    hub.expire("t1");
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        assert_eq!(connect_through(&hub, &echo).await, Ok(2), "after the old token expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old connection stays while its tunnel is open, then the sidecar closes it (the
    // hub holds on to it here).
    assert!(
        echoes(&mut open_tunnel, b"after").await,
        "the tunnel open across the rotation still works"
    );
    assert!(!hub.closed(1), "the old connection closed under an open tunnel");
    drop(open_tunnel);
    eventually("the old connection to close", Duration::from_secs(5), || hub.closed(1)).await;
    assert_eq!(hub.conn_count(), 2, "one new connection, no more");
    assert!(!hub.closed(2));
    assert_eq!(connect_through(&hub, &echo).await, Ok(2));
    drop(sidecar);
}

#[tokio::test(start_paused = true)]
async fn a_refused_rotated_token_leaves_the_old_connection_serving_and_is_retried() {
    let hub = Arc::new(FakeHub::default());
    hub.accept("t1");
    let sidecar = Sidecar::start(&hub, "t1", "refused");
    eventually("the reverse connection to register", Duration::from_secs(5), || {
        hub.registered() == Some(1)
    })
    .await;
    sidecar.rotate("t2");
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(hub.registered(), Some(1));
        assert!(!hub.closed(1));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = hub.refused.load(Ordering::SeqCst);
    // Detected within TOKEN_POLL, then retried after 0.5, 1, 2 and 4 s.
    assert!(
        (2..=5).contains(&refused),
        "{refused} attempts with the refused token in 8 s"
    );
    hub.accept("t2");
    eventually("the rotated token's connection", Duration::from_secs(10), || {
        hub.registered() == Some(2)
    })
    .await;
    eventually("the old connection to close", Duration::from_secs(1), || hub.closed(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_ended_connection_is_redialled_at_once_a_broken_one_after_backoff() {
    let hub = Arc::new(FakeHub::default());
    hub.accept("t1");
    let sidecar = Sidecar::start(&hub, "t1", "redial");
    eventually("the reverse connection to register", Duration::from_secs(5), || {
        hub.conn_count() == 1
    })
    .await;
    let redial = |n: usize| {
        let hub = hub.clone();
        async move {
            let ended = Instant::now();
            eventually("a redial", Duration::from_secs(5), || hub.conn_count() > n).await;
            hub.conns.lock().unwrap()[n].opened - ended
        }
    };

    hub.expire("t1"); // out of the registry: the hub's side closes it cleanly
    let at_once = redial(1).await;
    assert!(at_once < Duration::from_millis(100), "redialled after {at_once:?}");

    hub.break_connection(2);
    let after_error = redial(2).await;
    assert!(after_error >= BACKOFF_MIN, "redialled after {after_error:?}");

    // A second clean end soon after the first backs off.
    hub.expire("t1");
    let again = redial(3).await;
    assert!(again >= BACKOFF_MIN, "redialled after {again:?}");

    // No longer wanted: closed, and not redialled.
    sidecar.wanted.send_replace(false);
    eventually("the connection to close", Duration::from_secs(1), || hub.closed(4)).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(hub.conn_count(), 4);
}
