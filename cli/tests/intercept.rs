//! The real `shunt` binary against kubesim and the operator's API server (in-process,
//! registered as the APIService `v1.api.shunt.dev`), without the hub: the test relays a
//! request into the session's tunnel as the hub would (`Tunnels::forward`) and checks
//! that it reaches alice's local app with its headers and body intact and the hop headers
//! removed; `shunt sessions -A` lists the session; a conflicting session fails with the
//! witness and exit code 1; Ctrl-C (SIGINT) deletes the session.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../../operator/tests/support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kubesim::Cluster;
use serde_json::{json, Value};
use shunt_operator::api::AppState;
use shunt_operator::tunnel::Body;
use support::{poll, Operator, Setup};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;

const NS: &str = "shop";

/// [`Operator`] with Deployment `shop/api` (container port 8080), Service `shop/api`
/// (80 → 8080) and RBAC for alice and bob (sessions, their tunnel, `steal` on targets,
/// reading services and deployments for the `curl` example).
async fn setup() -> (Cluster, Arc<AppState>) {
    let env = Operator::start(Setup {
        namespaces: &[(NS, json!({}))],
        policies: false,
    })
    .await;
    env.deployment(NS, "api", json!({}), &[8080]).await;
    let service = json!({"metadata": {"name": "api"}, "spec": {"selector": {"app": "api"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    support::create(&env.admin, &format!("/api/v1/namespaces/{NS}/services"), service).await;
    let rules = json!([
        {"apiGroups": ["api.shunt.dev"], "resources": ["sessions", "targets"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": ["api.shunt.dev"], "resources": ["sessions/tunnel"], "verbs": ["get", "create"]},
        {"apiGroups": ["api.shunt.dev"], "resources": ["targets"], "verbs": ["steal", "mirror"]},
        {"apiGroups": ["", "apps"], "resources": ["services", "deployments"], "verbs": ["get", "list"]},
    ]);
    env.role(NS, "shunt-dev", rules).await;
    env.bind(NS, "devs", "Role", "shunt-dev", &["alice", "bob"]).await;
    (env.cluster, env.state)
}

/// Alice's app: answers with what it received, as JSON.
async fn echo_app() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = service_fn(|req: http::Request<Incoming>| async move {
                let (parts, body) = req.into_parts();
                let body = body.collect().await.unwrap().to_bytes();
                let headers: serde_json::Map<String, Value> = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap())))
                    .collect();
                let seen = json!({"method": parts.method.as_str(), "uri": parts.uri.to_string(), "version": format!("{:?}", parts.version),
                    "headers": headers, "body": String::from_utf8_lossy(&body)});
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(seen.to_string()))))
            });
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc));
        }
    });
    port
}

fn kubeconfig(cluster: &Cluster, user: &str, groups: &[&str]) -> PathBuf {
    // One file per cluster: tests run in parallel, each with its own kubesim.
    let path = std::env::temp_dir().join(format!(
        "shunt-cli-test-{}-{}-{user}.json",
        std::process::id(),
        cluster.addr.port()
    ));
    cluster.write_kubeconfig(&path, user, groups).unwrap();
    path
}

fn shunt(kubeconfig: &PathBuf, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_shunt"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true);
    cmd
}

