//! One container: how its process is built (image argv or `command`, then `args`, with
//! `$(VAR)` expansion and mount paths rewritten), started (its own process group, in the
//! pod's network, stdout/stderr to the logs), watched and restarted with back-off, and
//! how it appears in `containerStatuses`.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::process::Child;

use super::env::{self, Mounts};
use super::probe::{Prober, Target};
use super::Kubelet;
use crate::network::PodNet;

/// The first restart waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest restart back-off.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What role a container plays in the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An init container that runs to completion.
    Init,
    /// An init container with `restartPolicy: Always` (native sidecar).
    Sidecar,
    /// A regular container.
    Main,
}

/// A container's runtime state.
pub struct Ctr {
    /// Name.
    pub name: String,
    /// The container spec.
    pub spec: Value,
    /// Role.
    pub kind: Kind,
    /// The running process.
    pub child: Option<Child>,
    /// Its pid (= process group).
    pub pid: Option<u32>,
    /// Times restarted.
    pub restarts: u32,
    /// Current `state` (Kubernetes ContainerState).
    pub state: Value,
    /// Previous `state` (after a restart).
    pub last_state: Value,
    /// Ready (readiness probe, or running without one).
    pub ready: bool,
    /// When to (re)start, if it should.
    pub next_start: Option<Instant>,
    /// Whether it ever ran.
    pub ran: bool,
    /// Finished for good (exited and will not restart).
    pub done: bool,
    /// Exit code of the last run.
    pub exit_code: Option<i32>,
    started_at: Option<(Instant, String)>,
    backoff: Duration,
    /// Readiness probe.
    pub readiness: Option<Prober>,
    /// Liveness probe.
    pub liveness: Option<Prober>,
    /// The probe target, set at start.
    pub target: Option<Target>,
}

impl Ctr {
    /// A container that has not started yet.
    pub fn new(spec: &Value, kind: Kind) -> Ctr {
        Ctr {
            name: spec["name"].as_str().unwrap_or_default().to_owned(),
            spec: spec.clone(),
            kind,
            child: None,
            pid: None,
            restarts: 0,
            state: json!({"waiting": {"reason": if kind == Kind::Main { "ContainerCreating" } else { "PodInitializing" }}}),
            last_state: json!({}),
            ready: false,
            next_start: None,
            ran: false,
            done: false,
            exit_code: None,
            started_at: None,
            backoff: MIN_BACKOFF,
            readiness: None,
            liveness: None,
            target: None,
        }
    }

