//! A container's environment, as the kubelet builds it: `KUBERNETES_SERVICE_*`, Service
//! link variables for the Services of the pod's namespace that exist at its start,
//! `envFrom`, then `env` (literal values with `$(VAR)` expansion, `fieldRef`,
//! `configMapKeyRef`, `secretKeyRef`, `resourceFieldRef`).
//!
//! Additions a real kubelet does not make, because a loopback pod has no other way to
//! know its address: `POD_NAME`, `POD_NAMESPACE` and `POD_IP` (the spec's own `env`
//! overrides them), `PATH`/`HOME`/`HOSTNAME`, since processes run on the host (`HOME` is
//! the pod's directory, never the host user's), and `KUBECONFIG` for a container with the
//! service account mount (see [`super::api_access`]).
//!
//! Paths: kubesim has no mount namespaces, so a volume lives in a host directory. Every
//! env value and argv item that names a `volumeMount`'s `mountPath` (or a path under
//! it, also after `--flag=`) is rewritten to the host path ([`Mounts::rewrite`]).

use base64::Engine;
use serde_json::Value;

use crate::api::Api;

/// `(mountPath, host path)` of a container's volume mounts.
#[derive(Clone, Debug, Default)]
pub struct Mounts(pub Vec<(String, String)>);

impl Mounts {
    /// `value` with a leading mountPath replaced by its host path.
    pub fn rewrite(&self, value: &str) -> String {
        if let Some((flag, path)) = value.split_once('=').filter(|(f, _)| f.starts_with('-')) {
            return format!("{flag}={}", self.rewrite(path));
        }
        let best = self
            .0
            .iter()
            .filter(|(mount, _)| {
                value == mount
                    || value
                        .strip_prefix(mount.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|(mount, _)| mount.len());
        match best {
            Some((mount, host)) => format!("{host}{}", &value[mount.len()..]),
            None => value.to_owned(),
        }
    }
}

/// An ordered environment where a later definition replaces an earlier one.
#[derive(Clone, Debug, Default)]
pub struct Env(pub Vec<(String, String)>);

impl Env {
    /// Sets `name` (replacing an earlier value).
    pub fn set(&mut self, name: &str, value: String) {
        match self.0.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_owned(), value)),
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is `$`,
    /// anything else stays as written.
    pub fn expand(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|a| a.split_once(')')) {
                match self.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&format!("$({name})")),
                }
                rest = tail;
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        out
    }
}

fn lookup(api: &Api, plural: &str, ns: &str, name: &str) -> Option<Value> {
    api.store.get(&(String::new(), plural.to_owned()), ns, name)
}

/// `data` of a ConfigMap or (decoded) Secret, as text.
pub fn data_of(obj: &Value, secret: bool) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (k, v) in obj["data"].as_object().into_iter().flatten() {
        let text = v.as_str().unwrap_or_default();
        let bytes = if secret {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap_or_default()
        } else {
            text.as_bytes().to_vec()
        };
        out.push((k.clone(), bytes));
    }
    if !secret {
        for (k, v) in obj["binaryData"].as_object().into_iter().flatten() {
            out.push((
                k.clone(),
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .unwrap_or_default(),
            ));
        }
    }
    out
}

/// The value of a downward-API `fieldPath` of `pod`.
pub fn field_ref(pod: &Value, path: &str) -> Option<String> {
    let meta = &pod["metadata"];
    let quoted = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_owned)
    };
    let value = match path {
        "metadata.name" => meta["name"].as_str(),
        "metadata.namespace" => meta["namespace"].as_str(),
        "metadata.uid" => meta["uid"].as_str(),
        "spec.nodeName" => pod["spec"]["nodeName"].as_str(),
        "spec.serviceAccountName" => pod["spec"]["serviceAccountName"].as_str(),
        "status.podIP" | "status.podIPs" => pod["status"]["podIP"].as_str(),
        "status.hostIP" | "status.hostIPs" => pod["status"]["hostIP"].as_str(),
        _ => {
            if let Some(key) = quoted("metadata.labels") {
                return meta["labels"][key].as_str().map(str::to_owned);
            }
            if let Some(key) = quoted("metadata.annotations") {
                return meta["annotations"][key].as_str().map(str::to_owned);
            }
            return None;
        }
    };
    value.map(str::to_owned)
}

