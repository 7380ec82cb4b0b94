//! End to end on kubesim (loopback mode, no root), all real code: shunt installed from the
//! Helm chart's rendered manifests (operator and webhook as pods: `shunt __operator`,
//! `shunt __webhook`), the sidecars and echo apps as pod processes (`shunt __sidecar`,
//! `shunt __echo`), and the developers' real `shunt intercept` / `shunt mirror` processes
//! with their own kubeconfigs, bound to the chart's ClusterRole `shunt-user`. Tests 1, 4, 5
//! and 7 of issue 5, and the review of the chart's user roles (issue 8).
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use shunt_cli::demo::developer::{Developer, Kind};
use shunt_cli::demo::stack::{poll, Stack, StackOptions};
use shunt_cli::demo::traffic::{get, served_by};

/// The session grace period of the operator in these tests.
const GRACE: Duration = Duration::from_secs(2);

fn shunt() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shunt"))
}

async fn stack(replicas: u32) -> Stack {
    Stack::start(StackOptions {
        session_grace: GRACE,
        ..StackOptions::new(shunt(), replicas)
    })
    .await
    .unwrap()
}

/// A 3-replica stack in netns mode, or None when not root (and CI does not require it).
async fn netns_stack(test: &str) -> Option<Stack> {
    if !shunt_netns::root_available(test) {
        return None;
    }
    let options = StackOptions {
        session_grace: GRACE,
        network: kubesim::Network::Netns,
        ..StackOptions::new(shunt(), 3)
    };
    Some(Stack::start(options).await.unwrap())
}

async fn intercept(stack: &Stack, name: &str) -> Developer {
    let header = format!("x-user: {name}");
    Developer::start(stack, &shunt(), name, Kind::Intercept, Some(&header))
        .await
        .unwrap()
}

/// Who answered `n` requests with `header` (None: no header); panics on a failed request.
async fn answers(stack: &Stack, n: usize, user: Option<&str>) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let who = served_by(stack.service, user.map(|u| ("x-user", u))).await.unwrap();
        *seen.entry(who).or_default() += 1;
    }
    seen
}

fn pods_only(seen: &BTreeMap<String, usize>) -> bool {
    seen.keys().all(|who| who.starts_with("api-"))
}

/// Test 1: 3 replicas; alice and bob intercept with different headers; 300 requests
/// through the Service: alice's reach alice, bob's reach bob, the others the pods, all 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_developers_share_every_replica_and_the_rest_reaches_the_pods() {
    two_developers(stack(3).await).await;
}

/// Test 1 in netns mode (root): every pod in its own network namespace, the Service
/// sending to the app's own port, the sidecars redirecting it with nftables, as on a real
/// cluster (the chart rendered with charts/shunt/ci/kubesim-netns-values.yaml).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_developers_share_every_replica_in_network_namespaces_with_nftables() {
    let Some(stack) = netns_stack("two_developers_share_every_replica_in_network_namespaces_with_nftables").await
    else {
        return;
    };
    // The webhook injected the nftables mode, and the Service targets the app's own port.
    let pod = &stack.pods().await.unwrap()[0];
    let sidecar = &pod["spec"]["initContainers"][0];
    let redirect = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "SHUNT_REDIRECT")
        .map(|e| e["value"].clone());
    assert_eq!(redirect, Some(serde_json::json!("nftables")), "{sidecar}");
    two_developers(stack).await;
}

