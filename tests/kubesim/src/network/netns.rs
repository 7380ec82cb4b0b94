//! netns mode (root): a bridge per cluster, a network namespace and veth per pod, Service
//! addresses on the bridge, and per-pod `/etc/hosts` files.
//!
//! Creating the bridge `ksim<i>` is the allocation of index `i` (the kernel refuses a
//! second one), so clusters in parallel tests and processes never share addresses. A pid
//! file per index in [`OWNER_DIR`] lets a later cluster remove what a killed one left.
//!
//! Names: namespace `kubesim-<i>-<n>`, host-side veth `ksv<i>x<n>` (on the bridge), pod
//! side `eth0` with 10.215.i.n/24 and a default route via the bridge (10.215.i.1).
//! `ip netns exec` bind-mounts `/etc/netns/<namespace>/hosts` over `/etc/hosts`, which is
//! how pods resolve Service names; the file is rewritten in place (the bind mount holds
//! the inode) when Services change. A `resolv.conf` naming the pod's own loopback as its
//! only nameserver keeps lookups of other names local and quick to fail.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

/// Where the owner pid of each bridge index is recorded.
pub const OWNER_DIR: &str = "/run/kubesim";
const MAX_CLUSTERS: u8 = 250;

fn ip(args: &[&str]) -> io::Result<Output> {
    Command::new("ip").args(args).stdin(Stdio::null()).output()
}

