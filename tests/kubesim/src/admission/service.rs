//! Where a Service reference (`namespace/name:port`, as in a webhook's or an
//! APIService's `service`) is reached from the API server.
//!
//! kube-apiserver resolves such references to an endpoint of the Service. kubesim does
//! the same, in this order: a ready address of an EndpointSlice of the Service, then of
//! its Endpoints object (both may be written by hand for a Service without selector,
//! pointing at a server a test runs on 127.0.0.1), then a ready pod the Service selects.
//! When Services get their own balanced address, [`resolve_service`] is the one place to
//! switch to `spec.clusterIP`.

use std::net::{IpAddr, SocketAddr};

use rand::seq::IndexedRandom;
use serde_json::Value;

use crate::api::Api;
use crate::selectors::LabelSelector;

fn core(plural: &str) -> (String, String) {
    (String::new(), plural.to_owned())
}

/// An address serving port `port` of Service `ns/name`, or `None` if the Service does
/// not exist, has no such port or no ready endpoint.
pub fn resolve_service(api: &Api, ns: &str, name: &str, port: u16) -> Option<SocketAddr> {
    let service = api.store.get(&core("services"), ns, name)?;
    let service_port = service["spec"]["ports"]
        .as_array()?
        .iter()
        .find(|p| p["port"].as_u64() == Some(u64::from(port)))?
        .clone();
    let port_name = service_port["name"].as_str().unwrap_or_default();
    let mut candidates = from_slices(api, ns, name, port_name);
    if candidates.is_empty() {
        candidates = from_endpoints(api, ns, name, port_name);
    }
    if candidates.is_empty() {
        candidates = from_pods(api, ns, &service, &service_port);
    }
    candidates.choose(&mut rand::rng()).copied()
}

/// Why [`resolve_service`] found nothing, phrased like kube-apiserver.
pub fn unresolved_reason(api: &Api, ns: &str, name: &str, port: u16) -> String {
    match api.store.get(&core("services"), ns, name) {
        None => format!("service \"{name}\" not found"),
        Some(svc)
            if !svc["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["port"].as_u64() == Some(u64::from(port))) =>
        {
            format!("no service port {port} found for service \"{name}\"")
        }
        Some(_) => format!("no endpoints available for service \"{name}\""),
    }
}

fn from_slices(api: &Api, ns: &str, name: &str, port_name: &str) -> Vec<SocketAddr> {
    let slices = api
        .store
        .list(&("discovery.k8s.io".to_owned(), "endpointslices".to_owned()), Some(ns))
        .0;
    let mut out = Vec::new();
    for slice in slices
        .iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == name)
    {
        let ports = slice["ports"].as_array().cloned().unwrap_or_default();
        let Some(port) = pick_port(&ports, port_name) else {
            continue;
        };
        for endpoint in slice["endpoints"].as_array().into_iter().flatten() {
            if endpoint["conditions"]["ready"] == false {
                continue;
            }
            let ips = endpoint["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str);
            out.extend(
                ips.filter_map(|ip| ip.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
    }
    out
}

fn from_endpoints(api: &Api, ns: &str, name: &str, port_name: &str) -> Vec<SocketAddr> {
    let Some(endpoints) = api.store.get(&core("endpoints"), ns, name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        let ports = subset["ports"].as_array().cloned().unwrap_or_default();
        let Some(port) = pick_port(&ports, port_name) else {
            continue;
        };
        let ips = subset["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["ip"].as_str());
        out.extend(
            ips.filter_map(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, port)),
        );
    }
    out
}

/// The port named like the Service port (an unnamed Service port matches the only one).
fn pick_port(ports: &[Value], port_name: &str) -> Option<u16> {
    let named = ports
        .iter()
        .find(|p| p["name"].as_str().unwrap_or_default() == port_name);
    let port = match named {
        Some(p) => p,
        None if port_name.is_empty() && ports.len() == 1 => &ports[0],
        None => return None,
    };
    port["port"].as_u64().and_then(|p| u16::try_from(p).ok())
}

fn from_pods(api: &Api, ns: &str, service: &Value, service_port: &Value) -> Vec<SocketAddr> {
    let Some(selector) = service["spec"]["selector"].as_object().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let selector = LabelSelector::from_object(&serde_json::json!({ "matchLabels": selector }));
    let pods = api.store.list(&core("pods"), Some(ns)).0;
    let mut out = Vec::new();
    for pod in pods.iter().filter(|p| selector.matches(&p["metadata"]["labels"])) {
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ip = pod["status"]["podIP"].as_str().and_then(|ip| ip.parse::<IpAddr>().ok());
        let (true, Some(ip)) = (ready && pod["metadata"]["deletionTimestamp"].is_null(), ip) else {
            continue;
        };
        if let Some(port) = target_port(pod, &service_port["targetPort"])
            .or_else(|| service_port["port"].as_u64().and_then(|p| u16::try_from(p).ok()))
        {
            out.push(SocketAddr::new(ip, port));
        }
    }
    out
}

/// A Service's `targetPort` on `pod`: a number, or the name of a container port.
fn target_port(pod: &Value, target: &Value) -> Option<u16> {
    if let Some(n) = target.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = target.as_str()?;
    if let Ok(n) = name.parse::<u16>() {
        return Some(n);
    }
    let containers = pod["spec"]["containers"].as_array()?;
    let port = containers
        .iter()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == name)?;
    port["containerPort"].as_u64().and_then(|p| u16::try_from(p).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ports_are_picked_by_name_or_as_the_only_one() {
        let ports = vec![
            json!({"name": "https", "port": 8443}),
            json!({"name": "metrics", "port": 9090}),
        ];
        assert_eq!(pick_port(&ports, "metrics"), Some(9090));
        assert_eq!(pick_port(&ports, ""), None);
        assert_eq!(pick_port(&[json!({"port": 7})], ""), Some(7));
        let pod = json!({"spec": {"containers": [{"ports": [{"name": "web", "containerPort": 8080}]}]}});
        assert_eq!(target_port(&pod, &json!("web")), Some(8080));
        assert_eq!(target_port(&pod, &json!(81)), Some(81));
    }
}
