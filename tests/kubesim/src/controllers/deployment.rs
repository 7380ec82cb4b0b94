//! Deployment → ReplicaSets: one ReplicaSet per pod template (named `<deploy>-<hash>`,
//! labelled `pod-template-hash`), scaling, and a rolling update on template change that
//! keeps `replicas + maxSurge` pods at most and `replicas - maxUnavailable` available at
//! least, like kube-controller-manager's deployment controller (Recreate: old ones to
//! zero first). Old ReplicaSets beyond `revisionHistoryLimit` are deleted.

use serde_json::{json, Value};

use super::{condition, controller_uid, owned, owner_ref, patch, set_status, template_hash};
use crate::api::Api;
use crate::store::ns_name;

const HASH_LABEL: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";

fn replicas(obj: &Value) -> i64 {
    obj["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn int(status: &Value, field: &str) -> i64 {
    status[field].as_i64().unwrap_or(0)
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// `value` (an int or a percentage) of `total`, rounding up or down.
pub fn int_or_percent(value: &Value, total: i64, round_up: bool) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
            Some(p) if round_up => (p * total + 99) / 100,
            Some(p) => p * total / 100,
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// Reconciles one Deployment.
pub async fn reconcile(api: &Api, d: &Value) {
    if d["metadata"]["deletionTimestamp"].is_string() {
        return;
    }
    let (ns, name) = ns_name(d);
    let want = replicas(d);
    let template = &d["spec"]["template"];
    let hash = template_hash(template);
    let mut sets = owned(api, "apps", "replicasets", d);
    sets.sort_by_key(revision);
    let next_revision = sets.iter().map(revision).max().unwrap_or(0) + 1;
    let recreate = d["spec"]["strategy"]["type"] == "Recreate";
    let rolling = &d["spec"]["strategy"]["rollingUpdate"];
    let mut surge = int_or_percent(rolling.get("maxSurge").unwrap_or(&json!("25%")), want, true);
    let unavailable = int_or_percent(rolling.get("maxUnavailable").unwrap_or(&json!("25%")), want, false);
    if surge == 0 && unavailable == 0 {
        surge = 1;
    }
    let unavailable = if recreate { want } else { unavailable };
    let (mut new, mut olds): (Vec<Value>, Vec<Value>) = sets
        .into_iter()
        .partition(|rs| rs["metadata"]["labels"][HASH_LABEL] == hash.as_str());
    let old_total: i64 = olds.iter().map(replicas).sum();
    let new = match new.pop() {
        Some(rs) => rs,
        None => {
            let initial = if old_total == 0 {
                want
            } else if recreate {
                0
            } else {
                (want + surge - old_total).clamp(0, want)
            };
            match create_set(api, d, &hash, initial, next_revision).await {
                Some(rs) => rs,
                None => return,
            }
        }
    };
    let old_active_pods: usize = olds.iter().map(|rs| int(&rs["status"], "replicas") as usize).sum();
    let mut targets: Vec<(Value, i64)> = Vec::new();
    if old_total == 0 && (!recreate || old_active_pods == 0) {
        targets.push((new.clone(), want));
    } else if recreate {
        for rs in &olds {
            targets.push((rs.clone(), 0));
        }
    } else {
        // Scale the new set up within the surge budget.
        let total = old_total + replicas(&new);
        let mut new_target = replicas(&new);
        if total < want + surge && new_target < want {
            new_target += (want + surge - total).min(want - new_target);
        }
        new_target = new_target.min(want);
        targets.push((new.clone(), new_target));
        // Scale old sets down as far as availability allows: unhealthy replicas first.
        let min_available = want - unavailable;
        let new_unavailable = (new_target - int(&new["status"], "availableReplicas")).max(0);
        let mut cleanup = (old_total + new_target - min_available - new_unavailable).max(0);
        let available: i64 = olds
            .iter()
            .chain(std::iter::once(&new))
            .map(|rs| int(&rs["status"], "availableReplicas"))
            .sum();
        let mut budget = (available - min_available).max(0);
        for rs in olds.iter_mut() {
            let mut target = replicas(rs);
            let unhealthy = (target - int(&rs["status"], "availableReplicas")).max(0).min(cleanup);
            target -= unhealthy;
            cleanup -= unhealthy;
            let healthy_cut = target.min(budget);
            target -= healthy_cut;
            budget -= healthy_cut;
            targets.push((rs.clone(), target));
        }
    }
    for (rs, target) in &targets {
        if replicas(rs) != *target {
            patch(
                api,
                "apps",
                "replicasets",
                rs,
                json!({"spec": {"replicas": target}}),
                false,
            )
            .await;
        }
    }
    prune_history(api, d, &olds).await;
    if d["metadata"]["annotations"][REVISION] != new["metadata"]["annotations"][REVISION] {
        let body = json!({"metadata": {"annotations": {REVISION: new["metadata"]["annotations"][REVISION]}}});
        patch(api, "apps", "deployments", d, body, false).await;
    }
    write_status(api, d, &ns, &name, want, unavailable).await;
}

async fn create_set(api: &Api, d: &Value, hash: &str, replicas: i64, revision: i64) -> Option<Value> {
    let (ns, name) = ns_name(d);
    let mut template = d["spec"]["template"].clone();
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d["spec"]["selector"].clone();
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let mut labels = d["spec"]["template"]["metadata"]["labels"].clone();
    labels[HASH_LABEL] = json!(hash);
    let rs = json!({
        "metadata": {
            "name": format!("{name}-{hash}"),
            "labels": labels,
            "annotations": {REVISION: revision.to_string(), "deployment.kubernetes.io/desired-replicas": replicas.to_string()},
            "ownerReferences": [owner_ref(d, "apps/v1", "Deployment")],
        },
        "spec": {"replicas": replicas, "minReadySeconds": d["spec"]["minReadySeconds"].as_i64().unwrap_or(0), "selector": selector, "template": template},
    });
    let rt = super::rt(api, "apps", "replicasets")?;
    match api.create(&super::user(), &rt, &ns, rs).await {
        Ok((created, _)) => Some(created),
        Err(e) => {
            tracing::warn!(deployment = %format!("{ns}/{name}"), error = %e.message, "cannot create the ReplicaSet; retrying");
            None
        }
    }
}

async fn prune_history(api: &Api, d: &Value, olds: &[Value]) {
    let limit = d["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
    let idle: Vec<&Value> = olds
        .iter()
        .filter(|rs| replicas(rs) == 0 && int(&rs["status"], "replicas") == 0)
        .collect();
    if idle.len() <= limit {
        return;
    }
    let Some(rt) = super::rt(api, "apps", "replicasets") else {
        return;
    };
    for rs in &idle[..idle.len() - limit] {
        let (ns, name) = ns_name(rs);
        let _ = api
            .delete(&super::user(), &rt, &ns, &name, &crate::api::DeleteOptions::default())
            .await;
    }
}

async fn write_status(api: &Api, d: &Value, ns: &str, name: &str, want: i64, max_unavailable: i64) {
    let sets: Vec<Value> = super::objects(api, "apps", "replicasets", Some(ns))
        .into_iter()
        .filter(|rs| controller_uid(rs) == d["metadata"]["uid"].as_str())
        .collect();
    let hash = template_hash(&d["spec"]["template"]);
    let sum = |field: &str| -> i64 { sets.iter().map(|rs| int(&rs["status"], field)).sum() };
    let updated = sets
        .iter()
        .filter(|rs| rs["metadata"]["labels"][HASH_LABEL] == hash.as_str())
        .map(|rs| int(&rs["status"], "replicas"))
        .sum::<i64>();
    let (total, ready, available) = (sum("replicas"), sum("readyReplicas"), sum("availableReplicas"));
    let old = &d["status"];
    let complete = updated == want && total == want && available == want;
    let rs_name = format!("{name}-{hash}");
    let progressing = if complete {
        condition(
            old,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
        )
    } else {
        condition(
            old,
            "Progressing",
            true,
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{rs_name}\" is progressing."),
        )
    };
    let minimum = available >= want - max_unavailable;
    let available_condition = if minimum {
        condition(
            old,
            "Available",
            true,
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        condition(
            old,
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    let mut status = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "conditions": [available_condition, progressing],
    });
    if total - available > 0 {
        status["unavailableReplicas"] = json!(total - available);
    }
    set_status(api, "apps", "deployments", d, status).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_kubernetes() {
        assert_eq!(int_or_percent(&json!("25%"), 3, true), 1);
        assert_eq!(int_or_percent(&json!("25%"), 3, false), 0);
        assert_eq!(int_or_percent(&json!(2), 3, false), 2);
        assert_eq!(int_or_percent(&json!("50%"), 5, true), 3);
    }
}
