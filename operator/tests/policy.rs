//! Policies on kubesim as a GitOps tool would apply them: the CRDs and the example
//! policies (the README's) go in with the real `kubectl apply -f`; the operator's API
//! server (registered by an APIService) and its policy controller run in-process. Every
//! rule denies a violating session naming the policy and the rule and admits a compliant
//! one; an invalid policy reports `Ready=False` and changes nothing; deleting a policy
//! loosens enforcement and adding one ends a session it forbids.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::path::PathBuf;

use kube::Client;
use serde_json::{json, Value};
use support::{client, kubectl, poll, repo, request, sessions, Operator, Setup};

fn example(name: &str) -> String {
    repo(&format!("operator/tests/policies/{name}.yaml"))
        .display()
        .to_string()
}

struct Env {
    operator: Operator,
    kubeconfig: PathBuf,
}

/// [`Operator`] with the policy controller and namespaces `shop` (env=staging;
/// Deployments `payments-api`, tier=prod, and `api`) and `team-a` (Deployment `web`);
/// alice and bob may steal, mirror and review policies in both.
async fn setup() -> Env {
    let operator = Operator::start(Setup {
        namespaces: &[("shop", json!({"env": "staging"})), ("team-a", json!({}))],
        policies: true,
    })
    .await;
    for (ns, name, tier) in [
        ("shop", "payments-api", "prod"),
        ("shop", "api", "dev"),
        ("team-a", "web", "dev"),
    ] {
        operator.deployment(ns, name, json!({"tier": tier}), &[]).await;
        if name != "api" {
            let rules = json!([
                {"apiGroups": ["api.shunt.dev"], "resources": ["sessions", "targets"], "verbs": ["create", "get", "list", "watch", "delete"]},
                {"apiGroups": ["api.shunt.dev"], "resources": ["targets"], "verbs": ["steal", "mirror", "steal-unfiltered"]}]);
            operator.role(ns, "shunt-dev", rules).await;
            operator.bind(ns, "devs", "Role", "shunt-dev", &["alice", "bob"]).await;
        }
    }
    // policyreviews are namespaced: a ClusterRole bound in a namespace lets alice ask there
    // and in team-a (where a 400 for the wrong namespace is checked).
    let reviewers = json!({"metadata": {"name": "shunt-policyreviews"}, "rules": [
        {"apiGroups": ["api.shunt.dev"], "resources": ["policyreviews"], "verbs": ["create"]}]});
    support::create(
        &operator.admin,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        reviewers,
    )
    .await;
    for ns in ["shop", "team-a"] {
        operator
            .bind(
                ns,
                "shunt-policyreviews",
                "ClusterRole",
                "shunt-policyreviews",
                &["alice"],
            )
            .await;
    }

    let kubeconfig = std::env::temp_dir().join(format!("shunt-policy-test-{}.json", std::process::id()));
    std::fs::write(
        &kubeconfig,
        serde_json::to_string(&operator.cluster.admin_kubeconfig().unwrap()).unwrap(),
    )
    .unwrap();
    Env { operator, kubeconfig }
}

fn session(target: &str, mode: &str, filter: Option<&str>, port: u16) -> Value {
    support::session("s-", target, mode, filter, port)
}

/// Opens a session; asserts it is denied by `denied = (policy, rule)` or allowed (its name).
async fn open(who: &Client, ns: &str, body: Value, denied: Option<(&str, &str)>) -> String {
    let (status, answer) = request(who, "POST", &sessions(ns), Some(body.clone())).await;
    match denied {
        Some((policy, rule)) => {
            let message = answer["message"].as_str().unwrap_or_default();
            assert_eq!(status, 403, "{body} should be denied by {policy}: {answer}");
            assert!(
                message.contains(policy) && message.contains(&format!("(rule {rule})")),
                "{policy} {rule}: {message}"
            );
            String::new()
        }
        None => {
            assert_eq!(status, 201, "{body} should be allowed: {answer}");
            answer["metadata"]["name"].as_str().unwrap().to_owned()
        }
    }
}

