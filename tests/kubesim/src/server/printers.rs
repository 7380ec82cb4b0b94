//! Server-side printing of the built-in types `kubectl get` shows most: pods and
//! deployments, with kube-apiserver's columns and cells (`pkg/printers/internalversion`
//! `printPod`, `printDeployment`). Priority-1 columns are the ones `-o wide` adds.
//! Other built-in types have no printer here; kubectl then prints NAME and AGE.

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// The columns of a built-in type with a printer.
pub fn columns(rt: &ResourceType) -> Option<Vec<Value>> {
    let col = |name: &str, kind: &str, priority: i64, description: &str| {
        json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" },
            "priority": priority, "description": description})
    };
    let name = col("Name", "string", 0, "Name must be unique within a namespace.");
    let age = col(
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => Some(vec![
            name,
            col("Ready", "string", 0, "The aggregate readiness state of this pod for accepting traffic."),
            col("Status", "string", 0, "The aggregate status of the containers in this pod."),
            col("Restarts", "string", 0, "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted."),
            age,
            col("IP", "string", 1, "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated."),
            col("Node", "string", 1, "NodeName is a request to schedule this pod onto a specific node."),
            col("Nominated Node", "string", 1, "nominatedNodeName is set only when this pod preempts other pods on the node."),
            col("Readiness Gates", "string", 1, "If specified, all readiness gates will be evaluated for pod readiness."),
        ]),
        ("apps", "deployments") => Some(vec![
            name,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col("Up-to-date", "integer", 0, "Total number of non-terminated pods targeted by this deployment that have the desired template spec."),
            col("Available", "integer", 0, "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment."),
            age,
            col("Containers", "string", 1, "Names of each container in the template."),
            col("Images", "string", 1, "Images referenced by each container in the template."),
            col("Selector", "string", 1, "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment."),
        ]),
        _ => None,
    }
}

/// The cells of `obj`, whose type has [`columns`]; `age` renders a timestamp.
pub fn cells(rt: &ResourceType, obj: &Value, age: &dyn Fn(&Value) -> Value) -> Vec<Value> {
    let name = obj["metadata"]["name"].clone();
    let created = age(&obj["metadata"]["creationTimestamp"]);
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => pod(obj, name, created, age),
        ("apps", "deployments") => deployment(obj, name, created),
        _ => vec![name, created],
    }
}

fn or_none(v: &Value) -> Value {
    match v.as_str() {
        Some(s) if !s.is_empty() => json!(s),
        _ => json!("<none>"),
    }
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// `printPod`: READY, STATUS (the reason a user would want to see), RESTARTS.
fn pod(obj: &Value, name: Value, created: Value, age: &dyn Fn(&Value) -> Value) -> Vec<Value> {
    let status = &obj["status"];
    let total = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
    let mut reason = match str_of(&status["reason"]) {
        "" => str_of(&status["phase"]).to_owned(),
        r => r.to_owned(),
    };
    let (mut ready, mut restarts) = (0, 0);
    let mut last_restart: Option<Value> = None;
    let mut note_restart = |c: &Value| {
        restarts += c["restartCount"].as_i64().unwrap_or(0);
        let finished = &c["lastState"]["terminated"]["finishedAt"];
        if finished.is_string() && last_restart.as_ref().is_none_or(|l| str_of(l) < str_of(finished)) {
            last_restart = Some(finished.clone());
        }
    };
    let inits = status["initContainerStatuses"].as_array().cloned().unwrap_or_default();
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        note_restart(c);
        let (terminated, waiting) = (&c["state"]["terminated"], &c["state"]["waiting"]);
        if terminated["exitCode"] == 0 && terminated.is_object() {
            continue;
        }
        reason = if terminated.is_object() {
            match str_of(&terminated["reason"]) {
                "" => format!("Init:ExitCode:{}", terminated["exitCode"]),
                r => format!("Init:{r}"),
            }
        } else if !str_of(&waiting["reason"]).is_empty() && waiting["reason"] != "PodInitializing" {
            format!("Init:{}", str_of(&waiting["reason"]))
        } else {
            format!("Init:{i}/{}", inits.len())
        };
        initializing = true;
        break;
    }
    if !initializing {
        let mains = status["containerStatuses"].as_array().cloned().unwrap_or_default();
        for c in mains.iter().rev() {
            note_restart(c);
            let (state, waiting, terminated) = (&c["state"], &c["state"]["waiting"], &c["state"]["terminated"]);
            if !str_of(&waiting["reason"]).is_empty() {
                reason = str_of(&waiting["reason"]).to_owned();
            } else if terminated.is_object() {
                reason = match str_of(&terminated["reason"]) {
                    "" if terminated["signal"].as_i64().unwrap_or(0) != 0 => format!("Signal:{}", terminated["signal"]),
                    "" => format!("ExitCode:{}", terminated["exitCode"]),
                    r => r.to_owned(),
                };
            } else if c["ready"] == true && state["running"].is_object() {
                ready += 1;
            }
        }
    }
    if obj["metadata"]["deletionTimestamp"].is_string() {
        reason = "Terminating".into();
    }
    let restarts = match last_restart {
        Some(at) if restarts != 0 => format!("{restarts} ({} ago)", str_of(&age(&at))),
        _ => restarts.to_string(),
    };
    vec![
        name,
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        created,
        or_none(&status["podIP"]),
        or_none(&obj["spec"]["nodeName"]),
        or_none(&status["nominatedNodeName"]),
        json!("<none>"),
    ]
}

