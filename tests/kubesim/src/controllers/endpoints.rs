//! Endpoints and EndpointSlices of Services with a selector: the IPs of matching pods ×
//! the Service's ports, `targetPort` resolved per pod (a number, or a container port
//! name looked up in the pod's *current* containers — port-takeover renames the app's
//! ports, so a cached mapping would go stale). Ready pods go to `addresses`, the others
//! to `notReadyAddresses` (all to `addresses` with `publishNotReadyAddresses`);
//! terminating pods leave Endpoints and stay in slices as `terminating`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{controller_uid, is_ready, objects, owner_ref, template_hash, user};
use crate::api::{Api, DeleteOptions};
use crate::selectors::LabelSelector;
use crate::store::ns_name;

const MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
const SLICE_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const SERVICE_NAME: &str = "kubernetes.io/service-name";

/// Reconciles the endpoints of every Service, and removes those of deleted Services.
pub async fn reconcile_all(api: &Api) {
    let services = objects(api, "", "services", None);
    for svc in &services {
        reconcile(api, svc).await;
    }
    let Ok(rt) = api.rt("", "endpoints") else { return };
    for ep in objects(api, "", "endpoints", None) {
        let (ns, name) = ns_name(&ep);
        if ep["metadata"]["labels"][MANAGED_BY] == "endpoint-controller"
            && !services.iter().any(|s| ns_name(s) == (ns.clone(), name.clone()))
        {
            let _ = api.delete(&user(), &rt, &ns, &name, &DeleteOptions::default()).await;
        }
    }
}

/// The container port a Service `targetPort` means in `pod`.
pub fn resolve_target_port(pod: &Value, target: &Value) -> Option<u64> {
    if let Some(n) = target.as_u64() {
        return Some(n);
    }
    let name = target.as_str()?;
    if let Ok(n) = name.parse::<u64>() {
        return Some(n);
    }
    ["containers", "initContainers"]
        .iter()
        .flat_map(|field| pod["spec"][*field].as_array().into_iter().flatten())
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
}

struct Member {
    pod: Value,
    ready: bool,
    terminating: bool,
}

async fn reconcile(api: &Api, svc: &Value) {
    let selector = &svc["spec"]["selector"];
    if selector.as_object().is_none_or(|s| s.is_empty())
        || svc["spec"]["type"] == "ExternalName"
        || svc["metadata"]["deletionTimestamp"].is_string()
    {
        return;
    }
    let (ns, name) = ns_name(svc);
    let selector = LabelSelector::from_object(&json!({ "matchLabels": selector }));
    let publish_all = svc["spec"]["publishNotReadyAddresses"] == true;
    // Pods grouped by the ports their targetPorts resolve to.
    let mut groups: BTreeMap<String, (Value, Vec<Member>)> = BTreeMap::new();
    for pod in objects(api, "", "pods", Some(&ns)) {
        if !selector.matches(&pod["metadata"]["labels"])
            || pod["status"]["podIP"].as_str().unwrap_or_default().is_empty()
            || matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
        {
            continue;
        }
        let ports: Vec<Value> = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let port = resolve_target_port(&pod, p.get("targetPort").unwrap_or(&p["port"]))?;
                let mut out = json!({"port": port, "protocol": p["protocol"].as_str().unwrap_or("TCP")});
                if let Some(n) = p["name"].as_str().filter(|n| !n.is_empty()) {
                    out["name"] = json!(n);
                }
                Some(out)
            })
            .collect();
        let ports = Value::Array(ports);
        let member = Member {
            ready: is_ready(&pod) || publish_all,
            terminating: pod["metadata"]["deletionTimestamp"].is_string(),
            pod,
        };
        groups
            .entry(ports.to_string())
            .or_insert_with(|| (ports.clone(), Vec::new()))
            .1
            .push(member);
    }
    let address = |m: &Member| {
        json!({
            "ip": m.pod["status"]["podIP"],
            "nodeName": m.pod["spec"]["nodeName"],
            "targetRef": {"kind": "Pod", "namespace": ns, "name": m.pod["metadata"]["name"], "uid": m.pod["metadata"]["uid"]},
        })
    };
    let mut subsets = Vec::new();
    let mut slices = Vec::new();
    for (ports, members) in groups.values_mut() {
        members.sort_by(|a, b| {
            a.pod["status"]["podIP"]
                .as_str()
                .cmp(&b.pod["status"]["podIP"].as_str())
        });
        let ready: Vec<Value> = members
            .iter()
            .filter(|m| m.ready && !m.terminating)
            .map(address)
            .collect();
        let not_ready: Vec<Value> = members
            .iter()
            .filter(|m| !m.ready && !m.terminating)
            .map(address)
            .collect();
        if !ready.is_empty() || !not_ready.is_empty() {
            let mut subset = json!({"ports": ports});
            if !ready.is_empty() {
                subset["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                subset["notReadyAddresses"] = json!(not_ready);
            }
            subsets.push(subset);
        }
        let endpoints: Vec<Value> = members
            .iter()
            .map(|m| {
                let mut e = address(m);
                let ip = e["ip"].take();
                e.as_object_mut().map(|o| o.remove("ip"));
                e["addresses"] = json!([ip]);
                e["conditions"] =
                    json!({"ready": m.ready && !m.terminating, "serving": m.ready, "terminating": m.terminating});
                e
            })
            .collect();
        slices.push((ports.clone(), endpoints));
    }
    if slices.is_empty() {
        slices.push((json!([]), Vec::new()));
    }
    write_endpoints(api, svc, &ns, &name, subsets).await;
    write_slices(api, svc, &ns, &name, slices).await;
}

