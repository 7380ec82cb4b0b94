//! Sessions of the aggregated API `api.shunt.dev/v1`: what a developer asked for
//! (`spec`) and what the operator made of it (`status`), plus target references.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::filter::Filter;
use crate::route::Mode;

/// Kinds of workloads a session can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` ReplicaSet.
    ReplicaSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
    /// `argoproj.io/v1alpha1` Rollout.
    Rollout,
    /// `v1` Service (its selector picks the pods).
    Service,
}

impl TargetKind {
    /// The lowercase kind used in `<kind>/<name>` and in RBAC resource names.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Deployment => "deployment",
            TargetKind::StatefulSet => "statefulset",
            TargetKind::ReplicaSet => "replicaset",
            TargetKind::DaemonSet => "daemonset",
            TargetKind::Rollout => "rollout",
            TargetKind::Service => "service",
        }
    }
}

/// A workload in a namespace: `deployment/api`, `deploy/api`, `svc/api`, …
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TargetRef {
    /// Kind.
    pub kind: TargetKind,
    /// Name.
    pub name: String,
}

/// A target reference that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid target {0:?}: write <kind>/<name>, e.g. deployment/api; kinds: deployment (deploy), statefulset (sts), replicaset (rs), daemonset (ds), rollout (ro), service (svc)")]
pub struct TargetError(String);

impl TargetRef {
    /// The RBAC resource name of the target: `<kind>.<name>` (e.g. `deployment.api`).
    pub fn resource_name(&self) -> String {
        format!("{}.{}", self.kind.as_str(), self.name)
    }
}

impl FromStr for TargetRef {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<TargetRef, TargetError> {
        let bad = || TargetError(text.to_owned());
        let (kind, name) = text.split_once('/').ok_or_else(bad)?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => TargetKind::Deployment,
            "statefulset" | "statefulsets" | "sts" => TargetKind::StatefulSet,
            "replicaset" | "replicasets" | "rs" => TargetKind::ReplicaSet,
            "daemonset" | "daemonsets" | "ds" => TargetKind::DaemonSet,
            "rollout" | "rollouts" | "ro" => TargetKind::Rollout,
            "service" | "services" | "svc" => TargetKind::Service,
            _ => return Err(bad()),
        };
        let valid = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !valid {
            return Err(bad());
        }
        Ok(TargetRef {
            kind,
            name: name.to_owned(),
        })
    }
}

impl TryFrom<String> for TargetRef {
    type Error = TargetError;

    fn try_from(text: String) -> Result<TargetRef, TargetError> {
        text.parse()
    }
}

impl From<TargetRef> for String {
    fn from(t: TargetRef) -> String {
        t.to_string()
    }
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.as_str(), self.name)
    }
}

/// One port of a session: the target's app port; the CLI maps it to a local port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPort {
    /// The app port in the pods.
    pub port: u16,
}

/// What a developer asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// The workload whose pods' traffic is taken.
    pub target: TargetRef,
    /// Steal or mirror.
    pub mode: Mode,
    /// Which requests; absent only for an unfiltered steal (needs `steal-unfiltered`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// The app ports.
    pub ports: Vec<SessionPort>,
}

/// One pod of the target, as the operator sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    /// Pod name.
    pub name: String,
    /// Whether the pod has a shunt sidecar.
    pub injected: bool,
    /// Whether its sidecar is connected to the operator (and so has the routes).
    pub connected: bool,
}

/// What the operator made of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStatus {
    /// `Pending` (no CLI connected yet), `Active`, `Ending`.
    pub phase: String,
    /// The session's user.
    pub user: String,
    /// Pods of the target.
    #[serde(default)]
    pub pods: Vec<PodState>,
    /// A human-readable note (e.g. pods that are not injected, and how to fix it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Globs of environment variable names that must not leave the cluster: the
    /// `env.exclude` of every policy that governs the target, fixed at creation (the CLI of
    /// `shunt exec` leaves these out of the program's environment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_exclude: Vec<String>,
    /// A policy governing the target blocks `env`: the CLI sends no variable at all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub env_blocked: bool,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_short_kinds_and_name_rbac_resources() {
        let t: TargetRef = "deploy/api".parse().unwrap();
        assert_eq!(t.to_string(), "deployment/api");
        assert_eq!(t.resource_name(), "deployment.api");
        assert_eq!("svc/web".parse::<TargetRef>().unwrap().kind, TargetKind::Service);
        let err = "pod/x".parse::<TargetRef>().unwrap_err().to_string();
        assert!(err.contains("deployment/api"), "{err}");
        assert!("deployment/".parse::<TargetRef>().is_err());
        assert!("deployment/API".parse::<TargetRef>().is_err());
    }

    #[test]
    fn specs_round_trip_as_json() {
        let spec = SessionSpec {
            target: "deployment/api".parse().unwrap(),
            mode: Mode::Steal,
            filter: Some(Filter::parse("x-shunt-user: alice").unwrap()),
            ports: vec![SessionPort { port: 8080 }],
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["target"], "deployment/api");
        assert_eq!(serde_json::from_value::<SessionSpec>(json).unwrap(), spec);
    }
}
