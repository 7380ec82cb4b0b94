//! Mode `self` against the in-process fake API server: the Secret is created once however
//! many replicas start together, a broken Secret is replaced, a deleted one recreated, the
//! `caBundle` kept correct, and changes are picked up by the watch without a restart.
//!
//! To move to `tests/kubesim` once the test cluster exists.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use shunt_webhook::certs::self_managed::{SelfManaged, SelfSettings};
use shunt_webhook::config::CertSource;
use shunt_webhook::metrics::Metrics;
use shunt_webhook::tls::CertStore;
use support::fake_api::{secrets, FakeApi, CONFIGS};
use support::{eventually, webhook_configuration};

const NS: &str = "shunt-system";
const SECRET: &str = "shunt-webhook-tls";

fn self_settings(extra: &[&str]) -> SelfSettings {
    let mut argv = vec!["--namespace", NS, "--resync-interval", "1h"];
    argv.extend_from_slice(extra);
    match support::settings(&argv).cert {
        CertSource::SelfManaged(s) => s,
        CertSource::Files { .. } => unreachable!(),
    }
}

fn replica(api: &FakeApi, settings: &SelfSettings) -> (SelfManaged, Arc<CertStore>) {
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(CertStore::new(metrics.clone()));
    (
        SelfManaged::new(api.client(), settings.clone(), store.clone(), metrics),
        store,
    )
}

fn data(secret: &Value, key: &str) -> Vec<u8> {
    let b64 = secret["data"][key].as_str().unwrap_or_default();
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

fn ca_bundles(api: &FakeApi) -> Vec<Vec<u8>> {
    let config = api.get(CONFIGS, "shunt-webhook").unwrap();
    config["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let b64 = w["clientConfig"]["caBundle"].as_str().unwrap_or_default();
            base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
        })
        .collect()
}

fn served(store: &CertStore) -> Vec<u8> {
    store.current().unwrap().key.cert[0].to_vec()
}

#[tokio::test]
async fn replicas_starting_at_once_end_with_one_secret_and_serve_the_same_certificate() {
    let api = FakeApi::start().await;
    api.insert(CONFIGS, webhook_configuration());
    // Every create waits, so all replicas see "no Secret" before the first create lands.
    api.set_create_delay(Duration::from_millis(200));
    let settings = self_settings(&[]);
    let replicas: Vec<_> = (0..5).map(|_| replica(&api, &settings)).collect();
    let results = futures_util::future::join_all(replicas.iter().map(|(r, _)| r.reconcile())).await;
    for result in results {
        result.unwrap();
    }
    assert_eq!(api.count(&secrets(NS)), 1);
    // Normally all five try to create and four lose; under heavy load a late replica may
    // find the Secret already there. Either way: every loser re-read, one Secret remains.
    let posts = api.counter(&format!("POST {}", secrets(NS)));
    assert!(posts >= 2, "the race was not exercised ({posts} creates)");
    assert_eq!(
        api.counter(&format!("409 {}", secrets(NS))),
        posts - 1,
        "every losing create got 409"
    );
    let first = served(&replicas[0].1);
    for (_, store) in &replicas {
        assert_eq!(served(store), first);
    }
    let secret = api.get(&secrets(NS), SECRET).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert!(secret["data"].get("ca.key").is_none(), "the CA key is never stored");
    let bundle = data(&secret, "ca-bundle.crt");
    assert_eq!(
        ca_bundles(&api),
        vec![bundle.clone(), bundle.clone()],
        "both webhooks get the bundle"
    );

    // The bundle verifies the served certificate for the Service's DNS name.
    let ca = shunt_webhook::tls::parse_bundle(&bundle).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca[0].clone()).unwrap();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), shunt_webhook::tls::provider())
            .build()
            .unwrap();
    let name = rustls_pki_types::ServerName::try_from("shunt-webhook.shunt-system.svc").unwrap();
    let leaf = rustls_pki_types::CertificateDer::from(first);
    rustls::client::danger::ServerCertVerifier::verify_server_cert(
        verifier.as_ref(),
        &leaf,
        &[],
        &name,
        &[],
        rustls_pki_types::UnixTime::now(),
    )
    .unwrap();
}

