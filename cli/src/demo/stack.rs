//! The whole of shunt on kubesim (loopback mode, no root), all real code: the operator
//! (aggregated API as the APIService `v1.api.shunt.dev`, hub on 127.0.0.1 with a
//! certificate for `shunt-operator`) and the webhook (`--cert-mode self`,
//! `--redirect port-takeover`, the hub's address and CA) run in-process as their own
//! least-privilege users; kubesim runs the pods as processes of this binary
//! (`shunt/sidecar` → `shunt __sidecar`, `kubesim/echo` → `shunt __echo`). Namespace
//! `shop` is opted in and holds Deployment `api` (kubesim/echo, port `http` 8080), Service
//! `api` (port 80 → `http`) and the Role `shunt-user` bound to the developers.
//!
//! [`Stack::start`] returns once every replica is Ready with its sidecar connected to the
//! hub. Dropping the stack stops everything and removes its directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use http_body_util::BodyExt as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// The namespace of the demo workload.
pub const NS: &str = "shop";
/// The operator's and webhook's namespace.
pub const SYSTEM_NS: &str = "shunt-system";
/// The developers the Role `shunt-user` is bound to.
pub const DEVELOPERS: [&str; 3] = ["alice", "bob", "carol"];
/// The TLS name of the hub's certificate (the sidecar's default).
const HUB_NAME: &str = "shunt-operator";

/// How to start the stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// The `shunt` binary the pods run (`__sidecar`, `__echo`).
    pub shunt_exe: PathBuf,
    /// Replicas of Deployment `api`.
    pub replicas: u32,
    /// The operator's `--session-grace`.
    pub session_grace: Duration,
    /// How long to wait for each step.
    pub timeout: Duration,
}

/// A running stack; everything stops when it is dropped.
pub struct Stack {
    /// The cluster (pods stop with it).
    pub cluster: kubesim::Cluster,
    /// An admin client (`system:masters`).
    pub admin: kube::Client,
    /// Service `api`'s cluster address (port 80, kubesim's balancer).
    pub service: SocketAddr,
    /// The operator's admin server (`/metrics`).
    pub operator_admin: SocketAddr,
    /// The operator's hub (what the webhook gives the sidecars).
    pub hub: SocketAddr,
    dir: PathBuf,
    timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
    /// The operator's own runtime: shutting it down drops all its tasks, listeners and
    /// connections at once, as `kill -9` of its process would.
    operator: Option<tokio::runtime::Runtime>,
    operator_args: Option<shunt_operator::config::Args>,
    operator_api: SocketAddr,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(runtime) = self.operator.take() {
            runtime.shutdown_background();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A kube client for `user` of `cluster` (client certificate).
pub async fn client_for(cluster: &kubesim::Cluster, user: &str, groups: &[&str]) -> anyhow::Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.kubeconfig(user, groups)?)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Sends one request to the API; (status, JSON body).
pub async fn request(
    client: &kube::Client,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map_or_else(Vec::new, |b| b.to_string().into_bytes()))?;
    let resp = client.send(req.map(Into::into)).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let doc = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    Ok((status, doc))
}