fn service_links(api: &Api, ns: &str, env: &mut Env) {
    for svc in api.store.list(&(String::new(), "services".into()), Some(ns)).0 {
        let Some(ip) = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| *ip != "None" && !ip.is_empty())
        else {
            continue;
        };
        let name = svc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_uppercase()
            .replace('-', "_");
        let ports: Vec<&Value> = svc["spec"]["ports"].as_array().into_iter().flatten().collect();
        let Some(first) = ports.first() else { continue };
        env.set(&format!("{name}_SERVICE_HOST"), ip.to_owned());
        // The port the balancer really listens on (see `balancer::listen_port`).
        let port = |p: &Value| {
            crate::network::balancer::listen_port(p["port"].as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0))
        };
        env.set(&format!("{name}_SERVICE_PORT"), port(first).to_string());
        let proto = |p: &Value| p["protocol"].as_str().unwrap_or("TCP").to_lowercase();
        env.set(
            &format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first), port(first)),
        );
        for p in ports {
            if let Some(port_name) = p["name"].as_str().filter(|n| !n.is_empty()) {
                env.set(
                    &format!("{name}_SERVICE_PORT_{}", port_name.to_uppercase().replace('-', "_")),
                    port(p).to_string(),
                );
            }
            let prefix = format!("{name}_PORT_{}_{}", p["port"], proto(p).to_uppercase());
            env.set(&prefix, format!("{}://{ip}:{}", proto(p), port(p)));
            env.set(&format!("{prefix}_PROTO"), proto(p));
            env.set(&format!("{prefix}_PORT"), port(p).to_string());
            env.set(&format!("{prefix}_ADDR"), ip.to_owned());
        }
    }
}

/// Host paths the kubelet hands a container through its environment.
#[derive(Clone, Copy, Debug)]
pub struct HostFiles<'a> {
    /// `HOME`: the pod's directory.
    pub home: &'a str,
    /// `KUBECONFIG`: the in-cluster kubeconfig, if the service account is mounted.
    pub kubeconfig: Option<&'a str>,
}

/// Builds the environment of `container` in `pod` (which has its `status.podIP`).
/// `Err` is a CreateContainerConfigError message (a missing ConfigMap, Secret or key).
pub fn build(
    api: &Api,
    pod: &Value,
    container: &Value,
    api_addr: std::net::SocketAddr,
    mounts: &Mounts,
    files: HostFiles<'_>,
) -> Result<Env, String> {
    let home = files.home;
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let mut env = Env::default();
    env.set(
        "PATH",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
    );
    env.set("HOME", home.to_owned());
    let hostname = pod["spec"]["hostname"]
        .as_str()
        .or(pod["metadata"]["name"].as_str())
        .unwrap_or_default();
    env.set("HOSTNAME", hostname.to_owned());
    for (k, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_IP", "status.podIP"),
    ] {
        env.set(k, field_ref(pod, path).unwrap_or_default());
    }
    if pod["spec"]["enableServiceLinks"] != false {
        service_links(api, ns, &mut env);
    }
    let (host, port) = (api_addr.ip().to_string(), api_addr.port().to_string());
    env.set("KUBERNETES_SERVICE_HOST", host.clone());
    env.set("KUBERNETES_SERVICE_PORT", port.clone());
    env.set("KUBERNETES_SERVICE_PORT_HTTPS", port.clone());
    env.set("KUBERNETES_PORT", format!("tcp://{host}:{port}"));
    if let Some(kubeconfig) = files.kubeconfig {
        env.set("KUBECONFIG", kubeconfig.to_owned());
    }
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let prefix = source["prefix"].as_str().unwrap_or_default();
        for (field, plural, secret) in [("configMapRef", "configmaps", false), ("secretRef", "secrets", true)] {
            let reference = &source[field];
            let Some(name) = reference["name"].as_str() else {
                continue;
            };
            match lookup(api, plural, ns, name) {
                Some(obj) => {
                    for (k, v) in data_of(&obj, secret) {
                        env.set(&format!("{prefix}{k}"), String::from_utf8_lossy(&v).into_owned());
                    }
                }
                None if reference["optional"] == true => {}
                None => return Err(format!("{plural} {name:?} not found")),
            }
        }
    }
    for var in container["env"].as_array().into_iter().flatten() {
        let Some(name) = var["name"].as_str() else { continue };
        let value = if let Some(v) = var.get("value").and_then(Value::as_str) {
            env.expand(v)
        } else if let Some(from) = var.get("valueFrom") {
            match value_from(api, pod, container, ns, from)? {
                Some(v) => v,
                None => continue,
            }
        } else {
            String::new()
        };
        env.set(name, value);
    }
    for (name, value) in env.0.iter_mut() {
        // Host paths the kubelet set are not container paths (a mount at `/tmp` must not
        // turn the pod's directory into a path inside that volume).
        let own = match name.as_str() {
            "HOME" => Some(home),
            "KUBECONFIG" => files.kubeconfig,
            _ => None,
        };
        if own != Some(value.as_str()) {
            *value = mounts.rewrite(value);
        }
    }
    Ok(env)
}

