//! Who is on the other end of a hub connection.
//!
//! A sidecar presents its projected ServiceAccount token (audience
//! [`SIDECAR_TOKEN_AUDIENCE`]). A TokenReview proves it is valid, unexpired and meant for
//! the hub; the reviewed user must be a service account whose token is bound to a pod
//! (`authentication.kubernetes.io/pod-name`/`pod-uid` extras), that pod must be the one
//! the sidecar names in `shunt-pod`, exist with that UID, not be terminating, and carry
//! `shunt.dev/injected=true`. No shared secrets: a token taken from another pod names
//! that other pod, and a pod that is not injected gets nothing.
//!
//! A connection lives no longer than its token: the routes watch asks TokenReview again
//! just after the token's `exp` ([`next_review`]) and ends when the answer is no (see
//! [`super::routes`]); the sidecar reconnects with the token the kubelet has rotated.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::{HeaderMap, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use shunt_proto::hub::HEADER_POD;
use shunt_proto::names::{LABEL_INJECTED, SIDECAR_TOKEN_AUDIENCE};

const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const SA_PREFIX: &str = "system:serviceaccount:";

/// An authenticated sidecar: its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID.
    pub uid: String,
    /// The pod's labels when it was checked.
    pub labels: BTreeMap<String, String>,
}

/// Why a sidecar is refused: an HTTP status, a metric label and a message for the sidecar.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denial {
    /// 401, 403 or 503.
    pub code: StatusCode,
    /// Metric label and Status `reason` detail, e.g. `not_injected`.
    pub reason: &'static str,
    /// What happened and what to do.
    pub message: String,
}

fn deny(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Denial {
    Denial {
        code,
        reason,
        message: message.into(),
    }
}

/// The `namespace/name` of a `shunt-pod` header.
pub fn pod_header(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(HEADER_POD)?.to_str().ok()?;
    let (ns, name) = value.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| (ns.to_owned(), name.to_owned()))
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// When `token` expires by its own word: the `exp` claim of a JWT, which every
/// service-account token of kube-apiserver is. Read without verifying the signature, so
/// it only plans when to ask TokenReview again ([`next_review`]); it never decides
/// anything by itself. `None` for a token that is not a JWT or has no `exp`.
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    let claims = token.split('.').nth(1)?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&claims).ok()?["exp"].as_u64()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(exp))
}

/// The longest a connection goes without a new TokenReview of its token, whatever the
/// token says (tokens without `exp`; tokens invalidated early, e.g. their service account
/// deleted). The pod itself is watched all the time.
pub const REVIEW_EVERY: Duration = Duration::from_secs(600);
/// `exp` counts whole seconds: the review waits this much past it.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);
/// When to ask again after a review could not answer, or after a token outlived its `exp`
/// (an authenticator that allows clock skew).
pub const REVIEW_RETRY: Duration = Duration::from_secs(10);

/// How long until the token of a connection is reviewed again: just after its expiry,
/// at most [`REVIEW_EVERY`], and [`REVIEW_RETRY`] when the expiry is already past.
pub fn next_review(expiry: Option<SystemTime>, now: SystemTime) -> Duration {
    match expiry {
        None => REVIEW_EVERY,
        Some(expiry) => match (expiry + EXPIRY_SLACK).duration_since(now) {
            Ok(left) if !left.is_zero() => left.min(REVIEW_EVERY),
            _ => REVIEW_RETRY,
        },
    }
}

/// What a connection's token is reviewed with again later: the request's
/// `Authorization` and `shunt-pod` headers.
pub fn credentials(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in [http::header::AUTHORIZATION, http::HeaderName::from_static(HEADER_POD)] {
        if let Some(value) = headers.get(&name) {
            kept.insert(name, value.clone());
        }
    }
    kept
}

/// When to review the token of `credentials` again ([`next_review`] from now).
pub fn review_deadline(credentials: &HeaderMap) -> tokio::time::Instant {
    let expiry = bearer(credentials).and_then(token_expiry);
    tokio::time::Instant::now() + next_review(expiry, SystemTime::now())
}

/// Authenticates the routes watch request of a sidecar (see the module doc).
pub async fn authenticate(kube: &kube::Client, headers: &HeaderMap) -> Result<PodIdentity, Denial> {
    let token = bearer(headers).ok_or_else(|| {
            deny(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "no bearer token: send `Authorization: Bearer <projected ServiceAccount token>` (audience shunt.dev/sidecar)",
            )
        })?;
    let (ns, name) = pod_header(headers).ok_or_else(|| {
        deny(
            StatusCode::UNAUTHORIZED,
            "no_pod",
            "missing or malformed shunt-pod header: send `shunt-pod: <namespace>/<pod name>`",
        )
    })?;

    let review = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![SIDECAR_TOKEN_AUDIENCE.to_owned()]),
        },
        ..TokenReview::default()
    };
    let review = Api::<TokenReview>::all(kube.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "TokenReview failed");
            deny(
                StatusCode::SERVICE_UNAVAILABLE,
                "review_failed",
                "the operator cannot review tokens right now; retry later",
            )
        })?;
    let status = review.status.unwrap_or_default();
    let audience_ok = status
        .audiences
        .as_ref()
        .is_none_or(|a| a.iter().any(|a| a == SIDECAR_TOKEN_AUDIENCE));
    if status.authenticated != Some(true) || !audience_ok {
        let why = status.error.unwrap_or_else(|| "not authenticated".into());
        return Err(deny(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            format!("token rejected ({why}): it must be a valid, unexpired projected ServiceAccount token with audience {SIDECAR_TOKEN_AUDIENCE}"),
        ));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let sa_ns = username
        .strip_prefix(SA_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns.to_owned());
    let extra = user.extra.unwrap_or_default();
    let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    let (Some(sa_ns), Some(bound_name), Some(bound_uid)) = (sa_ns, first(EXTRA_POD_NAME), first(EXTRA_POD_UID)) else {
        return Err(deny(
            StatusCode::FORBIDDEN,
            "not_bound",
            format!("the token of {username:?} is not a ServiceAccount token bound to a pod; mount a projected token (it is bound to its pod)"),
        ));
    };
    if (sa_ns.as_str(), bound_name.as_str()) != (ns.as_str(), name.as_str()) {
        return Err(deny(
            StatusCode::FORBIDDEN,
            "pod_mismatch",
            format!("the token is bound to pod {sa_ns}/{bound_name}, not to {ns}/{name} named in shunt-pod"),
        ));
    }
    check_pod(kube, &ns, &name, &bound_uid).await
}

