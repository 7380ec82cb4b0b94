//! The sidecar in nftables mode, in a real network namespace ("pod"): a real app on
//! port 8080 inside, the real `shunt-sidecar` process next to it, developer upstreams
//! in the root namespace, and real clients (curl, h2load, Python) outside.
//!
//! Needs root; with `SHUNT_REQUIRE_ROOT=1` (CI) a non-root run fails instead of passing.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use shunt_echo::Echo;
use shunt_netns::{root_available, Pod};
use support::*;

struct World {
    ns: SidecarPod,
    sidecar: u32,
    app: Option<Echo>,
}

impl std::ops::Deref for World {
    type Target = SidecarPod;

    fn deref(&self) -> &SidecarPod {
        &self.ns
    }
}

impl World {
    /// An echo server in the root namespace, reachable from the pod: a "developer".
    async fn developer(&self, name: &str) -> Echo {
        let listener = tokio::net::TcpListener::bind((self.pod.host_ip, 0)).await.unwrap();
        shunt_echo::spawn(listener, name).unwrap()
    }

    fn has_table(&self) -> bool {
        self.pod.nft_ruleset().unwrap().contains("table inet shunt")
    }

    /// Ports are in the redirect set (a dormant sidecar's set is empty).
    fn redirecting(&self) -> bool {
        self.pod.nft_ruleset().unwrap().contains("elements = {")
    }
}

/// A pod with the echo app on 8080 (or none, for tests that bring their own app).
async fn world(with_app: bool) -> World {
    let pod = Pod::create().unwrap();
    let app = if with_app {
        let listener = pod.bind(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
        Some(shunt_echo::spawn(tokio::net::TcpListener::from_std(listener).unwrap(), "app").unwrap())
    } else {
        None
    };
    let ns = SidecarPod::new(pod, "netns");
    let sidecar = ns.start_sidecar("info");
    World { ns, sidecar, app }
}

/// Curl arguments for one keep-alive connection carrying one request per header.
fn keep_alive_args(url: &str, headers: &[Option<&str>], extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            args.push("--next".to_owned());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(h) = h {
            args.extend(["-H".to_owned(), h.to_string()]);
        }
        args.push(url.to_owned());
    }
    args
}

