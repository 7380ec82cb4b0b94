//! What a pod sees of the cluster, as its processes observe it: the in-cluster
//! credentials of its ServiceAccount (the real `kubectl` and kube-rs inside and with a
//! pod's kubeconfig authenticate as `system:serviceaccount:<ns>:<sa>`, and RBAC applies),
//! `automountServiceAccountToken: false` on the pod or its ServiceAccount, a pod whose
//! ServiceAccount appears late, and readiness probes with scheme HTTPS (a TLS server
//! passes, a plain HTTP server on the same kind of probe does not).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{eventually, Kubectl, Scratch};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use kubesim::{Cluster, Options};
use serde_json::json;

const SA_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn options() -> Options {
    let images = BTreeMap::from([("shell".to_owned(), vec!["sh".to_owned(), "-c".to_owned()])]);
    Options {
        images,
        ..Options::default()
    }
}

async fn admin(cluster: &Cluster) -> Client {
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.admin_kubeconfig().unwrap()).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn shell_pod(name: &str, script: &str, spec: serde_json::Value) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "shell", "args": [script]}]},
    });
    json_patch::merge(&mut pod["spec"], &spec);
    serde_json::from_value(pod).unwrap()
}

/// The pod's log once it contains `marker`.
async fn log_with(pods: &Api<Pod>, name: &str, marker: &str) -> String {
    eventually(&format!("{marker:?} in the log of {name}"), || async {
        let log = pods.logs(name, &LogParams::default()).await.ok()?;
        log.contains(marker).then_some(log)
    })
    .await
}

fn line<'a>(log: &'a str, key: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} line in:\n{log}"))
        .trim()
}

const RBAC: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: reader
  namespace: shop
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: quiet
  namespace: shop
automountServiceAccountToken: false
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-reader
  namespace: shop
