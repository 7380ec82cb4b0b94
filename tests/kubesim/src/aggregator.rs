//! API aggregation: requests for a group/version served by an `APIService` with a
//! `spec.service` are proxied to that service, as kube-aggregator does.
//!
//! The request was authenticated and authorized by kubesim already; the proxy drops the
//! caller's credentials and any `X-Remote-*` headers it sent, says who the caller is in
//! `X-Remote-User`/`X-Remote-Group`/`X-Remote-Extra-*`, and proves it is the API server
//! with the front-proxy client certificate (whose CA is published in
//! `kube-system/extension-apiserver-authentication`). The aggregated server is verified
//! with the APIService's `caBundle` (or not, with `insecureSkipTLSVerify`). Bodies stream
//! both ways (watches), and upgrades (WebSocket) become a byte pipe after the 101.
//! `/apis/{group}` of an aggregated group is answered locally, like kube-aggregator.

pub mod available;

pub use available::spawn_availability;

use base64::Engine;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::admission::client::{self, Trust};
use crate::admission::resolve_service;
use crate::api::{Api, User};
use crate::server::path::RequestInfo;
use crate::server::{error, json, Body};
use crate::status::ApiError;

/// Where an aggregated request goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The APIService name (`v1.api.shunt.dev`).
    pub api_service: String,
    /// The request is the group's discovery document (`/apis/{group}`), answered here.
    pub group_only: Option<String>,
}

fn api_services(api: &Api) -> Vec<Value> {
    api.store
        .list(&("apiregistration.k8s.io".to_owned(), "apiservices".to_owned()), None)
        .0
}

/// APIServices that point at a service (not the local ones), for groups kubesim does
/// not serve itself.
fn remote(api: &Api) -> Vec<Value> {
    let local: Vec<String> = api.registry.groups().into_iter().map(|(g, _)| g).collect();
    api_services(api)
        .into_iter()
        .filter(|s| s["spec"]["service"].is_object() && !local.iter().any(|g| s["spec"]["group"] == g.as_str()))
        .collect()
}

/// The aggregated server for `info`, if an APIService claims its group/version.
pub fn target(api: &Api, info: &RequestInfo) -> Option<Target> {
    let segments = &info.segments;
    if segments.first().map(String::as_str) != Some("apis") || segments.len() < 2 {
        return None;
    }
    let services = remote(api);
    let group = segments[1].as_str();
    let found = match segments.get(2) {
        None => services.iter().find(|s| s["spec"]["group"] == group)?,
        Some(version) => services
            .iter()
            .find(|s| s["spec"]["group"] == group && s["spec"]["version"] == version.as_str())?,
    };
    let api_service = found["metadata"]["name"].as_str()?.to_owned();
    Some(Target {
        api_service,
        group_only: (segments.len() == 2).then(|| group.to_owned()),
    })
}

