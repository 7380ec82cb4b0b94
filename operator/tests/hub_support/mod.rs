//! Helpers of the hub tests: a kubesim cluster with pods and tokens, an rcgen CA, the
//! hub on loopback, the sidecar process, a CLI side on a duplex stream, a raw hub client.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use shunt_operator::hub::{self, HubConfig, HubState};
use shunt_operator::registry::{Registry, Session};
use shunt_operator::tunnel::{Body, Tunnels};
use shunt_proto::filter::Filter;
use shunt_proto::names::SIDECAR_TOKEN_AUDIENCE;
use shunt_proto::route::Mode;
use shunt_proto::session::{SessionPort, SessionSpec, SessionStatus};
use tokio::task::JoinHandle;

/// The `shunt-sidecar` binary next to this test's target directory.
pub fn sidecar_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/hub-<hash> → target/<profile>/shunt-sidecar
    let bin = exe.parent().and_then(Path::parent).unwrap().join("shunt-sidecar");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p shunt-sidecar` (same profile as the tests)",
        bin.display()
    );
    bin
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` (every 50 ms) until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("shunt-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A kubesim cluster with ServiceAccount `api` and three pods in `default`:
/// `api-0` (app=api, injected), `other-0` (app=other, injected), `web-0` (app=web, not injected).
pub struct TestCluster {
    pub cluster: kubesim::Cluster,
    pub client: kube::Client,
}

impl TestCluster {
    pub async fn start() -> TestCluster {
        let cluster = kubesim::Cluster::start(kubesim::Options::default()).await.unwrap();
        let kubeconfig: Kubeconfig = serde_json::from_value(cluster.admin_kubeconfig().unwrap()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let sa = serde_json::from_value(serde_json::json!({"metadata": {"name": "api"}})).unwrap();
        sas.create(&PostParams::default(), &sa).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        for (name, app, injected) in [
            ("api-0", "api", true),
            ("other-0", "other", true),
            ("web-0", "web", false),
        ] {
            let mut labels = serde_json::json!({"app": app});
            if injected {
                labels["shunt.dev/injected"] = "true".into();
            }
            let pod = serde_json::json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {"serviceAccountName": "api", "containers": [{"name": "app", "image": "kubesim/echo"}]},
            });
            pods.create(&PostParams::default(), &serde_json::from_value(pod).unwrap())
                .await
                .unwrap();
        }
        TestCluster { cluster, client }
    }

    /// A sidecar token of pod `default/api-0` that expires after `lifetime` (`ZERO`: already
    /// expired), issued directly by the test cluster.
    pub fn sidecar_token(&self, lifetime: Duration) -> String {
        self.cluster
            .issue_token("default", "api", Some("api-0"), &[SIDECAR_TOKEN_AUDIENCE], lifetime)
            .unwrap()
    }

    /// A token of ServiceAccount `api` bound to `pod`, for `audience`.
    pub async fn token(&self, pod: &str, audience: &str) -> String {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![audience.to_owned()],
                expiration_seconds: Some(600),
                bound_object_ref: Some(BoundObjectReference {
                    kind: Some("Pod".into()),
                    api_version: Some("v1".into()),
                    name: Some(pod.into()),
                    uid: None,
                }),
            },
            ..TokenRequest::default()
        };
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), "default");
        sas.create_token_request("api", &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
    }
}

