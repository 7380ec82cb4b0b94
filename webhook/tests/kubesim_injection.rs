//! End to end against kubesim: the real `shunt-webhook` binary runs as a local process in
//! `--cert-mode self` with a kubeconfig (and only the RBAC the issue documents), publishes
//! its own `caBundle`, and kubesim calls it through a Service for pods created as a user
//! would create them. Checked: injection in an opted-in namespace (the sidecar gets the
//! webhook's CA bundle as the operator's CA), nothing elsewhere, the
//! `shunt.dev/inject: "false"` opt-out with a warning, the operator's APIService (created
//! after the webhook) getting the caBundle, and pods still created with the webhook down
//! (failurePolicy Ignore). Then kubesim's kubelet runs an injected pod with
//! the real `shunt-sidecar` binary (port-takeover mode) and the echo app, and traffic
//! through the Service reaches the app through the dormant sidecar. That test needs
//! `cargo build -p shunt-sidecar -p kubesim` first, and says so when the binaries are missing.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use shunt_proto::names::{ANNOTATION_INJECT, ANNOTATION_STATUS, LABEL_INJECTED, LABEL_INJECTION, SIDECAR_CONTAINER};
use support::cluster::{TestCluster, API_SERVICE, CONFIG, NS, SECRET};
use tokio::io::AsyncBufReadExt as _;

/// The webhook's own user: the kubeconfig the process gets authenticates as this.
const WEBHOOK_USER: &str = "shunt-webhook";

/// A scratch directory removed when dropped (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("shunt-webhook-kubesim-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `shunt-webhook` process, killed when dropped; its log lines are kept and echoed.
struct WebhookProcess {
    child: tokio::process::Child,
    log: Arc<Mutex<Vec<String>>>,
    addr: SocketAddr,
}

impl WebhookProcess {
    /// Starts the binary on `127.0.0.1:0` and waits (with a deadline) for the address it
    /// serves on, which it logs once it has its certificate.
    async fn start(kubeconfig: &std::path::Path) -> WebhookProcess {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shunt-webhook"))
            .args(["--listen", "127.0.0.1:0", "--cert-mode", "self", "--namespace", NS])
            .args([
                "--secret-name",
                SECRET,
                "--webhook-config-name",
                CONFIG,
                "--service-name",
                CONFIG,
                // As the chart runs it: one certificate for the webhook and the operator.
                "--api-service-name",
                API_SERVICE,
                "--dns-names",
                "shunt-api.shunt-system.svc,shunt-operator.shunt-system.svc",
            ])
            .args(["--log", "info", "--log-format", "json"])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let kept = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("shunt-webhook: {line}");
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = rx.recv().await {
                let Ok(event) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if event["message"] == "serving AdmissionReviews" {
                    return event["listen"].as_str().unwrap().parse::<SocketAddr>().unwrap();
                }
            }
            panic!("shunt-webhook exited before serving");
        })
        .await
        .expect("shunt-webhook did not start serving within 20 s");
        WebhookProcess { child, log, addr }
    }

    async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

async fn create<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap()
}

