//! Helpers shared by the integration tests: the injection configuration, pod fixtures,
//! the test cluster (kubesim, in-process) and an HTTPS client that trusts only a CA
//! bundle.
#![allow(dead_code, clippy::unwrap_used)]

pub mod cluster;
pub mod https;

use serde_json::{json, Value};
use shunt_webhook::inject::{InjectConfig, RedirectMode, SidecarMode, SidecarResources};

/// The configuration the tests inject with (the binary's defaults).
pub fn config() -> InjectConfig {
    InjectConfig {
        version: "0.1.0".into(),
        image: "shunt-sidecar:0.1.0".into(),
        image_pull_policy: Some("IfNotPresent".into()),
        sidecar_mode: SidecarMode::Native,
        redirect: RedirectMode::Nftables,
        operator_addr: "shunt-operator.shunt-system.svc:15443".into(),
        operator_ca_pem: None,
        operator_server_name: None,
        token_expiration_seconds: 3600,
        proxy_port: 15080,
        admin_port: 15090,
        listen_port_base: 15100,
        resources: SidecarResources {
            cpu_request: Some("10m".into()),
            memory_request: Some("32Mi".into()),
            cpu_limit: None,
            memory_limit: Some("128Mi".into()),
        },
        excluded_namespaces: ["kube-system", "kube-public", "kube-node-lease", "shunt-system"]
            .map(String::from)
            .to_vec(),
    }
}

/// A minimal valid pod with one container and the given container ports.
pub fn pod(ports: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "team"},
        "spec": {"containers": [{"name": "app", "image": "app:1", "ports": ports}]}
    })
}

/// An AdmissionReview of a pod CREATE.
pub fn review(uid: &str, namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": pod,
            "dryRun": false
        }
    })
}

/// Applies a base64 JSON patch from an AdmissionReview response to `pod`.
pub fn apply_response_patch(pod: &Value, response: &Value) -> Value {
    use base64::Engine as _;
    let mut pod = pod.clone();
    if let Some(b64) = response["response"]["patch"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    pod
}

/// The MutatingWebhookConfiguration the tests start with: two webhooks, no caBundle.
pub fn webhook_configuration() -> Value {
    let webhook = |name: &str| {
        json!({
            "name": name,
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "clientConfig": {"service": {"name": "shunt-webhook", "namespace": "shunt-system", "path": "/mutate-pods"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchLabels": {"shunt.dev/injection": "enabled"}},
        })
    };
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "shunt-webhook"},
        "webhooks": [webhook("pods.shunt.dev"), webhook("pods-ports.shunt.dev")],
    })
}

/// Settings from command-line arguments (the binary's parser).
pub fn settings(argv: &[&str]) -> shunt_webhook::config::Settings {
    use clap::Parser as _;
    let args =
        shunt_webhook::config::Args::try_parse_from(std::iter::once("shunt-webhook").chain(argv.iter().copied()))
            .unwrap();
    args.settings().unwrap()
}

/// Polls `check` every 20 ms until it is true or `seconds` pass.
pub async fn eventually<F, Fut>(seconds: u64, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
