//! The patch builder's working copy of a pod: only what the injection rules touch.

use serde_json::Value;

/// The parts of `pod` the rules read or change, for the patch builder's working copy:
/// labels and annotations, and per container only its name, ports, probes and lifecycle
/// hooks; per init container and volume only its name. Presence, `null`s and array lengths
/// are kept exactly, so every operation recorded against the skeleton applies to the
/// whole pod (the tests apply every patch to the full pod). Copying the whole pod instead
/// was a quarter of the time of a review.
pub(super) fn skeleton(pod: &Value) -> Value {
    fn pick(from: &Value, keys: &[&str]) -> Value {
        match from {
            Value::Object(map) => Value::Object(
                keys.iter()
                    .filter_map(|k| map.get(*k).map(|v| ((*k).to_owned(), v.clone())))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
    fn each(list: Option<&Value>, keys: &[&str]) -> Option<Value> {
        list.map(|list| match list {
            Value::Array(items) => Value::Array(items.iter().map(|item| pick(item, keys)).collect()),
            other => other.clone(),
        })
    }
    let container_keys = [
        "name",
        "ports",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "lifecycle",
    ];
    let mut out = serde_json::Map::new();
    if let Some(metadata) = pod.get("metadata") {
        out.insert("metadata".into(), pick(metadata, &["labels", "annotations"]));
    }
    match pod.get("spec") {
        Some(Value::Object(spec)) => {
            let mut skeleton = serde_json::Map::new();
            let lists = [
                ("containers", &container_keys[..]),
                ("initContainers", &["name"][..]),
                ("volumes", &["name"][..]),
            ];
            for (list, keys) in lists {
                if let Some(value) = each(spec.get(list), keys) {
                    skeleton.insert(list.into(), value);
                }
            }
            out.insert("spec".into(), Value::Object(skeleton));
        }
        Some(other) => {
            out.insert("spec".into(), other.clone());
        }
        None => {}
    }
    Value::Object(out)
}
