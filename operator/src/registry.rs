//! The sessions the operator holds, and the routes they give each pod.
//!
//! A session targets the pods its target selects (a label selector in a namespace,
//! resolved when the session is created). Creating a session checks it against every
//! other session on the same target port: steal filters must be provably disjoint
//! ([`shunt_proto::filter::overlap`], through a [`DisjointIndex`] per port so that
//! thousands of sessions are not compared pair by pair), an unfiltered steal needs the
//! port to itself, mirrors never conflict. A refusal carries the witness request both
//! filters match.
//!
//! Every change bumps a generation published on a `watch` channel; the hub re-computes
//! the routes of each connected pod ([`Registry::routes_for_pod`]) when it moves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use shunt_proto::filter::{DisjointIndex, Witness};
use shunt_proto::route::{Mode, Route, RouteSet, Upstream};
use shunt_proto::session::{SessionSpec, SessionStatus};
use tokio::sync::watch;

/// A label selector resolved from a target: every `key=value` must match.
pub type Selector = BTreeMap<String, String>;

/// One session.
#[derive(Clone, Debug)]
pub struct Session {
    /// Namespace (the target's).
    pub namespace: String,
    /// Name (unique in the namespace; also the route id in sidecars).
    pub name: String,
    /// UID.
    pub uid: String,
    /// Who created it.
    pub user: String,
    /// Their groups.
    pub groups: Vec<String>,
    /// What they asked for.
    pub spec: SessionSpec,
    /// The pods of the target: this selector in `namespace`.
    pub selector: Selector,
    /// When it was created.
    pub created: SystemTime,
    /// What the operator made of it.
    pub status: SessionStatus,
}

/// Why a session was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// A session of that name exists.
    #[error("session {0:?} already exists")]
    Exists(String),
    /// Its filter can match a request another session's filter matches.
    #[error("the filter overlaps session {other:?} of {user} on port {port}: both match {witness}; choose a filter that differs, e.g. your own value of the identity header")]
    Overlap {
        /// The other session.
        other: String,
        /// Its user.
        user: String,
        /// The shared port.
        port: u16,
        /// A request both filters match.
        witness: Box<Witness>,
    },
    /// An unfiltered steal and another steal on one port.
    #[error("port {port} is taken by session {other:?} of {user}: an unfiltered steal needs the port to itself")]
    PortTaken {
        /// The other session.
        other: String,
        /// Its user.
        user: String,
        /// The port.
        port: u16,
    },
}

/// How long the reason of an ended session is kept for the CLI that looks for it.
const ENDED_KEPT: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Default)]
struct Inner {
    sessions: BTreeMap<SessionKey, Session>,
    /// The steal sessions of every port of every target (kept with `sessions`).
    steals: BTreeMap<PortKey, PortSteals>,
    generation: u64,
    /// Sessions ended on purpose (deleted, grace period over), with why: a CLI that finds
    /// its session gone can tell that from an operator restart, which forgets everything.
    ended: BTreeMap<(String, String), (std::time::Instant, String)>,
    /// Outbound tunnels open per session (`shunt exec`): while a session has one, the
    /// pods it selects are told to keep their reverse connection up.
    outbound: BTreeMap<(String, String), usize>,
}

/// The registry. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        }
    }
}

/// `(namespace, name)` of a session.
type SessionKey = (String, String);

/// The steal sessions of one port of one target: the place where filters must be disjoint.
#[derive(Default)]
struct PortSteals {
    /// Every steal session on the port.
    all: BTreeSet<SessionKey>,
    /// The unfiltered one, if any (then it is the only one).
    unfiltered: Option<SessionKey>,
    /// The filters of the filtered ones, indexed so a new filter is not compared with
    /// every held one (10,000 sessions of `x-user: <name>` are 50 million pairs).
    filters: DisjointIndex<SessionKey>,
}

/// `(namespace, target, port)`: steal filters on one of these must be disjoint.
type PortKey = (String, String, u16);

fn port_keys(s: &Session) -> impl Iterator<Item = PortKey> + '_ {
    let target = s.spec.target.to_string();
    s.spec
        .ports
        .iter()
        .filter(|_| s.spec.mode == Mode::Steal)
        .map(move |p| (s.namespace.clone(), target.clone(), p.port))
}

