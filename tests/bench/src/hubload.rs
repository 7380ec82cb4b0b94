//! `shunt-bench session`'s memory row: the operator hub with many connected sidecars,
//! simulated. Creates pod objects in namespace `bench` that kubesim's kubelet does not run
//! (`nodeName` of another node), labelled `shunt.dev/injected=true`, and for each a
//! TokenRequest bound to it (audience `shunt.dev/sidecar`); then opens one TLS + HTTP/2
//! connection per pod to the hub and keeps its routes watch (`GET /hub/v1/routes`) open,
//! as a sidecar does. The clients run in a child process (this executable re-run as
//! [`CLIENTS_COMMAND`]); the figure is the operator process's VmRSS growth while they
//! connect.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde_json::json;
use shunt_cli::demo::stack::{create, poll, request, Stack};
use tokio::io::AsyncBufReadExt as _;

const NS: &str = "bench";
const SA: &str = "bench-sidecar";

/// The memory with `count` simulated sidecars connected.
pub async fn measure(stack: &Stack, count: usize) -> Result<Memory> {
    let admin = &stack.admin;
    create(admin, "/api/v1/namespaces", json!({"metadata": {"name": NS}})).await?;
    create(
        admin,
        &format!("/api/v1/namespaces/{NS}/serviceaccounts"),
        json!({"metadata": {"name": SA}}),
    )
    .await?;
    let mut sidecars = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("sim-{i}");
        let pod = json!({"metadata": {"name": name, "labels": {shunt_proto::names::LABEL_INJECTED: "true"}},
            "spec": {"nodeName": "nowhere", "serviceAccountName": SA,
                "containers": [{"name": "app", "image": "bench/not-run"}]}});
        let (status, pod) = request(admin, "POST", &format!("/api/v1/namespaces/{NS}/pods"), Some(&pod)).await?;
        if status >= 300 {
            bail!("creating pod {name} failed ({status}): {pod}");
        }
        let uid = pod["metadata"]["uid"].as_str().context("the created pod has no uid")?;
        let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "audiences": [shunt_proto::names::SIDECAR_TOKEN_AUDIENCE], "expirationSeconds": 3600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": name, "uid": uid}}});
        let path = format!("/api/v1/namespaces/{NS}/serviceaccounts/{SA}/token");
        let (status, token) = request(admin, "POST", &path, Some(&review)).await?;
        let token = token["status"]["token"].as_str().map(str::to_owned);
        match token {
            Some(token) if status < 300 => sidecars.push((name, token)),
            _ => bail!("TokenRequest for pod {name} failed ({status})"),
        }
    }
    // The CA the sidecars trust for the hub, kept by the webhook in Secret shunt-tls.
    let ca = stack.dir().join("operator-ca.crt");
    std::fs::write(&ca, stack.hub_ca_pem().await?).with_context(|| format!("cannot write {}", ca.display()))?;
    let tokens = stack.dir().join("bench-sidecar-tokens");
    let lines: String = sidecars
        .iter()
        .map(|(name, token)| format!("{name} {token}\n"))
        .collect();
    std::fs::write(&tokens, lines).with_context(|| format!("cannot write {}", tokens.display()))?;
    let baseline = stack.connected_sidecars().await.unwrap_or(0);
    let operator = stack.operator_pid().await?;
    let before = crate::procfs::status_kib(operator, "VmRSS")?;
    let mut clients = tokio::process::Command::new(std::env::current_exe()?)
        .arg(CLIENTS_COMMAND)
        .arg(stack.hub.to_string())
        .arg(&ca)
        .arg(&tokens)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot re-run this executable for the simulated sidecars")?;
    let stdout = clients.stdout.take().context("no stdout of the simulated sidecars")?;
    let mut line = String::new();
    tokio::io::BufReader::new(stdout).read_line(&mut line).await?;
    let clients_rss: u64 = line
        .trim()
        .strip_prefix("connected ")
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("the simulated sidecars failed (said {line:?})"))?;
    let want = baseline + u64::try_from(count)?;
    poll(
        &format!("{want} connected sidecars"),
        Duration::from_secs(60),
        async || (stack.connected_sidecars().await? >= want).then_some(()),
    )
    .await?;
    let after = crate::procfs::status_kib(operator, "VmRSS")?;
    drop(clients);
    Ok(Memory {
        before,
        after,
        clients: clients_rss,
    })
}

/// VmRSS in KiB: the operator's process before and after the sidecars connected, and the
/// simulated sidecars' own process.
pub struct Memory {
    /// The operator before.
    pub before: u64,
    /// The operator with every simulated sidecar connected.
    pub after: u64,
    /// The simulated sidecars' process.
    pub clients: u64,
}

/// Hidden subcommand: the simulated sidecars (`__hub-clients HUB CA TOKENS`); prints
/// `connected <its VmRSS KiB>` once all are connected, then holds them until stdin closes.
pub const CLIENTS_COMMAND: &str = "__hub-clients";

/// Runs [`CLIENTS_COMMAND`].
pub fn clients_main(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut arg = |what: &str| {
        args.next()
            .with_context(|| format!("{CLIENTS_COMMAND}: missing {what}"))
    };
    let (hub, ca, tokens) = (
        arg("HUB")?.parse::<SocketAddr>()?,
        PathBuf::from(arg("CA")?),
        arg("TOKENS")?,
    );
    let tokens = std::fs::read_to_string(&tokens).with_context(|| format!("cannot read {tokens}"))?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(async {
            let tls = tls_config(&ca)?;
            let mut held = Vec::new();
            for line in tokens.lines() {
                let (pod, token) = line.split_once(' ').context("a token line is not `pod token`")?;
                held.push(
                    connect(hub, tls.clone(), pod, token)
                        .await
                        .with_context(|| format!("sidecar {pod}"))?,
                );
            }
            println!("connected {}", crate::procfs::status_kib(std::process::id(), "VmRSS")?);
            tokio::task::spawn_blocking(|| std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()))
                .await??;
            drop(held);
            Ok(())
        })
}

fn tls_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let pem = std::fs::read(ca).with_context(|| format!("cannot read the operator's CA {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.context("the operator's CA is not PEM")?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A sidecar's routes watch, open: the connection task and the streaming answer.
struct Watch {
    _sender: hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    _conn: tokio::task::JoinHandle<()>,
    _answer: hyper::Response<hyper::body::Incoming>,
}

async fn connect(hub: SocketAddr, tls: Arc<rustls::ClientConfig>, pod: &str, token: &str) -> Result<Watch> {
    let tcp = tokio::net::TcpStream::connect(hub).await?;
    let server = rustls_pki_types::ServerName::try_from("shunt-operator.shunt-system.svc")?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(server, tcp).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(stream)).await?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(format!("https://shunt-operator{}", shunt_proto::hub::ROUTES_PATH))
        .header("authorization", format!("Bearer {token}"))
        .header(shunt_proto::hub::HEADER_POD, format!("{NS}/{pod}"))
        .header(shunt_proto::hub::HEADER_PROTOCOL, shunt_proto::hub::PROTOCOL_VERSION)
        .body(Empty::<Bytes>::new())?;
    let answer = sender.send_request(req).await?;
    if answer.status() != 200 {
        bail!("the hub answered {}", answer.status());
    }
    Ok(Watch {
        _sender: sender,
        _conn: conn,
        _answer: answer,
    })
}
