//! The aggregated API `api.shunt.dev/v1` on kubesim, as users meet it: the operator's
//! API server runs in-process, registered by an APIService (Service + Endpoints →
//! 127.0.0.1:port, its `caBundle`); users with client-certificate kubeconfigs go through
//! kubesim (RBAC on `sessions`, the front-proxy certificate, `X-Remote-*`), and the real
//! kubectl prints and deletes sessions.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use kubesim::{Cluster, Options};
use serde_json::{json, Value};
use shunt_operator::api::{self, auth::FrontProxy, AppState};
use shunt_operator::hub::HubState;
use shunt_operator::lifecycle::{Events, Lifecycle};
use shunt_operator::registry::Registry;
use shunt_operator::tunnel::Tunnels;

const NS: &str = "shop";

async fn client(cluster: &Cluster, user: &str, groups: &[&str]) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.kubeconfig(user, groups).unwrap()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

async fn request(client: &Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map_or_else(Vec::new, |b| b.to_string().into_bytes()))
        .unwrap();
    let resp = client.send(req.map(Into::into)).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes))),
    )
}

async fn create(client: &Client, path: &str, obj: Value) {
    let (status, body) = request(client, "POST", path, Some(obj)).await;
    assert!(status < 300, "creating at {path} failed: {body}");
}

async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Env {
    cluster: Cluster,
    admin: Client,
    registry: Registry,
    addr: SocketAddr,
    api_ca_pem: String,
    state: Arc<AppState>,
}

/// kubesim + the operator's API server registered as `v1.api.shunt.dev` + a Deployment
/// `shop/api` (one pod) + RBAC: `shunt-dev` (sessions and `steal` on targets) for alice
/// and bob, sessions only for carol.
async fn setup() -> Env {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let admin = client(&cluster, "kubesim-admin", &["system:masters"]).await;
    let registry = Registry::default();
    let trust = FrontProxy::load(admin.clone()).await.unwrap();
    let ca = kubesim::pki::Ca::new("shunt-api-ca").unwrap();
    let cert = ca.server(&["shunt-api.shunt-system.svc".into()], &[]).unwrap();
    let tls = trust
        .server_tls(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())
        .unwrap();
    let state = Arc::new(AppState {
        registry: registry.clone(),
        tunnels: Tunnels::default(),
        client: admin.clone(),
        trust,
        hub: HubState::default(),
        events: Events::new(admin.clone(), None),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = api::router(state.clone());
    tokio::spawn(api::serve(
        listener,
        tls,
        router,
        std::future::pending(),
        Duration::from_secs(1),
    ));

    for ns in ["shunt-system", NS] {
        create(&admin, "/api/v1/namespaces", json!({"metadata": {"name": ns}})).await;
    }
    let svc = json!({"metadata": {"name": "shunt-api"}, "spec": {"ports": [{"port": 443, "targetPort": addr.port()}]}});
    create(&admin, "/api/v1/namespaces/shunt-system/services", svc).await;
    let endpoints = json!({"metadata": {"name": "shunt-api"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": addr.port()}]}]});
    create(&admin, "/api/v1/namespaces/shunt-system/endpoints", endpoints).await;
    let api_service = json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1.api.shunt.dev"},
        "spec": {"group": "api.shunt.dev", "version": "v1", "groupPriorityMinimum": 1000, "versionPriority": 15,
            "service": {"namespace": "shunt-system", "name": "shunt-api", "port": 443},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem)},
    });
    create(&admin, "/apis/apiregistration.k8s.io/v1/apiservices", api_service).await;
    poll("the APIService to become Available", async || {
        let (_, svc) = request(
            &admin,
            "GET",
            "/apis/apiregistration.k8s.io/v1/apiservices/v1.api.shunt.dev",
            None,
        )
        .await;
        let conditions = svc["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conditions
            .iter()
            .any(|c| c["type"] == "Available" && c["status"] == "True")
            .then_some(())
    })
    .await;

    let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"}, "spec": {
        "replicas": 1, "selector": {"matchLabels": {"app": "api"}},
        "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "echo", "image": "kubesim/echo"}]}}}});
    create(
        &admin,
        &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        deployment,
    )
    .await;
    let role = |name: &str, target_verbs: &[&str]| {
        let mut rules = vec![
            json!({"apiGroups": ["api.shunt.dev"], "resources": ["sessions", "targets"],
            "verbs": ["create", "get", "list", "watch", "delete"]}),
        ];
        if !target_verbs.is_empty() {
            rules.push(json!({"apiGroups": ["api.shunt.dev"], "resources": ["targets"], "verbs": target_verbs}));
        }
        json!({"metadata": {"name": name}, "rules": rules})
    };
    let roles = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/roles");
    create(&admin, &roles, role("shunt-dev", &["steal", "mirror"])).await;
    create(&admin, &roles, role("shunt-sessions-only", &[])).await;
    let binding = |name: &str, role: &str, users: &[&str]| {
        let subjects: Vec<Value> = users
            .iter()
            .map(|u| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u}))
            .collect();
        json!({"metadata": {"name": name}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": subjects})
    };
    let bindings = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings");
    create(&admin, &bindings, binding("devs", "shunt-dev", &["alice", "bob"])).await;
    create(&admin, &bindings, binding("carol", "shunt-sessions-only", &["carol"])).await;
    Env {
        cluster,
        admin,
        registry,
        addr,
        api_ca_pem: ca.cert_pem.clone(),
        state,
    }
}

fn session(name: &str, mode: &str, filter: Option<&str>) -> Value {
    let mut spec = json!({"target": "deployment/api", "mode": mode, "ports": [{"port": 8080}]});
    if let Some(f) = filter {
        spec["filter"] = json!(f);
    }
    json!({"apiVersion": "api.shunt.dev/v1", "kind": "Session", "metadata": {"name": name}, "spec": spec})
}

fn kubeconfig(cluster: &Cluster, user: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("shunt-api-test-{}-{user}.json", std::process::id()));
    cluster.write_kubeconfig(&path, user, &[]).unwrap();
    path
}

/// Runs the real kubectl (off the runtime: kubesim serves it from this test's runtime).
async fn kubectl(kubeconfig: &PathBuf, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
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
    assert!(env.registry.get(NS, "alice-api").is_some());
    let pods = poll("the session to list the deployment's pod", async || {
        shunt_operator::lifecycle::refresh(&env.admin, &env.registry, &env.state.tunnels, &env.state.hub).await;
        let pods = env.registry.get(NS, "alice-api").unwrap().status;
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
    assert!(env.registry.get(NS, "carol-api").is_none() && env.registry.get(NS, "alice-all").is_none());
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
    assert!(env.registry.get(NS, "alice-api").is_none());
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
        registry: env.registry.clone(),
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
    assert!(env.registry.get(NS, "alice-api").is_none());
}
