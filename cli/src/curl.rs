//! The `curl` command that would hit a session: the Service that selects the target's
//! pods, the port, and the filter's header.

use k8s_openapi::api::core::v1::Service;
use kube::api::ListParams;
use kube::Api;
use serde_json::Value;
use shunt_proto::{TargetKind, TargetRef};

use crate::cluster::Cluster;

/// `curl -H 'x-user: alice' http://api.shop:8080/`, when a Service selects the target.
pub async fn example(cluster: &Cluster, target: &TargetRef, port: u16, filter: Option<&str>) -> Option<String> {
    let ns = &cluster.namespace;
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
    let labels = template_labels(cluster, target).await;
    let list = services.list(&ListParams::default()).await.ok()?;
    let (service, service_port) = list.items.iter().find_map(|svc| {
        let spec = svc.spec.as_ref()?;
        let name = svc.metadata.name.clone()?;
        let selected = match (&labels, target.kind) {
            (_, TargetKind::Service) => name == target.name,
            (Some(labels), _) => spec
                .selector
                .as_ref()
                .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v))),
            (None, _) => false,
        };
        if !selected {
            return None;
        }
        let ports = spec.ports.clone().unwrap_or_default();
        let by_target = ports.iter().find(|p| {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            matches!(p.target_port, Some(IntOrString::Int(t)) if t == i32::from(port))
                || (p.target_port.is_none() && p.port == i32::from(port))
        });
        Some((name, by_target.or(ports.first()).map_or(i32::from(port), |p| p.port)))
    })?;
    let header = filter
        .and_then(simple_header)
        .map(|h| format!("-H '{h}' "))
        .unwrap_or_default();
    Some(format!("curl {header}http://{service}.{ns}:{service_port}/"))
}

/// The filter as a curl header, if it is one exact header match.
fn simple_header(filter: &str) -> Option<String> {
    let (name, value) = filter.split_once(':')?;
    let (name, value) = (name.trim(), value.trim());
    let plain = !name.eq_ignore_ascii_case("path")
        && !filter.contains("&&")
        && !filter.contains("||")
        && !value.starts_with(['~', '^', '"', '='])
        && !value.contains('\'');
    plain.then(|| format!("{name}: {value}"))
}

async fn template_labels(cluster: &Cluster, target: &TargetRef) -> Option<std::collections::BTreeMap<String, String>> {
    let plural = match target.kind {
        TargetKind::Deployment => "apis/apps/v1/namespaces/{ns}/deployments",
        TargetKind::StatefulSet => "apis/apps/v1/namespaces/{ns}/statefulsets",
        TargetKind::ReplicaSet => "apis/apps/v1/namespaces/{ns}/replicasets",
        TargetKind::DaemonSet => "apis/apps/v1/namespaces/{ns}/daemonsets",
        TargetKind::Rollout => "apis/argoproj.io/v1alpha1/namespaces/{ns}/rollouts",
        TargetKind::Service => return None,
    };
    let path = format!("/{}/{}", plural.replace("{ns}", &cluster.namespace), target.name);
    let obj: Value = cluster.get_json(&path).await.ok()?;
    serde_json::from_value(obj["spec"]["template"]["metadata"]["labels"].clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_header_filters_become_curl_headers() {
        assert_eq!(simple_header("x-user: alice").as_deref(), Some("x-user: alice"));
        assert_eq!(simple_header("x-user: ~^al"), None);
        assert_eq!(simple_header("path: /api"), None);
        assert_eq!(simple_header("x-user: a && path: /b"), None);
    }
}
