//! StatefulSet → Pods named `<sts>-0 … <sts>-(n-1)`: created in order (each waits for
//! the previous to be ready, unless `podManagementPolicy: Parallel`), removed from the
//! highest ordinal down, and replaced from the highest ordinal down when the template
//! changes (`RollingUpdate`; `OnDelete` leaves that to the user). Pods carry
//! `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
//! `controller-revision-hash`, and `hostname`/`subdomain` from `serviceName`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{
    create_pod, delete_pod, is_active, is_ready, owned, owner_ref, pod_from_template, set_status, template_hash,
};
use crate::api::Api;
use crate::store::ns_name;

const REVISION_LABEL: &str = "controller-revision-hash";

fn is_ready_and_active(pod: &Value) -> bool {
    is_active(pod) && is_ready(pod)
}

/// Reconciles one StatefulSet.
pub async fn reconcile(api: &Api, sts: &Value) {
    if sts["metadata"]["deletionTimestamp"].is_string() {
        return;
    }
    let (ns, name) = ns_name(sts);
    let want = sts["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
    let revision = format!("{name}-{}", template_hash(&sts["spec"]["template"]));
    let pods: BTreeMap<usize, Value> = owned(api, "", "pods", sts)
        .into_iter()
        .filter_map(|p| {
            let ordinal = p["metadata"]["name"]
                .as_str()?
                .strip_prefix(&format!("{name}-"))?
                .parse()
                .ok()?;
            Some((ordinal, p))
        })
        .collect();
    let reference = owner_ref(sts, "apps/v1", "StatefulSet");
    for ordinal in 0..want {
        match pods.get(&ordinal) {
            None => {
                let pod_name = format!("{name}-{ordinal}");
                let index = ordinal.to_string();
                let labels = [
                    ("statefulset.kubernetes.io/pod-name", pod_name.as_str()),
                    ("apps.kubernetes.io/pod-index", index.as_str()),
                    (REVISION_LABEL, revision.as_str()),
                ];
                let mut pod = pod_from_template(
                    &sts["spec"]["template"],
                    reference.clone(),
                    Some(&pod_name),
                    "",
                    &labels,
                );
                pod["spec"]["hostname"] = json!(pod_name);
                if let Some(service) = sts["spec"]["serviceName"].as_str().filter(|s| !s.is_empty()) {
                    pod["spec"]["subdomain"] = json!(service);
                }
                if !create_pod(api, &ns, pod).await || !parallel {
                    break;
                }
            }
            Some(pod) if pod["status"]["phase"] == "Failed" && pod["metadata"]["deletionTimestamp"].is_null() => {
                delete_pod(api, pod).await;
                if !parallel {
                    break;
                }
            }
            Some(pod) if !parallel && !is_ready_and_active(pod) => break,
            Some(_) => {}
        }
    }
    // Scale down from the highest ordinal (one at a time unless Parallel).
    for (_, pod) in pods.range(want..).rev() {
        if pod["metadata"]["deletionTimestamp"].is_string() {
            if parallel {
                continue;
            }
            break;
        }
        delete_pod(api, pod).await;
        if !parallel {
            break;
        }
    }
    // Rolling update: replace the highest outdated pod once all others are ready.
    let all_ready = (0..want).all(|i| pods.get(&i).is_some_and(|p| is_active(p) && is_ready(p)));
    if sts["spec"]["updateStrategy"]["type"] != "OnDelete" && all_ready {
        if let Some((_, outdated)) = pods
            .range(..want)
            .rev()
            .find(|(_, p)| p["metadata"]["labels"][REVISION_LABEL] != revision.as_str())
        {
            delete_pod(api, outdated).await;
        }
    }
    let pods: Vec<Value> = owned(api, "", "pods", sts).into_iter().filter(is_active).collect();
    let ready = pods.iter().filter(|p| is_ready(p)).count();
    let updated = pods
        .iter()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == revision.as_str())
        .count();
    let current_revision = if updated == pods.len() {
        revision.clone()
    } else {
        sts["status"]["currentRevision"]
            .as_str()
            .unwrap_or(&revision)
            .to_owned()
    };
    let current = pods
        .iter()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == current_revision.as_str())
        .count();
    let status = json!({
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": current,
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": revision,
        "collisionCount": 0,
    });
    set_status(api, "apps", "statefulsets", sts, status).await;
}
