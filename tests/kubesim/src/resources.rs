//! The resource types kubesim serves: the built-in ones shunt and kubectl use, plus
//! those of installed CustomResourceDefinitions (added and removed as CRDs come and go).

use std::sync::{Arc, RwLock};

use serde_json::Value;

/// One served resource type (one version of it).
#[derive(Clone, Debug, Default)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Plural resource name, e.g. `pods`.
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Subresources (`status`, `log`, `token`, `scale`).
    pub subresources: Vec<String>,
    /// Only `create` is served (reviews).
    pub create_only: bool,
    /// OpenAPI v3 schema of a custom resource, for validation.
    pub schema: Option<Value>,
    /// Printer columns of a custom resource.
    pub printer_columns: Vec<Value>,
    /// Served for a CustomResourceDefinition.
    pub custom: bool,
}

impl ResourceType {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether the type has a `status` subresource (status is written only through it).
    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|s| s == "status")
    }

    /// The verbs listed in discovery.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }
}

fn builtin(
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
    namespaced: bool,
    short: &[&str],
    sub: &[&str],
) -> ResourceType {
    ResourceType {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        subresources: sub.iter().map(|s| s.to_string()).collect(),
        create_only: false,
        schema: None,
        printer_columns: Vec::new(),
        custom: false,
    }
}

fn review(group: &str, kind: &str, plural: &str, namespaced: bool) -> ResourceType {
    ResourceType {
        create_only: true,
        ..builtin(group, "v1", kind, plural, namespaced, &[], &[])
    }
}

/// The built-in types.
pub fn builtins() -> Vec<ResourceType> {
    const NS: bool = true;
    const CLUSTER: bool = false;
    vec![
        builtin("", "v1", "Namespace", "namespaces", CLUSTER, &["ns"], &["status"]),
        builtin("", "v1", "Node", "nodes", CLUSTER, &["no"], &["status"]),
        builtin("", "v1", "Pod", "pods", NS, &["po"], &["status", "log"]),
        builtin("", "v1", "Service", "services", NS, &["svc"], &["status"]),
        builtin("", "v1", "Endpoints", "endpoints", NS, &["ep"], &[]),
        builtin("", "v1", "ConfigMap", "configmaps", NS, &["cm"], &[]),
        builtin("", "v1", "Secret", "secrets", NS, &[], &[]),
        builtin("", "v1", "ServiceAccount", "serviceaccounts", NS, &["sa"], &["token"]),
        builtin("", "v1", "Event", "events", NS, &["ev"], &[]),
        builtin(
            "apps",
            "v1",
            "Deployment",
            "deployments",
            NS,
            &["deploy"],
            &["status", "scale"],
        ),
        builtin(
            "apps",
            "v1",
            "ReplicaSet",
            "replicasets",
            NS,
            &["rs"],
            &["status", "scale"],
        ),
        builtin(
            "apps",
            "v1",
            "StatefulSet",
            "statefulsets",
            NS,
            &["sts"],
            &["status", "scale"],
        ),
        builtin("apps", "v1", "DaemonSet", "daemonsets", NS, &["ds"], &["status"]),
        builtin(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice",
            "endpointslices",
            NS,
            &[],
            &[],
        ),
        builtin("events.k8s.io", "v1", "Event", "events", NS, &["ev"], &[]),
        builtin("coordination.k8s.io", "v1", "Lease", "leases", NS, &[], &[]),
        builtin(
            "policy",
            "v1",
            "PodDisruptionBudget",
            "poddisruptionbudgets",
            NS,
            &["pdb"],
            &["status"],
        ),
        builtin(
            "networking.k8s.io",
            "v1",
            "NetworkPolicy",
            "networkpolicies",
            NS,
            &["netpol"],
            &[],
        ),
        builtin("rbac.authorization.k8s.io", "v1", "Role", "roles", NS, &[], &[]),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "RoleBinding",
            "rolebindings",
            NS,
            &[],
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRole",
            "clusterroles",
            CLUSTER,
            &[],
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            CLUSTER,
            &[],
            &[],
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "MutatingWebhookConfiguration",
            "mutatingwebhookconfigurations",
            CLUSTER,
            &[],
            &[],
        ),
        builtin(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
            "validatingwebhookconfigurations",
            CLUSTER,
            &[],
            &[],
        ),
        builtin(
            "apiextensions.k8s.io",
            "v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            CLUSTER,
            &["crd", "crds"],
            &["status"],
        ),
        builtin(
            "apiregistration.k8s.io",
            "v1",
            "APIService",
            "apiservices",
            CLUSTER,
            &[],
            &["status"],
        ),
        review("authentication.k8s.io", "TokenReview", "tokenreviews", false),
        review(
            "authentication.k8s.io",
            "SelfSubjectReview",
            "selfsubjectreviews",
            false,
        ),
        review(
            "authorization.k8s.io",
            "SubjectAccessReview",
            "subjectaccessreviews",
            false,
        ),
        review(
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            false,
        ),
        review(
            "authorization.k8s.io",
            "LocalSubjectAccessReview",
            "localsubjectaccessreviews",
            true,
        ),
        review(
            "authorization.k8s.io",
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            false,
        ),
    ]
}

