//! The operator on kubesim, as the API tests need it: a kubesim cluster, the operator's
//! API server in-process (registered as the APIService `v1.api.shunt.dev` through a
//! Service and Endpoints → `127.0.0.1:port`, with its own `caBundle`), optionally the
//! policy controller, and helpers to make workloads and RBAC, to act as users (clients
//! with client-certificate kubeconfigs, so every call goes through kubesim's RBAC and
//! front proxy) and to wait for things.
//!
//! Used by `operator/tests/{api,auth,policy}.rs` (`mod support;`) and by the CLI's
//! `cli/tests/intercept.rs` (`#[path = "../../operator/tests/support/mod.rs"]`), so one
//! test set-up serves both crates without a library of its own.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::BodyExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use kubesim::{Cluster, Options};
use serde_json::{json, Value};
use shunt_operator::api::{self, auth::FrontProxy, AppState};
use shunt_operator::hub::HubState;
use shunt_operator::lifecycle::Events;
use shunt_operator::policy::{Controller, Policies};
use shunt_operator::registry::Registry;
use shunt_operator::tunnel::Tunnels;

/// How long [`poll`] waits.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for `user` in `groups` (no retries: tests see every answer as it is).
pub async fn client(cluster: &Cluster, user: &str, groups: &[&str]) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.kubeconfig(user, groups).unwrap()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

/// One raw HTTP request through `client`: (status, body as JSON, or as a JSON string).
pub async fn request(client: &Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let content_type = match method {
        "PATCH" => "application/merge-patch+json",
        _ => "application/json",
    };
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
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

/// POSTs `obj` to `path`; panics unless it was created.
pub async fn create(client: &Client, path: &str, obj: Value) {
    let (status, body) = request(client, "POST", path, Some(obj)).await;
    assert!(status < 300, "creating at {path} failed: {body}");
}

/// Calls `f` every 50 ms until it returns `Some`, for at most [`POLL_TIMEOUT`].
pub async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the real kubectl (off the runtime: kubesim serves it from this test's runtime).
pub async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
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

/// The repository's root.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `/apis/api.shunt.dev/v1/namespaces/{ns}/sessions`.
pub fn sessions(ns: &str) -> String {
    format!("/apis/api.shunt.dev/v1/namespaces/{ns}/sessions")
}

/// A Session object on `target` (e.g. `deployment/api`); `name` ending in `-` is a
/// `generateName`.
pub fn session(name: &str, target: &str, mode: &str, filter: Option<&str>, port: u16) -> Value {
    let mut spec = json!({"target": target, "mode": mode, "ports": [{"port": port}]});
    if let Some(f) = filter {
        spec["filter"] = json!(f);
    }
    let metadata = if name.ends_with('-') {
        json!({"generateName": name})
    } else {
        json!({"name": name})
    };
    json!({"apiVersion": "api.shunt.dev/v1", "kind": "Session", "metadata": metadata, "spec": spec})
}

/// What [`Operator::start`] sets up besides the API server.
#[derive(Default)]
pub struct Setup<'a> {
    /// Namespaces to create besides `shunt-system`, with their labels.
    pub namespaces: &'a [(&'a str, Value)],
    /// Run the policy controller (every 300 ms) and give the API server its policies.
    pub policies: bool,
}

/// kubesim with the operator's API server registered and Available.
pub struct Operator {
    pub cluster: Cluster,
    /// `kubesim-admin` in `system:masters`.
    pub admin: Client,
    pub state: Arc<AppState>,
    /// The API server's own address (reachable without kube-apiserver).
    pub addr: SocketAddr,
    /// The CA of the API server's certificate (for `shunt-api.shunt-system.svc`).
    pub api_ca_pem: String,
    /// The policies the API server enforces, with [`Setup::policies`].
    pub policies: Option<Policies>,
}

