//! Shared helpers of the sidecar's integration tests: a sidecar process with a routes
//! file, real clients (curl, h2load, Python), and polling with deadlines.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

pub mod world;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use shunt_echo::Echo;
use shunt_netns::Pod;

pub const SIDECAR: &str = env!("CARGO_BIN_EXE_shunt-sidecar");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("shunt-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pod (network namespace) for a sidecar in nftables mode: its routes file and the
/// addresses of the app port and the admin port. The tests' worlds add their own parts.
pub struct SidecarPod {
    pub pod: Pod,
    _dir: TempDir,
    pub routes: PathBuf,
    /// `pod-ip:8080`
    pub base: String,
    /// `pod-ip:15090`
    pub admin: String,
}

impl SidecarPod {
    /// `pod`, with a routes file in a temporary directory named after `tag` (not written).
    pub fn new(pod: Pod, tag: &str) -> SidecarPod {
        let dir = TempDir::new(tag);
        SidecarPod {
            routes: dir.path("routes.json"),
            base: format!("{}:8080", pod.ip),
            admin: format!("{}:15090", pod.ip),
            pod,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.base)
    }

    /// Writes the routes and waits until the sidecar has them all.
    pub fn set_routes(&self, routes: &[serde_json::Value]) {
        write_routes(&self.routes, routes);
        wait_routes(&self.admin, routes.len());
    }

    /// The sidecar command for app port 8080 with the routes file and text logs at `log`.
    pub fn sidecar_command(&self, log: &str) -> Command {
        let mut cmd = self.pod.command(SIDECAR);
        cmd.env("SHUNT_APP_PORTS", "8080")
            .env("SHUNT_ROUTES_FILE", &self.routes)
            .env("SHUNT_LOG_FORMAT", "text")
            .env("SHUNT_LOG", log);
        cmd
    }

    /// Starts the sidecar ([`Self::sidecar_command`]) and waits until it is ready; its pid.
    pub fn start_sidecar(&self, log: &str) -> u32 {
        self.start_sidecar_with(log, &[])
    }

    /// [`Self::start_sidecar`] with more environment variables.
    pub fn start_sidecar_with(&self, log: &str, env: &[(&str, &str)]) -> u32 {
        let mut cmd = self.sidecar_command(log);
        cmd.envs(env.iter().copied());
        let pid = self.pod.spawn(cmd).unwrap();
        wait_ready(&self.admin);
        pid
    }

    /// An echo server in the root namespace, reachable from the pod: a "developer".
    pub async fn developer(&self, name: &str) -> Echo {
        let listener = tokio::net::TcpListener::bind((self.pod.host_ip, 0)).await.unwrap();
        shunt_echo::spawn(listener, name).unwrap()
    }

    /// The table `inet shunt` exists in the pod.
    pub fn has_table(&self) -> bool {
        self.pod.nft_ruleset().unwrap().contains("table inet shunt")
    }

    /// Ports are in the redirect set (a dormant sidecar's set is empty).
    pub fn redirecting(&self) -> bool {
        self.pod.nft_ruleset().unwrap().contains("elements = {")
    }

    /// Something in the pod listens on TCP `port`.
    pub fn listening(&self, port: u16) -> bool {
        let out = self.pod.run("ss", &["-Hltn", &format!("sport = :{port}")]).unwrap();
        out.contains(&format!(":{port}"))
    }
}

/// A plain-TCP (not HTTP) echo: per connection it reads until the client shuts its
/// sending side, then answers `NAME:` followed by the bytes and closes.
pub fn tcp_echo(listener: tokio::net::TcpListener, name: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let name = name.to_owned();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let name = name.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                if stream.read_to_end(&mut got).await.is_ok() {
                    let mut answer = format!("{name}:").into_bytes();
                    answer.extend_from_slice(&got);
                    let _ = stream.write_all(&answer).await;
                }
            });
        }
    });
}

/// Sends `bytes` on a fresh connection to `addr`, shuts the sending side and reads the
/// answer until the peer closes (at most 10 s).
pub fn tcp_round_trip(addr: &str, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(bytes)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

/// Replaces the routes file atomically (as a ConfigMap update would).
pub fn write_routes(path: &Path, routes: &[serde_json::Value]) {
    let doc = serde_json::json!({ "routes": routes });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, doc.to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn route(id: &str, mode: &str, filter: Option<&str>, upstream: &str) -> serde_json::Value {
    let mut r = serde_json::json!({ "id": id, "port": 8080, "mode": mode, "upstream": format!("http://{upstream}") });
    if let Some(filter) = filter {
        r["filter"] = filter.into();
    }
    r
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs curl; returns (stdout, stderr). Fails the test if curl cannot run at all.
pub fn curl(args: &[&str]) -> (String, String, bool) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

/// Who served each response in a curl output of echo-server JSON lines.
pub fn served_by(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["served_by"]
                .as_str()
                .unwrap_or("?")
                .to_owned()
        })
        .collect()
}

/// One GET with an optional header; who served it (None when the request failed).
pub fn who(url: &str, header: Option<&str>) -> Option<String> {
    let mut args = vec![url];
    if let Some(h) = header {
        args.extend(["-H", h]);
    }
    let (out, _, ok) = curl(&args);
    ok.then(|| served_by(&out).pop()).flatten()
}

/// Waits for the admin port to answer /readyz.
pub fn wait_ready(admin: &str) {
    eventually("sidecar /readyz", Duration::from_secs(10), || {
        curl(&["-f", &format!("http://{admin}/readyz")]).2.then_some(())
    });
}

/// Waits until /routes lists `n` routes.
pub fn wait_routes(admin: &str, n: usize) {
    eventually(&format!("{n} routes installed"), Duration::from_secs(10), || {
        let (out, _, ok) = curl(&[&format!("http://{admin}/routes")]);
        let doc: serde_json::Value = serde_json::from_str(&out).ok()?;
        (ok && doc["routes"].as_array()?.len() == n).then_some(())
    });
}

/// The value of one sample line of /metrics, e.g. `shunt_sidecar_requests_total{...}`.
pub fn metric(admin: &str, prefix: &str) -> f64 {
    let (out, _, _) = curl(&[&format!("http://{admin}/metrics")]);
    out.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs the Python WebSocket client; its printed answer.
pub fn ws_client(url: &str, header: Option<&str>) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ws.py");
    let mut cmd = Command::new("python3");
    cmd.args([script, "client", url]);
    if let Some(h) = header {
        cmd.arg(h);
    }
    let out = cmd.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "websocket client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn ws_script() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/ws.py")
}

/// Sends one request per header over ONE HTTP/2 connection (prior knowledge), all
/// streams in flight at once; who served each, in order.
///
/// hyper is the client here because curl 7.88 breaks reusing an h2c prior-knowledge
/// connection (`--next`), even against a plain hyper server without shunt.
pub async fn h2_multiplexed(addr: &str, path: &str, headers: &[Option<&str>]) -> Vec<String> {
    use http_body_util::{BodyExt, Empty};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let requests = headers.iter().map(|h| {
        let mut sender = sender.clone();
        let mut req = http::Request::get(format!("http://{addr}{path}"));
        if let Some((k, v)) = h.and_then(|h| h.split_once(':')) {
            req = req.header(k.trim(), v.trim());
        }
        let req = req.body(Empty::<bytes::Bytes>::new()).unwrap();
        async move {
            let resp = sender.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            served_by(&String::from_utf8_lossy(&body)).pop().unwrap_or_default()
        }
    });
    let mut out = Vec::new();
    let handles: Vec<_> = requests.map(tokio::spawn).collect();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
