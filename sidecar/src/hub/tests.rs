//! The keeper against an in-memory hub (HTTP/2 over `tokio::io::duplex`, paused time):
//! token rotation without a gap, a refused new token, the old connection dying during a
//! switch, and how fast ended and broken watches are redialled.

use std::collections::HashSet;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::config::HubSettings;
use crate::metrics::Metrics;
use crate::proxy::body::{empty, text};
use crate::table::Table;

const ROUTES: &str =
    r#"{"routes":[{"id":"alice","port":8080,"mode":"steal","filter":"x-user: alice","upstream":"hub"}]}"#;
const LEASE: Duration = Duration::from_secs(2);

#[test]
fn route_ids_map_to_session_names() {
    assert_eq!(session_of_route("alice"), "alice");
    assert_eq!(session_of_route("alice:8080"), "alice");
}

/// One routes watch the hub accepted.
struct HubWatch {
    docs: mpsc::Sender<Bytes>,
    opened: Instant,
}

/// A hub in memory: accepts the tokens in `accepted`, answers relayed requests with
/// `conn-<n>` (`/slow` only once `slow` is released), and can hold new watches' first
/// document back.
#[derive(Default)]
struct FakeHub {
    accepted: Mutex<HashSet<String>>,
    refused: AtomicUsize,
    /// Server task of each connection, in dial order (aborting one breaks it).
    servers: Mutex<Vec<JoinHandle<()>>>,
    watches: Mutex<Vec<HubWatch>>,
    hold_first: AtomicBool,
    release: tokio::sync::Notify,
    slow_waiting: AtomicUsize,
    slow: tokio::sync::Notify,
}

impl FakeHub {
    fn accept(&self, token: &str) {
        self.accepted.lock().unwrap().insert(token.to_owned());
    }

    fn watch_count(&self) -> usize {
        self.watches.lock().unwrap().len()
    }

    fn watch_closed(&self, n: usize) -> bool {
        self.watches.lock().unwrap()[n - 1].docs.is_closed()
    }

    fn end_watch(&self, n: usize) {
        let (docs, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.watches.lock().unwrap()[n - 1].docs, docs));
    }

    fn break_connection(&self, n: usize) {
        self.servers.lock().unwrap()[n - 1].abort();
    }

    /// Serves one connection (HTTP/2) with the next number.
    fn serve(self: &Arc<Self>, io: tokio::io::DuplexStream) {
        let mut servers = self.servers.lock().unwrap();
        let n = servers.len() + 1;
        let hub = self.clone();
        servers.push(tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let hub = hub.clone();
                async move { Ok::<_, std::convert::Infallible>(hub.handle(n, req).await) }
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), service)
                .await;
        }));
    }

    async fn handle(self: Arc<Self>, n: usize, req: Request<Incoming>) -> Response<OutBody> {
        if req.uri().path() != shunt_proto::hub::ROUTES_PATH {
            if req.uri().path() == "/slow" {
                let released = self.slow.notified();
                self.slow_waiting.fetch_add(1, Ordering::SeqCst);
                released.await;
            }
            return Response::new(text(format!("conn-{n}")));
        }
        let token = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !self.accepted.lock().unwrap().contains(token) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            let mut resp = Response::new(text(r#"{"message":"the token has expired"}"#));
            *resp.status_mut() = http::StatusCode::UNAUTHORIZED;
            return resp;
        }
        let (docs, rx) = mpsc::channel(8);
        let first = docs.clone();
        self.watches.lock().unwrap().push(HubWatch {
            docs,
            opened: Instant::now(),
        });
        let hold = self.hold_first.load(Ordering::SeqCst);
        let hub = self.clone();
        tokio::spawn(async move {
            if hold {
                hub.release.notified().await;
            }
            let _ = first.send(Bytes::from(format!("{ROUTES}\n"))).await;
        });
        Response::new(Docs(rx).boxed())
    }
}

/// A routes stream fed by a channel.
struct Docs(mpsc::Receiver<Bytes>);

