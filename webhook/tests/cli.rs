//! The `shunt-webhook` binary as an operator runs it: `--help` documents every option, bad
//! configuration exits 64 naming the flag, and files mode (`--cert-file F --key-file F`,
//! with or without `--cert-mode files`) serves with no Kubernetes API at all, reloads
//! changed files, and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory as _;
use serde_json::{json, Value};
use shunt_webhook::config::Args;

const BIN: &str = env!("CARGO_BIN_EXE_shunt-webhook");

fn webhook() -> Command {
    let mut command = Command::new(BIN);
    // No cluster anywhere: no in-cluster variables, no kubeconfig.
    command
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("HOME", "/nonexistent");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SHUNT_WEBHOOK_")) {
        command.env_remove(key);
    }
    command
}

#[test]
fn help_documents_every_option_with_its_variable() {
    let out = webhook().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let command = Args::command();
    let mut count = 0;
    for arg in command
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "help" && l != "version"))
    {
        let long = arg.get_long().unwrap();
        assert!(help.contains(&format!("--{long} ")), "--{long} missing from --help");
        assert!(
            arg.get_help().is_some_and(|h| !h.to_string().is_empty()),
            "--{long} has no help"
        );
        let env = arg.get_env().unwrap().to_string_lossy().into_owned();
        assert!(
            env.starts_with("SHUNT_WEBHOOK_") && help.contains(&env),
            "--{long}: {env}"
        );
        count += 1;
    }
    assert!(count >= 30, "{count} options");
}

#[test]
fn bad_configuration_exits_64_naming_the_flag() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--cert-mode", "files"], &[], "--cert-file and --key-file"),
        // A key file alone means files mode, which needs the certificate too.
        (&["--key-file", "/k"], &[], "--cert-file and --key-file"),
        (
            &["--cert-mode", "self", "--cert-file", "/c", "--key-file", "/k"],
            &[],
            "--cert-mode self: does not use --cert-file/--key-file",
        ),
        (
            &[],
            &[("SHUNT_WEBHOOK_CERT_MODE", "self"), ("SHUNT_WEBHOOK_CERT_FILE", "/c")],
            "--cert-mode self: does not use --cert-file/--key-file",
        ),
        (&["--renew-before", "400d"], &[], "--renew-before"),
        (&["--listen", "nowhere"], &[], "--listen"),
        (&["--bogus"], &[], "--bogus"),
        (&[], &[("SHUNT_WEBHOOK_TOKEN_EXPIRATION", "1m")], "--token-expiration"),
        (&[], &[("SHUNT_WEBHOOK_REDIRECT", "iptables")], "iptables"),
    ];
    for (argv, env, message) in cases {
        let out = webhook().args(*argv).envs(env.iter().copied()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{argv:?} {env:?}: {stderr}");
        assert!(stderr.contains(message), "{argv:?}: {stderr}");
    }
}

/// A running `shunt-webhook`, killed if the test ends without stopping it, and its
/// stderr lines.
struct Running {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Running {
    fn spawn(command: &mut Command) -> Running {
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running { child, lines }
    }

    /// Waits for the JSON log line that says where the server listens.
    fn listen_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .expect("the webhook never said it was serving");
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["message"] == "serving AdmissionReviews" {
                return entry["listen"].as_str().unwrap().parse().unwrap();
            }
        }
    }

    /// Sends SIGTERM and waits for the exit.
    async fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temporary directory with a certificate and key for `shunt-webhook.shunt.svc`,
/// removed when dropped.
struct CertDir {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    issued: shunt_webhook::certs::issue::Material,
}

impl CertDir {
    fn new(name: &str) -> CertDir {
        let dir = std::env::temp_dir().join(format!("shunt-webhook-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let now = shunt_webhook::certs::unix_now();
        let issued = shunt_webhook::certs::issue::issue(&["shunt-webhook.shunt.svc".into()], now, 3600).unwrap();
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        CertDir { dir, cert, key, issued }
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_files_command_serves_reviews_over_tls_without_kubeconfig_or_cert_mode() {
    let files = CertDir::new("plain");
    // Exactly `shunt-webhook --listen ADDR --cert-file F --key-file F`: no --cert-mode, no
    // KUBECONFIG variable, no ~/.kube/config, no in-cluster variables.
    let mut command = webhook();
    command.env_remove("KUBECONFIG").arg("--listen").arg("127.0.0.1:0");
    command
        .arg("--cert-file")
        .arg(&files.cert)
        .arg("--key-file")
        .arg(&files.key);
    let mut running = Running::spawn(&mut command);
    let addr = running.listen_addr();

    let pod = support::pod(json!([{"containerPort": 8080}]));
    let review = support::review("plain-1", "team", &pod);
    let ca = files.issued.ca_pem.as_bytes();
    let mut conn = support::https::connect(addr, ca, "shunt-webhook.shunt.svc", true)
        .await
        .unwrap();
    let (status, body) = conn.review(&review).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["uid"], "plain-1");
    assert_eq!(body["response"]["allowed"], true);
    assert_eq!(body["response"]["patchType"], "JSONPatch");
    let status = running.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_serves_without_any_kubernetes_api_and_reloads_changed_files() {
    let files = CertDir::new("cli");
    let (cert, key, first) = (&files.cert, &files.key, &files.issued);
    let now = shunt_webhook::certs::unix_now();

    let mut command = webhook();
    command.args([
        "--cert-mode",
        "files",
        "--listen",
        "127.0.0.1:0",
        "--reload-interval",
        "100ms",
    ]);
    command.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
    let mut running = Running::spawn(&mut command);
    let addr = running.listen_addr();

    let pod = support::pod(json!([{"containerPort": 8080}]));
    let review = support::review("cli-1", "team", &pod);
    let mut conn = support::https::connect(addr, first.ca_pem.as_bytes(), "shunt-webhook.shunt.svc", true)
        .await
        .unwrap();
    let (status, body) = conn.review(&review).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["response"]["patchType"], "JSONPatch");

    // cert-manager renews: new key first, then the certificate (a moment of mismatch).
    let second = shunt_webhook::certs::issue::issue(&["shunt-webhook.shunt.svc".into()], now, 7200).unwrap();
    std::fs::write(key, &second.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(cert, &second.cert_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match support::https::connect(addr, second.ca_pem.as_bytes(), "shunt-webhook.shunt.svc", false).await {
            Ok(mut fresh) => {
                assert_eq!(fresh.review(&review).await.unwrap().0, 200);
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "new files never served: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The connection made before the swap keeps working.
    assert_eq!(conn.review(&review).await.unwrap().0, 200);

    let status = running.terminate().await;
    assert!(status.success(), "{status}");
}
