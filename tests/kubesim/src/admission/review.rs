//! One webhook call: the `admission.k8s.io/v1` AdmissionReview sent, the HTTPS POST to
//! the webhook's URL or Service, and the checks kube-apiserver makes on the answer.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use super::client::{self, Trust};
use super::matching::Hook;
use super::service;
use crate::api::{Api, Operation, User};
use crate::resources::ResourceType;

/// What is being admitted.
pub struct Attributes<'a> {
    /// The operation.
    pub op: Operation,
    /// The resource type.
    pub rt: &'a ResourceType,
    /// The subresource ("" for the object itself).
    pub subresource: &'a str,
    /// Namespace of the request.
    pub namespace: &'a str,
    /// Name of the object ("" while a `generateName` create has none yet).
    pub name: &'a str,
    /// The caller.
    pub user: &'a User,
    /// A `?dryRun=All` request: nothing will be stored.
    pub dry_run: bool,
}

/// What a webhook answered, once the answer was checked.
#[derive(Debug, Default)]
pub struct Verdict {
    /// `response.allowed`.
    pub allowed: bool,
    /// `response.status` (for denials).
    pub status: Value,
    /// The decoded JSON patch, if any.
    pub patch: Option<Value>,
    /// `response.warnings`.
    pub warnings: Vec<String>,
}

/// The AdmissionReview request for `obj`/`old`.
pub fn review(attrs: &Attributes<'_>, uid: &str, obj: &Value, old: Option<&Value>) -> Value {
    let rt = attrs.rt;
    let kind = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let resource = json!({"group": rt.group, "version": rt.version, "resource": rt.plural});
    let u = attrs.user;
    let mut user = json!({"username": u.name, "groups": u.groups});
    if !u.uid.is_empty() {
        user["uid"] = json!(u.uid);
    }
    if !u.extra.is_empty() {
        user["extra"] = json!(u.extra);
    }
    let mut options = match attrs.op {
        Operation::Create => json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}),
        Operation::Update => json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}),
        Operation::Delete => json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1"}),
    };
    if attrs.dry_run {
        options["dryRun"] = json!(["All"]);
    }
    let mut request = json!({
        "uid": uid,
        "kind": kind, "resource": resource,
        "requestKind": kind, "requestResource": resource,
        "name": attrs.name, "namespace": attrs.namespace,
        "operation": attrs.op.as_str(),
        "userInfo": user,
        "object": obj,
        "oldObject": old.cloned().unwrap_or(Value::Null),
        "dryRun": attrs.dry_run,
        "options": options,
    });
    if !attrs.subresource.is_empty() {
        request["subResource"] = json!(attrs.subresource);
        request["requestSubResource"] = json!(attrs.subresource);
    }
    for empty in ["name", "namespace"] {
        if request[empty] == "" {
            if let Some(map) = request.as_object_mut() {
                map.remove(empty);
            }
        }
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request})
}

