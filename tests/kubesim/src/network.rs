//! Cluster networking: address ranges for pods and Services, and the pod network itself.
//!
//! Two modes ([`crate::Network`]):
//! - **loopback** (no root): every cluster takes a random `127.a.b.0/24` for pods and
//!   `127.a.b+1.0/24` for Service cluster IPs. Linux answers on all of `127.0.0.0/8`, so
//!   each pod binds its own address and nothing needs configuring or removing.
//! - **netns** (root, [`netns`]): every cluster claims an index `i` by creating the bridge
//!   `ksim<i>` (10.215.i.1/24); each pod is a network namespace `kubesim-<i>-<n>` with a
//!   veth on that bridge and the address 10.215.i.n; Service cluster IPs are 10.216.i.x,
//!   added as /32 addresses to the bridge so the root namespace and every pod (through
//!   its default route) reach them. The API server listens on the bridge address.
//!
//! Services are served by a userspace TCP balancer in both modes ([`balancer`]); without
//! root, Service ports below 1024 listen on `port + 30000` ([`balancer::listen_port`]).

pub mod balancer;
pub mod netns;

use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use rand::Rng;

/// Allocates Service cluster IPs from a range.
pub struct ServiceIps {
    base: u32,
    next: Mutex<u32>,
    last: u32,
}

impl ServiceIps {
    /// Addresses `a.b.0.10` upwards (a /16).
    pub fn new(a: u8, b: u8) -> ServiceIps {
        ServiceIps::range(Ipv4Addr::new(a, b, 0, 0), 10, 65_533)
    }

    /// Addresses `base + first ..= base + last`.
    pub fn range(base: Ipv4Addr, first: u32, last: u32) -> ServiceIps {
        ServiceIps {
            base: u32::from(base),
            next: Mutex::new(first),
            last,
        }
    }

    /// The address [`ServiceIps::allocate`] would hand out next, still free.
    pub fn peek(&self) -> Option<Ipv4Addr> {
        let next = *self.next.lock().unwrap_or_else(|p| p.into_inner());
        (next <= self.last).then(|| Ipv4Addr::from(self.base + next))
    }

    /// The next free address.
    pub fn allocate(&self) -> Option<Ipv4Addr> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        if *next > self.last {
            return None;
        }
        let n = *next;
        *next += 1;
        Some(Ipv4Addr::from(self.base + n))
    }
}

/// Loopback /24 pairs taken by clusters of this process (others are avoided by chance:
/// 32 000 pairs to pick from).
static LOOPBACK_TAKEN: Mutex<BTreeSet<(u8, u8)>> = Mutex::new(BTreeSet::new());

enum Mode {
    Loopback { a: u8, b: u8 },
    Netns(netns::Bridge),
}

/// A pod's place in the network.
#[derive(Clone, Debug)]
pub struct PodNet {
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// The pod's network namespace (netns mode).
    pub netns: Option<String>,
}

/// The pod network of one cluster: pod addresses, namespaces and Service addresses.
pub struct PodNetwork {
    mode: Mode,
    used: Mutex<BTreeSet<u8>>,
    cursor: Mutex<u8>,
}

impl PodNetwork {
    /// Sets the network up (netns mode: claims an index and creates the bridge).
    pub fn start(mode: crate::Network) -> io::Result<PodNetwork> {
        let mode = match mode {
            crate::Network::Loopback => {
                let mut taken = LOOPBACK_TAKEN.lock().unwrap_or_else(|p| p.into_inner());
                let mut rng = rand::rng();
                let (a, b) = loop {
                    let pair = (rng.random_range(1..=254u8), rng.random_range(0..=127u8) * 2);
                    if taken.insert(pair) {
                        break pair;
                    }
                };
                Mode::Loopback { a, b }
            }
            crate::Network::Netns => Mode::Netns(netns::Bridge::create()?),
        };
        Ok(PodNetwork {
            mode,
            used: Mutex::new(BTreeSet::new()),
            cursor: Mutex::new(1),
        })
    }

    /// Where the API server listens, reachable from the root namespace and every pod.
    pub fn api_host(&self) -> IpAddr {
        match &self.mode {
            Mode::Loopback { .. } => IpAddr::from([127, 0, 0, 1]),
            Mode::Netns(bridge) => IpAddr::V4(bridge.gateway()),
        }
    }

