//! The whole of shunt on kubesim, all real code, installed from the Helm chart
//! ([`super::install`]): the operator and the webhook run as pods of the chart's
//! Deployments (images `shunt/operator` → `shunt __operator`, `shunt/webhook` →
//! `shunt __webhook`), with the chart's ServiceAccounts, RBAC, APIService and webhook
//! configuration; the webhook injects `shunt/sidecar` (`shunt __sidecar`) into the pods of
//! namespace `shop`, which holds Deployment `api` (`kubesim/echo` → `shunt __echo`, port
//! `http` 8080, env `GREETING` and `DB_PASSWORD`) and Service `api` (port 80 → `http`). The developers are bound to the
//! chart's ClusterRole `shunt-user` in `shop`.
//!
//! Loopback mode needs no root (sidecars take over the app's port); netns mode (root)
//! gives every pod a network namespace and the sidecars redirect with nftables, as on a
//! real cluster.
//!
//! [`Stack::start`] returns once every replica is Ready with its sidecar connected to the
//! hub. Dropping the stack stops everything and removes its directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};

use super::install::{self, Settings, RELEASE_NS};
pub use super::kube::{client_for, container_pid, create, poll, request};

/// The namespace of the demo workload.
pub const NS: &str = "shop";
/// The operator's and webhook's namespace.
pub const SYSTEM_NS: &str = RELEASE_NS;
/// The developers the ClusterRole `shunt-user` is bound to in [`NS`].
pub const DEVELOPERS: [&str; 3] = ["alice", "bob", "carol"];
/// The admin user of kubesim (group `system:masters`).
const ADMIN: &str = "kubesim-admin";
/// The operator's admin port (`/metrics`, `/readyz`).
const OPERATOR_ADMIN_PORT: u16 = 9090;
/// The hub's Service port.
const HUB_PORT: u16 = 15443;

/// How to start the stack.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// The `shunt` binary the pods run (`__operator`, `__webhook`, `__sidecar`, `__echo`).
    pub shunt_exe: PathBuf,
    /// Replicas of Deployment `api`.
    pub replicas: u32,
    /// The operator's `--session-grace`.
    pub session_grace: Duration,
    /// How long to wait for each step.
    pub timeout: Duration,
    /// Pod networking: loopback (no root) or netns (root, nftables redirects).
    pub network: kubesim::Network,
    /// Operator replicas (2: a standby takes over when the leader goes).
    pub operator_replicas: u32,
}

impl StackOptions {
    /// Loopback networking, 2 s session grace, 120 s per step (a loaded 2-core CI machine).
    pub fn new(shunt_exe: PathBuf, replicas: u32) -> StackOptions {
        StackOptions {
            shunt_exe,
            replicas,
            session_grace: Duration::from_secs(2),
            timeout: Duration::from_secs(120),
            network: kubesim::Network::Loopback,
            operator_replicas: 1,
        }
    }
}

