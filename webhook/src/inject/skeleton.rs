//! The patch builder's working copy of a pod: only what the injection rules touch.

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::Serialize;
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
pub(super) fn skeleton(pod: &Pod) -> serde_json::Result<Value> {
    let mut metadata = Map::new();
    insert(&mut metadata, "labels", &pod.metadata.labels)?;
    insert(&mut metadata, "annotations", &pod.metadata.annotations)?;
    let mut out = Map::new();
    out.insert("metadata".into(), Value::Object(metadata));
    if let Some(spec) = &pod.spec {
        let mut skeleton = Map::new();
        let containers = spec
            .containers
            .iter()
            .map(container)
            .collect::<serde_json::Result<_>>()?;
        skeleton.insert("containers".into(), Value::Array(containers));
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
            super::skeleton(&pod).expect("serialises"),
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
        let bare: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({})).expect("a pod");
        assert_eq!(super::skeleton(&bare).expect("serialises"), json!({"metadata": {}}));
    }
}
