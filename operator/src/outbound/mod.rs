//! Outbound traffic of `shunt exec`: connections and DNS questions of a developer's
//! program that leave from a pod of the target.
//!
//! Two halves meet here:
//! - [`Reverse`]: the sidecars' reverse connections. A sidecar told `outbound: true` in its
//!   routes dials the hub a second time and upgrades ([`crate::hub`], protocol in
//!   [`shunt_proto::hub`]); on that connection the sidecar is the HTTP/2 server and the
//!   operator the client. [`Reverse`] holds one `SendRequest` per pod.
//! - [`relay`]: the CLI's `sessions/{name}/tunnel?dir=outbound`, on which the CLI is the
//!   HTTP/2 client: each `CONNECT host:port` or `GET /dns?name=` is checked against the
//!   policies ([`crate::policy::exposure`]) and relayed to a pod of the session's target.

pub mod relay;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hyper::client::conn::http2;

use crate::hub::PodIdentity;
use crate::registry::Selector;
use crate::tunnel::Body;

struct Entry {
    id: u64,
    labels: BTreeMap<String, String>,
    sender: http2::SendRequest<Body>,
}

/// The sidecars' reverse connections, by pod. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reverse {
    inner: Arc<Mutex<BTreeMap<(String, String), Entry>>>,
    next_id: Arc<AtomicU64>,
    turn: Arc<AtomicUsize>,
}

/// A pod chosen to carry an outbound request.
pub struct Picked {
    /// The pod's name.
    pub pod: String,
    /// Its reverse connection.
    pub sender: http2::SendRequest<Body>,
}

impl Reverse {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(String, String), Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the reverse connection of `pod` (replacing an older one); the id lets
    /// [`Reverse::remove`] leave a newer connection alone.
    pub fn insert(&self, pod: &PodIdentity, sender: http2::SendRequest<Body>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            id,
            labels: pod.labels.clone(),
            sender,
        };
        self.lock().insert((pod.namespace.clone(), pod.name.clone()), entry);
        id
    }

    /// Forgets the connection `id` of pod `namespace/name`, if it is still the current one.
    pub fn remove(&self, namespace: &str, name: &str, id: u64) {
        let mut map = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        if map.get(&key).is_some_and(|e| e.id == id) {
            map.remove(&key);
        }
    }

    /// Whether pod `namespace/name` has a live reverse connection.
    pub fn is_connected(&self, namespace: &str, name: &str) -> bool {
        self.lock()
            .get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|e| !e.sender.is_closed())
    }

    /// A pod of `namespace` that `selector` selects and whose reverse connection is up,
    /// taking turns between them so connections spread over the replicas.
    pub fn pick(&self, namespace: &str, selector: &Selector) -> Option<Picked> {
        let map = self.lock();
        let live: Vec<(&String, &Entry)> = map
            .iter()
            .filter(|((ns, _), e)| {
                ns == namespace
                    && !selector.is_empty()
                    && selector.iter().all(|(k, v)| e.labels.get(k) == Some(v))
                    && !e.sender.is_closed()
            })
            .map(|((_, pod), e)| (pod, e))
            .collect();
        if live.is_empty() {
            return None;
        }
        let (pod, entry) = live[self.turn.fetch_add(1, Ordering::Relaxed) % live.len()];
        Some(Picked {
            pod: pod.clone(),
            sender: entry.sender.clone(),
        })
    }
}
