//! Mode `self` against kubesim, the test cluster: the Secret is created once however many
//! replicas start together, a broken Secret is replaced, a deleted one recreated, the
//! `caBundle` kept correct, and changes are picked up by the watch without a restart.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{Method, StatusCode};
use kube::api::{DeleteParams, PostParams};
use serde_json::Value;
use shunt_webhook::certs::self_managed::{SelfManaged, SelfSettings};
use shunt_webhook::config::CertSource;
use shunt_webhook::metrics::Metrics;
use shunt_webhook::tls::CertStore;
use support::cluster::{data, Recorder, TestCluster, CONFIG, NS, SECRET};
use support::eventually;

fn self_settings(extra: &[&str]) -> SelfSettings {
    let mut argv = vec!["--namespace", NS, "--resync-interval", "1h"];
    argv.extend_from_slice(extra);
    match support::settings(&argv).cert {
        CertSource::SelfManaged(s) => s,
        CertSource::Files { .. } => unreachable!(),
    }
}

fn replica(client: kube::Client, settings: &SelfSettings) -> (SelfManaged, Arc<CertStore>) {
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(CertStore::new(metrics.clone()));
    (
        SelfManaged::new(client, settings.clone(), store.clone(), metrics),
        store,
    )
}

fn served(store: &CertStore) -> Vec<u8> {
    store.current().unwrap().key.cert[0].to_vec()
}

