//! The "kubelet": runs every pod scheduled to kubesim's node as local processes.
//!
//! A sync loop (on pod and Service changes, and every second) starts a worker per new
//! pod ([`pod`]), hands a grace period to the worker of a pod being deleted, finishes
//! the deletion of pods that never ran, and keeps each netns pod's `/etc/hosts` in step
//! with the Services. Every container process is recorded in [`Procs`] so dropping the
//! cluster can kill whatever is left, synchronously. A container that mounts its
//! ServiceAccount gets a kubeconfig standing in for in-cluster config ([`api_access`]:
//! host processes cannot see `/var/run/secrets`).

pub mod api_access;
pub mod container;
pub mod env;
pub mod images;
pub mod logs;
pub mod pod;
pub mod probe;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{Api, DeleteOptions, User};
use crate::defaults::NODE_NAME;
use crate::network::{PodNet, PodNetwork};
use crate::store::ns_name;

/// The identity the kubelet acts as.
pub fn user() -> User {
    User::system(&format!("system:node:{NODE_NAME}"))
}

/// Sends `signal` to the process group `pid` leads (each container is one).
pub fn signal_group(pid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(-(pid as i32)), signal);
}

/// Every container process group alive, for a last-resort kill.
#[derive(Default)]
pub struct Procs {
    inner: Mutex<(bool, HashSet<u32>)>,
}

impl Procs {
    /// Records a started process; kills it at once if the node is shutting down.
    pub fn register(&self, pid: u32) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.0 {
            signal_group(pid, Signal::SIGKILL);
        }
        inner.1.insert(pid);
    }

    /// Forgets a reaped process.
    pub fn unregister(&self, pid: u32) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&pid);
    }

    /// Refuses new processes, SIGKILLs every recorded group and reaps them (bounded).
    pub fn kill_all(&self) {
        let pids: Vec<u32> = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.0 = true;
            inner.1.drain().collect()
        };
        for &pid in &pids {
            signal_group(pid, Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut left = pids;
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|&pid| {
                use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
                // Ok(StillAlive) waits on; an error (ECHILD: reaped elsewhere) or an exit is done.
                matches!(
                    waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)),
                    Ok(WaitStatus::StillAlive)
                )
            });
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

struct Worker {
    stop: watch::Sender<Option<i64>>,
    task: JoinHandle<()>,
}

struct Hosts {
    ns: String,
    hostname: String,
    net: PodNet,
    written: String,
}

/// The node agent.
pub struct Kubelet {
    /// The API.
    pub api: Arc<Api>,
    /// Pod networking.
    pub net: Arc<PodNetwork>,
    /// Image → command.
    pub images: images::Images,
    /// Container logs.
    pub logs: Arc<logs::Logs>,
    /// Live container processes.
    pub procs: Procs,
    /// Per-cluster scratch directory (pod volumes).
    pub root: PathBuf,
    /// The API server address pods are told (`KUBERNETES_SERVICE_HOST`/`_PORT`).
    pub api_addr: SocketAddr,
    workers: Mutex<HashMap<String, Worker>>,
    done: Mutex<HashSet<String>>,
    hosts: Mutex<HashMap<String, Hosts>>,
}

impl Kubelet {
    /// A kubelet for `api`; nothing runs until [`Kubelet::run`].
    pub fn new(
        api: Arc<Api>,
        net: Arc<PodNetwork>,
        images: images::Images,
        api_addr: SocketAddr,
    ) -> std::io::Result<Arc<Kubelet>> {
        let root = std::env::temp_dir().join(format!("kubesim-{}-{}", std::process::id(), crate::util::suffix(8)));
        std::fs::create_dir_all(&root)?;
        Ok(Arc::new(Kubelet {
            api,
            net,
            images,
            logs: Arc::default(),
            procs: Procs::default(),
            root,
            api_addr,
            workers: Mutex::default(),
            done: Mutex::default(),
            hosts: Mutex::default(),
        }))
    }

