//! The `serviceaccounts/{name}/token` subresource: a TokenRequest
//! (`authentication.k8s.io/v1`) answered with a new token for the service account,
//! validated and defaulted as kube-apiserver does (audiences default to the API server's,
//! `expirationSeconds` defaults to 3600 and may not be under 600, a bound Pod must exist
//! and run as that service account; its token dies with it).

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::tokens::TokenInfo;
use crate::api::Api;
use crate::server::API_AUDIENCE;
use crate::status::ApiError;
use crate::util;

/// Default token lifetime.
pub const DEFAULT_SECONDS: i64 = 3600;
/// The shortest lifetime kube-apiserver accepts.
pub const MIN_SECONDS: i64 = 600;
/// The longest lifetime kube-apiserver accepts (2^32 seconds).
pub const MAX_SECONDS: i64 = 1 << 32;

fn invalid(name: &str, message: String) -> ApiError {
    ApiError::invalid("TokenRequest.authentication.k8s.io", name, message)
}

/// Issues a token for service account `ns/name` from TokenRequest `body`.
pub fn token_request(api: &Api, ns: &str, name: &str, body: &Value) -> Result<Value, ApiError> {
    if let Some(kind) = body["kind"].as_str().filter(|k| *k != "TokenRequest") {
        return Err(ApiError::bad_request(format!(
            "the body is a {kind}, but serviceaccounts/token takes a TokenRequest"
        )));
    }
    let sa = api.get(&*api.rt("", "serviceaccounts")?, ns, name)?;
    let spec = &body["spec"];
    let mut audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    if audiences.is_empty() {
        audiences.push(API_AUDIENCE.to_owned());
    }
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_SECONDS,
        v => v.as_i64().ok_or_else(|| {
            invalid(
                name,
                format!("spec.expirationSeconds: Invalid value: {v}: must be an integer"),
            )
        })?,
    };
    if seconds < MIN_SECONDS {
        return Err(invalid(
            name,
            format!(
                "spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than 10 minutes"
            ),
        ));
    }
    if seconds > MAX_SECONDS {
        return Err(invalid(
            name,
            format!(
                "spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"
            ),
        ));
    }
    let mut bound = Value::Null;
    let mut pod = None;
    if let Some(r) = spec["boundObjectRef"].as_object() {
        let s = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default().to_owned();
        let (kind, api_version, pod_name) = (s("kind"), s("apiVersion"), s("name"));
        if kind != "Pod" || !matches!(api_version.as_str(), "v1" | "") {
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {group}/{version}, Kind={kind}"
            )));
        }
        let found = api.get(&*api.rt("", "pods")?, ns, &pod_name)?;
        if found["spec"]["serviceAccountName"].as_str().unwrap_or("default") != name {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name."
            )));
        }
        let uid = found["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let given = s("uid");
        if !given.is_empty() && given != uid {
            return Err(ApiError::new(
                http::StatusCode::CONFLICT,
                "Conflict",
                format!("Operation cannot be fulfilled on Pod {pod_name:?}: the UID in the bound object reference ({given}) does not match the UID in record. The object might have been deleted and then recreated"),
            ));
        }
        bound = json!({"kind": "Pod", "apiVersion": "v1", "name": pod_name, "uid": uid});
        pod = Some((pod_name, uid));
    }
    let info = TokenInfo {
        namespace: ns.to_owned(),
        service_account: name.to_owned(),
        sa_uid: sa["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
        audiences: audiences.clone(),
        expires: SystemTime::now(),
        pod,
    };
    let (token, expires) = api.tokens.issue(info, Duration::from_secs(seconds.unsigned_abs()));
    let mut spec_out = json!({"audiences": audiences, "expirationSeconds": seconds});
    if !bound.is_null() {
        spec_out["boundObjectRef"] = bound;
    }
    tracing::debug!(namespace = ns, service_account = name, seconds, "token issued");
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": util::now()},
        "spec": spec_out,
        "status": {"token": token, "expirationTimestamp": util::timestamp(expires)},
    }))
}