async fn write_endpoints(api: &Api, svc: &Value, ns: &str, name: &str, subsets: Vec<Value>) {
    let Ok(rt) = api.rt("", "endpoints") else { return };
    let mut labels = svc["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    labels.insert(MANAGED_BY.into(), json!("endpoint-controller"));
    let existing = api.store.get(&(String::new(), "endpoints".into()), ns, name);
    let subsets = if subsets.is_empty() {
        Value::Null
    } else {
        Value::Array(subsets)
    };
    let result = match existing {
        Some(ep) if ep["subsets"] == subsets && ep["metadata"]["labels"] == Value::Object(labels.clone()) => return,
        Some(mut ep) => {
            ep["metadata"]["labels"] = Value::Object(labels);
            set_or_remove(&mut ep, "subsets", subsets);
            api.update(&user(), &rt, ns, name, ep, None).await
        }
        None => {
            let mut ep = json!({"metadata": {"name": name, "labels": labels}});
            set_or_remove(&mut ep, "subsets", subsets);
            api.create(&user(), &rt, ns, ep).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(service = %format!("{ns}/{name}"), error = %e.message, "cannot write Endpoints; retrying");
    }
}

fn set_or_remove(obj: &mut Value, field: &str, value: Value) {
    match (value.is_null(), obj.as_object_mut()) {
        (true, Some(map)) => {
            map.remove(field);
        }
        _ => obj[field] = value,
    }
}

async fn write_slices(api: &Api, svc: &Value, ns: &str, name: &str, slices: Vec<(Value, Vec<Value>)>) {
    let Ok(rt) = api.rt("discovery.k8s.io", "endpointslices") else {
        return;
    };
    let uid = svc["metadata"]["uid"].as_str();
    let existing: Vec<Value> = objects(api, "discovery.k8s.io", "endpointslices", Some(ns))
        .into_iter()
        .filter(|s| controller_uid(s) == uid)
        .collect();
    let mut wanted = Vec::new();
    for (ports, endpoints) in slices {
        let slice_name = format!("{name}-{}", &template_hash(&ports)[..5]);
        wanted.push(slice_name.clone());
        let labels = json!({SERVICE_NAME: name, SLICE_MANAGED_BY: "endpointslice-controller.k8s.io"});
        let current = existing.iter().find(|s| s["metadata"]["name"] == slice_name.as_str());
        let result = match current {
            Some(s) if s["endpoints"] == json!(endpoints) && s["ports"] == ports => continue,
            Some(s) => {
                let mut s = s.clone();
                s["endpoints"] = json!(endpoints);
                s["ports"] = ports;
                api.update(&user(), &rt, ns, &slice_name, s, None).await
            }
            None => {
                let slice = json!({
                    "metadata": {"name": slice_name, "labels": labels, "ownerReferences": [owner_ref(svc, "v1", "Service")]},
                    "addressType": "IPv4",
                    "endpoints": endpoints,
                    "ports": ports,
                });
                api.create(&user(), &rt, ns, slice).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(service = %format!("{ns}/{name}"), error = %e.message, "cannot write an EndpointSlice; retrying");
        }
    }
    for stale in existing
        .iter()
        .filter(|s| !wanted.iter().any(|w| s["metadata"]["name"] == w.as_str()))
    {
        let (_, slice_name) = ns_name(stale);
        let _ = api
            .delete(&user(), &rt, ns, &slice_name, &DeleteOptions::default())
            .await;
    }
}
