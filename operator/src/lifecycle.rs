//! Session lifecycle: status (phase, pods) kept current, sessions whose CLI never
//! connected or stayed away longer than the grace period deleted, and Kubernetes Events
//! on the target for start, end and denial.
//!
//! A session is `Pending` until its inbound tunnel is connected ([`Tunnels::is_connected`]),
//! then `Active`. Its grace clock starts at creation and restarts at every tick the
//! tunnel is seen connected, so a reconnect within the grace keeps the session.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use shunt_proto::session::{PodState, SessionStatus, TargetRef};

use crate::hub::HubState;
use crate::registry::{Registry, Session};
use crate::targets;
use crate::tunnel::Tunnels;

/// Events on targets (`events.k8s.io/v1`). Publishing is best-effort and never blocks
/// the request that caused it.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// A recorder reporting as `shunt-operator` (instance: the pod name, if known).
    pub fn new(client: kube::Client, instance: Option<String>) -> Events {
        let reporter = Reporter {
            controller: "shunt-operator".into(),
            instance,
        };
        Events {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes `reason` with `note` on `target` in `namespace`, in the background.
    pub fn publish(&self, namespace: &str, target: &TargetRef, warning: bool, reason: &str, note: String) {
        let ar = targets::api_resource(target.kind);
        let reference = ObjectReference {
            api_version: Some(ar.api_version),
            kind: Some(ar.kind),
            name: Some(target.name.clone()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(%error, event.reason = %event.reason, "cannot publish an event on the target");
            }
        });
    }
}

/// The status of `session` given its namespace's `pods`.
pub fn status_for(session: &Session, pods: &[Pod], tunnels: &Tunnels, hub: &HubState) -> SessionStatus {
    let mut states: Vec<PodState> = pods
        .iter()
        .filter(|p| targets::selects(&session.selector, p))
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let connected = hub.is_connected(&session.namespace, &name);
            Some(PodState {
                injected: targets::injected(p),
                connected,
                name,
            })
        })
        .collect();
    states.sort_by(|a, b| a.name.cmp(&b.name));
    let not_injected: Vec<&str> = states.iter().filter(|p| !p.injected).map(|p| p.name.as_str()).collect();
    let message = if states.is_empty() {
        format!("{} selects no pods yet", session.spec.target)
    } else if not_injected.is_empty() {
        String::new()
    } else {
        format!(
            "{} of {} pods have no shunt sidecar ({}): label the namespace shunt.dev/injection=enabled and restart \
             the workload: kubectl label namespace {} shunt.dev/injection=enabled && kubectl rollout restart {} -n {}",
            not_injected.len(),
            states.len(),
            not_injected.join(", "),
            session.namespace,
            session.spec.target,
            session.namespace,
        )
    };
    let connected = tunnels.is_connected(&session.namespace, &session.name);
    SessionStatus {
        phase: if connected { "Active" } else { "Pending" }.into(),
        user: session.user.clone(),
        pods: states,
        message,
        // Fixed at creation (the policies' env rules), kept as they were.
        env_exclude: session.status.env_exclude.clone(),
        env_blocked: session.status.env_blocked,
    }
}

/// Refreshes every session's status once (one pod list per namespace with sessions).
pub async fn refresh(client: &kube::Client, registry: &Registry, tunnels: &Tunnels, hub: &HubState) {
    let mut by_ns: HashMap<String, Vec<Session>> = HashMap::new();
    for s in registry.list(None) {
        by_ns.entry(s.namespace.clone()).or_default().push(s);
    }
    for (ns, sessions) in by_ns {
        let pods = match targets::pods(client, &ns).await {
            Ok(pods) => pods,
            Err(error) => {
                tracing::warn!(%error, namespace = %ns, "cannot refresh session status");
                continue;
            }
        };
        for s in sessions {
            registry.set_status(&s.namespace, &s.name, status_for(&s, &pods, tunnels, hub));
        }
    }
}

/// What the lifecycle task needs.
#[derive(Clone)]
pub struct Lifecycle {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Sessions.
    pub registry: Registry,
    /// CLI tunnels.
    pub tunnels: Tunnels,
    /// Connected sidecars.
    pub hub: HubState,
    /// Events on targets.
    pub events: Events,
    /// How long a session survives without its tunnel.
    pub grace: Duration,
    /// Tick interval.
    pub interval: Duration,
}

impl Lifecycle {
    /// Runs forever: every `interval`, ends sessions past their grace and refreshes statuses.
    pub async fn run(self) {
        let mut last_seen: HashMap<(String, String), Instant> = HashMap::new();
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let sessions = self.registry.list(None);
            last_seen.retain(|k, _| sessions.iter().any(|s| (&s.namespace, &s.name) == (&k.0, &k.1)));
            for s in &sessions {
                let key = (s.namespace.clone(), s.name.clone());
                let seen = last_seen.entry(key).or_insert(now);
                if self.tunnels.is_connected(&s.namespace, &s.name) {
                    *seen = now;
                } else if now.duration_since(*seen) > self.grace && self.end(s) {
                    tracing::info!(session.namespace = %s.namespace, session.name = %s.name, grace = ?self.grace,
                        "session ended: its CLI was not connected for longer than the grace period");
                }
            }
            refresh(&self.client, &self.registry, &self.tunnels, &self.hub).await;
        }
    }

    fn end(&self, s: &Session) -> bool {
        let reason = format!(
            "ended: its CLI was not connected for {:?} (the grace period)",
            self.grace
        );
        if self.registry.end(&s.namespace, &s.name, reason).is_none() {
            return false;
        }
        self.tunnels.unregister(&s.namespace, &s.name);
        let note = format!(
            "session {} of {} ended: its CLI was not connected for {:?} (the grace period)",
            s.name, s.user, self.grace
        );
        self.events
            .publish(&s.namespace, &s.spec.target, false, "SessionEnded", note);
        true
    }
}
