//! `shunt policy explain` and a denied `shunt intercept`, as a developer meets a policy:
//! the whole stack on kubesim (`shunt_cli::demo::stack`, the operator with its policy
//! controller in-process), the CRDs and a policy applied with the real kubectl, the real
//! `shunt` binary with alice's kubeconfig. A running intercept that a changed policy
//! forbids ends, and the CLI prints the policy and the rule.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use shunt_cli::demo::developer::{Developer, Kind};
use shunt_cli::demo::stack::{poll, request, Stack, StackOptions, NS};

fn shunt() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shunt"))
}

/// Runs a program off the runtime (kubesim serves it from this test's runtime).
async fn run(program: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(program);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const POLICY: &str = r#"{"apiVersion": "policy.shunt.dev/v1alpha1", "kind": "ShuntPolicy",
  "metadata": {"name": "only-yours", "namespace": "shop"},
  "spec": {"targetSelector": {"names": ["deployment/api"]}, "identityHeader": "x-user"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_and_intercept_name_the_deciding_policy_and_rule() {
    let stack = Stack::start(StackOptions::new(shunt(), 1)).await.unwrap();
    let admin = stack.kubeconfig("kubesim-admin").unwrap();
    std::fs::write(
        &admin,
        serde_json::to_string(&stack.cluster.admin_kubeconfig().unwrap()).unwrap(),
    )
    .unwrap();
    let kubectl = Path::new("kubectl");
    let policy_file = admin.with_file_name("only-yours.json");
    std::fs::write(&policy_file, POLICY).unwrap();
    // The CRDs came with the chart; alice may create policyreviews through the chart's
    // ClusterRole shunt-user, which the stack binds in shop.
    let (ok, out) = run(kubectl, &admin, &["apply", "-f", &policy_file.display().to_string()]).await;
    assert!(ok, "{out}");
    poll(
        "the operator to report the policy Ready",
        Duration::from_secs(20),
        async || {
            let path = format!("/apis/policy.shunt.dev/v1alpha1/namespaces/{NS}/shuntpolicies/only-yours");
            let (_, p) = request(&stack.admin, "GET", &path, None).await.ok()?;
            let ready = p["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(())
        },
    )
    .await
    .unwrap();

    let alice = stack.kubeconfig("alice").unwrap();
    let explain = [
        "policy",
        "explain",
        "deployment/api",
        "--mode",
        "steal",
        "-n",
        NS,
        "--port",
        "8080",
        "--header",
    ];
    let (ok, out) = run(&shunt(), &alice, &[&explain[..], &["x-user: bob"]].concat()).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("denied: alice may not steal deployment/api in shop"),
        "{out}"
    );
    assert!(
        out.contains("policy: ShuntPolicy shop/only-yours") && out.contains("rule:   identityHeader"),
        "{out}"
    );
    let (ok, out) = run(&shunt(), &alice, &[&explain[..], &["x-user: alice"]].concat()).await;
    assert!(
        ok && out.starts_with("allowed: alice may steal deployment/api in shop"),
        "{out}"
    );

    let intercept = [
        "intercept",
        "deployment/api",
        "--port",
        "8080:1",
        "-n",
        NS,
        "--header",
        "x-user: bob",
    ];
    let (ok, out) = run(&shunt(), &alice, &intercept).await;
    assert!(
        !ok && out.contains("ShuntPolicy shop/only-yours") && out.contains("(rule identityHeader)"),
        "{out}"
    );

    // A running session that a changed policy forbids ends, and the CLI says why.
    let mut dev = Developer::start(&stack, &shunt(), "alice", Kind::Intercept, Some("x-user: alice"))
        .await
        .unwrap();
    let stricter = POLICY.replace(
        r#""identityHeader": "x-user""#,
        r#""identityHeader": "x-user", "block": ["steal"]"#,
    );
    let policy_file = admin.with_file_name("only-yours.json");
    std::fs::write(&policy_file, stricter).unwrap();
    let (ok, out) = run(kubectl, &admin, &["apply", "-f", &policy_file.display().to_string()]).await;
    assert!(ok, "{out}");
    poll("alice's CLI to exit", Duration::from_secs(20), async || {
        dev.cli.try_wait().unwrap()
    })
    .await
    .unwrap();
    let log = dev.log();
    assert!(
        log.contains("ended by policy") && log.contains("ShuntPolicy shop/only-yours (rule block: steal)"),
        "{log}"
    );
}
