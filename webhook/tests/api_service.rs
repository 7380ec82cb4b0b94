//! Mode `self` with `--api-service-name` against kubesim: the operator's APIService gets the
//! webhook's CA bundle as soon as it exists (created after the webhook, as a chart may do),
//! gets it back after `helm upgrade` resets it, and keeps trusting the certificate served
//! for the operator's Service names while the certificate rotates. A Secret whose
//! certificate lacks a configured name is rotated.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::PostParams;
use shunt_webhook::certs::self_managed::SelfManaged;
use shunt_webhook::config::CertSource;
use shunt_webhook::metrics::Metrics;
use shunt_webhook::tls::CertStore;
use support::cluster::{data, TestCluster, API_SERVICE};
use support::https::connect;

const API_NAME: &str = "shunt-api.shunt-system.svc";
const HUB_NAME: &str = "shunt-operator.shunt-system.svc";

fn cas(bundle: &[u8]) -> usize {
    shunt_webhook::tls::parse_bundle(bundle).map_or(0, |c| c.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_service_gets_the_ca_bundle_once_it_exists_and_keeps_it_through_a_rotation() {
    let test = TestCluster::start().await;
    // Valid 14 s, renewed 8 s before expiry, 2 s overlaps (as in https.rs). The resync is an
    // hour: only watch events and the rotation timer can explain what follows.
    let names = format!("{API_NAME},{HUB_NAME},shunt-api.shunt-system.svc.cluster.local");
    let settings = support::settings(&[
        "--namespace",
        "shunt-system",
        "--api-service-name",
        API_SERVICE,
        "--dns-names",
        &names,
        "--cert-validity",
        "14s",
        "--renew-before",
        "8s",
        "--rotation-overlap",
        "2s",
        "--resync-interval",
        "1h",
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shunt_webhook::run_with(
        settings,
        Some(test.admin.clone()),
        listener,
        Arc::new(Metrics::new()),
        async {
            let _ = stopped.await;
        },
    ));
    // No APIService yet: the webhook serves anyway.
    support::eventually(10, "the webhook's caBundle published", || async {
        test.ca_bundles().await.iter().all(|b| cas(b) == 1)
    })
    .await;
    let webhook_bundle = test.ca_bundles().await.swap_remove(0);
    connect(addr, &webhook_bundle, "shunt-webhook.shunt-system.svc", true)
        .await
        .unwrap();

    // The operator's chart creates the APIService later, without a caBundle.
    test.create_api_service().await;
    support::eventually(10, "the APIService's caBundle", || async {
        test.api_service_bundle().await == data(&test.secret().await.unwrap(), "ca-bundle.crt")
    })
    .await;

    // `helm upgrade` resets it: it is put back.
    let mut service = test.api_services().get(API_SERVICE).await.unwrap();
    service.spec.as_mut().unwrap().ca_bundle = None;
    test.api_services()
        .replace(API_SERVICE, &PostParams::default(), &service)
        .await
        .unwrap();
    support::eventually(10, "the APIService's caBundle restored", || async {
        cas(&test.api_service_bundle().await) == 1
    })
    .await;

    // Through a rotation, a client that trusts only the APIService's current caBundle (as
    // kube-apiserver does) verifies the served certificate for both operator names.
    let first = connect(addr, &test.api_service_bundle().await, API_NAME, true)
        .await
        .unwrap()
        .peer_leaf;
    let (mut rounds, mut saw_both_cas) = (0u32, false);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let bundle = test.api_service_bundle().await;
        saw_both_cas |= cas(&bundle) == 2;
        let mut leaf = Vec::new();
        for (i, name) in [API_NAME, HUB_NAME].into_iter().enumerate() {
            let conn = connect(addr, &bundle, name, i == 0)
                .await
                .unwrap_or_else(|e| panic!("round {rounds}: {name} trusting the APIService's caBundle: {e}"));
            leaf = conn.peer_leaf;
        }
        rounds += 1;
        if leaf != first && saw_both_cas && cas(&bundle) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no full rotation within 40 s ({rounds} rounds)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The APIService and the webhook configuration end with the same single new CA.
    let secret_bundle = data(&test.secret().await.unwrap(), "ca-bundle.crt");
    support::eventually(10, "both caBundles equal to the Secret's", || async {
        test.api_service_bundle().await == secret_bundle && test.ca_bundles().await.iter().all(|b| *b == secret_bundle)
    })
    .await;
    assert_ne!(secret_bundle, webhook_bundle, "the CA rotated");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_certificate_without_a_configured_name_is_rotated_to_one_with_it() {
    let test = TestCluster::start().await;
    let replica = |extra: &[&str]| {
        let mut argv = vec![
            "--namespace",
            "shunt-system",
            "--resync-interval",
            "1h",
            "--rotation-overlap",
            "1s",
        ];
        argv.extend_from_slice(extra);
        let CertSource::SelfManaged(settings) = support::settings(&argv).cert else {
            unreachable!()
        };
        let metrics = Arc::new(Metrics::new());
        let store = Arc::new(CertStore::new(metrics.clone()));
        (
            SelfManaged::new(test.admin.clone(), settings, store.clone(), metrics),
            store,
        )
    };
    let names =
        |store: &CertStore| shunt_webhook::tls::subject_alt_names(&store.current().unwrap().key.cert[0]).unwrap();

    // An install made before the operator served the same Secret: webhook names only.
    let (old, old_store) = replica(&[]);
    old.reconcile().await.unwrap();
    assert!(!names(&old_store).contains(&API_NAME.to_owned()));
    assert_eq!(
        old_store.ca_bundle().as_deref().map(str::as_bytes),
        Some(data(&test.secret().await.unwrap(), "ca-bundle.crt").as_slice()),
        "the store knows the bundle sidecars get"
    );

    // Upgraded with --dns-names: the certificate is rotated (stage, overlap, promote) to
    // one that has them, with the usual overlap of both CAs in the caBundle.
    let (new, new_store) = replica(&["--dns-names", &format!("{API_NAME},{HUB_NAME}")]);
    new.reconcile().await.unwrap();
    assert_eq!(cas(&test.ca_bundles().await[0]), 2, "old and new CA published");
    assert!(
        !names(&new_store).contains(&API_NAME.to_owned()),
        "not switched before the overlap"
    );
    support::eventually(10, "the certificate with the operator's names served", || async {
        new.reconcile().await.unwrap();
        let served = names(&new_store);
        served.contains(&API_NAME.to_owned()) && served.contains(&HUB_NAME.to_owned())
    })
    .await;
    // The old replica, still running during a rolling upgrade, takes it over without undoing it.
    old.reconcile().await.unwrap();
    assert!(names(&old_store).contains(&API_NAME.to_owned()));
}