fn check(args: &[&str]) -> io::Result<()> {
    let out = ip(args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The bridge of one cluster and what hangs off it.
pub struct Bridge {
    index: u8,
    name: String,
    addresses: Mutex<BTreeSet<Ipv4Addr>>,
    pods: Mutex<BTreeSet<String>>,
}

impl Bridge {
    /// Claims a free index and creates its bridge.
    pub fn create() -> io::Result<Bridge> {
        remove_orphans();
        for index in 0..MAX_CLUSTERS {
            let name = format!("ksim{index}");
            if !ip(&["link", "add", &name, "type", "bridge"])?.status.success() {
                continue; // taken by another cluster
            }
            let _ = fs::create_dir_all(OWNER_DIR);
            let _ = fs::write(owner_file(index), std::process::id().to_string());
            let bridge = Bridge {
                index,
                name,
                addresses: Mutex::new(BTreeSet::new()),
                pods: Mutex::new(BTreeSet::new()),
            };
            check(&["addr", "add", &format!("{}/24", bridge.gateway()), "dev", &bridge.name])?;
            check(&["link", "set", &bridge.name, "up"])?;
            return Ok(bridge);
        }
        Err(io::Error::other(
            "no free kubesim bridge index (ksim0..ksim249 all exist)",
        ))
    }

    /// The bridge's own address: the pods' gateway and the API server's address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 215, self.index, 1)
    }

    /// The base of this cluster's Service addresses (10.216.i.0).
    pub fn service_base(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 216, self.index, 0)
    }

    /// Creates pod namespace `n` with its veth; returns its address and namespace name.
    pub fn add_pod(&self, n: u8) -> io::Result<(Ipv4Addr, String)> {
        let name = format!("kubesim-{}-{n}", self.index);
        let (host_if, pod_if) = (format!("ksv{}x{n}", self.index), format!("ksp{}x{n}", self.index));
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        check(&["netns", "add", &name])?;
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone());
        let addr = Ipv4Addr::new(10, 215, self.index, n);
        let wire = || -> io::Result<()> {
            check(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if, "netns", &name,
            ])?;
            check(&["link", "set", &host_if, "master", &self.name])?;
            check(&["link", "set", &host_if, "up"])?;
            let gateway = self.gateway().to_string();
            let cidr = format!("{addr}/24");
            let steps: [&[&str]; 5] = [
                &["link", "set", &pod_if, "name", "eth0"],
                &["addr", "add", &cidr, "dev", "eth0"],
                &["link", "set", "eth0", "up"],
                &["link", "set", "lo", "up"],
                &["route", "add", "default", "via", &gateway],
            ];
            for step in steps {
                let mut args = vec!["netns", "exec", &name, "ip"];
                args.extend_from_slice(step);
                check(&args)?;
            }
            Ok(())
        };
        if let Err(e) = wire() {
            self.remove_pod(&name);
            return Err(e);
        }
        Ok((addr, name))
    }

    /// Removes a pod namespace (killing anything still inside), its veth and hosts file.
    pub fn remove_pod(&self, name: &str) {
        kill_inside(name);
        let _ = ip(&["netns", "del", name]);
        if let Some(n) = name.rsplit('-').next() {
            let _ = ip(&["link", "del", &format!("ksv{}x{n}", self.index)]);
        }
        let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(name));
        self.pods.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
    }

    /// Adds a Service address (/32) to the bridge.
    pub fn add_address(&self, addr: Ipv4Addr) -> io::Result<()> {
        let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
        if addresses.insert(addr) {
            if let Err(e) = check(&["addr", "add", &format!("{addr}/32"), "dev", &self.name]) {
                addresses.remove(&addr);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes a Service address.
    pub fn remove_address(&self, addr: Ipv4Addr) {
        if self.addresses.lock().unwrap_or_else(|p| p.into_inner()).remove(&addr) {
            let _ = ip(&["addr", "del", &format!("{addr}/32"), "dev", &self.name]);
        }
    }

    /// Removes every pod namespace, the bridge (and its addresses) and the owner file.
    pub fn destroy(&self) {
        let pods: Vec<String> = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for pod in pods {
            self.remove_pod(&pod);
        }
        self.addresses.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let _ = ip(&["link", "del", &self.name]);
        let _ = fs::remove_file(owner_file(self.index));
    }
}

/// The pod's `/etc/resolv.conf`: no DNS server (names come from `/etc/hosts`); queries go
/// to the pod's own loopback and fail at once instead of leaving the machine or timing out.
const RESOLV_CONF: &str = "# kubesim: Service names resolve through /etc/hosts; there is no DNS server\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n";

/// Writes `/etc/netns/<name>/hosts` in place (the file `ip netns exec` mounts as
/// `/etc/hosts`), and the pod's `resolv.conf` beside it.
pub fn write_hosts(name: &str, content: &str) {
    let dir = PathBuf::from("/etc/netns").join(name);
    let _ = fs::create_dir_all(&dir);
    let resolv = dir.join("resolv.conf");
    let result = fs::write(dir.join("hosts"), content).and_then(|()| {
        if resolv.exists() {
            Ok(())
        } else {
            fs::write(resolv, RESOLV_CONF)
        }
    });
    if let Err(error) = result {
        tracing::warn!(netns = name, %error, "cannot write the pod's hosts file");
    }
}

fn kill_inside(name: &str) {
    let Ok(out) = ip(&["netns", "pids", name]) else { return };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn owner_file(index: u8) -> PathBuf {
    PathBuf::from(OWNER_DIR).join(format!("ksim{index}.pid"))
}

/// Removes what clusters whose process is gone left behind (a killed test run).
fn remove_orphans() {
    let Ok(entries) = fs::read_dir(OWNER_DIR) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(index) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("ksim"))
            .and_then(|s| s.parse::<u8>().ok())
        else {
            continue;
        };
        let pid: Option<i32> = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok());
        let alive = pid.is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok());
        if alive {
            continue;
        }
        tracing::info!(index, "removing the network of a kubesim cluster whose process is gone");
        let prefix = format!("kubesim-{index}-");
        let list = ip(&["netns", "list"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for ns in list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
        {
            kill_inside(ns);
            let _ = ip(&["netns", "del", ns]);
            let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(ns));
        }
        let _ = ip(&["link", "del", &format!("ksim{index}")]);
        let _ = fs::remove_file(&path);
    }
}
