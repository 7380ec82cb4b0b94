//! [`evaluate`]: the pure decision "may this caller open this session?".
//!
//! Every valid policy that selects the target applies, and the strictest wins. Checking
//! each policy on its own and denying on the first violation is that merge:
//! - `block`: any policy's block blocks (the union);
//! - `requireFilter`: required if any policy requires it;
//! - `allowedHeaders`: every policy's list must admit each header (the intersection);
//! - `ports`: every policy's list must admit each port (the intersection);
//! - `maxSessionsPerUser`, `maxSessionDuration`: the smallest limit decides (the minimum);
//! - `identityHeader`: all policies that set it must name the same header; if two
//!   disagree no filter can satisfy both, so the session is denied naming both.
//!
//! Policies are visited in a fixed order (cluster policies, then namespaced ones, by
//! name), so the same request always names the same deciding policy.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use shunt_proto::policy::check::Compiled;
use shunt_proto::policy::Block;
use shunt_proto::route::Mode;
use shunt_proto::session::TargetRef;
use shunt_proto::Filter;

/// Labels of an object.
pub type Labels = BTreeMap<String, String>;

/// Where a policy lives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// A `ClusterShuntPolicy` (with its optional namespace selector).
    Cluster,
    /// A `ShuntPolicy` in this namespace.
    Namespace(String),
}

/// A valid policy, ready to enforce.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Where it lives.
    pub scope: Scope,
    /// Its name.
    pub name: String,
    /// `ClusterShuntPolicy.spec.namespaceSelector`.
    pub namespace_selector: Option<LabelSelector>,
    /// Its compiled rules.
    pub compiled: Compiled,
}

impl Policy {
    /// How denials name it: `ShuntPolicy shop/prod-guard`, `ClusterShuntPolicy no-prod`.
    pub fn display(&self) -> String {
        match &self.scope {
            Scope::Cluster => format!("ClusterShuntPolicy {}", self.name),
            Scope::Namespace(ns) => format!("ShuntPolicy {ns}/{}", self.name),
        }
    }
}

/// A target as policies see it.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its namespace.
    pub namespace: String,
    /// The namespace's labels.
    pub namespace_labels: Labels,
    /// `<kind>/<name>`.
    pub target: TargetRef,
    /// The workload's own labels.
    pub labels: Labels,
}

/// The session asked for.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The caller's username.
    pub user: &'a str,
    /// Where it goes.
    pub target: &'a Target,
    /// Mirror or steal.
    pub mode: Mode,
    /// The filter, if any.
    pub filter: Option<&'a Filter>,
    /// Target ports.
    pub ports: &'a [u16],
    /// The targets of the caller's other sessions (for `maxSessionsPerUser`).
    pub others: &'a [Target],
    /// For a running session: how long it has lived (for `maxSessionDuration`).
    pub age: Option<Duration>,
}

/// The answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether the session may go ahead.
    pub allowed: bool,
    /// The deciding policy (`ShuntPolicy shop/prod-guard`), if one denied.
    pub policy: Option<String>,
    /// The rule that decided, e.g. `block: steal`.
    pub rule: Option<String>,
    /// A sentence for the user.
    pub message: String,
    /// Every policy that selects the target.
    pub matched: Vec<String>,
}

/// Whether `selector` admits `labels` (`matchLabels` and `matchExpressions`).
pub fn selects(selector: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
                "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
                "Exists" => labels.contains_key(&e.key),
                "DoesNotExist" => !labels.contains_key(&e.key),
                _ => false,
            }
        })
}

/// Whether `policy` governs `target`.
pub fn applies(policy: &Policy, target: &Target) -> bool {
    let scoped = match &policy.scope {
        Scope::Namespace(ns) => *ns == target.namespace,
        Scope::Cluster => policy
            .namespace_selector
            .as_ref()
            .is_none_or(|s| selects(s, &target.namespace_labels)),
    };
    let sel = &policy.compiled.rules.target_selector;
    let kind_ok = sel.kinds.is_empty() || sel.kinds.contains(&target.target.kind);
    let name_ok = policy.compiled.names.is_empty()
        || policy
            .compiled
            .names
            .iter()
            .any(|g| g.kind.is_none_or(|k| k == target.target.kind) && g.name.matches(&target.target.name));
    let labels_ok = sel.label_selector.as_ref().is_none_or(|s| selects(s, &target.labels));
    scoped && kind_ok && name_ok && labels_ok
}

fn deny(policy: &Policy, rule: String, why: String, matched: &[String]) -> Decision {
    let name = policy.display();
    Decision {
        allowed: false,
        message: format!("denied by {name} (rule {rule}): {why}; ask the owners of the policy, or change the session"),
        policy: Some(name),
        rule: Some(rule),
        matched: matched.to_vec(),
    }
}

