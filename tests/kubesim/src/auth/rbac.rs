//! RBAC evaluated from the stored Roles, ClusterRoles, RoleBindings and
//! ClusterRoleBindings, rule for rule as kube-apiserver's RBAC authorizer
//! (`plugin/pkg/auth/authorizer/rbac`): ClusterRoleBindings first, then the
//! RoleBindings of the request's namespace; verbs (custom ones too) and `*`, API groups,
//! `resource/subresource` and `*/subresource`, resourceNames, nonResourceURLs with a
//! trailing `*`; subjects User, Group and ServiceAccount. Aggregated ClusterRoles are
//! not expanded (their stored `rules` are used as they are).

use serde_json::Value;

use super::Attributes;
use crate::api::{Api, User};

const GROUP: &str = "rbac.authorization.k8s.io";

/// The outcome of an RBAC check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether some binding allows the request.
    pub allowed: bool,
    /// `RBAC: allowed by ClusterRoleBinding "…" of ClusterRole "…" to User "…"` when
    /// allowed; otherwise the errors met (a binding to a missing role), if any.
    pub reason: String,
}

/// A rule's string list (`verbs`, `apiGroups`, …); absent means empty.
fn strings<'a>(rule: &'a Value, field: &str) -> impl Iterator<Item = &'a str> {
    rule[field].as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// Whether one PolicyRule allows `a`.
pub fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let verb = strings(rule, "verbs").any(|v| v == "*" || v == a.verb);
    if !verb {
        return false;
    }
    if let Some(path) = &a.path {
        return strings(rule, "nonResourceURLs")
            .any(|u| u == "*" || u == path || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*'))));
    }
    let combined = if a.subresource.is_empty() {
        a.resource.clone()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let group = strings(rule, "apiGroups").any(|g| g == "*" || g == a.group);
    let resource = strings(rule, "resources").any(|r| {
        r == "*" || r == combined || (!a.subresource.is_empty() && r.strip_prefix("*/") == Some(a.subresource.as_str()))
    });
    let mut names = strings(rule, "resourceNames").peekable();
    let name = names.peek().is_none() || names.any(|n| n == a.name);
    group && resource && name
}

/// Whether `subject` names `user`; `binding_ns` defaults a ServiceAccount's namespace.
fn applies(subject: &Value, user: &User, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

/// How kube-apiserver names a subject in a reason.
fn describe_subject(subject: &Value, binding_ns: &str) -> String {
    let kind = subject["kind"].as_str().unwrap_or_default();
    let name = subject["name"].as_str().unwrap_or_default();
    if kind == "ServiceAccount" {
        let ns = subject["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or(binding_ns);
        return format!("{kind} {:?}", format!("{name}/{ns}"));
    }
    format!("{kind} {name:?}")
}

/// The rules of the role a binding refers to, or kube-apiserver's error for a missing one.
fn role_rules(api: &Api, role_ref: &Value, binding_ns: &str) -> Result<Vec<Value>, String> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let (plural, ns, what) = match role_ref["kind"].as_str() {
        Some("Role") if !binding_ns.is_empty() => ("roles", binding_ns, "role"),
        Some("ClusterRole") => ("clusterroles", "", "clusterrole"),
        other => {
            return Err(format!(
                "unsupported role reference kind: {:?}",
                other.unwrap_or_default()
            ))
        }
    };
    let role = api
        .store
        .get(&(GROUP.to_owned(), plural.to_owned()), ns, name)
        .ok_or_else(|| format!("{what}.{GROUP} {name:?} not found"))?;
    Ok(role["rules"].as_array().cloned().unwrap_or_default())
}

/// One binding that applies to a user, with the rules it grants.
pub struct Grant {
    /// `ClusterRoleBinding "x" of ClusterRole "y" to User "z"` (kube-apiserver's wording).
    pub source: String,
    /// The granted rules, or why they could not be read.
    pub rules: Result<Vec<Value>, String>,
}

/// Every binding that applies to `user` for requests in `namespace` ("" for cluster
/// scope: ClusterRoleBindings only), in kube-apiserver's order.
pub fn grants(api: &Api, user: &User, namespace: &str) -> Vec<Grant> {
    let mut out = Vec::new();
    let (crbs, _) = api
        .store
        .list(&(GROUP.to_owned(), "clusterrolebindings".to_owned()), None);
    for b in &crbs {
        let Some(subject) = b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| applies(s, user, ""))
        else {
            continue;
        };
        let source = format!(
            "ClusterRoleBinding {:?} of {} {:?} to {}",
            b["metadata"]["name"].as_str().unwrap_or_default(),
            b["roleRef"]["kind"].as_str().unwrap_or_default(),
            b["roleRef"]["name"].as_str().unwrap_or_default(),
            describe_subject(subject, "")
        );
        let rules = if b["roleRef"]["kind"] == "ClusterRole" {
            role_rules(api, &b["roleRef"], "")
        } else {
            Err("ClusterRoleBindings may only refer to ClusterRoles".to_owned())
        };
        out.push(Grant { source, rules });
    }
    if namespace.is_empty() {
        return out;
    }
    let (rbs, _) = api
        .store
        .list(&(GROUP.to_owned(), "rolebindings".to_owned()), Some(namespace));
    for b in &rbs {
        let Some(subject) = b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| applies(s, user, namespace))
        else {
            continue;
        };
        let source = format!(
            "RoleBinding {:?} of {} {:?} to {}",
            format!("{}/{namespace}", b["metadata"]["name"].as_str().unwrap_or_default()),
            b["roleRef"]["kind"].as_str().unwrap_or_default(),
            b["roleRef"]["name"].as_str().unwrap_or_default(),
            describe_subject(subject, namespace)
        );
        out.push(Grant {
            source,
            rules: role_rules(api, &b["roleRef"], namespace),
        });
    }
    out
}

