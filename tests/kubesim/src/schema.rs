//! Structural-schema handling of custom resources, as kube-apiserver does it for CRDs:
//! unknown fields are pruned (unless `x-kubernetes-preserve-unknown-fields`), then the
//! object is validated for `type`, `required`, `enum`, `items`, numeric and length
//! bounds. CEL rules (`x-kubernetes-validations`) are not evaluated.

use serde_json::Value;

/// Prunes fields the schema does not declare.
pub fn prune(obj: &mut Value, schema: &Value) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        && schema.get("properties").is_none()
    {
        return;
    }
    match obj {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let sub = props.and_then(|p| p.get(&k)).or(additional.filter(|a| a.is_object()));
                match sub {
                    Some(sub) => {
                        if let Some(v) = map.get_mut(&k) {
                            prune(v, sub);
                        }
                    }
                    None if preserve || additional == Some(&Value::Bool(true)) => {}
                    None => {
                        map.remove(&k);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items {
                    prune(item, item_schema);
                }
            }
        }
        _ => {}
    }
}

/// Validates `obj` against `schema`; errors are `path: problem` lines.
pub fn validate(obj: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    if obj.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if let Some(ty) = schema.get("type").and_then(Value::as_str) {
        let ok = match ty {
            "object" => obj.is_object(),
            "array" => obj.is_array(),
            "string" => obj.is_string() || (int_or_string && obj.is_i64()),
            "integer" => obj.is_i64() || obj.is_u64() || (int_or_string && obj.is_string()),
            "number" => obj.is_number(),
            "boolean" => obj.is_boolean(),
            _ => true,
        };
        if !ok {
            errors.push(format!(
                "{path}: Invalid value: {}: {path} in body must be of type {ty}",
                short(obj)
            ));
            return;
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(obj) {
            let allowed: Vec<String> = values.iter().map(short).collect();
            errors.push(format!(
                "{path}: Unsupported value: {}: supported values: {}",
                short(obj),
                allowed.join(", ")
            ));
        }
    }
    if let Some(n) = obj.as_f64() {
        if schema.get("minimum").and_then(Value::as_f64).is_some_and(|m| n < m) {
            errors.push(format!(
                "{path}: Invalid value: {n}: should be greater than or equal to {}",
                schema["minimum"]
            ));
        }
        if schema.get("maximum").and_then(Value::as_f64).is_some_and(|m| n > m) {
            errors.push(format!(
                "{path}: Invalid value: {n}: should be less than or equal to {}",
                schema["maximum"]
            ));
        }
    }
    if let Some(s) = obj.as_str() {
        let len = s.chars().count() as u64;
        if schema.get("minLength").and_then(Value::as_u64).is_some_and(|m| len < m) {
            errors.push(format!(
                "{path}: Invalid value: {}: should be at least {} chars long",
                short(obj),
                schema["minLength"]
            ));
        }
        if schema.get("maxLength").and_then(Value::as_u64).is_some_and(|m| len > m) {
            errors.push(format!(
                "{path}: Too long: may not be longer than {}",
                schema["maxLength"]
            ));
        }
    }
    match obj {
        Value::Object(map) => {
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !map.contains_key(req) {
                    errors.push(format!("{}: Required value", join(path, req)));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, v) in map {
                if let Some(sub) = props
                    .and_then(|p| p.get(k))
                    .or(schema.get("additionalProperties").filter(|a| a.is_object()))
                {
                    validate(v, sub, &join(path, k), errors);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate(item, sub, &format!("{path}[{i}]"), errors);
                }
            }
            if schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| items.len() as u64 > m)
            {
                errors.push(format!(
                    "{path}: Too many: {}: must have at most {} items",
                    items.len(),
                    schema["maxItems"]
                ));
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 60 {
        format!("{}…", &s[..s.char_indices().nth(60).map_or(s.len(), |(i, _)| i)])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prunes_unknown_fields_and_reports_type_errors() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["mode"], "properties": {
            "mode": {"type": "string", "enum": ["a", "b"]}, "n": {"type": "integer", "minimum": 1}}}}});
        let mut obj = json!({"spec": {"mode": "c", "n": 0, "junk": 1}, "other": 2});
        prune(&mut obj, &schema);
        assert_eq!(obj, json!({"spec": {"mode": "c", "n": 0}}));
        let mut errors = Vec::new();
        validate(&obj, &schema, "", &mut errors);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("spec.mode: Unsupported value: \"c\""), "{errors:?}");
    }
}