/// Grants the webhook's user what the issue documents, nothing more: secrets in its own
/// namespace, get/list/watch/patch of MutatingWebhookConfigurations, and of the one
/// APIService by name (list and watch with a `metadata.name` field selector pass on
/// resourceNames).
async fn grant_webhook_rbac(test: &TestCluster) {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let subject = json!([{"kind": "User", "name": WEBHOOK_USER, "apiGroup": "rbac.authorization.k8s.io"}]);
    let role_ref = |kind: &str| json!({"kind": kind, "name": "shunt-webhook", "apiGroup": "rbac.authorization.k8s.io"});
    create(
        &Api::<Role>::namespaced(test.admin.clone(), NS),
        json!({"metadata": {"name": "shunt-webhook"}, "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "update"]}]}),
    )
    .await;
    create(
        &Api::<RoleBinding>::namespaced(test.admin.clone(), NS),
        json!({"metadata": {"name": "shunt-webhook"}, "subjects": subject, "roleRef": role_ref("Role")}),
    )
    .await;
    create(
        &Api::<ClusterRole>::all(test.admin.clone()),
        json!({"metadata": {"name": "shunt-webhook"}, "rules": [
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
             "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["apiregistration.k8s.io"], "resources": ["apiservices"],
             "resourceNames": [API_SERVICE], "verbs": ["get", "list", "watch", "patch"]}]}),
    )
    .await;
    create(
        &Api::<ClusterRoleBinding>::all(test.admin.clone()),
        json!({"metadata": {"name": "shunt-webhook"}, "subjects": subject, "roleRef": role_ref("ClusterRole")}),
    )
    .await;
}

/// The webhook's Service (no selector) with Endpoints pointing at the local process.
async fn expose(test: &TestCluster, addr: SocketAddr) {
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    let port = addr.port();
    create(
        &Api::<Service>::namespaced(test.admin.clone(), NS),
        json!({"metadata": {"name": CONFIG}, "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}}),
    )
    .await;
    create(
        &Api::<Endpoints>::namespaced(test.admin.clone(), NS),
        json!({"metadata": {"name": CONFIG}, "subsets": [
            {"addresses": [{"ip": addr.ip().to_string()}], "ports": [{"name": "https", "port": port}]}]}),
    )
    .await;
}

/// The configuration as the Helm chart installs it: one webhook behind the Service, for
/// pod CREATEs in namespaces labelled `shunt.dev/injection=enabled`, no caBundle yet.
fn webhook_configuration() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": CONFIG},
        "webhooks": [{
            "name": "pods.shunt.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "timeoutSeconds": 5,
            "clientConfig": {"service": {"name": CONFIG, "namespace": NS, "path": "/mutate-pods", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {LABEL_INJECTION: "enabled"}},
        }],
    })
}

fn pod(name: &str, annotations: Value) -> Value {
    json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}]}]},
    })
}

/// Creates a pod through the REST API (as `kubectl create` does) and returns the status,
/// the stored pod and the `Warning` headers.
async fn create_pod(client: &kube::Client, ns: &str, pod: Value) -> (u16, Value, Vec<String>) {
    let request = http::Request::post(format!("/api/v1/namespaces/{ns}/pods"))
        .header("content-type", "application/json")
        .body(pod.to_string().into_bytes().into())
        .unwrap();
    let response = client.send(request).await.unwrap();
    let status = response.status().as_u16();
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap(), warnings)
}