    /// Running now.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process. `Err` is (waiting reason, message).
    pub fn start(
        &mut self,
        k: &Arc<Kubelet>,
        pod: &Value,
        net: &PodNet,
        mounts: &Mounts,
        files: env::HostFiles<'_>,
    ) -> Result<(), (&'static str, String)> {
        let image = self.spec["image"].as_str().unwrap_or_default();
        let image_argv = k.images.resolve(image).map_err(|m| {
            (
                if self.ran || self.next_start.is_some() {
                    "ImagePullBackOff"
                } else {
                    "ErrImagePull"
                },
                m,
            )
        })?;
        let home = files.home;
        let env = env::build(&k.api, pod, &self.spec, k.api_addr, mounts, files)
            .map_err(|m| ("CreateContainerConfigError", m))?;
        let strings = |field: &str| -> Vec<String> {
            self.spec[field]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str())
                .map(|a| env.expand(a))
                .collect()
        };
        let (command, args) = (strings("command"), strings("args"));
        let mut argv = if command.is_empty() { image_argv } else { command };
        argv.extend(args);
        let argv: Vec<String> = k.net.wrap(net, argv.iter().map(|a| mounts.rewrite(a)).collect());
        let cwd = self.spec["workingDir"]
            .as_str()
            .map(|w| mounts.rewrite(w))
            .filter(|w| std::path::Path::new(w).is_dir())
            .unwrap_or_else(|| home.to_owned());
        let (program, rest) = argv
            .split_first()
            .ok_or(("RunContainerError", "the container has no command".to_owned()))?;
        let mut child = tokio::process::Command::new(program)
            .args(rest)
            .env_clear()
            .envs(env.0.iter().cloned())
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ("RunContainerError", format!("cannot run {program}: {e}")))?;
        let pid = child.id().unwrap_or_default();
        k.procs.register(pid);
        let key = |c: &Ctr| {
            (
                pod["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
                pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
                c.name.clone(),
            )
        };
        if let Some(out) = child.stdout.take() {
            tokio::spawn(k.logs.clone().capture(key(self), out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(k.logs.clone().capture(key(self), err));
        }
        if self.ran {
            self.restarts += 1;
        }
        let now = Instant::now();
        let ts = crate::util::now();
        tracing::debug!(pod = %format!("{}/{}", key(self).0, key(self).1), container = %self.name, pid, argv = ?argv, "container started");
        self.state = json!({"running": {"startedAt": ts}});
        self.started_at = Some((now, ts));
        self.child = Some(child);
        self.pid = Some(pid);
        self.ran = true;
        self.next_start = None;
        self.ready = false;
        let ip = pod["status"]["podIP"]
            .as_str()
            .and_then(|i| i.parse().ok())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        self.target = Some(Target {
            ip,
            container: self.spec.clone(),
            wrap: k.net.wrap(net, Vec::new()),
            env: env.0.clone(),
        });
        self.readiness = self
            .spec
            .get("readinessProbe")
            .filter(|p| p.is_object())
            .map(|p| Prober::new(p.clone(), now, false));
        self.liveness = self
            .spec
            .get("livenessProbe")
            .filter(|p| p.is_object())
            .map(|p| Prober::new(p.clone(), now, true));
        Ok(())
    }

    /// Records that the process exited; schedules a restart if `restart` says so.
    pub fn exited(&mut self, k: &Kubelet, status: std::process::ExitStatus, restart: bool) {
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        if let Some(pid) = self.pid.take() {
            k.procs.unregister(pid);
        }
        self.child = None;
        self.ready = false;
        self.readiness = None;
        self.liveness = None;
        self.exit_code = Some(code);
        let (started, started_ts) = self
            .started_at
            .take()
            .unwrap_or_else(|| (Instant::now(), crate::util::now()));
        let mut terminated = json!({
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": started_ts,
            "finishedAt": crate::util::now(),
        });
        if let Some(signal) = status.signal() {
            terminated["signal"] = json!(signal);
        }
        if restart {
            if started.elapsed() > MAX_BACKOFF * 2 {
                self.backoff = MIN_BACKOFF;
            }
            self.next_start = Some(Instant::now() + self.backoff);
            let message = format!(
                "back-off {}s restarting failed container={}",
                self.backoff.as_secs(),
                self.name
            );
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            self.last_state = json!({ "terminated": terminated });
            self.state = json!({"waiting": {"reason": "CrashLoopBackOff", "message": message}});
        } else {
            self.done = true;
            self.state = json!({ "terminated": terminated });
        }
    }

    /// A start failed: wait (with back-off) and say why.
    pub fn failed_to_start(&mut self, reason: &str, message: String) {
        self.state = json!({"waiting": {"reason": reason, "message": message}});
        self.next_start = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Updates probes; returns false when the liveness probe says to restart.
    pub async fn probe(&mut self) -> bool {
        let Some(target) = self.target.clone() else { return true };
        if !self.running() {
            return true;
        }
        match &mut self.readiness {
            Some(p) => {
                p.tick(&target).await;
                self.ready = p.passing;
            }
            None => self.ready = true,
        }
        match &mut self.liveness {
            Some(p) => {
                p.tick(&target).await;
                p.passing
            }
            None => true,
        }
    }

    /// The `containerStatuses` entry.
    pub fn status(&self) -> Value {
        let image = self.spec["image"].as_str().unwrap_or_default();
        let mut s = json!({
            "name": self.name,
            "image": image,
            "imageID": format!("kubesim://{}", super::images::image_name(image)),
            "ready": self.ready,
            "started": self.running(),
            "restartCount": self.restarts,
            "state": self.state,
            "lastState": self.last_state,
        });
        if let Some(pid) = self.pid {
            s["containerID"] = json!(format!("kubesim://{pid}"));
        }
        s
    }
}
