//! Label selectors (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`) and field
//! selectors (`metadata.name=x`, `spec.nodeName!=y`), as in kube-apiserver: a field
//! selector may only name the fields kube-apiserver indexes for the type
//! ([`supported_fields`]); any other is refused, not silently matched against nothing.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

/// A selector that cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid selector {0:?}: {1}")]
pub struct SelectorError(String, &'static str);

/// Splits on commas that are not inside parentheses.
fn split_top(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().map(str::trim).filter(|s| !s.is_empty()).collect()
}

impl LabelSelector {
    /// Parses the query-string form.
    pub fn parse(text: &str) -> Result<LabelSelector, SelectorError> {
        let bad = |why| SelectorError(text.to_owned(), why);
        let mut reqs = Vec::new();
        for part in split_top(text) {
            let set = |rest: &str| -> Result<Vec<String>, SelectorError> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| bad("expected (values)"))?;
                Ok(inner
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
                    .collect())
            };
            let req = if let Some((k, v)) = part.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, rest)) = part.split_once(" notin ") {
                Req::NotIn(k.trim().into(), set(rest)?)
            } else if let Some((k, rest)) = part.split_once(" in ") {
                Req::In(k.trim().into(), set(rest)?)
            } else if let Some(k) = part.strip_prefix('!') {
                Req::NotExists(k.trim().into())
            } else if part.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                Req::Exists(part.into())
            } else {
                return Err(bad("unknown operator"));
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// From a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_object(sel: &Value) -> LabelSelector {
        let mut reqs = Vec::new();
        if let Some(labels) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                reqs.push(Req::Eq(k.clone(), v.as_str().unwrap_or_default().to_owned()));
            }
        }
        for expr in sel
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr["key"].as_str().unwrap_or_default().to_owned();
            let values: Vec<String> = expr["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            reqs.push(match expr["operator"].as_str() {
                Some("In") => Req::In(key, values),
                Some("NotIn") => Req::NotIn(key, values),
                Some("Exists") => Req::Exists(key),
                _ => Req::NotExists(key),
            });
        }
        LabelSelector(reqs)
    }

    /// Whether `labels` (an object's `metadata.labels`) satisfy every requirement.
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::Ne(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }

    /// True for the selector that matches everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed field selector.
#[derive(Clone, Debug, Default)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// The fields kube-apiserver lets a field selector name for `group`/`plural` (its
/// `GetAttrs`/`AddFieldLabelConversionFunc`s); `metadata.name` and `metadata.namespace`
/// work for every type, custom resources included.
pub fn supported_fields(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "pods") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "events") | ("events.k8s.io", "events") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "secrets") => &["type"],
        ("", "namespaces") => &["status.phase"],
        ("", "nodes") => &["spec.unschedulable"],
        ("apps", "replicasets") => &["status.replicas"],
        _ => &[],
    }
}

/// The value a field selector compares for `label` (a missing field reads as "", a
/// missing boolean as "false", as kube-apiserver's typed fields do).
fn field_value(obj: &Value, label: &str) -> String {
    let path = match label {
        "source" => "source.component",
        other => other,
    };
    let mut v = obj;
    for seg in path.split('.') {
        v = v.get(seg).unwrap_or(&Value::Null);
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null if matches!(label, "spec.hostNetwork" | "spec.unschedulable") => "false".into(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A field selector naming a field the type does not support.
#[derive(Debug, thiserror::Error)]
pub enum FieldError {
    /// Not `field=value` / `field!=value`.
    #[error(transparent)]
    Syntax(#[from] SelectorError),
    /// A built-in type's unsupported field, in kube-apiserver's words.
    #[error("field label not supported: {0}")]
    Unsupported(String),
    /// A custom resource's unsupported field, in apiextensions-apiserver's words.
    #[error("{0:?} is not a known field selector: only \"metadata.name\", \"metadata.namespace\"")]
    UnsupportedCustom(String),
}

impl FieldSelector {
    /// Parses a selector for objects of `group`/`plural`, refusing fields the type does
    /// not support; `custom` says it is a custom resource (only the error text differs).
    pub fn parse_for(text: &str, group: &str, plural: &str, custom: bool) -> Result<FieldSelector, FieldError> {
        let selector = FieldSelector::parse(text)?;
        let extra = supported_fields(group, plural);
        for (label, _, _) in &selector.0 {
            let known = matches!(label.as_str(), "metadata.name" | "metadata.namespace")
                || (!custom && extra.contains(&label.as_str()));
            if !known {
                return Err(if custom {
                    FieldError::UnsupportedCustom(label.clone())
                } else {
                    FieldError::Unsupported(label.clone())
                });
            }
        }
        Ok(selector)
    }

    /// Parses `path=value,path!=value` (any path: for kubesim's own use; requests go
    /// through [`FieldSelector::parse_for`]).
    pub fn parse(text: &str) -> Result<FieldSelector, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top(text) {
            let (path, eq, value) = if let Some((k, v)) = part.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k, true, v)
            } else {
                return Err(SelectorError(text.to_owned(), "expected field=value or field!=value"));
            };
            reqs.push((path.trim().to_owned(), eq, value.trim().to_owned()));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether `obj` satisfies every requirement.
    pub fn matches(&self, obj: &Value) -> bool {
        self.0
            .iter()
            .all(|(label, eq, want)| (field_value(obj, label) == *want) == *eq)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_follow_kubernetes_semantics() {
        let labels = json!({"app": "api", "tier": "web"});
        for (sel, want) in [
            ("app=api", true),
            ("app==api,tier=web", true),
            ("app!=api", false),
            ("app in (x, api)", true),
            ("app notin (api)", false),
            ("tier", true),
            ("!tier", false),
            ("missing notin (a)", true),
            ("", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&labels), want, "{sel}");
        }
        let obj = json!({"matchLabels": {"app": "api"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]});
        assert!(LabelSelector::from_object(&obj).matches(&labels));
    }

    #[test]
    fn field_selectors_read_dotted_paths() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("metadata.name=p,status.phase=Running")
            .unwrap()
            .matches(&pod));
        assert!(!FieldSelector::parse("spec.nodeName!=n").unwrap().matches(&pod));
        assert!(FieldSelector::parse("spec.missing=").unwrap().matches(&pod));
        assert!(FieldSelector::parse("spec.hostNetwork=false").unwrap().matches(&pod));
        let event = json!({"source": {"component": "kubelet"}});
        assert!(FieldSelector::parse("source=kubelet").unwrap().matches(&event));
    }

    #[test]
    fn field_selectors_name_only_supported_fields() {
        let pods = |text: &str| FieldSelector::parse_for(text, "", "pods", false).map_err(|e| e.to_string());
        assert!(pods("metadata.name=a,metadata.namespace=b,spec.nodeName=n,status.phase!=Failed").is_ok());
        assert_eq!(
            pods("spec.containers=x").unwrap_err(),
            "field label not supported: spec.containers"
        );
        let cms = FieldSelector::parse_for("status.phase=Running", "", "configmaps", false);
        assert_eq!(cms.unwrap_err().to_string(), "field label not supported: status.phase");
        let custom = FieldSelector::parse_for("spec.size=3", "example.com", "widgets", true);
        assert_eq!(
            custom.unwrap_err().to_string(),
            r#""spec.size" is not a known field selector: only "metadata.name", "metadata.namespace""#
        );
        assert!(FieldSelector::parse_for("metadata.name=w", "example.com", "widgets", true).is_ok());
    }
}
