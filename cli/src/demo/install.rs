//! Installs shunt into kubesim the way a user installs it into a cluster: the Helm chart's
//! rendered manifests (`charts/shunt` with `charts/shunt/ci/kubesim-*-values.yaml`,
//! written by `scripts/chart-test --write-demo`, checked for drift by the chart tests),
//! created object by object like `kubectl apply -f`, so the chart's RBAC, webhook
//! configuration and APIService are the ones exercised.
//!
//! What differs from a real install is only what `helm install --set` would change:
//! - [`Settings::session_grace`]: the operator's `--session-grace`;
//! - [`Settings::operator_replicas`]: the chart value `operator.replicas`;
//! - loopback mode: pods share the host's network and cannot resolve Service names, so the
//!   sidecars are pointed at the hub Service's cluster IP (`--operator-addr`; the TLS name
//!   stays `shunt-operator.<ns>.svc`). In netns mode every pod resolves Services through
//!   its `/etc/hosts`, and nothing changes.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::discovery::{ApiCapabilities, Scope};
use serde_json::Value;

use super::kube::{poll, request};

/// The chart rendered for kubesim in loopback mode (port takeover, listeners on the pod IP).
pub const LOOPBACK_MANIFESTS: &str = include_str!("install.yaml");
/// The chart rendered for kubesim in netns mode (nftables redirect, as on a real cluster).
pub const NETNS_MANIFESTS: &str = include_str!("install-netns.yaml");

/// The release namespace of the rendered manifests.
pub const RELEASE_NS: &str = "shunt-system";
/// The hub's Service and port.
const HUB_SERVICE: &str = "shunt-operator";
const HUB_PORT: u16 = 15443;

/// What the install changes from the rendered manifests.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The operator's `--session-grace`.
    pub session_grace: Duration,
    /// Point sidecars at the hub's cluster IP (loopback mode).
    pub hub_by_ip: bool,
    /// Replicas of the operator (the chart's `operator.replicas`: 1, or 2 for a standby).
    pub operator_replicas: u32,
}

/// The documents of a multi-document YAML text, empty documents dropped.
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(text).context("the rendered chart is not valid YAML")?;
    Ok(docs.into_iter().filter(|d| d.is_object()).collect())
}

/// Creation order: definitions and identities first, workloads after their Services,
/// the registrations that make the API server call the components last.
fn rank(kind: &str) -> u8 {
    match kind {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        "ServiceAccount" | "ClusterRole" | "Role" | "ClusterRoleBinding" | "RoleBinding" => 2,
        "ConfigMap" | "Secret" => 3,
        "Service" => 4,
        "Deployment" | "StatefulSet" | "DaemonSet" => 6,
        "APIService" | "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration" => 7,
        _ => 5,
    }
}

/// Creates every object of `manifests`, adjusted by `settings`, and waits until the
/// control plane serves: the webhook has published its caBundle and the APIService
/// `v1.api.shunt.dev` is Available.
pub async fn install(
    admin: &kube::Client,
    manifests: &str,
    settings: &Settings,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut docs = documents(manifests)?;
    docs.sort_by_key(|d| rank(d["kind"].as_str().unwrap_or_default()));
    let mut kinds: BTreeMap<(String, String), (ApiResource, ApiCapabilities)> = BTreeMap::new();
    for mut doc in docs {
        let (api_version, kind) = (
            doc["apiVersion"].as_str().unwrap_or_default().to_owned(),
            doc["kind"].as_str().unwrap_or_default().to_owned(),
        );
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        if kind == "Deployment" {
            adjust(admin, &mut doc, settings).await?;
        }
        let key = (api_version.clone(), kind.clone());
        if !kinds.contains_key(&key) {
            let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
            let gvk = GroupVersionKind::gvk(group, version, &kind);
            // A CRD's kind is served a moment after its definition is created.
            let found = poll(
                &format!("the API to serve {kind} ({api_version})"),
                timeout,
                async || kube::discovery::pinned_kind(admin, &gvk).await.ok(),
            )
            .await?;
            kinds.insert(key.clone(), found);
        }
        let (resource, caps) = &kinds[&key];
        let api: kube::Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => {
                let ns = doc["metadata"]["namespace"].as_str().unwrap_or(RELEASE_NS).to_owned();
                kube::Api::namespaced_with(admin.clone(), &ns, resource)
            }
            Scope::Cluster => kube::Api::all_with(admin.clone(), resource),
        };
        let object: DynamicObject =
            serde_json::from_value(doc).with_context(|| format!("{kind} {name} is not a Kubernetes object"))?;
        api.create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("cannot create {kind} {name} of the rendered chart"))?;
    }
    wait_serving(admin, timeout).await
}

