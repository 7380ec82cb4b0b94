//! What `shunt exec` may take out of the cluster, by policy: the target's environment
//! ([`env`]: `block: [env]`, `env.exclude`) and connections through a pod
//! ([`outgoing`]: `block: [outgoing]`, `outgoing.allow/block`). Every valid policy that
//! selects the target applies, in the same fixed order as [`super::evaluate`], so the
//! same destination always names the same deciding policy.

use shunt_proto::policy::outgoing::{self, Destination};
use shunt_proto::policy::Block;

use super::evaluate::{applies, Policy, Target};

/// The environment rules for a target: the union of every applicable policy's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvExposure {
    /// The policy that blocks `env`, if one does.
    pub blocked_by: Option<String>,
    /// Every applicable `env.exclude` glob, in policy order, without repeats.
    pub exclude: Vec<String>,
}

/// A refused destination: the policy, its rule and the message for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingDenial {
    /// `ShuntPolicy shop/no-db` or `ClusterShuntPolicy x`.
    pub policy: String,
    /// The rule as written, e.g. `outgoing.block: 10.0.0.0/8`.
    pub rule: String,
    /// One sentence: what was refused, by which policy and rule.
    pub message: String,
}

fn applicable<'a>(policies: &'a [Policy], target: &Target) -> Vec<&'a Policy> {
    let mut list: Vec<&Policy> = policies.iter().filter(|p| applies(p, target)).collect();
    list.sort_by(|a, b| (&a.scope, &a.name).cmp(&(&b.scope, &b.name)));
    list
}

/// The environment rules of `target`.
pub fn env(policies: &[Policy], target: &Target) -> EnvExposure {
    let mut out = EnvExposure::default();
    for p in applicable(policies, target) {
        if out.blocked_by.is_none() && p.compiled.rules.block.contains(&Block::Env) {
            out.blocked_by = Some(p.display());
        }
        for glob in p.compiled.rules.env.iter().flat_map(|e| &e.exclude) {
            if !out.exclude.contains(glob) {
                out.exclude.push(glob.clone());
            }
        }
    }
    out
}

/// Whether deciding destinations of `target` needs their addresses (some applicable
/// policy has a CIDR or an IP host): names must then be resolved in the pod first.
pub fn needs_addresses(policies: &[Policy], target: &Target) -> bool {
    applicable(policies, target)
        .iter()
        .any(|p| outgoing::needs_addresses(&p.compiled.rules))
}

/// The first applicable policy that refuses `dest` (shown to the user as `shown`).
pub fn outgoing(policies: &[Policy], target: &Target, dest: &Destination, shown: &str) -> Option<OutgoingDenial> {
    applicable(policies, target).into_iter().find_map(|p| {
        let refusal = outgoing::decide(&p.compiled.rules, dest, shown)?;
        let policy = p.display();
        Some(OutgoingDenial {
            message: format!(
                "denied by {policy} (rule {}): {}; ask the owners of the policy",
                refusal.rule, refusal.why
            ),
            policy,
            rule: refusal.rule,
        })
    })
}

/// Whether an applicable policy blocks outgoing traffic entirely (DNS questions included).
pub fn outgoing_blocked(policies: &[Policy], target: &Target) -> Option<OutgoingDenial> {
    applicable(policies, target).into_iter().find_map(|p| {
        p.compiled.rules.block.contains(&Block::Outgoing).then(|| {
            let policy = p.display();
            OutgoingDenial {
                message: format!(
                    "denied by {policy} (rule block: outgoing): outgoing traffic and DNS through {} are blocked; ask the owners of the policy",
                    target.target
                ),
                policy,
                rule: "block: outgoing".into(),
            }
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::evaluate::Scope;
    use super::*;
    use shunt_proto::policy::check::check;
    use shunt_proto::policy::PolicyRules;

    fn policy(name: &str, json: serde_json::Value) -> Policy {
        let rules: PolicyRules = serde_json::from_value(json).unwrap();
        Policy {
            scope: Scope::Namespace("shop".into()),
            name: name.into(),
            namespace_selector: None,
            compiled: check(&rules).unwrap(),
        }
    }

    fn target() -> Target {
        Target {
            namespace: "shop".into(),
            namespace_labels: Default::default(),
            target: "deployment/api".parse().unwrap(),
            labels: Default::default(),
        }
    }

    #[test]
    fn env_rules_merge_and_name_the_blocking_policy() {
        let a = policy("a", serde_json::json!({"env": {"exclude": ["*_PASSWORD", "AWS_*"]}}));
        let b = policy(
            "b",
            serde_json::json!({"env": {"exclude": ["AWS_*", "TOKEN"]}, "block": ["env"]}),
        );
        let other = policy(
            "c",
            serde_json::json!({"targetSelector": {"names": ["web"]}, "block": ["env"]}),
        );
        let env = env(&[other, b, a], &target());
        assert_eq!(env.exclude, ["*_PASSWORD", "AWS_*", "TOKEN"]);
        assert_eq!(env.blocked_by.as_deref(), Some("ShuntPolicy shop/b"));
    }

    #[test]
    fn outgoing_names_policy_and_rule() {
        let p = policy(
            "no-db",
            serde_json::json!({"outgoing": {"block": ["db.shop:5432", "10.0.0.0/8"]}}),
        );
        let policies = [p];
        let db = Destination::new("db", 5432, "shop", vec![]);
        let denial = outgoing(&policies, &target(), &db, "db:5432").unwrap();
        assert_eq!(denial.policy, "ShuntPolicy shop/no-db");
        assert_eq!(denial.rule, "outgoing.block: db.shop:5432");
        assert!(denial.message.contains("db:5432"), "{}", denial.message);
        assert!(needs_addresses(&policies, &target()));
        let web = Destination::new("web", 80, "shop", vec!["192.168.1.1".parse().unwrap()]);
        assert_eq!(outgoing(&policies, &target(), &web, "web:80"), None);
        assert_eq!(outgoing_blocked(&policies, &target()), None);
        let all = policy("none", serde_json::json!({"block": ["outgoing"]}));
        let blocked = outgoing_blocked(&[all], &target()).unwrap();
        assert_eq!(blocked.rule, "block: outgoing");
    }
}