/// Evaluates `a` for `user` from the stored RBAC objects.
pub fn evaluate(api: &Api, user: &User, a: &Attributes) -> Decision {
    let mut errors = Vec::new();
    for grant in grants(api, user, &a.namespace) {
        match grant.rules {
            Ok(rules) if rules.iter().any(|r| rule_allows(r, a)) => {
                return Decision {
                    allowed: true,
                    reason: format!("RBAC: allowed by {}", grant.source),
                };
            }
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    let reason = match errors.len() {
        0 => String::new(),
        1 => format!("RBAC: {}", errors[0]),
        _ => format!("RBAC: [{}]", errors.join(", ")),
    };
    Decision { allowed: false, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn res(verb: &str, group: &str, resource: &str, sub: &str, name: &str) -> Attributes {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            ..Attributes::default()
        }
    }

    #[test]
    fn rules_match_like_kube_apiserver() {
        let steal = json!({"apiGroups": ["api.shunt.dev"], "resources": ["targets"], "verbs": ["steal"], "resourceNames": ["deployment.api"]});
        assert!(rule_allows(
            &steal,
            &res("steal", "api.shunt.dev", "targets", "", "deployment.api")
        ));
        assert!(!rule_allows(
            &steal,
            &res("steal", "api.shunt.dev", "targets", "", "deployment.web")
        ));
        assert!(
            !rule_allows(&steal, &res("steal", "api.shunt.dev", "targets", "", "")),
            "resourceNames need a name"
        );
        assert!(!rule_allows(
            &steal,
            &res("get", "api.shunt.dev", "targets", "", "deployment.api")
        ));
        assert!(!rule_allows(&steal, &res("steal", "", "targets", "", "deployment.api")));

        let pods = json!({"apiGroups": [""], "resources": ["pods", "*/status"], "verbs": ["get"]});
        assert!(rule_allows(&pods, &res("get", "", "pods", "", "p")));
        assert!(
            !rule_allows(&pods, &res("get", "", "pods", "log", "p")),
            "a subresource is its own resource"
        );
        assert!(rule_allows(&pods, &res("get", "", "services", "status", "s")));

        let all = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_allows(
            &all,
            &res("escalate", "rbac.authorization.k8s.io", "roles", "", "")
        ));

        let discovery = json!({"nonResourceURLs": ["/apis/*", "/version"], "verbs": ["get"]});
        let path = |p: &str| Attributes {
            verb: "get".into(),
            path: Some(p.into()),
            ..Attributes::default()
        };
        assert!(rule_allows(&discovery, &path("/apis/apps/v1")));
        assert!(rule_allows(&discovery, &path("/version")));
        assert!(!rule_allows(&discovery, &path("/version/x")));
        assert!(
            !rule_allows(&all, &path("/version")),
            "resource rules never match paths"
        );
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts() {
        let alice = User {
            name: "alice".into(),
            groups: vec!["dev".into()],
            ..User::default()
        };
        let sa = User {
            name: "system:serviceaccount:shop:web".into(),
            ..User::default()
        };
        assert!(applies(&json!({"kind": "User", "name": "alice"}), &alice, ""));
        assert!(applies(&json!({"kind": "Group", "name": "dev"}), &alice, ""));
        assert!(!applies(&json!({"kind": "User", "name": "bob"}), &alice, ""));
        assert!(applies(&json!({"kind": "ServiceAccount", "name": "web"}), &sa, "shop"));
        assert!(!applies(&json!({"kind": "ServiceAccount", "name": "web"}), &sa, ""));
        assert!(applies(
            &json!({"kind": "ServiceAccount", "name": "web", "namespace": "shop"}),
            &sa,
            ""
        ));
        assert_eq!(
            describe_subject(&json!({"kind": "ServiceAccount", "name": "web"}), "shop"),
            r#"ServiceAccount "web/shop""#
        );
    }
}
