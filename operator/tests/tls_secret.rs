//! `--tls-secret` on kubesim: the operator (all of it, `run_with`) is not ready while the
//! Secret is missing and says why on `/readyz`; once the Secret exists its API server and
//! its hub serve the Secret's certificate (a client trusting only the Secret's CA verifies
//! them as `shunt-api.<ns>.svc` and `shunt-operator.<ns>.svc`); a replaced Secret is served
//! from the next handshake on, without a restart. RBAC `resourceNames` on the Secret is
//! all the watch needs.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use kubesim::{Cluster, Options};
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Value};
use shunt_operator::config::Args;
use shunt_operator::tls_secret::{self, ServingCert};
use shunt_operator::Listeners;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const NS: &str = "shunt-system";
const SECRET: &str = "shunt-tls";
const API_NAME: &str = "shunt-api.shunt-system.svc";
const HUB_NAME: &str = "shunt-operator.shunt-system.svc";

async fn client(cluster: &Cluster, user: &str, groups: &[&str]) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.kubeconfig(user, groups).unwrap()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

async fn create<K>(api: &Api<K>, object: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &serde_json::from_value(object).unwrap())
        .await
        .unwrap()
}

async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CA and a `kubernetes.io/tls` Secret with a certificate it signed for both names.
fn tls_secret(ca_name: &str) -> (String, Secret) {
    let ca = kubesim::pki::Ca::new(ca_name).unwrap();
    let pair = ca.server(&[API_NAME.into(), HUB_NAME.into()], &[]).unwrap();
    let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
    let secret = json!({"metadata": {"name": SECRET}, "type": "kubernetes.io/tls", "data": {
        "tls.crt": b64(&pair.cert_pem), "tls.key": b64(&pair.key_pem), "ca.crt": b64(&ca.cert_pem)}});
    (ca.cert_pem, serde_json::from_value(secret).unwrap())
}

/// A TLS handshake with `addr` as `name`, trusting only `ca_pem`, offering `alpn`: the
/// server's leaf certificate.
async fn handshake(addr: SocketAddr, ca_pem: &str, name: &str, alpn: &[u8]) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    // A listener nobody accepts on yet (the operator waits for its certificate) never answers.
    let connect = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp);
    let tls = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .map_err(|_| "no TLS answer within 2 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    assert_eq!(session.alpn_protocol(), Some(alpn));
    Ok(session.peer_certificates().unwrap()[0].to_vec())
}

