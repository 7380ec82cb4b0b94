//! Policies on kubesim as a GitOps tool would apply them: the CRDs and the example
//! policies (the README's) go in with the real `kubectl apply -f`; the operator's API
//! server (registered by an APIService) and its policy controller run in-process. Every
//! rule denies a violating session naming the policy and the rule and admits a compliant
//! one; an invalid policy reports `Ready=False` and changes nothing; deleting a policy
//! loosens enforcement and adding one ends a session it forbids.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::BodyExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use kubesim::{Cluster, Options};
use serde_json::{json, Value};
use shunt_operator::api::{self, auth::FrontProxy, AppState};
use shunt_operator::hub::HubState;
use shunt_operator::lifecycle::Events;
use shunt_operator::policy::{Controller, Policies};
use shunt_operator::registry::Registry;
use shunt_operator::tunnel::Tunnels;

async fn client(cluster: &Cluster, user: &str, groups: &[&str]) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.kubeconfig(user, groups).unwrap()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

async fn request(client: &Client, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.map_or_else(Vec::new, |b| b.to_string().into_bytes()))
        .unwrap();
    let resp = client.send(req.map(Into::into)).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes))),
    )
}

async fn create(client: &Client, path: &str, obj: Value) {
    let (status, body) = request(client, "POST", path, Some(obj)).await;
    assert!(status < 300, "creating at {path} failed: {body}");
}

