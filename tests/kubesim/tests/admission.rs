//! Admission webhooks against kubesim, as kube-apiserver calls them: a test webhook
//! server (HTTPS with its own CA on 127.0.0.1:0) reached through a Service + Endpoints
//! or a URL; JSON patches applied; failurePolicy Fail vs Ignore when it is down; a wrong
//! caBundle refused; namespace and object selectors; denials; warnings; reinvocation.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use kubesim::pki::{Ca, CertPair};
use kubesim::{Cluster, Options};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const MUTATED: &str = "kubesim.test/mutated";

type Handler = Arc<dyn Fn(&str, &Value) -> Value + Send + Sync>;

/// A webhook server: HTTPS on 127.0.0.1:0 with a certificate of its own CA, answering
/// AdmissionReviews with `handler(path, request)` and recording every request.
struct Webhook {
    addr: SocketAddr,
    ca: Ca,
    seen: Arc<Mutex<Vec<(String, Value)>>>,
}

impl Webhook {
    async fn start(handler: Handler) -> Webhook {
        let ca = Ca::new("test-webhook-ca").unwrap();
        let cert = ca
            .server(&["webhook.hooks.svc".into()], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls(&cert));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, handler, log) = (acceptor.clone(), handler.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = service_fn(move |req: hyper::Request<Incoming>| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            if path == "/hang" {
                                std::future::pending::<()>().await; // a webhook that never answers
                            }
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let review: Value = serde_json::from_slice(&body).unwrap();
                            log.lock().unwrap().push((path.clone(), review.clone()));
                            let answer = handler(&path, &review["request"]);
                            let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": answer});
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                review.to_string(),
                            ))))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Webhook { addr, ca, seen }
    }

    fn ca_bundle(&self) -> String {
        b64(&self.ca.cert_pem)
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    fn requests(&self, path: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, r)| r["request"].clone())
            .collect()
    }
}

fn server_tls(cert: &CertPair) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth();
    Arc::new(config.with_single_cert(certs, key).unwrap())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// An allowing answer that sets `metadata.{field}.{key} = value`, plus `warnings`.
fn patch_answer(request: &Value, field: &str, key: &str, value: &str, warnings: &[&str]) -> Value {
    let mut ops = Vec::new();
    if request["object"]["metadata"][field].is_null() {
        ops.push(json!({"op": "add", "path": format!("/metadata/{field}"), "value": {}}));
    }
    ops.push(json!({"op": "add", "path": format!("/metadata/{field}/{}", escape(key)), "value": value}));
    json!({
        "uid": request["uid"], "allowed": true, "patchType": "JSONPatch",
        "patch": b64(&Value::from(ops).to_string()), "warnings": warnings,
    })
}

/// The test webhook's behaviour by path.
fn handler() -> Handler {
    Arc::new(|path: &str, req: &Value| match path {
        "/mutate" => patch_answer(req, "labels", MUTATED, "true", &["mutated by the test webhook"]),
        "/record-label" => {
            let saw = req["object"]["metadata"]["labels"][MUTATED].as_str().unwrap_or("none");
            patch_answer(req, "annotations", "kubesim.test/saw-label", saw, &[])
        }
        "/deny" => {
            json!({"uid": req["uid"], "allowed": false, "status": {"code": 403, "reason": "Forbidden", "message": "verdict=deny is refused"}})
        }
        _ => {
            json!({"uid": req["uid"], "allowed": true, "warnings": [format!("validated {}", req["operation"].as_str().unwrap_or_default())]})
        }
    })
}

async fn client(cluster: &Cluster) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.admin_kubeconfig().unwrap()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Creates any object through the REST API, as `kubectl create --raw` would.
async fn create(client: &Client, path: &str, obj: Value) -> (u16, Value, Vec<String>) {
    let req = http::Request::post(path)
        .header("content-type", "application/json")
        .body(obj.to_string().into_bytes().into())
        .unwrap();
    let resp = client.send(req).await.unwrap();
    let status = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap(), warnings)
}

async fn create_ok(client: &Client, path: &str, obj: Value) -> Value {
    let (status, body, _) = create(client, path, obj).await;
    assert!(status < 300, "creating at {path} failed: {body}");
    body
}

