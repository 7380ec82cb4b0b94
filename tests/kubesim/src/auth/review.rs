//! The review resources: TokenReview and SelfSubjectReview (`authentication.k8s.io/v1`),
//! SubjectAccessReview, LocalSubjectAccessReview, SelfSubjectAccessReview and
//! SelfSubjectRulesReview (`authorization.k8s.io/v1`). Each answers the posted object
//! with its `status` filled in, as kube-apiserver does; nothing is stored.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{decide, rbac, Attributes};
use crate::api::{Api, User};
use crate::resources::ResourceType;
use crate::server::API_AUDIENCE;
use crate::status::ApiError;

/// Answers a review resource posted by `user` (to namespace `ns` for the local one).
pub fn review(api: &Api, user: &User, rt: &ResourceType, ns: &str, body: Value) -> Result<Value, ApiError> {
    let mut answer = body;
    if let Some(kind) = answer["kind"].as_str().filter(|k| *k != rt.kind) {
        return Err(ApiError::bad_request(format!(
            "the body is a {kind}, but the URL is for {}",
            rt.plural
        )));
    }
    answer["kind"] = json!(rt.kind);
    answer["apiVersion"] = json!(rt.api_version());
    if !answer["metadata"].is_object() {
        answer["metadata"] = json!({});
    }
    answer["metadata"]["creationTimestamp"] = Value::Null;
    let status = match rt.plural.as_str() {
        "tokenreviews" => token_review(api, &answer["spec"]),
        "selfsubjectreviews" => json!({"userInfo": user_info(user)}),
        "subjectaccessreviews" => {
            let subject = subject_of(&answer["spec"]);
            if subject.name.is_empty() && subject.groups.is_empty() {
                return Err(invalid(
                    rt,
                    "spec.user: Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            access(api, &subject, &attributes_of(rt, &answer["spec"])?)
        }
        "localsubjectaccessreviews" => {
            let subject = subject_of(&answer["spec"]);
            if subject.name.is_empty() && subject.groups.is_empty() {
                return Err(invalid(
                    rt,
                    "spec.user: Invalid value: \"\": at least one of user or group must be specified",
                ));
            }
            if answer["spec"]["nonResourceAttributes"].is_object() {
                return Err(invalid(
                    rt,
                    "spec.nonResourceAttributes: Invalid value: \"null\": disallowed on this kind of request",
                ));
            }
            let given = answer["spec"]["resourceAttributes"]["namespace"]
                .as_str()
                .unwrap_or_default();
            if given != ns {
                return Err(ApiError::bad_request(format!(
                    "spec.resourceAttributes.namespace must match namespace: {ns}"
                )));
            }
            answer["metadata"]["namespace"] = json!(ns);
            access(api, &subject, &attributes_of(rt, &answer["spec"])?)
        }
        "selfsubjectaccessreviews" => access(api, user, &attributes_of(rt, &answer["spec"])?),
        "selfsubjectrulesreviews" => {
            let namespace = answer["spec"]["namespace"].as_str().unwrap_or_default().to_owned();
            rules_review(api, user, &namespace)
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{} is not a review kubesim answers",
                rt.plural
            )))
        }
    };
    answer["status"] = status;
    Ok(answer)
}

fn invalid(rt: &ResourceType, message: &str) -> ApiError {
    ApiError::invalid(&format!("{}.{}", rt.kind, rt.group), "", message)
}

/// `status.user` / `status.userInfo`.
fn user_info(user: &User) -> Value {
    let mut info = json!({"username": user.name, "groups": user.groups});
    if !user.uid.is_empty() {
        info["uid"] = json!(user.uid);
    }
    if !user.extra.is_empty() {
        info["extra"] = json!(user.extra);
    }
    info
}

fn token_review(api: &Api, spec: &Value) -> Value {
    let token = spec["token"].as_str().unwrap_or_default();
    let mut wanted: Vec<String> = strings(&spec["audiences"]);
    if wanted.is_empty() {
        wanted.push(API_AUDIENCE.to_owned());
    }
    match super::authenticate_token(api, token, &wanted) {
        Ok((user, audiences)) => json!({"authenticated": true, "user": user_info(&user), "audiences": audiences}),
        Err(e) => json!({"authenticated": false, "user": {}, "error": e.to_string()}),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// The subject of a (Local)SubjectAccessReview, taken as given: no groups are added.
fn subject_of(spec: &Value) -> User {
    let extra: BTreeMap<String, Vec<String>> = spec["extra"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
        .unwrap_or_default();
    User {
        name: spec["user"].as_str().unwrap_or_default().to_owned(),
        groups: strings(&spec["groups"]),
        uid: spec["uid"].as_str().unwrap_or_default().to_owned(),
        extra,
    }
}

/// The request a review asks about (exactly one of the two attribute sets).
fn attributes_of(rt: &ResourceType, spec: &Value) -> Result<Attributes, ApiError> {
    let res = &spec["resourceAttributes"];
    let non = &spec["nonResourceAttributes"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    match (res.is_object(), non.is_object()) {
        (true, false) => Ok(Attributes {
            verb: s(&res["verb"]),
            group: s(&res["group"]),
            resource: s(&res["resource"]),
            subresource: s(&res["subresource"]),
            namespace: s(&res["namespace"]),
            name: s(&res["name"]),
            path: None,
        }),
        (false, true) => Ok(Attributes { verb: s(&non["verb"]), path: Some(s(&non["path"])), ..Attributes::default() }),
        _ => Err(invalid(
            rt,
            "spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn access(api: &Api, user: &User, attrs: &Attributes) -> Value {
    let decision = decide(api, user, attrs);
    let mut status = json!({"allowed": decision.allowed});
    if !decision.reason.is_empty() {
        status["reason"] = json!(decision.reason);
    }
    status
}

/// What `user` may do in `namespace` (for `kubectl auth can-i --list`).
fn rules_review(api: &Api, user: &User, namespace: &str) -> Value {
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    let mut errors = Vec::new();
    for grant in rbac::grants(api, user, namespace) {
        let rules = match grant.rules {
            Ok(rules) => rules,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for r in rules {
            if r["resources"].as_array().is_some_and(|a| !a.is_empty()) {
                let mut rule = json!({"verbs": r["verbs"], "apiGroups": r["apiGroups"], "resources": r["resources"]});
                if r["resourceNames"].as_array().is_some_and(|a| !a.is_empty()) {
                    rule["resourceNames"] = r["resourceNames"].clone();
                }
                resource_rules.push(rule);
            }
            if r["nonResourceURLs"].as_array().is_some_and(|a| !a.is_empty()) {
                non_resource_rules.push(json!({"verbs": r["verbs"], "nonResourceURLs": r["nonResourceURLs"]}));
            }
        }
    }
    let mut status = json!({"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": !errors.is_empty()});
    if !errors.is_empty() {
        status["evaluationError"] = json!(errors.join(", "));
    }
    status
}
