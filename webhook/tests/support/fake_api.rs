//! An in-process fake of the Kubernetes API server, for the two resources the webhook
//! uses: Secrets and MutatingWebhookConfigurations. It is honest where the webhook's
//! correctness depends on it: a global `resourceVersion`, `409 AlreadyExists` on a create
//! of an existing name, `409 Conflict` on an update with a stale `resourceVersion`, JSON
//! patches (a failed `test` is a 422), list with a `metadata.name` field selector, and
//! watches that replay every change after the given `resourceVersion`.
//!
//! Temporary: these tests move to `tests/kubesim` (the project's test cluster) once it
//! exists.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::watch;

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(String, String), Value>,
    /// Every change: (resourceVersion, collection, event type, object).
    log: Vec<(u64, String, &'static str, Value)>,
    counts: BTreeMap<String, u64>,
    create_delay: Duration,
}

/// The running fake.
pub struct FakeApi {
    /// Where it listens (plain HTTP on loopback).
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    changed: Arc<watch::Sender<u64>>,
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    changed: Arc<watch::Sender<u64>>,
}

/// The collection of Secrets of `namespace`.
pub fn secrets(namespace: &str) -> String {
    format!("secrets/{namespace}")
}

/// The collection of MutatingWebhookConfigurations.
pub const CONFIGS: &str = "mutatingwebhookconfigurations";

impl FakeApi {
    /// Starts the fake on `127.0.0.1:0`.
    pub async fn start() -> FakeApi {
        let store = Arc::new(Mutex::new(Store::default()));
        let changed = Arc::new(watch::channel(0).0);
        let shared = Shared {
            store: store.clone(),
            changed: changed.clone(),
        };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeApi { addr, store, changed }
    }

    /// A client for the fake.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Stores `object` in `collection` as a create would.
    pub fn insert(&self, collection: &str, mut object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let mut store = self.store.lock().unwrap();
        store.rv += 1;
        object["metadata"]["resourceVersion"] = store.rv.to_string().into();
        let rv = store.rv;
        store.log.push((rv, collection.to_owned(), "ADDED", object.clone()));
        store.objects.insert((collection.to_owned(), name), object);
        drop(store);
        self.changed.send_replace(rv);
    }

    /// The stored object.
    pub fn get(&self, collection: &str, name: &str) -> Option<Value> {
        let store = self.store.lock().unwrap();
        store.objects.get(&(collection.to_owned(), name.to_owned())).cloned()
    }

    /// Replaces a stored object as an unconditional update would (a human editing it).
    pub fn update(&self, collection: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let mut store = self.store.lock().unwrap();
        let rv = commit(&mut store, collection, &name, object, "MODIFIED");
        drop(store);
        self.changed.send_replace(rv);
    }

    /// Deletes a stored object.
    pub fn delete(&self, collection: &str, name: &str) {
        let mut store = self.store.lock().unwrap();
        if let Some(object) = store.objects.remove(&(collection.to_owned(), name.to_owned())) {
            store.rv += 1;
            let rv = store.rv;
            store.log.push((rv, collection.to_owned(), "DELETED", object));
            drop(store);
            self.changed.send_replace(rv);
        }
    }

    /// Number of objects in `collection`.
    pub fn count(&self, collection: &str) -> usize {
        let store = self.store.lock().unwrap();
        store.objects.keys().filter(|(c, _)| c == collection).count()
    }

    /// How often `what` happened, e.g. `"POST secrets/ns"` or `"409 secrets/ns"`.
    pub fn counter(&self, what: &str) -> u64 {
        self.store.lock().unwrap().counts.get(what).copied().unwrap_or(0)
    }

    /// Makes every create wait before it commits, so concurrent creators all get past
    /// their "does it exist?" check first.
    pub fn set_create_delay(&self, delay: Duration) {
        self.store.lock().unwrap().create_delay = delay;
    }
}