/// The `timeoutSeconds` of a webhook (default 10, at most 30 as validation enforces).
pub fn timeout_of(hook: &Hook) -> u64 {
    hook.spec["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30)
}

/// Calls `hook` with `review`; an `Err` is a failure to call it (the failure policy
/// decides), phrased like kube-apiserver's: `failed to call webhook: Post "…": …`.
pub async fn call(api: &Api, hook: &Hook, review: &Value, mutating: bool) -> Result<Verdict, String> {
    let versions = &hook.spec["admissionReviewVersions"];
    if !versions.as_array().into_iter().flatten().any(|v| v == "v1") {
        return Err(format!(
            "webhook does not accept v1 AdmissionReview (admissionReviewVersions: {versions})"
        ));
    }
    let timeout = timeout_of(hook);
    let target = target(api, hook)?;
    let url = format!("https://{}{}?timeout={timeout}s", target.host, target.path);
    let post = async {
        let ca = base64::engine::general_purpose::STANDARD
            .decode(hook.spec["clientConfig"]["caBundle"].as_str().unwrap_or_default())
            .map_err(|e| format!("invalid caBundle: {e}"))?;
        let tls = client::tls_config(Trust::Roots(&ca), None)?;
        let stream = client::connect(target.addr, &target.server_name, tls).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}?timeout={timeout}s", target.path))
            .header(header::HOST, &target.host)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json, */*")
            .body(Full::new(Bytes::from(review.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 8 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = match tokio::time::timeout(Duration::from_secs(timeout), post).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(format!("failed to call webhook: Post \"{url}\": {e}")),
        Err(_) => {
            return Err(format!(
                "failed to call webhook: Post \"{url}\": context deadline exceeded"
            ))
        }
    };
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(format!(
            "failed to call webhook: the server responded with status {}: {}",
            status.as_u16(),
            text.trim()
        ));
    }
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| format!("failed to call webhook: the response is not JSON: {e}"))?;
    verify(&answer, review["request"]["uid"].as_str().unwrap_or_default(), mutating)
        .map_err(|e| format!("received invalid webhook response: {e}"))
}

struct Target {
    addr: SocketAddr,
    server_name: String,
    host: String,
    path: String,
}

/// Where `clientConfig` points: `url` (host must be an IP or resolvable here) or
/// `service` (resolved by [`service::resolve_service`], verified as `name.ns.svc`).
fn target(api: &Api, hook: &Hook) -> Result<Target, String> {
    let cc = &hook.spec["clientConfig"];
    if let Some(svc) = cc["service"].as_object() {
        let (ns, name) = (
            svc.get("namespace").and_then(Value::as_str).unwrap_or_default(),
            svc.get("name").and_then(Value::as_str).unwrap_or_default(),
        );
        let port = svc
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(443);
        let path = svc.get("path").and_then(Value::as_str).unwrap_or("/").to_owned();
        let server_name = format!("{name}.{ns}.svc");
        let addr = service::resolve_service(api, ns, name, port).ok_or_else(|| {
            format!(
                "failed to call webhook: {}",
                service::unresolved_reason(api, ns, name, port)
            )
        })?;
        return Ok(Target {
            addr,
            host: format!("{server_name}:{port}"),
            server_name,
            path,
        });
    }
    let url = cc["url"]
        .as_str()
        .ok_or("failed to call webhook: clientConfig has neither url nor service")?;
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("failed to call webhook: the url {url:?} is not https"))?;
    let (host, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let (hostname, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("failed to call webhook: bad port in {url:?}"))?,
        ),
        _ => (host, 443),
    };
    let bare = hostname.trim_start_matches('[').trim_end_matches(']');
    let addr = match bare.parse() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) if bare == "localhost" => SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => return Err(format!("failed to call webhook: Post \"{url}\": dial tcp: lookup {bare}: no such host (kubesim resolves only IP addresses and localhost in webhook URLs)")),
    };
    Ok(Target {
        addr,
        server_name: bare.to_owned(),
        host: host.to_owned(),
        path: path.to_owned(),
    })
}

/// kube-apiserver's `VerifyAdmissionResponse` for v1.
fn verify(answer: &Value, uid: &str, mutating: bool) -> Result<Verdict, String> {
    if answer["apiVersion"] != "admission.k8s.io/v1" || answer["kind"] != "AdmissionReview" {
        return Err(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            answer["apiVersion"].as_str().unwrap_or_default(),
            answer["kind"].as_str().unwrap_or_default()
        ));
    }
    let response = &answer["response"];
    if !response.is_object() {
        return Err("response was absent".into());
    }
    let got = response["uid"].as_str().unwrap_or_default();
    if got != uid {
        return Err(format!("expected response.uid={uid:?}, got {got:?}"));
    }
    let mut verdict = Verdict {
        allowed: response["allowed"].as_bool().unwrap_or(false),
        status: response["status"].clone(),
        warnings: response["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        patch: None,
    };
    let patch = response["patch"].as_str().filter(|p| !p.is_empty());
    match (patch, response["patchType"].as_str()) {
        (None, None) => {}
        (Some(_), None) => return Err("webhook returned response.patch but not response.patchType".into()),
        (None, Some(_)) => return Err("webhook returned response.patchType but not response.patch".into()),
        (Some(_), Some(_)) if !mutating => return Err("validating webhooks may not return patches".into()),
        (Some(_), Some(t)) if t != "JSONPatch" => {
            return Err(format!("webhook returned invalid response.patchType of {t:?}"))
        }
        (Some(p), Some(_)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| format!("response.patch is not base64: {e}"))?;
            verdict.patch =
                Some(serde_json::from_slice(&bytes).map_err(|e| format!("response.patch is not JSON: {e}"))?);
        }
    }
    Ok(verdict)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_like_kube_apiserver() {
        let ok = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "u1", "allowed": true, "warnings": ["w"]}});
        let v = verify(&ok, "u1", true).unwrap();
        assert!(v.allowed && v.patch.is_none() && v.warnings == ["w"]);
        assert!(verify(&ok, "u2", true).unwrap_err().contains("expected response.uid"));
        let v1beta1 =
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "response": {"uid": "u1"}});
        assert!(verify(&v1beta1, "u1", true).is_err());
        let patch = base64::engine::general_purpose::STANDARD.encode(r#"[{"op":"add","path":"/a","value":1}]"#);
        let patched = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "u1", "allowed": true, "patch": patch, "patchType": "JSONPatch"}});
        assert_eq!(
            verify(&patched, "u1", true).unwrap().patch,
            Some(json!([{"op": "add", "path": "/a", "value": 1}]))
        );
        assert!(verify(&patched, "u1", false)
            .unwrap_err()
            .contains("may not return patches"));
    }
}
