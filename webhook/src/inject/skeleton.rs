//! The patch builder's working copy of a pod: only what the injection rules touch.

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The parts of `pod` the rules read or change, for the patch builder's working copy:
/// labels and annotations, and per container only its name, ports, probes and lifecycle
/// hooks; per init container and volume only its name. Array lengths are kept exactly,
/// so every operation recorded against the skeleton applies to the whole pod (the tests
/// apply every patch to the full pod).
///
/// Made from the typed pod, which is parsed anyway, rather than from a `Value` tree of the
/// whole pod: building, copying and dropping that tree was half the time of a review. A
/// member that is `null` in the pod is absent here; operations that create it (`add`)
/// apply to a `null` member just the same.
///
/// The typed pod cannot tell an absent `metadata` or `spec.containers` from an empty one,
/// and an operation under a parent the pod lacks would not apply; only when the typed
/// pod has them empty is `text` (the pod's JSON) scanned for whether they are there.
pub(super) fn skeleton(pod: &Pod, text: &str) -> serde_json::Result<Value> {
    let presence = std::cell::OnceCell::new();
    let present = || presence.get_or_init(|| serde_json::from_str::<Presence>(text).unwrap_or_default());
    let mut out = Map::new();
    if pod.metadata != ObjectMeta::default() || present().metadata.is_some() {
        let mut metadata = Map::new();
        insert(&mut metadata, "labels", &pod.metadata.labels)?;
        insert(&mut metadata, "annotations", &pod.metadata.annotations)?;
        out.insert("metadata".into(), Value::Object(metadata));
    }
    if let Some(spec) = &pod.spec {
        let mut skeleton = Map::new();
        let has_containers = || present().spec.as_ref().is_some_and(|s| s.containers.is_some());
        if !spec.containers.is_empty() || has_containers() {
            let containers = spec
                .containers
                .iter()
                .map(container)
                .collect::<serde_json::Result<_>>()?;
            skeleton.insert("containers".into(), Value::Array(containers));
        }
        if let Some(init) = &spec.init_containers {
            skeleton.insert("initContainers".into(), names(init.iter().map(|c| &c.name)));
        }
        if let Some(volumes) = &spec.volumes {
            skeleton.insert("volumes".into(), names(volumes.iter().map(|v| &v.name)));
        }
        out.insert("spec".into(), Value::Object(skeleton));
    }
    Ok(Value::Object(out))
}

/// Which of the members the typed pod may make up are really in the text (`null` counts
/// as absent: an `add` replaces it just the same).
#[derive(Default, Deserialize)]
struct Presence {
    #[serde(default)]
    metadata: Option<IgnoredAny>,
    #[serde(default)]
    spec: Option<SpecPresence>,
}

#[derive(Default, Deserialize)]
struct SpecPresence {
    #[serde(default)]
    containers: Option<IgnoredAny>,
}

fn container(c: &Container) -> serde_json::Result<Value> {
    let mut out = Map::new();
    out.insert("name".into(), Value::String(c.name.clone()));
    insert(&mut out, "ports", &c.ports)?;
    insert(&mut out, "livenessProbe", &c.liveness_probe)?;
    insert(&mut out, "readinessProbe", &c.readiness_probe)?;
    insert(&mut out, "startupProbe", &c.startup_probe)?;
    insert(&mut out, "lifecycle", &c.lifecycle)?;
    Ok(Value::Object(out))
}

fn names<'a>(items: impl Iterator<Item = &'a String>) -> Value {
    items
        .map(|name| Value::Object(Map::from_iter([("name".to_owned(), Value::String(name.clone()))])))
        .collect()
}

fn insert<T: Serialize>(map: &mut Map<String, Value>, key: &str, value: &Option<T>) -> serde_json::Result<()> {
    if let Some(value) = value {
        map.insert(key.to_owned(), serde_json::to_value(value)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn keeps_what_the_rules_touch_with_every_array_length() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "labels": {"app": "x"}, "annotations": null, "uid": "1"},
            "spec": {
                "containers": [
                    {"name": "app", "image": "i", "ports": [{"containerPort": 80, "name": "http"}],
                     "readinessProbe": {"httpGet": {"port": "http"}}, "env": [{"name": "A"}]},
                    {"name": "b", "lifecycle": null}
                ],
                "initContainers": [{"name": "init", "image": "j"}],
                "volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}],
                "hostNetwork": false
            },
            "status": {"phase": "Pending"}
        }))
        .expect("a pod");
        assert_eq!(
            super::skeleton(&pod, "{}").expect("serialises"),
            json!({
                "metadata": {"labels": {"app": "x"}},
                "spec": {
                    "containers": [
                        {"name": "app", "ports": [{"containerPort": 80, "name": "http"}],
                         "readinessProbe": {"httpGet": {"port": "http"}}},
                        {"name": "b"}
                    ],
                    "initContainers": [{"name": "init"}],
                    "volumes": [{"name": "v"}, {"name": "w"}]
                }
            })
        );
        // What the typed pod makes up is taken only if the text has it (found by the
        // fuzzer: a pod without `metadata` got an `add /metadata/labels`).
        for (text, want) in [
            (r#"{}"#, json!({})),
            (r#"{"metadata": {}}"#, json!({"metadata": {}})),
            (
                r#"{"metadatauid": {"labels": {"a": "b"}}, "spec": {}}"#,
                json!({"spec": {}}),
            ),
            (r#"{"spec": {"containers": []}}"#, json!({"spec": {"containers": []}})),
            (
                r#"{"metadata": null, "spec": {"containers": null}}"#,
                json!({"spec": {}}),
            ),
        ] {
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_str(text).expect("a pod");
            assert_eq!(super::skeleton(&pod, text).expect("serialises"), want, "{text}");
        }
    }
}