#[tokio::test]
async fn replicas_starting_at_once_end_with_one_secret_and_serve_the_same_certificate() {
    let test = TestCluster::start().await;
    // Every replica's read of the Secret is answered ("not found") at once but handed to
    // it 200 ms later, so all five decide to create before the first create lands.
    let recorder = Recorder::default();
    let secret_path = format!("/api/v1/namespaces/{NS}/secrets");
    recorder.hold_reads(&format!("{secret_path}/{SECRET}"), Duration::from_millis(200));
    let settings = self_settings(&[]);
    let mut replicas = Vec::new();
    for _ in 0..5 {
        replicas.push(replica(test.recorded_client(&recorder).await, &settings));
    }
    let results = futures_util::future::join_all(replicas.iter().map(|(r, _)| r.reconcile())).await;
    for result in results {
        result.unwrap();
    }
    let all = test.secrets().list(&Default::default()).await.unwrap();
    assert_eq!(all.items.len(), 1, "one Secret in {NS}");
    // Normally all five try to create and four lose; under heavy load a late replica may
    // find the Secret already there. Either way: every loser re-read, one Secret remains.
    let posts = recorder.count(&Method::POST, &secret_path, None);
    assert!(posts >= 2, "the race was not exercised ({posts} creates)");
    assert_eq!(
        recorder.count(&Method::POST, &secret_path, Some(StatusCode::CONFLICT)),
        posts - 1,
        "every losing create got 409"
    );
    let first = served(&replicas[0].1);
    for (_, store) in &replicas {
        assert_eq!(served(store), first);
    }
    let secret = test.secret().await.unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert!(secret["data"].get("ca.key").is_none(), "the CA key is never stored");
    let bundle = data(&secret, "ca-bundle.crt");
    assert_eq!(
        test.ca_bundles().await,
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
    let test = TestCluster::start().await;
    let garbage = serde_json::from_value(serde_json::json!({
        "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET, "labels": {"team": "platform"}},
        "data": {"tls.crt": "Z2FyYmFnZQ==", "tls.key": "Z2FyYmFnZQ=="}}))
    .unwrap();
    test.secrets().create(&PostParams::default(), &garbage).await.unwrap();
    let (source, store) = replica(test.admin.clone(), &self_settings(&[]));
    source.reconcile().await.unwrap();
    let secret = test.secret().await.unwrap();
    assert_eq!(secret["metadata"]["labels"]["team"], "platform");
    assert_eq!(data(&secret, "tls.crt"), pem_of(&served(&store)));
}

fn pem_of(der: &[u8]) -> Vec<u8> {
    shunt_webhook::certs::state::pem(&rustls_pki_types::CertificateDer::from(der.to_vec())).into_bytes()
}

#[tokio::test]
async fn the_watch_recreates_a_deleted_secret_restores_the_ca_bundle_and_serves_outside_changes() {
    let test = TestCluster::start().await;
    let (source, store) = replica(test.admin.clone(), &self_settings(&[]));
    source.reconcile().await.unwrap();
    let first = served(&store);
    // The resync is an hour: only watch events can explain what follows.
    let task = tokio::spawn(source.run());

    test.secrets().delete(SECRET, &DeleteParams::default()).await.unwrap();
    eventually(10, "a new Secret served", || async {
        test.secret().await.is_some() && store.current().is_some_and(|c| c.key.cert[0].to_vec() != first)
    })
    .await;
    let secret = test.secret().await.unwrap();
    eventually(10, "caBundle of the new CA", || async {
        let bundle = data(&test.secret().await.unwrap(), "ca-bundle.crt");
        test.ca_bundles().await.iter().all(|b| *b == bundle)
    })
    .await;

    // `helm upgrade` resets the caBundle: it is put back.
    let mut config = test.configs().get(CONFIG).await.unwrap();
    config.webhooks.as_mut().unwrap()[1].client_config.ca_bundle = None;
    test.configs()
        .replace(CONFIG, &PostParams::default(), &config)
        .await
        .unwrap();
    eventually(10, "caBundle restored", || async {
        test.ca_bundles().await[1] == data(&secret, "ca-bundle.crt")
    })
    .await;

    // Another replica (or a human) puts a new certificate in the Secret: served without restart.
    let material = shunt_webhook::certs::issue::issue(
        &["shunt-webhook.shunt-system.svc".to_owned()],
        shunt_webhook::certs::unix_now(),
        86_400,
    )
    .unwrap();
    let mut secret = test.secret().await.unwrap();
    let b64 = |s: &str| Value::from(base64::engine::general_purpose::STANDARD.encode(s));
    secret["data"]["tls.crt"] = b64(&material.cert_pem);
    secret["data"]["tls.key"] = b64(&material.key_pem);
    secret["data"]["ca.crt"] = b64(&material.ca_pem);
    let secret = serde_json::from_value(secret).unwrap();
    test.secrets()
        .replace(SECRET, &PostParams::default(), &secret)
        .await
        .unwrap();
    eventually(10, "the outside certificate served", || async {
        store
            .current()
            .is_some_and(|c| pem_of(&c.key.cert[0]) == material.cert_pem.as_bytes())
    })
    .await;
    // Its CA was missing from the bundle: the Secret is repaired and the caBundle follows.
    let ca = material.ca_pem.replace("\r\n", "\n");
    eventually(10, "the new CA published", || async {
        test.ca_bundles()
            .await
            .iter()
            .all(|b| String::from_utf8_lossy(b).contains(ca.trim()))
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn api_errors_say_what_to_check() {
    let test = TestCluster::start_with(kubesim::Options::default()).await;
    // RBAC refuses a user nobody granted anything: the hint names the missing verbs.
    let (source, _) = replica(test.client_as("nobody").await, &self_settings(&[]));
    let err = source.reconcile().await.unwrap_err().to_string();
    assert!(
        err.contains("read Secret shunt-system/shunt-webhook-tls")
            && err.contains("needs get, list, watch, create and update on secrets in namespace shunt-system"),
        "{err}"
    );

    let (source, _) = replica(test.admin.clone(), &self_settings(&[]));
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

/// The Secret's annotation `key` as a Unix time.
fn annotation_time(secret: &Value, key: &str) -> i64 {
    secret["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {}", secret["metadata"]))
        .parse()
        .unwrap()
}

/// Waits until the wall clock (which the rotation plan reads) reaches Unix time `at`.
async fn until_unix(at: i64) {
    while shunt_webhook::certs::unix_now() < at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_replicas_rotating_at_the_same_moment_agree_and_a_reset_ca_bundle_restarts_the_overlap() {
    use shunt_webhook::certs::state::{PUBLISHED_AT, STAGED_AT};
    let test = TestCluster::start().await;
    // A Secret made by an earlier install, valid for a year.
    let (first, _) = replica(test.admin.clone(), &self_settings(&[]));
    first.reconcile().await.unwrap();
    let original = test.secret().await.unwrap();

    // Upgraded replicas renew 366 days before expiry: the year-long certificate is due now,
    // for both at once. Their first reads of the Secret are handed out together, so both
    // decide on the same version and both write: one update must meet 409 Conflict and
    // re-read.
    let recorder = Recorder::default();
    let secret_path = format!("/api/v1/namespaces/{NS}/secrets/{SECRET}");
    let settings = self_settings(&[
        "--cert-validity",
        "400d",
        "--renew-before",
        "366d",
        // Times are whole seconds: 3s is at least 2s, however a reconcile straddles them.
        "--rotation-overlap",
        "3s",
    ]);
    let a = replica(test.recorded_client(&recorder).await, &settings);
    let b = replica(test.recorded_client(&recorder).await, &settings);
    let both = || {
        recorder.gather_reads(&secret_path, 2);
        futures_util::future::join(a.0.reconcile(), b.0.reconcile())
    };

    let (ra, rb) = both().await;
    ra.unwrap();
    rb.unwrap();
    let conflicts = recorder.count(&Method::PUT, &secret_path, Some(StatusCode::CONFLICT));
    assert!(conflicts >= 1, "the update race was not exercised");
    let staged = test.secret().await.unwrap();
    assert_eq!(
        data(&staged, "tls.crt"),
        data(&original, "tls.crt"),
        "nothing served changes yet"
    );
    let next_ca = data(&staged, "next-ca.crt");
    let bundle = data(&staged, "ca-bundle.crt");
    assert_eq!(
        bundle,
        [data(&original, "ca.crt"), next_ca.clone()].concat(),
        "old CA + one new CA"
    );
    assert_eq!(test.ca_bundles().await, vec![bundle.clone(), bundle.clone()]);
    for (_, store) in [&a, &b] {
        assert_eq!(pem_of(&served(store)), data(&original, "tls.crt"));
    }
    let published_at = annotation_time(&staged, PUBLISHED_AT);
    assert!(published_at >= annotation_time(&staged, STAGED_AT));

    // Past the overlap, `helm upgrade` resets the caBundle. Putting it back must start the
    // overlap again instead of promoting at once (API servers lacked the new CA meanwhile).
    until_unix(published_at + 4).await;
    let mut config = test.configs().get(CONFIG).await.unwrap();
    config.webhooks.as_mut().unwrap()[0].client_config.ca_bundle = None;
    test.configs()
        .replace(CONFIG, &PostParams::default(), &config)
        .await
        .unwrap();
    a.0.reconcile().await.unwrap();
    let republished = test.secret().await.unwrap();
    assert_eq!(
        test.ca_bundles().await,
        vec![bundle.clone(), bundle.clone()],
        "caBundle put back"
    );
    assert_eq!(
        data(&republished, "tls.crt"),
        data(&original, "tls.crt"),
        "not promoted while the put-back bundle is new"
    );
    assert_eq!(data(&republished, "next-ca.crt"), next_ca);
    let republished_at = annotation_time(&republished, PUBLISHED_AT);
    assert!(republished_at > published_at, "{republished_at} > {published_at}");

    // An overlap later both promote at the same moment: again one update wins, the other
    // re-reads, and both serve the staged certificate.
    until_unix(republished_at + 3).await;
    let before = recorder.count(&Method::PUT, &secret_path, Some(StatusCode::CONFLICT));
    let (ra, rb) = both().await;
    ra.unwrap();
    rb.unwrap();
    assert!(
        recorder.count(&Method::PUT, &secret_path, Some(StatusCode::CONFLICT)) > before,
        "the promotion race was not exercised"
    );
    let promoted = test.secret().await.unwrap();
    assert_eq!(data(&promoted, "tls.crt"), data(&republished, "next-tls.crt"));
    assert_eq!(data(&promoted, "ca.crt"), next_ca);
    assert!(promoted["data"].get("next-tls.crt").is_none());
    assert!(promoted["metadata"]["annotations"].get(PUBLISHED_AT).is_none());
    assert_eq!(
        data(&promoted, "ca-bundle.crt"),
        bundle,
        "both CAs stay for another overlap"
    );
    for (_, store) in [&a, &b] {
        assert_eq!(pem_of(&served(store)), data(&promoted, "tls.crt"));
    }
}
