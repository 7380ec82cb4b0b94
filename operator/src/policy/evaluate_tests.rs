#![allow(clippy::unwrap_used)]

use super::*;
use shunt_proto::policy::check::check;

fn policy(scope: Scope, name: &str, rules: serde_json::Value) -> Policy {
    Policy {
        scope,
        name: name.into(),
        namespace_selector: None,
        compiled: check(&serde_json::from_value(rules).unwrap()).unwrap(),
    }
}

fn target(ns: &str, target: &str) -> Target {
    Target {
        namespace: ns.into(),
        namespace_labels: Labels::new(),
        target: target.parse().unwrap(),
        labels: Labels::from([("tier".into(), "prod".into())]),
    }
}

fn ask<'a>(user: &'a str, t: &'a Target, mode: Mode, filter: Option<&'a Filter>, ports: &'a [u16]) -> Request<'a> {
    Request {
        user,
        target: t,
        mode,
        filter,
        ports,
        others: &[],
        age: None,
    }
}

#[test]
fn the_strictest_rule_of_all_matching_policies_decides() {
    let ns = Scope::Namespace("shop".into());
    let policies = [
        policy(
            ns.clone(),
            "guard",
            serde_json::json!({
            "targetSelector": {"names": ["deployment/payments-*"]}, "block": ["steal-unfiltered"], "ports": [8080, 9090]}),
        ),
        policy(
            Scope::Cluster,
            "identity",
            serde_json::json!({
            "targetSelector": {"labelSelector": {"matchLabels": {"tier": "prod"}}}, "identityHeader": "x-shunt-user",
            "allowedHeaders": ["x-shunt-user"]}),
        ),
    ];
    let pay = target("shop", "deployment/payments-api");
    let alice = Filter::parse("x-shunt-user: alice").unwrap();
    let d = evaluate(&policies, &ask("alice", &pay, Mode::Steal, Some(&alice), &[8080]));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.matched.len(), 2);
    // Cluster policies are visited first, so the identity rule decides an unfiltered steal.
    let d = evaluate(&policies, &ask("alice", &pay, Mode::Steal, None, &[8080]));
    assert_eq!(
        (d.policy.as_deref(), d.rule.as_deref()),
        (Some("ClusterShuntPolicy identity"), Some("identityHeader"))
    );
    let d = evaluate(&policies[..1], &ask("alice", &pay, Mode::Steal, None, &[8080]));
    assert_eq!(
        (d.policy.as_deref(), d.rule.as_deref()),
        (Some("ShuntPolicy shop/guard"), Some("block: steal-unfiltered"))
    );
    let d = evaluate(&policies, &ask("alice", &pay, Mode::Steal, Some(&alice), &[7000]));
    assert_eq!(d.rule.as_deref(), Some("ports"), "{d:?}");
    let bob = Filter::parse("x-shunt-user: bob").unwrap();
    let d = evaluate(&policies, &ask("alice", &pay, Mode::Steal, Some(&bob), &[8080]));
    assert_eq!(
        (d.policy.as_deref(), d.rule.as_deref()),
        (Some("ClusterShuntPolicy identity"), Some("identityHeader"))
    );
    assert!(d.message.contains("x-shunt-user: alice"), "{}", d.message);
    let other = Filter::parse("x-tenant: 7").unwrap();
    let d = evaluate(&policies, &ask("alice", &pay, Mode::Mirror, Some(&other), &[8080]));
    assert_eq!(d.rule.as_deref(), Some("allowedHeaders"), "{d:?}");
    // A namespace the policy does not live in is not governed by it.
    let elsewhere = target("dev", "deployment/payments-api");
    assert!(evaluate(&policies[..1], &ask("alice", &elsewhere, Mode::Steal, None, &[1])).allowed);
}

#[test]
fn disagreeing_identity_headers_deny_naming_both_and_limits_take_the_minimum() {
    let policies = [
        policy(
            Scope::Cluster,
            "a",
            serde_json::json!({"identityHeader": "x-shunt-user"}),
        ),
        policy(
            Scope::Cluster,
            "b",
            serde_json::json!({"identityHeader": "x-dev", "maxSessionsPerUser": 1}),
        ),
    ];
    let t = target("shop", "deployment/api");
    let d = evaluate(&policies, &ask("alice", &t, Mode::Mirror, None, &[80]));
    assert!(!d.allowed && d.message.contains("ClusterShuntPolicy a") && d.message.contains("ClusterShuntPolicy b"));
    let limits = [
        policy(
            Scope::Cluster,
            "two",
            serde_json::json!({"maxSessionsPerUser": 2, "maxSessionDuration": "2h"}),
        ),
        policy(
            Scope::Cluster,
            "one",
            serde_json::json!({"maxSessionsPerUser": 1, "maxSessionDuration": "1m"}),
        ),
    ];
    let others = [t.clone()];
    let mut req = ask("alice", &t, Mode::Mirror, None, &[80]);
    req.others = &others;
    let d = evaluate(&limits, &req);
    assert_eq!(
        (d.policy.as_deref(), d.rule.as_deref()),
        (Some("ClusterShuntPolicy one"), Some("maxSessionsPerUser"))
    );
    req.others = &[];
    req.age = Some(Duration::from_secs(61));
    assert_eq!(evaluate(&limits, &req).rule.as_deref(), Some("maxSessionDuration"));
}
