//! Discovery and other non-resource endpoints: `/version`, `/api`, `/apis`,
//! `/api/v1`, `/apis/{group}[/{version}]`, `/openapi/v2`, `/openapi/v3`, health.
//! Answers are the legacy (unaggregated) discovery documents, which kubectl and
//! kube-rs accept.

use std::net::SocketAddr;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{json, Body};
use crate::api::Api;

/// The version kubesim reports (the API it emulates).
pub const VERSION: (&str, &str) = ("1", "33");

/// The answer for a non-resource path, or `None` for 404.
pub fn answer(api: &Api, path: &str, peer: SocketAddr) -> Option<Response<Body>> {
    let _ = peer;
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
    let body = match parts.as_slice() {
        ["healthz" | "livez" | "readyz"] => {
            let mut resp = json(StatusCode::OK, &Value::Null);
            *resp.body_mut() = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                |e: std::convert::Infallible| match e {},
            ));
            return Some(resp);
        }
        ["version"] => json!({
            "major": VERSION.0, "minor": VERSION.1, "gitVersion": format!("v{}.{}.0-kubesim", VERSION.0, VERSION.1),
            "gitCommit": "kubesim", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "none", "compiler": "rustc", "platform": "linux/amd64",
        }),
        ["api"] => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "kubesim"}]})
        }
        ["apis"] => {
            let mut groups: Vec<Value> = api
                .registry
                .groups()
                .into_iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, v)| group(&g, &v))
                .collect();
            groups.extend(crate::aggregator::groups(api));
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        }
        ["api", version] => resources(api, "", version)?,
        ["apis", g] => {
            let (_, versions) = api.registry.groups().into_iter().find(|(name, _)| name == g)?;
            group(g, &versions)
        }
        ["apis", g, version] => resources(api, g, version)?,
        ["openapi", "v3"] => super::openapi::index(api),
        ["openapi", "v3", "api", version] => super::openapi::group_version(api, "", version)?,
        ["openapi", "v3", "apis", g, version] => super::openapi::group_version(api, g, version)?,
        _ => return None,
    };
    Some(json(StatusCode::OK, &body))
}

fn group(name: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null)})
}

fn resources(api: &Api, group: &str, version: &str) -> Option<Value> {
    let types = api.registry.group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    for t in &types {
        let mut entry = json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
            "verbs": t.verbs(),
        });
        if !t.short_names.is_empty() {
            entry["shortNames"] = json!(t.short_names);
        }
        list.push(entry);
        for sub in &t.subresources {
            let (kind, verbs) = match sub.as_str() {
                "log" => ("Pod", vec!["get"]),
                "token" => ("TokenRequest", vec!["create"]),
                "scale" => ("Scale", vec!["get", "patch", "update"]),
                _ => (t.kind.as_str(), vec!["get", "patch", "update"]),
            };
            list.push(json!({"name": format!("{}/{sub}", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": kind, "verbs": verbs}));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}))
}