/// A running stack; everything stops when it is dropped.
pub struct Stack {
    /// The cluster (pods stop with it).
    pub cluster: kubesim::Cluster,
    /// An admin client (`system:masters`).
    pub admin: kube::Client,
    /// Service `api`'s cluster address (port 80).
    pub service: SocketAddr,
    /// The operator's hub: Service `shunt-operator`'s cluster address.
    pub hub: SocketAddr,
    dir: PathBuf,
    timeout: Duration,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("shunt-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

impl Stack {
    /// Starts kubesim, installs the chart, deploys the workload and waits until every
    /// replica is Ready with its sidecar connected.
    pub async fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let dir = scratch_dir()?;
        let exe = options.shunt_exe.display().to_string();
        let run = |command: &str| vec![exe.clone(), command.to_owned()];
        let images = [
            ("shunt/operator".to_owned(), run("__operator")),
            ("shunt/webhook".to_owned(), run("__webhook")),
            ("shunt/sidecar".to_owned(), run("__sidecar")),
            (kubesim::kubelet::images::ECHO_IMAGE.to_owned(), run("__echo")),
        ];
        let netns = matches!(options.network, kubesim::Network::Netns);
        let cluster = kubesim::Cluster::start(kubesim::Options {
            network: options.network,
            images: images.into(),
        })
        .await
        .context("cannot start kubesim")?;
        let admin = client_for(&cluster, ADMIN, &["system:masters"]).await?;
        let settings = Settings {
            session_grace: options.session_grace,
            hub_by_ip: !netns,
            operator_replicas: options.operator_replicas,
        };
        let manifests = if netns {
            install::NETNS_MANIFESTS
        } else {
            install::LOOPBACK_MANIFESTS
        };
        install::install(&admin, manifests, &settings, options.timeout)
            .await
            .context("installing the chart's rendered manifests")?;
        let hub = service_address(&admin, SYSTEM_NS, "shunt-operator", HUB_PORT).await?;
        let mut stack = Stack {
            cluster,
            admin,
            service: SocketAddr::from(([127, 0, 0, 1], 0)),
            hub,
            dir,
            timeout: options.timeout,
        };
        stack.deploy(options.replicas).await?;
        stack.wait_ready(options.replicas).await?;
        Ok(stack)
    }

    async fn deploy(&mut self, replicas: u32) -> anyhow::Result<()> {
        let admin = &self.admin;
        let shop = json!({"metadata": {"name": NS, "labels": {shunt_proto::names::LABEL_INJECTION: "enabled"}}});
        create(admin, "/api/v1/namespaces", shop).await?;
        let binding = json!({"metadata": {"name": "shunt-user"},
            "subjects": DEVELOPERS.iter().map(|u| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u})).collect::<Vec<_>>(),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "shunt-user"}});
        create(
            admin,
            &format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}/rolebindings"),
            binding,
        )
        .await?;
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"}, "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": "api"}},
            "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"terminationGracePeriodSeconds": 1,
                "containers": [{"name": "echo", "image": kubesim::kubelet::images::ECHO_IMAGE,
                    "ports": [{"name": "http", "containerPort": 8080}],
                    // What `shunt exec` hands a local program (minus what it excludes).
                    "env": [{"name": "GREETING", "value": "hello from the pod"},
                        {"name": "DB_PASSWORD", "value": "not-for-laptops"}]}]}}}});
        create(admin, &format!("/apis/apps/v1/namespaces/{NS}/deployments"), deployment).await?;
        let service = json!({"metadata": {"name": "api"}, "spec": {"selector": {"app": "api"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
        create(admin, &format!("/api/v1/namespaces/{NS}/services"), service).await?;
        self.service = service_address(admin, NS, "api", 80).await?;
        Ok(())
    }

    /// Writes a client-certificate kubeconfig for `user` into the stack's directory.
    pub fn kubeconfig(&self, user: &str) -> anyhow::Result<PathBuf> {
        self.kubeconfig_with_groups(user, &[])
    }

    /// Writes a client-certificate kubeconfig for `user` in `groups` into the stack's directory.
    pub fn kubeconfig_with_groups(&self, user: &str, groups: &[&str]) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("{user}.kubeconfig.json"));
        self.cluster.write_kubeconfig(&path, user, groups)?;
        Ok(path)
    }

    /// The stack's scratch directory (kubeconfigs, CA files).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The CA bundle sidecars trust for the hub (Secret `shunt-tls`, kept by the webhook).
    pub async fn hub_ca_pem(&self) -> anyhow::Result<String> {
        use base64::Engine as _;
        let path = format!("/api/v1/namespaces/{SYSTEM_NS}/secrets/shunt-tls");
        let (status, secret) = request(&self.admin, "GET", &path, None).await?;
        anyhow::ensure!(status == 200, "cannot read Secret shunt-tls ({status}): {secret}");
        let data = secret["data"]["ca-bundle.crt"]
            .as_str()
            .or_else(|| secret["data"]["ca.crt"].as_str())
            .context("Secret shunt-tls holds no CA")?;
        let pem = base64::engine::general_purpose::STANDARD.decode(data)?;
        Ok(String::from_utf8(pem)?)
    }

    /// The pods of Deployment `api` as JSON.
    pub async fn pods(&self) -> anyhow::Result<Vec<Value>> {
        self.pods_labelled(NS, "app%3Dapi").await
    }

    async fn pods_labelled(&self, ns: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
        let path = format!("/api/v1/namespaces/{ns}/pods?labelSelector={selector}");
        let (_, list) = request(&self.admin, "GET", &path, None).await?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// The operator's leader pod (the holder of the Lease `shunt-operator`), or its only
    /// live pod.
    pub async fn operator_pod(&self) -> anyhow::Result<Value> {
        let selector = "app.kubernetes.io%2Fcomponent%3Doperator";
        let pods = self.pods_labelled(SYSTEM_NS, selector).await?;
        let path = format!("/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NS}/leases/shunt-operator");
        let holder = match request(&self.admin, "GET", &path, None).await {
            Ok((200, lease)) => lease["spec"]["holderIdentity"].as_str().map(str::to_owned),
            _ => None,
        };
        let live = pods
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null());
        let mut live: Vec<Value> = live.collect();
        if let Some(at) = live
            .iter()
            .position(|p| p["metadata"]["name"].as_str() == holder.as_deref())
        {
            return Ok(live.swap_remove(at));
        }
        live.into_iter().next().context("the operator has no pod")
    }

    /// The operator's process id (its container's).
    pub async fn operator_pid(&self) -> anyhow::Result<u32> {
        let pod = self.operator_pod().await?;
        container_pid(&pod, "operator").context("the operator's container is not running")
    }

    /// The sessions of `shop`, as the API serves them to the admin.
    pub async fn sessions(&self) -> anyhow::Result<Vec<Value>> {
        let path = format!("/apis/api.shunt.dev/v1/namespaces/{NS}/sessions");
        let (status, list) = request(&self.admin, "GET", &path, None).await?;
        anyhow::ensure!(status == 200, "listing sessions failed ({status}): {list}");
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// `shunt_operator_hub_connected_sidecars` from the operator's `/metrics`.
    pub async fn connected_sidecars(&self) -> Option<u64> {
        let pod = self.operator_pod().await.ok()?;
        let ip: std::net::IpAddr = pod["status"]["podIP"].as_str()?.parse().ok()?;
        let admin = SocketAddr::new(ip, OPERATOR_ADMIN_PORT);
        let text = super::traffic::get_text(admin, "/metrics").await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("shunt_operator_hub_connected_sidecars "))
            .and_then(|n| n.trim().parse().ok())
    }

    /// `kill -9` of the operator's process; the kubelet restarts it (as on a cluster),
    /// and [`Stack::wait_operator_back`] waits for that.
    pub async fn kill_operator(&self) -> anyhow::Result<()> {
        let pid = self.operator_pid().await?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).context("cannot kill the operator")
    }

    /// Waits until the operator runs again after [`Stack::kill_operator`]: restarted by the
    /// kubelet, Ready (leader, serving) and the APIService Available.
    pub async fn wait_operator_back(&self, killed_pid: u32) -> anyhow::Result<()> {
        poll("the operator to restart and be Ready", self.timeout, async || {
            let pod = self.operator_pod().await.ok()?;
            let pid = container_pid(&pod, "operator")?;
            (pid != killed_pid && super::kube::pod_ready(&pod)).then_some(())
        })
        .await
    }

    /// Scales Deployment `api` to `replicas` and waits until they are all Ready and connected.
    pub async fn scale(&self, replicas: u32) -> anyhow::Result<()> {
        let path = format!("/apis/apps/v1/namespaces/{NS}/deployments/api");
        let (status, body) = request(
            &self.admin,
            "PATCH",
            &path,
            Some(&json!({"spec": {"replicas": replicas}})),
        )
        .await?;
        anyhow::ensure!(status < 300, "scaling deployment/api failed ({status}): {body}");
        self.wait_ready(replicas).await
    }

    /// Waits until exactly `replicas` pods of `api` are Ready, injected and in the Service's
    /// Endpoints, and the hub counts as many connected sidecars.
    pub async fn wait_ready(&self, replicas: u32) -> anyhow::Result<()> {
        let want = usize::try_from(replicas)?;
        poll(
            &format!("{replicas} Ready pods of deployment/api with their sidecars connected to the hub"),
            self.timeout,
            async || {
                let pods = self.pods().await.ok()?;
                let live: Vec<&Value> = pods
                    .iter()
                    .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                    .collect();
                let ready = live.iter().filter(|p| ready(p)).count();
                let connected = self.connected_sidecars().await?;
                let path = format!("/api/v1/namespaces/{NS}/endpoints/api");
                let (_, endpoints) = request(&self.admin, "GET", &path, None).await.ok()?;
                let in_service: usize = endpoints["subsets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| s["addresses"].as_array().map_or(0, Vec::len))
                    .sum();
                let all = live.len() == want && ready == want && in_service == want;
                (all && connected == u64::from(replicas)).then_some(())
            },
        )
        .await
    }

    /// Waits until the sidecar of every pod of `api` lists `routes` routes on its admin port.
    pub async fn wait_routes(&self, routes: usize) -> anyhow::Result<()> {
        poll(&format!("{routes} routes on every sidecar"), self.timeout, async || {
            for pod in self.pods().await.ok()? {
                let ip: std::net::IpAddr = pod["status"]["podIP"].as_str()?.parse().ok()?;
                let admin = SocketAddr::new(ip, shunt_proto::names::DEFAULT_ADMIN_PORT);
                let text = super::traffic::get_text(admin, "/routes").await.ok()?;
                let doc: Value = serde_json::from_str(&text).ok()?;
                if doc["routes"].as_array().map_or(0, Vec::len) != routes {
                    return None;
                }
            }
            Some(())
        })
        .await
    }
}

/// A Service's cluster address on `port`.
async fn service_address(admin: &kube::Client, ns: &str, name: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let (status, service) = request(admin, "GET", &format!("/api/v1/namespaces/{ns}/services/{name}"), None).await?;
    anyhow::ensure!(status == 200, "Service {ns}/{name} is missing ({status}): {service}");
    kubesim::network::balancer::service_address(&service, port)
        .with_context(|| format!("Service {ns}/{name} has no cluster IP: {service}"))
}

/// Ready, with the sidecar (an init container) running too.
fn ready(pod: &Value) -> bool {
    let injected = pod["status"]["initContainerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == shunt_proto::names::SIDECAR_CONTAINER && c["ready"] == true);
    super::kube::pod_ready(pod) && injected
}
