//! Test 3 of the webhook issue: on generated pods, `mutate` never panics or fails, its
//! patch always applies (with the `json-patch` crate), never replaces a whole object, and
//! mutating the patched pod again is a no-op.
#![allow(clippy::unwrap_used)]

mod support;

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use shunt_webhook::inject::{mutate, Decision, RedirectMode, SidecarMode, SkipReason};

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[a-z]{1,5}\\.[a-z]{2,3}/[a-z~]{1,6}",
        Just("shunt.dev/other".to_owned()),
        Just("a~1b/c~0".to_owned()),
    ]
}

fn annotations() -> impl Strategy<Value = Map<String, Value>> {
    let ours = prop_oneof![
        Just(("shunt.dev/inject".to_owned(), "false")),
        Just(("shunt.dev/inject".to_owned(), "true")),
        Just(("shunt.dev/redirect".to_owned(), "port-takeover")),
        Just(("shunt.dev/redirect".to_owned(), "nftables")),
        Just(("shunt.dev/redirect".to_owned(), "bogus")),
        Just(("shunt.dev/ports".to_owned(), "8080,http")),
        Just(("shunt.dev/ports".to_owned(), "70000")),
        Just(("shunt.dev/status".to_owned(), "{not json")),
        Just((
            "shunt.dev/status".to_owned(),
            r#"{"version":"0.0.1","container":"shunt-sidecar"}"#
        )),
    ];
    (
        proptest::collection::vec(ours, 0..2),
        proptest::collection::btree_map(key(), "[ -~]{0,10}", 0..3),
    )
        .prop_map(|(ours, other)| {
            let mut map: Map<String, Value> = other.into_iter().map(|(k, v)| (k, v.into())).collect();
            map.extend(ours.into_iter().map(|(k, v)| (k, v.into())));
            map
        })
}

fn port() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        Just(None),
        Just(Some("http")),
        Just(Some("grpc")),
        Just(Some("http-metrics")),
        Just(Some("shunt-http")),
        Just(Some("shunt-admin")),
    ];
    let number = prop_oneof![
        12 => 1..15000i32,
        4 => Just(8080),
        1 => Just(15090),
        1 => Just(15100),
        1 => Just(15080),
    ];
    let protocol = prop_oneof![Just(None), Just(Some("TCP")), Just(Some("UDP"))];
    (name, number, protocol).prop_map(|(name, number, protocol)| {
        let mut p = json!({"containerPort": number});
        if let Some(name) = name {
            p["name"] = name.into();
        }
        if let Some(protocol) = protocol {
            p["protocol"] = protocol.into();
        }
        p
    })
}

fn container(index: usize) -> impl Strategy<Value = Value> {
    let probe_port = prop_oneof![Just(json!("http")), Just(json!("grpc")), Just(json!(8080))];
    (
        proptest::collection::vec(port(), 0..3),
        proptest::option::of(probe_port.clone()),
        proptest::option::of(probe_port),
        any::<bool>(),
    )
        .prop_map(move |(ports, liveness, readiness, sidecar_name)| {
            let name = if sidecar_name && index == 1 {
                "shunt-sidecar".to_owned()
            } else {
                format!("c{index}")
            };
            let mut c = json!({"name": name, "image": "img:1"});
            if !ports.is_empty() {
                c["ports"] = ports.into();
            }
            if let Some(port) = liveness {
                c["livenessProbe"] = json!({"httpGet": {"path": "/", "port": port}});
            }
            if let Some(port) = readiness {
                c["readinessProbe"] = json!({"tcpSocket": {"port": port}});
            }
            c
        })
}