fn commit(store: &mut Store, collection: &str, name: &str, mut object: Value, kind: &'static str) -> u64 {
    store.rv += 1;
    object["metadata"]["resourceVersion"] = store.rv.to_string().into();
    let rv = store.rv;
    store.log.push((rv, collection.to_owned(), kind, object.clone()));
    store.objects.insert((collection.to_owned(), name.to_owned()), object);
    rv
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

/// `(collection, name, list kind)` of a request path.
fn route(path: &str) -> Option<(String, Option<String>, &'static str)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "secrets", rest @ ..] if rest.len() <= 1 => {
            Some((secrets(ns), rest.first().map(|s| s.to_string()), "SecretList"))
        }
        ["apis", "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", rest @ ..]
            if rest.len() <= 1 =>
        {
            Some((
                CONFIGS.to_owned(),
                rest.first().map(|s| s.to_string()),
                "MutatingWebhookConfigurationList",
            ))
        }
        _ => None,
    }
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((collection, name, list_kind)) = route(uri.path()) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no such path {}", uri.path()),
        );
    };
    let count = |store: &mut Store, what: String| *store.counts.entry(what).or_default() += 1;
    let selector = query
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("metadata.name="))
        .map(str::to_owned);
    match (method, name) {
        (Method::GET, None) if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) => {
            let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            watch_stream(shared, collection, selector, from)
        }
        (Method::GET, None) => {
            let store = shared.store.lock().unwrap();
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|((c, n), _)| *c == collection && selector.as_ref().is_none_or(|s| s == n))
                .map(|(_, v)| v.clone())
                .collect();
            let api_version = if collection == CONFIGS {
                "admissionregistration.k8s.io/v1"
            } else {
                "v1"
            };
            axum::Json(json!({
                "apiVersion": api_version, "kind": list_kind,
                "metadata": {"resourceVersion": store.rv.to_string()}, "items": items,
            }))
            .into_response()
        }
        (Method::GET, Some(name)) => match shared.store.lock().unwrap().objects.get(&(collection, name.clone())) {
            Some(object) => axum::Json(object.clone()).into_response(),
            None => status(StatusCode::NOT_FOUND, "NotFound", &format!("\"{name}\" not found")),
        },
        (Method::POST, None) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
            };
            let delay = shared.store.lock().unwrap().create_delay;
            tokio::time::sleep(delay).await;
            let name = object["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let mut store = shared.store.lock().unwrap();
            count(&mut store, format!("POST {collection}"));
            if store.objects.contains_key(&(collection.clone(), name.clone())) {
                count(&mut store, format!("409 {collection}"));
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("\"{name}\" already exists"),
                );
            }
            object["metadata"]["uid"] = format!("uid-{}", store.rv + 1).into();
            let rv = commit(&mut store, &collection, &name, object, "ADDED");
            let created = store.objects[&(collection, name)].clone();
            drop(store);
            shared.changed.send_replace(rv);
            (StatusCode::CREATED, axum::Json(created)).into_response()
        }
        (Method::PUT, Some(name)) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON");
            };
            let mut store = shared.store.lock().unwrap();
            count(&mut store, format!("PUT {collection}"));
            let key = (collection.clone(), name.clone());
            let Some(current) = store.objects.get(&key) else {
                return status(StatusCode::NOT_FOUND, "NotFound", &format!("\"{name}\" not found"));
            };
            let sent = object["metadata"]["resourceVersion"].as_str();
            if sent.is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str()) {
                count(&mut store, format!("409 {collection}"));
                return status(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the object has been modified; please apply your changes to the latest version and try again",
                );
            }
            let rv = commit(&mut store, &collection, &name, object, "MODIFIED");
            let updated = store.objects[&key].clone();
            drop(store);
            shared.changed.send_replace(rv);
            axum::Json(updated).into_response()
        }
        (Method::PATCH, Some(name)) => {
            let json_patch = headers
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json-patch+json"));
            if !json_patch {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    "JSON patch only",
                );
            }
            let Ok(patch) = serde_json::from_slice::<json_patch::Patch>(&body) else {
                return status(StatusCode::BAD_REQUEST, "BadRequest", "not a JSON patch");
            };
            let mut store = shared.store.lock().unwrap();
            count(&mut store, format!("PATCH {collection}"));
            let key = (collection.clone(), name.clone());
            let Some(mut object) = store.objects.get(&key).cloned() else {
                return status(StatusCode::NOT_FOUND, "NotFound", &format!("\"{name}\" not found"));
            };
            if let Err(error) = json_patch::patch(&mut object, &patch) {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &error.to_string());
            }
            let rv = commit(&mut store, &collection, &name, object, "MODIFIED");
            let patched = store.objects[&key].clone();
            drop(store);
            shared.changed.send_replace(rv);
            axum::Json(patched).into_response()
        }
        (method, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} not served"),
        ),
    }
}

fn watch_stream(shared: Shared, collection: String, selector: Option<String>, from: u64) -> Response {
    let changes = shared.changed.subscribe();
    let (initial, cursor): (Vec<Bytes>, u64) = {
        let store = shared.store.lock().unwrap();
        if from == 0 {
            // resourceVersion 0 (or none): the current objects as ADDED, then changes.
            let objects = store
                .objects
                .iter()
                .filter(|((c, n), _)| *c == collection && selector.as_ref().is_none_or(|s| s == n))
                .map(|(_, v)| line("ADDED", v))
                .collect();
            (objects, store.rv)
        } else {
            (Vec::new(), from)
        }
    };
    let state = (shared, changes, cursor, std::collections::VecDeque::from(initial));
    let stream = futures_util::stream::unfold(state, move |(shared, mut changes, mut cursor, mut pending)| {
        let collection = collection.clone();
        let selector = selector.clone();
        async move {
            loop {
                if let Some(bytes) = pending.pop_front() {
                    return Some((Ok::<_, Infallible>(bytes), (shared, changes, cursor, pending)));
                }
                changes.borrow_and_update();
                {
                    let store = shared.store.lock().unwrap();
                    let after = cursor;
                    for (rv, c, kind, object) in store.log.iter().filter(|(rv, ..)| *rv > after) {
                        let name = object["metadata"]["name"].as_str().unwrap_or_default();
                        if *c == collection && selector.as_deref().is_none_or(|s| s == name) {
                            pending.push_back(line(kind, object));
                        }
                        cursor = cursor.max(*rv);
                    }
                }
                if pending.is_empty() && changes.changed().await.is_err() {
                    return None;
                }
            }
        }
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
    text.push(b'\n');
    Bytes::from(text)
}