fn webhook(name: &str, client_config: Value, resources: &str, extra: Value) -> Value {
    let mut hook = json!({
        "name": name,
        "clientConfig": client_config,
        "rules": [{"operations": ["CREATE", "UPDATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": [resources], "scope": "*"}],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    });
    for (k, v) in extra.as_object().unwrap() {
        hook[k] = v.clone();
    }
    hook
}

async fn configure(client: &Client, plural: &str, name: &str, webhooks: Vec<Value>) {
    let kind = if plural.starts_with("mutating") {
        "MutatingWebhookConfiguration"
    } else {
        "ValidatingWebhookConfiguration"
    };
    let obj = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind, "metadata": {"name": name}, "webhooks": webhooks});
    create_ok(client, &format!("/apis/admissionregistration.k8s.io/v1/{plural}"), obj).await;
}

fn config_map(name: &str, labels: Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "c", "image": "kubesim/echo"}]}})).unwrap()
}

fn labels_of(obj: &Value) -> Value {
    obj["metadata"]["labels"].clone()
}

#[tokio::test]
async fn mutating_webhook_behind_a_service_mutates_pods_it_selects() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = client(&cluster).await;
    let hook = Webhook::start(handler()).await;
    // The webhook's Service has no selector; its Endpoints point at the test server.
    create_ok(&client, "/api/v1/namespaces", json!({"metadata": {"name": "hooks"}})).await;
    let svc = json!({"metadata": {"name": "webhook"}, "spec": {"ports": [{"name": "https", "port": 443, "targetPort": hook.addr.port()}]}});
    create_ok(&client, "/api/v1/namespaces/hooks/services", svc).await;
    let endpoints = json!({"metadata": {"name": "webhook"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"name": "https", "port": hook.addr.port()}]}]});
    create_ok(&client, "/api/v1/namespaces/hooks/endpoints", endpoints).await;
    for (ns, labels) in [("injected", json!({"inject": "enabled"})), ("plain", json!({}))] {
        create_ok(
            &client,
            "/api/v1/namespaces",
            json!({"metadata": {"name": ns, "labels": labels}}),
        )
        .await;
    }
    let service_ref = json!({"service": {"namespace": "hooks", "name": "webhook", "path": "/mutate", "port": 443}, "caBundle": hook.ca_bundle()});
    let selectors = json!({
        "failurePolicy": "Fail",
        "namespaceSelector": {"matchLabels": {"inject": "enabled"}},
        "objectSelector": {"matchExpressions": [{"key": "kubesim.test/skip", "operator": "DoesNotExist"}]},
    });
    configure(
        &client,
        "mutatingwebhookconfigurations",
        "mutate-pods",
        vec![webhook("mutate.kubesim.test", service_ref, "pods", selectors)],
    )
    .await;

    let injected: Api<Pod> = Api::namespaced(client.clone(), "injected");
    let p1 = injected
        .create(&PostParams::default(), &pod("p1", json!({"app": "a"})))
        .await
        .unwrap();
    let labels = p1.metadata.labels.clone().unwrap();
    assert_eq!(
        labels.get(MUTATED).map(String::as_str),
        Some("true"),
        "the webhook's patch is applied: {labels:?}"
    );
    assert_eq!(
        injected.get("p1").await.unwrap().metadata.labels,
        p1.metadata.labels,
        "and stored"
    );

    let reviews = hook.requests("/mutate");
    assert_eq!(reviews.len(), 1);
    let r = &reviews[0];
    assert_eq!(r["operation"], "CREATE");
    assert_eq!(r["kind"], json!({"group": "", "version": "v1", "kind": "Pod"}));
    assert_eq!(r["resource"], json!({"group": "", "version": "v1", "resource": "pods"}));
    assert_eq!(r["requestKind"], r["kind"]);
    assert_eq!(
        (r["namespace"].as_str(), r["name"].as_str()),
        (Some("injected"), Some("p1"))
    );
    assert_eq!(r["userInfo"]["username"], "kubesim-admin");
    assert!(r["userInfo"]["groups"]
        .as_array()
        .unwrap()
        .contains(&json!("system:masters")));
    assert_eq!(r["object"]["metadata"]["name"], "p1");
    assert_eq!(r["dryRun"], false);
    assert_eq!(r["options"]["kind"], "CreateOptions");
    assert!(r["uid"].as_str().is_some_and(|u| !u.is_empty()));

    // Not selected: a namespace without the label, an object with the skip label.
    let plain: Api<Pod> = Api::namespaced(client.clone(), "plain");
    let p2 = plain
        .create(&PostParams::default(), &pod("p2", json!({"app": "a"})))
        .await
        .unwrap();
    assert!(!p2.metadata.labels.unwrap().contains_key(MUTATED));
    let p3 = injected
        .create(&PostParams::default(), &pod("p3", json!({"kubesim.test/skip": "yes"})))
        .await
        .unwrap();
    assert!(!p3.metadata.labels.unwrap().contains_key(MUTATED));
    assert_eq!(
        hook.requests("/mutate").len(),
        1,
        "unselected objects never reach the webhook"
    );

    // Warnings come back as Warning headers.
    let (status, body, warnings) = create(
        &client,
        "/api/v1/namespaces/injected/pods",
        serde_json::to_value(pod("p4", json!({}))).unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(labels_of(&body)[MUTATED], "true");
    assert!(
        warnings.iter().any(|w| w.contains("mutated by the test webhook")),
        "warnings: {warnings:?}"
    );

    // The API server's own writes (controllers) are admitted too; a generateName object
    // reaches the webhook without a name, as with kube-apiserver.
    let pods = cluster.api.rt("", "pods").unwrap();
    let system = kubesim::api::User::system("system:kube-controller-manager");
    let obj = json!({"metadata": {"generateName": "web-", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "kubesim/echo"}]}});
    let (created, _) = cluster.api.create(&system, &pods, "injected", obj).await.unwrap();
    assert_eq!(labels_of(&created)[MUTATED], "true");
    assert!(created["metadata"]["name"].as_str().unwrap().starts_with("web-"));
    let last = hook.requests("/mutate").pop().unwrap();
    assert_eq!(last["userInfo"]["username"], "system:kube-controller-manager");
    assert!(
        last["name"].is_null() && last["object"]["metadata"]["name"].is_null(),
        "{last}"
    );
    assert_eq!(last["object"]["metadata"]["generateName"], "web-");
}

