//! kubesim: a Kubernetes API emulator and pod runner for shunt's tests and demo.
//!
//! [`Cluster::start`] runs an HTTPS API server (client-certificate and service-account
//! token authentication, RBAC, discovery, CRUD/patch/watch with resourceVersions,
//! CRDs, admission webhooks, API aggregation) in-process; the `kubesim` binary runs the
//! same as `kubesim up`. Real binaries (kubectl, kube-rs clients, shunt's components)
//! talk to it unchanged through the kubeconfigs it writes.
//!
//! Module map: [`store`] objects and the event log; [`api`] API semantics; [`server`]
//! HTTP front; [`resources`] served types; [`auth`] authentication and RBAC;
//! [`admission`] webhooks; [`aggregator`] aggregated APIs; [`pki`] certificates;
//! [`controllers`] Deployments, ReplicaSets, StatefulSets, DaemonSets, Endpoints;
//! [`kubelet`] pods as local processes (images, env, volumes, in-cluster credentials,
//! probes, logs);
//! [`network`] pod addresses (loopback or network namespaces) and Service balancers.

pub mod admission;
pub mod aggregator;
pub mod api;
pub mod auth;
pub mod controllers;
pub mod defaults;
pub mod kubelet;
pub mod network;
pub mod patch;
pub mod pki;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
pub mod util;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use api::{Api, User};

/// How pods get their network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Network {
    /// Each pod on its own `127.0.0.x` address (no root needed).
    #[default]
    Loopback,
    /// Each pod in its own network namespace with a veth (root).
    Netns,
}

/// Options of a cluster.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Pod networking.
    pub network: Network,
    /// Image registry: image name without tag → argv prefix (besides the built-in
    /// `kubesim/echo`); see [`kubelet::images`].
    pub images: std::collections::BTreeMap<String, Vec<String>>,
}

/// A running cluster. Everything it started stops when it is dropped.
pub struct Cluster {
    /// The API state (for in-process inspection in tests).
    pub api: Arc<Api>,
    /// The API server's address.
    pub addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    kubelet: Arc<kubelet::Kubelet>,
    net: Arc<network::PodNetwork>,
}

impl Cluster {
    /// Starts a cluster.
    pub async fn start(options: Options) -> anyhow::Result<Cluster> {
        let net = Arc::new(
            network::PodNetwork::start(options.network)
                .map_err(|e| anyhow::anyhow!("cannot set up the {:?} pod network: {e}", options.network))?,
        );
        // Netns mode: the API server listens on the bridge, reachable from pods too.
        let host: IpAddr = net.api_host();
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let ips: Vec<IpAddr> = if host == loopback {
            vec![host]
        } else {
            vec![loopback, host]
        };
        let pki = pki::Pki::new(&ips)?;
        let api = Api::new(pki.clone(), net.service_ips());
        let listener = TcpListener::bind(SocketAddr::new(host, 0)).await?;
        let addr = listener.local_addr()?;
        bootstrap(&api).await?;
        let tls = server_tls(&pki)?;
        let kubelet = kubelet::Kubelet::new(
            api.clone(),
            net.clone(),
            kubelet::images::Images::new(options.images),
            addr,
        )?;
        let _ = api.pod_logs.set(kubelet.logs.clone());
        let tasks = vec![
            tokio::spawn(server::serve(api.clone(), listener, tls)),
            tokio::spawn(controllers::run(api.clone())),
            tokio::spawn(kubelet.clone().run()),
            tokio::spawn(network::balancer::run(api.clone(), net.clone())),
            aggregator::spawn_availability(api.clone()),
        ];
        Ok(Cluster {
            api,
            addr,
            tasks,
            kubelet,
            net,
        })
    }

    /// Stops the cluster gracefully: pods get SIGTERM and up to 5 s before SIGKILL, then
    /// every task stops and the pod network is removed. Dropping the cluster does the
    /// same at once (SIGKILL).
    pub async fn shutdown(mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.tasks.clear();
        self.kubelet.shutdown(std::time::Duration::from_secs(5)).await;
        self.net.shutdown();
    }

    /// Takes the API server down (every client connection is cut, new ones are closed at
    /// once, as when kube-apiserver restarts) or brings it back. Controllers, the kubelet
    /// and running pods go on, as a node's kubelet keeps containers running.
    pub fn set_api_down(&self, down: bool) {
        self.api.outage.send_replace(down);
    }

