//! Watches: JSON event lines streamed until the client goes away or `timeoutSeconds`.
//!
//! - no `resourceVersion` (or `"0"`): the current objects as `ADDED`, then changes;
//! - a `resourceVersion`: every change after it from the store's log, then live; a
//!   version older than the log gets an `ERROR` event with a 410 `Status` (`Expired`),
//!   which tells clients to list again;
//! - `allowWatchBookmarks=true`: `BOOKMARK` events with the current version every second;
//! - `sendInitialEvents=true`: initial `ADDED` events closed by a bookmark annotated
//!   `k8s.io/initial-events-end`;
//! - label/field selectors: an object that starts or stops matching is sent as
//!   `ADDED`/`DELETED`, as kube-apiserver's watch cache does;
//! - `Accept: …;as=Table` (`kubectl get -w`): each event's object is a one-row Table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::{Body, ChannelBody};
use crate::api::{key, Api};
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::store::{Event, EventType, StoreError};

struct Filter {
    resource: (String, String),
    namespace: String,
    name: String,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let meta = &obj["metadata"];
        (self.namespace.is_empty() || meta["namespace"] == self.namespace.as_str())
            && (self.name.is_empty() || meta["name"] == self.name.as_str())
            && self.labels.matches(&meta["labels"])
            && self.fields.matches(obj)
    }

    /// The event to send for a stored change, if any.
    fn translate(&self, e: &Event) -> Option<(EventType, Value)> {
        if e.resource != self.resource {
            return None;
        }
        let now = self.matches(&e.object);
        match (e.kind, e.old.as_ref().map(|o| self.matches(o))) {
            (EventType::Modified, Some(true)) if !now => Some((EventType::Deleted, e.object.clone())),
            (EventType::Modified, Some(false)) if now => Some((EventType::Added, e.object.clone())),
            (EventType::Modified, Some(false)) => None,
            (kind, _) if now => Some((kind, e.object.clone())),
            _ => None,
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

/// Starts a watch and returns the streaming response.
pub fn watch(
    api: Arc<Api>,
    render: Render,
    namespace: String,
    labels: LabelSelector,
    fields: FieldSelector,
    params: &HashMap<String, String>,
    name: &str,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let filter = Filter {
        resource: key(&render.rt),
        namespace,
        name: name.to_owned(),
        labels,
        fields,
    };
    let from = params
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse::<u64>().ok());
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let initial_events = params.get("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    tokio::spawn(async move {
        let run = stream(api, render, filter, from, bookmarks, initial_events, tx);
        match timeout {
            Some(t) => {
                let _ = tokio::time::timeout(t, run).await;
            }
            None => run.await,
        }
    });
    let mut resp = Response::new(ChannelBody(rx).boxed());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// How an event's object is sent: the object, or its Table.
pub struct Render {
    /// The watched type.
    pub rt: Arc<ResourceType>,
    /// Send one-row Tables (the type must have a printer, [`super::table::available`]).
    pub as_table: bool,
}

impl Render {
    fn event(&self, kind: &str, mut obj: Value) -> Bytes {
        obj["apiVersion"] = json!(self.rt.api_version());
        obj["kind"] = json!(self.rt.kind);
        if self.as_table {
            let rv = obj["metadata"]["resourceVersion"].clone();
            obj = super::table::table(&self.rt, &[obj], &rv);
        }
        line(kind, &obj)
    }
}

async fn stream(
    api: Arc<Api>,
    render: Render,
    filter: Filter,
    from: Option<u64>,
    bookmarks: bool,
    initial_events: bool,
    tx: mpsc::Sender<Bytes>,
) {
    let rt = &render.rt;
    let (replay, mut live, mut last_rv) = match from {
        Some(from) => match api.store.watch_from(from) {
            Ok((replay, live)) => (replay, live, from),
            Err(StoreError::Gone | StoreError::NotFound | StoreError::AlreadyExists | StoreError::Conflict) => {
                let status = ApiError::gone(format!("too old resource version: {from}")).to_status();
                let _ = tx.send(line("ERROR", &status)).await;
                return;
            }
        },
        None => {
            // Subscribe first, then list: an event in between is both listed and replayed,
            // and dropped below by its resourceVersion.
            let live = api.store.subscribe();
            let (items, rv) = api.store.list(
                &filter.resource,
                (!filter.namespace.is_empty()).then_some(filter.namespace.as_str()),
            );
            for obj in items.into_iter().filter(|o| filter.matches(o)) {
                if tx.send(render.event("ADDED", obj)).await.is_err() {
                    return;
                }
            }
            if initial_events {
                let mark = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
                if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                    return;
                }
            }
            (Vec::new(), live, rv)
        }
    };
    for e in replay {
        last_rv = e.rv;
        if let Some((kind, obj)) = filter.translate(&e) {
            if tx.send(render.event(kind.as_str(), obj)).await.is_err() {
                return;
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = live.recv() => match event {
                Ok(e) if e.rv <= last_rv => {}
                Ok(e) => {
                    last_rv = e.rv;
                    if let Some((kind, obj)) = filter.translate(&e) {
                        if tx.send(render.event(kind.as_str(), obj)).await.is_err() {
                            return;
                        }
                    }
                }
                // Too slow to keep up: end the watch; the client resumes from its last version.
                Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick(), if bookmarks => {
                // Only versions already delivered: a bookmark past an event still queued
                // would make a resuming client skip it.
                let rv = last_rv;
                let mark = json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rv.to_string()}});
                if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
        }
    }
}