impl Body for Docs {
    type Data = Bytes;
    type Error = crate::proxy::body::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|doc| doc.map(|d| Ok(Frame::data(d))))
    }
}

/// A sidecar's hub source running against `hub`, its token in a file of its own.
struct Sidecar {
    link: HubLink,
    table: watch::Receiver<Arc<Table>>,
    token_file: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.token_file);
    }
}

/// The hub settings of pod `shop/api-0` for a fake hub `hub.test`, with `token` written to
/// a file of its own (named after `tag` and `name`; the caller removes it).
pub(crate) fn settings_with_token(tag: &str, name: &str, token: &str) -> HubSettings {
    let token_file = std::env::temp_dir().join(format!("shunt-{tag}-{}-{name}", std::process::id()));
    std::fs::write(&token_file, token).unwrap();
    HubSettings {
        addr: "hub.test:443".into(),
        ca_file: None,
        ca_pem: None,
        server_name: "hub.test".into(),
        token_file,
        pod_namespace: "shop".into(),
        pod_name: "api-0".into(),
    }
}

impl Sidecar {
    fn start(hub: &Arc<FakeHub>, token: &str, name: &str) -> Sidecar {
        let settings = settings_with_token("keeper", name, token);
        let token_file = settings.token_file.clone();
        let (tx, table) = watch::channel(Arc::new(Table::default()));
        let link = HubLink::new("shop", "api-0");
        let (dial_hub, keeper_link) = (hub.clone(), link.clone());
        let dial_settings = settings.clone();
        let dial = move |token: String| {
            let (hub, settings) = (dial_hub.clone(), dial_settings.clone());
            async move {
                let (client, server) = tokio::io::duplex(64 << 10);
                hub.serve(server);
                conn::handshake(TokioIo::new(client), &settings, token).await
            }
        };
        let task = tokio::spawn(async move {
            keeper::keep(&settings, &[8080], LEASE, &Metrics::default(), &tx, &keeper_link, dial).await;
        });
        Sidecar {
            link,
            table,
            token_file,
            task,
        }
    }

    fn rotate(&self, token: &str) {
        std::fs::write(&self.token_file, token).unwrap();
    }

    /// Which hub connection answers a request of alice; `Err` when the app would serve it.
    async fn ask(&self, path: &str) -> Result<String, String> {
        let req = Request::get(format!("http://api{path}")).body(empty()).unwrap();
        match self.link.send("alice", req).await {
            Ok(resp) => Ok(String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()),
            Err(SendError::Unsent(_, why)) => Err(format!("unsent: {why}")),
            Err(SendError::Sent(e)) => Err(format!("failed: {e}")),
        }
    }

    fn routes(&self) -> usize {
        self.table.borrow().set().routes().len()
    }
}

