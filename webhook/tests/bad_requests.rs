//! Test 5 of the webhook issue: malformed JSON, a review of a Deployment, an empty body, a
//! 10 MB body and other client mistakes get 400 (or 413) with a message that says what was
//! wrong, our own failures admit the pod with a warning, and the server keeps serving.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use shunt_webhook::metrics::{Metrics, Outcome};
use shunt_webhook::server::{router, AppState};
use shunt_webhook::tls::CertStore;
use tower::ServiceExt as _;

fn app() -> (axum::Router, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let state = AppState {
        inject: support::config(),
        metrics: metrics.clone(),
        store: Arc::new(CertStore::new(metrics.clone())),
        max_body_bytes: 4 << 20,
    };
    (router(Arc::new(state)), metrics)
}

async fn call(app: &axum::Router, method: &str, path: &str, body: Body, length: Option<usize>) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(length) = length {
        request = request.header("content-length", length);
    }
    let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn good() -> Value {
    support::review("u1", "team", &support::pod(json!([{"containerPort": 8080}])))
}

/// The bad requests and what their answer must say.
fn bad_requests() -> Vec<(&'static str, Vec<u8>, StatusCode, &'static str)> {
    let mut deployment = good();
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut v1beta1 = good();
    v1beta1["apiVersion"] = "admission.k8s.io/v1beta1".into();
    let mut no_uid = good();
    no_uid["request"]["uid"] = "".into();
    let mut no_object = good();
    no_object["request"].as_object_mut().unwrap().remove("object");
    let bytes = |v: &Value| serde_json::to_vec(v).unwrap();
    vec![
        (
            "malformed JSON",
            b"{\"apiVersion\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        ("empty body", Vec::new(), StatusCode::BAD_REQUEST, "body is empty"),
        (
            "Deployment",
            bytes(&deployment),
            StatusCode::BAD_REQUEST,
            "Pods only, got a review of apps/v1 Deployment",
        ),
        (
            "v1beta1",
            bytes(&v1beta1),
            StatusCode::BAD_REQUEST,
            "admission.k8s.io/v1beta1",
        ),
        (
            "no request",
            bytes(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})),
            StatusCode::BAD_REQUEST,
            "has no request",
        ),
        (
            "wrong shape",
            bytes(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 5}})),
            StatusCode::BAD_REQUEST,
            "not an AdmissionReview",
        ),
        (
            "no uid",
            bytes(&no_uid),
            StatusCode::BAD_REQUEST,
            "request.uid is empty",
        ),
        (
            "no object",
            bytes(&no_object),
            StatusCode::BAD_REQUEST,
            "request.object is missing",
        ),
        (
            "10 MB",
            vec![b' '; 10 << 20],
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 4194304 bytes (--max-body-bytes)",
        ),
    ]
}

#[tokio::test]
async fn client_mistakes_get_400_or_413_with_a_message_that_says_what_was_wrong() {
    let (app, metrics) = app();
    for (what, body, status, message) in bad_requests() {
        for declared in [Some(body.len()), None] {
            let (got, text) = call(&app, "POST", "/mutate-pods", Body::from(body.clone()), declared).await;
            assert_eq!(got, status, "{what}: {text}");
            assert!(text.contains(message), "{what}: {text:?} should say {message:?}");
        }
    }
    assert_eq!(metrics.reviews(Outcome::rejected), 2 * bad_requests().len() as u64);
    let (status, text) = call(
        &app,
        "POST",
        "/mutate-pods",
        Body::from(serde_json::to_vec(&good()).unwrap()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        call(&app, "GET", "/mutate-pods", Body::empty(), None).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let (status, text) = call(&app, "GET", "/nope", Body::empty(), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.contains("POST /mutate-pods"), "{text}");
}

#[tokio::test]
async fn our_own_failure_admits_the_pod_unchanged_with_a_warning_and_is_counted() {
    let (app, metrics) = app();
    // Valid JSON the API server would never send us: not a Pod the client can read.
    let review = support::review(
        "u2",
        "team",
        &json!({"metadata": {"name": "x"}, "spec": {"containers": "oops"}}),
    );
    let (status, text) = call(
        &app,
        "POST",
        "/mutate-pods",
        Body::from(serde_json::to_vec(&review).unwrap()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["response"]["allowed"], true);
    assert!(body["response"].get("patch").is_none());
    let warning = body["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("internal error of shunt-webhook"), "{warning}");
    assert_eq!(metrics.reviews(Outcome::error), 1);

    // Not a CREATE: allowed, nothing to do.
    let mut update = good();
    update["request"]["operation"] = "UPDATE".into();
    let (status, text) = call(
        &app,
        "POST",
        "/mutate-pods",
        Body::from(serde_json::to_vec(&update).unwrap()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (body["response"]["allowed"].clone(), body["response"].get("patch")),
        (json!(true), None)
    );
    assert_eq!(metrics.reviews(Outcome::ignored), 1);

    // A skip says why in the warnings and the metrics.
    let skip = support::review("u3", "kube-system", &support::pod(json!([{"containerPort": 80}])));
    let (_, text) = call(
        &app,
        "POST",
        "/mutate-pods",
        Body::from(serde_json::to_vec(&skip).unwrap()),
        None,
    )
    .await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(
        body["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("kube-system is never injected"),
        "{body}"
    );
    let (_, metrics_text) = call(&app, "GET", "/metrics", Body::empty(), None).await;
    assert!(
        metrics_text.contains("shunt_webhook_skips_total{reason=\"namespace\"} 1"),
        "{metrics_text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_server_keeps_serving_after_every_bad_request() {
    let dir = std::env::temp_dir().join(format!("shunt-webhook-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let material =
        shunt_webhook::certs::issue::issue(&["localhost".into()], shunt_webhook::certs::unix_now(), 3600).unwrap();
    std::fs::write(dir.join("tls.crt"), &material.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &material.key_pem).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let settings = support::settings(&[
        "--cert-mode",
        "files",
        "--cert-file",
        cert.to_str().unwrap(),
        "--key-file",
        key.to_str().unwrap(),
    ]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shunt_webhook::run_with(
        settings,
        None,
        listener,
        Arc::new(Metrics::new()),
        async {
            let _ = stopped.await;
        },
    ));
    let ca = material.ca_pem.as_bytes();
    for http2 in [false, true] {
        let mut conn = support::https::connect(addr, ca, "localhost", http2).await.unwrap();
        for (what, body, status, message) in bad_requests() {
            let (got, text) = conn.send("POST", "/mutate-pods", body).await.unwrap();
            assert_eq!(got, status, "{what} (http2: {http2})");
            assert!(String::from_utf8_lossy(&text).contains(message), "{what}");
        }
        let (status, body) = conn.review(&good()).await.unwrap();
        assert_eq!(status, 200, "the same connection still serves: {body}");
        assert_eq!(body["response"]["patchType"], "JSONPatch");
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
