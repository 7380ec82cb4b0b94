//! `policyreviews` (`api.shunt.dev/v1`, namespaced and create-only, like
//! LocalSubjectAccessReview): "would this session on a target of this namespace be
//! allowed, and which policy and rule decide?". The answer is the one session creation
//! would give now ([`admit_session`]). Namespaced, so the per-namespace RoleBinding of
//! ClusterRole `shunt-user` that lets a developer open sessions lets them ask too.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Value};
use shunt_proto::route::Mode;
use shunt_proto::session::{SessionPort, SessionSpec, TargetRef};
use shunt_proto::Filter;

use super::{CheckError, Policies};
use crate::api::auth::Caller;
use crate::api::status::{json_response, ApiError, GROUP_VERSION};
use crate::api::AppState;

/// `spec` of a PolicyReview.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewSpec {
    /// Whose session; the caller if empty.
    #[serde(default)]
    pub user: String,
    /// Their groups (informational: policies select targets, not groups).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The target's namespace: empty or the request path's.
    #[serde(default)]
    pub namespace: String,
    /// `<kind>/<name>`.
    pub target: TargetRef,
    /// `mirror` or `steal`.
    pub mode: Mode,
    /// Target ports (none: ports are not checked).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// The filter, in the filter language.
    #[serde(default)]
    pub filter: Option<Filter>,
}

fn parse(body: &[u8]) -> Result<(Value, ReviewSpec), ApiError> {
    let obj: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if obj["kind"] != "PolicyReview" || obj["apiVersion"] != GROUP_VERSION {
        return Err(ApiError::bad_request(format!(
            "expected kind PolicyReview, apiVersion {GROUP_VERSION}; got kind {}, apiVersion {}",
            obj["kind"], obj["apiVersion"]
        )));
    }
    let spec: ReviewSpec = serde_json::from_value(obj["spec"].clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid spec: {e}; expected {{namespace, target, mode, ports?, filter?, user?, groups?}}"
        ))
    })?;
    Ok((obj, spec))
}

fn check_error(e: CheckError) -> ApiError {
    match e {
        CheckError::NotLoaded => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", e.to_string()),
        CheckError::Kube { .. } => {
            tracing::warn!(error = %e, "checking the policies failed");
            ApiError::internal("cannot read the target to check the shunt policies: see the operator's log")
        }
    }
}

/// Session creation's check: 403 naming the policy and the rule (and a `SessionDenied`
/// Event on the target) when a policy forbids the session.
pub async fn admit_session(
    state: &AppState,
    policies: &Policies,
    user: &str,
    namespace: &str,
    spec: &SessionSpec,
) -> Result<(), ApiError> {
    let decision = policies
        .admit(&state.client, &state.registry, user, namespace, spec)
        .await
        .map_err(check_error)?;
    if decision.allowed {
        return Ok(());
    }
    let message = format!(
        "user {user:?} may not open this session on {} in namespace {namespace:?}: {}",
        spec.target, decision.message
    );
    state
        .events
        .publish(namespace, &spec.target, true, "SessionDenied", message.clone());
    Err(ApiError::forbidden(message))
}

/// `POST /apis/api.shunt.dev/v1/namespaces/{ns}/policyreviews`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    policies: Option<Extension<Policies>>,
    caller: Caller,
    axum::extract::Path(namespace): axum::extract::Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(Extension(policies)) = policies else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "this operator does not enforce shunt policies (no policy controller is running)",
        ));
    };
    let (mut obj, mut spec) = parse(&body)?;
    if spec.namespace.is_empty() {
        spec.namespace.clone_from(&namespace);
    } else if spec.namespace != namespace {
        return Err(ApiError::bad_request(format!(
            "spec.namespace {:?} does not match the request's namespace {namespace:?}: \
             a PolicyReview asks about targets of its own namespace",
            spec.namespace
        )));
    }
    obj["metadata"]["namespace"] = json!(namespace);
    obj["spec"]["namespace"] = json!(namespace);
    let user = if spec.user.is_empty() {
        caller.user.clone()
    } else {
        spec.user.clone()
    };
    let session = SessionSpec {
        target: spec.target.clone(),
        mode: spec.mode,
        filter: spec.filter.clone(),
        ports: spec.ports.iter().map(|&port| SessionPort { port }).collect(),
    };
    let decision = policies
        .admit(&state.client, &state.registry, &user, &spec.namespace, &session)
        .await
        .map_err(check_error)?;
    obj["spec"]["user"] = json!(user);
    obj["status"] = json!({
        "allowed": decision.allowed,
        "policy": decision.policy,
        "rule": decision.rule,
        "message": decision.message,
        "matched": decision.matched,
    });
    Ok(json_response(StatusCode::CREATED, &obj))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reviews_are_checked() {
        let (_, spec) = parse(
            br#"{"apiVersion":"api.shunt.dev/v1","kind":"PolicyReview","spec":{"namespace":"shop",
            "target":"deploy/api","mode":"steal","filter":"x-shunt-user: bob","ports":[8080]}}"#,
        )
        .unwrap();
        assert_eq!(
            (spec.target.to_string(), spec.ports),
            ("deployment/api".to_owned(), vec![8080])
        );
        assert_eq!(parse(br#"{"kind":"Session"}"#).unwrap_err().code, 400);
        let unknown = br#"{"apiVersion":"api.shunt.dev/v1","kind":"PolicyReview","spec":{"namespace":"a","target":"deploy/a","mode":"steal","x":1}}"#;
        assert_eq!(parse(unknown).unwrap_err().code, 400);
    }
}
