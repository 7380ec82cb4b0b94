//! Resource limits of the sidecar in nftables mode (a real pod namespace, the real
//! `shunt-sidecar` process): thousands of idle connections, a request body of several
//! GiB through a stolen route and through the app's path, and 10,000 routes on one port.
//! Each test prints what it measured (`--no-capture` shows it).
//!
//! Needs root; with `SHUNT_REQUIRE_ROOT=1` (CI) a non-root run fails instead of passing.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use shunt_netns::{root_available, Pod};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct World {
    ns: SidecarPod,
    sidecar: u32,
}

impl std::ops::Deref for World {
    type Target = SidecarPod;

    fn deref(&self) -> &SidecarPod {
        &self.ns
    }
}

impl World {
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.sidecar)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap()
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.sidecar)).unwrap().count()
    }
}

/// A pod whose app on 8080 is a [`counter`] named `app`, and a running sidecar.
async fn world() -> World {
    let pod = Pod::create().unwrap();
    let listener = pod.bind(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    counter(TcpListener::from_std(listener).unwrap(), "app");
    let ns = SidecarPod::new(pod, "limits");
    write_routes(&ns.routes, &[]);
    let sidecar = ns.start_sidecar("warn");
    World { ns, sidecar }
}

/// A developer upstream in the root namespace, reachable from the pod.
async fn developer(w: &World, name: &str) -> SocketAddr {
    let listener = TcpListener::bind((w.pod.host_ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    counter(listener, name);
    addr
}

/// An HTTP/1.1 + h2c server that reads every body frame, counts the bytes and drops
/// them (never holds a body), and answers `{"served_by": name, "body_bytes": n}`.
fn counter(listener: TcpListener, name: &str) {
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let name = name.clone();
                    async move {
                        let mut body = req.into_body();
                        let mut n = 0u64;
                        while let Some(Ok(frame)) = body.frame().await {
                            n += frame.data_ref().map_or(0, |d| d.len() as u64);
                        }
                        let json = serde_json::json!({"served_by": &*name, "body_bytes": n});
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(format!("{json}\n")))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// Samples the sidecar's VmRSS every 50 ms until dropped; the largest value seen.
struct RssWatch {
    max: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start(pid: u32) -> RssWatch {
        let (max, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (m, s) = (max.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                    return;
                };
                let rss = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
                    .unwrap_or(0);
                m.fetch_max(rss, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch { max, stop }
    }

    fn max_kib(&self) -> u64 {
        self.max.load(Ordering::SeqCst)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One keep-alive HTTP/1.1 connection: `(served_by, body_bytes)` per request.
struct Client(hyper::client::conn::http1::SendRequest<Empty<Bytes>>);

impl Client {
    async fn connect(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client(sender)
    }

    async fn get(&mut self, path: &str, user: Option<&str>) -> String {
        let mut req = http::Request::get(path).header("host", "api");
        if let Some(user) = user {
            req = req.header("x-user", user);
        }
        self.0.ready().await.unwrap();
        let resp = self.0.send_request(req.body(Empty::new()).unwrap()).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        doc["served_by"].as_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_idle_connections_cost_little_and_leave_with_their_clients() {
    if !root_available("idle connections") {
        return;
    }
    const IDLE: usize = 5_000;
    /// The sidecar's idle upstream pool: 64 connections per destination, two destinations.
    const POOLED: usize = 2 * 64;
    let w = world().await;
    let alice = developer(&w, "dev-alice").await;
    w.set_routes(&[route("alice", "steal", Some("x-user: alice"), &alice.to_string())]);
    eventually("alice's route active", Duration::from_secs(5), || {
        (who(&w.url("/"), Some("x-user: alice"))? == "dev-alice").then_some(())
    });
    let (rss_before, fds_before) = (w.rss_kib(), w.fds());

    // A third send nothing, a third one request for alice, a third one for the app; then
    // they all sit idle with the connection open.
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..IDLE {
        let base = w.base.clone();
        opening.spawn(async move {
            let mut stream = TcpStream::connect(&base).await.unwrap();
            let user = match i % 3 {
                0 => return stream,
                1 => "x-user: alice\r\n",
                _ => "",
            };
            let head = format!("GET /idle/{i} HTTP/1.1\r\nhost: api\r\n{user}\r\n");
            stream.write_all(head.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(2).any(|w| w == b"}\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection {i} closed before its answer");
                seen.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&seen);
            let want = if i % 3 == 1 { "dev-alice" } else { "app" };
            assert!(text.contains(want), "request {i} not served by {want}: {text}");
            stream
        });
        if opening.len() >= 200 {
            idle.push(opening.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(stream) = opening.join_next().await {
        idle.push(stream.unwrap());
    }
    eprintln!("{IDLE} connections opened and answered in {:?}", started.elapsed());
    // The silent third are passed through to the app once sniffing gives up on them (2 s).
    let fds = eventually("every connection held by the sidecar", Duration::from_secs(20), || {
        let fds = w.fds();
        (fds >= fds_before + IDLE + IDLE / 3).then_some(fds)
    });
    let rss = w.rss_kib();
    let per_conn = (rss.saturating_sub(rss_before)) as f64 * 1024.0 / IDLE as f64;
    eprintln!(
        "sidecar with {IDLE} idle connections: VmRSS {rss_before} -> {rss} KiB ({:.1} KiB per connection), fds {fds_before} -> {fds}",
        per_conn / 1024.0
    );
    assert!(
        per_conn < 64.0 * 1024.0,
        "{:.1} KiB per idle connection",
        per_conn / 1024.0
    );

    // Everyone else is answered promptly, and correctly.
    let mut client = Client::connect(&w.base).await;
    let mut slowest = Duration::ZERO;
    for i in 0..50 {
        let user = (i % 2 == 0).then_some("alice");
        let t = Instant::now();
        let served = client.get("/other", user).await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(served, if user.is_some() { "dev-alice" } else { "app" });
    }
    for _ in 0..10 {
        let t = Instant::now();
        assert_eq!(who(&w.url("/fresh"), None).as_deref(), Some("app"));
        slowest = slowest.max(t.elapsed());
    }
    eprintln!("slowest of 60 other requests while they idle: {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "took {slowest:?}");

    // The clients leave: the sidecar lets go of every fd they cost, except the idle
    // upstream connections it pools for reuse (at most 64 per destination: the app and
    // alice's upstream here).
    drop(client);
    drop(idle);
    let started = Instant::now();
    // (Polled without blocking a runtime thread: the app and the developer serve from it.)
    let deadline = started + Duration::from_secs(20);
    let left = loop {
        let fds = w.fds();
        if fds <= fds_before + POOLED + 4 {
            break fds;
        }
        if Instant::now() > deadline {
            let sockets = w.pod.run("ss", &["-tan"]).unwrap_or_default();
            let mut states: std::collections::BTreeMap<String, usize> = Default::default();
            for line in sockets.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let local = cols.get(3).and_then(|a| a.rsplit(':').next()).unwrap_or("");
                *states.entry(format!("{} {local}", cols[0])).or_default() += 1;
            }
            panic!(
                "the sidecar still holds {fds} fds ({fds_before} before) 20 s after every client \
                 closed; the pod's sockets by state and local port: {states:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "all closed: fds {left} ({fds_before} before) after {:?}; VmRSS {} KiB",
        started.elapsed(),
        w.rss_kib()
    );
}

/// Sends a `len`-byte POST body (a repeated 1 MiB block, never the whole body) on a
/// fresh connection; the JSON answer.
async fn post_huge(base: &str, user: Option<&str>, len: u64) -> serde_json::Value {
    let mut stream = TcpStream::connect(base).await.unwrap();
    let user = user.map(|u| format!("x-user: {u}\r\n")).unwrap_or_default();
    let head =
        format!("POST /upload HTTP/1.1\r\nhost: api\r\n{user}content-length: {len}\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let block: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        stream.write_all(&block[..n]).await.unwrap();
        left -= n as u64;
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_gigabytes_streams_through_with_flat_memory() {
    if !root_available("huge body") {
        return;
    }
    // 4 GiB through the stolen route, 4 GiB through the app's path. Both ends count and
    // drop the bytes; the sidecar must not hold them either.
    const STOLEN: u64 = 4 << 30;
    const TO_APP: u64 = 4 << 30;
    let w = world().await;
    let alice = developer(&w, "dev-alice").await;
    w.set_routes(&[route("alice", "steal", Some("x-user: alice"), &alice.to_string())]);
    eventually("alice's route active", Duration::from_secs(5), || {
        (who(&w.url("/"), Some("x-user: alice"))? == "dev-alice").then_some(())
    });
    let before = w.rss_kib();
    let watch = RssWatch::start(w.sidecar);

    let t = Instant::now();
    let answer = post_huge(&w.base, Some("alice"), STOLEN).await;
    let took = t.elapsed();
    assert_eq!(answer["served_by"], "dev-alice");
    assert_eq!(answer["body_bytes"], STOLEN, "every byte reached the developer");
    eprintln!(
        "{} GiB to the developer in {took:?} ({:.0} MiB/s); sidecar VmRSS {before} KiB before, max {} KiB",
        STOLEN >> 30,
        STOLEN as f64 / 1048576.0 / took.as_secs_f64(),
        watch.max_kib()
    );

    let t = Instant::now();
    let answer = post_huge(&w.base, None, TO_APP).await;
    let took = t.elapsed();
    assert_eq!(answer["served_by"], "app");
    assert_eq!(answer["body_bytes"], TO_APP, "every byte reached the app");
    let max = watch.max_kib();
    eprintln!(
        "{} GiB to the app in {took:?} ({:.0} MiB/s); sidecar VmRSS max over both {max} KiB (+{} KiB)",
        TO_APP >> 30,
        TO_APP as f64 / 1048576.0 / took.as_secs_f64(),
        max - before
    );
    assert!(
        max < before + 64 * 1024,
        "VmRSS grew from {before} to {max} KiB while streaming"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_routes_on_one_port_load_and_route_in_bounded_time() {
    if !root_available("10,000 routes") {
        return;
    }
    const ROUTES: usize = 10_000;
    let w = world().await;
    let (most, last) = (developer(&w, "dev-most").await, developer(&w, "dev-last").await);

    // Latency with one route, for comparison.
    w.set_routes(&[route("u00000", "steal", Some("x-user: u00000"), &most.to_string())]);
    eventually("one route active", Duration::from_secs(5), || {
        (who(&w.url("/"), Some("x-user: u00000"))? == "dev-most").then_some(())
    });
    let one = latency(&w, "u00000", "dev-most").await;

    let routes: Vec<serde_json::Value> = (0..ROUTES)
        .map(|i| {
            let id = format!("u{i:05}");
            let upstream = if i == ROUTES - 1 { last } else { most };
            route(&id, "steal", Some(&format!("x-user: {id}")), &upstream.to_string())
        })
        .collect();
    let rss_before = w.rss_kib();
    let t = Instant::now();
    write_routes(&w.routes, &routes);
    let last_id = format!("u{:05}", ROUTES - 1);
    eventually("the 10,000th route routes", Duration::from_secs(60), || {
        (who(&w.url("/"), Some(&format!("x-user: {last_id}")))? == "dev-last").then_some(())
    });
    let loaded = t.elapsed();
    wait_routes(&w.admin, ROUTES);
    eprintln!(
        "{ROUTES} routes loaded and in force in {loaded:?}; sidecar VmRSS {rss_before} -> {} KiB",
        w.rss_kib()
    );
    assert!(loaded < Duration::from_secs(30), "took {loaded:?}");

    let many = latency(&w, &last_id, "dev-last").await;
    eprintln!(
        "per request over one keep-alive connection (median / p99): 1 route {:?} / {:?}; {ROUTES} routes {:?} / {:?} (last route); unmatched {:?} / {:?}",
        one.0, one.1, many.0, many.1, many.2, many.3
    );
    assert!(many.1 < Duration::from_millis(250), "p99 {:?}", many.1);
    assert!(many.3 < Duration::from_millis(250), "p99 {:?}", many.3);
}

/// Median and p99 of 200 requests for `user` (must reach `dev`) and of 200 unmatched ones
/// (must reach the app), over one keep-alive connection.
async fn latency(w: &World, user: &str, dev: &str) -> (Duration, Duration, Duration, Duration) {
    let mut client = Client::connect(&w.base).await;
    let matched = timed(&mut client, Some(user), dev).await;
    let unmatched = timed(&mut client, None, "app").await;
    (matched.0, matched.1, unmatched.0, unmatched.1)
}

/// Median and p99 of 200 requests on `client`, each checked to reach `want`.
async fn timed(client: &mut Client, user: Option<&str>, want: &str) -> (Duration, Duration) {
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        assert_eq!(client.get("/lat", user).await, want);
        times.push(t.elapsed());
    }
    times.sort();
    (times[100], times[198])
}
