//! The `shunt-webhook` binary as an operator runs it: `--help` documents every option, bad
//! configuration exits 64 naming the flag, and `--cert-mode files` serves with no
//! Kubernetes API at all, reloads changed files, and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
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

/// Waits for the JSON log line that says where the server listens.
fn listen_addr(lines: &std::sync::mpsc::Receiver<String>) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("the webhook never said it was serving");
        let Ok(entry) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if entry["message"] == "serving AdmissionReviews" {
            return entry["listen"].as_str().unwrap().parse().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_serves_without_any_kubernetes_api_and_reloads_changed_files() {
    let dir = std::env::temp_dir().join(format!("shunt-webhook-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let now = shunt_webhook::certs::unix_now();
    let first = shunt_webhook::certs::issue::issue(&["shunt-webhook.shunt.svc".into()], now, 3600).unwrap();
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, &first.key_pem).unwrap();

    let mut child = webhook()
        .args([
            "--cert-mode",
            "files",
            "--listen",
            "127.0.0.1:0",
            "--reload-interval",
            "100ms",
        ])
        .arg("--cert-file")
        .arg(&cert)
        .arg("--key-file")
        .arg(&key)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let addr = listen_addr(&lines);

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
    std::fs::write(&key, &second.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&cert, &second.cert_pem).unwrap();
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

    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