#[tokio::test]
async fn a_secret_without_a_usable_certificate_is_replaced_keeping_its_metadata() {
    let api = FakeApi::start().await;
    api.insert(CONFIGS, webhook_configuration());
    api.insert(
        &secrets(NS),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": SECRET, "namespace": NS, "labels": {"team": "platform"}},
            "data": {"tls.crt": "Z2FyYmFnZQ==", "tls.key": "Z2FyYmFnZQ=="}}),
    );
    let (source, store) = replica(&api, &self_settings(&[]));
    source.reconcile().await.unwrap();
    let secret = api.get(&secrets(NS), SECRET).unwrap();
    assert_eq!(secret["metadata"]["labels"]["team"], "platform");
    assert_eq!(data(&secret, "tls.crt"), pem_of(&served(&store)));
}

fn pem_of(der: &[u8]) -> Vec<u8> {
    shunt_webhook::certs::state::pem(&rustls_pki_types::CertificateDer::from(der.to_vec())).into_bytes()
}

#[tokio::test]
async fn the_watch_recreates_a_deleted_secret_restores_the_ca_bundle_and_serves_outside_changes() {
    let api = FakeApi::start().await;
    api.insert(CONFIGS, webhook_configuration());
    let (source, store) = replica(&api, &self_settings(&[]));
    source.reconcile().await.unwrap();
    let first = served(&store);
    // The resync is an hour: only watch events can explain what follows.
    let task = tokio::spawn(source.run());

    api.delete(&secrets(NS), SECRET);
    eventually(10, "a new Secret served", || {
        api.get(&secrets(NS), SECRET).is_some() && store.current().is_some_and(|c| c.key.cert[0].to_vec() != first)
    })
    .await;
    let secret = api.get(&secrets(NS), SECRET).unwrap();
    eventually(10, "caBundle of the new CA", || {
        ca_bundles(&api)
            .iter()
            .all(|b| *b == data(&api.get(&secrets(NS), SECRET).unwrap(), "ca-bundle.crt"))
    })
    .await;

    // `helm upgrade` resets the caBundle: it is put back.
    let mut config = api.get(CONFIGS, "shunt-webhook").unwrap();
    config["webhooks"][1]["clientConfig"]
        .as_object_mut()
        .unwrap()
        .remove("caBundle");
    api.update(CONFIGS, config);
    eventually(10, "caBundle restored", || {
        ca_bundles(&api)[1] == data(&secret, "ca-bundle.crt")
    })
    .await;

    // Another replica (or a human) puts a new certificate in the Secret: served without restart.
    let material = shunt_webhook::certs::issue::issue(
        &["shunt-webhook.shunt-system.svc".to_owned()],
        shunt_webhook::certs::unix_now(),
        86_400,
    )
    .unwrap();
    let mut secret = api.get(&secrets(NS), SECRET).unwrap();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    secret["data"]["tls.crt"] = b64(&material.cert_pem).into();
    secret["data"]["tls.key"] = b64(&material.key_pem).into();
    secret["data"]["ca.crt"] = b64(&material.ca_pem).into();
    api.update(&secrets(NS), secret);
    eventually(10, "the outside certificate served", || {
        store
            .current()
            .is_some_and(|c| pem_of(&c.key.cert[0]) == material.cert_pem.as_bytes())
    })
    .await;
    // Its CA was missing from the bundle: the Secret is repaired and the caBundle follows.
    eventually(10, "the new CA published", || {
        let ca = material.ca_pem.replace("\r\n", "\n");
        ca_bundles(&api)
            .iter()
            .all(|b| String::from_utf8_lossy(b).contains(ca.trim()))
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn api_errors_say_what_to_check() {
    let api = FakeApi::start().await;
    let (source, _) = replica(&api, &self_settings(&[]));
    let err = source.reconcile().await.unwrap_err().to_string();
    assert!(
        err.contains("MutatingWebhookConfiguration shunt-webhook") && err.contains("--webhook-config-name"),
        "{err}"
    );

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let client = kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap())).unwrap();
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(CertStore::new(metrics.clone()));
    let unreachable = SelfManaged::new(client, self_settings(&[]), store, metrics);
    let err = unreachable.reconcile().await.unwrap_err().to_string();
    assert!(err.contains("cannot reach the Kubernetes API server"), "{err}");
}
