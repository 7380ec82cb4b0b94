//! The policy CRDs of `policy.shunt.dev/v1alpha1`: [`ShuntPolicy`] (namespaced: applies to
//! targets in its namespace) and [`ClusterShuntPolicy`] (every namespace, or those its
//! `namespaceSelector` picks). Platform teams keep them in git next to their manifests;
//! the operator enforces them on sessions and writes their `status`.
//!
//! The CRD YAML in `charts/shunt/crds/` is generated from these types ([`crd_files`]);
//! what the API server can check statically is a CEL rule in the schema, the rest
//! ([`check`]: globs, durations, CIDRs) is checked by the operator, which reports a bad
//! policy as `Ready=False` and ignores it. [`outgoing`] decides a destination of the
//! outbound tunnel of `shunt exec` against `outgoing` and `block: [outgoing]`.

pub mod check;
pub mod glob;
pub mod outgoing;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The API group of the policy CRDs.
pub const GROUP: &str = "policy.shunt.dev";
/// Their version.
pub const VERSION: &str = "v1alpha1";

/// What a policy can forbid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Block {
    /// Mirror sessions (copies of requests).
    Mirror,
    /// Every steal session, filtered or not.
    Steal,
    /// Steal sessions without a filter (all of a port's traffic).
    StealUnfiltered,
    /// Outgoing traffic from the laptop through the cluster.
    Outgoing,
    /// Sending the target's environment variables to the laptop.
    Env,
}

impl Block {
    /// The word used in `spec.block`.
    pub fn as_str(self) -> &'static str {
        match self {
            Block::Mirror => "mirror",
            Block::Steal => "steal",
            Block::StealUnfiltered => "steal-unfiltered",
            Block::Outgoing => "outgoing",
            Block::Env => "env",
        }
    }
}

/// Which targets a policy applies to: all of the given conditions must hold (an empty
/// selector selects every target of the policy's scope).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSelector {
    /// Target kinds (`deployment`, `statefulset`, `replicaset`, `daemonset`, `rollout`,
    /// `service`); empty means every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<crate::session::TargetKind>,
    /// Globs on `<kind>/<name>` (or on `<name>` alone), e.g. `deployment/payments-*`;
    /// `*` any run of characters, `?` one, `[a-z]` a class. Empty means every name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(n, size(n) > 0)").message("a name glob must not be empty"))]
    pub names: Vec<String>,
    /// A label selector on the target workload's own labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
}

/// `spec.env`: which environment variables never leave the cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EnvRules {
    /// Globs of variable names, e.g. `*_PASSWORD`, `AWS_*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

/// `spec.outgoing`: where a laptop's outgoing traffic through the cluster may go.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OutgoingRules {
    /// CIDRs (`10.0.0.0/8`) or `host:port` (`db.shop:5432`, `*:443`) allowed; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// CIDRs or `host:port` never allowed (wins over `allow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<String>,
}

/// The rules of a policy (the same for both kinds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRules {
    /// The targets this policy governs.
    #[serde(default)]
    pub target_selector: TargetSelector,
    /// What is forbidden on those targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<Block>,
    /// Steal sessions must have a filter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_filter: bool,
    /// The only header names a filter may use (lowercase); absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(h, h.matches('^[a-z0-9!#$%&*+.^_`|~-]+$'))").message("header names are lowercase HTTP tokens, e.g. x-shunt-user"))]
    pub allowed_headers: Option<Vec<String>>,
    /// A steal filter must be exactly `<identityHeader>: <caller's username>`, so nobody
    /// can take another person's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9!#$%&*+.^_`|~-]+$')").message("identityHeader must be a lowercase HTTP header name, e.g. x-shunt-user"))]
    pub identity_header: Option<String>,
    /// At most this many sessions per user on the targets this policy selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxSessionsPerUser must be at least 1; block the modes instead"))]
    pub max_sessions_per_user: Option<u32>,
    /// A session ends after this long, e.g. `2h`, `90m`, `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[hms])+$')").message("maxSessionDuration is like 2h, 90m or 1h30m"))]
    pub max_session_duration: Option<String>,
    /// The only target ports sessions may use; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.all(p, p >= 1 && p <= 65535)").message("ports are 1..65535"))]
    pub ports: Option<Vec<i32>>,
    /// Environment variables that never leave the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvRules>,
    /// Where outgoing traffic may go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing: Option<OutgoingRules>,
}

/// What the operator made of a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kstatus conditions: `Ready` (`True`: enforced; `False`: invalid and ignored, with the
    /// reason and message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A namespaced policy: governs targets in its own namespace.
// clippy reads the repeated `type_ = "string"` of the printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "policy.shunt.dev",
    version = "v1alpha1",
    kind = "ShuntPolicy",
    namespaced,
    status = "PolicyStatus",
    shortname = "spol",
    category = "shunt",
    printcolumn(name = "Targets", type_ = "string", json_path = ".spec.targetSelector.names"),
    printcolumn(name = "Blocks", type_ = "string", json_path = ".spec.block"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
pub struct ShuntPolicySpec {
    /// The rules.
    #[serde(flatten)]
    pub rules: PolicyRules,
}

/// A cluster-wide policy: governs targets in every namespace its `namespaceSelector` picks.
// clippy reads the repeated `type_ = "string"` of the printcolumns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "policy.shunt.dev",
    version = "v1alpha1",
    kind = "ClusterShuntPolicy",
    status = "PolicyStatus",
    shortname = "cspol",
    category = "shunt",
    printcolumn(name = "Targets", type_ = "string", json_path = ".spec.targetSelector.names"),
    printcolumn(name = "Blocks", type_ = "string", json_path = ".spec.block"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterShuntPolicySpec {
    /// Namespaces (by their labels) this policy applies to; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The rules.
    #[serde(flatten)]
    pub rules: PolicyRules,
}

/// The checked-in CRD files: `(file name in charts/shunt/crds/, pretty JSON)`. JSON is
/// YAML, so kubectl, Helm, Argo CD and Flux read them as they are.
pub fn crd_files() -> Vec<(&'static str, String)> {
    fn pretty<T: CustomResourceExt>() -> String {
        // Serializing a CRD (plain maps and strings) cannot fail.
        serde_json::to_string_pretty(&T::crd()).unwrap_or_default() + "\n"
    }
    vec![
        ("shuntpolicies.yaml", pretty::<ShuntPolicy>()),
        ("clustershuntpolicies.yaml", pretty::<ClusterShuntPolicy>()),
    ]
}

#[cfg(test)]
mod tests;