fn curl_owned(args: &[String]) -> (String, String, bool) {
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

const ALICE: Option<&str> = Some("x-user: alice");
const BOB: Option<&str> = Some("x-user: bob");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dormant_sidecar_leaves_traffic_and_ruleset_alone() {
    if !root_available("dormant") {
        return;
    }
    let w = world(true).await;
    let (out, _, ok) = curl_owned(&keep_alive_args(&w.url("/"), &[None, ALICE, BOB, None], &[]));
    assert!(ok);
    assert_eq!(served_by(&out), ["app", "app", "app", "app"]);
    // The table is there from the start (connection tracking must not switch on and off
    // under live connections), but its set is empty: nothing is redirected.
    eventually("table installed", Duration::from_secs(5), || {
        w.has_table().then_some(())
    });
    assert!(
        !w.redirecting(),
        "a dormant sidecar redirects no port:\n{}",
        w.pod.nft_ruleset().unwrap()
    );
    let listening = w.pod.run("ss", &["-Hltn"]).unwrap();
    assert!(
        !listening.contains(":15080"),
        "no proxy listener while dormant:\n{listening}"
    );
    assert_eq!(metric(&w.admin, "shunt_sidecar_active_ports"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steal_routes_exactly_the_matching_requests_over_http1_and_http2() {
    if !root_available("steal") {
        return;
    }
    let w = world(true).await;
    let alice = w.developer("dev-alice").await;
    w.set_routes(&[route("alice", "steal", Some("x-user: alice"), &alice.addr.to_string())]);
    eventually("alice's route active", Duration::from_secs(5), || {
        (who(&w.url("/"), ALICE)? == "dev-alice").then_some(())
    });
    assert!(
        w.pod.nft_ruleset().unwrap().contains("8080 timeout"),
        "the port is a leased set element"
    );

    // HTTP/1.1 keep-alive: every request on the one connection is routed on its own.
    let pattern = [ALICE, None, ALICE, BOB, None, ALICE];
    let (out, err, ok) = curl_owned(&keep_alive_args(&w.url("/x"), &pattern, &["-v"]));
    assert!(ok, "{err}");
    assert_eq!(
        served_by(&out),
        ["dev-alice", "app", "dev-alice", "app", "app", "dev-alice"]
    );
    assert!(
        err.matches("Re-using existing connection").count() >= 5,
        "one connection:\n{err}"
    );

    // The app sees the request as sent, plus x-forwarded-for.
    let (out, _, _) = curl(&["-H", "x-user: bob", "-H", "x-custom: 1", &w.url("/p?q=1")]);
    let echoed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(echoed["path"], "/p");
    assert_eq!(echoed["headers"]["x-custom"], "1");
    assert_eq!(echoed["headers"]["x-forwarded-for"], w.pod.host_ip.to_string());

    // HTTP/2 with prior knowledge: each stream of one connection is routed on its own.
    let served = h2_multiplexed(&w.base, "/h2", &pattern).await;
    assert_eq!(served, ["dev-alice", "app", "dev-alice", "app", "app", "dev-alice"]);
    let (out, _, ok) = curl(&["--http2-prior-knowledge", "-H", "x-user: alice", &w.url("/h2")]);
    assert!(
        ok && out.contains("\"version\":\"HTTP/2.0\""),
        "curl over h2c reaches alice with HTTP/2: {out}"
    );
    let (alice_before, app_before) = (alice.count(), w.app.as_ref().unwrap().count());
    h2load(&[
        "-n",
        "200",
        "-c",
        "4",
        "-m",
        "8",
        "-H",
        "x-user: alice",
        &w.url("/load"),
    ]);
    h2load(&["-n", "100", "-c", "2", "-m", "8", "-H", "x-user: bob", &w.url("/load")]);
    assert_eq!(alice.count() - alice_before, 200);
    assert_eq!(w.app.as_ref().unwrap().count() - app_before, 100);

    // Removing the route restores the direct path: the set is emptied, the table stays.
    w.set_routes(&[]);
    eventually("redirect emptied", Duration::from_secs(5), || {
        (!w.redirecting()).then_some(())
    });
    assert!(w.has_table());
    assert_eq!(who(&w.url("/"), ALICE).as_deref(), Some("app"));
}

fn h2load(args: &[&str]) {
    let out = std::process::Command::new("h2load")
        .args(args)
        .output()
        .expect("h2load is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("0 failed, 0 errored"),
        "h2load: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_steals_and_a_mirror_share_one_port() {
    if !root_available("steal+mirror") {
        return;
    }
    let w = world(true).await;
    let (alice, bob, carol) = (
        w.developer("dev-alice").await,
        w.developer("dev-bob").await,
        w.developer("carol").await,
    );
    w.set_routes(&[
        route("alice", "steal", Some("x-user: alice"), &alice.addr.to_string()),
        route("bob", "steal", Some("x-user: bob"), &bob.addr.to_string()),
        route("carol", "mirror", None, &carol.addr.to_string()),
    ]);
    eventually("routes active", Duration::from_secs(5), || {
        (who(&w.url("/"), BOB)? == "dev-bob").then_some(())
    });
    let carol_before = carol.count();
    let pattern: Vec<Option<&str>> = (0..30).map(|i| [ALICE, BOB, None][i % 3]).collect();
    let (out, _, ok) = curl_owned(&keep_alive_args(&w.url("/m"), &pattern, &[]));
    assert!(ok);
    let expected: Vec<&str> = (0..30).map(|i| ["dev-alice", "dev-bob", "app"][i % 3]).collect();
    assert_eq!(served_by(&out), expected);
    // Every request, whoever served it, was copied to carol.
    eventually("30 mirror copies", Duration::from_secs(5), || {
        (carol.count() - carol_before == 30).then_some(())
    });
    assert_eq!(metric(&w.admin, "shunt_sidecar_mirror_copies_dropped_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_follow_the_route_of_the_upgrade_request() {
    if !root_available("websocket") {
        return;
    }
    let w = world(false).await;
    w.pod
        .spawn({
            let mut cmd = w.pod.command("python3");
            cmd.args([ws_script(), "server", "0.0.0.0", "8080", "app"]);
            cmd
        })
        .unwrap();
    let dev_port = std::net::TcpListener::bind((w.pod.host_ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut dev = std::process::Command::new("python3")
        .args([
            ws_script(),
            "server",
            &w.pod.host_ip.to_string(),
            &dev_port.to_string(),
            "dev-alice",
        ])
        .spawn()
        .unwrap();
    let _kill_dev = KillOnDrop(&mut dev);
    let dev_addr = format!("{}:{dev_port}", w.pod.host_ip);
    eventually("websocket servers listening", Duration::from_secs(10), || {
        (TcpStream::connect(&w.base).is_ok() && TcpStream::connect(&dev_addr).is_ok()).then_some(())
    });
    w.set_routes(&[route("alice", "steal", Some("x-user: alice"), &dev_addr)]);
    let url = format!("ws://{}/chat", w.base);
    eventually("alice's upgrade reaches her", Duration::from_secs(10), || {
        (ws_client(&url, ALICE) == "dev-alice: hello").then_some(())
    });
    assert_eq!(ws_client(&url, None), "app: hello");
    assert_eq!(ws_client(&url, BOB), "app: hello");
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sidecar_fails_open_within_the_lease_and_restarts_clean() {
    if !root_available("kill -9") {
        return;
    }
    let mut w = world(true).await;
    let alice = w.developer("dev-alice").await;
    w.set_routes(&[route("alice", "steal", Some("x-user: alice"), &alice.addr.to_string())]);
    eventually("alice's route active", Duration::from_secs(5), || {
        (who(&w.url("/"), ALICE)? == "dev-alice").then_some(())
    });

    w.pod.kill9(w.sidecar);
    let killed = Instant::now();
    // No cleanup step runs: the kernel expires the lease and the app gets the port back.
    eventually("app serves alice again", Duration::from_secs(8), || {
        (who(&w.url("/"), ALICE)? == "app").then_some(())
    });
    let recovered = killed.elapsed();
    eprintln!("fail-open after kill -9: {recovered:?} (lease 3s)");
    assert!(
        recovered <= Duration::from_millis(4500),
        "took {recovered:?}, lease is 3s"
    );
    assert_eq!(who(&w.url("/"), None).as_deref(), Some("app"));
    assert!(w.has_table(), "the dead sidecar's (now empty) table is still there");

    // A new sidecar replaces the stale table with an empty one before anything else,
    // then follows the file.
    write_routes(&w.routes, &[]);
    w.sidecar = w.start_sidecar("info");
    assert!(
        w.has_table() && !w.redirecting(),
        "restarted sidecar starts clean:\n{}",
        w.pod.nft_ruleset().unwrap()
    );
    w.set_routes(&[route("alice", "steal", Some("x-user: alice"), &alice.addr.to_string())]);
    eventually("route active again", Duration::from_secs(5), || {
        (who(&w.url("/"), ALICE)? == "dev-alice").then_some(())
    });

    // A clean stop (SIGTERM) removes the table at once.
    let status = w.pod.terminate(w.sidecar).unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!w.has_table());
    assert_eq!(who(&w.url("/"), ALICE).as_deref(), Some("app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_developer_who_is_down_are_served_by_the_app() {
    if !root_available("upstream down") {
        return;
    }
    let w = world(true).await;
    let closed = std::net::TcpListener::bind((w.pod.host_ip, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    // Nothing listens there any more: connections are refused.
    w.set_routes(&[route("alice", "steal", Some("x-user: alice"), &closed.to_string())]);
    eventually("redirect active", Duration::from_secs(5), || {
        w.redirecting().then_some(())
    });
    eventually("route in force", Duration::from_secs(5), || {
        (metric(&w.admin, "shunt_sidecar_active_ports") == 1.0).then_some(())
    });
    let (out, _, ok) = curl(&["-H", "x-user: alice", "--data-binary", "payload", &w.url("/post")]);
    assert!(ok);
    let echoed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(echoed["served_by"], "app");
    assert_eq!(echoed["body_bytes"], 7, "the body reached the app intact");
    let failed_open = metric(
        &w.admin,
        "shunt_sidecar_requests_total{route=\"alice\",port=\"8080\",outcome=\"failed_open\"}",
    );
    assert!(failed_open >= 1.0, "failed_open counted: {failed_open}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_slowloris_and_huge_headers_do_not_hurt_other_clients() {
    if !root_available("hostile clients") {
        return;
    }
    let w = world(true).await;
    let alice = w.developer("dev-alice").await;
    w.set_routes(&[route("alice", "steal", Some("x-user: alice"), &alice.addr.to_string())]);
    eventually("route active", Duration::from_secs(5), || {
        (who(&w.url("/"), ALICE)? == "dev-alice").then_some(())
    });

    // Garbage: not HTTP, passed through to the app, which closes on it.
    let mut garbage = TcpStream::connect(&w.base).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    garbage.write_all(&bytes).unwrap();
    let mut sink = Vec::new();
    let closed = garbage.read_to_end(&mut sink).is_ok() || sink.is_empty();
    assert!(closed, "the garbage connection is closed");

    // Slowloris: ten clients trickle a request head, one byte at a time.
    let mut slow: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(&w.base).unwrap()).collect();
    for s in &mut slow {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nx-user: al").unwrap();
    }
    // Oversized head: 100 KiB of header is refused with 431.
    let big = format!("x-big: {}", "a".repeat(100 * 1024));
    let (code, _, _) = curl(&["-w", "%{http_code}", "-H", "x-user: alice", "-H", &big, &w.url("/")]);
    let tail = &code[code.len().saturating_sub(200)..];
    assert!(
        code.ends_with("431"),
        "a 100 KiB head is refused with 431, got: …{tail}"
    );
    // Meanwhile everyone else is served, correctly routed.
    for _ in 0..10 {
        for s in &mut slow {
            let _ = s.write_all(b"i");
        }
        assert_eq!(who(&w.url("/"), ALICE).as_deref(), Some("dev-alice"));
        assert_eq!(who(&w.url("/"), None).as_deref(), Some("app"));
    }
    assert!(
        curl(&["-f", &format!("http://{}/healthz", w.admin)]).2,
        "sidecar still up"
    );
}

/// A client process sending GETs on fresh connections (every other one with alice's
/// header) until its stdin closes; it prints `sent N` and one line per failure.
const CHURN_CLIENT: &str = r#"
import socket, sys, threading
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
host, port = sys.argv[1].rsplit(":", 1)
n = 0
while not stop.is_set():
    header = "x-user: alice\r\n" if n % 2 else ""
    try:
        s = socket.create_connection((host, int(port)), timeout=3)
        s.sendall(("GET / HTTP/1.1\r\nhost: pod\r\n%sconnection: close\r\n\r\n" % header).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        if not (data.startswith(b"HTTP/1.") and data[8:13] == b" 200 "):
            print("failed: answer %r" % data[:80], flush=True)
    except Exception as e:
        print("failed: %s" % e, flush=True)
    n += 1
print("sent %d" % n, flush=True)
"#;

/// Routes coming and going under a stream of fresh connections lose nothing. Each
/// activation used to switch the kernel's connection tracking on under live connections
/// and lose about one request in three to five activations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_coming_and_going_under_load_lose_no_request() {
    if !root_available("route churn") {
        return;
    }
    // The app is a process of its own, as in a real pod (an in-process app shares the
    // test's scheduler, which hides the timing this test is about).
    let w = world(false).await;
    let mut app = w.pod.command("python3");
    app.args(["-m", "http.server", "--bind", "0.0.0.0", "8080"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    w.pod.spawn(app).unwrap();
    eventually("app listening", Duration::from_secs(10), || {
        w.pod
            .run("ss", &["-Hltn", "sport = :8080"])
            .ok()
            .filter(|s| s.contains("8080"))
    });
    let alice = w.developer("dev-alice").await;
    let mut client = std::process::Command::new("python3")
        .args(["-c", CHURN_CLIENT, &w.base])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the client");
    const ACTIVATIONS: usize = 10;
    let on = [route("alice", "steal", ALICE, &alice.addr.to_string())];
    for _ in 0..ACTIVATIONS {
        w.set_routes(&on);
        eventually("redirecting", Duration::from_secs(5), || w.redirecting().then_some(()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.set_routes(&[]);
        eventually("emptied", Duration::from_secs(5), || (!w.redirecting()).then_some(()));
        // Past the listener's linger and the old drain, so each activation starts from
        // dormant (where the table used to be deleted).
        tokio::time::sleep(Duration::from_millis(2200)).await;
    }
    drop(client.stdin.take());
    let out = tokio::task::spawn_blocking(move || client.wait_with_output().unwrap())
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let failures: Vec<&str> = out.lines().filter(|l| l.starts_with("failed")).collect();
    let sent: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("sent "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the client did not finish: {out}"));
    eprintln!(
        "route churn: {sent} requests over {ACTIVATIONS} activations, {} failed",
        failures.len()
    );
    assert!(sent > 1000, "the client sent only {sent} requests");
    assert!(failures.is_empty(), "{} of {sent} failed: {failures:?}", failures.len());
}
