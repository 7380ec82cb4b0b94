//! `sessions`: create (with the SubjectAccessReview for the target verb, target
//! resolution and the registry's conflict check), get, list, watch and delete.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use serde_json::Value;
use shunt_proto::names::API_GROUP;
use shunt_proto::route::Mode;
use shunt_proto::session::{SessionSpec, SessionStatus};

use super::auth::Caller;
use super::objects::{self, wants_table};
use super::status::{json_response, ApiError, GROUP_VERSION};
use super::{watch, AppState, ListParams};
use crate::lifecycle;
use crate::registry::{Refusal, Session};
use crate::targets::{self, TargetError};

/// Random hex (per-process random keys, a counter and the clock).
fn random_hex(len: usize) -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut out = String::new();
    while out.len() < len {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        h.write_u128(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out.truncate(len);
    out
}

/// The RBAC verb a spec needs on its target.
pub fn verb_for(spec: &SessionSpec) -> &'static str {
    match (spec.mode, &spec.filter) {
        (Mode::Mirror, _) => "mirror",
        (Mode::Steal, Some(_)) => "steal",
        (Mode::Steal, None) => "steal-unfiltered",
    }
}

fn denial(caller: &Caller, verb: &str, namespace: &str, spec: &SessionSpec, reason: &str) -> String {
    let resource = spec.target.resource_name();
    let how = if verb == "steal-unfiltered" {
        format!(
            "kubectl create role shunt-unfiltered --verb=steal-unfiltered --resource=targets.{API_GROUP} \
             --resource-name={resource} -n {namespace} && kubectl create rolebinding {user}-shunt-unfiltered \
             --role=shunt-unfiltered --user={user} -n {namespace}",
            user = caller.user
        )
    } else {
        format!(
            "kubectl create rolebinding {user}-shunt --clusterrole=shunt-user --user={user} -n {namespace}",
            user = caller.user
        )
    };
    let why = if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    };
    format!(
        "user {:?} may not {verb} {} in namespace {namespace:?}: RBAC verb {verb:?} on resource \"targets\" in API group \
         {API_GROUP:?} with resourceName {resource:?} is missing{why}; ask a cluster admin to grant it, e.g. {how}",
        caller.user, spec.target
    )
}

/// The custom verb on `sessions` that ends another user's session.
pub const KILL_VERB: &str = "kill";

/// Asks kube-apiserver whether `caller` may use `verb` on `resource` `name` of the API
/// group in `namespace`: `Ok(None)` if allowed, `Ok(Some(reason))` if not.
async fn access_review(
    state: &AppState,
    caller: &Caller,
    namespace: &str,
    resource: &str,
    verb: &str,
    name: &str,
) -> Result<Option<String>, ApiError> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(caller.user.clone()),
            groups: Some(caller.groups.clone()),
            extra: (!caller.extra.is_empty()).then(|| caller.extra.clone().into_iter().collect::<BTreeMap<_, _>>()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(API_GROUP.into()),
                resource: Some(resource.into()),
                verb: Some(verb.into()),
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let api: kube::Api<SubjectAccessReview> = kube::Api::all(state.client.clone());
    let answer = api
        .create(&kube::api::PostParams::default(), &review)
        .await
        .map_err(|error| {
            tracing::warn!(%error, "SubjectAccessReview failed");
            ApiError::internal(
                "cannot check the permission: the SubjectAccessReview failed; retry, and see the operator's log",
            )
        })?;
    let status = answer.status.unwrap_or_default();
    if status.allowed && !status.denied.unwrap_or(false) {
        return Ok(None);
    }
    Ok(Some(status.reason.unwrap_or_default()))
}

/// Asks kube-apiserver whether `caller` may use the session's verb on the target.
async fn authorize(state: &AppState, caller: &Caller, namespace: &str, spec: &SessionSpec) -> Result<(), ApiError> {
    let verb = verb_for(spec);
    let resource = spec.target.resource_name();
    let Some(reason) = access_review(state, caller, namespace, "targets", verb, &resource).await? else {
        return Ok(());
    };
    let message = denial(caller, verb, namespace, spec, &reason);
    state
        .events
        .publish(namespace, &spec.target, true, "SessionDenied", message.clone());
    Err(ApiError::forbidden(message))
}