/// The served types, built-in and custom.
#[derive(Debug)]
pub struct Registry {
    types: RwLock<Vec<Arc<ResourceType>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            types: RwLock::new(builtins().into_iter().map(Arc::new).collect()),
        }
    }
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<ResourceType>>> {
        self.types.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The type served at `group/version/plural`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.read()
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// Any served version of `group`'s `plural` (the store keeps one copy for all versions).
    pub fn any_version(&self, group: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.read()
            .iter()
            .find(|t| t.group == group && t.plural == plural)
            .cloned()
    }

    /// The type of `apiVersion` + `kind` (as found in an object or an ownerReference).
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.read()
            .iter()
            .find(|t| t.group == group && t.version == version && t.kind == kind)
            .cloned()
    }

    /// The types served in `group/version`.
    pub fn group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.read()
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .cloned()
            .collect()
    }

    /// Every served type.
    pub fn all(&self) -> Vec<Arc<ResourceType>> {
        self.read().clone()
    }

    /// Groups with their versions, in the order first served.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.read().iter() {
            match groups.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, versions)) if !versions.contains(&t.version) => versions.push(t.version.clone()),
                Some(_) => {}
                None => groups.push((t.group.clone(), vec![t.version.clone()])),
            }
        }
        groups
    }

    /// Replaces the types of the CRD named `crd_name` (group + plural) with `types`.
    pub fn set_custom(&self, group: &str, plural: &str, types: Vec<ResourceType>) {
        let mut all = self.types.write().unwrap_or_else(|p| p.into_inner());
        all.retain(|t| !(t.group == group && t.plural == plural));
        all.extend(types.into_iter().map(Arc::new));
    }
}

/// The types a CustomResourceDefinition object serves (its served versions).
pub fn from_crd(crd: &Value) -> Option<(String, String, Vec<ResourceType>)> {
    let spec = crd.get("spec")?;
    let group = spec.get("group")?.as_str()?.to_owned();
    let names = spec.get("names")?;
    let plural = names.get("plural")?.as_str()?.to_owned();
    let kind = names.get("kind")?.as_str()?.to_owned();
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map_or_else(|| kind.to_lowercase(), str::to_owned);
    let short_names = strings(names.get("shortNames"));
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let mut types = Vec::new();
    for v in spec.get("versions")?.as_array()? {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let mut subresources = Vec::new();
        if let Some(sub) = v.get("subresources") {
            if sub.get("status").is_some() {
                subresources.push("status".to_owned());
            }
            if sub.get("scale").is_some() {
                subresources.push("scale".to_owned());
            }
        }
        types.push(ResourceType {
            group: group.clone(),
            version: v.get("name")?.as_str()?.to_owned(),
            kind: kind.clone(),
            plural: plural.clone(),
            singular: singular.clone(),
            namespaced,
            short_names: short_names.clone(),
            subresources,
            create_only: false,
            schema: v.pointer("/schema/openAPIV3Schema").cloned(),
            printer_columns: v
                .get("additionalPrinterColumns")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            custom: true,
        });
    }
    Some((group, plural, types))
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}