/// A CA and the hub's certificate for `shunt-operator`.
pub struct Tls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Tls {
    pub fn new() -> Tls {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["shunt-operator".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        Tls {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Starts the hub on `127.0.0.1:0`.
pub async fn start_hub(
    tls: &Tls,
    registry: &Registry,
    tunnels: &Tunnels,
    client: &kube::Client,
    state: &HubState,
) -> (SocketAddr, JoinHandle<anyhow::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = HubConfig {
        listen: addr,
        cert_pem: tls.cert_pem.clone(),
        key_pem: tls.key_pem.clone(),
    };
    let task = tokio::spawn(hub::serve_on(
        listener,
        config,
        registry.clone(),
        tunnels.clone(),
        client.clone(),
        state.clone(),
    ));
    (addr, task)
}

/// `user`'s session `name` on `deployment/<app>` in `default` (the hub tests' namespace),
/// filtered on `x-shunt-user: <user>`.
pub fn hub_session(name: &str, user: &str, app: &str, port: u16, mode: Mode) -> Session {
    Session {
        namespace: "default".into(),
        name: name.into(),
        uid: name.into(),
        user: user.into(),
        groups: vec![],
        spec: SessionSpec {
            target: format!("deployment/{app}").parse().unwrap(),
            mode,
            filter: Some(Filter::parse(&format!("x-shunt-user: {user}")).unwrap()),
            ports: vec![SessionPort { port }],
        },
        selector: BTreeMap::from([("app".to_owned(), app.to_owned())]),
        created: SystemTime::now(),
        status: SessionStatus::default(),
    }
}

/// The sidecar process; its log is printed if the test fails.
pub struct Sidecar {
    child: Child,
    log: PathBuf,
}

impl Sidecar {
    pub fn spawn(bin: &Path, env: &[(&str, &str)]) -> Sidecar {
        let log = std::env::temp_dir().join(format!("shunt-hub-sidecar-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .envs(env.iter().copied())
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap();
        Sidecar { child, log }
    }

    /// The sidecar of pod `default/api-0` in port-takeover mode on loopback, for the app on
    /// `app_port`, with the hub at `hub_addr` as its source; `extra` adds variables. Returns
    /// it with its listen and admin ports.
    pub fn takeover(
        bin: &Path,
        app_port: u16,
        hub_addr: SocketAddr,
        ca_file: &Path,
        token_file: &Path,
        extra: &[(&str, &str)],
    ) -> (Sidecar, u16, u16) {
        let (listen, admin_port) = (free_port(), free_port());
        let (app_port, listen_s, admin_s, hub_s) = (
            app_port.to_string(),
            listen.to_string(),
            admin_port.to_string(),
            hub_addr.to_string(),
        );
        let mut env = vec![
            ("SHUNT_REDIRECT", "port-takeover"),
            ("SHUNT_APP_PORTS", app_port.as_str()),
            ("SHUNT_LISTEN_PORT", listen_s.as_str()),
            ("SHUNT_ADMIN_PORT", admin_s.as_str()),
            ("SHUNT_POD_IP", "127.0.0.1"),
            ("SHUNT_OPERATOR_ADDR", hub_s.as_str()),
            ("SHUNT_OPERATOR_CA", ca_file.to_str().unwrap()),
            ("SHUNT_TOKEN_FILE", token_file.to_str().unwrap()),
            ("SHUNT_POD_NAMESPACE", "default"),
            ("SHUNT_POD_NAME", "api-0"),
            ("SHUNT_LOG_FORMAT", "text"),
        ];
        env.extend_from_slice(extra);
        (Sidecar::spawn(bin, &env), listen, admin_port)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- sidecar log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The developer's side of a session: an HTTP/2 server on a duplex stream, registered in
/// `Tunnels` like the CLI's inbound tunnel. Answers `{"served_by": "cli-<name>"}`.
pub struct Cli {
    last: Arc<Mutex<serde_json::Value>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Cli {
    pub async fn register(tunnels: &Tunnels, namespace: &str, name: &str) -> Cli {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let last = Arc::new(Mutex::new(serde_json::Value::Null));
        let (seen, who) = (last.clone(), format!("cli-{name}"));
        let service = service_fn(move |req: Request<Incoming>| {
            let (seen, who) = (seen.clone(), who.clone());
            async move {
                let header = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
                *seen.lock().unwrap() = serde_json::json!({
                    "session": header("shunt-session"),
                    "pod": header("shunt-pod"),
                    "path": req.uri().path(),
                });
                let body = serde_json::json!({"served_by": who}).to_string();
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body + "\n"))))
            }
        });
        let server = tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server_io), service)
                .await;
        });
        let (sender, conn) =
            hyper::client::conn::http2::handshake::<_, _, Body>(TokioExecutor::new(), TokioIo::new(client_io))
                .await
                .unwrap();
        let client = tokio::spawn(async move {
            let _ = conn.await;
        });
        tunnels.register(namespace, name, sender);
        Cli {
            last,
            tasks: vec![server, client],
        }
    }

    pub fn last_request(&self) -> serde_json::Value {
        self.last.lock().unwrap().clone()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Runs curl; (status, body).
pub async fn curl_status(url: &str, args: &[&str]) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url])
        .args(args)
        .output()
        .await
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// One GET with an optional header; who served it (None when it failed).
pub async fn who(url: &str, header: Option<&str>) -> Option<String> {
    let args: Vec<&str> = header.map(|h| vec!["-H", h]).unwrap_or_default();
    let (status, body) = curl_status(url, &args).await;
    if status != 200 {
        return None;
    }
    let doc: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    doc["served_by"].as_str().map(str::to_owned)
}

/// How many routes the sidecar's admin `/routes` lists.
pub async fn routes_installed(admin: &str) -> Option<usize> {
    let (status, body) = curl_status(&format!("http://{admin}/routes"), &[]).await;
    let doc: serde_json::Value = serde_json::from_str(&body).ok()?;
    (status == 200).then(|| doc["routes"].as_array().map_or(0, Vec::len))
}

/// A raw HTTP/2-over-TLS connection to the hub, as a sidecar would open it.
pub struct HubConn {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
}

pub struct RouteStream(Incoming, Vec<u8>);

impl RouteStream {
    /// The next ndjson line (5 s at most).
    pub async fn next_line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(end) = self.1.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.1.drain(..=end).collect();
                    return String::from_utf8(line).unwrap();
                }
                let frame = self.0.frame().await.expect("the stream stays open").unwrap();
                if let Ok(data) = frame.into_data() {
                    self.1.extend_from_slice(&data);
                }
            }
        })
        .await
        .expect("a routes document within 5 s")
    }

    /// Reads until the stream ends, for at most `timeout`: what it sent last (`None` if
    /// it is still open). A reset stream counts as ended.
    pub async fn ends_within(&mut self, timeout: Duration) -> Option<String> {
        tokio::time::timeout(timeout, async {
            loop {
                match self.0.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.1.extend_from_slice(&data);
                        }
                    }
                    Some(Err(_)) | None => return String::from_utf8(std::mem::take(&mut self.1)).unwrap(),
                }
            }
        })
        .await
        .ok()
    }
}