fn pod() -> impl Strategy<Value = Value> {
    (
        any::<bool>(),
        proptest::option::of(proptest::collection::btree_map(key(), "[a-z0-9]{0,5}", 0..3)),
        proptest::option::weighted(0.5, annotations()),
        (container(0), proptest::option::of(container(1))),
        proptest::option::of(proptest::collection::vec(
            prop_oneof![Just("data"), Just("shunt-token")],
            0..2,
        )),
        proptest::option::of(proptest::collection::vec(container(7), 0..2)),
        proptest::option::weighted(0.2, any::<bool>()),
    )
        .prop_map(|(named, labels, annotations, (c0, c1), volumes, init, host_network)| {
            let mut metadata = if named {
                json!({"name": "p"})
            } else {
                json!({"generateName": "p-"})
            };
            if let Some(labels) = labels {
                metadata["labels"] = json!(labels);
            }
            if let Some(annotations) = annotations {
                metadata["annotations"] = Value::Object(annotations);
            }
            let mut spec = json!({"containers": [c0]});
            if let Some(c1) = c1 {
                spec["containers"].as_array_mut().unwrap().push(c1);
            }
            if let Some(volumes) = volumes {
                spec["volumes"] = volumes
                    .into_iter()
                    .map(|n| json!({"name": n, "emptyDir": {}}))
                    .collect();
            }
            if let Some(init) = init {
                spec["initContainers"] = init.into();
            }
            if let Some(host_network) = host_network {
                spec["hostNetwork"] = host_network.into();
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
        })
}

fn apply(pod: &Value, ops: &[shunt_webhook::patch::Op]) -> Result<Value, String> {
    let patch: json_patch::Patch = serde_json::from_value(serde_json::to_value(ops).unwrap()).unwrap();
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).map_err(|e| e.to_string())?;
    Ok(out)
}

/// One generated case; returns whether the sidecar was injected.
fn check(pod: &Value, takeover: bool, container_mode: bool) -> Result<bool, TestCaseError> {
    let mut config = support::config();
    if takeover {
        config.redirect = RedirectMode::PortTakeover;
    }
    if container_mode {
        config.sidecar_mode = SidecarMode::Container;
    }
    let decision = mutate(pod, "team", &config, None).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let Decision::Inject { patch, .. } = decision else {
        return Ok(false);
    };
    for op in &patch {
        let path = serde_json::to_value(op).unwrap()["path"].as_str().unwrap().to_owned();
        prop_assert!(
            !["", "/metadata", "/spec", "/spec/containers"].contains(&path.as_str()),
            "{path}"
        );
    }
    let mutated = apply(pod, &patch).map_err(TestCaseError::fail)?;
    let sidecars = ["initContainers", "containers"]
        .iter()
        .flat_map(|list| mutated["spec"][list].as_array().cloned().unwrap_or_default())
        .filter(|c| c["name"] == "shunt-sidecar")
        .count();
    prop_assert_eq!(sidecars, 1);
    match mutate(&mutated, "team", &config, None).map_err(|e| TestCaseError::fail(e.to_string()))? {
        Decision::Skip {
            reason: SkipReason::AlreadyInjected,
            ..
        } => Ok(true),
        other => Err(TestCaseError::fail(format!(
            "second pass must be a no-op, got {other:?}"
        ))),
    }
}

#[test]
fn mutate_is_total_its_patch_applies_and_a_second_pass_is_a_no_op() {
    let injected = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 1000,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(pod(), any::<bool>(), any::<bool>()),
            |(pod, takeover, container_mode)| {
                if check(&pod, takeover, container_mode)? {
                    injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            },
        )
        .unwrap();
    // The generator must reach the injection path often, or the property proves little.
    let injected = injected.into_inner();
    assert!(injected >= 200, "only {injected} of 1000 generated pods were injected");
}

/// Found by fuzzing: the typed pod has an empty `metadata` whether the pod has one or
/// not, and the patch must create it when it is missing (`spec.containers` likewise).
#[test]
fn a_pod_without_metadata_gets_a_patch_that_applies() {
    let config = support::config();
    let pods = [
        json!({"apiVersion": "v1", "kind": "Pod",
               "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "annotations": {"shunt.dev/ports": "8080"}},
               "spec": {}}),
    ];
    for pod in pods {
        let decision = mutate(&pod, "team", &config, None).unwrap();
        let Decision::Inject { patch, .. } = decision else {
            panic!("{pod} should be injected, got {decision:?}");
        };
        let mutated = apply(&pod, &patch).unwrap_or_else(|e| panic!("{pod}: {e}"));
        assert_eq!(mutated["metadata"]["labels"]["shunt.dev/injected"], "true", "{mutated}");
    }
}
