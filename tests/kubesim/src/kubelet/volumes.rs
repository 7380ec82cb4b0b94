//! Pod volumes as host directories under the pod's directory: `emptyDir`, `configMap`,
//! `secret`, `downwardAPI`, `projected` (ServiceAccount tokens bound to the pod, with
//! audience and expiry, refreshed at 80 % of their lifetime like the kubelet does;
//! ConfigMaps; Secrets; downward API), `hostPath` (the host path itself). Anything
//! else is an empty directory. Containers see them through rewritten paths (see
//! [`super::env`]): there is no mount namespace.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::env::{data_of, field_ref};
use crate::api::Api;
use crate::auth::tokens::TokenInfo;

struct TokenFile {
    path: PathBuf,
    audience: Option<String>,
    lifetime: Duration,
    refresh_at: Instant,
}

/// The volumes of one pod.
#[derive(Default)]
pub struct Volumes {
    /// Volume name → host directory (or file, for a `hostPath` file).
    pub paths: HashMap<String, PathBuf>,
    tokens: Vec<TokenFile>,
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Keys of a ConfigMap/Secret as files (`items` selects and renames).
fn project_data(api: &Api, ns: &str, source: &Value, secret: bool, dir: &Path) -> Result<(), String> {
    let (plural, name) = if secret {
        ("secrets", source["secretName"].as_str().or(source["name"].as_str()))
    } else {
        ("configmaps", source["name"].as_str())
    };
    let name = name.unwrap_or_default();
    let obj = api.store.get(&(String::new(), plural.to_owned()), ns, name);
    let data = match obj {
        Some(obj) => data_of(&obj, secret),
        // The cluster CA every namespace has in a real cluster.
        None if name == "kube-root-ca.crt" => vec![("ca.crt".to_owned(), api.pki.ca.cert_pem.as_bytes().to_vec())],
        None if source["optional"] == true => Vec::new(),
        None => return Err(format!("{plural} {name:?} not found")),
    };
    match source["items"].as_array() {
        Some(items) => {
            for item in items {
                let key = item["key"].as_str().unwrap_or_default();
                let Some((_, bytes)) = data.iter().find(|(k, _)| k == key) else {
                    if source["optional"] == true {
                        continue;
                    }
                    return Err(format!("key {key:?} not found in {plural} {name:?}"));
                };
                write(&dir.join(item["path"].as_str().unwrap_or(key)), bytes)?;
            }
        }
        None => {
            for (k, bytes) in &data {
                write(&dir.join(k), bytes)?;
            }
        }
    }
    Ok(())
}

fn downward(pod: &Value, items: &Value, dir: &Path) -> Result<(), String> {
    for item in items.as_array().into_iter().flatten() {
        let path = item["path"].as_str().unwrap_or_default();
        let value = item["fieldRef"]["fieldPath"]
            .as_str()
            .and_then(|f| field_ref(pod, f))
            .unwrap_or_default();
        write(&dir.join(path), value.as_bytes())?;
    }
    Ok(())
}

impl Volumes {
    /// Materializes every volume of `pod` under `dir`. `Err` says what is missing.
    pub fn prepare(api: &Api, pod: &Value, dir: &Path) -> Result<Volumes, String> {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let mut volumes = Volumes::default();
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or_default();
            if let Some(host) = volume["hostPath"]["path"].as_str() {
                volumes.paths.insert(name.to_owned(), PathBuf::from(host));
                continue;
            }
            let vdir = dir.join("volumes").join(name);
            std::fs::create_dir_all(&vdir).map_err(|e| format!("cannot create {}: {e}", vdir.display()))?;
            if volume["configMap"].is_object() {
                project_data(api, ns, &volume["configMap"], false, &vdir)?;
            } else if volume["secret"].is_object() {
                project_data(api, ns, &volume["secret"], true, &vdir)?;
            } else if volume["downwardAPI"].is_object() {
                downward(pod, &volume["downwardAPI"]["items"], &vdir)?;
            }
            for source in volume["projected"]["sources"].as_array().into_iter().flatten() {
                if let Some(token) = source.get("serviceAccountToken") {
                    let lifetime = Duration::from_secs(token["expirationSeconds"].as_u64().unwrap_or(3600).max(600));
                    let path = vdir.join(token["path"].as_str().unwrap_or("token"));
                    let audience = token["audience"].as_str().filter(|a| !a.is_empty()).map(str::to_owned);
                    let mut file = TokenFile {
                        path,
                        audience,
                        lifetime,
                        refresh_at: Instant::now(),
                    };
                    issue(api, pod, &mut file)?;
                    volumes.tokens.push(file);
                } else if source["configMap"].is_object() {
                    project_data(api, ns, &source["configMap"], false, &vdir)?;
                } else if source["secret"].is_object() {
                    project_data(api, ns, &source["secret"], true, &vdir)?;
                } else if source["downwardAPI"].is_object() {
                    downward(pod, &source["downwardAPI"]["items"], &vdir)?;
                }
            }
            volumes.paths.insert(name.to_owned(), vdir);
        }
        Ok(volumes)
    }

    /// Rewrites tokens that reached 80 % of their lifetime.
    pub fn refresh(&mut self, api: &Api, pod: &Value) {
        let now = Instant::now();
        for file in self.tokens.iter_mut().filter(|t| t.refresh_at <= now) {
            if let Err(error) = issue(api, pod, file) {
                tracing::warn!(%error, "cannot refresh a projected ServiceAccount token");
            }
        }
    }
}

fn issue(api: &Api, pod: &Value, file: &mut TokenFile) -> Result<(), String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let sa = pod["spec"]["serviceAccountName"].as_str().unwrap_or("default");
    let sa_obj = api
        .store
        .get(&(String::new(), "serviceaccounts".into()), ns, sa)
        .ok_or_else(|| format!("serviceaccounts {sa:?} not found in namespace {ns:?}"))?;
    let info = TokenInfo {
        namespace: ns.to_owned(),
        service_account: sa.to_owned(),
        sa_uid: sa_obj["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
        audiences: file.audience.iter().cloned().collect(),
        expires: SystemTime::now(),
        pod: Some((
            pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
        )),
    };
    let (token, _) = api.tokens.issue(info, file.lifetime);
    write(&file.path, token.as_bytes())?;
    file.refresh_at = Instant::now() + file.lifetime.mul_f64(0.8);
    Ok(())
}
