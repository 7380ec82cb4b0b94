//! Service addresses: a userspace TCP balancer per Service port, listening on
//! `clusterIP:port` and spreading connections round-robin over the ready endpoints.
//!
//! Endpoints are read from the store at each connection, so a pod becoming ready or
//! going away changes where the next connection goes. A backend that refuses is skipped
//! for the next one; with no backend at all the connection is closed at once (where
//! kube-proxy's iptables would reject it). In netns mode the cluster IP is added to the
//! cluster's bridge first, so the root namespace and pods reach it alike.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::task::JoinHandle;
use tokio::time::Interval;

use super::PodNetwork;
use crate::api::Api;
use crate::store::Event;

/// (namespace, service, port).
type Key = (String, String, u16);

struct Proxy {
    ip: Ipv4Addr,
    port_name: String,
    task: JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the balancers of every Service until the task is aborted.
pub async fn run(api: Arc<Api>, net: Arc<PodNetwork>) {
    let mut proxies: HashMap<Key, Proxy> = HashMap::new();
    let mut events = api.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        sync(&api, &net, &mut proxies);
        services_changed(&mut events, &mut tick).await;
    }
}

/// Waits until the Services may have changed: a Service event, events missed by lagging
/// behind, or the periodic resync. Events of other resources (pods, endpoints, ...) are
/// skipped: backends are read at each connection, so only Services matter here.
async fn services_changed(events: &mut broadcast::Receiver<Arc<Event>>, tick: &mut Interval) {
    let is_service = |e: &Event| e.resource.0.is_empty() && e.resource.1 == "services";
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(e) if !is_service(&e) => continue,
                Ok(_) | Err(RecvError::Lagged(_)) => break,
                // The store is gone (shutting down): only the resync is left.
                Err(RecvError::Closed) => {
                    tick.tick().await;
                    return;
                }
            },
            _ = tick.tick() => return,
        }
    }
    // One sync covers whatever else is queued already.
    while matches!(events.try_recv(), Ok(_) | Err(TryRecvError::Lagged(_))) {}
}

fn sync(api: &Arc<Api>, net: &Arc<PodNetwork>, proxies: &mut HashMap<Key, Proxy>) {
    let (services, _) = api.store.list(&(String::new(), "services".into()), None);
    let mut wanted: HashMap<Key, (Ipv4Addr, String)> = HashMap::new();
    for svc in &services {
        let Some(ip) = svc["spec"]["clusterIP"]
            .as_str()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        if svc["spec"]["type"] == "ExternalName" {
            continue;
        }
        let ns = svc["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = svc["metadata"]["name"].as_str().unwrap_or_default();
        for port in svc["spec"]["ports"].as_array().into_iter().flatten() {
            let tcp = port["protocol"].as_str().is_none_or(|p| p == "TCP");
            let Some(number) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            if tcp {
                let port_name = port["name"].as_str().unwrap_or_default().to_owned();
                wanted.insert((ns.to_owned(), name.to_owned(), number), (ip, port_name));
            }
        }
    }
    let stale: Vec<Key> = proxies
        .iter()
        .filter(|(k, p)| {
            wanted
                .get(*k)
                .is_none_or(|(ip, port_name)| *ip != p.ip || *port_name != p.port_name)
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in stale {
        if let Some(proxy) = proxies.remove(&key) {
            if !proxies.values().any(|p| p.ip == proxy.ip) {
                net.remove_service_ip(proxy.ip);
            }
        }
    }
    for (key, (ip, port_name)) in wanted {
        if proxies.contains_key(&key) {
            continue;
        }
        if let Err(error) = net.add_service_ip(ip) {
            tracing::warn!(service = %format!("{}/{}", key.0, key.1), %ip, %error, "cannot add the Service address; retrying");
            continue;
        }
        let listener = match bind(SocketAddr::from((ip, listen_port(key.2)))) {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(service = %format!("{}/{}", key.0, key.1), addr = %SocketAddr::from((ip, listen_port(key.2))), %error, "cannot listen on the Service address; retrying");
                continue;
            }
        };
        tracing::debug!(service = %format!("{}/{}", key.0, key.1), addr = %SocketAddr::from((ip, listen_port(key.2))), "Service balancer listening");
        let task = tokio::spawn(serve(
            listener,
            api.clone(),
            key.0.clone(),
            key.1.clone(),
            port_name.clone(),
        ));
        proxies.insert(key, Proxy { ip, port_name, task });
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn serve(listener: TcpListener, api: Arc<Api>, ns: String, name: String, port_name: String) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut client, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let backends = backends(&api, &ns, &name, &port_name);
        let start = next.fetch_add(1, Ordering::Relaxed);
        let service = format!("{ns}/{name}");
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            for i in 0..backends.len() {
                let backend = backends[(start + i) % backends.len()];
                let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(backend)).await;
                if let Ok(Ok(mut upstream)) = connect {
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
            }
            tracing::debug!(%peer, %service, "no reachable endpoint; closing the connection");
        });
    }
}

/// The ready endpoints of Service port `port_name` (ip × resolved target port).
pub fn backends(api: &Api, ns: &str, name: &str, port_name: &str) -> Vec<SocketAddr> {
    let Some(endpoints) = api.store.get(&(String::new(), "endpoints".into()), ns, name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        let port = subset["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"].as_str().unwrap_or_default() == port_name)
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok());
        let Some(port) = port else { continue };
        for address in subset["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = address["ip"].as_str().and_then(|s| s.parse::<std::net::IpAddr>().ok()) {
                out.push(SocketAddr::new(ip, port));
            }
        }
    }
    out
}

/// The port the balancer of Service port `port` listens on: the same one, except that
/// a process without root cannot bind ports below 1024, so in that case (loopback mode
/// only: netns mode needs root) it listens on `port + 30000`.
pub fn listen_port(port: u16) -> u16 {
    if port < 1024 && !nix::unistd::geteuid().is_root() {
        port + 30_000
    } else {
        port
    }
}

/// The address Service port `port` is reachable at from the root namespace and from pods.
pub fn service_address(svc: &Value, port: u16) -> Option<SocketAddr> {
    let ip = svc["spec"]["clusterIP"].as_str()?.parse::<Ipv4Addr>().ok()?;
    Some(SocketAddr::from((ip, listen_port(port))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::EventType;
    use serde_json::json;

    fn event(group: &str, plural: &str) -> Arc<Event> {
        Arc::new(Event {
            rv: 1,
            resource: (group.into(), plural.into()),
            namespace: "default".into(),
            kind: EventType::Modified,
            object: json!({}),
            old: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn only_service_events_or_the_resync_wake_the_sync() {
        let (tx, mut events) = broadcast::channel(16);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await; // the first tick is immediate
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            tx.send(event("", "pods")).unwrap();
            tx.send(event("", "endpoints")).unwrap();
            tx.send(event("example.com", "services")).unwrap();
        }
        let waited = tokio::time::timeout(Duration::from_millis(500), services_changed(&mut events, &mut tick)).await;
        assert!(waited.is_err(), "woke up for events of other resources");

        tx.send(event("", "pods")).unwrap();
        tx.send(event("", "services")).unwrap();
        tx.send(event("", "pods")).unwrap();
        tx.send(event("", "services")).unwrap();
        services_changed(&mut events, &mut tick).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(500),
            "a Service event wakes it at once"
        );
        assert!(
            events.try_recv().is_err(),
            "what was queued is covered by the same sync"
        );

        services_changed(&mut events, &mut tick).await;
        assert_eq!(started.elapsed(), Duration::from_secs(1), "the resync");
    }
}
