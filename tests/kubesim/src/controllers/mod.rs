//! The built-in controllers (what kube-controller-manager runs): Deployment →
//! ReplicaSet → Pod, StatefulSet, DaemonSet, and Endpoints/EndpointSlices for Services.
//!
//! One task runs them all, level-triggered: after any change to a relevant resource (and
//! at least every second) every controller reconciles every object from the store. The
//! store is the only state, writes go through [`Api`] as `system:kube-controller-manager`
//! (so admission webhooks see the pods controllers create), and a pass runs the
//! controllers in dependency order, so a pass sees the writes of the previous ones and
//! never acts on a stale view (no "expectations" bookkeeping needed).

pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod replicaset;
pub mod statefulset;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::api::{Api, User};
use crate::patch::PatchType;
use crate::resources::ResourceType;
use crate::store::ns_name;

const WATCHED: &[&str] = &[
    "pods",
    "replicasets",
    "deployments",
    "statefulsets",
    "daemonsets",
    "services",
    "endpoints",
    "endpointslices",
];

/// Runs every controller until the task is aborted.
pub async fn run(api: Arc<Api>) {
    let mut events = api.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        reconcile_all(&api).await;
        tokio::select! {
            event = events.recv() => {
                if matches!(&event, Ok(e) if !WATCHED.contains(&e.resource.1.as_str())) {
                    continue;
                }
                while events.try_recv().is_ok() {}
            }
            _ = tick.tick() => {}
        }
    }
}

/// One pass of every controller over every object.
pub async fn reconcile_all(api: &Api) {
    for d in objects(api, "apps", "deployments", None) {
        deployment::reconcile(api, &d).await;
    }
    for rs in objects(api, "apps", "replicasets", None) {
        replicaset::reconcile(api, &rs).await;
    }
    for sts in objects(api, "apps", "statefulsets", None) {
        statefulset::reconcile(api, &sts).await;
    }
    for ds in objects(api, "apps", "daemonsets", None) {
        daemonset::reconcile(api, &ds).await;
    }
    endpoints::reconcile_all(api).await;
}

/// The identity controllers act as.
pub fn user() -> User {
    User::system("system:kube-controller-manager")
}

/// Every stored object of a resource (in `ns`, if given).
pub fn objects(api: &Api, group: &str, plural: &str, ns: Option<&str>) -> Vec<Value> {
    api.store.list(&(group.to_owned(), plural.to_owned()), ns).0
}

/// The uid of the object's controller (the ownerReference with `controller: true`).
pub fn controller_uid(obj: &Value) -> Option<&str> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)?["uid"]
        .as_str()
}

/// Objects of `plural` in `ns` controlled by `owner`.
pub fn owned(api: &Api, group: &str, plural: &str, owner: &Value) -> Vec<Value> {
    let (ns, _) = ns_name(owner);
    let uid = owner["metadata"]["uid"].as_str().unwrap_or_default();
    objects(api, group, plural, Some(&ns))
        .into_iter()
        .filter(|o| controller_uid(o) == Some(uid))
        .collect()
}

/// A controller ownerReference to `owner`.
pub fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Not being deleted and not finished.
pub fn is_active(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

/// The pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// A short, stable hash of a pod template (the `pod-template-hash` label's alphabet).
pub fn template_hash(template: &Value) -> String {
    // serde_json (without preserve_order) writes object keys sorted: a canonical form.
    let text = template.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// A pod from `template` owned by `owner`, named `name` or `<generate>…`.
pub fn pod_from_template(
    template: &Value,
    owner_ref: Value,
    name: Option<&str>,
    generate: &str,
    labels: &[(&str, &str)],
) -> Value {
    let mut meta = json!({
        "labels": template["metadata"]["labels"].clone(),
        "ownerReferences": [owner_ref],
    });
    if let Some(annotations) = template["metadata"]["annotations"].as_object() {
        meta["annotations"] = Value::Object(annotations.clone());
    }
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    for (k, v) in labels {
        meta["labels"][*k] = json!(v);
    }
    match name {
        Some(n) => meta["name"] = json!(n),
        None => meta["generateName"] = json!(generate),
    }
    json!({"metadata": meta, "spec": template["spec"].clone()})
}

/// The served type `group/plural` (always registered: built in).
pub fn rt(api: &Api, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
    api.rt(group, plural).ok()
}

/// Merge-patches `body` into `obj` (`status` subresource if `status`), logging failures.
pub async fn patch(api: &Api, group: &str, plural: &str, obj: &Value, body: Value, status: bool) {
    let Some(rt) = rt(api, group, plural) else { return };
    let (ns, name) = ns_name(obj);
    let sub = if status { Some("status") } else { None };
    if let Err(e) = api
        .patch(
            &user(),
            &rt,
            &ns,
            &name,
            PatchType::Merge,
            body.to_string().as_bytes(),
            sub,
            None,
        )
        .await
    {
        tracing::debug!(object = %format!("{plural}/{ns}/{name}"), error = %e.message, "controller patch failed; retrying on the next pass");
    }
}

/// Replaces the object's `status` if it differs (a conflict waits for the next pass).
pub async fn set_status(api: &Api, group: &str, plural: &str, obj: &Value, status: Value) {
    if obj["status"] == status {
        return;
    }
    let Some(rt) = rt(api, group, plural) else { return };
    let (ns, name) = ns_name(obj);
    let mut new = obj.clone();
    new["status"] = status;
    if let Err(e) = api.update(&user(), &rt, &ns, &name, new, Some("status")).await {
        tracing::debug!(object = %format!("{plural}/{ns}/{name}"), error = %e.message, "status write failed; retrying on the next pass");
    }
}

/// Creates a pod, logging a refusal (e.g. by an admission webhook).
pub async fn create_pod(api: &Api, ns: &str, pod: Value) -> bool {
    let Some(rt) = rt(api, "", "pods") else { return false };
    match api.create(&user(), &rt, ns, pod).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(namespace = ns, error = %e.message, "controller cannot create a pod; retrying on the next pass");
            false
        }
    }
}

/// Deletes a pod gracefully (its own grace period).
pub async fn delete_pod(api: &Api, pod: &Value) {
    let Some(rt) = rt(api, "", "pods") else { return };
    let (ns, name) = ns_name(pod);
    let _ = api
        .delete(&user(), &rt, &ns, &name, &crate::api::DeleteOptions::default())
        .await;
}

/// A condition, keeping `lastTransitionTime` from `old` when the status did not change
/// (so a pass that changes nothing writes nothing).
pub fn condition(old: &Value, kind: &str, status: bool, reason: &str, message: &str) -> Value {
    let status = if status { "True" } else { "False" };
    let since = crate::util::transition_time(old, kind, status);
    json!({"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": since, "lastUpdateTime": since})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hashes_are_stable_and_differ_by_content() {
        let a = json!({"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let mut b = a.clone();
        b["spec"]["containers"][0]["image"] = json!("y");
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a).len(), 10);
    }
}
