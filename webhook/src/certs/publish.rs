//! Publishing the CA bundle where API servers look for it: the `caBundle` of every webhook
//! of the MutatingWebhookConfiguration, and (optionally) the `spec.caBundle` of an
//! `apiregistration.k8s.io/v1` APIService whose backend (the operator) serves a
//! certificate from the same Secret.
//!
//! Both report whether the published bundle now equals ours, and whether they just wrote it
//! ([`Published`]): the rotation only switches certificates once every place that verifies
//! them has trusted the new CA for an overlap. A missing APIService
//! is not an error (the operator's chart creates it, in no guaranteed order); it is logged
//! once, does not hold up rotations (nothing verifies against it), and its creation is
//! noticed by the watch in `self_managed.rs`.

use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;

use super::state::Published;
use super::{api_status, unix_now, CertError};
use crate::patch::Pointer;

/// An object the certificate code reads or writes, for error messages with a hint.
#[derive(Clone, Copy, Debug)]
pub enum Object<'a> {
    /// The certificate Secret `namespace/name`.
    Secret(&'a str, &'a str),
    /// The MutatingWebhookConfiguration.
    WebhookConfig(&'a str),
    /// The APIService.
    ApiService(&'a str),
}

impl Object<'_> {
    /// A [`CertError`] for `action` (e.g. `read`) on this object, saying what to check.
    pub fn error(self, action: &str, source: kube::Error) -> CertError {
        let (what, hint) = match (self, api_status(&source)) {
            (_, None) => (
                self.describe(),
                "cannot reach the Kubernetes API server; check the in-cluster config or KUBECONFIG".to_owned(),
            ),
            (Object::Secret(ns, _), Some(403)) => (
                self.describe(),
                format!("the webhook's ServiceAccount needs get, list, watch, create and update on secrets in namespace {ns}"),
            ),
            (Object::WebhookConfig(_), Some(403)) => (
                self.describe(),
                "the webhook's ServiceAccount needs get, list, watch and patch on mutatingwebhookconfigurations".into(),
            ),
            (Object::WebhookConfig(_), Some(404)) => (
                self.describe(),
                "create it (the Helm chart does) or set --webhook-config-name".into(),
            ),
            (Object::ApiService(name), Some(403)) => (
                self.describe(),
                format!(
                    "the webhook's ServiceAccount needs get, list, watch and patch on apiservices \
                     (group apiregistration.k8s.io, resourceNames [{name}]), or leave out --api-service-name"
                ),
            ),
            (_, Some(_)) => (self.describe(), "the API server refused the request".into()),
        };
        CertError::Kube {
            action: format!("{action} {what}"),
            source,
            hint,
        }
    }

    fn describe(self) -> String {
        match self {
            Object::Secret(ns, name) => format!("Secret {ns}/{name}"),
            Object::WebhookConfig(name) => format!("MutatingWebhookConfiguration {name}"),
            Object::ApiService(name) => format!("APIService {name}"),
        }
    }
}

/// Puts `bundle` (PEM) into every webhook of configuration `name` that lacks it. Returns
/// whether the published `caBundle`s equal it, and since when.
pub async fn webhook_config(client: &kube::Client, name: &str, bundle: &str) -> Result<Published, CertError> {
    let object = Object::WebhookConfig(name);
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = api.get(name).await.map_err(|e| object.error("read", e))?;
    let bundle = bundle.as_bytes();
    let webhooks = config.webhooks.unwrap_or_default();
    if webhooks.is_empty() {
        tracing::warn!(webhook_config = %name, "the MutatingWebhookConfiguration has no webhooks; nothing to publish");
        return Ok(Published::No);
    }
    let mut ops = Vec::new();
    for (i, webhook) in webhooks.iter().enumerate() {
        if webhook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle) {
            continue;
        }
        let at = Pointer::new(["webhooks"]).index(i);
        // The test guards against the list changing between our read and this patch.
        ops.push(json!({"op": "test", "path": at.key("name"), "value": webhook.name}));
        ops.push(json!({
            "op": "add",
            "path": at.key("clientConfig").key("caBundle"),
            "value": base64::engine::general_purpose::STANDARD.encode(bundle),
        }));
    }
    if ops.is_empty() {
        return Ok(Published::Already);
    }
    // A JSON patch through the raw client: kube's typed JSON patch needs a feature we do
    // not otherwise use.
    let body = serde_json::to_vec(&ops).unwrap_or_default();
    let request = http::Request::patch(format!(
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"
    ))
    .header(http::header::CONTENT_TYPE, "application/json-patch+json")
    .body(body)
    .map_err(|e| CertError::Issue(format!("cannot build the caBundle patch: {e}")))?;
    client
        .request::<MutatingWebhookConfiguration>(request)
        .await
        .map_err(|e| object.error("patch caBundle of", e))?;
    tracing::info!(webhook_config = %name, "published the CA bundle");
    Ok(Published::WrittenAt(unix_now()))
}

/// Sets `spec.caBundle` of APIService `name` to `bundle` (PEM) if it differs. Returns
/// `Already` when the APIService holds it, or does not exist (then `missing` remembers that
/// it was logged, so that a missing APIService is reported once per appearance), or
/// verifies nothing (`insecureSkipTLSVerify`).
pub async fn api_service(
    client: &kube::Client,
    name: &str,
    bundle: &str,
    missing: &AtomicBool,
) -> Result<Published, CertError> {
    let object = Object::ApiService(name);
    let api: Api<APIService> = Api::all(client.clone());
    let Some(service) = api.get_opt(name).await.map_err(|e| object.error("read", e))? else {
        if !missing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                api_service = %name,
                "APIService {name} not found: its caBundle will be set as soon as it exists (the \
                 operator's chart creates it); until then the aggregated API cannot be verified"
            );
        }
        return Ok(Published::Already);
    };
    if missing.swap(false, Ordering::Relaxed) {
        tracing::info!(api_service = %name, "APIService {name} appeared");
    }
    let spec = service.spec.unwrap_or_default();
    if spec.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle.as_bytes()) {
        return Ok(Published::Already);
    }
    if spec.insecure_skip_tls_verify == Some(true) {
        // The API server refuses a caBundle next to insecureSkipTLSVerify, and verifies nothing.
        tracing::warn!(
            api_service = %name,
            "APIService {name} has insecureSkipTLSVerify: true; not setting its caBundle (remove the \
             flag so that kube-apiserver verifies the operator)"
        );
        return Ok(Published::Already);
    }
    let patch = json!({"spec": {"caBundle": base64::engine::general_purpose::STANDARD.encode(bundle)}});
    match api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {
            tracing::info!(api_service = %name, "published the CA bundle in the APIService");
            Ok(Published::WrittenAt(unix_now()))
        }
        // Deleted between our read and the patch: the watch brings us back when it returns.
        Err(e) if api_status(&e) == Some(404) => Ok(Published::Already),
        Err(e) => Err(object.error("patch caBundle of", e)),
    }
}