#[tokio::test]
async fn failure_policy_decides_when_the_webhook_is_down() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = client(&cluster).await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let url = format!("https://127.0.0.1:{}/mutate", dead.port());
    let ca = b64(&Ca::new("unused").unwrap().cert_pem);
    let fail = webhook(
        "fail.kubesim.test",
        json!({"url": url, "caBundle": ca}),
        "configmaps",
        json!({"objectSelector": {"matchLabels": {"policy": "fail"}}}),
    );
    let ignore = webhook(
        "ignore.kubesim.test",
        json!({"url": url, "caBundle": ca}),
        "configmaps",
        json!({"failurePolicy": "Ignore", "objectSelector": {"matchLabels": {"policy": "ignore"}}}),
    );
    configure(&client, "mutatingwebhookconfigurations", "down", vec![fail, ignore]).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let err = cms
        .create(
            &PostParams::default(),
            &config_map("refused", json!({"policy": "fail"})),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (500, "InternalError"));
    let expected = format!("Internal error occurred: failed calling webhook \"fail.kubesim.test\": failed to call webhook: Post \"{url}?timeout=5s\": dial tcp {dead}: connect: connection refused");
    assert_eq!(status.message, expected);
    assert!(
        cms.get_opt("refused").await.unwrap().is_none(),
        "a refused write is not stored"
    );

    let admitted = cms
        .create(
            &PostParams::default(),
            &config_map("admitted", json!({"policy": "ignore"})),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(admitted.metadata.labels).unwrap(),
        json!({"policy": "ignore"}),
        "admitted unchanged"
    );
}

#[tokio::test]
async fn a_wrong_ca_bundle_fails_the_call_like_kube_apiserver() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = client(&cluster).await;
    let hook = Webhook::start(handler()).await;
    let other_ca = b64(&Ca::new("someone-else").unwrap().cert_pem);
    let wrong = webhook(
        "strict.kubesim.test",
        json!({"url": hook.url("/mutate"), "caBundle": other_ca}),
        "configmaps",
        json!({}),
    );
    configure(&client, "mutatingwebhookconfigurations", "strict", vec![wrong]).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let err = cms
        .create(&PostParams::default(), &config_map("c1", json!({})))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 500);
    assert!(
        status.message.starts_with(
            "Internal error occurred: failed calling webhook \"strict.kubesim.test\": failed to call webhook: Post \""
        ),
        "{}",
        status.message
    );
    assert!(
        status
            .message
            .ends_with("tls: failed to verify certificate: x509: certificate signed by unknown authority"),
        "{}",
        status.message
    );
    assert!(
        hook.requests("/mutate").is_empty(),
        "no request may reach a server the caBundle does not vouch for"
    );

    // The same webhook with its own CA works.
    let config: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration"),
            "mutatingwebhookconfigurations",
        ),
    );
    let patch = json!({"webhooks": [webhook("strict.kubesim.test", json!({"url": hook.url("/mutate"), "caBundle": hook.ca_bundle()}), "configmaps", json!({}))]});
    config
        .patch(
            "strict",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let c2 = cms
        .create(&PostParams::default(), &config_map("c2", json!({})))
        .await
        .unwrap();
    assert_eq!(
        c2.metadata.labels.unwrap().get(MUTATED).map(String::as_str),
        Some("true")
    );
}