impl HubConn {
    pub async fn connect(addr: SocketAddr, ca_pem: &str) -> HubConn {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("shunt-operator").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        HubConn { sender }
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Response<Incoming> {
        self.sender.clone().send_request(req).await.unwrap()
    }

    fn routes_request(token: Option<&str>, pod: &str) -> Request<Full<Bytes>> {
        let mut req = Request::get("https://shunt-operator/hub/v1/routes").header("shunt-pod", pod);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req.body(Full::default()).unwrap()
    }

    /// A routes watch that is expected to be refused: (status, body).
    pub async fn get_routes(&self, token: Option<&str>, pod: &str) -> (u16, String) {
        let resp = self.send(Self::routes_request(token, pod)).await;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// An accepted routes watch.
    pub async fn open_routes(&self, token: &str, pod: &str) -> RouteStream {
        let resp = self.send(Self::routes_request(Some(token), pod)).await;
        assert_eq!(resp.status(), 200);
        RouteStream(resp.into_body(), Vec::new())
    }

    pub async fn relay_response(&self, session: &str, pod: &str) -> Response<Incoming> {
        let req = Request::post("http://app/stolen")
            .header("shunt-session", session)
            .header("shunt-pod", pod)
            .body(Full::new(Bytes::from_static(b"body")))
            .unwrap();
        self.send(req).await
    }

    pub async fn relay(&self, session: &str, pod: &str) -> u16 {
        self.relay_response(session, pod).await.status().as_u16()
    }
}
