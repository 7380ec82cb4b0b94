//! The aggregated API `api.shunt.dev/v1` on kubesim, as users meet it: the operator's
//! API server runs in-process, registered by an APIService (Service + Endpoints →
//! 127.0.0.1:port, its `caBundle`); users with client-certificate kubeconfigs go through
//! kubesim (RBAC on `sessions`, the front-proxy certificate, `X-Remote-*`), and the real
//! kubectl prints and deletes sessions.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use kubesim::Cluster;
use serde_json::{json, Value};
use shunt_operator::lifecycle::Lifecycle;
use support::{client, kubectl, poll, request, Operator, Setup};

const NS: &str = "shop";

/// [`Operator`] with a Deployment `shop/api` (one pod) and RBAC: `shunt-dev` (sessions
/// and `steal` on targets) for alice and bob, sessions only for carol.
async fn setup() -> Operator {
    let env = Operator::start(Setup {
        namespaces: &[(NS, json!({}))],
        policies: false,
    })
    .await;
    env.deployment(NS, "api", json!({}), &[]).await;
    let rules = |target_verbs: &[&str]| {
        let mut rules = vec![
            json!({"apiGroups": ["api.shunt.dev"], "resources": ["sessions", "targets"],
            "verbs": ["create", "get", "list", "watch", "delete"]}),
        ];
        if !target_verbs.is_empty() {
            rules.push(json!({"apiGroups": ["api.shunt.dev"], "resources": ["targets"], "verbs": target_verbs}));
        }
        json!(rules)
    };
    env.role(NS, "shunt-dev", rules(&["steal", "mirror"])).await;
    env.role(NS, "shunt-sessions-only", rules(&[])).await;
    env.bind(NS, "devs", "Role", "shunt-dev", &["alice", "bob"]).await;
    env.bind(NS, "carol", "Role", "shunt-sessions-only", &["carol"]).await;
    env
}

fn session(name: &str, mode: &str, filter: Option<&str>) -> Value {
    support::session(name, "deployment/api", mode, filter, 8080)
}

fn kubeconfig(cluster: &Cluster, user: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("shunt-api-test-{}-{user}.json", std::process::id()));
    cluster.write_kubeconfig(&path, user, &[]).unwrap();
    path
}

const SESSIONS: &str = "/apis/api.shunt.dev/v1/namespaces/shop/sessions";

