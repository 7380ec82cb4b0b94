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

use shunt_netns::root_available;
use support::world::*;
use support::*;

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

    // A request that repeats the header matches both steals: it belongs to nobody.
    let (out, _, ok) = curl(&["-H", "x-user: alice", "-H", "x-user: bob", &w.url("/both")]);
    assert!(ok);
    assert_eq!(served_by(&out), ["app"], "ambiguous request served by the app");
    assert_eq!(
        metric(
            &w.admin,
            "shunt_sidecar_requests_total{route=\"none\",port=\"8080\",outcome=\"ambiguous\"}"
        ),
        1.0
    );

    // While routes are active the lease is renewed every second.
    const RENEWALS: &str = "shunt_sidecar_lease_renewals_total{result=\"ok\"}";
    let renewed = metric(&w.admin, RENEWALS);
    eventually("two more lease renewals", Duration::from_secs(5), || {
        (metric(&w.admin, RENEWALS) >= renewed + 2.0).then_some(())
    });
    assert!(w.listening(15080), "the proxy listens while routes exist");

    // The last route removed: the set is emptied, then the proxy listener closes.
    w.set_routes(&[]);
    let removed = Instant::now();
    eventually("proxy listener closed", Duration::from_secs(5), || {
        (!w.listening(15080)).then_some(())
    });
    eprintln!(
        "proxy listener closed {:?} after the last route went",
        removed.elapsed()
    );
    assert!(!w.redirecting());
    assert_eq!(who(&w.url("/"), ALICE).as_deref(), Some("app"));
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

/// A developer server that accepts connections and closes them without answering: at
/// once, or (`read_head`) after reading the request head. It counts the connections.
fn closing_upstream(
    ip: std::net::Ipv4Addr,
    read_head: bool,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if read_head {
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            }
        }
    });
    (addr, accepted)
}

/// A developer upstream that accepts and closes before any response byte: a GET (safe,
/// no body) is served by the app and counted as failed open, not answered with 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_that_closes_without_answering_fails_open_for_safe_requests() {
    if !root_available("upstream closes") {
        return;
    }
    let w = world(true).await;
    for (id, read_head) in [("closes-at-once", false), ("closes-after-head", true)] {
        let (addr, accepted) = closing_upstream(w.pod.host_ip, read_head);
        w.set_routes(&[route(id, "steal", ALICE, &addr.to_string())]);
        eventually("route in force", Duration::from_secs(5), || {
            let (out, _, _) = curl(&[&format!("http://{}/routes", w.admin)]);
            (out.contains(id) && metric(&w.admin, "shunt_sidecar_active_ports") == 1.0).then_some(())
        });
        let failed_open =
            format!("shunt_sidecar_requests_total{{route=\"{id}\",port=\"8080\",outcome=\"failed_open\"}}");
        let before = metric(&w.admin, &failed_open);
        for _ in 0..3 {
            let (out, err, ok) = curl(&["-H", "x-user: alice", &w.url("/get")]);
            assert!(ok, "read_head={read_head}: {err}");
            assert_eq!(served_by(&out), ["app"], "read_head={read_head}: {out}");
        }
        let seen = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert!(seen >= 3, "the developer's server saw {seen} connections");
        assert_eq!(metric(&w.admin, &failed_open) - before, 3.0, "read_head={read_head}");
    }
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

    // Garbage: not HTTP, passed through to the app, which refuses it. The connection is
    // closed (or answered 4xx) at once, not left hanging.
    let sent = Instant::now();
    let mut garbage = TcpStream::connect(&w.base).unwrap();
    garbage.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 0x80)
        .collect();
    garbage.write_all(&bytes).unwrap();
    let mut answer = Vec::new();
    match garbage.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the garbage connection was neither answered nor closed: {e}"),
    }
    let head = String::from_utf8_lossy(&answer[..answer.len().min(12)]).into_owned();
    assert!(
        answer.is_empty() || head.starts_with("HTTP/1.1 4"),
        "garbage gets a 4xx or nothing: {head:?}"
    );
    eprintln!("garbage: closed after {:?} ({head:?})", sent.elapsed());

    // Slowloris: ten clients trickle a request head, one byte at a time; each is closed
    // once the header read timeout (10 s) passes, however it trickles.
    let opened = Instant::now();
    let mut slow: Vec<TcpStream> = (0..10).map(|_| TcpStream::connect(&w.base).unwrap()).collect();
    let closed_after: Vec<_> = slow
        .iter()
        .map(|s| {
            let mut reader = s.try_clone().unwrap();
            reader.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let result = reader.read_to_end(&mut sink);
                let closed = match result {
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
                };
                closed.then(|| opened.elapsed())
            })
        })
        .collect();
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
    // Keep trickling until the sidecar closes them (or clearly failed to).
    while !closed_after.iter().all(|t| t.is_finished()) && opened.elapsed() < Duration::from_secs(16) {
        for s in &mut slow {
            let _ = s.write_all(b"c");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut latest = Duration::ZERO;
    for (i, t) in closed_after.into_iter().enumerate() {
        let closed = t.join().unwrap();
        let after = closed.unwrap_or_else(|| panic!("slowloris connection {i} was not closed"));
        assert!(
            after <= Duration::from_secs(12),
            "slowloris connection {i} closed after {after:?}; header read timeout is 10 s"
        );
        latest = latest.max(after);
    }
    eprintln!("slowloris: all 10 connections closed within {latest:?}");
    let (out, _, _) = curl(&[&w.url("/")]);
    assert_eq!(served_by(&out), ["app"]);
    assert!(
        curl(&["-f", &format!("http://{}/healthz", w.admin)]).2,
        "sidecar still up"
    );
}
