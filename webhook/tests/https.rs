//! Test 4 of the webhook issue: HTTPS end to end in mode `self` against kubesim, the
//! test cluster. Clients trust only the published `caBundle` (as kube-apiserver does) and send
//! AdmissionReviews over HTTP/1.1 and HTTP/2; the certificate rotates (short validity)
//! while they do, and no request fails, without a restart.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shunt_webhook::metrics::{Metrics, Outcome};
use support::cluster::TestCluster;
use support::https::connect;

const NAME: &str = "shunt-webhook.shunt-system.svc";

async fn bundle(test: &TestCluster) -> Vec<u8> {
    test.ca_bundles().await.swap_remove(0)
}

fn cas(bundle: &[u8]) -> usize {
    shunt_webhook::tls::parse_bundle(bundle).map_or(0, |c| c.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_over_http1_and_http2_keep_succeeding_across_a_certificate_rotation() {
    let test = TestCluster::start().await;
    // Valid 14 s, renewed 8 s before expiry, 2 s overlaps: stage at ~6 s, switch at ~8 s,
    // old CA dropped at ~10 s (the next rotation would stage at ~12 s).
    let settings = support::settings(&[
        "--namespace",
        "shunt-system",
        "--cert-validity",
        "14s",
        "--renew-before",
        "8s",
        "--rotation-overlap",
        "2s",
        "--resync-interval",
        "1s",
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shunt_webhook::run_with(
        settings,
        Some(test.admin.clone()),
        listener,
        metrics.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    support::eventually(10, "the caBundle published", || async {
        cas(&bundle(&test).await) == 1
    })
    .await;

    let first_bundle = bundle(&test).await;
    let mut h1 = connect(addr, &first_bundle, NAME, false).await.unwrap();
    let mut h2 = connect(addr, &first_bundle, NAME, true).await.unwrap();
    let first_leaf = h1.peer_leaf.clone();
    // The "API server": a caBundle cached for up to a second, a new connection per round.
    let mut cached = (Instant::now(), first_bundle.clone());
    let pod = support::pod(json!([{"name": "http", "containerPort": 8080}]));
    let (mut rounds, mut saw_both_cas, mut leaves) = (0u64, false, std::collections::BTreeSet::new());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if cached.0.elapsed() >= Duration::from_secs(1) {
            cached = (Instant::now(), bundle(&test).await);
        }
        saw_both_cas |= cas(&cached.1) == 2;
        let review = support::review(&format!("uid-{rounds}"), "team", &pod);
        let mut fresh = connect(addr, &cached.1, NAME, rounds % 2 == 0)
            .await
            .unwrap_or_else(|e| panic!("round {rounds}: a new connection trusting the caBundle failed: {e}"));
        for (conn, what) in [
            (&mut h1, "HTTP/1.1 keep-alive"),
            (&mut h2, "HTTP/2"),
            (&mut fresh, "new connection"),
        ] {
            let (status, body) = conn
                .review(&review)
                .await
                .unwrap_or_else(|e| panic!("round {rounds}, {what}: {e}"));
            assert_eq!(status, 200, "round {rounds}, {what}: {body}");
            assert_eq!(body["response"]["uid"], format!("uid-{rounds}"));
            assert_eq!(body["response"]["allowed"], true);
            assert_eq!(body["response"]["patchType"], "JSONPatch");
            let mutated = support::apply_response_patch(&pod, &body);
            assert_eq!(mutated["spec"]["initContainers"][0]["name"], "shunt-sidecar");
        }
        leaves.insert(fresh.peer_leaf.clone());
        rounds += 1;
        if fresh.peer_leaf != first_leaf && saw_both_cas && cas(&bundle(&test).await) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no full rotation within 40 s (rounds: {rounds})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(leaves.len() >= 2, "the served certificate changed");
    assert_eq!(metrics.reviews(Outcome::injected), 3 * rounds);

    // Health and metrics on the same server, never restarted.
    let mut conn = connect(addr, &bundle(&test).await, NAME, true).await.unwrap();
    assert_eq!(conn.send("GET", "/healthz", Vec::new()).await.unwrap().0, 200);
    assert_eq!(conn.send("GET", "/readyz", Vec::new()).await.unwrap().0, 200);
    let (status, text) = conn.send("GET", "/metrics", Vec::new()).await.unwrap();
    let text = String::from_utf8_lossy(&text);
    assert_eq!(status, 200);
    assert!(
        text.contains(&format!(
            "shunt_webhook_reviews_total{{outcome=\"injected\"}} {}",
            3 * rounds
        )),
        "{text}"
    );
    assert!(text.contains("shunt_webhook_review_duration_seconds_bucket"), "{text}");
    let expiry = text
        .lines()
        .find_map(|l| l.strip_prefix("shunt_webhook_certificate_expiry_timestamp_seconds "))
        .unwrap();
    assert!(expiry.parse::<i64>().unwrap() > shunt_webhook::certs::unix_now());
    assert!(text.contains("shunt_webhook_certificate_reloads_total 2"), "{text}");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