    /// The Service cluster IP range of this cluster.
    pub fn service_ips(&self) -> ServiceIps {
        match &self.mode {
            Mode::Loopback { a, b } => ServiceIps::range(Ipv4Addr::new(127, *a, b + 1, 0), 10, 254),
            Mode::Netns(bridge) => ServiceIps::range(bridge.service_base(), 10, 254),
        }
    }

    /// Whether pods live in network namespaces.
    pub fn is_netns(&self) -> bool {
        matches!(self.mode, Mode::Netns(_))
    }

    /// Gives a pod an address (netns mode: a namespace with a veth on the bridge).
    pub fn attach(&self) -> io::Result<PodNet> {
        let n = {
            let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
            let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
            // Round-robin over .2 ..= .254 so a freed address is not reused at once.
            let free = (0..253u16)
                .map(|i| ((u16::from(*cursor) - 1 + i) % 253 + 2) as u8)
                .find(|n| !used.contains(n));
            let n = free.ok_or_else(|| io::Error::other("no free pod address: the cluster runs 253 pods already"))?;
            used.insert(n);
            *cursor = n;
            n
        };
        let result = match &self.mode {
            Mode::Loopback { a, b } => Ok(PodNet {
                ip: Ipv4Addr::new(127, *a, *b, n),
                netns: None,
            }),
            Mode::Netns(bridge) => bridge.add_pod(n).map(|(ip, name)| PodNet { ip, netns: Some(name) }),
        };
        if result.is_err() {
            self.used.lock().unwrap_or_else(|p| p.into_inner()).remove(&n);
        }
        result
    }

    /// Removes a pod's namespace and frees its address.
    pub fn detach(&self, pod: &PodNet) {
        if let (Mode::Netns(bridge), Some(name)) = (&self.mode, &pod.netns) {
            bridge.remove_pod(name);
        }
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pod.ip.octets()[3]);
    }

    /// The argv that runs `argv` inside the pod's network.
    pub fn wrap(&self, pod: &PodNet, argv: Vec<String>) -> Vec<String> {
        match &pod.netns {
            Some(name) => ["ip", "netns", "exec", name]
                .iter()
                .map(|s| s.to_string())
                .chain(argv)
                .collect(),
            None => argv,
        }
    }

    /// Writes the pod's `/etc/hosts` (netns mode; loopback pods resolve nothing).
    pub fn write_hosts(&self, pod: &PodNet, content: &str) {
        if let (Mode::Netns(_), Some(name)) = (&self.mode, &pod.netns) {
            netns::write_hosts(name, content);
        }
    }

    /// Makes a Service cluster IP reachable (netns mode: an address on the bridge).
    pub fn add_service_ip(&self, ip: Ipv4Addr) -> io::Result<()> {
        match &self.mode {
            Mode::Loopback { .. } => Ok(()),
            Mode::Netns(bridge) => bridge.add_address(ip),
        }
    }

    /// Undoes [`PodNetwork::add_service_ip`].
    pub fn remove_service_ip(&self, ip: Ipv4Addr) {
        if let Mode::Netns(bridge) = &self.mode {
            bridge.remove_address(ip);
        }
    }

    /// Removes everything this network created (namespaces, veths, bridge, hosts files).
    pub fn shutdown(&self) {
        match &self.mode {
            Mode::Netns(bridge) => bridge.destroy(),
            Mode::Loopback { a, b } => {
                LOOPBACK_TAKEN
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(*a, *b));
            }
        }
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn loopback_pods_get_distinct_addresses_and_services_their_own_range() {
        let net = PodNetwork::start(crate::Network::Loopback).unwrap();
        let a = net.attach().unwrap();
        let b = net.attach().unwrap();
        assert_ne!(a.ip, b.ip);
        assert!(a.ip.is_loopback() && b.ip.is_loopback());
        let svc = net.service_ips().allocate().unwrap();
        assert!(svc.is_loopback());
        assert_ne!(svc.octets()[..3], a.ip.octets()[..3]);
        net.detach(&a);
        let c = net.attach().unwrap();
        assert_ne!(c.ip, a.ip, "a freed address is not reused at once");
    }
}