/// The session a create body asks for (name, spec), or 400.
fn parse(body: &[u8]) -> Result<(Option<String>, String, SessionSpec), ApiError> {
    let obj: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    if obj["kind"] != "Session" || obj["apiVersion"] != GROUP_VERSION {
        return Err(ApiError::bad_request(format!(
            "expected kind Session, apiVersion {GROUP_VERSION}; got kind {}, apiVersion {}",
            obj["kind"], obj["apiVersion"]
        )));
    }
    let name = obj["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let generate = obj["metadata"]["generateName"].as_str().unwrap_or_default().to_owned();
    if name.is_none() && generate.is_empty() {
        return Err(ApiError::bad_request(
            "metadata.name or metadata.generateName is required",
        ));
    }
    let spec: SessionSpec =
        serde_json::from_value(obj["spec"].clone()).map_err(|e| ApiError::bad_request(format!("invalid spec: {e}")))?;
    if spec.ports.is_empty() {
        return Err(ApiError::bad_request(
            "spec.ports is empty: name at least one app port, e.g. [{\"port\": 8080}]",
        ));
    }
    Ok((name, generate, spec))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// `POST .../namespaces/{ns}/sessions`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(namespace): Path<String>,
    policies: Option<axum::Extension<crate::policy::Policies>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (name, generate, spec) = parse(&body)?;
    let name = name.unwrap_or_else(|| format!("{generate}{}", random_hex(5)));
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "invalid session name {name:?}: use a DNS label (a-z, 0-9, -)"
        )));
    }
    authorize(&state, &caller, &namespace, &spec).await?;
    let mut env = crate::policy::exposure::EnvExposure::default();
    if let Some(axum::Extension(policies)) = &policies {
        crate::policy::review::admit_session(&state, policies, &caller.user, &namespace, &spec).await?;
        // Fixed at creation, like the admission decision: what `shunt exec` may copy of
        // the target's environment (the CLI reads it from the status).
        match policies.target(&state.client, &namespace, &spec.target).await {
            Ok(target) => env = crate::policy::exposure::env(&policies.valid(), &target),
            Err(error) => {
                tracing::warn!(%error, "cannot read the target for the env policies");
                return Err(ApiError::internal(format!(
                    "cannot read {} to check the env policies: see the operator's log",
                    spec.target
                )));
            }
        }
    }
    let selector = targets::resolve(&state.client, &namespace, &spec.target)
        .await
        .map_err(|e| match e {
            TargetError::NotFound { .. } => ApiError::not_found(e.to_string()),
            TargetError::NoSelector { .. } => ApiError::bad_request(e.to_string()),
            TargetError::Kube { .. } => {
                tracing::warn!(error = %e, "target resolution failed");
                ApiError::internal(format!("cannot read {}: see the operator's log", spec.target))
            }
        })?;
    let mut session = Session {
        namespace: namespace.clone(),
        name,
        uid: uuid(),
        user: caller.user.clone(),
        groups: caller.groups.clone(),
        spec,
        selector,
        created: SystemTime::now(),
        status: SessionStatus {
            phase: "Pending".into(),
            user: caller.user.clone(),
            env_exclude: env.exclude,
            env_blocked: env.blocked_by.is_some(),
            ..SessionStatus::default()
        },
    };
    if let Ok(pods) = targets::pods(&state.client, &namespace).await {
        session.status = lifecycle::status_for(&session, &pods, &state.tunnels, &state.hub);
    }
    let session = state.registry.create(session).map_err(|refusal| match refusal {
        Refusal::Exists(name) => ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("sessions.{API_GROUP} {name:?} already exists"),
        ),
        other => ApiError::new(StatusCode::CONFLICT, "Conflict", other.to_string()),
    })?;
    tracing::info!(session.namespace = %session.namespace, session.name = %session.name, session.user = %session.user,
        target = %session.spec.target, mode = %session.spec.mode, "session created");
    let note = format!(
        "session {} of {} started: {} {}",
        session.name,
        session.user,
        session.spec.mode,
        session
            .spec
            .filter
            .as_ref()
            .map_or_else(|| "every request".to_owned(), ToString::to_string)
    );
    state
        .events
        .publish(&namespace, &session.spec.target, false, "SessionStarted", note);
    let rv = *state.registry.changes().borrow();
    Ok(json_response(
        StatusCode::CREATED,
        &objects::session_object(&session, rv),
    ))
}

fn uuid() -> String {
    let h = random_hex(32);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn list_answer(state: &AppState, namespace: Option<&str>, params: &ListParams, headers: &HeaderMap) -> Response {
    if params.is_watch() {
        return watch::sessions(state.registry.clone(), namespace.map(str::to_owned), params.clone());
    }
    let rv = *state.registry.changes().borrow();
    let sessions: Vec<Session> = state
        .registry
        .list(namespace)
        .into_iter()
        .filter(|s| params.selects_name(&s.name))
        .collect();
    let body = if wants_table(headers) {
        objects::session_table(&sessions, rv)
    } else {
        objects::session_list(&sessions, rv)
    };
    json_response(StatusCode::OK, &body)
}

/// `GET .../sessions` (all namespaces), also `?watch=true`.
pub async fn list_all(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Response {
    list_answer(&state, None, &params, &headers)
}

/// `GET .../namespaces/{ns}/sessions`, also `?watch=true`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path(namespace): Path<String>,
    Query(params): Query<ListParams>,
    headers: HeaderMap,
) -> Response {
    list_answer(&state, Some(&namespace), &params, &headers)
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("sessions.{API_GROUP} {name:?} not found"))
}

