//! `shunt doctor`: checks the installation and the namespace, one line per check; a
//! failing check says how to fix it. Checks: the aggregated API's APIService is
//! Available, the webhook's `caBundle` holds a certificate, the namespace is labelled for
//! injection, and, given a target, that it exists, that every pod of it has a sidecar and
//! that every running sidecar is connected to the operator (the operator's `targets`
//! answer, which sees its hub's connections).

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::Api;
use serde_json::Value;
use shunt_proto::names::{INJECTION_ENABLED, LABEL_INJECTION};
use shunt_proto::TargetRef;

use crate::cluster::Cluster;

/// One check's outcome: `Ok(what is fine)` or `Err(what is wrong and how to fix it)`.
type Check = Result<String, String>;

/// Runs every check; fails (exit code 1) if one fails.
pub async fn run(cluster: &Cluster, target: Option<&TargetRef>) -> anyhow::Result<()> {
    let mut checks = vec![
        ("API", api_service(cluster).await),
        ("webhook", webhook(cluster).await),
        ("namespace", namespace(cluster).await),
    ];
    if let Some(target) = target {
        checks.extend(target_checks(cluster, target).await);
    }
    let mut failed = 0;
    for (name, check) in &checks {
        match check {
            Ok(msg) => println!("ok    {name:<10} {msg}"),
            Err(msg) => {
                failed += 1;
                println!("FAIL  {name:<10} {msg}");
            }
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of {} checks failed", checks.len());
    Ok(())
}

async fn api_service(cluster: &Cluster) -> Check {
    let path = "/apis/apiregistration.k8s.io/v1/apiservices/v1.api.shunt.dev";
    let svc = cluster.get_json(path).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => {
            "APIService v1.api.shunt.dev does not exist: install shunt (helm install shunt charts/shunt)".to_owned()
        }
        other => format!("cannot read APIService v1.api.shunt.dev: {other}"),
    })?;
    let available = svc["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Available");
    match available {
        Some(c) if c["status"] == "True" => Ok("APIService v1.api.shunt.dev is Available".into()),
        Some(c) => Err(format!(
            "APIService v1.api.shunt.dev is not Available ({}: {}): check that the shunt-operator pods run and its Service has endpoints",
            c["reason"].as_str().unwrap_or("?"),
            c["message"].as_str().unwrap_or("")
        )),
        None => Err("APIService v1.api.shunt.dev has no Available condition yet: wait a few seconds and retry".into()),
    }
}

async fn webhook(cluster: &Cluster) -> Check {
    let api: Api<MutatingWebhookConfiguration> = Api::all(cluster.client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("cannot list MutatingWebhookConfigurations: {e}"))?;
    let hooks: Vec<_> = list
        .items
        .iter()
        .flat_map(|c| {
            c.webhooks
                .iter()
                .flatten()
                .map(move |w| (c.metadata.name.clone().unwrap_or_default(), w))
        })
        .filter(|(config, w)| config.contains("shunt") || w.name.contains("shunt"))
        .collect();
    if hooks.is_empty() {
        return Err("no shunt MutatingWebhookConfiguration: install shunt (helm install shunt charts/shunt)".into());
    }
    for (config, hook) in &hooks {
        let pem = hook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        // The bundle is PEM; some tools store it base64-encoded once more.
        let text = String::from_utf8(pem.clone()).unwrap_or_default();
        let text = if text.contains("BEGIN CERTIFICATE") {
            text
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(pem.trim_ascii())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .unwrap_or_default()
        };
        if !text.contains("BEGIN CERTIFICATE") {
            return Err(format!(
                "webhook {} of {config} has no caBundle: the shunt-webhook sets it at start; check its logs (kubectl logs deploy/shunt-webhook)",
                hook.name
            ));
        }
    }
    Ok(format!("{} shunt webhook(s) have a caBundle", hooks.len()))
}

