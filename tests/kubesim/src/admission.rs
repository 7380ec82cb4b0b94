//! Admission: calls the matching mutating webhooks, then the validating ones, the way
//! kube-apiserver does.
//!
//! Mutating webhooks run one after another in the order of their configurations' names;
//! each answer's JSON patch is applied before the next call, and a webhook with
//! `reinvocationPolicy: IfNeeded` runs once more if a later one changed the object.
//! Validating webhooks see the final object and may only allow or deny. A webhook that
//! cannot be called (down, timed out, wrong certificate, malformed answer) refuses the
//! write under `failurePolicy: Fail` (the default) and is skipped under `Ignore`.
//! A dry-run request (`?dryRun=All`) is admitted like any other, with `dryRun: true`
//! in the review; a matching webhook whose `sideEffects` is not `None` or
//! `NoneOnDryRun` refuses it with 400 BadRequest whatever its failure policy, as in
//! kube-apiserver's dispatcher (it could not promise to leave the world unchanged).
//!
//! No store lock is held across a call (the store hands out copies), so a webhook may
//! itself talk to the API server, and controllers' writes are admitted like any other.

pub mod client;
pub mod matching;
pub mod review;
pub mod service;

pub use service::resolve_service;

use http::StatusCode;
use serde_json::Value;

use crate::api::{Api, Operation, User};
use crate::resources::ResourceType;
use crate::status::ApiError;
use matching::Hook;
use review::Attributes;

/// Runs admission for a write of `obj`; returns the webhooks' warnings.
pub async fn admit(
    api: &Api,
    user: &User,
    op: Operation,
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
    dry_run: bool,
) -> Result<Vec<String>, ApiError> {
    crate::defaults::prune_custom(api, rt, obj);
    if matching::exempt(rt) {
        return Ok(Vec::new());
    }
    run(api, user, op, rt, "", obj, old, dry_run).await
}

/// Runs admission for a write through a subresource. Only `status` is admitted (as
/// `pods/status` etc.); as with kube-apiserver's status strategy, whatever a webhook
/// changes outside `status` is discarded.
pub async fn admit_subresource(
    api: &Api,
    user: &User,
    rt: &ResourceType,
    subresource: &str,
    obj: &mut Value,
    old: &Value,
    dry_run: bool,
) -> Result<Vec<String>, ApiError> {
    if subresource != "status" || matching::exempt(rt) {
        return Ok(Vec::new());
    }
    let mut candidate = obj.clone();
    let warnings = run(
        api,
        user,
        Operation::Update,
        rt,
        subresource,
        &mut candidate,
        Some(old),
        dry_run,
    )
    .await?;
    obj["status"] = candidate["status"].take();
    Ok(warnings)
}

#[allow(clippy::too_many_arguments)] // the admission attributes, as kube-apiserver's admission.Attributes
async fn run(
    api: &Api,
    user: &User,
    op: Operation,
    rt: &ResourceType,
    subresource: &str,
    obj: &mut Value,
    old: Option<&Value>,
    dry_run: bool,
) -> Result<Vec<String>, ApiError> {
    let is_namespace = rt.group.is_empty() && rt.plural == "namespaces";
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
    let namespace = if is_namespace {
        name.clone()
    } else {
        obj["metadata"]["namespace"].as_str().unwrap_or_default().to_owned()
    };
    let attrs = Attributes {
        op,
        rt,
        subresource,
        namespace: &namespace,
        name: &name,
        user,
        dry_run,
    };
    let mut warnings = Vec::new();
    if mutate(api, &attrs, obj, old, &mut warnings).await? {
        // Fields a webhook added that the schema does not know are dropped, as for any write.
        crate::defaults::prune_custom(api, rt, obj);
    }
    validate(api, &attrs, obj, old, &mut warnings).await?;
    Ok(warnings)
}

fn match_request<'a>(attrs: &'a Attributes<'a>) -> matching::Request<'a> {
    matching::Request {
        op: attrs.op,
        rt: attrs.rt,
        subresource: attrs.subresource,
        namespace: attrs.namespace,
    }
}