    /// The API server URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// A kubeconfig (JSON, which kubectl and kube-rs read like YAML) for `user` in
    /// `groups`, authenticating with a client certificate.
    pub fn kubeconfig(&self, user: &str, groups: &[&str]) -> anyhow::Result<Value> {
        let cert = self.api.pki.ca.client(user, groups)?;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        Ok(json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kubesim", "cluster": {"server": self.url(), "certificate-authority-data": b64(&self.api.pki.ca.cert_pem)}}],
            "users": [{"name": user, "user": {"client-certificate-data": b64(&cert.cert_pem), "client-key-data": b64(&cert.key_pem)}}],
            "contexts": [{"name": "kubesim", "context": {"cluster": "kubesim", "user": user, "namespace": "default"}}],
            "current-context": "kubesim",
        }))
    }

    /// Writes [`Cluster::kubeconfig`] to `path` (mode 0600: it holds a private key).
    pub fn write_kubeconfig(&self, path: &Path, user: &str, groups: &[&str]) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let text = serde_json::to_string_pretty(&self.kubeconfig(user, groups)?)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(text.as_bytes())?;
        Ok(())
    }

    /// Issues a token of service account `namespace/service_account` for `audiences`,
    /// bound to `pod` if given, valid for `lifetime` — what TokenRequest issues, except
    /// that any lifetime goes: TokenRequest refuses less than 10 minutes, as
    /// kube-apiserver does, but tests need tokens that expire while they watch, or that
    /// have expired already (`Duration::ZERO`).
    pub fn issue_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: Option<&str>,
        audiences: &[&str],
        lifetime: std::time::Duration,
    ) -> anyhow::Result<String> {
        let uid = |resource: &str, name: &str| {
            let key = (String::new(), resource.to_owned());
            let obj = self.api.store.get(&key, namespace, name);
            let obj = obj.ok_or_else(|| anyhow::anyhow!("{resource} {namespace}/{name} does not exist"))?;
            Ok::<_, anyhow::Error>(obj["metadata"]["uid"].as_str().unwrap_or_default().to_owned())
        };
        let info = auth::tokens::TokenInfo {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            sa_uid: uid("serviceaccounts", service_account)?,
            audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            expires: std::time::SystemTime::now(),
            pod: pod
                .map(|p| Ok::<_, anyhow::Error>((p.to_owned(), uid("pods", p)?)))
                .transpose()?,
        };
        Ok(self.api.tokens.issue(info, lifetime).0)
    }

    /// The admin kubeconfig (`kubesim-admin` in `system:masters`).
    pub fn admin_kubeconfig(&self) -> anyhow::Result<Value> {
        self.kubeconfig("kubesim-admin", &["system:masters"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.kubelet.kill_all();
        self.net.shutdown();
    }
}

fn server_tls(pki: &pki::Pki) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca.cert_pem.as_bytes())?)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let certs = vec![CertificateDer::from_pem_slice(pki.server.cert_pem.as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(pki.server.key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The objects every cluster starts with.
async fn bootstrap(api: &Arc<Api>) -> anyhow::Result<()> {
    let system = User::system("system:apiserver");
    let namespaces = api.rt("", "namespaces")?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        api.create(&system, &namespaces, "", json!({"metadata": {"name": ns}}))
            .await?;
    }
    let nodes = api.rt("", "nodes")?;
    let node = json!({"metadata": {"name": defaults::NODE_NAME, "labels": {"kubernetes.io/hostname": defaults::NODE_NAME, "kubernetes.io/os": "linux"}}});
    api.create(&system, &nodes, "", node).await?;
    let configmaps = api.rt("", "configmaps")?;
    let auth = json!({
        "metadata": {"name": "extension-apiserver-authentication"},
        "data": {
            "client-ca-file": api.pki.ca.cert_pem,
            "requestheader-client-ca-file": api.pki.front_proxy_ca.cert_pem,
            "requestheader-allowed-names": json!([pki::FRONT_PROXY_CLIENT_NAME]).to_string(),
            "requestheader-username-headers": json!(["X-Remote-User"]).to_string(),
            "requestheader-group-headers": json!(["X-Remote-Group"]).to_string(),
            "requestheader-extra-headers-prefix": json!(["X-Remote-Extra-"]).to_string(),
        },
    });
    api.create(&system, &configmaps, "kube-system", auth).await?;
    auth::bootstrap::create_defaults(api).await?;
    Ok(())
}
