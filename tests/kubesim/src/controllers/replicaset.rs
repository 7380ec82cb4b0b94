//! ReplicaSet → Pods: keeps `spec.replicas` active pods (named `<rs>-<suffix>`, owned by
//! the set), deleting not-ready, then newest pods first when scaling down, and reports
//! `replicas`/`readyReplicas`/`availableReplicas`/`observedGeneration`.

use std::cmp::Reverse;

use serde_json::{json, Value};

use super::{create_pod, delete_pod, is_active, is_ready, owned, owner_ref, pod_from_template, set_status};
use crate::api::Api;
use crate::store::ns_name;

/// Reconciles one ReplicaSet.
pub async fn reconcile(api: &Api, rs: &Value) {
    if rs["metadata"]["deletionTimestamp"].is_string() {
        return;
    }
    let (ns, name) = ns_name(rs);
    let want = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let pods = owned(api, "", "pods", rs);
    let mut active: Vec<Value> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    // Failed pods of a ReplicaSet are replaced (and removed, as the pod GC would).
    for failed in pods
        .iter()
        .filter(|p| p["status"]["phase"] == "Failed" && p["metadata"]["deletionTimestamp"].is_null())
    {
        delete_pod(api, failed).await;
    }
    if active.len() < want {
        let reference = owner_ref(rs, "apps/v1", "ReplicaSet");
        for _ in active.len()..want {
            let pod = pod_from_template(
                &rs["spec"]["template"],
                reference.clone(),
                None,
                &format!("{name}-"),
                &[],
            );
            if !create_pod(api, &ns, pod).await {
                break;
            }
        }
    } else if active.len() > want {
        // Delete the least useful first: not ready before ready, newest before oldest.
        active.sort_by_key(|p| {
            let created = p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let pod_name = p["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            (is_ready(p), Reverse(created), Reverse(pod_name))
        });
        let surplus = active.len() - want;
        for pod in active.drain(..surplus) {
            delete_pod(api, &pod).await;
        }
    }
    let pods: Vec<Value> = owned(api, "", "pods", rs).into_iter().filter(is_active).collect();
    let ready = pods.iter().filter(|p| is_ready(p)).count();
    let status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": rs["metadata"]["generation"],
    });
    set_status(api, "apps", "replicasets", rs, status).await;
}