#[tokio::test]
async fn validating_webhooks_deny_warn_and_see_updates() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = client(&cluster).await;
    let hook = Webhook::start(handler()).await;
    let cc = |path: &str| json!({"url": hook.url(path), "caBundle": hook.ca_bundle()});
    let deny = webhook(
        "deny.kubesim.test",
        cc("/deny"),
        "configmaps",
        json!({"objectSelector": {"matchLabels": {"verdict": "deny"}}}),
    );
    let warn = webhook(
        "warn.kubesim.test",
        cc("/validate"),
        "configmaps",
        json!({"objectSelector": {"matchLabels": {"verdict": "warn"}}}),
    );
    configure(&client, "validatingwebhookconfigurations", "checks", vec![deny, warn]).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let err = cms
        .create(&PostParams::default(), &config_map("no", json!({"verdict": "deny"})))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "admission webhook \"deny.kubesim.test\" denied the request: verdict=deny is refused"
    );

    let obj = serde_json::to_value(config_map("yes", json!({"verdict": "warn"}))).unwrap();
    let (code, body, warnings) = create(&client, "/api/v1/namespaces/default/configmaps", obj).await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("validated CREATE"), "{warnings:?}");

    let mut cm = cms.get("yes").await.unwrap();
    cm.data = Some([("k".to_owned(), "changed".to_owned())].into());
    cms.replace("yes", &PostParams::default(), &cm).await.unwrap();
    let update = hook.requests("/validate").pop().unwrap();
    assert_eq!(update["operation"], "UPDATE");
    assert_eq!(update["options"]["kind"], "UpdateOptions");
    assert_eq!(
        (
            update["oldObject"]["data"]["k"].as_str(),
            update["object"]["data"]["k"].as_str()
        ),
        (Some("v"), Some("changed"))
    );
}

#[tokio::test]
async fn if_needed_webhooks_run_again_after_a_later_change() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = client(&cluster).await;
    let hook = Webhook::start(handler()).await;
    let cc = |path: &str| json!({"url": hook.url(path), "caBundle": hook.ca_bundle()});
    // Configurations run in name order: "a-…" records the label "b-…" adds afterwards.
    let first = webhook(
        "first.kubesim.test",
        cc("/record-label"),
        "configmaps",
        json!({"reinvocationPolicy": "IfNeeded"}),
    );
    configure(&client, "mutatingwebhookconfigurations", "a-record", vec![first]).await;
    configure(
        &client,
        "mutatingwebhookconfigurations",
        "b-label",
        vec![webhook("second.kubesim.test", cc("/mutate"), "configmaps", json!({}))],
    )
    .await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());

    let cm = cms
        .create(&PostParams::default(), &config_map("again", json!({})))
        .await
        .unwrap();
    let annotations = cm.metadata.annotations.unwrap();
    assert_eq!(
        annotations.get("kubesim.test/saw-label").map(String::as_str),
        Some("true"),
        "the reinvocation saw the later label"
    );
    assert_eq!(
        hook.requests("/record-label").len(),
        2,
        "called once, then reinvoked once"
    );
    assert_eq!(hook.requests("/mutate").len(), 1);
}

#[tokio::test]
async fn dry_run_requests_are_admitted_flagged_and_refused_by_webhooks_with_side_effects() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = client(&cluster).await;
    let hook = Webhook::start(handler()).await;
    let cc = |path: &str| json!({"url": hook.url(path), "caBundle": hook.ca_bundle()});
    configure(
        &client,
        "mutatingwebhookconfigurations",
        "mutate",
        vec![webhook("mutate.kubesim.test", cc("/mutate"), "configmaps", json!({}))],
    )
    .await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };

    // The webhook mutates the would-be object and is told nothing will be stored.
    let answer = cms.create(&dry, &config_map("dry", json!({}))).await.unwrap();
    let labels = answer.metadata.labels.unwrap();
    assert_eq!(labels.get(MUTATED).map(String::as_str), Some("true"));
    let review = hook.requests("/mutate").pop().unwrap();
    assert_eq!(review["dryRun"], true);
    assert_eq!(review["options"]["dryRun"], json!(["All"]));
    assert!(
        cms.get_opt("dry").await.unwrap().is_none(),
        "a dry run stored the object"
    );

    // A webhook that may have side effects cannot take part in a dry run: the request
    // is refused (whatever the failure policy), the webhook is not called.
    let effects = webhook(
        "effects.kubesim.test",
        cc("/validate"),
        "configmaps",
        json!({"sideEffects": "Some", "failurePolicy": "Ignore"}),
    );
    configure(&client, "validatingwebhookconfigurations", "effects", vec![effects]).await;
    let err = cms.create(&dry, &config_map("dry", json!({}))).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!((status.code, status.reason.as_str()), (400, "BadRequest"));
    assert!(
        status
            .message
            .starts_with("admission webhook \"effects.kubesim.test\" does not support dry run"),
        "{}",
        status.message
    );
    assert!(hook.requests("/validate").is_empty());
    // Real writes still go through it.
    cms.create(&PostParams::default(), &config_map("real", json!({})))
        .await
        .unwrap();
    assert_eq!(hook.requests("/validate").len(), 1);
    assert_eq!(hook.requests("/validate")[0]["dryRun"], false);
}

