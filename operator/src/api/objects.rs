//! Sessions and targets as Kubernetes objects, lists and `meta.k8s.io/v1` Tables (what
//! `kubectl get` asks for with `Accept: application/json;as=Table;g=meta.k8s.io;v=v1`).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use serde_json::{json, Value};

use super::status::GROUP_VERSION;
use crate::registry::Session;
use crate::targets::TargetInfo;

/// Whether the client asked for a Table (its first preference, as kube-apiserver reads it).
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').next().is_some_and(|first| first.contains("as=Table")))
}

/// RFC 3339 in whole seconds, as Kubernetes writes timestamps.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let secs = i64::try_from(secs).unwrap_or(0);
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A session as an `api.shunt.dev/v1` `Session`.
pub fn session_object(s: &Session, resource_version: u64) -> Value {
    json!({
        "apiVersion": GROUP_VERSION, "kind": "Session",
        "metadata": {
            "name": s.name, "namespace": s.namespace, "uid": s.uid,
            "creationTimestamp": timestamp(s.created), "resourceVersion": resource_version.to_string(),
        },
        "spec": s.spec, "status": s.status,
    })
}

/// A `SessionList`.
pub fn session_list(sessions: &[Session], resource_version: u64) -> Value {
    let items: Vec<Value> = sessions.iter().map(|s| session_object(s, resource_version)).collect();
    json!({"apiVersion": GROUP_VERSION, "kind": "SessionList",
        "metadata": {"resourceVersion": resource_version.to_string()}, "items": items})
}

/// Age as kubectl prints it (`HumanDuration`, coarse).
pub fn age(since: SystemTime) -> String {
    let s = SystemTime::now().duration_since(since).map_or(0, |d| d.as_secs());
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if m < 180 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ => format!("{d}d"),
    }
}

fn column(name: &str, kind: &str, format: &str, description: &str) -> Value {
    json!({"name": name, "type": kind, "format": format, "priority": 0, "description": description})
}

fn row(cells: Vec<Value>, object: &Value) -> Value {
    let meta = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]});
    json!({"cells": cells, "object": meta})
}

fn table(columns: Vec<Value>, rows: Vec<Value>, resource_version: u64) -> Value {
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns, "rows": rows})
}

/// The Table of sessions: Name, User, Target, Mode, Filter, Ports, Pods (reached/total), Age.
pub fn session_table(sessions: &[Session], resource_version: u64) -> Value {
    let columns = vec![
        column("Name", "string", "name", "Name of the session."),
        column("User", "string", "", "Who created the session."),
        column("Target", "string", "", "The workload whose traffic the session takes."),
        column("Mode", "string", "", "steal or mirror."),
        column("Filter", "string", "", "Which requests (none: every request)."),
        column("Ports", "string", "", "The app ports."),
        column(
            "Pods",
            "string",
            "",
            "Pods whose sidecar has the session's routes / pods of the target.",
        ),
        column(
            "Phase",
            "string",
            "",
            "Pending until the CLI's tunnel is connected, then Active.",
        ),
        column("Age", "string", "", "Time since the session was created."),
    ];
    let rows = sessions
        .iter()
        .map(|s| {
            let ports: Vec<String> = s.spec.ports.iter().map(|p| p.port.to_string()).collect();
            let reached = s.status.pods.iter().filter(|p| p.connected).count();
            let cells = vec![
                json!(s.name),
                json!(s.user),
                json!(s.spec.target.to_string()),
                json!(s.spec.mode.to_string()),
                json!(s
                    .spec
                    .filter
                    .as_ref()
                    .map_or_else(|| "<none>".to_owned(), ToString::to_string)),
                json!(ports.join(",")),
                json!(format!("{reached}/{}", s.status.pods.len())),
                json!(s.status.phase),
                json!(age(s.created)),
            ];
            row(cells, &session_object(s, resource_version))
        })
        .collect();
    table(columns, rows, resource_version)
}

/// A target as an `api.shunt.dev/v1` `Target` named `<kind>.<name>`.
pub fn target_object(namespace: &str, t: &TargetInfo) -> Value {
    let mut metadata = json!({"name": t.target.resource_name(), "namespace": namespace});
    if let Some(created) = &t.created {
        metadata["creationTimestamp"] = json!(created);
    }
    json!({
        "apiVersion": GROUP_VERSION, "kind": "Target", "metadata": metadata,
        "spec": {"target": t.target.to_string(), "selector": t.selector},
        "status": {"pods": t.pods, "injected": t.injected, "ready": t.ready, "connected": t.connected,
            "notInjected": t.not_injected, "notConnected": t.not_connected},
    })
}

/// A `TargetList`.
pub fn target_list(items: &[(String, TargetInfo)]) -> Value {
    let items: Vec<Value> = items.iter().map(|(ns, t)| target_object(ns, t)).collect();
    json!({"apiVersion": GROUP_VERSION, "kind": "TargetList", "metadata": {}, "items": items})
}

/// The Table of targets: Name, Target, Pods, Injected, Ready, Connected.
pub fn target_table(items: &[(String, TargetInfo)]) -> Value {
    let columns = vec![
        column(
            "Name",
            "string",
            "name",
            "<kind>.<name>: the RBAC resource name of the target.",
        ),
        column("Target", "string", "", "What to pass to shunt intercept/mirror."),
        column("Pods", "integer", "", "Pods of the target."),
        column("Injected", "integer", "", "Pods with a shunt sidecar."),
        column("Ready", "integer", "", "Ready pods."),
        column(
            "Connected",
            "integer",
            "",
            "Pods whose sidecar is connected to the operator.",
        ),
    ];
    let rows = items
        .iter()
        .map(|(ns, t)| {
            let cells = vec![
                json!(t.target.resource_name()),
                json!(t.target.to_string()),
                json!(t.pods),
                json!(t.injected),
                json!(t.ready),
                json!(t.connected),
            ];
            row(cells, &target_object(ns, t))
        })
        .collect();
    table(columns, rows, 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_and_ages_read_like_kubernetes() {
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(1_795_302_000)),
            "2026-11-21T23:00:00Z"
        );
        assert_eq!(age(SystemTime::now() - Duration::from_secs(5)), "5s");
        assert_eq!(age(SystemTime::now() - Duration::from_secs(125)), "2m5s");
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
                .parse()
                .unwrap(),
        );
        assert!(wants_table(&h));
    }
}
