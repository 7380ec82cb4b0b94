//! Policies (`policy.shunt.dev/v1alpha1`): the operator keeps the valid ones
//! ([`Policies`]), reports every policy's health in its `status` ([`Controller`]), checks
//! each new session ([`Policies::admit`]), re-checks running sessions whenever it lists
//! the policies (once a second by default) and ends those a policy now forbids.
//!
//! [`evaluate`] is the pure decision (and documents how policies merge); [`review`] serves
//! `policyreviews`, which answer "would this session be allowed, and why"; [`exposure`]
//! decides what `shunt exec` may take out (environment, outgoing connections).

pub mod evaluate;
pub mod exposure;
pub mod review;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use shunt_proto::policy::check::{check, Invalid};
use shunt_proto::policy::{ClusterShuntPolicy, PolicyStatus, ShuntPolicy};
use shunt_proto::session::{SessionSpec, TargetRef};

use crate::lifecycle::Events;
use crate::registry::{Registry, Session};
use crate::targets;
use crate::tunnel::Tunnels;
pub use evaluate::{evaluate, Decision, Labels, Policy, Request, Scope, Target};

/// The valid policies, shared by the API handlers and the [`Controller`].
#[derive(Clone, Default)]
pub struct Policies {
    valid: Arc<RwLock<Vec<Policy>>>,
    loaded: Arc<AtomicBool>,
}

