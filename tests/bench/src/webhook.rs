//! `shunt-bench webhook`: AdmissionReviews per second and p50/p99 latency of the release
//! `shunt-webhook` over TLS with keep-alive (HTTP/1.1, one connection per client, closed
//! loop), with 1 and 32 concurrent clients, against a trivial axum echo handler behind
//! the very same TLS and HTTP serving code (`shunt_webhook::server::serve`), measured in
//! the same run. Both servers run as their own processes (the echo one is this binary
//! re-executed); the clients run here. No root needed.
//!
//! ```text
//! cargo build --release -p shunt-webhook -p shunt-bench && target/release/shunt-bench webhook
//! ```

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Hidden subcommand: the echo baseline server (`__webhook-echo CERT KEY`).
pub const ECHO_COMMAND: &str = "__webhook-echo";
const SERVER_NAME: &str = "shunt-webhook.shunt-system.svc";
const CLIENTS: [usize; 2] = [1, 32];
const WARM_UP: Duration = Duration::from_secs(1);
/// Goals of the webhook issue, at 32 clients.
const GOAL_RPS: f64 = 10_000.0;
const GOAL_P99: Duration = Duration::from_millis(2);

/// Runs the benchmark; `args` are the arguments after `webhook`.
pub fn main(args: impl Iterator<Item = String>) -> Result<()> {
    let mut duration = 5u64;
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                duration = args
                    .next()
                    .context("--duration needs seconds")?
                    .parse()
                    .context("--duration: seconds")?;
            }
            "-h" | "--help" => {
                println!("Usage: shunt-bench webhook [--duration SECS]   (measured seconds per row, after 1 s warm-up) [default: 5]");
                return Ok(());
            }
            other => bail!("unknown option {other:?}; usage: shunt-bench webhook [--duration SECS]"),
        }
    }
    if duration == 0 {
        bail!("--duration must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("shunt-bench-webhook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run(&dir, Duration::from_secs(duration));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(dir: &Path, duration: Duration) -> Result<()> {
    let now = shunt_webhook::certs::unix_now();
    let material = shunt_webhook::certs::issue::issue(&[SERVER_NAME.to_owned()], now, 86_400)?;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, &material.cert_pem)?;
    std::fs::write(&key, &material.key_pem)?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let webhook_bin = exe.with_file_name("shunt-webhook");
    if !webhook_bin.is_file() {
        bail!(
            "{} not found; build it first: cargo build --release -p shunt-webhook -p shunt-bench",
            webhook_bin.display()
        );
    }
    let webhook = Server::start(
        Command::new(&webhook_bin)
            .args([
                "--cert-mode",
                "files",
                "--listen",
                "127.0.0.1:0",
                "--log",
                "info",
                "--log-format",
                "json",
            ])
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key),
    )?;
    let echo = Server::start(Command::new(&exe).arg(ECHO_COMMAND).arg(&cert).arg(&key))?;
    let tls = client_config(material.ca_pem.as_bytes())?;
    let body = Bytes::from(serde_json::to_vec(&review())?);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    for clients in CLIENTS {
        for (name, server) in [("shunt-webhook", &webhook), ("echo baseline", &echo)] {
            let load = runtime.block_on(load(server.addr, tls.clone(), body.clone(), clients, duration))?;
            rows.push((name, clients, load));
        }
    }
    println!(
        "## shunt-webhook benchmark: TLS 1.3, HTTP/1.1 keep-alive, closed loop, {} s per row after {} s warm-up, review of a {}-byte pod\n",
        duration.as_secs(),
        WARM_UP.as_secs(),
        body.len()
    );
    println!("| server | clients | req/s | p50 | p99 | × echo (req/s) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, clients, load) in &rows {
        let echo_rps = rows
            .iter()
            .find(|(n, c, _)| *n == "echo baseline" && c == clients)
            .map_or(0.0, |(_, _, l)| l.rps);
        println!(
            "| {name} | {clients} | {:.0} | {} | {} | {:.2}× |",
            load.rps,
            ms(load.p50),
            ms(load.p99),
            load.rps / echo_rps.max(f64::MIN_POSITIVE)
        );
    }
    if let Some((_, _, load)) = rows.iter().find(|(n, c, _)| *n == "shunt-webhook" && *c == 32) {
        let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
        println!(
            "\n{} ≥ {GOAL_RPS:.0} reviews/s at 32 clients ({:.0})\n{} p99 ≤ {} at 32 clients ({})",
            verdict(load.rps >= GOAL_RPS),
            load.rps,
            verdict(load.p99 <= GOAL_P99),
            ms(GOAL_P99),
            ms(load.p99)
        );
    }
    drop((webhook, echo));
    Ok(())
}