/// The `--set` equivalents of [`Settings`] on the chart's Deployments.
async fn adjust(admin: &kube::Client, deployment: &mut Value, settings: &Settings) -> anyhow::Result<()> {
    let grace = format!("{}ms", settings.session_grace.as_millis());
    match deployment["metadata"]["name"].as_str() {
        Some("shunt-operator") => {
            deployment["spec"]["replicas"] = Value::from(settings.operator_replicas);
            set_arg(deployment, "--session-grace", &grace)
        }
        Some("shunt-webhook") if settings.hub_by_ip => {
            let path = format!("/api/v1/namespaces/{RELEASE_NS}/services/{HUB_SERVICE}");
            let (status, service) = request(admin, "GET", &path, None).await?;
            anyhow::ensure!(
                status == 200,
                "Service {HUB_SERVICE} of the chart is missing ({status})"
            );
            let ip = service["spec"]["clusterIP"]
                .as_str()
                .with_context(|| format!("Service {HUB_SERVICE} has no cluster IP"))?;
            set_arg(deployment, "--operator-addr", &format!("{ip}:{HUB_PORT}"))
        }
        _ => Ok(()),
    }
}

/// Sets the value after `flag` in the first container's args.
fn set_arg(deployment: &mut Value, flag: &str, value: &str) -> anyhow::Result<()> {
    let name = deployment["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array_mut()
        .with_context(|| format!("Deployment {name} of the chart has no container args"))?;
    let at = args
        .iter()
        .position(|a| a == flag)
        .with_context(|| format!("Deployment {name} of the chart has no {flag} argument"))?;
    let slot = args
        .get_mut(at + 1)
        .with_context(|| format!("{flag} of Deployment {name} has no value"))?;
    *slot = Value::from(value);
    Ok(())
}

/// Waits like `helm install --wait`, and then some: every Deployment of the release has
/// all replicas Ready, the webhook's Service has endpoints (pods created before that would
/// be admitted without a sidecar: `failurePolicy: Ignore`), its caBundle is published and
/// the APIService is Available.
async fn wait_serving(admin: &kube::Client, timeout: Duration) -> anyhow::Result<()> {
    for deployment in ["shunt-operator", "shunt-webhook"] {
        poll(&format!("Deployment {deployment} to be Ready"), timeout, async || {
            let path = format!("/apis/apps/v1/namespaces/{RELEASE_NS}/deployments/{deployment}");
            let (_, d) = request(admin, "GET", &path, None).await.ok()?;
            // Only the operator's leader is Ready; a standby waits for the Lease.
            let want = match deployment {
                "shunt-operator" => 1,
                _ => d["spec"]["replicas"].as_u64().unwrap_or(1),
            };
            (d["status"]["readyReplicas"].as_u64().unwrap_or(0) >= want).then_some(())
        })
        .await?;
    }
    poll("Service shunt-webhook to have a ready endpoint", timeout, async || {
        let path = format!("/api/v1/namespaces/{RELEASE_NS}/endpoints/shunt-webhook");
        let (_, endpoints) = request(admin, "GET", &path, None).await.ok()?;
        let ready = endpoints["subsets"]
            .as_array()?
            .iter()
            .any(|s| s["addresses"].as_array().is_some_and(|a| !a.is_empty()));
        ready.then_some(())
    })
    .await?;
    poll("the webhook to publish its caBundle", timeout, async || {
        let path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/shunt-webhook";
        let (_, config) = request(admin, "GET", path, None).await.ok()?;
        let bundle = config["webhooks"][0]["clientConfig"]["caBundle"]
            .as_str()
            .unwrap_or_default();
        (!bundle.is_empty()).then_some(())
    })
    .await?;
    poll(
        "the APIService v1.api.shunt.dev to become Available",
        timeout,
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_rendered_charts_hold_the_control_plane() {
        for manifests in [LOOPBACK_MANIFESTS, NETNS_MANIFESTS] {
            let docs = documents(manifests).unwrap();
            let named =
                |kind: &str, name: &str| docs.iter().any(|d| d["kind"] == kind && d["metadata"]["name"] == name);
            assert!(named("Deployment", "shunt-operator") && named("Deployment", "shunt-webhook"));
            assert!(named("APIService", "v1.api.shunt.dev") && named("MutatingWebhookConfiguration", "shunt-webhook"));
            assert!(named("ClusterRole", "shunt-user") && named("ClusterRole", "shunt-admin"));
            assert!(named("Service", HUB_SERVICE));
        }
    }

    #[test]
    fn set_arg_replaces_the_flags_value_and_names_a_missing_flag() {
        let docs = documents(LOOPBACK_MANIFESTS).unwrap();
        let mut operator = docs
            .into_iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "shunt-operator")
            .unwrap();
        set_arg(&mut operator, "--session-grace", "1500ms").unwrap();
        let args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap();
        let at = args.iter().position(|a| a == "--session-grace").unwrap();
        assert_eq!(args[at + 1], "1500ms");
        let error = set_arg(&mut operator, "--no-such-flag", "x").unwrap_err().to_string();
        assert!(error.contains("--no-such-flag"), "{error}");
    }
}
