//! One pod's life on the node: network and volumes, init containers in order (native
//! sidecars keep running), then the regular containers; restarts per `restartPolicy`;
//! phase, conditions and container statuses written to `status`; graceful termination
//! (SIGTERM to regular containers, then sidecars, SIGKILL at the grace deadline) and
//! finally the object's removal, as the kubelet does for a pod with `deletionTimestamp`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::container::{Ctr, Kind};
use super::env::Mounts;
use super::volumes::Volumes;
use super::{signal_group, Kubelet};
use crate::api::DeleteOptions;
use crate::network::PodNet;
use crate::store::ns_name;

const TICK: Duration = Duration::from_millis(100);

struct PodRun {
    k: Arc<Kubelet>,
    pod: Value,
    ns: String,
    name: String,
    uid: String,
    dir: PathBuf,
    net: Option<PodNet>,
    volumes: Volumes,
    ctrs: Vec<Ctr>,
    init_next: usize,
    init_failed: bool,
    written: Value,
    stopping: bool,
    prepared: bool,
}

/// Runs pod `pod` until it finishes or `stop` carries a grace period.
pub async fn run(k: Arc<Kubelet>, pod: Value, mut stop: watch::Receiver<Option<i64>>) {
    let (ns, name) = ns_name(&pod);
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let dir = k.root.join("pods").join(&uid);
    let mut ctrs: Vec<Ctr> = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            Ctr::new(
                c,
                if c["restartPolicy"] == "Always" {
                    Kind::Sidecar
                } else {
                    Kind::Init
                },
            )
        })
        .collect();
    ctrs.extend(
        pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Ctr::new(c, Kind::Main)),
    );
    k.logs.remove_pod(&ns, &name);
    if let Some(first) = ctrs.iter().find(|c| c.kind == Kind::Main) {
        k.logs.set_default(&ns, &name, &first.name);
    }
    let mut p = PodRun {
        k,
        pod,
        ns,
        name,
        uid,
        dir,
        net: None,
        volumes: Volumes::default(),
        ctrs,
        init_next: 0,
        init_failed: false,
        written: Value::Null,
        stopping: false,
        prepared: false,
    };
    let grace = loop {
        if let Some(grace) = *stop.borrow_and_update() {
            break grace;
        }
        if !p.prepared {
            if let Err(message) = p.setup() {
                p.write_waiting(&message).await;
                tokio::select! { _ = stop.changed() => {}, _ = tokio::time::sleep(Duration::from_secs(1)) => {} }
                continue;
            }
            p.prepared = true;
        }
        p.step().await;
        if p.finished() {
            p.stop_all(Duration::from_secs(5)).await;
            p.write_status().await;
            p.cleanup();
            return;
        }
        if !p.write_status().await {
            break 0; // the pod is gone
        }
        tokio::select! { _ = stop.changed() => {}, _ = tokio::time::sleep(TICK) => {} }
    };
    p.stopping = true;
    p.stop_all(Duration::from_secs(grace.max(0) as u64)).await;
    p.cleanup();
    p.k.logs.remove_pod(&p.ns, &p.name);
    // Bound tokens die with the pod object (not when a pod merely completes).
    p.k.api.tokens.revoke_pod(&p.uid);
    // Finish the deletion the API server started (only this pod: the uid must match).
    let pods = p.k.api.rt("", "pods");
    let current = p.k.api.store.get(&(String::new(), "pods".into()), &p.ns, &p.name);
    if let (Ok(rt), Some(current)) = (pods, current) {
        if current["metadata"]["uid"] == p.uid.as_str() {
            let opts = DeleteOptions {
                grace_seconds: Some(0),
                ..DeleteOptions::default()
            };
            let _ = p.k.api.delete(&super::user(), &rt, &p.ns, &p.name, &opts).await;
        }
    }
}

impl PodRun {
    /// Network (once) and volumes; `Err` says what is missing.
    fn setup(&mut self) -> Result<(), String> {
        if self.net.is_none() {
            let net = if self.host_network() {
                // The node's network: the address the API server listens on.
                let ip = match self.k.net.api_host() {
                    std::net::IpAddr::V4(ip) => ip,
                    std::net::IpAddr::V6(_) => std::net::Ipv4Addr::LOCALHOST,
                };
                PodNet { ip, netns: None }
            } else {
                self.k
                    .net
                    .attach()
                    .map_err(|e| format!("cannot set up the pod network: {e}"))?
            };
            self.pod["status"]["podIP"] = json!(net.ip.to_string());
            self.pod["status"]["hostIP"] = json!(self.k.net.api_host().to_string());
            self.k.register_hosts(&self.uid, &self.pod, &net);
            self.net = Some(net);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        self.volumes = Volumes::prepare(&self.k.api, &self.pod, &self.dir)?;
        Ok(())
    }

    fn mounts(&self, c: &Ctr) -> Mounts {
        let list = c.spec["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let host = self.volumes.paths.get(m["name"].as_str()?)?;
                let host = match m["subPath"].as_str().filter(|s| !s.is_empty()) {
                    Some(sub) => host.join(sub),
                    None => host.clone(),
                };
                Some((
                    m["mountPath"].as_str()?.trim_end_matches('/').to_owned(),
                    host.to_string_lossy().into_owned(),
                ))
            })
            .collect();
        Mounts(list)
    }

