//! Small Kubernetes REST helpers for the demo stack, its tests and benchmarks: a client
//! per kubesim user, raw requests with JSON bodies, create, and polling.

use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};

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
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
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

/// Whether a pod is Ready.
pub fn pod_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The process id of a pod's container `name` (kubesim's container ids are `kubesim://PID`).
pub fn container_pid(pod: &Value, name: &str) -> Option<u32> {
    let statuses = pod["status"]["containerStatuses"].as_array()?;
    let status = statuses.iter().find(|s| s["name"] == name)?;
    status["containerID"].as_str()?.strip_prefix("kubesim://")?.parse().ok()
}