#[tokio::test]
async fn sessions_through_kube_apiserver_with_rbac_conflicts_and_kubectl() {
    let env = setup().await;
    let alice = client(&env.cluster, "alice", &[]).await;

    // (a) alice steals her header; the session names her and the target's pod.
    let (status, created) = request(
        &alice,
        "POST",
        SESSIONS,
        Some(session("alice-api", "steal", Some("x-shunt-user: alice"))),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"]["user"], "alice");
    assert_eq!(created["status"]["phase"], "Pending");
    assert!(env.registry().get(NS, "alice-api").is_some());
    let pods = poll("the session to list the deployment's pod", async || {
        shunt_operator::lifecycle::refresh(&env.admin, env.registry(), &env.state.tunnels, &env.state.hub).await;
        let pods = env.registry().get(NS, "alice-api").unwrap().status;
        (!pods.pods.is_empty()).then_some(pods)
    })
    .await;
    assert!(!pods.pods[0].injected && !pods.pods[0].connected);
    assert!(
        pods.message.contains("shunt.dev/injection=enabled") && pods.message.contains("rollout restart"),
        "{}",
        pods.message
    );

    let admin_kubeconfig = kubeconfig(&env.cluster, "kubesim-admin");
    std::fs::write(
        &admin_kubeconfig,
        serde_json::to_string(&env.cluster.admin_kubeconfig().unwrap()).unwrap(),
    )
    .unwrap();
    let (ok, table) = kubectl(&admin_kubeconfig, &["get", "sessions", "-A"]).await;
    assert!(ok, "{table}");
    let header = table.lines().next().unwrap();
    for column in [
        "NAMESPACE",
        "NAME",
        "USER",
        "TARGET",
        "MODE",
        "FILTER",
        "PORTS",
        "PODS",
        "AGE",
    ] {
        assert!(header.contains(column), "{column} missing: {table}");
    }
    let row = table
        .lines()
        .find(|l| l.contains("alice-api"))
        .unwrap_or_else(|| panic!("{table}"));
    for cell in [
        "shop",
        "alice",
        "deployment/api",
        "steal",
        "x-shunt-user: alice",
        "8080",
        "0/1",
    ] {
        assert!(row.contains(cell), "{cell} missing: {table}");
    }

    // The start was recorded as an Event on the deployment.
    poll("a SessionStarted event", async || {
        let (_, events) = request(&env.admin, "GET", "/apis/events.k8s.io/v1/namespaces/shop/events", None).await;
        let items = events["items"].as_array().cloned().unwrap_or_default();
        items
            .iter()
            .any(|e| e["reason"] == "SessionStarted" && e["regarding"]["name"] == "api")
            .then_some(())
    })
    .await;

    // (b) bob's filter overlaps alice's: 409 with the witness request.
    let bob = client(&env.cluster, "bob", &[]).await;
    let (status, body) = request(
        &bob,
        "POST",
        SESSIONS,
        Some(session("bob-api", "steal", Some("x-shunt-user: ~^ali"))),
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (409, Some("Conflict")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("alice-api") && message.contains("x-shunt-user: ali"),
        "{message}"
    );
    let (status, body) = request(
        &bob,
        "POST",
        SESSIONS,
        Some(session("bob-api", "steal", Some("x-shunt-user: bob"))),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // (c) carol may create sessions but not steal; alice may steal but not unfiltered.
    let carol = client(&env.cluster, "carol", &[]).await;
    let (status, body) = request(
        &carol,
        "POST",
        SESSIONS,
        Some(session("carol-api", "steal", Some("x-shunt-user: carol"))),
    )
    .await;
    assert_eq!((status, body["reason"].as_str()), (403, Some("Forbidden")), "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("\"steal\"") && message.contains("deployment.api") && message.contains("rolebinding"),
        "{message}"
    );
    let (status, body) = request(&alice, "POST", SESSIONS, Some(session("alice-all", "steal", None))).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("\"steal-unfiltered\""),
        "{body}"
    );
    assert!(env.registry().get(NS, "carol-api").is_none() && env.registry().get(NS, "alice-all").is_none());
    // An unknown target is 404 naming it.
    let mut missing = session("alice-web", "steal", Some("x-shunt-user: alice"));
    missing["spec"]["target"] = json!("deployment/web");
    let (status, body) = request(&alice, "POST", SESSIONS, Some(missing)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].as_str().unwrap().contains("deployment/web"), "{body}");

    // Targets list the deployment with its pod counts.
    let (status, targets) = request(&alice, "GET", "/apis/api.shunt.dev/v1/namespaces/shop/targets", None).await;
    assert_eq!(status, 200, "{targets}");
    let api = targets["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["metadata"]["name"] == "deployment.api")
        .cloned();
    assert_eq!(api.unwrap()["status"]["pods"], 1, "{targets}");

    // (d) kubectl delete removes the session from the registry.
    let alice_kubeconfig = kubeconfig(&env.cluster, "alice");
    let (ok, out) = kubectl(&alice_kubeconfig, &["delete", "session", "alice-api", "-n", NS]).await;
    assert!(ok, "{out}");
    assert!(out.contains("alice-api"), "{out}");
    assert!(env.registry().get(NS, "alice-api").is_none());
    let (status, _) = request(&alice, "GET", &format!("{SESSIONS}/alice-api"), None).await;
    assert_eq!(status, 404);
    for path in [&admin_kubeconfig, &alice_kubeconfig] {
        let _ = std::fs::remove_file(path);
    }

    // (e) Straight to the operator without the front-proxy certificate: 401.
    let tls = kubesim::admission::client::tls_config(
        kubesim::admission::client::Trust::Roots(env.api_ca_pem.as_bytes()),
        None,
    )
    .unwrap();
    let stream = kubesim::admission::client::connect(env.addr, "shunt-api.shunt-system.svc", tls)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for path in [SESSIONS, "/apis/api.shunt.dev/v1"] {
        let req = http::Request::get(path)
            .header("host", "shunt-api")
            .header("x-remote-user", "mallory")
            .header("x-remote-group", "system:masters")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 401);
        let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(
            (body["kind"].as_str(), body["reason"].as_str()),
            (Some("Status"), Some("Unauthorized")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn sessions_without_a_connected_cli_end_after_the_grace_period_and_watches_see_it() {
    let env = setup().await;
    let lifecycle = Lifecycle {
        client: env.admin.clone(),
        registry: env.registry().clone(),
        tunnels: env.state.tunnels.clone(),
        hub: env.state.hub.clone(),
        events: env.state.events.clone(),
        grace: Duration::from_millis(500),
        interval: Duration::from_millis(100),
    };
    let alice = client(&env.cluster, "alice", &[]).await;
    let req = http::Request::get(format!("{SESSIONS}?watch=true"))
        .body(Vec::new())
        .unwrap();
    let resp = alice.send(req.map(Into::into)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let (status, created) = request(&alice, "POST", SESSIONS, Some(session("alice-api", "mirror", None))).await;
    assert_eq!(status, 201, "{created}");
    let started = Instant::now();
    tokio::spawn(lifecycle.run());
    let mut seen = String::new();
    let mut types = Vec::new();
    while !types.contains(&"DELETED".to_owned()) {
        let frame = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&frame.into_data().unwrap()));
        while let Some((line, rest)) = seen.split_once('\n') {
            let event: Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["object"]["metadata"]["name"], "alice-api");
            types.push(event["type"].as_str().unwrap().to_owned());
            seen = rest.to_owned();
        }
    }
    assert_eq!(types.first().map(String::as_str), Some("ADDED"), "{types:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "ended before the grace period"
    );
    assert!(env.registry().get(NS, "alice-api").is_none());
}
