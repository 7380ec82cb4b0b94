//! shunt's control plane as pods on kubesim (loopback mode, no root): the images
//! `shunt/webhook` and `shunt/operator` map to `shunt __webhook` and `shunt __operator`,
//! the Deployments' `args` are appended with `$(POD_IP)` expanded, and both processes
//! find the API server through their ServiceAccount's in-cluster credentials. Applied
//! with the real `kubectl`; the webhook becomes Ready through its HTTPS probe, publishes
//! its caBundle and injects a pod of an opted-in namespace through its Service; the
//! operator becomes Ready (leader, serving) and answers `api.shunt.dev` through the
//! APIService.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubesim::{Cluster, Options};

const DEADLINE: Duration = Duration::from_secs(60);

const MANIFEST: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shunt-system
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: shunt-operator, namespace: shunt-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: shunt-webhook, namespace: shunt-system}
---
# The chart's least-privilege RBAC is not what this test is about.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: shunt-control-plane}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}
subjects:
- {kind: ServiceAccount, name: shunt-operator, namespace: shunt-system}
- {kind: ServiceAccount, name: shunt-webhook, namespace: shunt-system}
---
apiVersion: v1
kind: Service
metadata: {name: shunt-webhook, namespace: shunt-system}
spec:
  selector: {app: shunt-webhook}
  ports: [{name: https, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Service
metadata: {name: shunt-api, namespace: shunt-system}
spec:
  selector: {app: shunt-operator}
  ports: [{name: https, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Service
metadata: {name: shunt-operator, namespace: shunt-system}
spec:
  selector: {app: shunt-operator}
  ports: [{name: hub, port: 15443, targetPort: 15443}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: shunt-webhook, namespace: shunt-system}
spec:
  selector: {matchLabels: {app: shunt-webhook}}
  template:
    metadata: {labels: {app: shunt-webhook}}
    spec:
      serviceAccountName: shunt-webhook
      terminationGracePeriodSeconds: 2
      containers:
      - name: webhook
        image: shunt/webhook:test
        args: ["--cert-mode", "self", "--namespace", "shunt-system", "--service-name", "shunt-webhook",
               "--secret-name", "shunt-tls", "--webhook-config-name", "shunt-webhook",
               "--sidecar-image", "shunt/sidecar:test", "--redirect", "port-takeover",
               "--operator-addr", "shunt-operator.shunt-system.svc:15443",
               "--operator-server-name", "shunt-operator.shunt-system.svc",
               "--listen", "$(POD_IP):8443", "--drain-timeout", "1s"]
        env:
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        ports: [{name: https, containerPort: 8443}]
        readinessProbe:
          httpGet: {scheme: HTTPS, port: https, path: /readyz}
          periodSeconds: 1
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: shunt-operator, namespace: shunt-system}
spec:
  selector: {matchLabels: {app: shunt-operator}}
  template:
    metadata: {labels: {app: shunt-operator}}
    spec:
      serviceAccountName: shunt-operator
      terminationGracePeriodSeconds: 2
      containers:
      - name: operator
        image: shunt/operator:test
        args: ["--namespace", "shunt-system", "--server-name", "shunt-operator.shunt-system.svc",
               "--api-listen", "$(POD_IP):8443", "--hub-listen", "$(POD_IP):15443",
               "--admin-listen", "$(POD_IP):9090", "--drain", "1s"]
        env:
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        ports: [{name: api, containerPort: 8443}, {name: hub, containerPort: 15443}, {name: admin, containerPort: 9090}]
        readinessProbe:
          httpGet: {port: admin, path: /readyz}
          periodSeconds: 1
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: shunt-webhook}
webhooks:
- name: pods.shunt.dev
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: Fail
  timeoutSeconds: 5
  namespaceSelector: {matchLabels: {shunt.dev/injection: enabled}}
  clientConfig:
    service: {name: shunt-webhook, namespace: shunt-system, path: /mutate-pods, port: 443}
  rules:
  - {operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"]}
---
# The operator generated its own serving certificate (no --api-tls-cert).
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1.api.shunt.dev}
spec:
  group: api.shunt.dev
  version: v1
  groupPriorityMinimum: 1000
  versionPriority: 15
  insecureSkipTLSVerify: true
  service: {name: shunt-api, namespace: shunt-system, port: 443}
"#;

const WORKLOAD: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {shunt.dev/injection: enabled}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: shop}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: kubesim/echo
    ports: [{name: http, containerPort: 8080}]
"#;

struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "kubectl {args:?}: {text}");
        text
    }

    /// Polls `kubectl args` until its output satisfies `done`.
    async fn until(&self, what: &str, args: &[&str], done: impl Fn(&str) -> bool, cluster: &Cluster) -> String {
        let start = Instant::now();
        loop {
            let (ok, text) = self.run(args);
            if ok && done(&text) {
                return text;
            }
            if start.elapsed() > DEADLINE {
                let pods = self.run(&["get", "pods", "-A", "-o", "wide"]).1;
                let logs = ["shunt-webhook", "shunt-operator"]
                    .map(|d| self.run(&["logs", "-n", "shunt-system", &format!("deploy/{d}")]).1);
                panic!(
                    "timed out waiting for {what}; last output: {text}\npods:\n{pods}\nwebhook log:\n{}\noperator log:\n{}\ncluster at {}",
                    logs[0],
                    logs[1],
                    cluster.url()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

fn ready(deployment: &str) -> [String; 7] {
    [
        "get",
        "deployment",
        deployment,
        "-n",
        "shunt-system",
        "-o",
        "jsonpath={.status.readyReplicas}",
    ]
    .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_and_operator_run_as_pods() {
    let shunt = env!("CARGO_BIN_EXE_shunt").to_owned();
    let images = BTreeMap::from([
        ("shunt/webhook".to_owned(), vec![shunt.clone(), "__webhook".to_owned()]),
        (
            "shunt/operator".to_owned(),
            vec![shunt.clone(), "__operator".to_owned()],
        ),
        ("shunt/sidecar".to_owned(), vec![shunt.clone(), "__sidecar".to_owned()]),
        ("kubesim/echo".to_owned(), vec![shunt, "__echo".to_owned()]),
    ]);
    let cluster = Cluster::start(Options {
        images,
        ..Options::default()
    })
    .await
    .unwrap();
    let dir = tempdir();
    let kubectl = Kubectl {
        kubeconfig: dir.join("admin.kubeconfig"),
        cache: dir.join("cache"),
    };
    cluster
        .write_kubeconfig(&kubectl.kubeconfig, "kubesim-admin", &["system:masters"])
        .unwrap();
    let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/shunt/crds");
    kubectl.ok(&["apply", "-f", crds.to_str().unwrap()]);
    let manifest = dir.join("control-plane.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    kubectl.ok(&["apply", "-f", manifest.to_str().unwrap()]);

    // The webhook: Ready through the HTTPS probe, its caBundle published.
    let args = ready("shunt-webhook");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kubectl
        .until("the webhook to be ready", &args, |t| t == "1", &cluster)
        .await;
    let bundle = kubectl.ok(&[
        "get",
        "mutatingwebhookconfiguration",
        "shunt-webhook",
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ]);
    assert!(!bundle.is_empty(), "the webhook publishes its CA bundle");
    kubectl.ok(&["get", "secret", "shunt-tls", "-n", "shunt-system"]);

    // The operator: Ready (leader, serving), and its API answers through the APIService.
    let args = ready("shunt-operator");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kubectl
        .until("the operator to be ready", &args, |t| t == "1", &cluster)
        .await;
    let raw = ["get", "--raw", "/apis/api.shunt.dev/v1/namespaces/default/sessions"];
    let list = kubectl
        .until("the aggregated API", &raw, |t| t.contains("SessionList"), &cluster)
        .await;
    assert!(list.contains("\"items\":[]"), "{list}");

    // A pod of an opted-in namespace is injected by the webhook pod, called through its
    // Service with failurePolicy Fail.
    let workload = dir.join("workload.yaml");
    std::fs::write(&workload, WORKLOAD).unwrap();
    kubectl.ok(&["apply", "-f", workload.to_str().unwrap()]);
    let containers = kubectl.ok(&[
        "get",
        "pod",
        "app",
        "-n",
        "shop",
        "-o",
        "jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}",
    ]);
    assert!(containers.split(' ').any(|c| c == "shunt-sidecar"), "{containers}");

    cluster.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shunt-control-plane-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
