//! `kubectl apply -f` (client-side apply) of one multi-document install manifest of the
//! shape a Helm chart renders — Namespace, CRD, RBAC (including a RoleBinding to the
//! built-in `extension-apiserver-authentication-reader` Role in `kube-system`),
//! Services, a Deployment, APIService, MutatingWebhookConfiguration,
//! PodDisruptionBudget and NetworkPolicy — against kubesim: everything is created,
//! a second apply changes nothing, an edited PDB and NetworkPolicy are configured
//! (three-way merge from the last-applied annotation), and `kubectl delete -f` removes it.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{eventually, Kubectl, Scratch};
use kubesim::{Cluster, Options};

const MANIFEST: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shunt-system
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: shuntpolicies.policy.shunt.dev
spec:
  group: policy.shunt.dev
  scope: Namespaced
  names: {kind: ShuntPolicy, plural: shuntpolicies, singular: shuntpolicy, listKind: ShuntPolicyList}
  versions:
  - name: v1alpha1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: shunt-operator
  namespace: shunt-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: shunt-operator
rules:
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: shunt-operator
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: shunt-operator}
subjects:
- {kind: ServiceAccount, name: shunt-operator, namespace: shunt-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: shunt-operator-auth-reader
  namespace: kube-system
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: extension-apiserver-authentication-reader}
subjects:
- {kind: ServiceAccount, name: shunt-operator, namespace: shunt-system}
---
apiVersion: v1
kind: Service
metadata:
  name: shunt-api
  namespace: shunt-system
spec:
  selector: {app.kubernetes.io/name: shunt-operator}
  ports:
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: v1
kind: Service
metadata:
  name: shunt-webhook
  namespace: shunt-system
spec:
  selector: {app.kubernetes.io/name: shunt-webhook}
  ports:
  - {name: https, port: 443, targetPort: 8443}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shunt-operator
  namespace: shunt-system
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: shunt-operator}
  template:
    metadata:
      labels: {app.kubernetes.io/name: shunt-operator}
    spec:
      serviceAccountName: shunt-operator
      terminationGracePeriodSeconds: 1
      containers:
      - name: operator
        image: kubesim/echo:1.0
        env:
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: PORT, value: "8443"}
        ports:
        - {name: https, containerPort: 8443}
        readinessProbe:
          tcpSocket: {port: https}
          periodSeconds: 1
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata:
  name: v1.api.shunt.dev
spec:
  group: api.shunt.dev
  version: v1
  groupPriorityMinimum: 1000
  versionPriority: 15
  service: {name: shunt-api, namespace: shunt-system, port: 443}
  insecureSkipTLSVerify: true
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: shunt-webhook
webhooks:
- name: inject.shunt.dev
  admissionReviewVersions: ["v1"]
  sideEffects: None
  failurePolicy: Ignore
  reinvocationPolicy: IfNeeded
  namespaceSelector:
    matchLabels: {shunt.dev/injection: enabled}
  clientConfig:
    service: {name: shunt-webhook, namespace: shunt-system, path: /mutate, port: 443}
  rules:
  - {operations: ["CREATE"], apiGroups: [""], apiVersions: ["v1"], resources: ["pods"]}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: shunt-operator
  namespace: shunt-system
spec:
  minAvailable: 1
  selector:
    matchLabels: {app.kubernetes.io/name: shunt-operator}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: shunt-operator
  namespace: shunt-system
spec:
  podSelector:
    matchLabels: {app.kubernetes.io/name: shunt-operator}
  policyTypes: ["Ingress"]
  ingress:
  - ports:
    - {port: 8443, protocol: TCP}
    - {port: 15443, protocol: TCP}
"#;

const OBJECTS: [&str; 13] = [
    "namespace/shunt-system",
    "customresourcedefinition.apiextensions.k8s.io/shuntpolicies.policy.shunt.dev",
    "serviceaccount/shunt-operator",
    "clusterrole.rbac.authorization.k8s.io/shunt-operator",
    "clusterrolebinding.rbac.authorization.k8s.io/shunt-operator",
    "rolebinding.rbac.authorization.k8s.io/shunt-operator-auth-reader",
    "service/shunt-api",
    "service/shunt-webhook",
    "deployment.apps/shunt-operator",
    "apiservice.apiregistration.k8s.io/v1.api.shunt.dev",
    "mutatingwebhookconfiguration.admissionregistration.k8s.io/shunt-webhook",
    "poddisruptionbudget.policy/shunt-operator",
    "networkpolicy.networking.k8s.io/shunt-operator",
];