#[tokio::test]
async fn intercepted_requests_reach_the_local_app_and_ctrl_c_ends_the_session() {
    let (cluster, state) = setup().await;
    let local = echo_app().await;
    let alice = kubeconfig(&cluster, "alice", &[]);
    let port = format!("8080:{local}");
    let mut cli = shunt(
        &alice,
        &[
            "intercept",
            "deployment/api",
            "--port",
            &port,
            "--header",
            "x-user: alice",
            "-n",
            NS,
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr: Arc<Mutex<String>> = Arc::default();
    let mut lines = tokio::io::BufReader::new(cli.stderr.take().unwrap()).lines();
    let log = stderr.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            log.lock().unwrap().push_str(&(line + "\n"));
        }
    });

    let registry = state.registry.clone();
    let name = poll("alice's session with a connected tunnel", async || {
        let s = registry.list(Some(NS)).into_iter().find(|s| s.user == "alice")?;
        state.tunnels.is_connected(NS, &s.name).then_some(s.name)
    })
    .await;
    let session = registry.get(NS, &name).unwrap();
    assert_eq!(session.spec.filter.unwrap().to_string(), "x-user: alice");
    let out = stderr.lock().unwrap().clone();
    assert!(out.contains("curl -H 'x-user: alice' http://api.shop:80/"), "{out}");

    // The hub's part: relay a stolen request, hop headers included.
    let req = http::Request::post("http://api.shop:8080/orders?id=7")
        .header("x-user", "alice")
        .header("x-trace", "t-1")
        .header("shunt-session", &name)
        .header("shunt-pod", "shop/api-1")
        .body::<Body>(
            Full::new(Bytes::from_static(b"{\"item\": 1}"))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let resp = state.tunnels.forward(NS, &name, req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        (seen["method"].as_str(), seen["uri"].as_str()),
        (Some("POST"), Some("/orders?id=7")),
        "{seen}"
    );
    assert_eq!(
        (seen["headers"]["x-user"].as_str(), seen["headers"]["x-trace"].as_str()),
        (Some("alice"), Some("t-1")),
        "{seen}"
    );
    assert_eq!(seen["headers"]["host"], "api.shop:8080", "{seen}");
    assert!(
        seen["headers"].get("shunt-session").is_none() && seen["headers"].get("shunt-pod").is_none(),
        "{seen}"
    );
    assert_eq!(seen["body"], "{\"item\": 1}");

    // Listed while it runs.
    let admin = kubeconfig(&cluster, "kubesim-admin", &["system:masters"]);
    let out = shunt(&admin, &["sessions", "-A"]).output().await.unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    let row = table
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("{name} not listed:\n{table}"));
    for cell in [NS, "alice", "deployment/api", "steal", "x-user: alice", "8080"] {
        assert!(row.contains(cell), "{cell} missing in {row}");
    }

    // Bob's overlapping filter is refused with the witness, exit code 1.
    let bob = kubeconfig(&cluster, "bob", &[]);
    let out = shunt(
        &bob,
        &[
            "intercept",
            "deploy/api",
            "--port",
            "8080",
            "--header",
            "x-user: ~^al",
            "-n",
            NS,
        ],
    )
    .output()
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("409") && err.contains("x-user: alice"), "{err}");

    // Ctrl-C: the session is deleted and the CLI exits cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), cli.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{}", stderr.lock().unwrap());
    assert!(registry.get(NS, &name).is_none(), "the session outlived Ctrl-C");
    poll("the ended message", async || {
        stderr.lock().unwrap().contains("ended").then_some(())
    })
    .await;
    for path in [alice, admin, bob] {
        let _ = std::fs::remove_file(path);
    }
}

#[tokio::test]
async fn header_auto_uses_the_callers_name_and_sessions_kill_ends_the_cli() {
    let (cluster, state) = setup().await;
    let alice = kubeconfig(&cluster, "alice", &[]);
    let cli = shunt(
        &alice,
        &[
            "mirror",
            "deployment/api",
            "--port",
            "8080",
            "--header",
            "auto",
            "-n",
            NS,
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let registry = state.registry.clone();
    let name = poll("alice's mirror session with a connected tunnel", async || {
        let s = registry.list(Some(NS)).into_iter().find(|s| s.user == "alice")?;
        state.tunnels.is_connected(NS, &s.name).then_some(s.name)
    })
    .await;
    let session = registry.get(NS, &name).unwrap();
    assert_eq!(session.spec.filter.unwrap().to_string(), "x-shunt-user: alice");
    assert_eq!(session.spec.mode, shunt_proto::Mode::Mirror);

    let out = shunt(&alice, &["sessions", "kill", &name, "-n", NS])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{} {:?}",
        String::from_utf8_lossy(&out.stderr),
        registry.list(None).iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(registry.get(NS, &name).is_none());
    // The running CLI notices and exits 1, saying why.
    let out = tokio::time::timeout(Duration::from_secs(20), cli.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ended elsewhere"), "{err}");

    // doctor: the API is Available; no webhook is installed and the namespace is not
    // labelled, and each failure says how to fix it.
    let admin = kubeconfig(&cluster, "kubesim-admin", &["system:masters"]);
    let out = shunt(&admin, &["doctor", "-n", NS]).output().await.unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("ok    API        APIService v1.api.shunt.dev is Available"),
        "{report}"
    );
    assert!(
        report.contains("FAIL  webhook    no shunt MutatingWebhookConfiguration"),
        "{report}"
    );
    assert!(
        report.contains("kubectl label namespace shop shunt.dev/injection=enabled"),
        "{report}"
    );
    for path in [alice, admin] {
        let _ = std::fs::remove_file(path);
    }
}