impl Operator {
    pub async fn start(setup: Setup<'_>) -> Operator {
        let cluster = Cluster::start(Options::default()).await.unwrap();
        let admin = client(&cluster, "kubesim-admin", &["system:masters"]).await;
        let trust = FrontProxy::load(admin.clone()).await.unwrap();
        let ca = kubesim::pki::Ca::new("shunt-api-ca").unwrap();
        let cert = ca.server(&["shunt-api.shunt-system.svc".into()], &[]).unwrap();
        let tls = trust
            .server_tls(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())
            .unwrap();
        let state = Arc::new(AppState {
            registry: Registry::default(),
            tunnels: Tunnels::default(),
            client: admin.clone(),
            trust,
            hub: HubState::default(),
            events: Events::new(admin.clone(), None),
        });
        let mut router = api::router(state.clone());
        let policies = setup.policies.then(Policies::default);
        if let Some(policies) = &policies {
            tokio::spawn(
                Controller {
                    client: admin.clone(),
                    policies: policies.clone(),
                    registry: state.registry.clone(),
                    tunnels: state.tunnels.clone(),
                    events: state.events.clone(),
                    interval: Duration::from_millis(300),
                }
                .run(),
            );
            router = router.layer(axum::Extension(policies.clone()));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(api::serve(
            listener,
            tls,
            router,
            std::future::pending(),
            Duration::from_secs(1),
        ));

        let shunt_system = [("shunt-system", json!({}))];
        for (ns, labels) in shunt_system.iter().chain(setup.namespaces) {
            let namespace = json!({"metadata": {"name": ns, "labels": labels}});
            create(&admin, "/api/v1/namespaces", namespace).await;
        }
        let svc =
            json!({"metadata": {"name": "shunt-api"}, "spec": {"ports": [{"port": 443, "targetPort": addr.port()}]}});
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
            let path = "/apis/apiregistration.k8s.io/v1/apiservices/v1.api.shunt.dev";
            let (_, svc) = request(&admin, "GET", path, None).await;
            let conditions = svc["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conditions
                .iter()
                .any(|c| c["type"] == "Available" && c["status"] == "True")
                .then_some(())
        })
        .await;
        Operator {
            cluster,
            admin,
            state,
            addr,
            api_ca_pem: ca.cert_pem.clone(),
            policies,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.state.registry
    }

    /// A client for `user` in `groups`.
    pub async fn user(&self, user: &str, groups: &[&str]) -> Client {
        client(&self.cluster, user, groups).await
    }

    /// A one-replica Deployment `ns/name` of `kubesim/echo` (pods labelled `app: name`),
    /// with `labels` on the Deployment and `ports` as container ports.
    pub async fn deployment(&self, ns: &str, name: &str, labels: Value, ports: &[u16]) {
        let ports: Vec<Value> = ports.iter().map(|p| json!({"containerPort": p})).collect();
        let mut container = json!({"name": "echo", "image": "kubesim/echo"});
        if !ports.is_empty() {
            container["ports"] = json!(ports);
        }
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels}, "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [container]}}}});
        create(
            &self.admin,
            &format!("/apis/apps/v1/namespaces/{ns}/deployments"),
            deployment,
        )
        .await;
    }

    /// A Role `ns/name` with `rules`.
    pub async fn role(&self, ns: &str, name: &str, rules: Value) {
        let role = json!({"metadata": {"name": name}, "rules": rules});
        let path = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles");
        create(&self.admin, &path, role).await;
    }

    /// A RoleBinding `ns/name` of `role_kind` (`Role` or `ClusterRole`) `role` to `users`.
    pub async fn bind(&self, ns: &str, name: &str, role_kind: &str, role: &str, users: &[&str]) {
        let subjects: Vec<Value> = users
            .iter()
            .map(|u| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u}))
            .collect();
        let binding = json!({"metadata": {"name": name}, "subjects": subjects,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role}});
        let path = format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings");
        create(&self.admin, &path, binding).await;
    }

    /// Writes a kubeconfig for `user` (one file per cluster: tests run in parallel, each
    /// with its own kubesim); the caller removes it.
    pub fn kubeconfig(&self, user: &str, groups: &[&str]) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "shunt-test-{}-{}-{user}.json",
            std::process::id(),
            self.cluster.addr.port()
        ));
        self.cluster.write_kubeconfig(&path, user, groups).unwrap();
        path
    }
}