/// GET `path` on the admin server: status and body.
async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("the admin server answers within 5 s")
        .unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_serves_the_secrets_certificate_on_both_listeners_and_swaps_it_without_restart() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let admin = client(&cluster, "kubesim-admin", &["system:masters"]).await;
    create(
        &Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone()),
        json!({"metadata": {"name": NS}}),
    )
    .await;
    let args = Args::try_parse_from([
        "shunt-operator",
        "--namespace",
        NS,
        "--tls-secret",
        SECRET,
        "--api-listen",
        "127.0.0.1:0",
        "--hub-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .unwrap();
    let listeners = Listeners::bind(&args).await.unwrap();
    let (api, hub, admin_addr) = (
        listeners.api.local_addr().unwrap(),
        listeners.hub.local_addr().unwrap(),
        listeners.admin.local_addr().unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(shunt_operator::run_with(args, admin.clone(), listeners, async {
        let _ = stopped.await;
    }));

    // No Secret yet: not ready, and /readyz says what is missing and who makes it.
    let reason = poll("/readyz to name the missing Secret", async || {
        let (status, body) = admin_get(admin_addr, "/readyz").await;
        (status == 503 && body.contains("not found")).then_some(body)
    })
    .await;
    assert!(
        reason.contains("Secret shunt-system/shunt-tls not found") && reason.contains("--cert-mode self"),
        "{reason}"
    );
    let (first_ca, first) = tls_secret("first");
    assert!(
        handshake(api, &first_ca, API_NAME, b"h2").await.is_err(),
        "nothing served yet"
    );

    // The Secret appears: ready, and both servers present its certificate.
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), NS);
    secrets.create(&PostParams::default(), &first).await.unwrap();
    poll("/readyz 200", async || {
        (admin_get(admin_addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let first_leaf = handshake(api, &first_ca, API_NAME, b"h2").await.unwrap();
    assert_eq!(
        handshake(api, &first_ca, API_NAME, b"http/1.1").await.unwrap(),
        first_leaf
    );
    assert_eq!(handshake(hub, &first_ca, HUB_NAME, b"h2").await.unwrap(), first_leaf);
    let (_, metrics) = admin_get(admin_addr, "/metrics").await;
    assert!(
        metrics.contains("shunt_operator_certificate_expiry_timestamp_seconds"),
        "{metrics}"
    );

    // Replaced (a rotation, or cert-manager renewing): served without a restart.
    let (second_ca, mut second) = tls_secret("second");
    second.metadata.resource_version = secrets.get(SECRET).await.unwrap().metadata.resource_version;
    secrets.replace(SECRET, &PostParams::default(), &second).await.unwrap();
    let second_leaf = poll("the new certificate served by the API server", async || {
        handshake(api, &second_ca, API_NAME, b"h2").await.ok()
    })
    .await;
    assert_ne!(second_leaf, first_leaf);
    assert_eq!(handshake(hub, &second_ca, HUB_NAME, b"h2").await.unwrap(), second_leaf);
    assert!(
        handshake(hub, &first_ca, HUB_NAME, b"h2").await.is_err(),
        "the old CA no longer verifies"
    );
    assert_eq!(admin_get(admin_addr, "/readyz").await.0, 200);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), operator)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn rbac_resource_names_on_the_secret_are_enough_for_the_watch() {
    let cluster = Cluster::start(Options::default()).await.unwrap();
    let admin = client(&cluster, "kubesim-admin", &["system:masters"]).await;
    create(
        &Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone()),
        json!({"metadata": {"name": NS}}),
    )
    .await;
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    create(
        &Api::<Role>::namespaced(admin.clone(), NS),
        json!({"metadata": {"name": "shunt-operator-tls"}, "rules": [{"apiGroups": [""], "resources": ["secrets"],
            "resourceNames": [SECRET], "verbs": ["get", "list", "watch"]}]}),
    )
    .await;
    create(
        &Api::<RoleBinding>::namespaced(admin.clone(), NS),
        json!({"metadata": {"name": "shunt-operator-tls"},
            "subjects": [{"kind": "User", "name": "shunt-operator", "apiGroup": "rbac.authorization.k8s.io"}],
            "roleRef": {"kind": "Role", "name": "shunt-operator-tls", "apiGroup": "rbac.authorization.k8s.io"}}),
    )
    .await;
    let operator = client(&cluster, "shunt-operator", &[]).await;
    let watch = |name: &str| {
        let cert = Arc::new(ServingCert::new(NS, name, Gauge::default()));
        let task = tokio::spawn(tls_secret::watch(
            operator.clone(),
            NS.into(),
            name.into(),
            cert.clone(),
        ));
        (cert, task)
    };

    let (cert, granted) = watch(SECRET);
    poll("the granted watch to report the Secret missing", async || {
        cert.not_ready().filter(|r| r.contains("not found"))
    })
    .await;
    let (_, secret) = tls_secret("ca");
    Api::<Secret>::namespaced(admin.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    poll("the certificate served", async || cert.current()).await;

    // Another name is not granted: the reason names the permission.
    let (other, refused) = watch("other-tls");
    let reason = poll("the refused watch to say why", async || {
        other.not_ready().filter(|r| r.contains("cannot watch"))
    })
    .await;
    assert!(
        reason.contains("needs get, list and watch on secrets in namespace shunt-system"),
        "{reason}"
    );
    granted.abort();
    refused.abort();
}
