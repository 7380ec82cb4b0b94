//! The `kubesim` binary as users run it: `kubesim up --kubeconfig F --images G` serves
//! kubectl, runs a Deployment's pods with commands from G, and on SIGTERM or SIGINT stops
//! them, removes the pod network (netns mode, root) and exits 0.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{eventually, Kubectl, Scratch, DEADLINE};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The pod's command: `sleep` with an argument no other process has (tests of one
/// process run in parallel under `cargo test`), so a test finds exactly its pod's process
/// in /proc.
fn marker() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("86400.{}0{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The pids of processes whose argv is `sleep <marker>` (through PATH or not).
fn pod_processes(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        if argv.len() == 2 && argv[0].ends_with(b"sleep") && argv[1] == marker.as_bytes() {
            pids.push(pid);
        }
    }
    pids
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: sleeper
spec:
  replicas: 1
  selector:
    matchLabels: {app: sleeper}
  template:
    metadata:
      labels: {app: sleeper}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: sleeper
        image: binary-test/sleeper:1.0
";

/// A running `kubesim up`; if the test fails half-way, it is stopped with SIGTERM (so
/// it removes what it made) and, failing that, killed along with its pod process.
struct Up {
    child: Child,
    marker: String,
}

impl Up {
    fn signal(&self, signal: Signal) {
        let pid = self.child.id().expect("kubesim still runs");
        kill(Pid::from_raw(i32::try_from(pid).unwrap()), signal).unwrap();
    }

    async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("kubesim exits within the deadline after a signal")
            .unwrap()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(Signal::SIGTERM);
            let start = Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.start_kill();
        }
        for pid in pod_processes(&self.marker) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn start(scratch: &Scratch, network: &str) -> (Up, PathBuf) {
    let marker = marker();
    assert!(
        pod_processes(&marker).is_empty(),
        "a process with the marker runs already"
    );
    let kubeconfig = scratch.0.join("admin.kubeconfig");
    let images = scratch.write("images", &format!("binary-test/sleeper=sleep {marker}\n"));
    let log = std::fs::File::create(scratch.0.join("kubesim.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kubesim"))
        .args(["up", "--network", network, "--images", &images, "--kubeconfig"])
        .arg(&kubeconfig)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (Up { child, marker }, kubeconfig)
}

fn log_of(scratch: &Scratch) -> String {
    std::fs::read_to_string(scratch.0.join("kubesim.log")).unwrap_or_default()
}

/// Waits for the kubeconfig, uses it with kubectl, runs a Deployment and returns the pid
/// of its pod's process.
async fn serve_a_deployment(scratch: &Scratch, kubeconfig: &Path, marker: &str) -> i32 {
    let kubectl = Kubectl {
        kubeconfig: kubeconfig.to_owned(),
        cache: scratch.0.join("cache"),
    };
    eventually("the kubeconfig", || async { kubeconfig.exists().then_some(()) }).await;
    let namespaces = eventually("kubectl get ns", || async {
        let run = kubectl.run(&["get", "ns", "-o", "name"]).await;
        run.ok.then_some(run.stdout)
    })
    .await;
    assert!(namespaces.lines().any(|l| l == "namespace/default"), "{namespaces}");
    let file = scratch.write("deployment.yaml", DEPLOYMENT);
    assert_eq!(
        kubectl.ok(&["apply", "-f", &file]).await.trim(),
        "deployment.apps/sleeper created"
    );
    let pid = eventually("the pod's process", || async {
        match pod_processes(marker)[..] {
            [pid] => Some(pid),
            _ => None,
        }
    })
    .await;
    let phase = eventually("the pod Running", || async {
        let phases = kubectl
            .ok(&[
                "get",
                "pods",
                "-l",
                "app=sleeper",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ])
            .await;
        (phases == "Running").then_some(phases)
    })
    .await;
    assert_eq!(phase, "Running");
    pid
}

async fn stops_cleanly_on(signal: Signal) {
    let scratch = Scratch::new();
    let (mut up, kubeconfig) = start(&scratch, "loopback");
    let pid = serve_a_deployment(&scratch, &kubeconfig, &up.marker).await;
    up.signal(signal);
    let status = up.wait().await;
    assert_eq!(status.code(), Some(0), "kubesim after {signal}: {}", log_of(&scratch));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() && pod_processes(&up.marker).is_empty(),
        "the pod process outlived kubesim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_kubectl_and_stops_on_sigterm() {
    stops_cleanly_on(Signal::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_kubectl_and_stops_on_sigint() {
    stops_cleanly_on(Signal::SIGINT).await;
}

async fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_in_netns_mode_removes_the_pod_network_on_sigterm() {
    if !shunt_netns::root_available("up_in_netns_mode_removes_the_pod_network_on_sigterm") {
        return;
    }
    let scratch = Scratch::new();
    let (mut up, kubeconfig) = start(&scratch, "netns");
    let pid = serve_a_deployment(&scratch, &kubeconfig, &up.marker).await;
    let identify = ip(&["netns", "identify", &pid.to_string()]).await;
    let netns = String::from_utf8_lossy(&identify.stdout).trim().to_owned();
    // kubesim-<bridge index>-<pod number>, on bridge ksim<index>.
    let index = netns
        .strip_prefix("kubesim-")
        .and_then(|rest| rest.split_once('-'))
        .map(|(index, _)| index.to_owned())
        .unwrap_or_else(|| panic!("the pod runs in a kubesim netns, not {netns:?}"));
    let bridge = format!("ksim{index}");
    assert!(ip(&["link", "show", &bridge]).await.status.success());

    up.signal(Signal::SIGTERM);
    let status = up.wait().await;
    assert_eq!(status.code(), Some(0), "kubesim after SIGTERM: {}", log_of(&scratch));
    assert!(pod_processes(&up.marker).is_empty(), "the pod process outlived kubesim");
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "the pod's netns {netns} is left"
    );
    assert!(
        !ip(&["link", "show", &bridge]).await.status.success(),
        "the bridge {bridge} is left"
    );
}