async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the real kubectl (off the runtime: kubesim serves it from this test's runtime).
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn example(name: &str) -> String {
    repo(&format!("operator/tests/policies/{name}.yaml"))
        .display()
        .to_string()
}

struct Env {
    cluster: Cluster,
    admin: Client,
    registry: Registry,
    kubeconfig: PathBuf,
}

/// kubesim with namespaces `shop` (env=staging; Deployments `payments-api`, tier=prod,
/// and `api`) and `team-a` (Deployment `web`); alice and bob may steal, mirror and review
/// policies in both; the operator's API server with the policy controller.
async fn setup() -> Env {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let admin = client(&cluster, "kubesim-admin", &["system:masters"]).await;
    let registry = Registry::default();
    let trust = FrontProxy::load(admin.clone()).await.unwrap();
    let ca = kubesim::pki::Ca::new("shunt-api-ca").unwrap();
    let cert = ca.server(&["shunt-api.shunt-system.svc".into()], &[]).unwrap();
    let tls = trust
        .server_tls(cert.cert_pem.as_bytes(), cert.key_pem.as_bytes())
        .unwrap();
    let (tunnels, events) = (Tunnels::default(), Events::new(admin.clone(), None));
    let state = Arc::new(AppState {
        registry: registry.clone(),
        tunnels: tunnels.clone(),
        client: admin.clone(),
        trust,
        hub: HubState::default(),
        events: events.clone(),
    });
    let policies = Policies::default();
    tokio::spawn(
        Controller {
            client: admin.clone(),
            policies: policies.clone(),
            registry: registry.clone(),
            tunnels,
            events,
            interval: Duration::from_millis(300),
        }
        .run(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = api::router(state).layer(axum::Extension(policies));
    tokio::spawn(api::serve(
        listener,
        tls,
        router,
        std::future::pending(),
        Duration::from_secs(1),
    ));

    let namespaces = [
        ("shunt-system", json!({})),
        ("shop", json!({"env": "staging"})),
        ("team-a", json!({})),
    ];
    for (ns, labels) in namespaces {
        create(
            &admin,
            "/api/v1/namespaces",
            json!({"metadata": {"name": ns, "labels": labels}}),
        )
        .await;
    }
    let svc = json!({"metadata": {"name": "shunt-api"}, "spec": {"ports": [{"port": 443, "targetPort": addr.port()}]}});
    create(&admin, "/api/v1/namespaces/shunt-system/services", svc).await;
    let endpoints = json!({"metadata": {"name": "shunt-api"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": addr.port()}]}]});
    create(&admin, "/api/v1/namespaces/shunt-system/endpoints", endpoints).await;
    let api_service = json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "v1.api.shunt.dev"},
        "spec": {"group": "api.shunt.dev", "version": "v1", "groupPriorityMinimum": 1000, "versionPriority": 15,
            "service": {"namespace": "shunt-system", "name": "shunt-api", "port": 443},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(&ca.cert_pem)},
    });
    create(&admin, "/apis/apiregistration.k8s.io/v1/apiservices", api_service).await;
    poll("the APIService to become Available", async || {
        let path = "/apis/apiregistration.k8s.io/v1/apiservices/v1.api.shunt.dev";
        let (_, svc) = request(&admin, "GET", path, None).await;
        let conditions = svc["status"]["conditions"].as_array().cloned().unwrap_or_default();
        conditions
            .iter()
            .any(|c| c["type"] == "Available" && c["status"] == "True")
            .then_some(())
    })
    .await;
    for (ns, name, tier) in [
        ("shop", "payments-api", "prod"),
        ("shop", "api", "dev"),
        ("team-a", "web", "dev"),
    ] {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": {"tier": tier}}, "spec": {
            "replicas": 1, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "echo", "image": "kubesim/echo"}]}}}});
        create(
            &admin,
            &format!("/apis/apps/v1/namespaces/{ns}/deployments"),
            deployment,
        )
        .await;
        let role = json!({"metadata": {"name": "shunt-dev"}, "rules": [
            {"apiGroups": ["api.shunt.dev"], "resources": ["sessions", "targets"], "verbs": ["create", "get", "list", "watch", "delete"]},
            {"apiGroups": ["api.shunt.dev"], "resources": ["targets"], "verbs": ["steal", "mirror", "steal-unfiltered"]}]});
        let binding = json!({"metadata": {"name": "devs"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "shunt-dev"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"},
                         {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}]});
        if name != "api" {
            create(
                &admin,
                &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"),
                role,
            )
            .await;
            create(
                &admin,
                &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
                binding,
            )
            .await;
        }
    }
    // policyreviews are namespaced: a ClusterRole bound in a namespace lets alice ask there
    // and in team-a (where a 400 for the wrong namespace is checked).
    let reviewers = json!({"metadata": {"name": "shunt-policyreviews"}, "rules": [
        {"apiGroups": ["api.shunt.dev"], "resources": ["policyreviews"], "verbs": ["create"]}]});
    create(&admin, "/apis/rbac.authorization.k8s.io/v1/clusterroles", reviewers).await;
    for ns in ["shop", "team-a"] {
        let binding = json!({"metadata": {"name": "shunt-policyreviews"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "shunt-policyreviews"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]});
        create(
            &admin,
            &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
            binding,
        )
        .await;
    }

    let kubeconfig = std::env::temp_dir().join(format!("shunt-policy-test-{}.json", std::process::id()));
    std::fs::write(
        &kubeconfig,
        serde_json::to_string(&cluster.admin_kubeconfig().unwrap()).unwrap(),
    )
    .unwrap();
    Env {
        cluster,
        admin,
        registry,
        kubeconfig,
    }
}

fn session(target: &str, mode: &str, filter: Option<&str>, port: u16) -> Value {
    let mut spec = json!({"target": target, "mode": mode, "ports": [{"port": port}]});
    if let Some(f) = filter {
        spec["filter"] = json!(f);
    }
    json!({"apiVersion": "api.shunt.dev/v1", "kind": "Session", "metadata": {"generateName": "s-"}, "spec": spec})
}

fn sessions(ns: &str) -> String {
    format!("/apis/api.shunt.dev/v1/namespaces/{ns}/sessions")
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
            &env.admin,
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
    let alice = client(&env.cluster, "alice", &[]).await;
    let bob = client(&env.cluster, "bob", &[]).await;
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
        env.registry.get("team-a", &web).is_none().then_some(())
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
        env.registry.get("shop", &loose).is_none().then_some(())
    })
    .await;
    let note = poll("the SessionEnded event", async || {
        let (_, list) = request(&env.admin, "GET", "/apis/events.k8s.io/v1/namespaces/shop/events", None).await;
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
