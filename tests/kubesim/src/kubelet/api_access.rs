//! In-cluster credentials, part two: how a pod process finds the API server.
//!
//! In Kubernetes an in-cluster client (kube-rs `Config::infer`, client-go
//! `rest.InClusterConfig`, kubectl) reads `token`, `ca.crt` and `namespace` at the fixed
//! path `/var/run/secrets/kubernetes.io/serviceaccount`, which the kubelet mounts from the
//! pod's `kube-api-access` volume ([`crate::auth::service_account`]). kubesim's pods are
//! host processes without a mount namespace, so they cannot see that path. The documented
//! stand-in: for a container that mounts a volume at that path, the kubelet writes a
//! kubeconfig into the pod's directory — server = the API server, certificate-authority =
//! the volume's `ca.crt`, `tokenFile` = the volume's `token` (clients re-read it, so the
//! kubelet's refreshes reach them), namespace = the volume's `namespace` — and sets
//! `KUBECONFIG` to it. Every client that honours `KUBECONFIG` (all of the above) then
//! authenticates as `system:serviceaccount:<ns>:<sa>`, bound to the pod, and RBAC
//! applies as in a cluster. `HOME` is the pod's directory, so the host user's
//! `~/.kube/config` is never read. The container's own `env` may still set `KUBECONFIG`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::env::Mounts;
use crate::auth::service_account::TOKEN_MOUNT_PATH;

/// The kubeconfig that stands for the service account mount of `container`, written
/// under `pod_dir`; `None` if the container mounts nothing at [`TOKEN_MOUNT_PATH`].
/// `Err` says what could not be written.
pub fn prepare(
    pod_dir: &Path,
    container: &Value,
    mounts: &Mounts,
    api: SocketAddr,
    pod_ns: &str,
) -> Result<Option<PathBuf>, String> {
    let Some(mount) = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(TOKEN_MOUNT_PATH))
    else {
        return Ok(None);
    };
    let host = mounts.rewrite(TOKEN_MOUNT_PATH);
    if host == TOKEN_MOUNT_PATH {
        // The mount names a volume the pod does not have; nothing to point at.
        return Ok(None);
    }
    let host = PathBuf::from(host);
    let namespace = std::fs::read_to_string(host.join("namespace"))
        .ok()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| pod_ns.to_owned());
    let mut file_name = mount["name"].as_str().unwrap_or("serviceaccount").to_owned();
    if let Some(sub) = mount["subPath"].as_str().filter(|s| !s.is_empty()) {
        file_name.push('-');
        file_name.push_str(&sub.replace('/', "_"));
    }
    let dir = pod_dir.join("kube-api-access");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(format!("{file_name}.kubeconfig"));
    let text = kubeconfig(api, &host, &namespace).to_string();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot write the in-cluster kubeconfig {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("cannot write the in-cluster kubeconfig {}: {e}", path.display()))?;
    Ok(Some(path))
}

/// The kubeconfig (JSON) that reads the service account files in `dir`.
pub fn kubeconfig(api: SocketAddr, dir: &Path, namespace: &str) -> Value {
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "in-cluster", "cluster": {"server": format!("https://{api}"), "certificate-authority": file("ca.crt")}}],
        "users": [{"name": "service-account", "user": {"tokenFile": file("token")}}],
        "contexts": [{"name": "in-cluster", "context": {"cluster": "in-cluster", "user": "service-account", "namespace": namespace}}],
        "current-context": "in-cluster",
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_container_with_the_mount_gets_a_kubeconfig_for_its_files() {
        let root = std::env::temp_dir().join(format!("kubesim-api-access-{}", crate::util::suffix(8)));
        let volume = root.join("volumes").join("kube-api-access-abcde");
        std::fs::create_dir_all(&volume).unwrap();
        std::fs::write(volume.join("namespace"), "shop").unwrap();
        let mounts = Mounts(vec![(
            TOKEN_MOUNT_PATH.to_owned(),
            volume.to_string_lossy().into_owned(),
        )]);
        let container = json!({"volumeMounts": [{"name": "kube-api-access-abcde", "mountPath": TOKEN_MOUNT_PATH}]});
        let api: SocketAddr = "127.0.0.1:6443".parse().unwrap();
        let path = prepare(&root, &container, &mounts, api, "default").unwrap().unwrap();
        let config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(config["clusters"][0]["cluster"]["server"], "https://127.0.0.1:6443");
        assert_eq!(
            config["users"][0]["user"]["tokenFile"],
            volume.join("token").to_string_lossy().as_ref()
        );
        assert_eq!(config["contexts"][0]["context"]["namespace"], "shop");
        let without = json!({"volumeMounts": [{"name": "x", "mountPath": "/x"}]});
        assert_eq!(prepare(&root, &without, &mounts, api, "default").unwrap(), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