fn value_from(api: &Api, pod: &Value, container: &Value, ns: &str, from: &Value) -> Result<Option<String>, String> {
    if let Some(path) = from["fieldRef"]["fieldPath"].as_str() {
        return field_ref(pod, path)
            .map(Some)
            .ok_or_else(|| format!("unsupported fieldRef {path:?}"));
    }
    if let Some(resource) = from["resourceFieldRef"]["resource"].as_str() {
        let (kind, what) = resource.split_once('.').unwrap_or(("limits", resource));
        let value = container["resources"][kind][what]
            .as_str()
            .map(str::to_owned)
            .or_else(|| container["resources"][kind][what].as_i64().map(|n| n.to_string()));
        return Ok(Some(value.unwrap_or_else(|| "0".into())));
    }
    for (field, plural, secret) in [
        ("configMapKeyRef", "configmaps", false),
        ("secretKeyRef", "secrets", true),
    ] {
        let reference = &from[field];
        let (Some(name), Some(key)) = (reference["name"].as_str(), reference["key"].as_str()) else {
            continue;
        };
        let optional = reference["optional"] == true;
        let found =
            lookup(api, plural, ns, name).and_then(|obj| data_of(&obj, secret).into_iter().find(|(k, _)| k == key));
        return match found {
            Some((_, v)) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
            None if optional => Ok(None),
            None => Err(format!("couldn't find key {key} in {plural} {ns}/{name}")),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let mut env = Env::default();
        env.set("A", "x".into());
        assert_eq!(env.expand("$(A)-$(B)-$$(A)-$"), "x-$(B)-$(A)-$");
    }

    #[test]
    fn mount_paths_are_rewritten_to_host_paths() {
        let mounts = Mounts(vec![
            ("/var/run/secrets/tokens".into(), "/tmp/k/p/vol/tok".into()),
            ("/var".into(), "/tmp/k/p/vol/var".into()),
        ]);
        assert_eq!(
            mounts.rewrite("/var/run/secrets/tokens/shunt"),
            "/tmp/k/p/vol/tok/shunt"
        );
        assert_eq!(
            mounts.rewrite("--token-file=/var/run/secrets/tokens/t"),
            "--token-file=/tmp/k/p/vol/tok/t"
        );
        assert_eq!(mounts.rewrite("/variable"), "/variable");
        assert_eq!(mounts.rewrite("/var"), "/tmp/k/p/vol/var");
    }

    #[test]
    fn field_refs_read_the_pod() {
        let pod = json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "status": {"podIP": "127.1.2.3"}});
        assert_eq!(field_ref(&pod, "metadata.labels['app']").as_deref(), Some("web"));
        assert_eq!(field_ref(&pod, "status.podIP").as_deref(), Some("127.1.2.3"));
        assert_eq!(field_ref(&pod, "metadata.labels['none']"), None);
    }
}
