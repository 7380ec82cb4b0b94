//! HTTP features through the sidecar in nftables mode, on a stolen and on an unmatched
//! request alike: chunked request bodies, `Expect: 100-continue`, HTTP/2 response
//! trailers (gRPC's `grpc-status`), and plain TCP through an active port.
//!
//! Needs root; with `SHUNT_REQUIRE_ROOT=1` (CI) a non-root run fails instead of passing.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use shunt_echo::Echo;
use shunt_netns::{root_available, Pod};
use support::*;

const ALICE: &str = "x-user: alice";

/// A pod with the echo app on 8080, a sidecar, and alice's steal route to an echo
/// "developer" in force.
struct World {
    ns: SidecarPod,
    dir: TempDir,
    _alice: Echo,
}

impl std::ops::Deref for World {
    type Target = SidecarPod;

    fn deref(&self) -> &SidecarPod {
        &self.ns
    }
}

async fn world() -> World {
    let pod = Pod::create().unwrap();
    let listener = pod.bind(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    shunt_echo::spawn(tokio::net::TcpListener::from_std(listener).unwrap(), "app").unwrap();
    let ns = SidecarPod::new(pod, "protocols");
    write_routes(&ns.routes, &[]);
    ns.start_sidecar("info");
    let alice = ns.developer("dev-alice").await;
    ns.set_routes(&[route("alice", "steal", Some(ALICE), &alice.addr.to_string())]);
    eventually("alice's route active", Duration::from_secs(5), || {
        (who(&ns.url("/"), Some(ALICE))? == "dev-alice").then_some(())
    });
    World {
        ns,
        dir: TempDir::new("protocols-bodies"),
        _alice: alice,
    }
}

impl World {
    /// A file of `len` bytes to upload.
    fn body_file(&self, len: usize) -> String {
        let path = self.dir.path(&format!("body-{len}"));
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        format!("@{}", path.display())
    }
}

/// The echo server's JSON answer in a curl output.
fn echoed(out: &str) -> serde_json::Value {
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON answer in: {out}"));
    serde_json::from_str(line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_bodies_arrive_whole_on_both_paths() {
    if !root_available("chunked bodies") {
        return;
    }
    let w = world().await;
    let len = 300 * 1024 + 7;
    let file = w.body_file(len);
    for (header, who) in [(Some(ALICE), "dev-alice"), (None, "app")] {
        let mut args = vec!["-v", "-H", "Transfer-Encoding: chunked", "--data-binary", &file];
        if let Some(h) = header {
            args.extend(["-H", h]);
        }
        let url = w.url("/upload");
        args.push(&url);
        let (out, err, ok) = curl(&args);
        assert!(ok, "{err}");
        assert!(err.contains("> Transfer-Encoding: chunked"), "curl sent chunks:\n{err}");
        let answer = echoed(&out);
        assert_eq!(answer["served_by"], who);
        assert_eq!(answer["body_bytes"], len, "the whole chunked body reached {who}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_on_both_paths() {
    if !root_available("expect 100-continue") {
        return;
    }
    let w = world().await;
    let len = 2 * 1024 * 1024;
    let file = w.body_file(len);
    for (header, who) in [(Some(ALICE), "dev-alice"), (None, "app")] {
        // curl waits up to 10 s for "100 Continue" before it sends the body anyway; a
        // sidecar that never answers it shows as a slow request.
        let mut args = vec![
            "-v",
            "--expect100-timeout",
            "10",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &file,
        ];
        if let Some(h) = header {
            args.extend(["-H", h]);
        }
        let url = w.url("/upload");
        args.push(&url);
        let started = Instant::now();
        let (out, err, ok) = curl(&args);
        let took = started.elapsed();
        assert!(ok, "{err}");
        assert!(
            err.contains("< HTTP/1.1 100 Continue"),
            "the client got 100 Continue:\n{err}"
        );
        assert!(took < Duration::from_secs(5), "{who}: took {took:?}");
        let answer = echoed(&out);
        assert_eq!(answer["served_by"], who);
        assert_eq!(answer["body_bytes"], len);
    }
}

/// One HTTP/2 (prior knowledge) request asking the echo server for trailers; the
/// response's trailers.
async fn h2_trailers(addr: &str, header: Option<&str>) -> http::HeaderMap {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::post(format!("http://{addr}/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-echo-trailers", "1");
    if let Some((k, v)) = header.and_then(|h| h.split_once(':')) {
        req = req.header(k.trim(), v.trim());
    }
    let resp = sender
        .send_request(req.body(Empty::<bytes::Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    collected.trailers().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_response_trailers_reach_the_client_on_both_paths() {
    if !root_available("h2 trailers") {
        return;
    }
    let w = world().await;
    for (header, who) in [(Some(ALICE), "dev-alice"), (None, "app")] {
        let trailers = h2_trailers(&w.base, header).await;
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..]),
            "{who}: {trailers:?}"
        );
        assert_eq!(
            trailers.get("x-trailer-served-by").map(|v| v.as_bytes()),
            Some(who.as_bytes()),
            "{trailers:?}"
        );
    }
}

/// Non-HTTP bytes through a port with routes: to the app behind a filtered steal, to
/// the upstream of an unfiltered steal, and back, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_round_trips_through_an_active_port() {
    if !root_available("plain tcp") {
        return;
    }
    let pod = Pod::create().unwrap();
    let listener = pod.bind(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    tcp_echo(tokio::net::TcpListener::from_std(listener).unwrap(), "app");
    let ns = SidecarPod::new(pod, "plain-tcp");
    write_routes(&ns.routes, &[]);
    ns.start_sidecar("info");
    let dev = tokio::net::TcpListener::bind((ns.pod.host_ip, 0)).await.unwrap();
    let dev_addr = dev.local_addr().unwrap().to_string();
    tcp_echo(dev, "dev");
    let alice = ns.developer("dev-alice").await;
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 256) as u8).collect();
    let expect = |name: &str| [format!("{name}:").as_bytes(), &payload[..]].concat();
    const PASSED: &str = "shunt_sidecar_tcp_passthrough_connections_total";

    ns.set_routes(&[route("alice", "steal", Some(ALICE), &alice.addr.to_string())]);
    eventually("port active", Duration::from_secs(5), || {
        (ns.redirecting() && metric(&ns.admin, "shunt_sidecar_active_ports") == 1.0).then_some(())
    });
    let passed = metric(&ns.admin, PASSED);
    let answer = tcp_round_trip(&ns.base, &payload).unwrap();
    assert!(
        answer == expect("app"),
        "the app's echo came back ({} bytes)",
        answer.len()
    );
    assert_eq!(metric(&ns.admin, PASSED), passed + 1.0, "it went through the sidecar");

    ns.set_routes(&[route("all", "steal", None, &dev_addr)]);
    eventually("unfiltered steal in force", Duration::from_secs(5), || {
        let (out, _, _) = curl(&[&format!("http://{}/routes", ns.admin)]);
        out.contains("\"all\"").then_some(())
    });
    let answer = tcp_round_trip(&ns.base, &payload).unwrap();
    assert!(
        answer == expect("dev"),
        "the developer's echo came back ({} bytes)",
        answer.len()
    );
    assert_eq!(metric(&ns.admin, PASSED), passed + 2.0);
}
