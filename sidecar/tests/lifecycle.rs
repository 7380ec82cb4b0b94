//! A sidecar's life in a real pod namespace (nftables mode): `kill -9` fails open
//! within the lease with no cleanup step, a restart starts from a clean table, and
//! `/readyz` waits for the first install.
//!
//! Needs root; with `SHUNT_REQUIRE_ROOT=1` (CI) a non-root run fails instead of passing.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shunt_netns::{root_available, Pod};
use support::world::*;
use support::*;

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

    // A sidecar killed while its lease still runs leaves a live element behind (a long
    // lease makes sure it outlives the restart). The next sidecar, started at once as a
    // restarting container is, replaces that table before it reports ready.
    let alice_route = route("alice", "steal", ALICE, &alice.addr.to_string());
    w.sidecar = w.start_sidecar_with("info", &[("SHUNT_LEASE_SECONDS", "30")]);
    w.set_routes(std::slice::from_ref(&alice_route));
    eventually("alice's route active again", Duration::from_secs(5), || {
        (who(&w.url("/"), ALICE)? == "dev-alice").then_some(())
    });
    w.pod.kill9(w.sidecar);
    assert!(
        w.redirecting(),
        "the killed sidecar's element outlives it:\n{}",
        w.pod.nft_ruleset().unwrap()
    );
    write_routes(&w.routes, &[]);
    let restarted = Instant::now();
    w.sidecar = w.start_sidecar("info");
    let ready = restarted.elapsed();
    assert!(
        w.has_table() && !w.redirecting(),
        "a restarted sidecar is ready only with a clean table:\n{}",
        w.pod.nft_ruleset().unwrap()
    );
    eprintln!("restart with a stale element: ready and clean after {ready:?}");
    assert!(ready <= Duration::from_secs(2), "took {ready:?}");
    assert_eq!(who(&w.url("/"), ALICE).as_deref(), Some("app"));
    w.set_routes(&[alice_route]);
    eventually("route active after the restart", Duration::from_secs(5), || {
        (who(&w.url("/"), ALICE)? == "dev-alice").then_some(())
    });

    // A clean stop (SIGTERM) removes the table at once.
    let status = w.pod.terminate(w.sidecar).unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!w.has_table());
    assert_eq!(who(&w.url("/"), ALICE).as_deref(), Some("app"));
}

/// A stale table of a previous sidecar, as `nft -f` input: port 8080 redirected to the
/// proxy port for a minute, with nothing listening there.
const STALE_TABLE: &str = "table inet shunt {
  set steal_ports { type inet_service; flags timeout; elements = { 8080 timeout 60s } }
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    tcp flags & (syn | ack) == syn tcp dport @steal_ports redirect to :15080
  }
}
";

/// `nft` that takes two seconds the first time it runs, as on a loaded node.
const SLOW_NFT: &str = "#!/bin/sh
if [ ! -e \"$0.slept\" ]; then touch \"$0.slept\"; sleep 2; fi
exec nft \"$@\"
";

/// /readyz answers 200 only once the first install replaced a stale table: a pod marked
/// ready earlier would get traffic that the stale table sends to a dead proxy port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_after_the_stale_table_is_replaced() {
    if !root_available("readyz") {
        return;
    }
    let pod = Pod::create().unwrap();
    let listener = pod.bind(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
    let _app = shunt_echo::spawn(tokio::net::TcpListener::from_std(listener).unwrap(), "app").unwrap();
    let ns = SidecarPod::new(pod, "readyz");
    write_routes(&ns.routes, &[]);
    let dir = TempDir::new("slow-nft");
    let (stale, slow_nft) = (dir.path("stale.nft"), dir.path("nft"));
    std::fs::write(&stale, STALE_TABLE).unwrap();
    std::fs::write(&slow_nft, SLOW_NFT).unwrap();
    std::fs::set_permissions(&slow_nft, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    ns.pod.run("nft", &["-f", stale.to_str().unwrap()]).unwrap();
    assert!(ns.redirecting());
    assert_eq!(
        who(&ns.url("/"), None),
        None,
        "the stale table sends requests to a dead port"
    );

    let mut cmd = ns.sidecar_command("info");
    cmd.env("SHUNT_NFT", &slow_nft);
    ns.pod.spawn(cmd).unwrap();
    let status = |path: &str| {
        curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://{}{path}", ns.admin),
        ])
        .0
    };
    eventually("admin port up", Duration::from_secs(10), || {
        (status("/healthz") == "200").then_some(())
    });
    assert_eq!(status("/readyz"), "503", "not ready while the first install runs");
    assert!(ns.redirecting(), "the install is still running");
    let up = Instant::now();
    wait_ready(&ns.admin);
    eprintln!("ready {:?} after the admin port came up", up.elapsed());
    assert!(
        ns.has_table() && !ns.redirecting(),
        "ready means the stale table is gone:\n{}",
        ns.pod.nft_ruleset().unwrap()
    );
    assert_eq!(who(&ns.url("/"), ALICE).as_deref(), Some("app"));
}
