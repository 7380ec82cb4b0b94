//! DaemonSet → one pod on the single node (`<ds>-<suffix>`), replaced when the template
//! changes (`RollingUpdate`; `OnDelete` leaves that to the user). Node selectors,
//! affinity and taints are not evaluated: kubesim's one node runs every daemon.

use serde_json::{json, Value};

use super::{
    create_pod, delete_pod, is_active, is_ready, owned, owner_ref, pod_from_template, set_status, template_hash,
};
use crate::api::Api;
use crate::defaults::NODE_NAME;
use crate::store::ns_name;

const REVISION_LABEL: &str = "controller-revision-hash";

/// Reconciles one DaemonSet.
pub async fn reconcile(api: &Api, ds: &Value) {
    if ds["metadata"]["deletionTimestamp"].is_string() {
        return;
    }
    let (ns, name) = ns_name(ds);
    let revision = template_hash(&ds["spec"]["template"]);
    let pods = owned(api, "", "pods", ds);
    let mut active: Vec<Value> = pods.iter().filter(|p| is_active(p)).cloned().collect();
    for failed in pods
        .iter()
        .filter(|p| p["status"]["phase"] == "Failed" && p["metadata"]["deletionTimestamp"].is_null())
    {
        delete_pod(api, failed).await;
    }
    active.sort_by_key(|p| {
        p["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    for extra in active.iter().skip(1) {
        delete_pod(api, extra).await;
    }
    let terminating = pods.iter().any(|p| p["metadata"]["deletionTimestamp"].is_string());
    match active.first() {
        None if !terminating => {
            let reference = owner_ref(ds, "apps/v1", "DaemonSet");
            let mut pod = pod_from_template(
                &ds["spec"]["template"],
                reference,
                None,
                &format!("{name}-"),
                &[(REVISION_LABEL, &revision)],
            );
            pod["spec"]["nodeName"] = json!(NODE_NAME);
            create_pod(api, &ns, pod).await;
        }
        Some(pod)
            if pod["metadata"]["labels"][REVISION_LABEL] != revision.as_str()
                && ds["spec"]["updateStrategy"]["type"] != "OnDelete" =>
        {
            delete_pod(api, pod).await;
        }
        _ => {}
    }
    let pods: Vec<Value> = owned(api, "", "pods", ds).into_iter().filter(is_active).collect();
    let ready = pods.iter().filter(|p| is_ready(p)).count();
    let updated = pods
        .iter()
        .filter(|p| p["metadata"]["labels"][REVISION_LABEL] == revision.as_str())
        .count();
    let status = json!({
        "observedGeneration": ds["metadata"]["generation"],
        "desiredNumberScheduled": 1,
        "currentNumberScheduled": pods.len().min(1),
        "numberMisscheduled": 0,
        "numberReady": ready,
        "numberAvailable": ready,
        "numberUnavailable": 1 - ready.min(1),
        "updatedNumberScheduled": updated,
    });
    set_status(api, "apps", "daemonsets", ds, status).await;
}
