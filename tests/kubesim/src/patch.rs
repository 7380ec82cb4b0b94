//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386), strategic merge
//! patch (the subset built-in types use: lists merged by their merge key, `$patch`
//! directives, primitive-list merging of `finalizers`) and server-side apply (treated
//! as a merge patch; the field manager is recorded).

use serde_json::{Map, Value};

use crate::status::ApiError;

/// The patch flavours of the `Content-Type` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/apply-patch+yaml` (JSON accepted)
    Apply,
}

impl PatchType {
    /// From a Content-Type value.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(PatchType::Apply),
            _ => None,
        }
    }
}

/// Applies `patch` of type `kind` to `doc`.
pub fn apply(doc: &mut Value, kind: PatchType, patch: &[u8]) -> Result<(), ApiError> {
    let body: Value = serde_json::from_slice(patch).map_err(|e| {
        let hint = if kind == PatchType::Apply {
            " (kubesim accepts server-side apply bodies as JSON)"
        } else {
            ""
        };
        ApiError::bad_request(format!("the patch body is not valid JSON: {e}{hint}"))
    })?;
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(doc, &ops).map_err(|e| ApiError::invalid("", "", format!("the JSON patch failed: {e}")))
        }
        PatchType::Merge | PatchType::Apply => {
            json_patch::merge(doc, &body);
            Ok(())
        }
        PatchType::Strategic => {
            strategic(doc, &body, "");
            Ok(())
        }
    }
}

/// The merge key of list field `field`, judging by its items.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let has = |k: &str| items.iter().any(|i| i.get(k).is_some());
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "webhooks" => "name",
        "ports" if has("containerPort") => "containerPort",
        "ports" => "port",
        "volumeMounts" => "mountPath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "hostAliases" => "ip",
        _ => return None,
    })
}

fn strategic(doc: &mut Value, patch: &Value, field: &str) {
    let Value::Object(patch) = patch else {
        *doc = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = patch.clone();
        p.remove("$patch");
        *doc = Value::Object(p);
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Value::Object(target) = doc else { return };
    for (key, value) in patch {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(list) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Value::Array(remove)) = (target.get_mut(list), value) {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        match value {
            Value::Null => {
                target.remove(key);
            }
            Value::Array(items) => merge_list(target.entry(key.clone()).or_insert(Value::Null), items, key),
            Value::Object(_) => strategic(target.entry(key.clone()).or_insert(Value::Null), value, key),
            other => {
                target.insert(key.clone(), other.clone());
            }
        }
    }
    let _ = field;
}

fn merge_list(doc: &mut Value, items: &[Value], field: &str) {
    if field == "finalizers" {
        // A primitive list with merge semantics: union, order kept.
        let mut merged: Vec<Value> = doc.as_array().cloned().unwrap_or_default();
        for item in items {
            if !merged.contains(item) {
                merged.push(item.clone());
            }
        }
        *doc = Value::Array(merged);
        return;
    }
    let Some(key) = merge_key(field, items) else {
        *doc = Value::Array(items.to_vec());
        return;
    };
    let mut merged: Vec<Value> = doc.as_array().cloned().unwrap_or_default();
    for item in items {
        let id = item.get(key).cloned();
        let directive = item.get("$patch").and_then(Value::as_str);
        let pos = merged.iter().position(|m| id.is_some() && m.get(key) == id.as_ref());
        match (directive, pos) {
            (Some("delete"), Some(i)) => {
                merged.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic(&mut merged[i], item, field),
            (_, None) => {
                let mut fresh = Value::Null;
                strategic(&mut fresh, item, field);
                merged.push(fresh);
            }
        }
    }
    *doc = Value::Array(merged);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut pod =
            json!({"spec": {"containers": [{"name": "app", "image": "a:1"}, {"name": "side", "image": "s:1"}]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "app"}], "containers": [{"name": "app", "image": "a:2"}, {"name": "side", "$patch": "delete"}]}});
        apply(&mut pod, PatchType::Strategic, patch.to_string().as_bytes()).unwrap();
        assert_eq!(pod, json!({"spec": {"containers": [{"name": "app", "image": "a:2"}]}}));
    }

    #[test]
    fn merge_and_json_patches() {
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        apply(
            &mut obj,
            PatchType::Merge,
            br#"{"metadata": {"labels": {"a": null, "c": "3"}}}"#,
        )
        .unwrap();
        assert_eq!(obj["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        apply(
            &mut obj,
            PatchType::Json,
            br#"[{"op": "add", "path": "/metadata/labels/d~1e", "value": "4"}]"#,
        )
        .unwrap();
        assert_eq!(obj["metadata"]["labels"]["d/e"], "4");
        let err = apply(&mut obj, PatchType::Json, br#"[{"op": "remove", "path": "/nope"}]"#).unwrap_err();
        assert_eq!(err.code.as_u16(), 422);
    }
}
