//! In-cluster credentials, part one: the pod half of kube-apiserver's `ServiceAccount`
//! admission plugin. On pod creation (before the mutating webhooks, as in
//! kube-apiserver's plugin order) a pod whose service account token is automounted gets
//! the `kube-api-access-<random>` projected volume — a bound token for the API server's
//! audience, the cluster CA from the `kube-root-ca.crt` ConfigMap (which kubesim does not
//! store in every namespace; the kubelet projects the cluster CA for it when it is
//! missing), the namespace from the downward API — mounted read-only at [`TOKEN_MOUNT_PATH`] in every container and init
//! container that does not mount something there already.
//!
//! Automounting follows `spec.automountServiceAccountToken` of the pod, else that of its
//! ServiceAccount, else true. Deviation: kube-apiserver refuses a pod whose
//! ServiceAccount does not exist; kubesim admits it and the kubelet keeps it in
//! `ContainerCreating` (saying which ServiceAccount is missing) until it exists, so the
//! order of documents in an applied manifest does not matter.
//!
//! Part two, how a host process finds these files without a mount namespace, is
//! [`crate::kubelet::api_access`].

use serde_json::{json, Value};

use crate::api::Api;

/// Where in-cluster clients read `token`, `ca.crt` and `namespace`.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The volume's name prefix (kube-apiserver appends 5 random characters).
pub const VOLUME_PREFIX: &str = "kube-api-access-";

/// The token's lifetime as kube-apiserver requests it (one hour and seven seconds).
pub const TOKEN_EXPIRATION_SECONDS: u64 = 3607;

/// Whether `pod` (in `ns`) gets its service account token mounted.
pub fn automount(api: &Api, ns: &str, pod: &Value) -> bool {
    if let Some(set) = pod["spec"]["automountServiceAccountToken"].as_bool() {
        return set;
    }
    let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
    api.store
        .get(&(String::new(), "serviceaccounts".into()), ns, sa)
        .and_then(|sa| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true)
}

/// The projected volume kube-apiserver adds.
pub fn volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Adds the volume and the mounts to a pod being created in `ns`.
pub fn admit_pod(api: &Api, ns: &str, pod: &mut Value) {
    if !automount(api, ns, pod) {
        return;
    }
    let spec = &mut pod["spec"];
    let existing = spec["volumes"].as_array().and_then(|volumes| {
        volumes
            .iter()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with(VOLUME_PREFIX))
            .map(str::to_owned)
    });
    let name = existing
        .clone()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{}", crate::util::suffix(5)));
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array_mut().into_iter().flatten() {
            let mounted = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(TOKEN_MOUNT_PATH));
            if mounted {
                continue;
            }
            let mount = json!({"name": name, "readOnly": true, "mountPath": TOKEN_MOUNT_PATH});
            match container["volumeMounts"].as_array_mut() {
                Some(mounts) => mounts.push(mount),
                None => container["volumeMounts"] = json!([mount]),
            }
            needed = true;
        }
    }
    if needed && existing.is_none() {
        match spec["volumes"].as_array_mut() {
            Some(volumes) => volumes.push(volume(&name)),
            None => spec["volumes"] = json!([volume(&name)]),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn api() -> std::sync::Arc<Api> {
        let pki = crate::pki::Pki::new(&[std::net::IpAddr::from([127, 0, 0, 1])]).unwrap();
        Api::new(pki, crate::network::ServiceIps::new(10, 96))
    }

    #[test]
    fn every_container_without_its_own_mount_gets_the_volume() {
        let api = api();
        let mut pod = json!({"spec": {
            "initContainers": [{"name": "i"}],
            "containers": [
                {"name": "a", "volumeMounts": [{"name": "x", "mountPath": "/x"}]},
                {"name": "b", "volumeMounts": [{"name": "own", "mountPath": TOKEN_MOUNT_PATH}]},
            ],
        }});
        admit_pod(&api, "default", &mut pod);
        let volumes = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes.len(), 1);
        let name = volumes[0]["name"].as_str().unwrap();
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5);
        assert_eq!(pod["spec"]["initContainers"][0]["volumeMounts"][0]["name"], name);
        assert_eq!(
            pod["spec"]["containers"][0]["volumeMounts"][1]["mountPath"],
            TOKEN_MOUNT_PATH
        );
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"][1]["readOnly"], true);
        assert_eq!(
            pod["spec"]["containers"][1]["volumeMounts"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn the_pod_decides_before_its_service_account() {
        let api = api();
        let mut off = json!({"spec": {"automountServiceAccountToken": false, "containers": [{"name": "a"}]}});
        admit_pod(&api, "default", &mut off);
        assert!(off["spec"]["volumes"].is_null());
        assert!(off["spec"]["containers"][0]["volumeMounts"].is_null());
        // No ServiceAccount stored here: the default is to mount.
        assert!(automount(&api, "default", &json!({"spec": {}})));
    }
}
