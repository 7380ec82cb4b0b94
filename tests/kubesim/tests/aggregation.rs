//! API aggregation through kubesim, as through kube-aggregator: a test aggregated API
//! server (HTTPS, requiring the front-proxy client certificate from the CA published in
//! `kube-system/extension-apiserver-authentication`) registered by an APIService and a
//! Service + Endpoints; callers' identities arrive in `X-Remote-*`; RBAC is enforced by
//! kubesim first; a WebSocket passes both ways; `/apis` lists the group.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use kubesim::pki::{Ca, CertPair};
use kubesim::{Cluster, Options};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

const GROUP: &str = "demo.kubesim.test";

/// What the aggregated server saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    client_cn: String,
    headers: http::HeaderMap,
}

/// The test aggregated API server: TLS that requires a client certificate from the
/// front-proxy CA, and trusts the identity headers only from an allowed CN.
struct Aggregated {
    addr: SocketAddr,
    ca: Ca,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Aggregated {
    async fn start(front_proxy_ca_pem: &str, allowed_names: Vec<String>) -> Aggregated {
        let ca = Ca::new("test-aggregated-ca").unwrap();
        let cert = ca.server(&["agg.agg-system.svc".into()], &[]).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(server_tls(&cert, front_proxy_ca_pem));
        let (log, allowed) = (seen.clone(), Arc::new(allowed_names));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, log, allowed) = (acceptor.clone(), log.clone(), allowed.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let der = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
                    let cn = parsed
                        .subject()
                        .iter_common_name()
                        .next()
                        .unwrap()
                        .as_str()
                        .unwrap()
                        .to_owned();
                    let service = service_fn(move |req| answer(req, cn.clone(), allowed.clone(), log.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Aggregated { addr, ca, seen }
    }

    fn requests(&self, path_part: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path.contains(path_part))
            .cloned()
            .collect()
    }
}

fn server_tls(cert: &CertPair, client_ca_pem: &str) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(client_ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let certs = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

type Resp = hyper::Response<UnsyncBoxBody<Bytes, std::convert::Infallible>>;

fn json_response(status: u16, body: Value) -> Resp {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("content-type", http::HeaderValue::from_static("application/json"));
    resp
}

async fn answer(
    mut req: hyper::Request<Incoming>,
    cn: String,
    allowed: Arc<Vec<String>>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<Resp, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    log.lock().unwrap().push(Seen {
        path: path.clone(),
        client_cn: cn.clone(),
        headers: req.headers().clone(),
    });
    if !allowed.contains(&cn) {
        return Ok(json_response(
            401,
            json!({"message": format!("client certificate {cn} may not assert identities")}),
        ));
    }
    let header = |name: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    if let Some(key) = req.headers().get("sec-websocket-key").cloned() {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = upgrade.await.unwrap();
            let mut ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            ws.send(Message::text("hello from the aggregated server"))
                .await
                .unwrap();
            while let Some(Ok(msg)) = ws.next().await {
                match msg {
                    Message::Text(text) => ws.send(Message::text(text.to_uppercase())).await.unwrap(),
                    Message::Close(_) => break,
                    _ => {}
                }
            }
        });
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let resp = hyper::Response::builder()
            .status(101)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()).boxed_unsync())
            .unwrap();
        return Ok(resp);
    }
    if req.uri().query().is_some_and(|q| q.contains("watch=true")) {
        // One event now, then the stream stays open: only a streaming proxy delivers it.
        let event = json!({"type": "ADDED", "object": {"kind": "Thing", "apiVersion": format!("{GROUP}/v1"), "metadata": {"name": "t1"}}});
        let first = futures_util::stream::once(async move { Ok(Frame::data(Bytes::from(format!("{event}\n")))) });
        let body = StreamBody::new(first.chain(futures_util::stream::pending()));
        return Ok(hyper::Response::new(body.boxed_unsync()));
    }
    let body = if path == format!("/apis/{GROUP}/v1") {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/v1"), "resources": [
            {"name": "things", "singularName": "thing", "namespaced": true, "kind": "Thing", "verbs": ["get", "list"]},
        ]})
    } else {
        json!({
            "kind": "ThingList", "apiVersion": format!("{GROUP}/v1"), "metadata": {}, "items": [],
            "seen": {
                "user": header("x-remote-user"), "groups": header("x-remote-group"),
                "extra": header("x-remote-extra-scopes"), "authorization": header("authorization"),
            },
        })
    };
    Ok(json_response(200, body))
}

async fn client(cluster: &Cluster, user: &str, groups: &[&str]) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.kubeconfig(user, groups).unwrap()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    // kube-rs retries 503s with a backoff of up to minutes; this test wants to see them.
    config.default_retry = false;
    Client::try_from(config).unwrap()
}

async fn request(
    client: &Client,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(body.map_or_else(Vec::new, |b| b.to_string().into_bytes()).into())
        .unwrap();
    let resp = client.send(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes))),
    )
}

