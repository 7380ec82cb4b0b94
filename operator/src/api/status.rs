//! Kubernetes-shaped answers: `Status` errors (so kubectl and kube-rs print the message)
//! and the discovery documents of `api.shunt.dev/v1`.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use shunt_proto::names::API_GROUP;

/// The group/version served here.
pub const GROUP_VERSION: &str = "api.shunt.dev/v1";

/// An error answered as a `meta.k8s.io/v1` `Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub code: StatusCode,
    /// Kubernetes reason (`NotFound`, `Conflict`, `Forbidden`, …).
    pub reason: &'static str,
    /// What happened, why, and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with `code`, `reason` and `message`.
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
        }
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 404 NotFound.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    /// 500 InternalError (the message must not leak internals: say what failed).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16(),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.code, &self.to_status())
    }
}

/// A JSON answer.
pub fn json_response(code: StatusCode, body: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// `/apis`: the group list with this group only.
pub fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()]})
}

/// `/apis/api.shunt.dev`.
pub fn api_group() -> Value {
    let version = json!({"groupVersion": GROUP_VERSION, "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": API_GROUP, "versions": [version.clone()],
        "preferredVersion": version})
}

/// `/apis/api.shunt.dev/v1`: sessions (with the tunnel subresource), targets and policyreviews.
pub fn api_resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
        "resources": [
            {"name": "sessions", "singularName": "session", "namespaced": true, "kind": "Session",
             "verbs": ["create", "delete", "get", "list", "watch"], "shortNames": ["ss"], "categories": ["shunt"]},
            {"name": "sessions/tunnel", "singularName": "", "namespaced": true, "kind": "Session", "verbs": ["get"]},
            {"name": "targets", "singularName": "target", "namespaced": true, "kind": "Target",
             "verbs": ["get", "list"], "categories": ["shunt"]},
            {"name": "policyreviews", "singularName": "policyreview", "namespaced": true, "kind": "PolicyReview",
             "verbs": ["create"]},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_statuses_with_code_reason_and_message() {
        let s = ApiError::not_found("deployment/api not found in shop").to_status();
        assert_eq!(
            (s["code"].as_u64(), s["reason"].as_str()),
            (Some(404), Some("NotFound"))
        );
        assert_eq!(s["kind"], "Status");
        let resources = api_resource_list();
        assert_eq!(resources["resources"][0]["name"], "sessions");
        assert_eq!(api_group()["preferredVersion"]["groupVersion"], GROUP_VERSION);
    }
}
