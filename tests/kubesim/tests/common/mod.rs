//! Helpers shared by the integration tests: a scratch directory, the real `kubectl` for
//! one user of one cluster, and polling with a deadline.

#![allow(dead_code, reason = "each test binary uses its own subset of the helpers")]

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kubesim::Cluster;
use tokio::process::Command;

pub const KUBECTL: &str = "/usr/bin/kubectl";
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kubesim-kubectl-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// kubectl for one user of one cluster (its own discovery cache, no ambient config).
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub cache: PathBuf,
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    pub fn new(cluster: &Cluster, scratch: &Scratch, user: &str, groups: &[&str]) -> Kubectl {
        let kubeconfig = scratch.0.join(format!("{user}.kubeconfig"));
        cluster.write_kubeconfig(&kubeconfig, user, groups).unwrap();
        Kubectl {
            kubeconfig,
            cache: scratch.0.join(format!("{user}.cache")),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(KUBECTL);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args);
        cmd.env_remove("KUBECONFIG").kill_on_drop(true);
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        let out = tokio::time::timeout(DEADLINE, self.command(args).output())
            .await
            .expect("kubectl finished in time")
            .unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and expects success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert!(run.ok, "kubectl {args:?} failed: {}{}", run.stdout, run.stderr);
        run.stdout
    }

    /// Runs and expects failure; returns stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert!(!run.ok, "kubectl {args:?} should have failed: {}", run.stdout);
        run.stderr
    }
}

/// Polls `f` until it returns `Some`, failing the test with `what` after [`DEADLINE`].
pub async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