async fn create(client: &Client, path: &str, obj: Value) {
    let (status, body) = request(client, "POST", path, Some(obj), &[]).await;
    assert!(status < 300, "creating at {path} failed: {body}");
}

/// Registers the aggregated server as `v1.demo.kubesim.test` and waits until kubesim
/// reports it Available.
async fn register(admin: &Client, server: &Aggregated) {
    create(admin, "/api/v1/namespaces", json!({"metadata": {"name": "agg-system"}})).await;
    let port = server.addr.port();
    create(
        admin,
        "/api/v1/namespaces/agg-system/services",
        json!({"metadata": {"name": "agg"}, "spec": {"ports": [{"port": 443, "targetPort": port}]}}),
    )
    .await;
    let endpoints = json!({"metadata": {"name": "agg"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": port}]}]});
    create(admin, "/api/v1/namespaces/agg-system/endpoints", endpoints).await;
    let api_service = json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": format!("v1.{GROUP}")},
        "spec": {
            "group": GROUP, "version": "v1",
            "service": {"namespace": "agg-system", "name": "agg", "port": 443},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(&server.ca.cert_pem),
            "groupPriorityMinimum": 1000, "versionPriority": 15,
        },
    });
    create(admin, "/apis/apiregistration.k8s.io/v1/apiservices", api_service).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, svc) = request(
            admin,
            "GET",
            &format!("/apis/apiregistration.k8s.io/v1/apiservices/v1.{GROUP}"),
            None,
            &[],
        )
        .await;
        let available = svc["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Available")
            .cloned();
        if available.as_ref().is_some_and(|c| c["status"] == "True") {
            assert_eq!(available.unwrap()["reason"], "Passed");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the APIService never became Available: {}",
            svc["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup() -> (Cluster, Client, Aggregated) {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let admin = client(&cluster, "kubesim-admin", &["system:masters"]).await;
    // The aggregated server trusts what kube-apiserver publishes, like a real one does.
    let auth: kube::Api<ConfigMap> = kube::Api::namespaced(admin.clone(), "kube-system");
    let data = auth
        .get("extension-apiserver-authentication")
        .await
        .unwrap()
        .data
        .unwrap();
    let allowed: Vec<String> = serde_json::from_str(&data["requestheader-allowed-names"]).unwrap();
    let server = Aggregated::start(&data["requestheader-client-ca-file"], allowed).await;
    register(&admin, &server).await;
    // Readers of the aggregated resource: group "devs".
    let role = json!({"metadata": {"name": "things-reader"}, "rules": [{"apiGroups": [GROUP], "resources": ["things", "things/echo"], "verbs": ["get", "list", "watch"]}]});
    create(&admin, "/apis/rbac.authorization.k8s.io/v1/clusterroles", role).await;
    let binding = json!({
        "metadata": {"name": "devs-read-things"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "things-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "devs"}],
    });
    create(
        &admin,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        binding,
    )
    .await;
    (cluster, admin, server)
}

#[tokio::test]
async fn requests_arrive_with_the_callers_identity_and_the_front_proxy_certificate() {
    let (cluster, admin, server) = setup().await;
    let alice = client(&cluster, "alice", &["devs"]).await;
    let path = format!("/apis/{GROUP}/v1/namespaces/default/things");
    // Whatever identity headers or credentials the caller sends are not passed on.
    let forged = [
        ("x-remote-user", "mallory"),
        ("x-remote-group", "system:masters"),
        ("authorization", "Bearer not-for-the-backend"),
    ];
    let (status, body) = request(&alice, "GET", &path, None, &forged).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "ThingList");
    assert_eq!(body["seen"]["user"], json!(["alice"]));
    assert_eq!(body["seen"]["groups"], json!(["devs", "system:authenticated"]));
    assert_eq!(body["seen"]["authorization"], json!([]));
    let seen = server.requests("/things").pop().unwrap();
    assert_eq!(seen.client_cn, "front-proxy-client");
    assert_eq!(seen.headers.get("host").unwrap(), "agg.agg-system.svc:443");

    // A user without RBAC for the resource is refused by kubesim; the server never sees it.
    let before = server.requests("/things").len();
    let bob = client(&cluster, "bob", &[]).await;
    let (status, body) = request(&bob, "GET", &path, None, &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "Forbidden");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("User \"bob\" cannot list resource \"things\" in API group \"demo.kubesim.test\""),
        "{body}"
    );
    assert_eq!(server.requests("/things").len(), before);

    // Discovery: `/apis` lists the group, `/apis/{group}` is answered, `/apis/{group}/v1`
    // comes from the aggregated server.
    let (_, apis) = request(&admin, "GET", "/apis", None, &[]).await;
    let group = apis["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == GROUP)
        .cloned()
        .unwrap_or_else(|| panic!("{GROUP} not in /apis: {apis}"));
    assert_eq!(group["preferredVersion"]["groupVersion"], format!("{GROUP}/v1"));
    let (status, doc) = request(&alice, "GET", &format!("/apis/{GROUP}"), None, &[]).await;
    assert_eq!((status, doc["kind"].as_str()), (200, Some("APIGroup")), "{doc}");
    let (status, resources) = request(&alice, "GET", &format!("/apis/{GROUP}/v1"), None, &[]).await;
    assert_eq!(
        (status, resources["resources"][0]["name"].as_str()),
        (200, Some("things")),
        "{resources}"
    );
}

#[tokio::test]
async fn websocket_upgrades_pass_both_ways() {
    let (cluster, _admin, _server) = setup().await;
    // A WebSocket client with alice's client certificate, over HTTP/1.1.
    let kubeconfig = cluster.kubeconfig("alice", &["devs"]).unwrap();
    let b64 = |field: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(kubeconfig["users"][0]["user"][field].as_str().unwrap())
            .unwrap()
    };
    let pair = CertPair {
        cert_pem: String::from_utf8(b64("client-certificate-data")).unwrap(),
        key_pem: String::from_utf8(b64("client-key-data")).unwrap(),
    };
    let tls = kubesim::admission::client::tls_config(
        kubesim::admission::client::Trust::Roots(cluster.api.pki.ca.cert_pem.as_bytes()),
        Some(&pair),
    )
    .unwrap();
    let stream = kubesim::admission::client::connect(cluster.addr, "localhost", tls)
        .await
        .unwrap();
    let url = format!(
        "wss://localhost:{}/apis/{GROUP}/v1/namespaces/default/things/t1/echo",
        cluster.addr.port()
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), 101);

    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        Message::text("hello from the aggregated server"),
        "server → client"
    );
    for word in ["ping", "through kubesim"] {
        ws.send(Message::text(word)).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text(word.to_uppercase()), "client → server → client");
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn watches_stream_through_the_proxy() {
    let (cluster, _admin, _server) = setup().await;
    let alice = client(&cluster, "alice", &["devs"]).await;
    let req = http::Request::get(format!("/apis/{GROUP}/v1/namespaces/default/things?watch=true"))
        .body(Vec::new().into())
        .unwrap();
    let resp = alice.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event arrives while the watch is open");
    let data = frame.unwrap().unwrap().into_data().unwrap();
    let event: Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("t1"))
    );
}