/// Checks that pod `ns/name` exists with `uid`, is not terminating and is injected.
pub async fn check_pod(kube: &kube::Client, ns: &str, name: &str, uid: &str) -> Result<PodIdentity, Denial> {
    let pod = Api::<Pod>::namespaced(kube.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading the sidecar's pod failed");
            deny(
                StatusCode::SERVICE_UNAVAILABLE,
                "review_failed",
                "the operator cannot read pods right now; retry later",
            )
        })?;
    let pod = pod.ok_or_else(|| {
        deny(
            StatusCode::FORBIDDEN,
            "pod_gone",
            format!("pod {ns}/{name} does not exist"),
        )
    })?;
    pod_allowed(&pod, ns, name, uid)
}

/// The identity of `pod` if it is the live, injected pod `ns/name` with `uid`.
pub fn pod_allowed(pod: &Pod, ns: &str, name: &str, uid: &str) -> Result<PodIdentity, Denial> {
    let meta = &pod.metadata;
    if meta.uid.as_deref() != Some(uid) {
        return Err(deny(
            StatusCode::FORBIDDEN,
            "pod_gone",
            format!(
                "pod {ns}/{name} was replaced (the token is bound to UID {uid}); the new pod must use its own token"
            ),
        ));
    }
    if meta.deletion_timestamp.is_some() {
        return Err(deny(
            StatusCode::FORBIDDEN,
            "pod_gone",
            format!("pod {ns}/{name} is terminating"),
        ));
    }
    let labels = meta.labels.clone().unwrap_or_default();
    if labels.get(LABEL_INJECTED).map(String::as_str) != Some("true") {
        return Err(deny(
            StatusCode::FORBIDDEN,
            "not_injected",
            format!("pod {ns}/{name} is not labelled {LABEL_INJECTED}=true: only pods injected by the shunt webhook get routes"),
        ));
    }
    Ok(PodIdentity {
        namespace: ns.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
        labels,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(labels: &[(&str, &str)], terminating: bool) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.uid = Some("u1".into());
        pod.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        if terminating {
            pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        }
        pod
    }

    #[test]
    fn only_live_injected_pods_with_the_bound_uid_pass() {
        let ok = pod_allowed(
            &pod(&[(LABEL_INJECTED, "true"), ("app", "api")], false),
            "shop",
            "api-0",
            "u1",
        )
        .unwrap();
        assert_eq!(ok.labels["app"], "api");
        let reason = |p: &Pod, uid: &str| pod_allowed(p, "shop", "api-0", uid).unwrap_err().reason;
        assert_eq!(reason(&pod(&[("app", "api")], false), "u1"), "not_injected");
        assert_eq!(reason(&pod(&[(LABEL_INJECTED, "true")], true), "u1"), "pod_gone");
        assert_eq!(reason(&pod(&[(LABEL_INJECTED, "true")], false), "u2"), "pod_gone");
    }

    #[test]
    fn reviews_follow_the_tokens_expiry() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = |claims: &str| format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(claims));
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(token_expiry(&jwt(r#"{"exp":1700000000}"#)), Some(at(1_700_000_000)));
        assert_eq!(token_expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(token_expiry("0123abcd"), None);
        assert_eq!(token_expiry("a.!!!.c"), None);
        let now = at(1_000);
        assert_eq!(next_review(Some(at(1_030)), now), Duration::from_secs(31));
        assert_eq!(next_review(Some(at(1_000 + 3_600)), now), REVIEW_EVERY);
        assert_eq!(next_review(Some(at(900)), now), REVIEW_RETRY);
        assert_eq!(next_review(None, now), REVIEW_EVERY);
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, "Bearer  t0k ".parse().unwrap());
        assert_eq!(bearer(&h), Some("t0k"));
    }

    #[test]
    fn pod_header_is_namespace_slash_name() {
        let mut h = HeaderMap::new();
        h.insert(HEADER_POD, "shop/api-0".parse().unwrap());
        assert_eq!(pod_header(&h), Some(("shop".into(), "api-0".into())));
        h.insert(HEADER_POD, "api-0".parse().unwrap());
        assert_eq!(pod_header(&h), None);
    }
}