fn init_names(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_untouched(pod: &Value) {
    assert!(init_names(pod).is_empty(), "no sidecar: {pod}");
    let containers = pod["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{pod}");
    assert_eq!(containers[0]["ports"][0]["name"], "http", "{pod}");
    assert!(pod["metadata"]["labels"][LABEL_INJECTED].is_null(), "{pod}");
    assert!(pod["metadata"]["annotations"][ANNOTATION_STATUS].is_null(), "{pod}");
}

/// kubesim with the webhook's configuration and RBAC, the `shunt-webhook` process running
/// as its own user behind its Service, its caBundle published, and namespace `team`
/// opted in.
async fn webhook_in_kubesim(options: kubesim::Options) -> (TestCluster, WebhookProcess, Scratch) {
    let test = TestCluster::start_with(options).await;
    test.create_webhook_configuration(webhook_configuration()).await;
    grant_webhook_rbac(&test).await;
    let scratch = Scratch::new();
    let kubeconfig = scratch.0.join("kubeconfig.json");
    test.cluster.write_kubeconfig(&kubeconfig, WEBHOOK_USER, &[]).unwrap();

    let webhook = WebhookProcess::start(&kubeconfig).await;
    expose(&test, webhook.addr).await;
    // Nobody gave the configuration a caBundle: the webhook publishes its own.
    support::eventually(20, "the caBundle published by the webhook", || async {
        test.ca_bundles().await.iter().all(|b| !b.is_empty())
    })
    .await;
    let secret = test.secret().await.expect("the webhook created its Secret");
    assert_eq!(
        test.ca_bundles().await[0],
        support::cluster::data(&secret, "ca-bundle.crt")
    );
    let namespaces: Api<Namespace> = Api::all(test.admin.clone());
    create(
        &namespaces,
        json!({"metadata": {"name": "team", "labels": {LABEL_INJECTION: "enabled"}}}),
    )
    .await;
    (test, webhook, scratch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_binary_injects_pods_created_through_kubesim() {
    let (test, mut webhook, _scratch) = webhook_in_kubesim(kubesim::Options::default()).await;
    let namespaces: Api<Namespace> = Api::all(test.admin.clone());
    create(&namespaces, json!({"metadata": {"name": "plain"}})).await;

    // Opted-in namespace: the stored pod has the native sidecar, the label and the status.
    let pods: Api<Pod> = Api::namespaced(test.admin.clone(), "team");
    let web = serde_json::to_value(create(&pods, pod("web", json!({}))).await).unwrap();
    let init = &web["spec"]["initContainers"];
    assert_eq!(init_names(&web), [SIDECAR_CONTAINER], "{web}");
    assert_eq!(init[0]["restartPolicy"], "Always", "a native sidecar: {web}");
    assert_eq!(web["metadata"]["labels"][LABEL_INJECTED], "true");
    let status: Value =
        serde_json::from_str(web["metadata"]["annotations"][ANNOTATION_STATUS].as_str().unwrap()).unwrap();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"), "{status}");
    assert_eq!(
        serde_json::to_value(pods.get("web").await.unwrap()).unwrap()["spec"]["initContainers"],
        *init,
        "and stored"
    );
    // No --operator-ca-file: the sidecar verifies the operator with the webhook's own CA
    // bundle (the operator serves the same Secret's certificate).
    let secret = test.secret().await.unwrap();
    let ca_env = init[0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SHUNT_OPERATOR_CA_PEM")
        .unwrap_or_else(|| panic!("SHUNT_OPERATOR_CA_PEM in {init}"));
    assert_eq!(
        ca_env["value"].as_str().unwrap().as_bytes(),
        support::cluster::data(&secret, "ca-bundle.crt"),
    );

    // The operator's APIService, created after the webhook started, gets the same bundle.
    test.create_api_service().await;
    support::eventually(10, "the APIService's caBundle", || async {
        test.api_service_bundle().await == support::cluster::data(&secret, "ca-bundle.crt")
    })
    .await;

    // Another namespace: never sent to the webhook, stored as created.
    let plain: Api<Pod> = Api::namespaced(test.admin.clone(), "plain");
    assert_untouched(&serde_json::to_value(create(&plain, pod("web", json!({}))).await).unwrap());

    // Opted out by annotation: admitted unchanged, and the user is told why.
    let (code, opted_out, warnings) =
        create_pod(&test.admin, "team", pod("legacy", json!({ANNOTATION_INJECT: "false"}))).await;
    assert_eq!(code, 201, "{opted_out}");
    assert_untouched(&opted_out);
    assert!(
        warnings.iter().any(|w| w.contains("shunt sidecar not injected")),
        "warnings: {warnings:?}"
    );

    // The webhook saw exactly the two pods of the opted-in namespace.
    let bundle = test.ca_bundles().await.swap_remove(0);
    let mut conn = support::https::connect(webhook.addr, &bundle, "shunt-webhook.shunt-system.svc", true)
        .await
        .unwrap();
    let (_, metrics) = conn.send("GET", "/metrics", Vec::new()).await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics);
    let reviews: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("shunt_webhook_reviews_total{") && !l.ends_with(" 0"))
        .collect();
    let expected = [
        "shunt_webhook_reviews_total{outcome=\"injected\"} 1",
        "shunt_webhook_reviews_total{outcome=\"skipped\"} 1",
    ];
    assert_eq!(reviews, expected.into(), "{metrics}");
    assert!(
        metrics.contains("shunt_webhook_skips_total{reason=\"opt_out\"} 1"),
        "{metrics}"
    );

    // The webhook down: failurePolicy Ignore, so pods are still created (without sidecar).
    webhook.kill().await;
    let (code, late, _) = create_pod(&test.admin, "team", pod("late", json!({}))).await;
    assert_eq!(code, 201, "{late}");
    assert_untouched(&late);
    assert!(
        webhook
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("published the CA bundle")),
        "the webhook logged its publication"
    );
}

/// `target/<profile>/<name>`, next to the directory of this test executable
/// (`target/<profile>/deps/`), where `cargo build` puts binaries.
fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(|deps| deps.parent()).unwrap().join(name);
    assert!(
        path.is_file(),
        "{} is missing: this test runs the real binaries; build them first with \
         `cargo build -p shunt-sidecar -p kubesim` (same profile as the tests)",
        path.display()
    );
    path
}