async fn namespace(cluster: &Cluster) -> Check {
    let ns = &cluster.namespace;
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let obj = api
        .get(ns)
        .await
        .map_err(|e| format!("cannot read namespace {ns}: {e}"))?;
    let labelled = obj
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_INJECTION))
        .is_some_and(|v| v == INJECTION_ENABLED);
    if labelled {
        Ok(format!(
            "namespace {ns} is labelled {LABEL_INJECTION}={INJECTION_ENABLED}"
        ))
    } else {
        Err(format!(
            "namespace {ns} is not labelled for injection: kubectl label namespace {ns} {LABEL_INJECTION}={INJECTION_ENABLED}, then restart its workloads (kubectl rollout restart deploy -n {ns})"
        ))
    }
}

/// The target's checks: it exists, its pods are injected, their sidecars connected.
async fn target_checks(cluster: &Cluster, target: &TargetRef) -> Vec<(&'static str, Check)> {
    let ns = &cluster.namespace;
    let path = format!(
        "/apis/api.shunt.dev/v1/namespaces/{ns}/targets/{}",
        target.resource_name()
    );
    let obj = match cluster.get_json(&path).await {
        Ok(obj) => obj,
        Err(kube::Error::Api(s)) if s.code == 404 => {
            return vec![(
                "target",
                Err(format!(
                    "{target} is not a target in namespace {ns}: check the name with `shunt targets -n {ns}`"
                )),
            )]
        }
        Err(e) => return vec![("target", Err(format!("cannot read target {target}: {e}")))],
    };
    target_report(target, ns, &obj["status"])
}

/// Judges a Target's status (pure, for tests).
fn target_report(target: &TargetRef, ns: &str, status: &Value) -> Vec<(&'static str, Check)> {
    let count = |key: &str| status[key].as_u64().unwrap_or(0);
    let names = |key: &str| -> Vec<String> {
        status[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let pods = count("pods");
    let exists = if pods == 0 {
        Err(format!(
            "{target} selects no pods: scale it up (kubectl scale {target} -n {ns} --replicas=1) or check its selector"
        ))
    } else {
        Ok(format!("{target} has {pods} pod(s), {} ready", count("ready")))
    };
    let not_injected = names("notInjected");
    let injected = if not_injected.is_empty() {
        Ok(format!("every pod of {target} has a shunt sidecar"))
    } else {
        Err(format!(
            "{} pod(s) of {target} have no sidecar ({}): they started before the namespace was labelled or opt out with shunt.dev/inject=false; label the namespace and restart: kubectl rollout restart {target} -n {ns}",
            not_injected.len(),
            not_injected.join(", ")
        ))
    };
    let not_connected = names("notConnected");
    let connected = if not_connected.is_empty() {
        Ok(format!(
            "{} sidecar(s) of {target} are connected to the operator",
            count("connected")
        ))
    } else {
        Err(format!(
            "{} sidecar(s) of {target} are not connected to the operator ({}): sessions do not reach them (their traffic goes to the app); see kubectl logs -n {ns} {} -c shunt-sidecar, and that the operator's Service shunt-operator has endpoints",
            not_connected.len(),
            not_connected.join(", "),
            not_connected[0]
        ))
    };
    vec![("target", exists), ("injected", injected), ("sidecars", connected)]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_target_with_missing_and_disconnected_sidecars_gets_both_fixes() {
        let target: TargetRef = "deploy/api".parse().unwrap();
        let status = json!({"pods": 3, "ready": 3, "injected": 2, "connected": 1,
            "notInjected": ["api-a"], "notConnected": ["api-b"]});
        let report = target_report(&target, "shop", &status);
        assert!(report[0].1.is_ok());
        let injected = report[1].1.as_ref().unwrap_err();
        assert!(
            injected.contains("api-a") && injected.contains("rollout restart"),
            "{injected}"
        );
        let connected = report[2].1.as_ref().unwrap_err();
        assert!(
            connected.contains("api-b") && connected.contains("-c shunt-sidecar"),
            "{connected}"
        );
    }

    #[test]
    fn a_healthy_target_passes_every_check() {
        let target: TargetRef = "deploy/api".parse().unwrap();
        let status =
            json!({"pods": 2, "ready": 2, "injected": 2, "connected": 2, "notInjected": [], "notConnected": []});
        assert!(target_report(&target, "shop", &status).iter().all(|(_, c)| c.is_ok()));
    }
}