/// Asserts that kubectl reported every object with `verb`, except `others` (object, verb).
fn expect_all(output: &str, verb: &str, others: &[(&str, &str)]) {
    let lines: Vec<&str> = output.lines().collect();
    let wanted: Vec<String> = OBJECTS
        .iter()
        .map(|o| {
            let verb = others.iter().find(|(other, _)| other == o).map_or(verb, |(_, v)| v);
            format!("{o} {verb}")
        })
        .collect();
    assert_eq!(lines, wanted, "{output}");
}

const PDB: &str = "poddisruptionbudget.policy/shunt-operator";
const NETPOL: &str = "networkpolicy.networking.k8s.io/shunt-operator";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_an_install_manifest() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let scratch = Scratch::new();
    let kubectl = Kubectl::new(&cluster, &scratch, "kubesim-admin", &["system:masters"]);
    let file = scratch.write("install.yaml", MANIFEST);

    expect_all(&kubectl.ok(&["apply", "-f", &file]).await, "created", &[]);
    let version = [
        "get",
        "pdb",
        "shunt-operator",
        "-n",
        "shunt-system",
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ];
    let before = kubectl.ok(&version).await;
    // As against kube-apiserver, kubectl always sends the PDB's `selector` (its patch
    // strategy is `replace`, so the computed patch is never empty) and says "configured";
    // the patch changes nothing.
    let again = kubectl.ok(&["apply", "-f", &file]).await;
    expect_all(&again, "unchanged", &[(PDB, "configured")]);
    assert_eq!(
        kubectl.ok(&version).await,
        before,
        "a no-op patch keeps the resourceVersion"
    );

    // The PDB and the NetworkPolicy are stored objects (kubesim does not enforce them).
    let pdb = kubectl
        .ok(&[
            "get",
            "pdb",
            "shunt-operator",
            "-n",
            "shunt-system",
            "-o",
            "jsonpath={.spec.minAvailable}",
        ])
        .await;
    assert_eq!(pdb, "1");
    let ports = kubectl
        .ok(&[
            "get",
            "networkpolicy",
            "shunt-operator",
            "-n",
            "shunt-system",
            "-o",
            "jsonpath={.spec.ingress[0].ports[*].port}",
        ])
        .await;
    assert_eq!(ports, "8443 15443");
    let listed = kubectl
        .ok(&["get", "pdb,netpol", "-n", "shunt-system", "-o", "name"])
        .await;
    assert_eq!(listed.lines().collect::<Vec<_>>(), [PDB, NETPOL]);

    // Edits are three-way merged: minAvailable becomes maxUnavailable (the removed field
    // is deleted because the last-applied configuration had it), one port goes.
    let edited = MANIFEST
        .replace("  minAvailable: 1\n", "  maxUnavailable: 1\n")
        .replace("    - {port: 15443, protocol: TCP}\n", "");
    let edited_file = scratch.write("edited.yaml", &edited);
    let out = kubectl.ok(&["apply", "-f", &edited_file]).await;
    expect_all(&out, "unchanged", &[(PDB, "configured"), (NETPOL, "configured")]);
    let pdb = kubectl
        .ok(&[
            "get",
            "pdb",
            "shunt-operator",
            "-n",
            "shunt-system",
            "-o",
            "jsonpath={.spec.minAvailable}/{.spec.maxUnavailable}",
        ])
        .await;
    assert_eq!(pdb, "/1");
    let ports = kubectl
        .ok(&[
            "get",
            "netpol",
            "shunt-operator",
            "-n",
            "shunt-system",
            "-o",
            "jsonpath={.spec.ingress[0].ports[*].port}",
        ])
        .await;
    assert_eq!(ports, "8443");

    // The Deployment's pod runs as its ServiceAccount and becomes ready.
    eventually("the operator Deployment to be available", || async {
        let run = kubectl
            .run(&[
                "get",
                "deployment",
                "shunt-operator",
                "-n",
                "shunt-system",
                "-o",
                "jsonpath={.status.availableReplicas}",
            ])
            .await;
        (run.ok && run.stdout == "1").then_some(())
    })
    .await;
    let sa = kubectl
        .ok(&[
            "get",
            "pods",
            "-n",
            "shunt-system",
            "-l",
            "app.kubernetes.io/name=shunt-operator",
            "-o",
            "jsonpath={.items[0].spec.serviceAccountName}",
        ])
        .await;
    assert_eq!(sa, "shunt-operator");

    // kubesim removes a namespace's contents with it at once (kube-apiserver lets them
    // linger while the namespace terminates), hence --ignore-not-found.
    kubectl
        .ok(&["delete", "-f", &edited_file, "--wait=false", "--ignore-not-found"])
        .await;
    let left = kubectl
        .run(&["get", "mutatingwebhookconfiguration", "shunt-webhook", "-o", "name"])
        .await;
    assert!(!left.ok && left.stderr.contains("NotFound"), "{}", left.stderr);
    cluster.shutdown().await;
}
