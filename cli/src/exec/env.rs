//! The target container's environment as the kubelet would build it from the pod
//! spec, read with the developer's own credentials: `value` (with `$(VAR)` references
//! expanded), `fieldRef`, `configMapKeyRef`, `secretKeyRef` and `envFrom`. What the
//! developer may not read is left out and named. Then `--env-include`/`--env-exclude`
//! and the policies' `env.exclude` (from the session status) filter it; a policy that
//! blocks `env` leaves nothing.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;
use shunt_proto::policy::glob::Glob;

use crate::cluster::Cluster;

/// A ConfigMap's or Secret's data, or why it could not be read.
pub type Fetched = Result<BTreeMap<String, String>, String>;

/// The objects the container's env refers to: `("configmap"|"secret", name)`.
#[derive(Default)]
pub struct Objects(pub HashMap<(&'static str, String), Fetched>);

/// The environment and what was left out (with why).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodEnv {
    /// Name, value, in the pod's order (later wins, as in the kubelet).
    pub vars: Vec<(String, String)>,
    /// `NAME: why`, for variables that could not be read.
    pub skipped: Vec<String>,
}

/// Reads every ConfigMap and Secret the container's env refers to.
pub async fn fetch(cluster: &Cluster, container: &Container) -> Objects {
    let mut wanted: Vec<(&'static str, String)> = Vec::new();
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else { continue };
        if let Some(r) = &from.config_map_key_ref {
            wanted.push(("configmap", r.name.clone()));
        }
        if let Some(r) = &from.secret_key_ref {
            wanted.push(("secret", r.name.clone()));
        }
    }
    for source in container.env_from.iter().flatten() {
        if let Some(r) = &source.config_map_ref {
            wanted.push(("configmap", r.name.clone()));
        }
        if let Some(r) = &source.secret_ref {
            wanted.push(("secret", r.name.clone()));
        }
    }
    let mut objects = Objects::default();
    for key in wanted {
        if objects.0.contains_key(&key) {
            continue;
        }
        let fetched = if key.0 == "configmap" {
            let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
            api.get(&key.1).await.map(|cm| cm.data.unwrap_or_default()).map_err(why)
        } else {
            let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
            api.get(&key.1)
                .await
                .map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect()
                })
                .map_err(why)
        };
        objects.0.insert(key, fetched);
    }
    objects
}

fn why(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => "you may not read it".into(),
        kube::Error::Api(s) if s.code == 404 => "it does not exist".into(),
        other => other.to_string(),
    }
}

/// The environment of `container` (see the module doc). `pod` gives `fieldRef` values.
pub fn compute(container: &Container, pod: Option<&Pod>, namespace: &str, objects: &Objects) -> PodEnv {
    let mut env = PodEnv::default();
    let set = |env: &mut PodEnv, name: String, value: String| {
        env.vars.retain(|(n, _)| *n != name);
        env.vars.push((name, value));
    };
    let lookup = |kind: &'static str, name: &str| objects.0.get(&(kind, name.to_owned()));
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let (kind, name, optional) = match (&source.config_map_ref, &source.secret_ref) {
            (Some(r), _) => ("configmap", r.name.clone(), r.optional == Some(true)),
            (_, Some(r)) => ("secret", r.name.clone(), r.optional == Some(true)),
            _ => continue,
        };
        match lookup(kind, &name) {
            Some(Ok(data)) => {
                for (k, v) in data {
                    set(&mut env, format!("{prefix}{k}"), v.clone());
                }
            }
            Some(Err(e)) if !(optional && e == "it does not exist") => {
                env.skipped.push(format!("envFrom {kind} {name}: {e}"));
            }
            _ => {}
        }
    }
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            let value = expand(var.value.as_deref().unwrap_or_default(), &env.vars);
            set(&mut env, var.name.clone(), value);
            continue;
        };
        let value: Result<Option<String>, String> = if let Some(f) = &from.field_ref {
            field(&f.field_path, pod, namespace).map(Some)
        } else if let Some(r) = &from.config_map_key_ref {
            key_of(lookup("configmap", &r.name), "configmap", &r.name, &r.key, r.optional)
        } else if let Some(r) = &from.secret_key_ref {
            key_of(lookup("secret", &r.name), "secret", &r.name, &r.key, r.optional)
        } else {
            Err("resourceFieldRef is not supported".into())
        };
        match value {
            Ok(Some(v)) => set(&mut env, var.name.clone(), v),
            Ok(None) => {}
            Err(e) => env.skipped.push(format!("{}: {e}", var.name)),
        }
    }
    env
}

fn key_of(
    found: Option<&Fetched>,
    kind: &str,
    name: &str,
    key: &str,
    optional: Option<bool>,
) -> Result<Option<String>, String> {
    match found {
        Some(Ok(data)) => match data.get(key) {
            Some(v) => Ok(Some(v.clone())),
            None if optional == Some(true) => Ok(None),
            None => Err(format!("{kind} {name} has no key {key}")),
        },
        Some(Err(e)) if optional == Some(true) && e == "it does not exist" => Ok(None),
        Some(Err(e)) => Err(format!("{kind} {name}: {e}")),
        None => Err(format!("{kind} {name} was not read")),
    }
}

/// A `fieldRef` the pod (if any) answers.
fn field(path: &str, pod: Option<&Pod>, namespace: &str) -> Result<String, String> {
    if path == "metadata.namespace" {
        return Ok(namespace.to_owned());
    }
    let pod = pod.ok_or_else(|| format!("{path} needs a running pod of the target"))?;
    let meta = &pod.metadata;
    let status = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let label = |map: &Option<BTreeMap<String, String>>, key: &str| map.as_ref().and_then(|m| m.get(key)).cloned();
    let value = match path {
        "metadata.name" => meta.name.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
        p => {
            let key = |prefix: &str| p.strip_prefix(prefix).map(|k| k.trim_end_matches("']").to_owned());
            if let Some(k) = key("metadata.labels['") {
                label(&meta.labels, &k)
            } else if let Some(k) = key("metadata.annotations['") {
                label(&meta.annotations, &k)
            } else {
                return Err(format!("fieldRef {p} is not supported"));
            }
        }
    };
    Ok(value.unwrap_or_default())
}

/// Kubernetes' `$(VAR)` expansion: references to variables defined before are
/// replaced, `$$` is a literal `$`, anything else stays as written.
pub fn expand(value: &str, defined: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        if let Some(after) = tail.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = tail.strip_prefix('(').and_then(|t| t.split_once(')')) {
            match defined.iter().rev().find(|(n, _)| n == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = after;
        } else {
            out.push('$');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Which variables reach the program.
pub struct EnvFilter {
    /// `--env-include`: if any, only matching names.
    pub include: Vec<Glob>,
    /// `--env-exclude` and the policies' `env.exclude`.
    pub exclude: Vec<Glob>,
    /// A policy blocks `env`.
    pub blocked: bool,
}

impl EnvFilter {
    /// The variables of `env` that pass; the names left out.
    pub fn apply(&self, env: Vec<(String, String)>) -> (Vec<(String, String)>, Vec<String>) {
        let (kept, left): (Vec<_>, Vec<_>) = env.into_iter().partition(|(name, _)| self.allows(name));
        (kept, left.into_iter().map(|(name, _)| name).collect())
    }

    fn allows(&self, name: &str) -> bool {
        !self.blocked
            && (self.include.is_empty() || self.include.iter().any(|g| g.matches(name)))
            && !self.exclude.iter().any(|g| g.matches(name))
    }
}

#[cfg(test)]
#[path = "env_tests.rs"]
mod tests;
