//! Readiness and liveness probes: `httpGet` (HTTP/1.1 to the pod IP, 200–399 passes),
//! `tcpSocket` (a connect), `exec` (exit status 0, run inside the pod's network), with
//! `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`, `successThreshold` and
//! `failureThreshold` as the kubelet applies them. An `https` httpGet probe speaks
//! HTTP/1.1 over TLS and, like the kubelet, does not verify the server's certificate.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::admission::client;

/// Where and how to probe a container.
#[derive(Clone, Debug)]
pub struct Target {
    /// The pod IP.
    pub ip: IpAddr,
    /// The container spec (for named ports).
    pub container: Value,
    /// Prefix that runs a command in the pod's network (empty in loopback mode).
    pub wrap: Vec<String>,
    /// The container's environment (for exec probes).
    pub env: Vec<(String, String)>,
}

/// One probe of one container and its running tally.
pub struct Prober {
    spec: Value,
    next: Instant,
    successes: u32,
    failures: u32,
    running: Option<JoinHandle<bool>>,
    /// Whether the probe currently passes.
    pub passing: bool,
}

fn secs(spec: &Value, field: &str, default: u64) -> u64 {
    spec[field].as_u64().unwrap_or(default)
}

impl Prober {
    /// A prober that starts after `initialDelaySeconds` from `started`; `passing` is the
    /// state before the first result (false for readiness, true for liveness).
    pub fn new(spec: Value, started: Instant, passing: bool) -> Prober {
        let next = started + Duration::from_secs(secs(&spec, "initialDelaySeconds", 0));
        Prober {
            spec,
            next,
            successes: 0,
            failures: 0,
            running: None,
            passing,
        }
    }

    /// Collects a finished probe and starts the next one when due.
    pub async fn tick(&mut self, target: &Target) {
        if self.running.as_ref().is_some_and(JoinHandle::is_finished) {
            if let Some(handle) = self.running.take() {
                let ok = handle.await.unwrap_or(false);
                if ok {
                    self.successes += 1;
                    self.failures = 0;
                    if self.successes >= secs(&self.spec, "successThreshold", 1) as u32 {
                        self.passing = true;
                    }
                } else {
                    self.failures += 1;
                    self.successes = 0;
                    if self.failures >= secs(&self.spec, "failureThreshold", 3) as u32 {
                        self.passing = false;
                    }
                }
            }
        }
        if self.running.is_none() && Instant::now() >= self.next {
            self.next = Instant::now() + Duration::from_secs(secs(&self.spec, "periodSeconds", 10).max(1));
            let timeout = Duration::from_secs(secs(&self.spec, "timeoutSeconds", 1).max(1));
            let (spec, target) = (self.spec.clone(), target.clone());
            self.running = Some(tokio::spawn(async move {
                tokio::time::timeout(timeout, probe(&spec, &target))
                    .await
                    .unwrap_or(false)
            }));
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Some(handle) = &self.running {
            handle.abort();
        }
    }
}

fn port(spec: &Value, container: &Value) -> Option<u16> {
    let port = &spec["port"];
    let n = match port.as_u64() {
        Some(n) => n,
        None => {
            let name = port.as_str()?;
            name.parse().ok().or_else(|| {
                container["ports"].as_array()?.iter().find(|p| p["name"] == name)?["containerPort"].as_u64()
            })?
        }
    };
    u16::try_from(n).ok()
}

/// The TLS client of https probes: any server certificate passes (the kubelet's probes
/// set `InsecureSkipVerify`), the handshake itself must succeed.
fn insecure_tls() -> Option<Arc<rustls::ClientConfig>> {
    static CONFIG: OnceLock<Option<Arc<rustls::ClientConfig>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| match client::tls_config(client::Trust::Insecure, None) {
            Ok(config) => Some(config),
            Err(error) => {
                tracing::warn!(%error, "cannot build the TLS client of https probes; they fail");
                None
            }
        })
        .clone()
}

/// Sends `request` and reads the status line: 200–399 passes.
async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> bool {
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    let code: u16 = String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0);
    (200..400).contains(&code)
}

async fn probe(spec: &Value, target: &Target) -> bool {
    if let Some(http) = spec.get("httpGet") {
        let Some(port) = port(http, &target.container) else {
            return false;
        };
        let host = http["host"].as_str().and_then(|h| h.parse().ok()).unwrap_or(target.ip);
        let addr = SocketAddr::new(host, port);
        let path = http["path"].as_str().unwrap_or("/");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n");
        for header in http["httpHeaders"].as_array().into_iter().flatten() {
            request.push_str(&format!(
                "{}: {}\r\n",
                header["name"].as_str().unwrap_or_default(),
                header["value"].as_str().unwrap_or_default()
            ));
        }
        request.push_str("\r\n");
        if http["scheme"].as_str().is_some_and(|s| s.eq_ignore_ascii_case("https")) {
            let Some(config) = insecure_tls() else {
                return false;
            };
            return match client::connect(addr, &host.to_string(), config).await {
                Ok(stream) => http_get(stream, &request).await,
                Err(error) => {
                    tracing::debug!(%addr, %error, "https probe: no TLS connection");
                    false
                }
            };
        }
        return match TcpStream::connect(addr).await {
            Ok(stream) => http_get(stream, &request).await,
            Err(_) => false,
        };
    }
    if let Some(tcp) = spec.get("tcpSocket") {
        let Some(port) = port(tcp, &target.container) else {
            return false;
        };
        let host = tcp["host"].as_str().and_then(|h| h.parse().ok()).unwrap_or(target.ip);
        return TcpStream::connect(SocketAddr::new(host, port)).await.is_ok();
    }
    if let Some(command) = spec["exec"]["command"].as_array() {
        let argv: Vec<String> = target
            .wrap
            .iter()
            .cloned()
            .chain(command.iter().filter_map(|c| c.as_str().map(str::to_owned)))
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return false;
        };
        let status = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .envs(target.env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await;
        return status.is_ok_and(|s| s.success());
    }
    // grpc probes and unknown handlers: passing, rather than never ready.
    true
}