/// A server child process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `command` and waits for it to print its address: a JSON log line with
    /// `listen` (shunt-webhook) or a plain `listening ADDR` line (the echo server).
    fn start(command: &mut Command) -> Result<Server> {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().context("no stdout")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .for_each(|l| drop(tx.send(l)))
        });
        std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .for_each(|l| drop(tx2.send(l)))
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).context("the server did not start within 20 s")?;
            let addr = match serde_json::from_str::<serde_json::Value>(&line) {
                Ok(entry) => entry["listen"].as_str().map(str::to_owned),
                Err(_) => line.strip_prefix("listening ").map(str::to_owned),
            };
            if let Some(addr) = addr {
                return Ok(Server {
                    child,
                    addr: addr.parse().context("server address")?,
                });
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The echo baseline: the webhook's own TLS/HTTP serving code with a handler that returns
/// the request body.
pub fn echo_server(mut args: impl Iterator<Item = String>) -> Result<()> {
    let (Some(cert), Some(key)) = (args.next(), args.next()) else {
        bail!("usage: shunt-bench {ECHO_COMMAND} CERT KEY");
    };
    let loaded = shunt_webhook::tls::load_pem(
        &std::fs::read(PathBuf::from(cert))?,
        &std::fs::read(PathBuf::from(key))?,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let store = Arc::new(shunt_webhook::tls::CertStore::new(Arc::new(
            shunt_webhook::metrics::Metrics::new(),
        )));
        store.set(loaded);
        let tls = store.server_config()?;
        let router = axum::Router::new().route("/mutate-pods", axum::routing::post(|body: Bytes| async move { body }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        shunt_webhook::server::serve(listener, tls, router, std::future::pending(), Duration::from_secs(1)).await;
        Ok(())
    })
}

struct Load {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

async fn load(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    body: Bytes,
    clients: usize,
    duration: Duration,
) -> Result<Load> {
    let start = Instant::now() + WARM_UP;
    let end = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (tls, body) = (tls.clone(), body.clone());
        tasks.push(tokio::spawn(async move { client(addr, tls, body, start, end).await }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    if latencies.is_empty() {
        bail!("no request completed");
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    Ok(Load {
        rps: latencies.len() as f64 / duration.as_secs_f64(),
        p50: at(0.50),
        p99: at(0.99),
    })
}

/// One keep-alive connection sending requests back to back; latencies of those that
/// started in the measured window.
async fn client(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    body: Bytes,
    start: Instant,
    end: Instant,
) -> Result<Vec<Duration>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from(SERVER_NAME)?;
    let stream = tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut latencies = Vec::new();
    loop {
        let sent = Instant::now();
        if sent >= end {
            return Ok(latencies);
        }
        let request = hyper::Request::post("/mutate-pods")
            .header("host", SERVER_NAME)
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))?;
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        if response.status() != 200 {
            bail!("HTTP {}", response.status());
        }
        response.into_body().collect().await?;
        if sent >= start {
            latencies.push(sent.elapsed());
        }
    }
}

fn client_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in shunt_webhook::tls::parse_bundle(ca_pem)? {
        roots.add(ca)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(shunt_webhook::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A review of a typical Deployment pod: two containers, probes, volumes, labels.
fn review() -> serde_json::Value {
    let container = |name: &str, port: u16| {
        json!({
            "name": name, "image": format!("registry.example/{name}:1.4.2"),
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
            "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/live", "port": "http"}, "periodSeconds": 10},
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}, {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            "terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent",
        })
    };
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "api-7d9f8b6c5d-", "namespace": "team",
            "labels": {"app": "api", "pod-template-hash": "7d9f8b6c5d", "app.kubernetes.io/part-of": "shop"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2024-01-01T00:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f8b6c5d", "uid": "8a4c7f0e-1b2c-4d5e-9f00-112233445566", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {
            "containers": [container("api", 8080), container("worker", 9090)],
            "volumes": [{"name": "config", "configMap": {"name": "api-config"}},
                {"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "api", "securityContext": {"runAsNonRoot": true}, "schedulerName": "default-scheduler",
        }
    });
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "team", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"}, "object": pod, "dryRun": false}
    })
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
