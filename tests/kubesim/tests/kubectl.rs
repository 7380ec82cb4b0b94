//! The real `kubectl` against an in-process kubesim: get, apply (create and update) and
//! delete of deployments, pods and a CRD with its objects, server-side dry runs and
//! `diff`, `get -w` (names, and the tables of pods, deployments and custom objects), `auth can-i`
//! answered from RBAC, `auth whoami`, `create token`.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Stdio;

use common::{Kubectl, Scratch, DEADLINE};
use kubesim::{Cluster, Options};
use tokio::io::{AsyncBufReadExt, BufReader};

fn deployment(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
      - name: web
        image: kubesim/echo
"
    )
}

const WIDGET_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.kubesim.test
spec:
  group: kubesim.test
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Color, type: string, jsonPath: .spec.color}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              color: {type: string}
";

fn widget(size: u32) -> String {
    format!("apiVersion: kubesim.test/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: {size}\n")
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: solo
spec:
  containers:
  - name: app
    image: kubesim/echo
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_apply_and_delete() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let scratch = Scratch::new();
    let kubectl = Kubectl::new(&cluster, &scratch, "kubesim-admin", &["system:masters"]);

    let namespaces = kubectl.ok(&["get", "namespaces", "-o", "name"]).await;
    assert!(namespaces.lines().any(|l| l == "namespace/kube-system"), "{namespaces}");
    let roles = kubectl.ok(&["get", "clusterroles", "-o", "name"]).await;
    for role in [
        "cluster-admin",
        "system:discovery",
        "system:basic-user",
        "system:auth-delegator",
        "view",
    ] {
        assert!(
            roles
                .lines()
                .any(|l| l == format!("clusterrole.rbac.authorization.k8s.io/{role}")),
            "{role} in {roles}"
        );
    }

    // Deployment: create, update, no-op, delete.
    let file = scratch.write("deployment.yaml", &deployment(2));
    assert_eq!(
        kubectl.ok(&["apply", "-f", &file]).await.trim(),
        "deployment.apps/web created"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"])
            .await,
        "2"
    );
    assert_eq!(
        kubectl.ok(&["apply", "-f", &file]).await.trim(),
        "deployment.apps/web unchanged"
    );
    scratch.write("deployment.yaml", &deployment(3));
    assert_eq!(
        kubectl.ok(&["apply", "-f", &file]).await.trim(),
        "deployment.apps/web configured"
    );
    assert_eq!(
        kubectl
            .ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"])
            .await,
        "3"
    );
    let listed = kubectl.ok(&["get", "deployments", "-l", "app=web", "-o", "name"]).await;
    assert_eq!(listed.trim(), "deployment.apps/web");

    // A pod, as its own object.
    let pod = scratch.write("pod.yaml", POD);
    assert_eq!(kubectl.ok(&["apply", "-f", &pod]).await.trim(), "pod/solo created");
    assert!(kubectl
        .ok(&["get", "pods"])
        .await
        .lines()
        .any(|l| l.starts_with("solo ")));
    let deleted = kubectl.ok(&["delete", "-f", &pod, "--grace-period=0", "--force"]).await;
    assert_eq!(deleted.trim(), r#"pod "solo" force deleted"#);

    // A CRD, then its objects.
    let crd = scratch.write("crd.yaml", WIDGET_CRD);
    assert_eq!(
        kubectl.ok(&["apply", "-f", &crd]).await.trim(),
        "customresourcedefinition.apiextensions.k8s.io/widgets.kubesim.test created"
    );
    let w = scratch.write("widget.yaml", &widget(3));
    assert_eq!(
        kubectl.ok(&["apply", "-f", &w]).await.trim(),
        "widget.kubesim.test/w1 created"
    );
    scratch.write("widget.yaml", &widget(5));
    assert_eq!(
        kubectl.ok(&["apply", "-f", &w]).await.trim(),
        "widget.kubesim.test/w1 configured"
    );
    let table = kubectl.ok(&["get", "widgets"]).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "SIZE", "COLOR", "AGE"], "printer columns: {table}");
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    // No color: a blank cell, as kube-apiserver's CRD printer leaves it.
    assert_eq!((row.len(), &row[..2]), (3, &["w1", "5"][..]), "{table}");
    assert!(row[2].ends_with('s'), "an age: {table}");
    let invalid = scratch.write(
        "invalid.yaml",
        "apiVersion: kubesim.test/v1\nkind: Widget\nmetadata:\n  name: w2\nspec:\n  size: huge\n",
    );
    assert!(kubectl.fails(&["apply", "-f", &invalid]).await.contains("is invalid"));

    assert_eq!(
        kubectl.ok(&["delete", "-f", &w]).await.trim(),
        r#"widget.kubesim.test "w1" deleted"#
    );
    assert_eq!(
        kubectl.ok(&["delete", "-f", &file]).await.trim(),
        r#"deployment.apps "web" deleted"#
    );
    let missing = kubectl.fails(&["get", "deployment", "web"]).await;
    assert_eq!(
        missing.trim(),
        r#"Error from server (NotFound): deployments.apps "web" not found"#
    );
    assert_eq!(
        kubectl.ok(&["delete", "-f", &crd]).await.trim(),
        r#"customresourcedefinition.apiextensions.k8s.io "widgets.kubesim.test" deleted"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dry_run_and_diff_change_nothing() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let scratch = Scratch::new();
    let kubectl = Kubectl::new(&cluster, &scratch, "kubesim-admin", &["system:masters"]);
    let file = scratch.write("deployment.yaml", &deployment(2));
    kubectl.ok(&["apply", "-f", &file]).await;
    let replicas = async || {
        kubectl
            .ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"])
            .await
    };
    let diff = async || {
        let out = kubectl.command(&["diff", "-f", &file]).output().await.unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(diff().await, (Some(0), String::new()), "nothing to diff yet");

    scratch.write("deployment.yaml", &deployment(4));
    assert_eq!(
        kubectl.ok(&["apply", "--dry-run=server", "-f", &file]).await.trim(),
        "deployment.apps/web configured (server dry run)"
    );
    assert_eq!(replicas().await, "2");
    let (code, text) = diff().await;
    assert_eq!(code, Some(1), "kubectl diff exits 1 when there are differences: {text}");
    assert!(
        text.contains("-  replicas: 2") && text.contains("+  replicas: 4"),
        "{text}"
    );
    assert_eq!(replicas().await, "2");

    // A new object: created by nobody, a diff against nothing.
    let pod = scratch.write("pod.yaml", POD);
    assert_eq!(
        kubectl.ok(&["apply", "--dry-run=server", "-f", &pod]).await.trim(),
        "pod/solo created (server dry run)"
    );
    let out = kubectl.command(&["diff", "-f", &pod]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("+  name: solo"), "{text}");
    assert!(kubectl.fails(&["get", "pod", "solo"]).await.contains("NotFound"));

    assert_eq!(
        kubectl.ok(&["delete", "--dry-run=server", "-f", &file]).await.trim(),
        r#"deployment.apps "web" deleted (server dry run)"#
    );
    assert_eq!(replicas().await, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_streams_changes() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let scratch = Scratch::new();
    let kubectl = Kubectl::new(&cluster, &scratch, "kubesim-admin", &["system:masters"]);
    kubectl.ok(&["create", "configmap", "before"]).await;

    let mut watch = kubectl
        .command(&["get", "configmaps", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("a watch line in time")
            .unwrap()
            .unwrap()
    };
    assert_eq!(next().await, "configmap/before");
    kubectl
        .ok(&["create", "configmap", "during", "--from-literal=k=v"])
        .await;
    assert_eq!(next().await, "configmap/during");
    kubectl.ok(&["label", "configmap", "before", "seen=yes"]).await;
    assert_eq!(next().await, "configmap/before");
    kubectl.ok(&["delete", "configmap", "during"]).await;
    assert_eq!(next().await, "configmap/during");
    watch.kill().await.unwrap();
}

/// A running `kubectl get -w`: its table lines, split into cells.
struct Watch {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Watch {
    fn start(kubectl: &Kubectl, what: &str) -> Watch {
        let mut child = kubectl
            .command(&["get", what, "-w"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Watch { child, lines }
    }

    async fn line(&mut self) -> Vec<String> {
        let line = tokio::time::timeout(DEADLINE, self.lines.next_line())
            .await
            .expect("a watch line in time")
            .unwrap()
            .expect("kubectl get -w still runs");
        line.split("   ")
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect()
    }

    /// Reads lines until one satisfies `want` (earlier ones are intermediate states).
    async fn until(&mut self, what: &str, want: impl Fn(&[String]) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let line = tokio::time::timeout_at(deadline, self.line())
                .await
                .unwrap_or_else(|_| panic!("no line {what} in time; saw {seen:?}"));
            if want(&line) {
                return line;
            }
            seen.push(line);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_watch_prints_tables_of_pods_deployments_and_custom_objects() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let scratch = Scratch::new();
    let kubectl = Kubectl::new(&cluster, &scratch, "kubesim-admin", &["system:masters"]);
    let crd = scratch.write("crd.yaml", WIDGET_CRD);
    kubectl.ok(&["apply", "-f", &crd]).await;
    let w = scratch.write("widget.yaml", &widget(3));
    kubectl.ok(&["apply", "-f", &w]).await;

    let mut pods = Watch::start(&kubectl, "pods");
    let mut deployments = Watch::start(&kubectl, "deployments");
    let mut widgets = Watch::start(&kubectl, "widgets");
    // Headers come with the first object; widgets exist already.
    assert_eq!(widgets.line().await, ["NAME", "SIZE", "COLOR", "AGE"]);
    let first = widgets.line().await;
    assert_eq!(&first[..2], ["w1", "3"], "{first:?}");
    scratch.write("widget.yaml", &widget(7));
    kubectl.ok(&["apply", "-f", &w]).await;
    let changed = widgets.line().await;
    assert_eq!(&changed[..2], ["w1", "7"], "{changed:?}");

    let file = scratch.write("deployment.yaml", &deployment(2));
    kubectl.ok(&["apply", "-f", &file]).await;
    assert_eq!(
        deployments.line().await,
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    deployments
        .until("with 2 of 2 pods ready", |l| {
            l[0] == "web" && l[1..4] == ["2/2", "2", "2"]
        })
        .await;
    assert_eq!(pods.line().await, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    let running = |l: &[String]| l[0].starts_with("web-") && l[1..4] == ["1/1", "Running", "0"];
    let one = pods.until("of a running pod", running).await;
    let other = pods
        .until("of the other running pod", |l| running(l) && l[0] != one[0])
        .await;

    scratch.write("deployment.yaml", &deployment(1));
    kubectl.ok(&["apply", "-f", &file]).await;
    deployments
        .until("scaled down to 1", |l| l[0] == "web" && l[1..4] == ["1/1", "1", "1"])
        .await;
    let leaving = pods.until("of a pod terminating", |l| l[2] == "Terminating").await;
    assert!([&one[0], &other[0]].contains(&&leaving[0]), "{leaving:?}");

    kubectl.ok(&["delete", "-f", &w]).await;
    // kubectl prints the last state of a deleted object once more.
    let gone = widgets.line().await;
    assert_eq!(&gone[..2], ["w1", "7"], "{gone:?}");
    for watch in [&mut pods, &mut deployments, &mut widgets] {
        watch.child.kill().await.unwrap();
    }
}

const RBAC: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: targets.api.shunt.dev
spec:
  group: api.shunt.dev
  names: {kind: Target, plural: targets, singular: target}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: alice
  namespace: shop
rules:
- apiGroups: ['']
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [api.shunt.dev]
  resources: [targets]
  resourceNames: [deployment.api]
  verbs: [steal]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: alice
  namespace: shop
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: alice}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_can_i_answers_from_rbac() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let scratch = Scratch::new();
    let admin = Kubectl::new(&cluster, &scratch, "kubesim-admin", &["system:masters"]);
    let alice = Kubectl::new(&cluster, &scratch, "alice", &["dev"]);
    let can_i = async |args: &[&str]| {
        let run = alice.run(&[&["auth", "can-i"][..], args].concat()).await;
        // kubectl exits 1 on "no"; both answers are on stdout.
        assert_eq!(
            run.ok,
            run.stdout.trim() == "yes",
            "{args:?}: {} {}",
            run.stdout,
            run.stderr
        );
        run.stdout.trim().to_owned()
    };

    assert_eq!(can_i(&["list", "pods", "-n", "shop"]).await, "no");
    let forbidden = alice.fails(&["get", "pods", "-n", "default"]).await;
    assert_eq!(
        forbidden.trim(),
        r#"Error from server (Forbidden): pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
    );

    let rbac = scratch.write("rbac.yaml", RBAC);
    admin.ok(&["apply", "-f", &rbac]).await;
    assert_eq!(can_i(&["list", "pods", "-n", "shop"]).await, "yes");
    assert_eq!(can_i(&["get", "pods/solo", "-n", "shop"]).await, "yes");
    assert_eq!(can_i(&["delete", "pods", "-n", "shop"]).await, "no");
    assert_eq!(can_i(&["list", "pods", "-n", "default"]).await, "no");
    assert_eq!(can_i(&["get", "pods", "--subresource=log", "-n", "shop"]).await, "no");
    assert_eq!(
        can_i(&["steal", "targets.api.shunt.dev/deployment.api", "-n", "shop"]).await,
        "yes"
    );
    assert_eq!(
        can_i(&["steal", "targets.api.shunt.dev/deployment.web", "-n", "shop"]).await,
        "no"
    );
    assert_eq!(
        can_i(&["steal", "targets/deployment.api", "-n", "shop"]).await,
        "yes",
        "the group comes from discovery"
    );
    assert_eq!(
        can_i(&["get", "targets.api.shunt.dev/deployment.api", "-n", "shop"]).await,
        "no"
    );
    assert_eq!(can_i(&["get", "/healthz"]).await, "yes");
    assert_eq!(can_i(&["get", "/metrics"]).await, "no");
    assert_eq!(
        can_i(&["create", "selfsubjectaccessreviews.authorization.k8s.io"]).await,
        "yes"
    );
    assert_eq!(alice.ok(&["get", "pods", "-n", "shop", "-o", "name"]).await, "");

    let list = alice.ok(&["auth", "can-i", "--list", "-n", "shop"]).await;
    let row = |resource: &str| {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(resource))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
    };
    assert_eq!(
        row("targets.api.shunt.dev").unwrap(),
        ["targets.api.shunt.dev", "[]", "[deployment.api]", "[steal]"],
        "{list}"
    );
    assert_eq!(
        row("pods").unwrap(),
        ["pods", "[]", "[]", "[get", "list", "watch]"],
        "{list}"
    );
    assert!(
        list.lines().any(|l| l.contains("[/version]") && l.contains("[get]")),
        "{list}"
    );

    let whoami = alice
        .ok(&[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username} {.status.userInfo.groups}",
        ])
        .await;
    assert_eq!(whoami, r#"alice ["dev","system:authenticated"]"#);
    assert_eq!(
        admin.ok(&["auth", "can-i", "steal", "anything"]).await.trim(),
        "yes",
        "system:masters may do anything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_token_for_an_audience() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let scratch = Scratch::new();
    let kubectl = Kubectl::new(&cluster, &scratch, "kubesim-admin", &["system:masters"]);
    kubectl.ok(&["create", "serviceaccount", "web"]).await;
    let token = kubectl
        .ok(&[
            "create",
            "token",
            "web",
            "--audience",
            "shunt.dev/sidecar",
            "--duration",
            "10m",
        ])
        .await;
    let token = token.trim();
    assert!(!token.is_empty());

    let review = |token: &str, audience: &str| {
        format!(
            r#"{{"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {{"token": "{token}", "audiences": ["{audience}"]}}}}"#
        )
    };
    let ok = scratch.write("ok.json", &review(token, "shunt.dev/sidecar"));
    let answer = kubectl
        .ok(&[
            "create",
            "-f",
            &ok,
            "-o",
            "jsonpath={.status.authenticated} {.status.user.username}",
        ])
        .await;
    assert_eq!(answer, "true system:serviceaccount:default:web");
    let wrong = scratch.write("wrong.json", &review(token, "someone-else"));
    let answer = kubectl
        .ok(&[
            "create",
            "-f",
            &wrong,
            "-o",
            "jsonpath={.status.authenticated}: {.status.error}",
        ])
        .await;
    assert_eq!(
        answer,
        r#"false: token audiences ["shunt.dev/sidecar"] is invalid for the target audiences ["someone-else"]"#
    );

    let too_short = kubectl.fails(&["create", "token", "web", "--duration", "5m"]).await;
    assert!(
        too_short.contains("may not specify a duration less than 10 minutes"),
        "{too_short}"
    );
    let ghost = kubectl.fails(&["create", "token", "ghost"]).await;
    assert!(ghost.contains(r#"serviceaccounts "ghost" not found"#), "{ghost}");

    // A token for the API server's audience works as a kubectl credential.
    let api_token = kubectl.ok(&["create", "token", "web"]).await;
    let as_sa = scratch.0.join("sa.kubeconfig");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&kubectl.kubeconfig).unwrap()).unwrap();
    config["users"][0]["user"] = serde_json::json!({"token": api_token.trim()});
    std::fs::write(&as_sa, config.to_string()).unwrap();
    let sa = Kubectl {
        kubeconfig: as_sa,
        cache: scratch.0.join("sa.cache"),
    };
    let whoami = sa
        .ok(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"])
        .await;
    assert_eq!(whoami, "system:serviceaccount:default:web");
    assert_eq!(sa.run(&["auth", "can-i", "list", "secrets"]).await.stdout.trim(), "no");
}
