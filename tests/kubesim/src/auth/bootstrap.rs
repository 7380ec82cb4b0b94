//! The ClusterRoles and ClusterRoleBindings every cluster starts with, as kube-apiserver's
//! RBAC bootstrap policy creates them (same names, rules trimmed to what kubesim serves):
//! `cluster-admin` for `system:masters`, discovery and public info for everyone, the
//! self-reviews for authenticated users, `system:auth-delegator` for servers that
//! delegate authentication, and plain (not aggregated) `admin`, `edit` and `view`; plus
//! the Role `kube-system/extension-apiserver-authentication-reader` that aggregated API
//! servers bind to read the front-proxy CA.

use serde_json::{json, Value};

use crate::api::{Api, User};
use crate::status::ApiError;

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn paths(urls: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": urls, "verbs": verbs})
}

/// The namespaced workload resources `view` reads and `edit` writes (secrets: edit only).
fn workload_rules(verbs: &[&str], secrets: bool) -> Vec<Value> {
    let mut core = vec![
        "configmaps",
        "endpoints",
        "events",
        "pods",
        "pods/log",
        "pods/status",
        "serviceaccounts",
        "services",
        "services/status",
    ];
    if secrets {
        core.push("secrets");
    }
    vec![
        rule(&[""], &core, verbs),
        rule(
            &["apps"],
            &[
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
            verbs,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], verbs),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            verbs,
        ),
        rule(&["networking.k8s.io"], &["networkpolicies"], verbs),
        rule(&["coordination.k8s.io"], &["leases"], verbs),
    ]
}

/// The default ClusterRoles (name, rules).
pub fn cluster_roles() -> Vec<(&'static str, Vec<Value>)> {
    let all_verbs = [READ, WRITE].concat();
    let mut edit = workload_rules(&all_verbs, true);
    edit.push(rule(&[""], &["serviceaccounts/token"], &["create"]));
    let mut admin = edit.clone();
    admin.push(rule(
        &["rbac.authorization.k8s.io"],
        &["roles", "rolebindings"],
        &all_verbs,
    ));
    admin.push(rule(
        &["authorization.k8s.io"],
        &["localsubjectaccessreviews"],
        &["create"],
    ));
    vec![
        (
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), paths(&["*"], &["*"])],
        ),
        (
            "system:discovery",
            vec![paths(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        (
            "system:public-info-viewer",
            vec![paths(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        (
            "system:basic-user",
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(&["authentication.k8s.io"], &["selfsubjectreviews"], &["create"]),
            ],
        ),
        (
            "system:auth-delegator",
            vec![
                rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
                rule(&["authorization.k8s.io"], &["subjectaccessreviews"], &["create"]),
            ],
        ),
        ("admin", admin),
        ("edit", edit),
        ("view", workload_rules(READ, false)),
    ]
}

/// The default ClusterRoleBindings (name = role, groups bound).
pub fn cluster_role_bindings() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("cluster-admin", vec!["system:masters"]),
        ("system:discovery", vec!["system:authenticated"]),
        (
            "system:public-info-viewer",
            vec!["system:authenticated", "system:unauthenticated"],
        ),
        ("system:basic-user", vec!["system:authenticated"]),
    ]
}

fn metadata(name: &str) -> Value {
    json!({
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    })
}

/// Creates the default roles and bindings (called once when a cluster starts).
pub async fn create_defaults(api: &Api) -> Result<(), ApiError> {
    let system = User::system("system:apiserver");
    let roles = api.rt("rbac.authorization.k8s.io", "clusterroles")?;
    for (name, rules) in cluster_roles() {
        api.create(&system, &roles, "", json!({"metadata": metadata(name), "rules": rules}))
            .await?;
    }
    let bindings = api.rt("rbac.authorization.k8s.io", "clusterrolebindings")?;
    for (name, groups) in cluster_role_bindings() {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}))
            .collect();
        let binding = json!({
            "metadata": metadata(name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": subjects,
        });
        api.create(&system, &bindings, "", binding).await?;
    }
    // The Role that lets aggregated API servers read the front-proxy CA (bound by them).
    let roles = api.rt("rbac.authorization.k8s.io", "roles")?;
    let reader = json!({
        "metadata": metadata("extension-apiserver-authentication-reader"),
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["extension-apiserver-authentication"], "verbs": ["get", "list", "watch"]}],
    });
    api.create(&system, &roles, "kube-system", reader).await?;
    Ok(())
}