/// Why a session cannot be checked against the policies.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The policies have not been listed yet (the operator just started).
    #[error("the operator has not loaded the shunt policies yet; retry in a few seconds")]
    NotLoaded,
    /// Reading the target or its namespace failed.
    #[error("cannot read {what} to check the shunt policies: {source}")]
    Kube {
        /// What was read.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

impl Policies {
    /// The valid policies now.
    pub fn valid(&self) -> Vec<Policy> {
        self.valid
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn replace(&self, policies: Vec<Policy>) {
        match self.valid.write() {
            Ok(mut v) => *v = policies,
            Err(p) => *p.into_inner() = policies,
        }
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether the policies have been listed at least once.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// `target` in `namespace` as policies see it (its and its namespace's labels).
    pub async fn target(
        &self,
        client: &kube::Client,
        namespace: &str,
        target: &TargetRef,
    ) -> Result<Target, CheckError> {
        TargetCache::default().get(client, namespace, target).await
    }

    /// Decides whether `user` may open a session with `spec` in `namespace`, counting the
    /// sessions they already hold in `registry`.
    pub async fn admit(
        &self,
        client: &kube::Client,
        registry: &Registry,
        user: &str,
        namespace: &str,
        spec: &SessionSpec,
    ) -> Result<Decision, CheckError> {
        if !self.loaded.load(Ordering::Acquire) {
            return Err(CheckError::NotLoaded);
        }
        let mut cache = TargetCache::default();
        let target = cache.get(client, namespace, &spec.target).await?;
        let mut others = Vec::new();
        for s in registry.list(None).into_iter().filter(|s| s.user == user) {
            others.push(cache.get(client, &s.namespace, &s.spec.target).await?);
        }
        let ports: Vec<u16> = spec.ports.iter().map(|p| p.port).collect();
        Ok(evaluate(
            &self.valid(),
            &Request {
                user,
                target: &target,
                mode: spec.mode,
                filter: spec.filter.as_ref(),
                ports: &ports,
                others: &others,
                age: None,
            },
        ))
    }
}

/// Targets and namespaces read during one check (each read once).
#[derive(Default)]
struct TargetCache {
    namespaces: BTreeMap<String, Labels>,
    targets: std::collections::HashMap<(String, TargetRef), Labels>,
}

impl TargetCache {
    /// The target's and its namespace's labels; a missing object has none (creating a
    /// session on it fails later with 404).
    async fn get(&mut self, client: &kube::Client, namespace: &str, target: &TargetRef) -> Result<Target, CheckError> {
        let kube_err = |what: String| move |source| CheckError::Kube { what, source };
        if !self.namespaces.contains_key(namespace) {
            let api: Api<Namespace> = Api::all(client.clone());
            let ns = api
                .get_opt(namespace)
                .await
                .map_err(kube_err(format!("namespace {namespace}")))?;
            let labels = ns.and_then(|n| n.metadata.labels).unwrap_or_default();
            self.namespaces.insert(namespace.to_owned(), labels);
        }
        let key = (namespace.to_owned(), target.clone());
        if !self.targets.contains_key(&key) {
            let ar = targets::api_resource(target.kind);
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
            let obj = api
                .get_opt(&target.name)
                .await
                .map_err(kube_err(format!("{target} in {namespace}")))?;
            self.targets
                .insert(key.clone(), obj.and_then(|o| o.metadata.labels).unwrap_or_default());
        }
        Ok(Target {
            namespace: namespace.to_owned(),
            namespace_labels: self.namespaces.get(namespace).cloned().unwrap_or_default(),
            target: target.clone(),
            labels: self.targets.get(&key).cloned().unwrap_or_default(),
        })
    }
}

/// Lists the policies, writes their status, enforces them on running sessions.
pub struct Controller {
    /// The operator's client (lists policies, patches their status).
    pub client: kube::Client,
    /// Where the valid policies go.
    pub policies: Policies,
    /// Sessions to re-check.
    pub registry: Registry,
    /// Tunnels of ended sessions are closed.
    pub tunnels: Tunnels,
    /// `SessionEnded` events.
    pub events: Events,
    /// How often to list (changes apply within this).
    pub interval: Duration,
}

fn ready_condition(generation: Option<i64>, verdict: &Result<(), Invalid>, previous: Option<&Condition>) -> Condition {
    let (status, reason, message) = match verdict {
        Ok(()) => ("True", "Valid".to_owned(), "the policy is enforced".to_owned()),
        Err(e) => (
            "False",
            e.reason.to_owned(),
            format!("{}; the policy is ignored until it is fixed", e.message),
        ),
    };
    let last_transition_time = previous
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason,
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The status a policy should have, if it differs from `current`.
fn wanted_status(
    generation: Option<i64>,
    verdict: &Result<(), Invalid>,
    current: Option<&PolicyStatus>,
) -> Option<PolicyStatus> {
    let previous = current.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let ready = ready_condition(generation, verdict, previous);
    let same = current.is_some_and(|s| s.observed_generation == generation)
        && previous
            .is_some_and(|p| (&p.status, &p.reason, &p.message) == (&ready.status, &ready.reason, &ready.message));
    (!same).then(|| PolicyStatus {
        observed_generation: generation,
        conditions: vec![ready],
    })
}

/// Every object of `api`; none when its CRD is not installed (404), as no policy can exist.
async fn list_or_none<K>(api: Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

impl Controller {
    /// Runs forever, one [`Controller::sync`] per `interval`.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.sync().await {
                tracing::warn!(%error, "cannot list the shunt policies; keeping the last ones");
            }
        }
    }

    /// Lists both kinds, updates statuses and the valid set, re-checks every session.
    pub async fn sync(&self) -> Result<(), kube::Error> {
        let namespaced = list_or_none(Api::<ShuntPolicy>::all(self.client.clone())).await?;
        let cluster = list_or_none(Api::<ClusterShuntPolicy>::all(self.client.clone())).await?;
        let mut valid = Vec::new();
        for p in namespaced {
            let (Some(ns), Some(name)) = (p.metadata.namespace.clone(), p.metadata.name.clone()) else {
                continue;
            };
            let compiled = check(&p.spec.rules);
            let verdict = compiled.as_ref().map(|_| ()).map_err(Clone::clone);
            if let Some(status) = wanted_status(p.metadata.generation, &verdict, p.status.as_ref()) {
                let api: Api<ShuntPolicy> = Api::namespaced(self.client.clone(), &ns);
                self.write_status(&api, &name, status).await;
            }
            if let Ok(compiled) = compiled {
                valid.push(Policy {
                    scope: Scope::Namespace(ns),
                    name,
                    namespace_selector: None,
                    compiled,
                });
            }
        }
        for p in cluster {
            let Some(name) = p.metadata.name.clone() else { continue };
            let compiled = check(&p.spec.rules);
            let verdict = compiled.as_ref().map(|_| ()).map_err(Clone::clone);
            if let Some(status) = wanted_status(p.metadata.generation, &verdict, p.status.as_ref()) {
                let api: Api<ClusterShuntPolicy> = Api::all(self.client.clone());
                self.write_status(&api, &name, status).await;
            }
            if let Ok(compiled) = compiled {
                let namespace_selector = p.spec.namespace_selector.clone();
                valid.push(Policy {
                    scope: Scope::Cluster,
                    name,
                    namespace_selector,
                    compiled,
                });
            }
        }
        self.policies.replace(valid);
        self.enforce().await;
        Ok(())
    }

    async fn write_status<K>(&self, api: &Api<K>, name: &str, status: PolicyStatus)
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let patch = serde_json::json!({ "status": status });
        if let Err(error) = api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(%error, policy = name, "cannot write the policy's status");
        }
    }

    /// Ends every running session the valid policies now forbid (oldest sessions count
    /// first towards `maxSessionsPerUser`, so the newest ones end).
    async fn enforce(&self) {
        let policies = self.policies.valid();
        let mut sessions = self.registry.list(None);
        sessions.sort_by_key(|s| s.created);
        let mut cache = TargetCache::default();
        let mut held: BTreeMap<String, Vec<Target>> = BTreeMap::new();
        for s in sessions {
            let target = match cache.get(&self.client, &s.namespace, &s.spec.target).await {
                Ok(t) => t,
                Err(error) => {
                    tracing::warn!(%error, session.name = %s.name, "cannot re-check a session against the policies");
                    continue;
                }
            };
            let ports: Vec<u16> = s.spec.ports.iter().map(|p| p.port).collect();
            let others = held.entry(s.user.clone()).or_default();
            let decision = evaluate(
                &policies,
                &Request {
                    user: &s.user,
                    target: &target,
                    mode: s.spec.mode,
                    filter: s.spec.filter.as_ref(),
                    ports: &ports,
                    others,
                    age: Some(SystemTime::now().duration_since(s.created).unwrap_or_default()),
                },
            );
            if decision.allowed {
                others.push(target);
            } else {
                self.end(&s, &decision);
            }
        }
    }

    fn end(&self, s: &Session, decision: &Decision) {
        let reason = format!("ended by policy: {}", decision.message);
        let mut status = s.status.clone();
        status.phase = "Ended".into();
        status.message = reason.clone();
        self.registry.set_status(&s.namespace, &s.name, status);
        if self.registry.end(&s.namespace, &s.name, reason.clone()).is_none() {
            return;
        }
        self.tunnels.unregister(&s.namespace, &s.name);
        tracing::info!(session.namespace = %s.namespace, session.name = %s.name, session.user = %s.user,
            policy = decision.policy.as_deref().unwrap_or_default(), rule = decision.rule.as_deref().unwrap_or_default(),
            "session ended by a policy");
        let note = format!("session {} of {} {reason}", s.name, s.user);
        self.events
            .publish(&s.namespace, &s.spec.target, true, "SessionEnded", note);
    }
}