fn ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else { return false };
    let condition = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let running = |statuses: &Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        statuses
            .iter()
            .flatten()
            .all(|s| s.ready && s.state.as_ref().is_some_and(|st| st.running.is_some()))
    };
    condition && running(&status.container_statuses) && running(&status.init_container_statuses)
}

/// HTTP/1.1 GET `path` on a fresh connection: status line and headers, or `None`.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut response))
        .await
        .ok()?
        .ok()?;
    response.starts_with("HTTP/1.1 200").then_some(response)
}

/// The injected pod runs: the real `shunt-sidecar` as a native sidecar next to the echo
/// app, in port-takeover mode; the Service's named target port now means the sidecar's
/// port, and a request through the Service reaches the app through the dormant sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_pod_runs_the_real_sidecar_which_passes_service_traffic_to_the_app() {
    let sidecar = built_binary("shunt-sidecar");
    built_binary("kubesim"); // the kubesim/echo image re-executes it
    let options = kubesim::Options {
        images: [("shunt-sidecar".to_owned(), vec![sidecar.display().to_string()])].into(),
        ..kubesim::Options::default()
    };
    let (test, _webhook, _scratch) = webhook_in_kubesim(options).await;
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    let service = create(
        &Api::<Service>::namespaced(test.admin.clone(), "team"),
        json!({"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(test.admin.clone(), "team");
    let pod = create(
        &pods,
        json!({
            "metadata": {"name": "web", "labels": {"app": "web"},
                "annotations": {"shunt.dev/redirect": "port-takeover"}},
            "spec": {"containers": [{"name": "app", "image": "kubesim/echo",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
        }),
    )
    .await;
    let spec = pod.spec.as_ref().unwrap();
    let sidecar_ports = spec.init_containers.as_ref().unwrap()[0].ports.clone().unwrap();
    let takeover = sidecar_ports.iter().find(|p| p.name.as_deref() == Some("http"));
    let takeover = takeover
        .expect("the sidecar took over the port name `http`")
        .container_port;
    assert_ne!(takeover, 8080);
    assert_eq!(
        spec.containers[0].ports.as_ref().unwrap()[0].name.as_deref(),
        Some("shunt-http")
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let pod = loop {
        let pod = pods.get("web").await.unwrap();
        if ready(&pod) {
            break pod;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pod did not become Ready with both containers running: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pod_ip: std::net::IpAddr = pod.status.unwrap().pod_ip.unwrap().parse().unwrap();

    // The Service's `targetPort: http` resolves to the sidecar's port.
    let endpoints: Api<Endpoints> = Api::namespaced(test.admin.clone(), "team");
    support::eventually(10, "the Service's endpoint", || async {
        let Ok(ep) = endpoints.get("web").await else {
            return false;
        };
        let subset = ep.subsets.into_iter().flatten().next();
        subset.is_some_and(|s| {
            s.addresses.iter().flatten().any(|a| a.ip == pod_ip.to_string())
                && s.ports.iter().flatten().all(|p| p.port == takeover)
        })
    })
    .await;

    // Through the Service: the echo app answers (it names the pod), reached through the
    // sidecar's port, since the app itself listens only on 8080.
    let service = serde_json::to_value(&service).unwrap();
    let service = kubesim::network::balancer::service_address(&service, 8080).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Attempts before the app listens reach the sidecar too (and are passed through).
    let mut attempts = 0;
    let response = loop {
        attempts += 1;
        if let Some(response) = get(service, "/").await {
            break response;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no answer through the Service at {service}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(response.to_lowercase().contains("x-served-by: web"), "{response}");
    // The sidecar's own count: our connections passed through (one per attempt that
    // reached it, at least the one answered), no port active (dormant).
    let metrics = get(
        SocketAddr::new(pod_ip, shunt_proto::names::DEFAULT_ADMIN_PORT),
        "/metrics",
    )
    .await
    .expect("the sidecar's admin port answers /metrics");
    let lines: Vec<&str> = metrics.lines().collect();
    let passed_through: u32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("shunt_sidecar_tcp_passthrough_connections_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pass-through count:\n{metrics}"));
    assert!(
        (1..=attempts).contains(&passed_through) && lines.contains(&"shunt_sidecar_active_ports 0"),
        "{attempts} attempts:\n{metrics}"
    );
}
