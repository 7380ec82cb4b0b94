//! Per-type behaviour of the API server: name rules, defaulting on create, validation,
//! and what a write or delete sets in motion (CRDs served at once, a namespace's
//! `default` ServiceAccount, a namespace's contents deleted with it). Pods get their
//! `kube-api-access` volume here ([`crate::auth::service_account`]), before the mutating
//! webhooks.

use base64::Engine;
use serde_json::{json, Value};

use crate::api::{key, Api, DeleteOptions, User};
use crate::resources::{self, ResourceType};
use crate::schema;
use crate::status::ApiError;
use crate::store::ns_name;

/// The node every pod is scheduled to.
pub const NODE_NAME: &str = "kubesim-node";

/// Checks `name` like kube-apiserver's name validation (DNS subdomain; RBAC and
/// events are more lenient).
pub fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let lenient = rt.group == "rbac.authorization.k8s.io" || rt.plural == "events";
    let ok_char = |c: char| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || c == '-'
            || c == '.'
            || (lenient && (c == ':' || c.is_ascii_uppercase()))
    };
    if name.is_empty()
        || name.len() > 253
        || !name.chars().all(ok_char)
        || name.starts_with(['-', '.'])
        || name.ends_with(['-', '.'])
    {
        return Err(ApiError::invalid(
            &rt.kind,
            name,
            "metadata.name: Invalid value: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        ));
    }
    Ok(())
}

/// Defaulting on create.
pub fn on_create(api: &Api, rt: &ResourceType, obj: &mut Value, dry_run: bool) -> Result<(), ApiError> {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => {
            let spec = &mut obj["spec"];
            if spec["nodeName"].as_str().unwrap_or_default().is_empty() {
                spec["nodeName"] = json!(NODE_NAME);
            }
            for (field, default) in [
                ("restartPolicy", json!("Always")),
                ("serviceAccountName", json!("default")),
                ("dnsPolicy", json!("ClusterFirst")),
            ] {
                if spec[field].is_null() {
                    spec[field] = default;
                }
            }
            if spec["terminationGracePeriodSeconds"].is_null() {
                spec["terminationGracePeriodSeconds"] = json!(30);
            }
            obj["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]});
            let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
            crate::auth::service_account::admit_pod(api, &ns, obj);
        }
        ("", "services") => {
            let spec = &mut obj["spec"];
            if spec["type"].is_null() {
                spec["type"] = json!("ClusterIP");
            }
            if spec["clusterIP"].is_null() || spec["clusterIP"] == "" {
                // A dry run shows the address a create would get without taking it.
                let ip = if dry_run {
                    api.service_ips.peek()
                } else {
                    api.service_ips.allocate()
                };
                let ip = ip.ok_or_else(|| ApiError::internal("no free service IP"))?;
                spec["clusterIP"] = json!(ip.to_string());
                spec["clusterIPs"] = json!([ip.to_string()]);
            }
            for port in spec["ports"].as_array_mut().into_iter().flatten() {
                if port["protocol"].is_null() {
                    port["protocol"] = json!("TCP");
                }
                if port["targetPort"].is_null() {
                    port["targetPort"] = port["port"].clone();
                }
            }
        }
        ("", "namespaces") => obj["status"] = json!({"phase": "Active"}),
        ("", "secrets") => {
            if let Some(string_data) = obj.get("stringData").and_then(Value::as_object).cloned() {
                for (k, v) in string_data {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap_or_default());
                    obj["data"][k] = json!(encoded);
                }
                if let Some(map) = obj.as_object_mut() {
                    map.remove("stringData");
                }
            }
            if obj["type"].is_null() {
                obj["type"] = json!("Opaque");
            }
        }
        ("apps", "deployments" | "replicasets" | "statefulsets") => {
            if obj["spec"]["replicas"].is_null() {
                obj["spec"]["replicas"] = json!(1);
            }
            if rt.plural == "deployments" && obj["spec"]["strategy"].is_null() {
                obj["spec"]["strategy"] =
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}});
            }
            obj["status"] = json!({});
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            obj["status"] = json!({
                "acceptedNames": obj["spec"]["names"].clone(),
                "storedVersions": obj["spec"]["versions"].as_array().into_iter().flatten()
                    .filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted"},
                ],
            });
        }
        _ if rt.has_status() && rt.group != "apiregistration.k8s.io" => {
            // Status of new objects comes from controllers, not from the creator.
            if let Some(map) = obj.as_object_mut() {
                map.remove("status");
            }
        }
        _ => {}
    }
    Ok(())
}