/// The first rule of `policy` that `req` violates.
fn violation(policy: &Policy, req: &Request<'_>, matched: &[String]) -> Option<Decision> {
    let rules = &policy.compiled.rules;
    let blocked = |b: Block| rules.block.contains(&b);
    let steal = req.mode == Mode::Steal;
    let kind = match (req.mode, req.filter) {
        (Mode::Mirror, _) => Block::Mirror,
        (Mode::Steal, Some(_)) => Block::Steal,
        (Mode::Steal, None) => Block::StealUnfiltered,
    };
    // `steal` blocks filtered and unfiltered steals alike.
    let hit = [kind, Block::Steal]
        .into_iter()
        .find(|b| blocked(*b) && (*b != Block::Steal || steal));
    if let Some(b) = hit {
        let why = format!("{} sessions are blocked on {}", b.as_str(), req.target.target);
        return Some(deny(policy, format!("block: {}", b.as_str()), why, matched));
    }
    if steal && req.filter.is_none() && rules.require_filter {
        let why = "steal sessions need a filter (e.g. --header x-shunt-user: <you>)".to_owned();
        return Some(deny(policy, "requireFilter".into(), why, matched));
    }
    if let (Some(allowed), Some(filter)) = (&rules.allowed_headers, req.filter) {
        if let Some(h) = filter.header_names().into_iter().find(|h| !allowed.contains(h)) {
            let why = format!("the filter uses header {h:?}; allowed headers: {}", allowed.join(", "));
            return Some(deny(policy, "allowedHeaders".into(), why, matched));
        }
    }
    if let (Some(header), true) = (&rules.identity_header, steal) {
        let expected = format!("{header}: {}", req.user);
        let ok = req
            .filter
            .is_some_and(|f| Filter::parse(&expected).is_ok_and(|e| e.to_string() == f.to_string()));
        if !ok {
            let got = req
                .filter
                .map_or_else(|| "no filter".to_owned(), |f| format!("{:?}", f.to_string()));
            let why = format!("the filter must be exactly {expected:?} (your own identity), not {got}");
            return Some(deny(policy, "identityHeader".into(), why, matched));
        }
    }
    if let Some(allowed) = &rules.ports {
        if let Some(p) = req.ports.iter().find(|p| !allowed.contains(&i32::from(**p))) {
            let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
            let why = format!("port {p} is not allowed; allowed ports: {}", list.join(", "));
            return Some(deny(policy, "ports".into(), why, matched));
        }
    }
    if let Some(max) = rules.max_sessions_per_user {
        let held = req.others.iter().filter(|t| applies(policy, t)).count();
        if held >= max as usize {
            let why = format!(
                "{} already holds {held} session(s) on targets of this policy; at most {max}",
                req.user
            );
            return Some(deny(policy, "maxSessionsPerUser".into(), why, matched));
        }
    }
    if let (Some(max), Some(age)) = (policy.compiled.max_duration, req.age) {
        if age > max {
            let text = rules.max_session_duration.clone().unwrap_or_default();
            let why = format!("the session ran longer than {text}");
            return Some(deny(policy, "maxSessionDuration".into(), why, matched));
        }
    }
    None
}

/// Decides `req` against `policies` (valid ones only; see the module docs for the merge).
pub fn evaluate(policies: &[Policy], req: &Request<'_>) -> Decision {
    let mut applicable: Vec<&Policy> = policies.iter().filter(|p| applies(p, req.target)).collect();
    applicable.sort_by(|a, b| (&a.scope, &a.name).cmp(&(&b.scope, &b.name)));
    let matched: Vec<String> = applicable.iter().map(|p| p.display()).collect();
    let identity: Vec<&&Policy> = applicable
        .iter()
        .filter(|p| p.compiled.rules.identity_header.is_some())
        .collect();
    if let Some(pair) = identity
        .windows(2)
        .find(|w| w[0].compiled.rules.identity_header != w[1].compiled.rules.identity_header)
    {
        let (a, b) = (pair[0], pair[1]);
        let why = format!(
            "{} requires identityHeader {:?} but {} requires {:?}: no filter satisfies both; align the two policies",
            a.display(),
            a.compiled.rules.identity_header.as_deref().unwrap_or_default(),
            b.display(),
            b.compiled.rules.identity_header.as_deref().unwrap_or_default()
        );
        return deny(a, "identityHeader".into(), why, &matched);
    }
    if let Some(denied) = applicable.iter().find_map(|p| violation(p, req, &matched)) {
        return denied;
    }
    let message = if matched.is_empty() {
        "allowed: no policy selects this target".to_owned()
    } else {
        format!("allowed by {}", matched.join(", "))
    };
    Decision {
        allowed: true,
        policy: None,
        rule: None,
        message,
        matched,
    }
}

#[cfg(test)]
#[path = "evaluate_tests.rs"]
mod tests;
