//! The target's pod as `shunt exec` needs it: the app container (its env and ports)
//! and, when one runs, a live pod (for `fieldRef` values). Read with the developer's
//! credentials, like `kubectl get`.

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::api::ListParams;
use kube::Api;
use serde_json::Value;
use shunt_proto::names::SIDECAR_CONTAINER;
use shunt_proto::{TargetKind, TargetRef};

use crate::cluster::{explain, Cluster};

/// The target's app container and a running pod of it.
pub struct TargetPod {
    /// The container the program stands in for.
    pub container: Container,
    /// A running pod of the target, if any.
    pub pod: Option<Pod>,
}

impl TargetPod {
    /// Every `containerPort` of the app container.
    pub fn ports(&self) -> Vec<u16> {
        self.container
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| u16::try_from(p.container_port).ok())
            .collect()
    }
}

/// Reads the target's pod template (a Service: one of its pods) and picks the
/// container: `container` if given, else the first one that is not shunt's sidecar.
pub async fn load(cluster: &Cluster, target: &TargetRef, container: Option<&str>) -> anyhow::Result<TargetPod> {
    let ns = &cluster.namespace;
    let path = match target.kind {
        TargetKind::Deployment => format!("/apis/apps/v1/namespaces/{ns}/deployments/{}", target.name),
        TargetKind::StatefulSet => format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{}", target.name),
        TargetKind::ReplicaSet => format!("/apis/apps/v1/namespaces/{ns}/replicasets/{}", target.name),
        TargetKind::DaemonSet => format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{}", target.name),
        TargetKind::Rollout => format!("/apis/argoproj.io/v1alpha1/namespaces/{ns}/rollouts/{}", target.name),
        TargetKind::Service => format!("/api/v1/namespaces/{ns}/services/{}", target.name),
    };
    let object = cluster
        .get_json(&path)
        .await
        .map_err(explain)
        .with_context(|| format!("cannot read {target} in namespace {ns}"))?;
    let selector = match target.kind {
        TargetKind::Service => object["spec"]["selector"].clone(),
        _ => object["spec"]["selector"]["matchLabels"].clone(),
    };
    let selector = label_selector(&selector);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let running = match &selector {
        Some(selector) => pods
            .list(&ListParams::default().labels(selector))
            .await
            .map(|list| {
                list.items
                    .into_iter()
                    .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            })
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "cannot list the target's pods; fieldRefs of a pod are skipped");
                None
            }),
        None => None,
    };
    let spec: PodSpec = match (target.kind, &running) {
        (TargetKind::Service, Some(pod)) => pod.spec.clone().unwrap_or_default(),
        (TargetKind::Service, None) => anyhow::bail!("service {} selects no running pod in {ns}", target.name),
        _ => serde_json::from_value(object["spec"]["template"]["spec"].clone())
            .with_context(|| format!("{target} has no readable pod template"))?,
    };
    let names: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
    let chosen = match container {
        Some(name) => spec.containers.into_iter().find(|c| c.name == name),
        None => spec.containers.into_iter().find(|c| c.name != SIDECAR_CONTAINER),
    };
    let container = chosen.with_context(|| {
        format!(
            "{target} has no container {} (its containers: {})",
            container.unwrap_or("besides the sidecar"),
            names.join(", ")
        )
    })?;
    Ok(TargetPod {
        container,
        pod: running,
    })
}

/// `{"app": "api"}` → `app=api`; `None` for an empty or missing selector.
fn label_selector(labels: &Value) -> Option<String> {
    let map = labels.as_object().filter(|m| !m.is_empty())?;
    Some(
        map.iter()
            .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(","),
    )
}