/// Validation after admission.
pub fn validate(api: &Api, rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let (_, name) = ns_name(obj);
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "pods") => {
            let containers = obj["spec"]["containers"].as_array().filter(|c| !c.is_empty());
            let Some(containers) = containers else {
                return Err(ApiError::invalid("Pod", &name, "spec.containers: Required value"));
            };
            for (i, c) in containers.iter().enumerate() {
                if c["name"].as_str().unwrap_or_default().is_empty()
                    || c["image"].as_str().unwrap_or_default().is_empty()
                {
                    return Err(ApiError::invalid(
                        "Pod",
                        &name,
                        format!("spec.containers[{i}]: name and image are required"),
                    ));
                }
            }
        }
        ("apps", "deployments" | "replicasets" | "statefulsets" | "daemonsets") => {
            let selector = crate::selectors::LabelSelector::from_object(&obj["spec"]["selector"]);
            if selector.is_empty() || !selector.matches(&obj["spec"]["template"]["metadata"]["labels"]) {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &name,
                    "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`",
                ));
            }
        }
        _ => {}
    }
    if let Some(schema_doc) = api
        .registry
        .lookup(&rt.group, &rt.version, &rt.plural)
        .and_then(|t| t.schema.clone())
    {
        let mut errors = Vec::new();
        let mut body = obj.clone();
        if let Some(map) = body.as_object_mut() {
            map.remove("metadata");
            map.remove("apiVersion");
            map.remove("kind");
        }
        schema::validate(&body, &schema_doc, "", &mut errors);
        if !errors.is_empty() {
            return Err(ApiError::invalid(&rt.kind, &name, format!("[{}]", errors.join(", "))));
        }
    }
    Ok(())
}

/// Prunes a custom resource to its schema (called before storing).
pub fn prune_custom(api: &Api, rt: &ResourceType, obj: &mut Value) {
    if let Some(schema_doc) = api
        .registry
        .lookup(&rt.group, &rt.version, &rt.plural)
        .and_then(|t| t.schema.clone())
    {
        let metadata = obj["metadata"].take();
        schema::prune(obj, &schema_doc);
        obj["metadata"] = metadata;
        obj["apiVersion"] = json!(rt.api_version());
        obj["kind"] = json!(rt.kind);
    }
}

/// What a successful create or update sets in motion.
pub async fn after_write(api: &Api, rt: &ResourceType, obj: &Value) {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            if let Some((group, plural, types)) = resources::from_crd(obj) {
                api.registry.set_custom(&group, &plural, types);
            }
        }
        ("", "namespaces") => {
            let (_, ns) = ns_name(obj);
            let sa = (String::new(), "serviceaccounts".to_owned());
            if api.store.get(&sa, &ns, "default").is_none() && obj["metadata"]["deletionTimestamp"].is_null() {
                let system = User::system("system:kube-controller-manager");
                if let Ok(rt) = api.rt("", "serviceaccounts") {
                    let _ = Box::pin(api.create(&system, &rt, &ns, json!({"metadata": {"name": "default"}}))).await;
                }
            }
        }
        _ => {}
    }
}

/// What a delete sets in motion.
pub async fn after_delete(api: &Api, rt: &ResourceType, obj: &Value) {
    let system = User::system("system:kube-controller-manager");
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            if let Some((group, plural, _)) = resources::from_crd(obj) {
                if let Some(cr) = api.registry.any_version(&group, &plural) {
                    for item in api.store.list(&key(&cr), None).0 {
                        let (ns, name) = ns_name(&item);
                        let _ = api.store.delete(&key(&cr), &ns, &name);
                    }
                }
                api.registry.set_custom(&group, &plural, Vec::new());
            }
        }
        // Tokens bound to a pod die with it.
        ("", "pods") => api
            .tokens
            .revoke_pod(obj["metadata"]["uid"].as_str().unwrap_or_default()),
        ("", "namespaces") => {
            let (_, ns) = ns_name(obj);
            for t in api
                .registry
                .all()
                .into_iter()
                .filter(|t| t.namespaced && !t.create_only)
            {
                for item in api.store.list(&key(&t), Some(&ns)).0 {
                    let (_, name) = ns_name(&item);
                    let opts = DeleteOptions {
                        grace_seconds: Some(0),
                        ..DeleteOptions::default()
                    };
                    let _ = Box::pin(api.delete(&system, &t, &ns, &name, &opts)).await;
                }
            }
        }
        _ => {}
    }
}