async fn two_developers(stack: Stack) {
    let alice = intercept(&stack, "alice").await;
    let bob = intercept(&stack, "bob").await;
    stack.wait_routes(2).await.unwrap();

    let mut by_header: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for i in 0..300 {
        // Round-robin over the headers, rotated every 3 requests: kubesim's balancer is
        // round-robin over 3 pods too, and must not see the same header on the same pod.
        let user = [Some("alice"), Some("bob"), None][(i + i / 3) % 3];
        let who = served_by(stack.service, user.map(|u| ("x-user", u)))
            .await
            .unwrap_or_else(|e| panic!("request {i} ({user:?}) failed: {e:#}"));
        *by_header
            .entry(user.unwrap_or("-"))
            .or_default()
            .entry(who)
            .or_default() += 1;
    }
    assert_eq!(
        by_header["alice"],
        BTreeMap::from([("alice".to_owned(), 100)]),
        "{by_header:?}"
    );
    assert_eq!(
        by_header["bob"],
        BTreeMap::from([("bob".to_owned(), 100)]),
        "{by_header:?}"
    );
    let others = &by_header["-"];
    assert!(pods_only(others), "{by_header:?}");
    assert_eq!(others.len(), 3, "every pod answered some: {others:?}");
    assert_eq!(others.values().sum::<usize>(), 100);
    assert_eq!((alice.served(), bob.served()), (100, 100));
}

/// Test 4: scale 3 → 5 during alice's session: the new pods route her requests too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_added_during_a_session_route_it_too() {
    let stack = stack(3).await;
    let alice = intercept(&stack, "alice").await;
    stack.wait_routes(1).await.unwrap();
    let before: Vec<String> = pod_names(&stack).await;
    stack.scale(5).await.unwrap();
    stack.wait_routes(1).await.unwrap();
    let after = pod_names(&stack).await;
    let new: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(new.len(), 2, "{before:?} → {after:?}");

    // Alice's requests through the Service: all hers (the balancer spreads them over 5 pods).
    let served_before = alice.served();
    assert_eq!(
        answers(&stack, 100, Some("alice")).await,
        BTreeMap::from([("alice".to_owned(), 100)])
    );
    assert_eq!(alice.served() - served_before, 100);
    // The others reach all 5 pods, the new ones included: they are in the Service.
    let others = answers(&stack, 100, None).await;
    assert!(pods_only(&others) && others.len() == 5, "{others:?}");
    for pod in new {
        assert!(
            others.contains_key(pod),
            "new pod {pod} is not in the Service: {others:?}"
        );
    }

    // `shunt doctor` on the target sees all 5 pods injected and their sidecars connected.
    let admin = stack
        .kubeconfig_with_groups("kubesim-admin", &["system:masters"])
        .unwrap();
    let out = std::process::Command::new(shunt())
        .args([
            "--kubeconfig",
            &admin.display().to_string(),
            "doctor",
            "-n",
            "shop",
            "deploy/api",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        report.contains("every pod of deployment/api has a shunt sidecar"),
        "{report}"
    );
    assert!(
        report.contains("5 sidecar(s) of deployment/api are connected"),
        "{report}"
    );
}

async fn pod_names(stack: &Stack) -> Vec<String> {
    let mut names: Vec<String> = stack
        .pods()
        .await
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Test 5: `kill -9` of alice's CLI: within the grace period plus a second her header
/// reaches the pods again, and her session is gone from the sessions list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cli_ends_its_session_after_the_grace_period() {
    let stack = stack(3).await;
    let mut alice = intercept(&stack, "alice").await;
    stack.wait_routes(1).await.unwrap();
    assert_eq!(
        answers(&stack, 6, Some("alice")).await,
        BTreeMap::from([("alice".to_owned(), 6)])
    );

    alice.cli.start_kill().unwrap(); // SIGKILL: no chance to delete the session
    alice.cli.wait().await.unwrap();
    let killed = Instant::now();
    let limit = GRACE + Duration::from_secs(1);
    // From the kill on, alice's requests never fail (fail-open); once the session ends
    // they reach the pods, and the session is no longer listed.
    let back = poll("alice's header to reach the pods again", limit * 2, async || {
        let who = served_by(stack.service, Some(("x-user", "alice"))).await.unwrap();
        let sessions = stack.sessions().await.unwrap();
        let listed = sessions.iter().any(|s| s["status"]["user"] == "alice");
        (who.starts_with("api-") && !listed).then(|| killed.elapsed())
    })
    .await
    .unwrap();
    assert!(
        back <= limit,
        "took {back:?}, more than the grace period plus a second ({limit:?})"
    );
    let after = answers(&stack, 30, Some("alice")).await;
    assert!(pods_only(&after), "{after:?}");
    drop(alice);
}

