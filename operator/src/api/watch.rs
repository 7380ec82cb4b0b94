//! `?watch=true` on sessions: JSON lines of `{"type": ADDED|MODIFIED|DELETED, "object": …}`
//! like a Kubernetes watch, with resourceVersion = the registry's generation.
//!
//! Without a `resourceVersion` (or with `"0"`) the stream starts with an ADDED event per
//! existing session; with one, it reports changes after the current state (the registry
//! keeps no history, so an older version is treated as "now").

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use super::objects::session_object;
use super::ListParams;
use crate::registry::Registry;

type Snapshot = BTreeMap<(String, String), Value>;

fn snapshot(registry: &Registry, namespace: Option<&str>, params: &ListParams) -> Snapshot {
    registry
        .list(namespace)
        .into_iter()
        .filter(|s| params.selects_name(&s.name))
        .map(|s| ((s.namespace.clone(), s.name.clone()), session_object(&s, 0)))
        .collect()
}

fn event(kind: &str, mut object: Value, generation: u64) -> Bytes {
    object["metadata"]["resourceVersion"] = json!(generation.to_string());
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

/// The events that turn `old` into `new`.
fn diff(old: &Snapshot, new: &Snapshot, generation: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    for (key, obj) in new {
        match old.get(key) {
            None => out.push(event("ADDED", obj.clone(), generation)),
            Some(before) if before != obj => out.push(event("MODIFIED", obj.clone(), generation)),
            Some(_) => {}
        }
    }
    for (key, obj) in old {
        if !new.contains_key(key) {
            out.push(event("DELETED", obj.clone(), generation));
        }
    }
    out
}

/// The watch response.
pub fn sessions(registry: Registry, namespace: Option<String>, params: ListParams) -> Response {
    let mut changes = registry.changes();
    let generation = *changes.borrow_and_update();
    let now = snapshot(&registry, namespace.as_deref(), &params);
    let from_scratch = params
        .resource_version
        .as_deref()
        .is_none_or(|rv| rv.is_empty() || rv == "0");
    let first = if from_scratch {
        diff(&Snapshot::new(), &now, generation)
    } else {
        Vec::new()
    };
    let state = (changes, now, VecDeque::from(first), registry, namespace, params.clone());
    let stream = futures_util::stream::unfold(
        state,
        |(mut changes, mut prev, mut pending, registry, ns, params)| async move {
            loop {
                if let Some(line) = pending.pop_front() {
                    return Some((
                        Ok::<_, Infallible>(line),
                        (changes, prev, pending, registry, ns, params),
                    ));
                }
                changes.changed().await.ok()?;
                let generation = *changes.borrow_and_update();
                let next = snapshot(&registry, ns.as_deref(), &params);
                pending.extend(diff(&prev, &next, generation));
                prev = next;
            }
        },
    );
    let timeout = params
        .timeout_seconds
        .map_or(Duration::from_secs(30 * 60), Duration::from_secs);
    let stream = stream.take_until(tokio::time::sleep(timeout));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn diffs_become_added_modified_deleted_events() {
        let key = |n: &str| ("shop".to_owned(), n.to_owned());
        let old = Snapshot::from([
            (key("a"), json!({"metadata": {}, "v": 1})),
            (key("b"), json!({"metadata": {}})),
        ]);
        let new = Snapshot::from([
            (key("a"), json!({"metadata": {}, "v": 2})),
            (key("c"), json!({"metadata": {}})),
        ]);
        let kinds: Vec<String> = diff(&old, &new, 7)
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_slice(l).unwrap();
                assert_eq!(v["object"]["metadata"]["resourceVersion"], "7");
                v["type"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(kinds, ["MODIFIED", "ADDED", "DELETED"]);
    }
}