/// The first refusal `new` meets among the held steals, port by port.
fn conflict(
    new: &Session,
    steals: &BTreeMap<PortKey, PortSteals>,
    sessions: &BTreeMap<SessionKey, Session>,
) -> Option<Refusal> {
    for key in port_keys(new) {
        let Some(held) = steals.get(&key) else { continue };
        let port = key.2;
        let taken = |other: &SessionKey| {
            let old = sessions.get(other)?;
            Some(Refusal::PortTaken {
                other: old.name.clone(),
                user: old.user.clone(),
                port,
            })
        };
        if let Some(other) = &held.unfiltered {
            return taken(other);
        }
        match &new.spec.filter {
            None => {
                if let Some(other) = held.all.first() {
                    return taken(other);
                }
            }
            Some(filter) => {
                if let Some((other, witness)) = held.filters.first_overlap(filter) {
                    let old = sessions.get(other)?;
                    return Some(Refusal::Overlap {
                        other: old.name.clone(),
                        user: old.user.clone(),
                        port,
                        witness: Box::new(witness),
                    });
                }
            }
        }
    }
    None
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self, inner: &mut Inner) {
        inner.generation += 1;
        self.changed.send_replace(inner.generation);
    }

    /// Adds `session` unless it conflicts with one already held.
    pub fn create(&self, session: Session) -> Result<Session, Refusal> {
        let mut inner = self.lock();
        let key = (session.namespace.clone(), session.name.clone());
        if inner.sessions.contains_key(&key) {
            return Err(Refusal::Exists(session.name));
        }
        if let Some(refusal) = conflict(&session, &inner.steals, &inner.sessions) {
            return Err(refusal);
        }
        for port in port_keys(&session) {
            let held = inner.steals.entry(port).or_default();
            held.all.insert(key.clone());
            match &session.spec.filter {
                Some(filter) => held.filters.insert(key.clone(), filter.clone()),
                None => held.unfiltered = Some(key.clone()),
            }
        }
        inner.ended.remove(&key);
        inner.sessions.insert(key, session.clone());
        self.bump(&mut inner);
        Ok(session)
    }

    /// Removes a session; its routes leave every sidecar at the next push.
    pub fn delete(&self, namespace: &str, name: &str) -> Option<Session> {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let gone = inner.sessions.remove(&key)?;
        for port in port_keys(&gone) {
            if let Some(held) = inner.steals.get_mut(&port) {
                held.all.remove(&key);
                held.filters.remove(&key);
                if held.unfiltered.as_ref() == Some(&key) {
                    held.unfiltered = None;
                }
                if held.all.is_empty() {
                    inner.steals.remove(&port);
                }
            }
        }
        self.bump(&mut inner);
        Some(gone)
    }

    /// Ends a session on purpose and remembers `reason` (e.g. `deleted by alice`) for a while.
    pub fn end(&self, namespace: &str, name: &str, reason: String) -> Option<Session> {
        let gone = self.delete(namespace, name)?;
        let mut inner = self.lock();
        inner.ended.retain(|_, (at, _)| at.elapsed() < ENDED_KEPT);
        inner.ended.insert(
            (namespace.to_owned(), name.to_owned()),
            (std::time::Instant::now(), reason),
        );
        Some(gone)
    }

    /// Why `namespace/name` was ended on purpose, if it was (in the last ten minutes).
    pub fn ended_reason(&self, namespace: &str, name: &str) -> Option<String> {
        let inner = self.lock();
        inner
            .ended
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|(_, why)| why.clone())
    }

    /// One session.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Session> {
        self.lock()
            .sessions
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// All sessions (of `namespace`, if given), by namespace and name.
    pub fn list(&self, namespace: Option<&str>) -> Vec<Session> {
        self.lock()
            .sessions
            .values()
            .filter(|s| namespace.is_none_or(|ns| s.namespace == ns))
            .cloned()
            .collect()
    }

    /// Replaces a session's status (no effect on routes).
    pub fn set_status(&self, namespace: &str, name: &str, status: SessionStatus) {
        let mut inner = self.lock();
        if let Some(s) = inner.sessions.get_mut(&(namespace.to_owned(), name.to_owned())) {
            if s.status != status {
                s.status = status;
                self.bump(&mut inner);
            }
        }
    }

    /// Counts an outbound tunnel of `namespace/name` as open (`open`) or closed; the
    /// routes of the session's pods carry `outbound: true` while any is open.
    pub fn set_outbound(&self, namespace: &str, name: &str, open: bool) {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let before = inner.outbound.get(&key).copied().unwrap_or(0);
        let after = if open { before + 1 } else { before.saturating_sub(1) };
        if after == 0 {
            inner.outbound.remove(&key);
        } else {
            inner.outbound.insert(key, after);
        }
        if (before == 0) != (after == 0) {
            self.bump(&mut inner);
        }
    }

    /// The generation counter: it moves on every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The routes a pod in `namespace` with `labels` must have: one `hub` route per
    /// session port whose target selects the pod, and `outbound` if one of those sessions
    /// has an outbound tunnel open.
    pub fn routes_for_pod(&self, namespace: &str, labels: &BTreeMap<String, String>) -> RouteSet {
        let inner = self.lock();
        let mut routes = Vec::new();
        let mut outbound = false;
        for s in inner.sessions.values() {
            let selected = s.namespace == namespace
                && !s.selector.is_empty()
                && s.selector.iter().all(|(k, v)| labels.get(k) == Some(v));
            if !selected {
                continue;
            }
            outbound |= inner.outbound.contains_key(&(s.namespace.clone(), s.name.clone()));
            for p in &s.spec.ports {
                let id = if s.spec.ports.len() == 1 {
                    s.name.clone()
                } else {
                    format!("{}:{}", s.name, p.port)
                };
                routes.push(Route {
                    id,
                    port: p.port,
                    mode: s.spec.mode,
                    filter: s.spec.filter.clone(),
                    upstream: Upstream::Hub,
                });
            }
        }
        // The registry admitted only non-conflicting sessions, so validation cannot fail;
        // if it ever did, an empty set (dormant sidecar, traffic to the app) is the safe answer.
        RouteSet::new(routes).unwrap_or_default().with_outbound(outbound)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shunt_proto::filter::Filter;
    use shunt_proto::session::SessionPort;

    fn session(name: &str, user: &str, mode: Mode, filter: Option<&str>) -> Session {
        Session {
            namespace: "shop".into(),
            name: name.into(),
            uid: name.into(),
            user: user.into(),
            groups: vec![],
            spec: SessionSpec {
                target: "deployment/api".parse().unwrap(),
                mode,
                filter: filter.map(|f| Filter::parse(f).unwrap()),
                ports: vec![SessionPort { port: 8080 }],
            },
            selector: BTreeMap::from([("app".into(), "api".into())]),
            created: SystemTime::now(),
            status: SessionStatus::default(),
        }
    }

    #[test]
    fn disjoint_steals_coexist_and_overlaps_are_refused_with_a_witness() {
        let r = Registry::default();
        r.create(session("alice", "alice", Mode::Steal, Some("x-shunt-user: alice")))
            .unwrap();
        r.create(session("bob", "bob", Mode::Steal, Some("x-shunt-user: bob")))
            .unwrap();
        r.create(session("carol", "carol", Mode::Mirror, None)).unwrap();
        let err = r
            .create(session("al", "mallory", Mode::Steal, Some("x-shunt-user: ~^al")))
            .unwrap_err();
        assert!(
            matches!(err, Refusal::Overlap { ref other, .. } if other == "alice"),
            "{err}"
        );
        assert!(err.to_string().contains("x-shunt-user: alice"), "{err}");
        let all = r.create(session("all", "root", Mode::Steal, None)).unwrap_err();
        assert!(matches!(all, Refusal::PortTaken { .. }), "{all}");
    }

    #[test]
    fn routes_follow_the_selector_and_leave_with_the_session() {
        let r = Registry::default();
        let changes = r.changes();
        r.create(session("alice", "alice", Mode::Steal, Some("x-shunt-user: alice")))
            .unwrap();
        assert!(changes.has_changed().unwrap());
        let api = BTreeMap::from([("app".to_owned(), "api".to_owned())]);
        let web = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        let routes = r.routes_for_pod("shop", &api);
        assert_eq!(routes.routes().len(), 1);
        assert_eq!(routes.routes()[0].upstream, Upstream::Hub);
        assert!(r.routes_for_pod("shop", &web).is_empty());
        assert!(r.routes_for_pod("other", &api).is_empty());
        r.delete("shop", "alice").unwrap();
        assert!(r.routes_for_pod("shop", &api).is_empty());
    }

    #[test]
    fn outbound_tunnels_flag_the_selected_pods_until_the_last_closes() {
        let r = Registry::default();
        r.create(session("alice", "alice", Mode::Steal, Some("x-shunt-user: alice")))
            .unwrap();
        let api = BTreeMap::from([("app".to_owned(), "api".to_owned())]);
        let web = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        assert!(!r.routes_for_pod("shop", &api).outbound());
        let mut changes = r.changes();
        changes.mark_unchanged();
        r.set_outbound("shop", "alice", true);
        assert!(changes.has_changed().unwrap());
        r.set_outbound("shop", "alice", true);
        assert!(r.routes_for_pod("shop", &api).outbound());
        assert!(!r.routes_for_pod("shop", &web).outbound());
        r.set_outbound("shop", "alice", false);
        assert!(r.routes_for_pod("shop", &api).outbound(), "one tunnel is still open");
        r.set_outbound("shop", "alice", false);
        assert!(!r.routes_for_pod("shop", &api).outbound());
        r.set_outbound("shop", "alice", false);
        assert!(!r.routes_for_pod("shop", &api).outbound());
    }
}