    /// Runs the sync loop until the task is aborted.
    pub async fn run(self: Arc<Self>) {
        let mut events = self.api.store.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.sync().await;
            tokio::select! {
                event = events.recv() => {
                    if matches!(&event, Ok(e) if e.resource.1 != "pods" && e.resource.1 != "services") {
                        continue;
                    }
                    while events.try_recv().is_ok() {}
                }
                _ = tick.tick() => {}
            }
        }
    }

    async fn sync(self: &Arc<Self>) {
        let pods: Vec<Value> = self
            .api
            .store
            .list(&(String::new(), "pods".into()), None)
            .0
            .into_iter()
            .filter(|p| p["spec"]["nodeName"] == NODE_NAME)
            .collect();
        let mut finish = Vec::new();
        {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
            let live: HashSet<&str> = pods.iter().filter_map(|p| p["metadata"]["uid"].as_str()).collect();
            for (uid, w) in workers.iter() {
                if !live.contains(uid.as_str()) {
                    w.stop.send_if_modified(|g| g.replace(0) != Some(0));
                }
            }
            let finished: Vec<String> = workers
                .iter()
                .filter(|(_, w)| w.task.is_finished())
                .map(|(uid, _)| uid.clone())
                .collect();
            for uid in finished {
                workers.remove(&uid);
                done.insert(uid);
            }
            done.retain(|uid| live.contains(uid.as_str()));
            for pod in &pods {
                let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
                let terminating = pod["metadata"]["deletionTimestamp"].is_string();
                if let Some(w) = workers.get(uid) {
                    if terminating {
                        let grace = pod["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(30);
                        w.stop.send_if_modified(|g| match *g {
                            Some(current) if current <= grace => false,
                            _ => {
                                *g = Some(grace);
                                true
                            }
                        });
                    }
                } else if terminating {
                    finish.push(pod.clone());
                } else if !done.contains(uid)
                    && !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                {
                    let (stop, rx) = watch::channel(None);
                    let task = tokio::spawn(pod::run(self.clone(), pod.clone(), rx));
                    workers.insert(uid.to_owned(), Worker { stop, task });
                }
            }
        }
        if let Ok(rt) = self.api.rt("", "pods") {
            for pod in finish {
                let (ns, name) = ns_name(&pod);
                let opts = DeleteOptions {
                    grace_seconds: Some(0),
                    ..DeleteOptions::default()
                };
                let _ = self.api.delete(&user(), &rt, &ns, &name, &opts).await;
            }
        }
        self.refresh_hosts();
    }

    /// Starts keeping `pod`'s hosts file (netns mode) and writes it.
    pub fn register_hosts(&self, uid: &str, pod: &Value, net: &PodNet) {
        if net.netns.is_none() {
            return;
        }
        let (ns, name) = ns_name(pod);
        let hostname = pod["spec"]["hostname"].as_str().unwrap_or(&name).to_owned();
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.insert(
            uid.to_owned(),
            Hosts {
                ns,
                hostname,
                net: net.clone(),
                written: String::new(),
            },
        );
        drop(hosts);
        self.refresh_hosts();
    }

    /// Stops keeping a pod's hosts file.
    pub fn unregister_hosts(&self, uid: &str) {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }

    fn refresh_hosts(&self) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.is_empty() {
            return;
        }
        let services = self.api.store.list(&(String::new(), "services".into()), None).0;
        for entry in hosts.values_mut() {
            let content = hosts_file(&services, &entry.ns, &entry.hostname, &entry.net, self.api_addr);
            if content != entry.written {
                self.net.write_hosts(&entry.net, &content);
                entry.written = content;
            }
        }
    }

    /// Asks every pod to stop within `grace` and waits for them (bounded).
    pub async fn shutdown(&self, grace: Duration) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut workers = self.workers.lock().unwrap_or_else(|p| p.into_inner());
            workers
                .drain()
                .map(|(_, w)| {
                    let _ = w.stop.send(Some(grace.as_secs() as i64));
                    w.task
                })
                .collect()
        };
        let all = futures_join(tasks);
        let _ = tokio::time::timeout(grace + Duration::from_secs(3), all).await;
        self.kill_all();
    }

    /// Kills every container process at once and removes the scratch directory.
    pub fn kill_all(&self) {
        for (_, w) in self.workers.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            w.task.abort();
        }
        self.procs.kill_all();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

/// A netns pod's `/etc/hosts`: itself, the API server, and every Service
/// (`svc.ns.svc.cluster.local`, `svc.ns.svc`, `svc.ns`, and `svc` in its own namespace).
pub fn hosts_file(services: &[Value], pod_ns: &str, hostname: &str, net: &PodNet, api: SocketAddr) -> String {
    let mut out = String::from("# kubesim: this pod's hosts (Services of the cluster)\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str(&format!("{}\t{hostname}\n", net.ip));
    out.push_str(&format!(
        "{}\tkubernetes.default.svc.cluster.local kubernetes.default.svc kubernetes.default{}\n",
        api.ip(),
        if pod_ns == "default" { " kubernetes" } else { "" }
    ));
    for svc in services {
        let Some(ip) = svc["spec"]["clusterIP"]
            .as_str()
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        else {
            continue;
        };
        let (ns, name) = ns_name(svc);
        out.push_str(&format!(
            "{ip}\t{name}.{ns}.svc.cluster.local {name}.{ns}.svc {name}.{ns}{}\n",
            if ns == pod_ns {
                format!(" {name}")
            } else {
                String::new()
            }
        ));
    }
    out
}