#[tokio::test]
async fn a_webhook_that_does_not_answer_in_time_fails_after_timeout_seconds() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = client(&cluster).await;
    let hook = Webhook::start(handler()).await;
    let slow = webhook(
        "slow.kubesim.test",
        json!({"url": hook.url("/hang"), "caBundle": hook.ca_bundle()}),
        "configmaps",
        json!({"timeoutSeconds": 1}),
    );
    configure(&client, "mutatingwebhookconfigurations", "slow", vec![slow]).await;
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let started = std::time::Instant::now();
    let err = cms
        .create(&PostParams::default(), &config_map("late", json!({})))
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    let expected = format!("Internal error occurred: failed calling webhook \"slow.kubesim.test\": failed to call webhook: Post \"{}?timeout=1s\": context deadline exceeded", hook.url("/hang"));
    assert_eq!((status.code, status.message.as_str()), (500, expected.as_str()));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(900) && elapsed < std::time::Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn status_subresource_writes_go_to_webhooks_that_ask_for_them() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = client(&cluster).await;
    let hook = Webhook::start(handler()).await;
    let cc = json!({"url": hook.url("/deny"), "caBundle": hook.ca_bundle()});
    let status_only = webhook(
        "status.kubesim.test",
        cc,
        "pods/status",
        json!({"objectSelector": {"matchLabels": {"verdict": "deny"}}}),
    );
    configure(
        &client,
        "validatingwebhookconfigurations",
        "pod-status",
        vec![status_only],
    )
    .await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("s1", json!({"verdict": "deny"})))
        .await
        .unwrap();
    assert!(
        hook.requests("/deny").is_empty(),
        "a `pods/status` rule does not cover the pod itself"
    );

    let patch = json!({"status": {"message": "from the test"}});
    let err = pods
        .patch_status(
            "s1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err:?}")
    };
    assert_eq!(status.code, 403, "{}", status.message);
    let review = hook.requests("/deny").pop().unwrap();
    assert_eq!(
        (review["operation"].as_str(), review["subResource"].as_str()),
        (Some("UPDATE"), Some("status"))
    );
    assert_eq!(review["object"]["status"]["message"], "from the test");
}

#[tokio::test]
async fn pods_a_replicaset_creates_are_mutated() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let client = client(&cluster).await;
    let hook = Webhook::start(handler()).await;
    let cc = json!({"url": hook.url("/mutate"), "caBundle": hook.ca_bundle()});
    let rule =
        json!({"rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}]});
    configure(
        &client,
        "mutatingwebhookconfigurations",
        "rs-pods",
        vec![webhook("pods.kubesim.test", cc, "pods", rule)],
    )
    .await;
    let template = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "kubesim/echo"}]}});
    let rs = json!({"metadata": {"name": "web"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template}});
    create_ok(&client, "/apis/apps/v1/namespaces/default/replicasets", rs).await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let pod = loop {
        let list = pods
            .list(&kube::api::ListParams::default().labels("app=web"))
            .await
            .unwrap();
        if let Some(pod) = list.items.into_iter().next() {
            break pod;
        }
        assert!(std::time::Instant::now() < deadline, "the ReplicaSet made no pod");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        pod.metadata.labels.unwrap().get(MUTATED).map(String::as_str),
        Some("true")
    );
    let review = hook.requests("/mutate").pop().unwrap();
    assert!(
        review["name"].is_null(),
        "the controller's pod has only a generateName at admission: {review}"
    );
    assert_eq!(review["object"]["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
}
