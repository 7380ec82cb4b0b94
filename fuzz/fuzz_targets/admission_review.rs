//! AdmissionReview handling (`shunt-webhook`): request body bytes → the response body,
//! exactly what `POST /mutate-pods` runs after reading the body.
//!
//! Invariants: no panic; input that is not a usable review is a `BadReview` (HTTP 400
//! with a message); every answer is an AdmissionReview JSON that echoes the uid and
//! allows the pod; no answer reports one of the webhook's own failures (a patch that
//! does not apply, a sidecar that does not serialise); a patch, when there is one,
//! applies to the pod with an independent RFC 6902 implementation.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use serde_json::Value;
use shunt_webhook::inject::{InjectConfig, MutateError, RedirectMode, SidecarMode, SidecarResources};
use shunt_webhook::review::answer;

fuzz_target!(|data: &[u8]| {
    // Both redirect modes; chosen by the length so that no byte of the JSON is spent on it.
    let config = if data.len().is_multiple_of(2) {
        &configs().0
    } else {
        &configs().1
    };
    let Ok(answer) = answer(data, config, Some(CA_BUNDLE)) else {
        return;
    };
    if let Some(error @ (MutateError::Patch(_) | MutateError::Serialize(_))) = &answer.error {
        panic!("internal failure on a review: {error}");
    }
    let out: Value = serde_json::from_slice(&answer.body).expect("the answer is JSON");
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], answer.uid.as_str());
    assert_eq!(out["response"]["allowed"], true);
    for warning in out["response"]["warnings"].as_array().into_iter().flatten() {
        let warning = warning.as_str().expect("warnings are strings");
        assert!(
            !warning.chars().any(char::is_control),
            "warning with a control character: {warning:?}"
        );
    }
    let Some(patch) = out["response"]["patch"].as_str() else {
        return;
    };
    assert_eq!(out["response"]["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&patch).expect("the patch is an RFC 6902 patch");
    // Only the pod: the webhook ignores the rest, which need not even be valid JSON text
    // (serde skips ignored strings without checking their escapes).
    let review: Review = serde_json::from_slice(data).expect("an answered review has its pod");
    let mut pod = review.request.object;
    if let Err(e) = json_patch::patch(&mut pod, &patch) {
        panic!("the patch does not apply to the pod: {e}");
    }
});

#[derive(Deserialize)]
struct Review {
    request: Request,
}

#[derive(Deserialize)]
struct Request {
    object: Value,
}

const CA_BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// The binary's defaults, in nftables and in port-takeover mode.
fn configs() -> &'static (InjectConfig, InjectConfig) {
    static CONFIGS: OnceLock<(InjectConfig, InjectConfig)> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let nftables = InjectConfig {
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
        };
        let takeover = InjectConfig {
            redirect: RedirectMode::PortTakeover,
            sidecar_mode: SidecarMode::Container,
            ..nftables.clone()
        };
        (nftables, takeover)
    })
}
