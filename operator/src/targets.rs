//! Targets: the workloads a session can take traffic from, and their pods.
//!
//! A target resolves to a label selector once, when the session is created:
//! Deployment, StatefulSet, ReplicaSet, DaemonSet and Argo Rollout (a dynamic object,
//! `argoproj.io/v1alpha1`) by `spec.selector.matchLabels`, a Service by `spec.selector`.
//! Pods created later (scale-up, rollout) carry the same labels, so they are selected too.
//! `matchExpressions` are not used: a workload selecting only by expressions is refused.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::Api;
use shunt_proto::names::LABEL_INJECTED;
use shunt_proto::session::{TargetKind, TargetRef};

use crate::registry::Selector;

/// Why a target could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No such workload.
    #[error("{target} not found in namespace {namespace:?}: check the name with `kubectl get {kind} -n {namespace}`")]
    NotFound {
        /// The target.
        target: TargetRef,
        /// Its namespace.
        namespace: String,
        /// Its kind's resource (for the hint).
        kind: &'static str,
    },
    /// The workload selects no pods by labels.
    #[error("{target} has no label selector (matchLabels): shunt finds a target's pods by labels")]
    NoSelector {
        /// The target.
        target: TargetRef,
    },
    /// The Kubernetes API failed.
    #[error("cannot read {what}: {source}")]
    Kube {
        /// What was being read.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

/// The API resource of a target kind.
pub fn api_resource(kind: TargetKind) -> ApiResource {
    let (group, version, kind_name, plural) = match kind {
        TargetKind::Deployment => ("apps", "v1", "Deployment", "deployments"),
        TargetKind::StatefulSet => ("apps", "v1", "StatefulSet", "statefulsets"),
        TargetKind::ReplicaSet => ("apps", "v1", "ReplicaSet", "replicasets"),
        TargetKind::DaemonSet => ("apps", "v1", "DaemonSet", "daemonsets"),
        TargetKind::Rollout => ("argoproj.io", "v1alpha1", "Rollout", "rollouts"),
        TargetKind::Service => ("", "v1", "Service", "services"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind_name), plural)
}

/// The label selector of a workload object of `kind`.
pub fn selector_of(kind: TargetKind, obj: &serde_json::Value) -> Selector {
    let labels = match kind {
        TargetKind::Service => &obj["spec"]["selector"],
        _ => &obj["spec"]["selector"]["matchLabels"],
    };
    labels
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// `k=v,k2=v2`.
pub fn selector_string(selector: &Selector) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// Resolves `target` in `namespace` to its pods' selector.
pub async fn resolve(client: &kube::Client, namespace: &str, target: &TargetRef) -> Result<Selector, TargetError> {
    let ar = api_resource(target.kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
    let obj = match api.get_opt(&target.name).await {
        Ok(Some(obj)) => obj,
        Ok(None) => {
            return Err(TargetError::NotFound {
                target: target.clone(),
                namespace: namespace.to_owned(),
                kind: target.kind.as_str(),
            })
        }
        // A 404 from the API itself: the kind is not installed (no Argo Rollouts CRD).
        Err(e) if is_not_found(&e) => {
            return Err(TargetError::NotFound {
                target: target.clone(),
                namespace: namespace.to_owned(),
                kind: target.kind.as_str(),
            })
        }
        Err(source) => {
            return Err(TargetError::Kube {
                what: target.to_string(),
                source,
            })
        }
    };
    let selector = selector_of(target.kind, &serde_json::to_value(&obj).unwrap_or_default());
    if selector.is_empty() {
        return Err(TargetError::NoSelector { target: target.clone() });
    }
    Ok(selector)
}

/// The pods of `namespace`.
pub async fn pods(client: &kube::Client, namespace: &str) -> Result<Vec<Pod>, TargetError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|source| TargetError::Kube {
            what: format!("pods in {namespace}"),
            source,
        })?;
    Ok(list.items)
}

/// Whether `pod` is selected by `selector` (and not terminating).
pub fn selects(selector: &Selector, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && !selector.is_empty()
        && selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Whether `pod` has a shunt sidecar.
pub fn injected(pod: &Pod) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_INJECTED))
        .is_some_and(|v| v == "true")
}

