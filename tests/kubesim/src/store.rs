//! The object store: every object as JSON, one global `resourceVersion` counter, and
//! an event log that watches replay from (like etcd's revision history).
//!
//! Objects of all versions of a resource share one copy (no conversion). The log keeps
//! the last [`LOG_CAPACITY`] events; a watch from an older version gets `410 Gone`,
//! which is what makes clients re-list, exactly as with a compacted etcd.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;
use tokio::sync::broadcast;

/// Events kept for watches that resume from a resourceVersion.
pub const LOG_CAPACITY: usize = 20_000;

/// (API group, plural resource name).
pub type Resource = (String, String);

/// The logged events after a version, and a receiver for the live ones that follow.
pub type Replay = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventType {
    /// The watch event type string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as recorded in the log.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion of the change.
    pub rv: u64,
    /// The resource.
    pub resource: Resource,
    /// Namespace ("" for cluster-scoped).
    pub namespace: String,
    /// Type.
    pub kind: EventType,
    /// The object after the change (before it, for deletions).
    pub object: Value,
    /// The object before a modification.
    pub old: Option<Value>,
}

/// A store failure, mapped to a Kubernetes Status by the API layer.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreError {
    /// No such object.
    NotFound,
    /// An object with that name exists.
    AlreadyExists,
    /// The given resourceVersion is not the current one.
    Conflict,
    /// A watch asked for a version older than the log holds.
    Gone,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: HashMap<Resource, BTreeMap<(String, String), Value>>,
    log: VecDeque<Arc<Event>>,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
}

impl Default for Store {
    fn default() -> Self {
        let (events, _) = broadcast::channel(65_536);
        Store {
            inner: Mutex::new(Inner {
                rv: 1,
                ..Inner::default()
            }),
            events,
        }
    }
}

/// Namespace and name of an object.
pub fn ns_name(obj: &Value) -> (String, String) {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The resourceVersion of an object, if it has a numeric one.
pub fn rv_of(obj: &Value) -> Option<u64> {
    obj["metadata"]["resourceVersion"].as_str()?.parse().ok()
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// The object `namespace/name` of `resource`.
    pub fn get(&self, resource: &Resource, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(resource)?
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// All objects of `resource` (in `namespace`, if given) and the list's resourceVersion.
    pub fn list(&self, resource: &Resource, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .get(resource)
            .map(|objects| {
                objects
                    .iter()
                    .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        (items, inner.rv)
    }

    /// Stores a new object, stamping its resourceVersion.
    pub fn create(&self, resource: &Resource, mut obj: Value) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let key = ns_name(&obj);
        if inner.objects.get(resource).is_some_and(|o| o.contains_key(&key)) {
            return Err(StoreError::AlreadyExists);
        }
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        inner
            .objects
            .entry(resource.clone())
            .or_default()
            .insert(key.clone(), obj.clone());
        self.record(&mut inner, resource, key.0, EventType::Added, obj.clone(), None);
        Ok(obj)
    }

    /// Replaces an object. With `expect_rv`, fails with `Conflict` unless it is current.
    pub fn update(&self, resource: &Resource, mut obj: Value, expect_rv: Option<u64>) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let key = ns_name(&obj);
        let old = inner
            .objects
            .get(resource)
            .and_then(|o| o.get(&key))
            .cloned()
            .ok_or(StoreError::NotFound)?;
        if expect_rv.is_some_and(|rv| Some(rv) != rv_of(&old)) {
            return Err(StoreError::Conflict);
        }
        obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if obj == old {
            return Ok(old); // no-op writes do not bump the version (as kube-apiserver)
        }
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(inner.rv.to_string());
        inner
            .objects
            .entry(resource.clone())
            .or_default()
            .insert(key.clone(), obj.clone());
        self.record(&mut inner, resource, key.0, EventType::Modified, obj.clone(), Some(old));
        Ok(obj)
    }

    /// Removes an object; returns it as it was.
    pub fn delete(&self, resource: &Resource, namespace: &str, name: &str) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let mut obj = inner
            .objects
            .get_mut(resource)
            .and_then(|o| o.remove(&key))
            .ok_or(StoreError::NotFound)?;
        inner.rv += 1;
        obj["metadata"]["resourceVersion"] = Value::String(inner.rv.to_string());
        self.record(&mut inner, resource, key.0, EventType::Deleted, obj.clone(), None);
        Ok(obj)
    }

    fn record(
        &self,
        inner: &mut Inner,
        resource: &Resource,
        namespace: String,
        kind: EventType,
        object: Value,
        old: Option<Value>,
    ) {
        let event = Arc::new(Event {
            rv: inner.rv,
            resource: resource.clone(),
            namespace,
            kind,
            object,
            old,
        });
        if inner.log.len() == LOG_CAPACITY {
            inner.log.pop_front();
        }
        inner.log.push_back(event.clone());
        let _ = self.events.send(event);
    }

    /// Events after `from` still in the log, plus a receiver for everything later,
    /// taken atomically so nothing falls between them. `Gone` if `from` is too old.
    pub fn watch_from(&self, from: u64) -> Result<Replay, StoreError> {
        let inner = self.lock();
        let oldest = inner.log.front().map_or(inner.rv, |e| e.rv);
        if from + 1 < oldest && inner.log.len() == LOG_CAPACITY {
            return Err(StoreError::Gone);
        }
        let replay = inner.log.iter().filter(|e| e.rv > from).cloned().collect();
        Ok((replay, self.events.subscribe()))
    }

    /// A receiver for every future event (controllers).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.events.subscribe()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> Resource {
        (String::new(), "pods".into())
    }

    #[test]
    fn versions_grow_and_conflicts_are_detected() {
        let store = Store::default();
        let a = store
            .create(&pods(), json!({"metadata": {"namespace": "d", "name": "a"}}))
            .unwrap();
        let rv = rv_of(&a).unwrap();
        assert_eq!(store.create(&pods(), a.clone()), Err(StoreError::AlreadyExists));
        let mut changed = a.clone();
        changed["spec"] = json!({"x": 1});
        let b = store.update(&pods(), changed.clone(), Some(rv)).unwrap();
        assert!(rv_of(&b).unwrap() > rv);
        assert_eq!(store.update(&pods(), changed, Some(rv)), Err(StoreError::Conflict));
        let (replay, _) = store.watch_from(rv).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].kind, EventType::Modified);
        store.delete(&pods(), "d", "a").unwrap();
        assert!(store.get(&pods(), "d", "a").is_none());
    }
}