rules:
- apiGroups: [\"\"]
  resources: [\"pods\"]
  verbs: [\"get\", \"list\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: reader
  namespace: shop
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: pod-reader
subjects:
- kind: ServiceAccount
  name: reader
  namespace: shop
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: reader-auth
  namespace: kube-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: extension-apiserver-authentication-reader
subjects:
- kind: ServiceAccount
  name: reader
  namespace: shop
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_authenticate_as_their_service_account() {
    let cluster = Cluster::start(options()).await.unwrap();
    let scratch = Scratch::new();
    let kubectl = Kubectl::new(&cluster, &scratch, "kubesim-admin", &["system:masters"]);
    kubectl.ok(&["apply", "-f", &scratch.write("rbac.yaml", RBAC)]).await;
    let client = admin(&cluster).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");

    // kubectl inside the pod: no flags, no kubeconfig of ours.
    let script = "echo home=$HOME; echo kubeconfig=${KUBECONFIG:-none}; \
        echo whoami=$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}'); \
        echo pods=$(kubectl get pods -o name); \
        echo secrets=$(kubectl get secrets 2>&1); \
        echo front-proxy=$(kubectl get configmap -n kube-system extension-apiserver-authentication -o jsonpath='{.data.requestheader-allowed-names}'); \
        echo done; exec sleep 300";
    let spec = json!({"serviceAccountName": "reader"});
    pods.create(&PostParams::default(), &shell_pod("who", script, spec))
        .await
        .unwrap();
    let log = log_with(&pods, "who", "done").await;
    assert_eq!(line(&log, "whoami="), "system:serviceaccount:shop:reader", "{log}");
    assert_eq!(line(&log, "pods="), "pod/who", "the namespace comes from the pod");
    assert_eq!(
        line(&log, "secrets="),
        r#"Error from server (Forbidden): secrets is forbidden: User "system:serviceaccount:shop:reader" cannot list resource "secrets" in API group "" in the namespace "shop""#
    );
    assert!(line(&log, "front-proxy=").contains("front-proxy"), "{log}");
    let home = line(&log, "home=");
    assert_ne!(Some(home), std::env::var("HOME").ok().as_deref());
    assert!(!std::path::Path::new(home).join(".kube/config").exists());

    // The pod has the volume kube-apiserver adds, mounted where in-cluster clients look.
    let pod = pods.get("who").await.unwrap();
    let spec = pod.spec.unwrap();
    let volume = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name.starts_with("kube-api-access-"));
    let volume = volume.expect("a kube-api-access volume");
    let mount = &spec.containers[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str(), mount.read_only),
        (volume.name.as_str(), SA_PATH, Some(true))
    );

    // kube-rs reads the same kubeconfig (tokenFile, certificate-authority, namespace).
    let path = line(&log, "kubeconfig=");
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "shop");
    let sa_client = Client::try_from(config).unwrap();
    let reviews: Api<SelfSubjectReview> = Api::all(sa_client.clone());
    let review = reviews
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = review.status.unwrap().user_info.unwrap();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:shop:reader"));
    let extra = user.extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], ["who"]);
    let mine: Api<Pod> = Api::default_namespaced(sa_client);
    assert_eq!(mine.list(&Default::default()).await.unwrap().items.len(), 1);

    // No automount: on the pod, or on its ServiceAccount.
    let script = "echo kubeconfig=${KUBECONFIG:-none}";
    for (name, spec) in [
        (
            "off",
            json!({"serviceAccountName": "reader", "automountServiceAccountToken": false}),
        ),
        ("quiet", json!({"serviceAccountName": "quiet"})),
    ] {
        pods.create(&PostParams::default(), &shell_pod(name, script, spec))
            .await
            .unwrap();
        let log = log_with(&pods, name, "kubeconfig=").await;
        assert_eq!(line(&log, "kubeconfig="), "none", "{name}");
        let spec = pods.get(name).await.unwrap().spec.unwrap();
        assert!(spec.volumes.unwrap_or_default().is_empty(), "{name}");
        assert!(spec.containers[0].volume_mounts.is_none(), "{name}");
    }

    // A pod whose ServiceAccount does not exist yet waits for it, saying why.
    let script = "echo whoami=$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')";
    pods.create(
        &PostParams::default(),
        &shell_pod("late", script, json!({"serviceAccountName": "late"})),
    )
    .await
    .unwrap();
    let message = eventually("the late pod to say what it waits for", || async {
        let status = pods.get("late").await.ok()?.status?;
        let state = status.container_statuses?.first()?.state.clone()?;
        state.waiting?.message
    })
    .await;
    assert!(message.contains(r#"serviceaccounts "late" not found"#), "{message}");
    kubectl.ok(&["create", "serviceaccount", "late", "-n", "shop"]).await;
    let log = log_with(&pods, "late", "whoami=").await;
    assert_eq!(line(&log, "whoami="), "system:serviceaccount:shop:late");
    cluster.shutdown().await;
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_readiness_probes_speak_tls_without_verifying() {
    let cluster = Cluster::start(options()).await.unwrap();
    let client = admin(&cluster).await;
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let probe =
        json!({"httpGet": {"scheme": "HTTPS", "port": 8443, "path": "/"}, "periodSeconds": 1, "failureThreshold": 1});
    // A self-signed server: the kubelet does not verify it.
    let tls = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out cert.pem \
               -days 1 -subj /CN=probe 2>/dev/null && exec openssl s_server -quiet -www -accept $POD_IP:8443 -cert cert.pem -key key.pem";
    // Plain HTTP on the probed port: a TCP connect would pass, a TLS handshake does not.
    let plain = json!({"name": "main", "image": "kubesim/echo", "env": [{"name": "PORT", "value": "8443"}], "readinessProbe": probe});
    let tls = json!({"name": "main", "image": "shell", "args": [tls], "readinessProbe": probe});
    for (name, container) in [("plain", plain), ("tls", tls)] {
        let spec = json!({"restartPolicy": "Always", "containers": [container]});
        pods.create(&PostParams::default(), &shell_pod(name, "", spec))
            .await
            .unwrap();
    }
    eventually("the TLS pod to be ready", || async {
        ready(&pods.get("tls").await.ok()?).then_some(())
    })
    .await;
    let plain_running = eventually("the plain pod to run", || async {
        let pod = pods.get("plain").await.ok()?;
        let running = pod.status?.container_statuses?.first()?.state.clone()?.running;
        running.map(|_| Instant::now())
    })
    .await;
    // Several probe periods, and the plain server never passes.
    while plain_running.elapsed() < Duration::from_secs(3) {
        assert!(
            !ready(&pods.get("plain").await.unwrap()),
            "a plain HTTP server passed an https probe"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.shutdown().await;
}
