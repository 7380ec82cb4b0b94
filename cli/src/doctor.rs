//! `shunt doctor`: checks the installation and the namespace, one line per check; a
//! failing check says how to fix it. Checks: the aggregated API's APIService is
//! Available, the webhook's `caBundle` holds a certificate, the namespace is labelled for
//! injection. (Per-pod sidecar connection checks are not done yet.)

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::Api;
use shunt_proto::names::{INJECTION_ENABLED, LABEL_INJECTION};

use crate::cluster::Cluster;

/// One check's outcome: `Ok(what is fine)` or `Err(what is wrong and how to fix it)`.
type Check = Result<String, String>;

/// Runs every check; fails (exit code 1) if one fails.
pub async fn run(cluster: &Cluster) -> anyhow::Result<()> {
    let checks = [
        ("API", api_service(cluster).await),
        ("webhook", webhook(cluster).await),
        ("namespace", namespace(cluster).await),
    ];
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