/// `GET .../namespaces/{ns}/sessions/{name}`.
pub async fn get(
    State(state): State<Arc<AppState>>,
    _caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = state.registry.get(&namespace, &name).ok_or_else(|| {
        // The CLI of a session that was ended (deleted, grace over, a policy) learns why
        // from this 404; a plain 404 means the operator does not know it (restarted).
        match state.registry.ended_reason(&namespace, &name) {
            Some(why) => ApiError::not_found(format!("session {name:?} {why}")),
            None => not_found(&name),
        }
    })?;
    let rv = *state.registry.changes().borrow();
    let body = if wants_table(&headers) {
        objects::session_table(std::slice::from_ref(&session), rv)
    } else {
        objects::session_object(&session, rv)
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// `PUT`/`PATCH .../namespaces/{ns}/sessions/{name}`: 405, sessions never change. Their
/// target, mode, filter and ports were checked when they were created (RBAC verb,
/// policies, disjoint filters); a change would have to pass all of that again.
pub async fn immutable(_caller: Caller, Path((_namespace, name)): Path<(String, String)>) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!(
            "sessions.{API_GROUP} {name:?} cannot be changed: its target, mode, filter and ports are fixed when it \
             is created, where permissions, policies and conflicts are checked; delete the session and create a new one"
        ),
    )
}

/// `DELETE .../namespaces/{ns}/sessions/{name}`: the routes leave every sidecar.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    // kube-apiserver checked `delete` on sessions; ending someone else's session also
    // takes the custom verb `kill` (ClusterRole shunt-admin), so every developer can end
    // their own sessions but not a colleague's.
    let owner = state
        .registry
        .get(&namespace, &name)
        .ok_or_else(|| not_found(&name))?
        .user;
    if owner != caller.user {
        if let Some(reason) = access_review(&state, &caller, &namespace, "sessions", KILL_VERB, &name).await? {
            let why = if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            };
            return Err(ApiError::forbidden(format!(
                "user {:?} may not end session {name:?} of user {owner:?} in namespace {namespace:?}: ending another \
                 user's session needs RBAC verb {KILL_VERB:?} on resource \"sessions\" in API group {API_GROUP:?}{why}; \
                 the ClusterRole shunt-admin grants it (kubectl create rolebinding {user}-shunt-admin \
                 --clusterrole=shunt-admin --user={user} -n {namespace})",
                caller.user,
                user = caller.user
            )));
        }
    }
    let session = state
        .registry
        .end(&namespace, &name, format!("ended: deleted by {}", caller.user))
        .ok_or_else(|| not_found(&name))?;
    state.tunnels.unregister(&namespace, &name);
    tracing::info!(session.namespace = %namespace, session.name = %name, by = %caller.user, "session deleted");
    let note = format!("session {name} of {} ended: deleted by {}", session.user, caller.user);
    state
        .events
        .publish(&namespace, &session.spec.target, false, "SessionEnded", note);
    let rv = *state.registry.changes().borrow();
    Ok(json_response(StatusCode::OK, &objects::session_object(&session, rv)).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_checked_and_verbs_follow_mode_and_filter() {
        let body = br#"{"apiVersion":"api.shunt.dev/v1","kind":"Session","metadata":{"generateName":"alice-"},
            "spec":{"target":"deploy/api","mode":"steal","filter":"x-shunt-user: alice","ports":[{"port":8080}]}}"#;
        let (name, generate, spec) = parse(body).unwrap();
        assert_eq!((name, generate.as_str(), verb_for(&spec)), (None, "alice-", "steal"));
        let unfiltered = SessionSpec {
            filter: None,
            ..spec.clone()
        };
        assert_eq!(verb_for(&unfiltered), "steal-unfiltered");
        assert_eq!(
            verb_for(&SessionSpec {
                mode: Mode::Mirror,
                ..unfiltered
            }),
            "mirror"
        );
        let err = parse(br#"{"apiVersion":"v1","kind":"Pod"}"#).unwrap_err();
        assert_eq!(err.code, 400);
        let caller = Caller {
            user: "bob".into(),
            ..Caller::default()
        };
        let msg = denial(&caller, "steal", "shop", &spec, "");
        assert!(
            msg.contains("\"steal\"") && msg.contains("deployment.api") && msg.contains("--user=bob"),
            "{msg}"
        );
        assert!(valid_name("alice-3f2a1") && !valid_name("Alice") && !valid_name("a.b"));
        assert_eq!(random_hex(5).len(), 5);
        assert_ne!(uuid(), uuid());
    }
}