/// `printDeployment`.
fn deployment(obj: &Value, name: Value, created: Value) -> Vec<Value> {
    let (spec, status) = (&obj["spec"], &obj["status"]);
    let count = |v: &Value| v.as_i64().unwrap_or(0);
    let containers = spec["template"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let joined = |field: &str| {
        containers
            .iter()
            .map(|c| str_of(&c[field]).to_owned())
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        name,
        json!(format!(
            "{}/{}",
            count(&status["readyReplicas"]),
            count(&spec["replicas"])
        )),
        json!(count(&status["updatedReplicas"])),
        json!(count(&status["availableReplicas"])),
        created,
        json!(joined("name")),
        json!(joined("image")),
        json!(selector(&spec["selector"])),
    ]
}

/// `metav1.FormatLabelSelector`: `a=b,c in (x,y)`, `<none>` when empty.
fn selector(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", str_of(v)))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let values: Vec<&str> = e["values"].as_array().into_iter().flatten().map(str_of).collect();
        let key = str_of(&e["key"]);
        parts.push(match str_of(&e["operator"]) {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            _ => format!("!{key}"),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(group: &str, plural: &str) -> ResourceType {
        ResourceType {
            group: group.into(),
            plural: plural.into(),
            ..ResourceType::default()
        }
    }

    #[test]
    fn pod_cells_read_like_kubectl_get_pods() {
        let age = |_: &Value| json!("5s");
        let running = json!({
            "metadata": {"name": "p"}, "spec": {"nodeName": "n", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.2", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"running": {}},
                 "lastState": {"terminated": {"finishedAt": "2026-01-01T00:00:00Z"}}},
            ]},
        });
        assert_eq!(
            cells(&rt("", "pods"), &running, &age),
            [
                json!("p"),
                json!("1/2"),
                json!("Running"),
                json!("2 (5s ago)"),
                json!("5s"),
                json!("10.0.0.2"),
                json!("n"),
                json!("<none>"),
                json!("<none>")
            ]
        );
        let waiting = json!({"metadata": {"name": "p", "deletionTimestamp": null}, "spec": {"containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "containerStatuses": [{"name": "a", "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}});
        assert_eq!(cells(&rt("", "pods"), &waiting, &age)[2], "ContainerCreating");
        let mut deleting = running.clone();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(cells(&rt("", "pods"), &deleting, &age)[2], "Terminating");
    }

    #[test]
    fn deployment_cells_read_like_kubectl_get_deployments() {
        let d = json!({"metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "web", "image": "kubesim/echo"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let cells = cells(&rt("apps", "deployments"), &d, &|_: &Value| json!("1m"));
        assert_eq!(
            cells,
            [
                json!("web"),
                json!("2/3"),
                json!(3),
                json!(2),
                json!("1m"),
                json!("web"),
                json!("kubesim/echo"),
                json!("app=web")
            ]
        );
    }
}
