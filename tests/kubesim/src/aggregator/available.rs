//! The APIService availability controller: sets each APIService's `Available`
//! condition by probing its service's discovery document (`GET /apis/{group}/{version}`
//! as `system:kube-aggregator`, 5 s timeout), with kube-aggregator's reasons:
//! `Local`, `ServiceNotFound`, `MissingEndpoints`, `FailedDiscoveryCheck`, `Passed`.
//! Runs when APIServices, Services, Endpoints or EndpointSlices change (not on every pod
//! status write: pods matter through the Endpoints made from them), and every
//! [`RESYNC`]. Only a changed condition is written, so its own writes settle.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::api::{Api, User};
use crate::store::Event;

/// How often every APIService is probed without a change to trigger it.
pub const RESYNC: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the controller; it runs until the handle is aborted.
pub fn spawn_availability(api: Arc<Api>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut events = api.store.subscribe();
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            check_all(&api).await;
            loop {
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(e) if relevant(&e) => break,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => return,
                    },
                    _ = resync.tick() => break,
                }
            }
            // Coalesce a burst of changes into one pass.
            while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) = events.try_recv() {}
        }
    })
}

fn relevant(e: &Event) -> bool {
    matches!(
        (e.resource.0.as_str(), e.resource.1.as_str()),
        ("apiregistration.k8s.io", "apiservices")
            | ("", "services" | "endpoints")
            | ("discovery.k8s.io", "endpointslices")
    )
}

async fn check_all(api: &Api) {
    let Ok(rt) = api.rt("apiregistration.k8s.io", "apiservices") else {
        return;
    };
    let (services, _) = api.store.list(&crate::api::key(&rt), None);
    for svc in services {
        let (available, reason, message) = check(api, &svc).await;
        let status = if available { "True" } else { "False" };
        let current = svc["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Available")
            .cloned();
        if current
            .as_ref()
            .is_some_and(|c| c["status"] == status && c["reason"] == reason && c["message"] == message.as_str())
        {
            continue;
        }
        let since = match &current {
            Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
            _ => json!(crate::util::now()),
        };
        let mut updated = svc.clone();
        let condition = json!({"type": "Available", "status": status, "lastTransitionTime": since, "reason": reason, "message": message});
        let mut others: Vec<Value> = svc["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["type"] != "Available")
            .cloned()
            .collect();
        others.push(condition);
        updated["status"]["conditions"] = json!(others);
        let name = svc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        let system = User::system("system:kube-aggregator");
        match api.update(&system, &rt, "", &name, updated, Some("status")).await {
            Ok(_) => {
                tracing::info!(apiservice = %name, available = status, reason, %message, "APIService availability changed")
            }
            Err(e) => {
                tracing::debug!(apiservice = %name, error = %e, "APIService status not written; retrying on the next pass")
            }
        }
    }
}

/// (available, reason, message) of one APIService, phrased like kube-aggregator.
async fn check(api: &Api, svc: &Value) -> (bool, &'static str, String) {
    let service = &svc["spec"]["service"];
    if !service.is_object() {
        return (true, "Local", "Local APIServices are always available".into());
    }
    let (ns, name) = (
        service["namespace"].as_str().unwrap_or_default(),
        service["name"].as_str().unwrap_or_default(),
    );
    let port = service["port"].as_u64().unwrap_or(443);
    let Some(found) = api.store.get(&(String::new(), "services".to_owned()), ns, name) else {
        return (
            false,
            "ServiceNotFound",
            format!("service/{name} in {ns:?} is not present"),
        );
    };
    let port_name = found["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(port))
        .and_then(|p| p["name"].as_str())
        .unwrap_or_default();
    let port_u16 = u16::try_from(port).unwrap_or(443);
    if crate::admission::resolve_service(api, ns, name, port_u16).is_none() {
        return (
            false,
            "MissingEndpoints",
            format!("endpoints for service/{name} in {ns:?} have no addresses with port name {port_name:?}"),
        );
    }
    let (group, version) = (
        svc["spec"]["group"].as_str().unwrap_or_default(),
        svc["spec"]["version"].as_str().unwrap_or_default(),
    );
    let path = format!("/apis/{group}/{version}");
    let url = format!("https://{name}.{ns}.svc:{port}{path}");
    match tokio::time::timeout(PROBE_TIMEOUT, probe(api, svc, &path)).await {
        Ok(Ok(())) => (true, "Passed", "all checks passed".into()),
        Ok(Err(e)) => (
            false,
            "FailedDiscoveryCheck",
            format!("failing or missing response from {url}: {e}"),
        ),
        Err(_) => (
            false,
            "FailedDiscoveryCheck",
            format!("failing or missing response from {url}: Get {url:?}: context deadline exceeded"),
        ),
    }
}

async fn probe(api: &Api, svc: &Value, path: &str) -> Result<(), String> {
    let (stream, host) = super::connect(api, svc).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, host)
        .header(header::ACCEPT, "application/json")
        .header("x-remote-user", "system:kube-aggregator")
        .header("x-remote-group", "system:masters")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("bad status: {}", resp.status().as_u16()));
    }
    Ok(())
}