    fn start(&mut self, i: usize) {
        let Some(net) = self.net.clone() else { return };
        let mounts = self.mounts(&self.ctrs[i]);
        let home = self.dir.to_string_lossy().into_owned();
        let access = super::api_access::prepare(&self.dir, &self.ctrs[i].spec, &mounts, self.k.api_addr, &self.ns);
        let started = access
            .map_err(|message| ("CreateContainerConfigError", message))
            .and_then(|kubeconfig| {
                let kubeconfig = kubeconfig.map(|p| p.to_string_lossy().into_owned());
                let files = super::env::HostFiles {
                    home: &home,
                    kubeconfig: kubeconfig.as_deref(),
                };
                self.ctrs[i].start(&self.k, &self.pod, &net, &mounts, files)
            });
        if let Err((reason, message)) = started {
            tracing::warn!(pod = %format!("{}/{}", self.ns, self.name), container = %self.ctrs[i].name, reason, %message, "container cannot start");
            self.ctrs[i].failed_to_start(reason, message);
        }
    }

    async fn step(&mut self) {
        let policy = self.pod["spec"]["restartPolicy"]
            .as_str()
            .unwrap_or("Always")
            .to_owned();
        for i in 0..self.ctrs.len() {
            let exited = self.ctrs[i].child.as_mut().map(|c| c.try_wait());
            let status = match exited {
                Some(Ok(Some(status))) => status,
                _ => continue,
            };
            let code = status.code().unwrap_or(1);
            let restart = !self.stopping
                && match self.ctrs[i].kind {
                    Kind::Sidecar => true,
                    Kind::Init => code != 0 && policy != "Never",
                    Kind::Main => policy == "Always" || (policy == "OnFailure" && code != 0),
                };
            if self.ctrs[i].kind == Kind::Init && code != 0 && !restart {
                self.init_failed = true;
            }
            let k = self.k.clone();
            self.ctrs[i].exited(&k, status, restart);
        }
        let inits = self.ctrs.iter().filter(|c| c.kind != Kind::Main).count();
        while self.init_next < inits && !self.init_failed {
            let c = &self.ctrs[self.init_next];
            let advance = match c.kind {
                Kind::Sidecar => c.running(),
                _ => c.done && c.exit_code == Some(0),
            };
            if advance {
                self.init_next += 1;
                continue;
            }
            if !c.ran && !c.running() && c.next_start.is_none() {
                self.start(self.init_next);
            }
            break;
        }
        let now = Instant::now();
        for i in 0..self.ctrs.len() {
            let c = &self.ctrs[i];
            let first_start = c.kind == Kind::Main
                && self.init_next >= inits
                && !self.init_failed
                && !c.ran
                && c.next_start.is_none()
                && !c.running();
            let due = c.next_start.is_some_and(|t| t <= now) && !c.running();
            if (first_start || due) && !self.stopping {
                self.start(i);
            }
        }
        for i in 0..self.ctrs.len() {
            if !self.ctrs[i].probe().await {
                tracing::info!(pod = %format!("{}/{}", self.ns, self.name), container = %self.ctrs[i].name, "liveness probe failed; restarting the container");
                if let Some(pid) = self.ctrs[i].pid {
                    signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
        self.volumes.refresh(&self.k.api, &self.pod);
    }

    fn mains(&self) -> impl Iterator<Item = &Ctr> {
        self.ctrs.iter().filter(|c| c.kind == Kind::Main)
    }

    fn finished(&self) -> bool {
        self.init_failed || self.mains().all(|c| c.done)
    }

    fn phase(&self) -> &'static str {
        if self.init_failed {
            "Failed"
        } else if self.mains().all(|c| c.done) {
            if self.mains().all(|c| c.exit_code == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if self.mains().any(|c| c.ran) {
            "Running"
        } else {
            "Pending"
        }
    }

    fn status(&self) -> Value {
        let old = &self.written;
        let cond = |kind: &str, ok: bool| {
            let status = if ok { "True" } else { "False" };
            let since = crate::util::transition_time(old, kind, status);
            json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since})
        };
        let inits = self.ctrs.iter().filter(|c| c.kind != Kind::Main).count();
        let initialized = self.init_next >= inits;
        let ready = initialized && self.ctrs.iter().filter(|c| c.kind != Kind::Init).all(|c| c.ready);
        let ip = self.pod["status"]["podIP"].clone();
        let host = self.pod["status"]["hostIP"].clone();
        let mut s = json!({
            "phase": self.phase(),
            "conditions": [cond("PodReadyToStartContainers", self.net.is_some()), cond("Initialized", initialized), cond("Ready", ready), cond("ContainersReady", ready), cond("PodScheduled", true)],
            "hostIP": host, "hostIPs": [{"ip": host}],
            "podIP": ip, "podIPs": [{"ip": ip}],
            "startTime": self.pod["metadata"]["creationTimestamp"],
            "qosClass": "BestEffort",
            "containerStatuses": self.mains().map(Ctr::status).collect::<Vec<_>>(),
        });
        if inits > 0 {
            s["initContainerStatuses"] = json!(self
                .ctrs
                .iter()
                .filter(|c| c.kind != Kind::Main)
                .map(Ctr::status)
                .collect::<Vec<_>>());
        }
        if ip.is_null() {
            for field in ["podIP", "podIPs", "hostIP", "hostIPs"] {
                s.as_object_mut().map(|m| m.remove(field));
            }
        }
        s
    }

    async fn write_waiting(&mut self, message: &str) {
        tracing::warn!(pod = %format!("{}/{}", self.ns, self.name), %message, "pod cannot start yet");
        for c in self.ctrs.iter_mut() {
            c.state = json!({"waiting": {"reason": "ContainerCreating", "message": message}});
        }
        self.write_status().await;
    }

    /// Writes the status if it changed; false once the pod (this uid) is gone.
    async fn write_status(&mut self) -> bool {
        let status = self.status();
        if status == self.written {
            return true;
        }
        let Ok(rt) = self.k.api.rt("", "pods") else {
            return false;
        };
        let Some(mut current) = self
            .k
            .api
            .store
            .get(&(String::new(), "pods".into()), &self.ns, &self.name)
        else {
            return false;
        };
        if current["metadata"]["uid"] != self.uid.as_str() {
            return false;
        }
        current["status"] = status.clone();
        match self
            .k
            .api
            .update(&super::user(), &rt, &self.ns, &self.name, current, Some("status"))
            .await
        {
            Ok(_) => self.written = status,
            Err(e) => {
                tracing::debug!(pod = %format!("{}/{}", self.ns, self.name), error = %e.message, "pod status write failed; retrying")
            }
        }
        true
    }

    /// SIGTERM to regular containers, then to sidecars and init containers (reverse
    /// order), each group SIGKILLed at the deadline.
    async fn stop_all(&mut self, grace: Duration) {
        self.stopping = true;
        let deadline = Instant::now() + grace;
        let k = self.k.clone();
        let groups: [Vec<usize>; 2] = [
            (0..self.ctrs.len())
                .filter(|i| self.ctrs[*i].kind == Kind::Main)
                .collect(),
            (0..self.ctrs.len())
                .filter(|i| self.ctrs[*i].kind != Kind::Main)
                .rev()
                .collect(),
        ];
        for group in groups {
            for &i in &group {
                if let Some(pid) = self.ctrs[i].pid {
                    signal_group(pid, nix::sys::signal::Signal::SIGTERM);
                }
            }
            let mut killed: Option<Instant> = None;
            loop {
                for &i in &group {
                    if let Some(Ok(Some(status))) = self.ctrs[i].child.as_mut().map(|c| c.try_wait()) {
                        self.ctrs[i].exited(&k, status, false);
                    }
                }
                // A process that outlives SIGKILL by 5 s is stuck in the kernel: give up on it.
                if group.iter().all(|&i| !self.ctrs[i].running())
                    || killed.is_some_and(|t| t.elapsed() > Duration::from_secs(5))
                {
                    break;
                }
                if Instant::now() >= deadline && killed.is_none() {
                    for &i in &group {
                        if let Some(pid) = self.ctrs[i].pid {
                            signal_group(pid, nix::sys::signal::Signal::SIGKILL);
                        }
                    }
                    killed = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.write_status().await;
        }
    }

    fn host_network(&self) -> bool {
        self.pod["spec"]["hostNetwork"] == true
    }

    fn cleanup(&mut self) {
        if let Some(net) = self.net.take() {
            self.k.unregister_hosts(&self.uid);
            if !self.host_network() {
                self.k.net.detach(&net);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