/// Polls `f` every 10 ms (virtual time) until it holds.
async fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn connected_to(sidecar: &Sidecar, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = format!("conn-{n}");
    while sidecar.ask("/").await.as_deref() != Ok(want.as_str()) {
        assert!(Instant::now() < deadline, "requests do not reach connection {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_rotated_token_gets_a_new_connection_before_the_old_one_closes() {
    let hub = Arc::new(FakeHub::default());
    hub.accept("t1");
    hub.accept("t2");
    let sidecar = Sidecar::start(&hub, "t1\n", "rotate");
    connected_to(&sidecar, 1).await;
    // A request whose answer is slow is on the old connection when the token rotates.
    let slow = {
        let link = sidecar.link.clone();
        tokio::spawn(async move {
            let req = Request::get("http://api/slow").body(empty()).unwrap();
            link.send("alice", req).await.map(|_| ()).map_err(|_| ())
        })
    };
    eventually("the slow request to reach the hub", Duration::from_secs(1), || {
        hub.slow_waiting.load(Ordering::SeqCst) == 1
    })
    .await;

    sidecar.rotate("t2\n");
    let deadline = Instant::now() + keeper::TOKEN_POLL + Duration::from_secs(5);
    loop {
        match sidecar.ask("/").await {
            Ok(conn) if conn == "conn-2" => break,
            Ok(conn) => assert_eq!(conn, "conn-1"),
            Err(why) => panic!("a request was not relayed during the rotation: {why}"),
        }
        assert!(Instant::now() < deadline, "no switch to the new token's connection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old watch stays open while its request waits for its answer, then closes.
    assert!(!hub.watch_closed(1), "the old watch closed under a request in flight");
    hub.slow.notify_one();
    assert_eq!(
        slow.await.unwrap(),
        Ok(()),
        "the request in flight on the old connection was answered"
    );
    eventually("the old watch to close", Duration::from_secs(1), || hub.watch_closed(1)).await;
    assert_eq!(hub.watch_count(), 2, "one new connection, no more");
    assert_eq!(sidecar.routes(), 1);
    assert!(sidecar.link.is_connected());
}

#[tokio::test(start_paused = true)]
async fn a_refused_rotated_token_leaves_the_old_connection_serving_and_is_retried() {
    let hub = Arc::new(FakeHub::default());
    hub.accept("t1");
    let sidecar = Sidecar::start(&hub, "t1", "refused");
    connected_to(&sidecar, 1).await;
    sidecar.rotate("t2");
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(sidecar.ask("/").await.as_deref(), Ok("conn-1"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = hub.refused.load(Ordering::SeqCst);
    // Detected within TOKEN_POLL, then retried after 0.5, 1, 2 and 4 s.
    assert!(
        (2..=5).contains(&refused),
        "{refused} attempts with the refused token in 8 s"
    );
    assert!(!hub.watch_closed(1));

    hub.accept("t2");
    connected_to(&sidecar, refused + 2).await;
    eventually("the old watch to close", Duration::from_secs(1), || hub.watch_closed(1)).await;
    assert_eq!(sidecar.routes(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_old_connection_dying_during_a_switch_leaves_it_to_the_new_one() {
    let hub = Arc::new(FakeHub::default());
    hub.accept("t1");
    hub.accept("t2");
    let sidecar = Sidecar::start(&hub, "t1", "dies");
    connected_to(&sidecar, 1).await;
    hub.hold_first.store(true, Ordering::SeqCst);
    sidecar.rotate("t2");
    eventually("the new watch to be asked for", keeper::TOKEN_POLL * 2, || {
        hub.watch_count() == 2
    })
    .await;

    hub.break_connection(1);
    eventually("the link to notice", Duration::from_secs(1), || {
        !sidecar.link.is_connected()
    })
    .await;
    assert!(sidecar.ask("/").await.is_err(), "without a connection the app serves");
    assert_eq!(sidecar.routes(), 1, "the routes stay for the lease");

    hub.release.notify_one();
    connected_to(&sidecar, 2).await;
    assert_eq!(
        hub.watch_count(),
        2,
        "the connection being opened took over; no third one"
    );
    assert_eq!(sidecar.routes(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_ended_watch_is_redialled_at_once_a_broken_one_after_backoff() {
    let hub = Arc::new(FakeHub::default());
    hub.accept("t1");
    let sidecar = Sidecar::start(&hub, "t1", "redial");
    connected_to(&sidecar, 1).await;
    let redial = |n: usize| {
        let hub = hub.clone();
        async move {
            let ended = Instant::now();
            eventually("a redial", Duration::from_secs(5), || hub.watch_count() > n).await;
            hub.watches.lock().unwrap()[n].opened - ended
        }
    };

    hub.end_watch(1);
    let at_once = redial(1).await;
    assert!(at_once < Duration::from_millis(100), "redialled after {at_once:?}");

    hub.break_connection(2);
    let after_error = redial(2).await;
    assert!(after_error >= BACKOFF_MIN, "redialled after {after_error:?}");

    // A second clean end soon after the first backs off: a hub ending every watch at once
    // is not hammered.
    hub.end_watch(3);
    let again = redial(3).await;
    assert!(again >= BACKOFF_MIN, "redialled after {again:?}");
    connected_to(&sidecar, 4).await;
}