/// Test 7: carol mirrors: she receives a copy of every request, the clients get the pods'
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_copies_while_the_pods_answer() {
    let stack = stack(3).await;
    let carol = Developer::start(&stack, &shunt(), "carol", Kind::Mirror, Some("x-user: carol"))
        .await
        .unwrap();
    stack.wait_routes(1).await.unwrap();
    let seen = answers(&stack, 60, Some("carol")).await;
    assert!(pods_only(&seen) && seen.len() == 3, "{seen:?}");
    poll("60 copies at carol's", Duration::from_secs(5), async || {
        (carol.served() == 60).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: she got {}", carol.served()));
    // Requests without her header are not copied to her: after 30 of them and one of
    // hers, she has exactly one copy more.
    let others = answers(&stack, 30, None).await;
    assert!(pods_only(&others), "{others:?}");
    answers(&stack, 1, Some("carol")).await;
    poll("the 61st copy", Duration::from_secs(5), async || {
        (carol.served() >= 61).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(carol.served(), 61);
}

/// The chart's user roles, as installed: `shunt-user` (alice, bob) intercepts with a
/// filter but may neither steal a whole port nor end a colleague's session; `shunt-admin`
/// (lead) may do both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shunt_user_and_shunt_admin_roles_of_the_chart() {
    let stack = stack(1).await;
    let binding = serde_json::json!({"metadata": {"name": "lead-shunt-admin"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "lead"}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "shunt-admin"}});
    let path = "/apis/rbac.authorization.k8s.io/v1/namespaces/shop/rolebindings";
    shunt_cli::demo::stack::create(&stack.admin, path, binding)
        .await
        .unwrap();
    let alice = intercept(&stack, "alice").await;
    let session = stack.sessions().await.unwrap()[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = |user: &str, args: &[&str]| {
        let kubeconfig = stack.kubeconfig(user).unwrap();
        let out = std::process::Command::new(shunt())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(args)
            .args(["-n", "shop"])
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };

    // bob (shunt-user) cannot end alice's session: the error names the verb and the role.
    let (ok, out) = run("bob", &["sessions", "kill", &session]);
    assert!(!ok, "{out}");
    assert!(out.contains("\"kill\"") && out.contains("shunt-admin"), "{out}");
    // Nor steal the whole port.
    let (ok, out) = run("bob", &["intercept", "deployment/api", "--port", "8080:1"]);
    assert!(!ok, "{out}");
    assert!(out.contains("steal-unfiltered"), "{out}");
    assert_eq!(stack.sessions().await.unwrap().len(), 1);

    // lead (shunt-admin) can end it; alice's CLI learns why and stops.
    let (ok, out) = run("lead", &["sessions", "kill", &session]);
    assert!(ok, "{out}");
    let mut cli = alice.cli;
    let status = tokio::time::timeout(Duration::from_secs(20), cli.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(!status.success());
    assert!(stack.sessions().await.unwrap().is_empty());
}

/// A free local port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `shunt exec` as `user` (a child process, killed on drop).
fn exec(stack: &Stack, user: &str, args: &[&str]) -> tokio::process::Command {
    let kubeconfig = stack.kubeconfig(user).unwrap();
    let mut cmd = tokio::process::Command::new(shunt());
    cmd.arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["exec", "deployment/api", "-n", "shop"])
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Issue 7 in netns mode (root), real programs under `shunt exec`: a shell that forks
/// `python3 -m http.server` gets alice's requests from every pod; a Python client
/// reaches a Service by its cluster DNS name through a pod; `env` gets the container's
/// environment minus what is excluded; 1,000 local connections are unaffected; a static
/// program is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_gives_real_programs_the_pods_traffic_network_and_env() {
    let Some(stack) = netns_stack("exec_gives_real_programs_the_pods_traffic_network_and_env").await else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("shunt-exec-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "served by alice's python\n").unwrap();

    // A shell that forks the server: the child inherits the layer; its listen on the
    // session's (mapped) port takes alice's requests from all 3 pods.
    let port = free_port();
    // The shell passes shunt's SIGTERM on to its server; should the test fail before
    // that, the guard ends the server (shunt's own kill-on-drop is a SIGKILL, which
    // orphans the program's children).
    let server_command = format!("python3 -m http.server {port} --bind 127.0.0.1");
    let script = format!("cd {} && trap 'kill $!' TERM; {server_command} & wait", dir.display());
    struct KillLeftover(String);
    impl Drop for KillLeftover {
        fn drop(&mut self) {
            let _ = std::process::Command::new("pkill").args(["-f", &self.0]).status();
        }
    }
    let _leftover = KillLeftover(server_command);
    let mut server = exec(
        &stack,
        "alice",
        &[
            "--header",
            "x-user: alice",
            "--port",
            &format!("8080:{port}"),
            "--",
            "sh",
            "-c",
            &script,
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    poll(
        "alice's python to answer through the Service",
        Duration::from_secs(60),
        async || {
            if let Ok(Some(status)) = server.try_wait() {
                panic!("alice's shunt exec exited: {status}");
            }
            let (status, body) = get(stack.service, "/hello.txt", &[("x-user", "alice")]).await.ok()?;
            (status == 200 && body.contains("alice's python")).then_some(())
        },
    )
    .await
    .unwrap();
    let mut pods = BTreeMap::new();
    for _ in 0..30 {
        let (status, body) = get(stack.service, "/hello.txt", &[("x-user", "alice")]).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "served by alice's python\n"));
        let who = served_by(stack.service, None).await.unwrap();
        *pods.entry(who).or_insert(0) += 1;
    }
    assert!(
        pods_only(&pods) && pods.len() == 3,
        "the others reach every pod: {pods:?}"
    );

    // A client: the Service's cluster DNS name resolves in the pod and the connection
    // leaves from the pod.
    let client = "import urllib.request; \
        print(urllib.request.urlopen('http://api.shop.svc.cluster.local/', timeout=10).read().decode())";
    let out = exec(
        &stack,
        "bob",
        &["--header", "x-user: bob", "--", "python3", "-c", client],
    )
    .output()
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"served_by\":\"api-"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // env: the container's variables, minus the excluded ones.
    let out = exec(
        &stack,
        "carol",
        &["--header", "x-user: carol", "--env-exclude", "DB_*", "--", "env"],
    )
    .output()
    .await
    .unwrap();
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{env}{}", String::from_utf8_lossy(&out.stderr));
    assert!(env.lines().any(|l| l == "GREETING=hello from the pod"), "{env}");
    assert!(!env.contains("DB_PASSWORD"), "{env}");

    // A program that opens 1,000 local connections to its own server is unaffected
    // (loopback is never diverted).
    let local = r#"
import socket, threading
s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(128)
port = s.getsockname()[1]; n = 0
def serve():
    while True:
        c, _ = s.accept(); c.sendall(b'x'); c.close()
threading.Thread(target=serve, daemon=True).start()
for _ in range(1000):
    c = socket.create_connection(('127.0.0.1', port)); n += len(c.recv(1)); c.close()
print(n)
"#;
    let out = exec(
        &stack,
        "carol",
        &["--header", "x-user: carol", "--", "python3", "-c", local],
    )
    .output()
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.trim() == "1000",
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A statically linked program (Debian's ldconfig is static-pie) is refused before
    // anything starts, saying why and what to use instead.
    let out = exec(
        &stack,
        "carol",
        &["--header", "x-user: carol", "--", "/sbin/ldconfig", "-p"],
    )
    .output()
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("statically linked") && err.contains("shunt intercept"),
        "{err}"
    );

    // SIGTERM: shunt passes it to the shell, which passes it to its server.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), server.wait()).await;
    let _ = std::fs::remove_dir_all(&dir);
}