#[tokio::test]
async fn unavailable_api_services_say_why_and_answer_503() {
    let (_cluster, admin, server) = setup().await;
    let apiservice = |group: &str, service: Value, tls: Value| {
        let mut spec = json!({"group": group, "version": "v1", "service": service, "groupPriorityMinimum": 100, "versionPriority": 10});
        for (k, v) in tls.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": format!("v1.{group}")}, "spec": spec})
    };
    let agg = json!({"namespace": "agg-system", "name": "agg", "port": 443});
    let wrong_ca =
        json!({"caBundle": base64::engine::general_purpose::STANDARD.encode(&Ca::new("other").unwrap().cert_pem)});
    let services = "/apis/apiregistration.k8s.io/v1/apiservices";
    create(
        &admin,
        services,
        apiservice(
            "missing.kubesim.test",
            json!({"namespace": "agg-system", "name": "nope", "port": 443}),
            json!({}),
        ),
    )
    .await;
    create(
        &admin,
        services,
        apiservice("wrongca.kubesim.test", agg.clone(), wrong_ca),
    )
    .await;
    let condition = |name: &'static str, reason: &'static str| {
        let admin = admin.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (_, svc) = request(&admin, "GET", &format!("{services}/{name}"), None, &[]).await;
                let c = svc["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Available")
                    .cloned();
                if let Some(c) = c.filter(|c| c["reason"] == reason) {
                    return c;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name} never got reason {reason}: {}",
                    svc["status"]
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let missing = condition("v1.missing.kubesim.test", "ServiceNotFound").await;
    assert_eq!(
        (missing["status"].as_str(), missing["message"].as_str()),
        (Some("False"), Some("service/nope in \"agg-system\" is not present"))
    );
    let wrong = condition("v1.wrongca.kubesim.test", "FailedDiscoveryCheck").await;
    assert!(
        wrong["message"]
            .as_str()
            .unwrap()
            .contains("x509: certificate signed by unknown authority"),
        "{wrong}"
    );
    let (status, body) = request(
        &admin,
        "GET",
        "/apis/missing.kubesim.test/v1/namespaces/default/things",
        None,
        &[],
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("ServiceUnavailable")),
        "{body}"
    );
    let before = server.requests("wrongca").len();

    // insecureSkipTLSVerify makes the same server acceptable.
    let patch = json!({"spec": {"caBundle": null, "insecureSkipTLSVerify": true}});
    let req = http::Request::patch(format!("{services}/v1.wrongca.kubesim.test"))
        .header("content-type", "application/merge-patch+json")
        .body(patch.to_string().into_bytes().into())
        .unwrap();
    assert_eq!(admin.send(req).await.unwrap().status(), 200);
    condition("v1.wrongca.kubesim.test", "Passed").await;
    assert!(
        server.requests("wrongca").len() > before,
        "the discovery probe reached the server"
    );
}