/// Creates an object (POST to `path`), failing with the API's message.
pub async fn create(client: &kube::Client, path: &str, obj: Value) -> anyhow::Result<()> {
    let (status, body) = request(client, "POST", path, Some(&obj)).await?;
    anyhow::ensure!(status < 300, "creating at {path} failed ({status}): {body}");
    Ok(())
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout` naming `what`.
pub async fn poll<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn subjects(users: &[&str]) -> Value {
    users
        .iter()
        .map(|u| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u}))
        .collect()
}

/// A Role or ClusterRole with its binding to `users`.
async fn grant(admin: &kube::Client, ns: Option<&str>, name: &str, rules: Value, users: &[&str]) -> anyhow::Result<()> {
    let (kind, base) = match ns {
        Some(ns) => ("Role", format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/")),
        None => ("ClusterRole", "/apis/rbac.authorization.k8s.io/v1/".to_owned()),
    };
    let plural = if ns.is_some() { "roles" } else { "clusterroles" };
    create(
        admin,
        &format!("{base}{plural}"),
        json!({"metadata": {"name": name}, "rules": rules}),
    )
    .await?;
    let binding = json!({"metadata": {"name": name}, "subjects": subjects(users),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}});
    create(
        admin,
        &format!(
            "{base}{}",
            if ns.is_some() {
                "rolebindings"
            } else {
                "clusterrolebindings"
            }
        ),
        binding,
    )
    .await
}

/// What the operator's own user may do, nothing more.
async fn grant_operator(admin: &kube::Client) -> anyhow::Result<()> {
    let read = json!(["get", "list", "watch"]);
    let rules = json!([
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["pods", "services", "namespaces"], "verbs": read},
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "replicasets", "daemonsets"], "verbs": read},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "verbs": read},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["policy.shunt.dev"], "resources": ["shuntpolicies", "clustershuntpolicies"], "verbs": read},
        {"apiGroups": ["policy.shunt.dev"], "resources": ["shuntpolicies/status", "clustershuntpolicies/status"],
            "verbs": ["patch", "update"]},
    ]);
    grant(admin, None, "shunt-operator", rules, &["shunt-operator"]).await?;
    let leases = json!([{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "list", "watch", "create", "update"]}]);
    grant(admin, Some(SYSTEM_NS), "shunt-operator", leases, &["shunt-operator"]).await?;
    let auth = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"],
        "resourceNames": ["extension-apiserver-authentication"]}]);
    grant(
        admin,
        Some("kube-system"),
        "shunt-operator-auth-reader",
        auth,
        &["shunt-operator"],
    )
    .await
}

/// What the webhook's own user may do (its README section).
async fn grant_webhook(admin: &kube::Client) -> anyhow::Result<()> {
    let secrets =
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "update"]}]);
    grant(admin, Some(SYSTEM_NS), "shunt-webhook", secrets, &["shunt-webhook"]).await?;
    let configs = json!([{"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
        "verbs": ["get", "list", "watch", "patch"]}]);
    grant(admin, None, "shunt-webhook", configs, &["shunt-webhook"]).await
}

/// A Service without selector and its Endpoints, pointing at a local listener.
async fn expose(admin: &kube::Client, name: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let port = addr.port();
    let base = format!("/api/v1/namespaces/{SYSTEM_NS}");
    let svc =
        json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}});
    create(admin, &format!("{base}/services"), svc).await?;
    let endpoints = json!({"metadata": {"name": name}, "subsets": [{"addresses": [{"ip": addr.ip().to_string()}],
        "ports": [{"name": "https", "port": port}]}]});
    create(admin, &format!("{base}/endpoints"), endpoints).await
}

async fn bind() -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("shunt-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

impl Stack {
    /// Starts everything and waits until every replica is Ready with its sidecar connected.
    pub async fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let dir = scratch_dir()?;
        let exe = options.shunt_exe.display().to_string();
        let images = [
            ("shunt/sidecar".to_owned(), vec![exe.clone(), "__sidecar".to_owned()]),
            (
                kubesim::kubelet::images::ECHO_IMAGE.to_owned(),
                vec![exe, "__echo".to_owned()],
            ),
        ];
        let cluster = kubesim::Cluster::start(kubesim::Options {
            network: kubesim::Network::Loopback,
            images: images.into(),
        })
        .await
        .context("cannot start kubesim")?;
        let admin = client_for(&cluster, "kubesim-admin", &["system:masters"]).await?;
        let mut stack = Stack {
            cluster,
            admin: admin.clone(),
            service: SocketAddr::from(([127, 0, 0, 1], 0)),
            operator_admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            hub: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            timeout: options.timeout,
            tasks: Vec::new(),
            operator: None,
            operator_args: None,
            operator_api: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        create(&admin, "/api/v1/namespaces", json!({"metadata": {"name": SYSTEM_NS}})).await?;
        let shop = json!({"metadata": {"name": NS, "labels": {shunt_proto::names::LABEL_INJECTION: "enabled"}}});
        create(&admin, "/api/v1/namespaces", shop).await?;
        stack.start_operator(&options).await?;
        stack.start_webhook().await?;
        stack.deploy(options.replicas).await?;
        stack.wait_ready(options.replicas).await?;
        Ok(stack)
    }

    async fn start_operator(&mut self, options: &StackOptions) -> anyhow::Result<()> {
        grant_operator(&self.admin).await?;
        let ca = kubesim::pki::Ca::new("shunt-operator-ca")?;
        let api = ca.server(&[format!("shunt-api.{SYSTEM_NS}.svc")], &[])?;
        let hub = ca.server(&[HUB_NAME.to_owned()], &[])?;
        let d = &self.dir;
        let files = [
            write(d, "api.crt", &api.cert_pem)?,
            write(d, "api.key", &api.key_pem)?,
            write(d, "hub.crt", &hub.cert_pem)?,
            write(d, "hub.key", &hub.key_pem)?,
        ];
        write(d, "operator-ca.crt", &ca.cert_pem)?;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let grace = format!("{}ms", options.session_grace.as_millis());
        let path = |p: &PathBuf| p.display().to_string();
        let argv = [
            "shunt-operator",
            "--namespace",
            SYSTEM_NS,
            "--identity",
            "shunt-operator-0",
            "--session-grace",
            &grace,
            "--drain",
            "1s",
            "--api-tls-cert",
            &path(&files[0]),
            "--api-tls-key",
            &path(&files[1]),
            "--hub-tls-cert",
            &path(&files[2]),
            "--hub-tls-key",
            &path(&files[3]),
            "--server-name",
            HUB_NAME,
        ];
        let args = <shunt_operator::config::Args as clap::Parser>::try_parse_from(argv)?;
        self.operator_args = Some(args);
        self.run_operator([any; 3])?;
        let api_addr = self.operator_api;
        let admin = &self.admin;

        expose(admin, "shunt-api", api_addr).await?;
        let api_service = json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1.api.shunt.dev"},
            "spec": {"group": "api.shunt.dev", "version": "v1", "groupPriorityMinimum": 1000, "versionPriority": 15,
                "service": {"namespace": SYSTEM_NS, "name": "shunt-api", "port": 443},
                "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem)},
        });
        create(admin, "/apis/apiregistration.k8s.io/v1/apiservices", api_service).await?;
        poll(
            "the APIService v1.api.shunt.dev to become Available",
            self.timeout,
            async || {
                let path = "/apis/apiregistration.k8s.io/v1/apiservices/v1.api.shunt.dev";
                let (_, svc) = request(admin, "GET", path, None).await.ok()?;
                let conditions = svc["status"]["conditions"].as_array().cloned().unwrap_or_default();
                conditions
                    .iter()
                    .any(|c| c["type"] == "Available" && c["status"] == "True")
                    .then_some(())
            },
        )
        .await
    }

    /// Binds the operator's listeners on `addrs` (api, hub, admin; port 0: any) and runs it
    /// on a runtime of its own.
    fn run_operator(&mut self, addrs: [SocketAddr; 3]) -> anyhow::Result<()> {
        let args = self
            .operator_args
            .clone()
            .context("the operator was never configured")?;
        let bind = |addr: SocketAddr| {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr} for the operator"))?;
            listener.set_nonblocking(true)?;
            anyhow::Ok(listener)
        };
        let (api, hub, admin) = (bind(addrs[0])?, bind(addrs[1])?, bind(addrs[2])?);
        self.operator_api = api.local_addr()?;
        self.hub = hub.local_addr()?;
        self.operator_admin = admin.local_addr()?;
        let kubeconfig: Kubeconfig = serde_json::from_value(self.cluster.kubeconfig("shunt-operator", &[])?)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shunt-operator")
            .enable_all()
            .build()
            .context("cannot start the operator's runtime")?;
        runtime.spawn(async move {
            let run = async {
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
                let listeners = shunt_operator::Listeners {
                    api: tokio::net::TcpListener::from_std(api)?,
                    hub: tokio::net::TcpListener::from_std(hub)?,
                    admin: tokio::net::TcpListener::from_std(admin)?,
                };
                shunt_operator::run_with(args, kube::Client::try_from(config)?, listeners, std::future::pending()).await
            };
            if let Err(error) = run.await {
                tracing::error!(error = format!("{error:#}"), "the operator stopped");
            }
        });
        self.operator = Some(runtime);
        Ok(())
    }

    /// Stops the operator at once, as `kill -9` would: no drain, every task, listener and
    /// connection (hub streams, tunnels, API requests) dropped; what it held in memory is lost.
    pub fn kill_operator(&mut self) {
        if let Some(runtime) = self.operator.take() {
            runtime.shutdown_background();
        }
    }

    /// Starts the operator again on the same API, hub and admin addresses (the APIService
    /// and the sidecars find it there), after [`Stack::kill_operator`].
    pub fn restart_operator(&mut self) -> anyhow::Result<()> {
        self.kill_operator();
        self.run_operator([self.operator_api, self.hub, self.operator_admin])
    }

    async fn start_webhook(&mut self) -> anyhow::Result<()> {
        let admin = &self.admin;
        grant_webhook(admin).await?;
        let name = "shunt-webhook";
        let config = json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "pods.shunt.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None",
                "failurePolicy": "Ignore", "timeoutSeconds": 5,
                "clientConfig": {"service": {"name": name, "namespace": SYSTEM_NS, "path": "/mutate-pods", "port": 443}},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {shunt_proto::names::LABEL_INJECTION: "enabled"}},
            }],
        });
        create(
            admin,
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations",
            config,
        )
        .await?;
        let listener = bind().await?;
        expose(admin, name, listener.local_addr()?).await?;
        let hub_addr = self.hub.to_string();
        let ca_file = self.dir.join("operator-ca.crt").display().to_string();
        let argv = [
            "shunt-webhook",
            "--cert-mode",
            "self",
            "--namespace",
            SYSTEM_NS,
            "--redirect",
            "port-takeover",
            "--sidecar-image",
            "shunt/sidecar",
            "--operator-addr",
            &hub_addr,
            "--operator-ca-file",
            &ca_file,
            "--drain-timeout",
            "1s",
        ];
        let args = <shunt_webhook::config::Args as clap::Parser>::try_parse_from(argv)?;
        let settings = args
            .settings()
            .map_err(|e| anyhow::anyhow!("webhook configuration: {e}"))?;
        let client = client_for(&self.cluster, "shunt-webhook", &[]).await?;
        let metrics = Arc::new(shunt_webhook::metrics::Metrics::new());
        self.tasks.push(tokio::spawn(async move {
            let run = shunt_webhook::run_with(settings, Some(client), listener, metrics, std::future::pending());
            if let Err(error) = run.await {
                tracing::error!(%error, "the webhook stopped");
            }
        }));
        poll("the webhook to publish its caBundle", self.timeout, async || {
            let path = format!("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}");
            let (_, config) = request(admin, "GET", &path, None).await.ok()?;
            let bundle = config["webhooks"][0]["clientConfig"]["caBundle"]
                .as_str()
                .unwrap_or_default();
            (!bundle.is_empty()).then_some(())
        })
        .await
    }

    async fn deploy(&mut self, replicas: u32) -> anyhow::Result<()> {
        let admin = &self.admin;
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"}, "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "echo", "image": kubesim::kubelet::images::ECHO_IMAGE,
                    "ports": [{"name": "http", "containerPort": 8080}]}]}}}});
        create(admin, &format!("/apis/apps/v1/namespaces/{NS}/deployments"), deployment).await?;
        let service = json!({"metadata": {"name": "api"}, "spec": {"selector": {"app": "api"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        create(admin, &format!("/api/v1/namespaces/{NS}/services"), service).await?;
        let (_, service) = request(admin, "GET", &format!("/api/v1/namespaces/{NS}/services/api"), None).await?;
        self.service = kubesim::network::balancer::service_address(&service, 80)
            .with_context(|| format!("Service api has no cluster IP: {service}"))?;
        let rules = json!([
            {"apiGroups": ["api.shunt.dev"], "resources": ["sessions"], "verbs": ["create", "get", "list", "delete", "watch"]},
            {"apiGroups": ["api.shunt.dev"], "resources": ["sessions/tunnel"], "verbs": ["get", "create"]},
            {"apiGroups": ["api.shunt.dev"], "resources": ["targets"], "verbs": ["list", "steal", "mirror"]},
            {"apiGroups": ["", "apps"], "resources": ["services", "deployments"], "verbs": ["get", "list"]},
        ]);
        grant(admin, Some(NS), "shunt-user", rules, &DEVELOPERS).await
    }

    /// Writes a client-certificate kubeconfig for `user` into the stack's directory.
    pub fn kubeconfig(&self, user: &str) -> anyhow::Result<PathBuf> {
        self.kubeconfig_with_groups(user, &[])
    }

    /// Writes a client-certificate kubeconfig for `user` in `groups` into the stack's directory.
    pub fn kubeconfig_with_groups(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{user}.kubeconfig.json"));
        self.cluster.write_kubeconfig(&path, user, groups)?;
        Ok(path)
    }

    /// The pods of Deployment `api` as JSON.
    pub async fn pods(&self) -> anyhow::Result<Vec<Value>> {
        let path = format!("/api/v1/namespaces/{NS}/pods?labelSelector=app%3Dapi");
        let (_, list) = request(&self.admin, "GET", &path, None).await?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// The sessions of `shop`, as the API serves them to the admin.
    pub async fn sessions(&self) -> anyhow::Result<Vec<Value>> {
        let path = format!("/apis/api.shunt.dev/v1/namespaces/{NS}/sessions");
        let (status, list) = request(&self.admin, "GET", &path, None).await?;
        anyhow::ensure!(status == 200, "listing sessions failed ({status}): {list}");
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// `shunt_operator_hub_connected_sidecars` from the operator's `/metrics`.
    pub async fn connected_sidecars(&self) -> Option<u64> {
        let text = super::traffic::get_text(self.operator_admin, "/metrics").await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("shunt_operator_hub_connected_sidecars "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// Scales Deployment `api` to `replicas` and waits until they are all Ready and connected.
    pub async fn scale(&self, replicas: u32) -> anyhow::Result<()> {
        let req = http::Request::patch(format!("/apis/apps/v1/namespaces/{NS}/deployments/api"))
            .header("content-type", "application/merge-patch+json")
            .body(json!({"spec": {"replicas": replicas}}).to_string().into_bytes())?;
        let resp = self.admin.send(req.map(Into::into)).await?;
        anyhow::ensure!(
            resp.status().is_success(),
            "scaling deployment/api failed: {}",
            resp.status()
        );
        self.wait_ready(replicas).await
    }

    /// Waits until exactly `replicas` pods of `api` are Ready, injected and in the Service's
    /// Endpoints, and the hub counts as many connected sidecars.
    pub async fn wait_ready(&self, replicas: u32) -> anyhow::Result<()> {
        let want = usize::try_from(replicas)?;
        poll(
            &format!("{replicas} Ready pods of deployment/api with their sidecars connected to the hub"),
            self.timeout,
            async || {
                let pods = self.pods().await.ok()?;
                let live: Vec<&Value> = pods
                    .iter()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .collect();
                let ready = live.iter().filter(|p| ready(p)).count();
                let connected = self.connected_sidecars().await?;
                let path = format!("/api/v1/namespaces/{NS}/endpoints/api");
                let (_, endpoints) = request(&self.admin, "GET", &path, None).await.ok()?;
                let in_service: usize = endpoints["subsets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| s["addresses"].as_array().map_or(0, Vec::len))
                    .sum();
                let all = live.len() == want && ready == want && in_service == want;
                (all && connected == u64::from(replicas)).then_some(())
            },
        )
        .await
    }

    /// Waits until the sidecar of every pod of `api` lists `routes` routes on its admin port.
    pub async fn wait_routes(&self, routes: usize) -> anyhow::Result<()> {
        poll(&format!("{routes} routes on every sidecar"), self.timeout, async || {
            for pod in self.pods().await.ok()? {
                let ip: std::net::IpAddr = pod["status"]["podIP"].as_str()?.parse().ok()?;
                let admin = SocketAddr::new(ip, shunt_proto::names::DEFAULT_ADMIN_PORT);
                let text = super::traffic::get_text(admin, "/routes").await.ok()?;
                let doc: Value = serde_json::from_str(&text).ok()?;
                if doc["routes"].as_array().map_or(0, Vec::len) != routes {
                    return None;
                }
            }
            Some(())
        })
        .await
    }
}

/// Ready, with the sidecar (an init container) running too.
fn ready(pod: &Value) -> bool {
    let status = &pod["status"];
    let condition = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let injected = status["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == shunt_proto::names::SIDECAR_CONTAINER && c["ready"] == true);
    condition && injected
}