/// Whether `pod` is Ready.
pub fn ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Whether `pod` is Running (its sidecar can have connected).
fn running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// A workload as `targets` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// The target.
    pub target: TargetRef,
    /// Its pods' selector.
    pub selector: Selector,
    /// Pods selected.
    pub pods: usize,
    /// Of which injected.
    pub injected: usize,
    /// Of which ready.
    pub ready: usize,
    /// Injected pods whose sidecar holds a connection to this operator's hub.
    pub connected: usize,
    /// Pods without a sidecar (created before the namespace was labelled, or opted out).
    pub not_injected: Vec<String>,
    /// Injected, running pods whose sidecar is not connected to the hub (yet).
    pub not_connected: Vec<String>,
    /// When the workload was created (RFC 3339), if known.
    pub created: Option<String>,
}

/// The injectable workloads of `namespace` (Deployments, StatefulSets, DaemonSets,
/// Rollouts where the CRD exists, Services with a selector) with their pod counts;
/// `connected(pod name)` says whether a pod's sidecar is connected to the hub.
pub async fn list(
    client: &kube::Client,
    namespace: &str,
    connected: impl Fn(&str) -> bool,
) -> Result<Vec<TargetInfo>, TargetError> {
    let pods = pods(client, namespace).await?;
    let mut out = Vec::new();
    let kinds = [
        TargetKind::Deployment,
        TargetKind::StatefulSet,
        TargetKind::DaemonSet,
        TargetKind::Rollout,
        TargetKind::Service,
    ];
    for kind in kinds {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &api_resource(kind));
        let items = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) if is_not_found(&e) => continue,
            Err(source) => {
                return Err(TargetError::Kube {
                    what: format!("{}s in {namespace}", kind.as_str()),
                    source,
                })
            }
        };
        for obj in items {
            let Some(name) = obj.metadata.name.clone() else {
                continue;
            };
            let selector = selector_of(kind, &serde_json::to_value(&obj).unwrap_or_default());
            if selector.is_empty() {
                continue;
            }
            let selected: Vec<&Pod> = pods.iter().filter(|p| selects(&selector, p)).collect();
            let name_of = |p: &&Pod| p.metadata.name.clone().unwrap_or_default();
            let is_connected = |p: &&&Pod| connected(p.metadata.name.as_deref().unwrap_or_default());
            let not_injected: Vec<String> = selected.iter().filter(|p| !injected(p)).map(name_of).collect();
            let not_connected = selected
                .iter()
                .filter(|p| injected(p) && running(p) && !is_connected(p))
                .map(name_of)
                .collect();
            out.push(TargetInfo {
                target: TargetRef { kind, name },
                pods: selected.len(),
                injected: selected.len() - not_injected.len(),
                ready: selected.iter().filter(|p| ready(p)).count(),
                connected: selected.iter().filter(|p| injected(p) && is_connected(p)).count(),
                not_injected,
                not_connected,
                selector,
                created: obj.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
            });
        }
    }
    Ok(out)
}

/// Labels as a selector (helper for tests and callers holding raw maps).
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_come_from_match_labels_or_the_service_selector() {
        let deploy = json!({"spec": {"selector": {"matchLabels": {"app": "api"}}}});
        assert_eq!(selector_of(TargetKind::Deployment, &deploy), labels(&[("app", "api")]));
        assert_eq!(selector_of(TargetKind::Rollout, &deploy), labels(&[("app", "api")]));
        let svc = json!({"spec": {"selector": {"app": "web", "tier": "front"}}});
        assert_eq!(
            selector_string(&selector_of(TargetKind::Service, &svc)),
            "app=web,tier=front"
        );
        assert!(selector_of(TargetKind::Deployment, &json!({"spec": {}})).is_empty());
        let mut pod = Pod::default();
        pod.metadata.labels = Some(labels(&[("app", "api"), (LABEL_INJECTED, "true")]));
        assert!(selects(&labels(&[("app", "api")]), &pod) && injected(&pod) && !ready(&pod));
        assert!(!selects(&labels(&[("app", "web")]), &pod));
        assert!(!selects(&Selector::new(), &pod));
    }
}