async fn ready(env: &Env, plural: &str, path: &str) -> Value {
    poll(&format!("{path} to report Ready"), async || {
        let (_, obj) = request(
            &env.operator.admin,
            "GET",
            &format!("/apis/policy.shunt.dev/v1alpha1/{path}"),
            None,
        )
        .await;
        let _ = plural;
        let c = obj["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (obj["status"]["observedGeneration"] == obj["metadata"]["generation"]).then_some(c)
    })
    .await
}

#[tokio::test]
async fn policies_from_git_are_enforced_explained_and_reported() {
    let env = setup().await;
    let kc = env.kubeconfig.as_path();
    // The CRDs and the policies go in as a GitOps tool would apply them.
    for file in [
        "charts/shunt/crds/shuntpolicies.yaml",
        "charts/shunt/crds/clustershuntpolicies.yaml",
    ] {
        let (ok, out) = kubectl(kc, &["apply", "-f", &repo(file).display().to_string()]).await;
        assert!(ok, "{out}");
    }
    for name in ["prod-guard", "team-a", "identity", "broken"] {
        let (ok, out) = kubectl(kc, &["apply", "-f", &example(name)]).await;
        assert!(ok, "{name}: {out}");
    }
    let (ok, out) = kubectl(kc, &["apply", "-f", &example("unknown-block")]).await;
    assert!(
        !ok && out.contains("teleport"),
        "the schema must reject an unknown block word: {out}"
    );

    // Health, as Flux and Argo CD read it.
    for path in [
        "clustershuntpolicies/prod-guard",
        "namespaces/team-a/shuntpolicies/team-a",
        "namespaces/shop/shuntpolicies/identity",
    ] {
        let c = ready(&env, "", path).await;
        assert_eq!(c["status"], "True", "{path}: {c}");
    }
    let broken = ready(&env, "", "namespaces/shop/shuntpolicies/broken").await;
    assert_eq!(
        (broken["status"].as_str(), broken["reason"].as_str()),
        (Some("False"), Some("InvalidGlob")),
        "{broken}"
    );
    assert!(broken["message"].as_str().unwrap().contains("pay-["), "{broken}");
    let (ok, table) = kubectl(kc, &["get", "shuntpolicies", "-n", "shop"]).await;
    // (kubesim's printer columns do not evaluate JSONPath filters, so READY stays empty here.)
    let header = table.lines().next().unwrap_or_default();
    assert!(
        ok && ["TARGETS", "BLOCKS", "READY", "AGE"].iter().all(|c| header.contains(c)),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("broken") && l.contains("deployment/pay-[")),
        "{table}"
    );

    // prod-guard (tier=prod in env=staging namespaces) and identity, rule by rule.
    let alice = client(&env.operator.cluster, "alice", &[]).await;
    let bob = client(&env.operator.cluster, "bob", &[]).await;
    let pay = "deployment/payments-api";
    let guard = "ClusterShuntPolicy prod-guard";
    open(
        &alice,
        "shop",
        session(pay, "mirror", Some("x-shunt-user: alice"), 8080),
        Some((guard, "block: mirror")),
    )
    .await;
    open(
        &alice,
        "shop",
        session(pay, "steal", None, 8080),
        Some((guard, "requireFilter")),
    )
    .await;
    open(
        &alice,
        "shop",
        session(pay, "steal", Some("x-team: a"), 8080),
        Some((guard, "allowedHeaders")),
    )
    .await;
    open(
        &alice,
        "shop",
        session(pay, "steal", Some("x-shunt-user: alice"), 9090),
        Some((guard, "ports")),
    )
    .await;
    // identityHeader: alice cannot take bob's traffic.
    let identity = "ShuntPolicy shop/identity";
    open(
        &alice,
        "shop",
        session(pay, "steal", Some("x-shunt-user: bob"), 8080),
        Some((identity, "identityHeader")),
    )
    .await;
    let first = open(
        &alice,
        "shop",
        session(pay, "steal", Some("x-shunt-user: alice"), 8080),
        None,
    )
    .await;
    open(
        &alice,
        "shop",
        session(pay, "steal", Some("x-shunt-user: alice"), 8080),
        Some((guard, "maxSessionsPerUser")),
    )
    .await;
    // Targets no policy selects are untouched (the invalid `broken` policy is ignored).
    open(&alice, "shop", session("deployment/api", "steal", None, 8080), None).await;

    // team-a: the team's headers only, never a whole port.
    let team = "ShuntPolicy team-a/team-a";
    open(
        &bob,
        "team-a",
        session("deployment/web", "steal", None, 80),
        Some((team, "block: steal-unfiltered")),
    )
    .await;
    open(
        &bob,
        "team-a",
        session("deployment/web", "steal", Some("x-other: 1"), 80),
        Some((team, "allowedHeaders")),
    )
    .await;
    let web = open(
        &bob,
        "team-a",
        session("deployment/web", "steal", Some("x-team: a"), 80),
        None,
    )
    .await;

    // maxSessionDuration ends a session that lived too long; `block: steal` refuses even a
    // filtered steal.
    let (ok, out) = kubectl(kc, &["apply", "-f", &example("short-sessions")]).await;
    assert!(ok, "{out}");
    poll("bob's session to end after maxSessionDuration", async || {
        env.operator.registry().get("team-a", &web).is_none().then_some(())
    })
    .await;
    let (status, gone) = request(&bob, "GET", &format!("{}/{web}", sessions("team-a")), None).await;
    let message = gone["message"].as_str().unwrap_or_default();
    assert!(
        status == 404
            && message.contains("ShuntPolicy team-a/short-sessions")
            && message.contains("maxSessionDuration"),
        "{gone}"
    );
    let (ok, out) = kubectl(kc, &["apply", "-f", &example("no-steal")]).await;
    assert!(ok, "{out}");
    poll("the no-steal policy to apply", async || {
        let body = session("deployment/web", "steal", Some("x-team: a"), 80);
        let (status, answer) = request(&bob, "POST", &sessions("team-a"), Some(body)).await;
        let message = answer["message"].as_str().unwrap_or_default().to_owned();
        (status == 403 && message.contains("ShuntPolicy team-a/no-steal") && message.contains("(rule block: steal)"))
            .then_some(())
    })
    .await;
    for name in ["short-sessions", "no-steal"] {
        let (ok, out) = kubectl(kc, &["delete", "-f", &example(name)]).await;
        assert!(ok, "{out}");
    }

    // policyreviews explain the same decision.
    let review = json!({"apiVersion": "api.shunt.dev/v1", "kind": "PolicyReview", "spec": {
        "namespace": "shop", "target": pay, "mode": "steal", "filter": "x-shunt-user: bob", "ports": [8080]}});
    let reviews = "/apis/api.shunt.dev/v1/namespaces/shop/policyreviews";
    let (status, answer) = request(&alice, "POST", reviews, Some(review.clone())).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["spec"]["user"], "alice");
    assert_eq!(answer["status"]["allowed"], false, "{answer}");
    assert_eq!(
        (answer["status"]["policy"].as_str(), answer["status"]["rule"].as_str()),
        (Some(guard), Some("maxSessionsPerUser"))
    );
    // A review names its own namespace only.
    let elsewhere = "/apis/api.shunt.dev/v1/namespaces/team-a/policyreviews";
    let (status, answer) = request(&alice, "POST", elsewhere, Some(review)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("does not match"),
        "{answer}"
    );
    let (ok, resources) = kubectl(kc, &["api-resources", "--api-group", "api.shunt.dev"]).await;
    assert!(ok && resources.contains("policyreviews"), "{resources}");

    // Deleting a policy loosens enforcement: without `identity`, alice may filter on bob.
    let (status, _) = request(&alice, "DELETE", &format!("{}/{first}", sessions("shop")), None).await;
    assert_eq!(status, 200);
    let (ok, out) = kubectl(kc, &["delete", "-f", &example("identity")]).await;
    assert!(ok, "{out}");
    let loose = poll("deleting the identity policy to apply", async || {
        let body = session(pay, "steal", Some("x-shunt-user: bob"), 8080);
        let (status, answer) = request(&alice, "POST", &sessions("shop"), Some(body)).await;
        (status == 201).then(|| answer["metadata"]["name"].as_str().unwrap().to_owned())
    })
    .await;

    // Adding it back ends the session it now forbids, with the reason in an Event.
    let (ok, out) = kubectl(kc, &["apply", "-f", &example("identity")]).await;
    assert!(ok, "{out}");
    poll("the forbidden session to end", async || {
        env.operator.registry().get("shop", &loose).is_none().then_some(())
    })
    .await;
    let note = poll("the SessionEnded event", async || {
        let (_, list) = request(
            &env.operator.admin,
            "GET",
            "/apis/events.k8s.io/v1/namespaces/shop/events",
            None,
        )
        .await;
        list["items"].as_array()?.iter().find_map(|e| {
            let note = e["note"].as_str()?;
            (e["reason"] == "SessionEnded" && note.contains(&loose)).then(|| note.to_owned())
        })
    })
    .await;
    assert!(note.contains(identity) && note.contains("identityHeader"), "{note}");
    // Its CLI, looking for it, learns why.
    let (status, gone) = request(&alice, "GET", &format!("{}/{loose}", sessions("shop")), None).await;
    let message = gone["message"].as_str().unwrap_or_default();
    assert!(
        status == 404 && message.contains("ended by policy") && message.contains(identity),
        "{gone}"
    );

    // kubectl explain reads the generated schema.
    let (ok, text) = kubectl(kc, &["explain", "shuntpolicy.spec"]).await;
    assert!(
        ok && text.contains("identityHeader") && text.contains("targetSelector"),
        "{text}"
    );
}

/// The generated CRDs are valid Kubernetes CRDs (`kubernetes-validate`, installed by
/// scripts/setup), and the README shows exactly the example policies tested here.
#[test]
fn crds_validate_and_the_readme_shows_the_tested_examples() {
    let files: Vec<String> = ["shuntpolicies", "clustershuntpolicies"]
        .iter()
        .map(|f| repo(&format!("charts/shunt/crds/{f}.yaml")).display().to_string())
        .collect();
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate (PyPI) is installed by scripts/setup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.matches("passed").count() == 2, "{text}");
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    for name in ["prod-guard", "team-a", "identity"] {
        let body = std::fs::read_to_string(example(name)).unwrap();
        assert!(
            readme.contains(&body),
            "README.md's Policies section must contain operator/tests/policies/{name}.yaml verbatim"
        );
    }
}
