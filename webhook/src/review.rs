//! AdmissionReview (`admission.k8s.io/v1`) in, AdmissionReview out.
//!
//! Client mistakes (not JSON, not an AdmissionReview, another version, a review of
//! something other than a Pod) are [`BadReview`]s that the server answers with HTTP 400
//! and the message. Our own failures never deny a pod: the review is answered
//! `allowed: true` without a patch and with a warning, because a denial is not covered by
//! `failurePolicy: Ignore` and would stall rollouts.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::inject::{mutate_json, Decision, InjectConfig, MutateError, SkipReason};
use crate::metrics::Outcome;
use crate::patch::Op;

/// A request the webhook cannot answer: the message says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    /// Nothing was sent.
    #[error("the request body is empty; send an AdmissionReview (admission.k8s.io/v1) as JSON")]
    Empty,
    /// The body is not JSON at all.
    #[error("the request body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// JSON, but not shaped like an AdmissionReview.
    #[error("the request body is not an AdmissionReview: {0}")]
    Shape(#[source] serde_json::Error),
    /// Another apiVersion or kind.
    #[error("expected apiVersion admission.k8s.io/v1, kind AdmissionReview; got apiVersion {api_version:?}, kind {kind:?} (set admissionReviewVersions: [v1])")]
    Version {
        /// What was sent.
        api_version: String,
        /// What was sent.
        kind: String,
    },
    /// `request` is missing.
    #[error("the AdmissionReview has no request")]
    NoRequest,
    /// `request.uid` is empty.
    #[error("request.uid is empty; the response must echo it")]
    NoUid,
    /// A review of something other than a Pod.
    #[error("this webhook mutates Pods only, got a review of {0}; the MutatingWebhookConfiguration's rules should select pods")]
    WrongKind(String),
    /// A Pod CREATE without the pod.
    #[error("request.object is missing for a CREATE of a Pod")]
    NoObject,
}

/// The answer to a review, with what the metrics need.
#[derive(Debug)]
pub struct Answer {
    /// The AdmissionReview response, as JSON.
    pub body: Vec<u8>,
    /// What happened.
    pub outcome: Outcome,
    /// Why the pod was skipped, if it was.
    pub skip: Option<SkipReason>,
    /// Our own failure, if any (the pod was admitted unchanged); logged by the caller.
    pub error: Option<MutateError>,
    /// The request's uid, for logs.
    pub uid: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    request: Option<RequestIn>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn {
    uid: String,
    kind: Gvk,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default)]
    sub_resource: Option<String>,
    /// The pod as JSON text: read by the injection rules without a tree of the whole pod.
    #[serde(default)]
    object: Option<Box<RawValue>>,
}

/// Just where a pod names its namespace.
#[derive(Deserialize)]
struct NamespaceOf {
    #[serde(default)]
    metadata: Option<NamespaceIn>,
}

#[derive(Deserialize)]
struct NamespaceIn {
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    version: String,
    kind: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

/// Answers one AdmissionReview body; `own_ca_bundle` as for [`crate::inject::mutate`].
pub fn answer(body: &[u8], config: &InjectConfig, own_ca_bundle: Option<&str>) -> Result<Answer, BadReview> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(BadReview::Empty);
    }
    let review: ReviewIn = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => BadReview::Shape(e),
        _ => BadReview::Json(e),
    })?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(BadReview::Version {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let request = review.request.ok_or(BadReview::NoRequest)?;
    if request.uid.is_empty() {
        return Err(BadReview::NoUid);
    }
    let gvk = &request.kind;
    if (gvk.group.as_str(), gvk.version.as_str(), gvk.kind.as_str()) != ("", "v1", "Pod") {
        let group = if gvk.group.is_empty() {
            String::new()
        } else {
            format!("{}/", gvk.group)
        };
        return Err(BadReview::WrongKind(format!("{group}{} {}", gvk.version, gvk.kind)));
    }
    if request.operation != "CREATE" || request.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return Ok(respond(request.uid, Outcome::ignored, None, Vec::new(), None, None));
    }
    let pod = request
        .object
        .as_deref()
        .map(RawValue::get)
        .filter(|json| *json != "null")
        .ok_or(BadReview::NoObject)?;
    let from_pod = || {
        serde_json::from_str::<NamespaceOf>(pod)
            .ok()
            .and_then(|p| p.metadata?.namespace)
    };
    let namespace = match request.namespace.filter(|n| !n.is_empty()).or_else(from_pod) {
        Some(namespace) if !namespace.is_empty() => namespace,
        _ => "default".to_owned(),
    };
    Ok(match mutate_json(pod, &namespace, config, own_ca_bundle) {
        Ok(Decision::Inject {
            patch,
            warnings,
            replaced,
        }) => {
            let outcome = if replaced.is_some() {
                Outcome::replaced
            } else {
                Outcome::injected
            };
            respond(request.uid, outcome, None, warnings, Some(&patch), None)
        }
        Ok(Decision::Skip { reason, detail }) => {
            let warning = format!("shunt sidecar not injected: {detail}");
            respond(request.uid, Outcome::skipped, Some(reason), vec![warning], None, None)
        }
        Err(error) => {
            let warning = format!("shunt sidecar not injected because of an internal error of shunt-webhook: {error}");
            respond(request.uid, Outcome::error, None, vec![warning], None, Some(error))
        }
    })
}

fn respond(
    uid: String,
    outcome: Outcome,
    skip: Option<SkipReason>,
    warnings: Vec<String>,
    patch: Option<&[Op]>,
    error: Option<MutateError>,
) -> Answer {
    // Serialising our own plain structs cannot fail; an empty patch is sent as none.
    let patch = patch
        .filter(|ops| !ops.is_empty())
        .and_then(|ops| serde_json::to_vec(ops).ok())
        .map(|json| base64::engine::general_purpose::STANDARD.encode(json));
    let out = ReviewOut {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: ResponseOut {
            uid: &uid,
            allowed: true,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: warnings.into_iter().map(sanitize).collect(),
        },
    };
    let body = serde_json::to_vec(&out).unwrap_or_default();
    Answer {
        body,
        outcome,
        skip,
        error,
        uid,
    }
}

/// Warnings must be printable single lines; kubectl shows them to the pod's author.
fn sanitize(warning: String) -> String {
    if warning.chars().any(char::is_control) {
        warning.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
    } else {
        warning
    }
}