/// The `APIGroup` discovery document of an aggregated group (versions by
/// `versionPriority`, highest first) and the group's `groupPriorityMinimum`.
fn group_doc(services: &[Value], group: &str) -> (Value, i64) {
    let mut versions: Vec<(i64, String)> = services
        .iter()
        .filter(|s| s["spec"]["group"] == group)
        .map(|s| {
            (
                s["spec"]["versionPriority"].as_i64().unwrap_or(0),
                s["spec"]["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let priority = services
        .iter()
        .filter(|s| s["spec"]["group"] == group)
        .filter_map(|s| s["spec"]["groupPriorityMinimum"].as_i64())
        .max()
        .unwrap_or(0);
    let versions: Vec<Value> = versions
        .iter()
        .map(|(_, v)| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let doc = json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)});
    (doc, priority)
}

/// Groups served through APIServices, for `/apis` (highest `groupPriorityMinimum` first).
pub fn groups(api: &Api) -> Vec<Value> {
    let services = remote(api);
    let mut names: Vec<String> = services
        .iter()
        .filter_map(|s| s["spec"]["group"].as_str())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    let mut docs: Vec<(Value, i64)> = names.iter().map(|g| group_doc(&services, g)).collect();
    docs.sort_by_key(|d| std::cmp::Reverse(d.1));
    docs.into_iter().map(|(doc, _)| doc).collect()
}

/// Whether the APIService's `Available` condition is `True`.
fn is_available(svc: &Value) -> bool {
    svc["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Available" && c["status"] == "True")
}

/// Proxies `req` to `target` as `user`.
pub async fn proxy(api: &Api, user: &User, target: Target, req: Request<Incoming>) -> Response<Body> {
    if let Some(group) = &target.group_only {
        return json(StatusCode::OK, &group_doc(&remote(api), group).0);
    }
    let unavailable = |why: String| {
        error(&ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            why,
        ))
    };
    let key = ("apiregistration.k8s.io".to_owned(), "apiservices".to_owned());
    let Some(svc) = api.store.get(&key, "", &target.api_service) else {
        return unavailable(format!("the APIService {} is gone", target.api_service));
    };
    if !is_available(&svc) {
        return unavailable("service unavailable".into());
    }
    match forward(api, user, &svc, req).await {
        Ok(resp) => resp,
        Err(why) => unavailable(format!("error trying to reach service: {why}")),
    }
}

/// Opens a connection to the APIService's service: resolved address, TLS verified by
/// `caBundle` (or not), the front-proxy client certificate presented.
pub async fn connect(
    api: &Api,
    svc: &Value,
) -> Result<(tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String), String> {
    let service = &svc["spec"]["service"];
    let (ns, name) = (
        service["namespace"].as_str().unwrap_or_default(),
        service["name"].as_str().unwrap_or_default(),
    );
    let port = service["port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(443);
    let addr = resolve_service(api, ns, name, port)
        .ok_or_else(|| crate::admission::service::unresolved_reason(api, ns, name, port))?;
    let ca = base64::engine::general_purpose::STANDARD
        .decode(svc["spec"]["caBundle"].as_str().unwrap_or_default())
        .map_err(|e| format!("invalid caBundle: {e}"))?;
    let trust = if svc["spec"]["insecureSkipTLSVerify"] == true {
        Trust::Insecure
    } else {
        Trust::Roots(&ca)
    };
    let tls = client::tls_config(trust, Some(&api.pki.front_proxy_client))?;
    let server_name = format!("{name}.{ns}.svc");
    let stream = client::connect(addr, &server_name, tls).await?;
    Ok((stream, format!("{server_name}:{port}")))
}

async fn forward(api: &Api, user: &User, svc: &Value, mut req: Request<Incoming>) -> Result<Response<Body>, String> {
    let (stream, host) = connect(api, svc).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "aggregated API connection ended");
        }
    });
    let upgrading = wants_upgrade(req.headers());
    let client_side = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(path)
        .body(body)
        .map_err(|e| e.to_string())?;
    let headers = upstream.headers_mut();
    copy_headers(&parts.headers, headers, upgrading);
    headers.remove(header::AUTHORIZATION);
    headers.insert(header::HOST, HeaderValue::from_str(&host).map_err(|e| e.to_string())?);
    add_user(headers, user);
    let mut resp = sender.send_request(upstream).await.map_err(|e| e.to_string())?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_side {
            let server_side = hyper::upgrade::on(&mut resp);
            // An API outage (Cluster::set_api_down) cuts upgraded streams too.
            let mut outage = api.outage.subscribe();
            tokio::spawn(async move {
                let pipe = async move {
                    match tokio::try_join!(client_side, server_side) {
                        Ok((a, b)) => {
                            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b)).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "upgrade through the aggregator failed"),
                    }
                };
                tokio::select! {
                    () = pipe => {}
                    _ = outage.wait_for(|down| *down) => {}
                }
            });
        }
    }
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(body.map_err(std::io::Error::other).boxed());
    *out.status_mut() = parts.status;
    copy_headers(&parts.headers, out.headers_mut(), switching);
    Ok(out)
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
        && headers.contains_key(header::UPGRADE)
}

/// Copies end-to-end headers (all but hop-by-hop ones; `Connection`/`Upgrade` stay
/// for an upgrade), dropping any `X-Remote-*` a client sent.
fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, upgrade: bool) {
    const HOP: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    ];
    for (name, value) in from {
        let n = name.as_str();
        let hop = HOP.contains(&n) && !(upgrade && (n == "connection" || n == "upgrade"));
        if hop || n.starts_with("x-remote-") {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// The front-proxy identity headers (`requestheader-*` of kube-apiserver).
fn add_user(headers: &mut HeaderMap, user: &User) {
    if let Ok(v) = HeaderValue::from_str(&user.name) {
        headers.insert("x-remote-user", v);
    }
    for group in &user.groups {
        if let Ok(v) = HeaderValue::from_str(group) {
            headers.append("x-remote-group", v);
        }
    }
    for (key, values) in &user.extra {
        let Ok(name) = HeaderName::from_bytes(format!("x-remote-extra-{}", escape(key)).as_bytes()) else {
            continue;
        };
        for value in values {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// Percent-encoding of an extra key (Go's `url.PathEscape`, as kube-apiserver).
fn escape(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_replace_the_callers() {
        let mut incoming = HeaderMap::new();
        incoming.insert("x-remote-user", HeaderValue::from_static("mallory"));
        incoming.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        incoming.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let mut out = HeaderMap::new();
        copy_headers(&incoming, &mut out, false);
        let user = User {
            name: "alice".into(),
            groups: vec!["devs".into(), "system:authenticated".into()],
            extra: [(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec!["p1".to_owned()],
            )]
            .into(),
            ..User::default()
        };
        add_user(&mut out, &user);
        assert_eq!(out.get_all("x-remote-user").iter().collect::<Vec<_>>(), ["alice"]);
        assert_eq!(
            out.get_all("x-remote-group").iter().collect::<Vec<_>>(),
            ["devs", "system:authenticated"]
        );
        assert_eq!(
            out.get("x-remote-extra-authentication.kubernetes.io%2Fpod-name")
                .unwrap(),
            "p1"
        );
        assert!(out.get(header::CONNECTION).is_none());
        assert!(out.get(header::ACCEPT).is_some());
    }
}
