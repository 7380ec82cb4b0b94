//! Authentication (client certificates, service-account tokens) and authorization.
//!
//! Every request is authorized against RBAC ([`rbac`]) from the stored roles and
//! bindings, with the default ones of [`bootstrap`]; `system:masters` is always allowed
//! (kube-apiserver's privileged-group authorizer). Tokens come from [`token_request`]
//! and are checked by [`authenticate_token`] for both API requests and TokenReviews;
//! [`service_account`] gives pods their `kube-api-access` volume.

pub mod bootstrap;
pub mod rbac;
pub mod review;
pub mod service_account;
pub mod token_request;
pub mod tokens;

use serde_json::json;

use crate::api::{Api, User};
use crate::status::ApiError;
use tokens::TokenError;

pub use rbac::Decision;
pub use review::review;
pub use token_request::token_request;

/// What a request wants to do, as RBAC sees it.
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    /// The verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, custom ones).
    pub verb: String,
    /// API group.
    pub group: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource, if any.
    pub subresource: String,
    /// Namespace ("" for cluster-scoped or all namespaces).
    pub namespace: String,
    /// Object name, if any.
    pub name: String,
    /// Non-resource path (`/version`, `/api`, …), when the request is not for a resource.
    pub path: Option<String>,
}

/// The group kube-apiserver lets do anything, whatever RBAC says.
pub const PRIVILEGED_GROUP: &str = "system:masters";

/// The authorizer chain: privileged group, then RBAC.
pub fn decide(api: &Api, user: &User, attrs: &Attributes) -> Decision {
    if user.groups.iter().any(|g| g == PRIVILEGED_GROUP) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    rbac::evaluate(api, user, attrs)
}

/// Allows or refuses `user` to do `attrs`.
pub fn authorize(api: &Api, user: &User, attrs: &Attributes) -> Result<(), ApiError> {
    let decision = decide(api, user, attrs);
    if decision.allowed {
        return Ok(());
    }
    tracing::debug!(user = %user.name, verb = %attrs.verb, resource = %attrs.resource, namespace = %attrs.namespace, "forbidden");
    let mut err = forbidden(user, attrs);
    if !decision.reason.is_empty() {
        err.message = format!("{}: {}", err.message, decision.reason);
    }
    Err(err)
}

/// The error kube-apiserver gives for a refused request (`responsewriters.Forbidden`).
pub fn forbidden(user: &User, a: &Attributes) -> ApiError {
    if let Some(path) = &a.path {
        return ApiError::forbidden(format!(
            "forbidden: User {:?} cannot {} path {path:?}",
            user.name, a.verb
        ));
    }
    let qualified = if a.group.is_empty() {
        a.resource.clone()
    } else {
        format!("{}.{}", a.resource, a.group)
    };
    let what = if a.name.is_empty() {
        qualified
    } else {
        format!("{qualified} {:?}", a.name)
    };
    let resource = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let scope = if a.namespace.is_empty() {
        "at the cluster scope".to_owned()
    } else {
        format!("in the namespace {:?}", a.namespace)
    };
    let mut err = ApiError::forbidden(format!(
        "{what} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
        user.name, a.verb, a.group
    ));
    let mut details = json!({"group": a.group, "kind": a.resource});
    if !a.name.is_empty() {
        details["name"] = json!(a.name);
    }
    err.details = Some(details);
    err
}

/// The name a field selector pins (`metadata.name=x` or `==x` among its terms), which
/// kube-apiserver uses as the request's name for authorizing a list or watch.
pub fn name_from_field_selector(selector: &str) -> Option<String> {
    selector.split(',').find_map(|term| {
        let term = term.trim();
        let name = term
            .strip_prefix("metadata.name==")
            .or_else(|| term.strip_prefix("metadata.name="))?;
        (!name.is_empty() && !name.contains(['/', '%']) && name != "." && name != "..").then(|| name.to_owned())
    })
}

/// Authenticates a service-account token for one of `audiences`: the user it stands
/// for and the audiences it was checked for, or why it does not authenticate.
pub fn authenticate_token(api: &Api, token: &str, audiences: &[String]) -> Result<(User, Vec<String>), TokenError> {
    let info = api.tokens.check(token)?;
    let shared = tokens::audiences_match(&info.audiences, audiences, crate::server::API_AUDIENCE)?;
    // Like kube-apiserver's validator: the service account (and bound pod) must still be
    // the ones the token was issued for.
    let sa = api.store.get(
        &(String::new(), "serviceaccounts".to_owned()),
        &info.namespace,
        &info.service_account,
    );
    let Some(sa) = sa else {
        return Err(TokenError::ServiceAccountGone(info.service_account));
    };
    let uid = sa["metadata"]["uid"].as_str().unwrap_or_default();
    if !info.sa_uid.is_empty() && uid != info.sa_uid {
        return Err(TokenError::ServiceAccountReplaced {
            now: uid.to_owned(),
            claim: info.sa_uid,
        });
    }
    if let Some((pod, pod_uid)) = &info.pod {
        let found = api.store.get(&(String::new(), "pods".to_owned()), &info.namespace, pod);
        if found.is_none_or(|p| p["metadata"]["uid"] != pod_uid.as_str()) {
            return Err(TokenError::Invalidated);
        }
    }
    Ok((tokens::user_of(&info), shared))
}
