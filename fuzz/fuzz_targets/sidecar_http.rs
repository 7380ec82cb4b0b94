//! The sidecar's HTTP entry: arbitrary bytes as one client connection into the real
//! proxy (`shunt_sidecar::proxy::accept_loop`, port-takeover listeners on loopback), with
//! a fixed route table and loopback servers behind it.
//!
//! Input: the first byte picks the app port (even: port A with two filtered steals, one
//! to the hub, and a mirror; odd: port B with an unfiltered steal), the rest is what the
//! client sends before it half-closes. Invariants: no panic (libfuzzer-sys's panic hook
//! aborts on a panic in any thread, so also in a connection task); the sidecar closes the connection within [`CLOSE_BOUND`] of
//! the client's half-close, and then no proxy connection is left open. libFuzzer's
//! `-rss_limit_mb` bounds the memory of the whole run.
#![no_main]

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use libfuzzer_sys::fuzz_target;
use shunt_proto::route::RouteSet;
use shunt_sidecar::metrics::Metrics;
use shunt_sidecar::proxy::{self, sniff, PortSource, Shared};
use shunt_sidecar::table::Table;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};

/// Longest the sidecar may take to close a connection after the client's half-close.
const CLOSE_BOUND: Duration = Duration::from_secs(10);
/// Bytes `sniff` looks at before it decides.
const SNIFF_BYTES: usize = 32;

struct Harness {
    runtime: Runtime,
    /// The drain channel's sender as `Shared` holds it: every connection task holds a
    /// clone until it ends, so the strong count tells how many are open.
    live: mpsc::WeakSender<()>,
    /// Takeover listeners for port A and port B.
    entries: [SocketAddr; 2],
    /// Held for the life of the process so that the table, the shutdown signal, the
    /// listeners' stop signals and the drain channel stay open.
    _keep: Keep,
}

struct Keep {
    _table: watch::Sender<Arc<Table>>,
    _shutdown: watch::Sender<bool>,
    _stops: Vec<watch::Sender<bool>>,
    _drained: mpsc::Receiver<()>,
}

impl Harness {
    /// Proxy connections whose task has not ended.
    fn open_connections(&self) -> usize {
        // `Shared` holds one sender itself.
        self.live.strong_count().saturating_sub(1)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&select, payload)) = data.split_first() else {
        return;
    };
    // The sidecar waits up to 2 s for a client that has sent only part of a method or of
    // the h2 preface, then passes it through as TCP; `classify` is that decision, so
    // such inputs would only cost time.
    let head = &payload[..payload.len().min(SNIFF_BYTES)];
    if !payload.is_empty() && sniff::classify(head).is_none() {
        return;
    }
    let harness = harness();
    let entry = harness.entries[usize::from(select & 1)];
    harness.runtime.block_on(async {
        match tokio::time::timeout(CLOSE_BOUND, exchange(entry, payload)).await {
            Ok(Ok(())) => {}
            // A reset is a legitimate end of a connection with bad input.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(Err(e)) => panic!("client I/O failed: {e}"),
            Err(_) => panic!("the sidecar kept the connection open {CLOSE_BOUND:?} after the client's half-close"),
        }
        let deadline = tokio::time::Instant::now() + CLOSE_BOUND;
        while harness.open_connections() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} proxy connection(s) still served {CLOSE_BOUND:?} after the client closed",
                harness.open_connections()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
});

/// Sends `payload`, half-closes, and reads until the sidecar closes.
async fn exchange(entry: SocketAddr, payload: &[u8]) -> std::io::Result<()> {
    let stream = TcpStream::connect(entry).await?;
    stream.set_nodelay(true)?;
    let (mut read, mut write) = stream.into_split();
    let send = async {
        write.write_all(payload).await?;
        write.shutdown().await
    };
    let receive = async {
        let mut buf = vec![0u8; 64 * 1024];
        while read.read(&mut buf).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let (sent, received) = tokio::join!(send, receive);
    // The sidecar may close before it has read everything: only the read side counts then.
    received.and(sent.or_else(|e| match e.kind() {
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => Ok(()),
        _ => Err(e),
    }))
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        ignore_sigpipe();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (live, entries, keep) = runtime.block_on(start());
        Harness {
            runtime,
            live,
            entries,
            _keep: keep,
        }
    })
}

async fn start() -> (mpsc::WeakSender<()>, [SocketAddr; 2], Keep) {
    let app_a = server("app-a").await;
    let app_b = server("app-b").await;
    let dev = server("dev").await;
    let mirror = server("mirror").await;
    let (a, b) = (app_a.port(), app_b.port());
    let routes = format!(
        r#"{{"routes": [
            {{"id": "alice", "port": {a}, "mode": "steal", "filter": "x-user: alice", "upstream": "http://{dev}"}},
            {{"id": "bob", "port": {a}, "mode": "steal", "filter": "x-user: bob && path: ~^/api/", "upstream": "hub"}},
            {{"id": "carol", "port": {a}, "mode": "mirror", "filter": "x-user: ~^m", "upstream": "http://{mirror}"}},
            {{"id": "all", "port": {b}, "mode": "steal", "upstream": "http://{dev}"}}
        ]}}"#
    );
    let set = RouteSet::from_json(routes.as_bytes()).expect("the harness's routes are valid");
    let metrics = Metrics::default();
    let (table_tx, table) = watch::channel(Arc::new(Table::new(set, &metrics)));
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (live, drained) = mpsc::channel(1);
    let weak = live.downgrade();
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let shared = Arc::new(Shared::new(table, metrics, loopback, &[a, b], shutdown, live));
    let (mut entries, mut stops) = (Vec::new(), Vec::new());
    for port in [a, b] {
        let listener = TcpListener::bind((loopback, 0)).await.expect("a loopback port");
        entries.push(listener.local_addr().expect("a bound address"));
        let (stop_tx, stop) = watch::channel(false);
        stops.push(stop_tx);
        tokio::spawn(proxy::accept_loop(
            shared.clone(),
            listener,
            PortSource::Fixed(port),
            stop,
        ));
    }
    let keep = Keep {
        _table: table_tx,
        _shutdown: shutdown_tx,
        _stops: stops,
        _drained: drained,
    };
    (weak, [entries[0], entries[1]], keep)
}

/// A loopback HTTP/1.1 + h2c server that answers every request at once with its name
/// (an echo server's slow endpoints would turn fuzzed paths into hangs of the app).
async fn server(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |_req| async move {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(name.as_bytes()))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// What Rust's `main` does before any code runs: a write to a socket the peer closed is
/// an `EPIPE` error, not a fatal signal. libFuzzer's own `main` leaves SIGPIPE fatal.
fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it
    // runs once, before the harness starts any thread that writes to a socket.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
