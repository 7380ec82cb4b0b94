//! Which webhooks a request goes to, by kube-apiserver's rules: the configurations
//! sorted by name, each webhook's `rules` (operations, apiGroups, apiVersions,
//! resources with subresources, scope), `namespaceSelector` and `objectSelector`.
//! `matchPolicy` is treated as `Equivalent` (kubesim serves one copy of every object, so
//! there is no other version to convert to); `matchConditions` (CEL) are not evaluated.

use serde_json::Value;

use crate::api::{Api, Operation};
use crate::resources::ResourceType;
use crate::selectors::LabelSelector;

/// The request as webhook matching sees it.
pub struct Request<'a> {
    /// The operation.
    pub op: Operation,
    /// The resource type.
    pub rt: &'a ResourceType,
    /// The subresource ("" for the object itself).
    pub subresource: &'a str,
    /// The namespace ("" for cluster-scoped objects).
    pub namespace: &'a str,
}

/// One webhook with the configuration it came from.
#[derive(Clone, Debug)]
pub struct Hook {
    /// Name of the Mutating/ValidatingWebhookConfiguration.
    pub configuration: String,
    /// The webhook entry (`name`, `clientConfig`, `rules`, …).
    pub spec: Value,
}

impl Hook {
    /// The webhook's name.
    pub fn name(&self) -> &str {
        self.spec["name"].as_str().unwrap_or_default()
    }
}

/// Types whose writes never go to webhooks, so that a broken webhook cannot lock the
/// cluster out of fixing it (kube-apiserver exempts the same).
pub fn exempt(rt: &ResourceType) -> bool {
    rt.group == "admissionregistration.k8s.io" || rt.create_only
}

/// The webhooks of every `plural` configuration (mutating or validating) that match
/// `req` for `obj`/`old`, in the order kube-apiserver calls them.
pub fn matching(api: &Api, plural: &str, req: &Request<'_>, obj: &Value, old: Option<&Value>) -> Vec<Hook> {
    let mut configs = api
        .store
        .list(&("admissionregistration.k8s.io".to_owned(), plural.to_owned()), None)
        .0;
    configs.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    let mut hooks = Vec::new();
    for config in &configs {
        let configuration = config["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        for spec in config["webhooks"].as_array().into_iter().flatten() {
            if rules_match(spec, req) && namespace_matches(api, spec, req, obj) && object_matches(spec, obj, old) {
                hooks.push(Hook {
                    configuration: configuration.clone(),
                    spec: spec.clone(),
                });
            }
        }
    }
    hooks
}

fn rules_match(spec: &Value, req: &Request<'_>) -> bool {
    spec["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|rule| rule_matches(rule, req))
}

fn listed(list: &Value, value: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|v| v == "*" || v == value)
}

/// One `RuleWithOperations`, as kube-apiserver's `rules.Matcher`.
pub fn rule_matches(rule: &Value, req: &Request<'_>) -> bool {
    let resource_ok = rule["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|r| {
            let (res, sub) = r.split_once('/').unwrap_or((r, ""));
            (res == "*" || res == req.rt.plural) && (sub == "*" || sub == req.subresource)
        });
    let is_namespace = req.rt.group.is_empty() && req.rt.plural == "namespaces";
    let scope_ok = match rule["scope"].as_str() {
        Some("Namespaced") => !is_namespace && !req.namespace.is_empty(),
        Some("Cluster") => is_namespace || req.namespace.is_empty(),
        _ => true,
    };
    listed(&rule["operations"], req.op.as_str())
        && listed(&rule["apiGroups"], &req.rt.group)
        && listed(&rule["apiVersions"], &req.rt.version)
        && resource_ok
        && scope_ok
}

/// `namespaceSelector`: the labels of the object's namespace; a Namespace being created
/// or updated is matched by its own labels; other cluster-scoped objects always match.
fn namespace_matches(api: &Api, spec: &Value, req: &Request<'_>, obj: &Value) -> bool {
    let selector = LabelSelector::from_object(&spec["namespaceSelector"]);
    if selector.is_empty() {
        return true;
    }
    let is_namespace = req.rt.group.is_empty() && req.rt.plural == "namespaces";
    if is_namespace && req.subresource.is_empty() {
        return selector.matches(&obj["metadata"]["labels"]);
    }
    if req.namespace.is_empty() {
        return true;
    }
    match api
        .store
        .get(&(String::new(), "namespaces".to_owned()), "", req.namespace)
    {
        Some(ns) => selector.matches(&ns["metadata"]["labels"]),
        None => selector.matches(&Value::Null),
    }
}

/// `objectSelector`: the new or the old object's labels.
fn object_matches(spec: &Value, obj: &Value, old: Option<&Value>) -> bool {
    let selector = LabelSelector::from_object(&spec["objectSelector"]);
    selector.is_empty()
        || selector.matches(&obj["metadata"]["labels"])
        || old.is_some_and(|o| selector.matches(&o["metadata"]["labels"]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> ResourceType {
        crate::resources::builtins()
            .into_iter()
            .find(|t| t.plural == "pods")
            .unwrap()
    }

    #[test]
    fn rules_match_like_kube_apiserver() {
        let rt = pods();
        let create = Request {
            op: Operation::Create,
            rt: &rt,
            subresource: "",
            namespace: "app",
        };
        let status = Request {
            op: Operation::Update,
            rt: &rt,
            subresource: "status",
            namespace: "app",
        };
        let rule = |ops: &[&str], res: &[&str], scope: &str| json!({"operations": ops, "apiGroups": [""], "apiVersions": ["v1"], "resources": res, "scope": scope});
        assert!(rule_matches(&rule(&["CREATE"], &["pods"], "*"), &create));
        assert!(!rule_matches(&rule(&["UPDATE"], &["pods"], "*"), &create));
        assert!(rule_matches(&rule(&["*"], &["*"], "Namespaced"), &create));
        assert!(!rule_matches(&rule(&["*"], &["*"], "Cluster"), &create));
        assert!(
            !rule_matches(&rule(&["*"], &["pods", "*"], "*"), &status),
            "`pods` and `*` do not cover subresources"
        );
        assert!(rule_matches(&rule(&["*"], &["pods/status"], "*"), &status));
        assert!(rule_matches(&rule(&["*"], &["*/*"], "*"), &status));
        let other_group = json!({"operations": ["*"], "apiGroups": ["apps"], "apiVersions": ["*"], "resources": ["*"]});
        assert!(!rule_matches(&other_group, &create));
    }

    #[test]
    fn object_selector_matches_new_or_old_labels() {
        let spec = json!({"objectSelector": {"matchLabels": {"inject": "yes"}}});
        let yes = json!({"metadata": {"labels": {"inject": "yes"}}});
        let no = json!({"metadata": {}});
        assert!(object_matches(&spec, &yes, None));
        assert!(!object_matches(&spec, &no, None));
        assert!(object_matches(&spec, &no, Some(&yes)));
        assert!(object_matches(&json!({}), &no, None));
    }
}
