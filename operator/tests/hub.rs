//! The sidecar hub end to end: a kubesim cluster (TokenReview, pods), the operator's hub
//! on loopback with an rcgen certificate, the REAL `shunt-sidecar` binary in
//! port-takeover mode dialling it, an echo app, and a CLI side (an HTTP/2 server on a
//! duplex stream registered in `Tunnels`) playing the developer's machine.
#![allow(clippy::unwrap_used, missing_docs)]

mod hub_support;

use std::time::Duration;

use hub_support::*;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use shunt_operator::hub::HubState;
use shunt_operator::registry::{Registry, Session};
use shunt_operator::tunnel::Tunnels;
use shunt_proto::route::Mode;

fn session(name: &str, user: &str, app: &str, port: u16) -> Session {
    hub_session(name, user, app, port, Mode::Steal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecars_get_routes_and_relay_through_the_hub() {
    let sidecar_bin = sidecar_binary();
    let env = TestCluster::start().await;
    let registry = Registry::default();
    let tunnels = Tunnels::default();
    let state = HubState::default();
    let dir = TempDir::new("hub");
    let tls = Tls::new();
    let ca_file = dir.write("ca.pem", &tls.ca_pem);
    let (hub_addr, hub_task) = start_hub(&tls, &registry, &tunnels, &env.client, &state).await;

    // The app, and the pod's sidecar in port-takeover mode with the hub as its source.
    let app = shunt_echo::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), "app").unwrap();
    let app_port = app.addr.port();
    let token_file = dir.write("token", &env.token("api-0", "shunt.dev/sidecar").await);
    let (_sidecar, listen, admin_port) = Sidecar::takeover(
        &sidecar_bin,
        app_port,
        hub_addr,
        &ca_file,
        &token_file,
        &[("SHUNT_LEASE_SECONDS", "2")],
    );
    let url = format!("http://127.0.0.1:{listen}/hello");
    let admin = format!("127.0.0.1:{admin_port}");
    eventually(
        "the sidecar's routes watch is connected",
        Duration::from_secs(15),
        || async { state.is_connected("default", "api-0").then_some(()) },
    )
    .await;
    assert_eq!(
        who(&url, Some("x-shunt-user: alice")).await.as_deref(),
        Some("app"),
        "dormant: the app serves"
    );

    // Alice connects her CLI and creates a session on the app port.
    let cli = Cli::register(&tunnels, "default", "alice").await;
    registry.create(session("alice", "alice", "api", app_port)).unwrap();
    eventually("alice's requests reach her CLI", Duration::from_secs(5), || async {
        (who(&url, Some("x-shunt-user: alice")).await? == "cli-alice").then_some(())
    })
    .await;
    let seen = cli.last_request();
    assert_eq!(seen["session"], "alice", "the CLI learns the session: {seen}");
    assert_eq!(seen["pod"], "default/api-0", "{seen}");
    assert_eq!(seen["path"], "/hello");
    assert_eq!(who(&url, Some("x-shunt-user: bob")).await.as_deref(), Some("app"));
    assert_eq!(who(&url, None).await.as_deref(), Some("app"));
    assert_eq!(state.connected_pods(Some("default")).len(), 1);
    assert!(state
        .metrics()
        .encode()
        .contains("shunt_operator_hub_relayed_requests_total{outcome=\"relayed\"}"));

    // A mirror session gets a copy over the hub; the app still answers.
    let mirror_cli = Cli::register(&tunnels, "default", "bob-mirror").await;
    registry
        .create(hub_session("bob-mirror", "bob", "api", app_port, Mode::Mirror))
        .unwrap();
    eventually("bob's copies reach his CLI", Duration::from_secs(5), || async {
        assert_eq!(who(&url, Some("x-shunt-user: bob")).await.as_deref(), Some("app"));
        (mirror_cli.last_request()["session"] == "bob-mirror").then_some(())
    })
    .await;
    registry.delete("default", "bob-mirror").unwrap();

    // The pod's labels decide which sessions select it; a label change moves its routes.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), "default");
    let relabel = |app: &'static str| {
        let pods = pods.clone();
        async move {
            let patch = serde_json::json!({"metadata": {"labels": {"app": app}}});
            pods.patch("api-0", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    relabel("elsewhere").await;
    eventually("routes leave with the label", Duration::from_secs(5), || async {
        (who(&url, Some("x-shunt-user: alice")).await? == "app").then_some(())
    })
    .await;
    relabel("api").await;
    eventually("routes return with the label", Duration::from_secs(5), || async {
        (who(&url, Some("x-shunt-user: alice")).await? == "cli-alice").then_some(())
    })
    .await;

    // Fail-open: no CLI connected. A GET goes to the app; a body already sent cannot.
    tunnels.unregister("default", "alice");
    assert_eq!(who(&url, Some("x-shunt-user: alice")).await.as_deref(), Some("app"));
    let (status, _) = curl_status(&url, &["-H", "x-shunt-user: alice", "--data-binary", "payload"]).await;
    assert_eq!(status, 503, "a request whose body went to the operator is not replayed");
    let cli = Cli::register(&tunnels, "default", "alice").await;
    assert_eq!(
        who(&url, Some("x-shunt-user: alice")).await.as_deref(),
        Some("cli-alice")
    );
    drop(cli);

    // Deleting the session returns alice's requests to the app within a second.
    registry.delete("default", "alice").unwrap();
    eventually("alice's requests back at the app", Duration::from_secs(1), || async {
        (who(&url, Some("x-shunt-user: alice")).await? == "app").then_some(())
    })
    .await;

    // Killing the hub makes the sidecar dormant within its lease.
    let _cli = Cli::register(&tunnels, "default", "alice").await;
    registry.create(session("alice", "alice", "api", app_port)).unwrap();
    eventually("alice's route again", Duration::from_secs(5), || async {
        (who(&url, Some("x-shunt-user: alice")).await? == "cli-alice").then_some(())
    })
    .await;
    hub_task.abort();
    eventually("dormant within the lease", Duration::from_secs(2 + 2), || async {
        (routes_installed(&admin).await? == 0).then_some(())
    })
    .await;
    assert_eq!(who(&url, Some("x-shunt-user: alice")).await.as_deref(), Some("app"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_refuses_sidecars_that_are_not_their_pod() {
    let env = TestCluster::start().await;
    let registry = Registry::default();
    let tunnels = Tunnels::default();
    let state = HubState::default();
    let tls = Tls::new();
    let (hub_addr, _hub) = start_hub(&tls, &registry, &tunnels, &env.client, &state).await;
    let ok = env.token("api-0", "shunt.dev/sidecar").await;
    let wrong_audience = env.token("api-0", "not-shunt").await;
    let other_pod = env.token("other-0", "shunt.dev/sidecar").await;
    let not_injected = env.token("web-0", "shunt.dev/sidecar").await;

    let cases: [(Option<&str>, &str, u16, &str); 5] = [
        (None, "default/api-0", 401, "no bearer token"),
        (Some("forged.token.value"), "default/api-0", 401, "token rejected"),
        (Some(&wrong_audience), "default/api-0", 401, "token rejected"),
        (Some(&other_pod), "default/api-0", 403, "bound to pod default/other-0"),
        (
            Some(&not_injected),
            "default/web-0",
            403,
            "not labelled shunt.dev/injected=true",
        ),
    ];
    for (token, pod, code, why) in cases {
        let conn = HubConn::connect(hub_addr, &tls.ca_pem).await;
        let (status, body) = conn.get_routes(token, pod).await;
        assert_eq!(status, code, "{why}: {body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["kind"], "Status", "{body}");
        assert!(doc["message"].as_str().unwrap().contains(why), "{why}: {body}");
    }

    // A relayed request needs an authenticated connection, this pod, and a session of it.
    registry.create(session("carol", "carol", "other", 8080)).unwrap();
    registry.create(session("alice", "alice", "api", 8080)).unwrap();
    let conn = HubConn::connect(hub_addr, &tls.ca_pem).await;
    assert_eq!(conn.relay("alice", "default/api-0").await, 401, "no routes watch yet");
    let mut watch = conn.open_routes(&ok, "default/api-0").await;
    let first = watch.next_line().await;
    assert!(first.contains("\"alice\""), "{first}");
    assert!(!first.contains("carol"), "{first}");
    assert_eq!(
        conn.relay("carol", "default/api-0").await,
        403,
        "carol's session does not target api-0"
    );
    assert_eq!(
        conn.relay("alice", "default/other-0").await,
        403,
        "shunt-pod must be this connection's pod"
    );
    // A session that no longer exists (ended while the sidecar still had its route) is
    // "nobody takes it": 503 with shunt-unavailable, so the sidecar lets the app serve it.
    let ended = conn.relay_response("ghost", "default/api-0").await;
    assert_eq!(ended.status(), 503, "no such session");
    assert_eq!(ended.headers()["shunt-unavailable"], "1");
    let unavailable = conn.relay_response("alice", "default/api-0").await;
    assert_eq!(unavailable.status(), 503, "alice has no CLI connected");
    assert_eq!(unavailable.headers()["shunt-unavailable"], "1");

    // The stream follows the registry: only changed sets are sent.
    registry.delete("default", "alice").unwrap();
    assert_eq!(watch.next_line().await.trim(), r#"{"routes":[]}"#);
    let text = state.metrics().encode();
    assert!(
        text.contains("shunt_operator_hub_refused_sidecars_total{reason=\"not_injected\"} 1"),
        "{text}"
    );
    assert!(text.contains("shunt_operator_hub_connected_sidecars 1"), "{text}");
}