/// The mutating phase; true if any webhook changed the object.
async fn mutate(
    api: &Api,
    attrs: &Attributes<'_>,
    obj: &mut Value,
    old: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<bool, ApiError> {
    let hooks = matching::matching(api, "mutatingwebhookconfigurations", &match_request(attrs), obj, old);
    if hooks.is_empty() {
        return Ok(false);
    }
    let mut changed_any = false;
    // Whether the object changed since webhook i last ran (reinvocation candidates).
    let mut stale = vec![false; hooks.len()];
    for (i, hook) in hooks.iter().enumerate() {
        if call_mutating(api, attrs, hook, obj, old, warnings).await? {
            changed_any = true;
            for flag in stale.iter_mut().take(i) {
                *flag = true;
            }
        }
    }
    let reinvoke: Vec<&Hook> = hooks
        .iter()
        .zip(&stale)
        .filter(|(hook, stale)| **stale && hook.spec["reinvocationPolicy"] == "IfNeeded")
        .map(|(hook, _)| hook)
        .collect();
    for hook in reinvoke {
        tracing::debug!(
            webhook = hook.name(),
            "reinvoking mutating webhook: a later webhook changed the object"
        );
        changed_any |= call_mutating(api, attrs, hook, obj, old, warnings).await?;
    }
    Ok(changed_any)
}

/// Calls one mutating webhook and applies its patch; true if the object changed.
async fn call_mutating(
    api: &Api,
    attrs: &Attributes<'_>,
    hook: &Hook,
    obj: &mut Value,
    old: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<bool, ApiError> {
    let Some(verdict) = call(api, attrs, hook, obj, old, true).await? else {
        return Ok(false);
    };
    warnings.extend(verdict.warnings);
    if !verdict.allowed {
        return Err(denied(hook.name(), &verdict.status));
    }
    let Some(patch) = verdict.patch else { return Ok(false) };
    let ops: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| ApiError::internal(format!("Internal error occurred: {e}")))?;
    let mut patched = obj.clone();
    json_patch::patch(&mut patched, &ops).map_err(|e| ApiError::internal(format!("Internal error occurred: {e}")))?;
    if !patched.is_object() || patched["metadata"].is_null() {
        return Err(ApiError::internal(format!(
            "Internal error occurred: the patch of webhook {:?} removed the object's metadata",
            hook.name()
        )));
    }
    let changed = patched != *obj;
    *obj = patched;
    Ok(changed)
}

/// The validating phase (kube-apiserver calls these in parallel; order does not matter
/// because they cannot change the object, so kubesim calls them one by one).
async fn validate(
    api: &Api,
    attrs: &Attributes<'_>,
    obj: &Value,
    old: Option<&Value>,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    for hook in matching::matching(api, "validatingwebhookconfigurations", &match_request(attrs), obj, old) {
        let Some(verdict) = call(api, attrs, &hook, obj, old, false).await? else {
            continue;
        };
        warnings.extend(verdict.warnings);
        if !verdict.allowed {
            return Err(denied(hook.name(), &verdict.status));
        }
    }
    Ok(())
}

/// One call with the failure policy applied: `Ok(None)` when a failed call is ignored.
async fn call(
    api: &Api,
    attrs: &Attributes<'_>,
    hook: &Hook,
    obj: &Value,
    old: Option<&Value>,
    mutating: bool,
) -> Result<Option<review::Verdict>, ApiError> {
    if attrs.dry_run && !matches!(hook.spec["sideEffects"].as_str(), Some("None" | "NoneOnDryRun")) {
        return Err(ApiError::bad_request(format!(
            "admission webhook {:?} does not support dry run (its sideEffects is {}, not None or NoneOnDryRun)",
            hook.name(),
            hook.spec["sideEffects"]
        )));
    }
    let uid = crate::util::uid();
    let request = review::review(attrs, &uid, obj, old);
    match review::call(api, hook, &request, mutating).await {
        Ok(verdict) => Ok(Some(verdict)),
        Err(reason) if hook.spec["failurePolicy"] == "Ignore" => {
            tracing::warn!(webhook = hook.name(), configuration = %hook.configuration, error = %reason, "failed calling webhook, failing open");
            Ok(None)
        }
        Err(reason) => {
            tracing::warn!(webhook = hook.name(), configuration = %hook.configuration, error = %reason, "failed calling webhook, failing closed");
            Err(ApiError::internal(format!(
                "Internal error occurred: failed calling webhook {:?}: {reason}",
                hook.name()
            )))
        }
    }
}

/// kube-apiserver's `ToStatusErr`: the webhook's status, with a code of at least 400.
fn denied(webhook: &str, status: &Value) -> ApiError {
    let by = format!("admission webhook {webhook:?} denied the request");
    let message = status["message"].as_str().filter(|m| !m.is_empty());
    let reason = status["reason"].as_str().unwrap_or_default();
    let text = match (message, reason) {
        (Some(m), _) => format!("{by}: {m}"),
        (None, r) if !r.is_empty() => format!("{by}: {r}"),
        _ => format!("{by} without explanation"),
    };
    let code = status["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| *c >= 400);
    let code = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_REQUEST);
    let mut err = ApiError::new(code, static_reason(reason), text);
    if status["details"].is_object() {
        err.details = Some(status["details"].clone());
    }
    err
}

/// `ApiError::reason` is a `&'static str`: the webhook's reason if it is one of the
/// `metav1.StatusReason` values, otherwise empty (`StatusReasonUnknown`).
fn static_reason(reason: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "Unauthorized",
        "Forbidden",
        "NotFound",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "Invalid",
        "ServerTimeout",
        "StoreReadError",
        "Timeout",
        "TooManyRequests",
        "BadRequest",
        "MethodNotAllowed",
        "NotAcceptable",
        "RequestEntityTooLarge",
        "UnsupportedMediaType",
        "InternalError",
        "Expired",
        "ServiceUnavailable",
    ];
    KNOWN.iter().copied().find(|k| *k == reason).unwrap_or("")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn denials_read_like_kube_apiserver() {
        let e = denied(
            "deny.example.com",
            &json!({"message": "no thanks", "code": 403, "reason": "Forbidden"}),
        );
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (
                StatusCode::FORBIDDEN,
                "Forbidden",
                "admission webhook \"deny.example.com\" denied the request: no thanks"
            )
        );
        let e = denied("d", &Value::Null);
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                StatusCode::BAD_REQUEST,
                "admission webhook \"d\" denied the request without explanation"
            )
        );
        let e = denied("d", &json!({"code": 200, "reason": "Whatever"}));
        assert_eq!(
            (e.code, e.reason, e.message.as_str()),
            (
                StatusCode::BAD_REQUEST,
                "",
                "admission webhook \"d\" denied the request: Whatever"
            )
        );
    }
}
