//! Tokens of any lifetime for tests ([`Cluster::issue_token`]): TokenReview answers them
//! like TokenRequest's, says "expired" once they are, and they carry their expiry in
//! the JWT claims as kube-apiserver's do.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use kubesim::{Cluster, Options};
use serde_json::{json, Value};

async fn review(client: &Client, token: &str) -> TokenReviewStatus {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec!["shunt.dev/sidecar".into()]),
        },
        ..TokenReview::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    answer.status.unwrap()
}

fn claims(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT: header.claims.signature");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn issued_tokens_expire_when_they_say_and_reviews_say_so() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.admin_kubeconfig().unwrap()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let admin = Client::try_from(config).unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    let sa = serde_json::from_value(json!({"metadata": {"name": "api"}})).unwrap();
    sas.create(&PostParams::default(), &sa).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod = json!({"metadata": {"name": "api-0"},
        "spec": {"serviceAccountName": "api", "containers": [{"name": "app", "image": "kubesim/echo"}]}});
    let pod = pods
        .create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
        .await
        .unwrap();

    let aud = ["shunt.dev/sidecar"];
    let expired = cluster
        .issue_token("default", "api", Some("api-0"), &aud, Duration::ZERO)
        .unwrap();
    let status = review(&admin, &expired).await;
    assert_eq!(status.authenticated, Some(false));
    assert_eq!(status.error.as_deref(), Some("service account token has expired"));

    // A short-lived token works, bound to its pod, until its `exp`, then stops.
    let issued = SystemTime::now();
    let short = cluster
        .issue_token("default", "api", Some("api-0"), &aud, Duration::from_secs(2))
        .unwrap();
    let claims = claims(&short);
    assert_eq!(
        claims["exp"].as_u64(),
        Some(unix(issued + Duration::from_secs(2))),
        "{claims}"
    );
    assert_eq!(claims["sub"], "system:serviceaccount:default:api");
    assert_eq!(claims["aud"], json!(aud));
    assert_eq!(
        claims["kubernetes.io"]["pod"]["uid"].as_str(),
        pod.metadata.uid.as_deref()
    );
    let status = review(&admin, &short).await;
    assert_eq!(status.authenticated, Some(true), "{:?}", status.error);
    let extra = status.user.unwrap().extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], ["api-0"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = review(&admin, &short).await;
        if status.authenticated == Some(false) {
            assert_eq!(status.error.as_deref(), Some("service account token has expired"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 2 s token still authenticates after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(issued.elapsed().unwrap() >= Duration::from_secs(2), "expired early");

    // Tokens are for objects that exist.
    let err = cluster
        .issue_token("default", "api", Some("nope-0"), &aud, Duration::from_secs(600))
        .unwrap_err();
    assert!(err.to_string().contains("pods default/nope-0 does not exist"), "{err}");
}
