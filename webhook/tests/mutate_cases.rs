//! Tests 1 and 2 of the webhook issue: a table of pods, one per injection rule (including
//! the refused namespaces, the operator CA given to sidecars and the replacement of an
//! older version's sidecar), each checked for its decision; every patch is applied with
//! the `json-patch` crate, the result re-mutated (must be a no-op), and every mutated pod
//! validated against the official Kubernetes Pod schema (PyPI `kubernetes-validate`,
//! strict, 1.32).
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{json, Value};
use shunt_webhook::inject::{mutate, Decision, InjectConfig, RedirectMode, SidecarMode, SkipReason};
use support::{config, pod};

/// What a case must produce.
enum Expect {
    Skip(SkipReason),
    Inject(fn(&Value, &[Value], &[String])),
}

struct Case {
    name: &'static str,
    namespace: &'static str,
    /// The webhook's own CA bundle (mode self), given to `mutate`.
    own_ca: Option<&'static str>,
    pod: Value,
    config: fn(&mut InjectConfig),
    expect: Expect,
}

fn same(_: &mut InjectConfig) {}

fn sidecar(pod: &Value) -> &Value {
    let in_init = pod["spec"]["initContainers"].as_array().into_iter().flatten();
    let in_main = pod["spec"]["containers"].as_array().into_iter().flatten();
    let found: Vec<&Value> = in_init
        .chain(in_main)
        .filter(|c| c["name"] == "shunt-sidecar")
        .collect();
    assert_eq!(found.len(), 1, "exactly one sidecar: {pod:#}");
    found[0]
}

fn env(container: &Value, name: &str) -> Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .map_or(Value::Null, |e| {
            e.get("value").cloned().unwrap_or_else(|| e["valueFrom"].clone())
        })
}

fn paths(ops: &[Value]) -> Vec<&str> {
    ops.iter().map(|op| op["path"].as_str().unwrap()).collect()
}

fn status(pod: &Value) -> Value {
    serde_json::from_str(pod["metadata"]["annotations"]["shunt.dev/status"].as_str().unwrap()).unwrap()
}

fn cases() -> Vec<Case> {
    let probe = |port: Value| json!({"httpGet": {"path": "/health", "port": port}});
    vec![
        Case {
            name: "named port, nftables, native sidecar",
            namespace: "team",
            own_ca: None,
            pod: pod(json!([{"name": "http", "containerPort": 8080}])),
            config: same,
            expect: Expect::Inject(|p, _, w| {
                assert!(w.is_empty(), "{w:?}");
                let s = sidecar(p);
                assert_eq!(p["spec"]["initContainers"][0]["name"], "shunt-sidecar");
                assert_eq!(s["restartPolicy"], "Always");
                assert_eq!(env(s, "SHUNT_REDIRECT"), "nftables");
                assert_eq!(env(s, "SHUNT_APP_PORTS"), "8080");
                assert_eq!(env(s, "SHUNT_LISTEN_PORT"), Value::Null);
                assert_eq!(env(s, "SHUNT_POD_IP")["fieldRef"]["fieldPath"], "status.podIP");
                assert_eq!(env(s, "SHUNT_POD_NAME")["fieldRef"]["fieldPath"], "metadata.name");
                assert_eq!(
                    env(s, "SHUNT_POD_NAMESPACE")["fieldRef"]["fieldPath"],
                    "metadata.namespace"
                );
                assert_eq!(env(s, "SHUNT_OPERATOR_ADDR"), "shunt-operator.shunt-system.svc:15443");
                assert_eq!(env(s, "SHUNT_OPERATOR_CA_PEM"), Value::Null);
                assert_eq!(env(s, "SHUNT_TOKEN_FILE"), "/var/run/secrets/shunt/token");
                assert_eq!(s["readinessProbe"]["httpGet"]["path"], "/readyz");
                assert_eq!(s["readinessProbe"]["httpGet"]["port"], 15090);
                let sc = &s["securityContext"];
                assert_eq!(sc["capabilities"], json!({"drop": ["ALL"], "add": ["NET_ADMIN"]}));
                assert_eq!(sc["allowPrivilegeEscalation"], false);
                assert_eq!(sc["readOnlyRootFilesystem"], true);
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
                assert_eq!(s["resources"]["limits"]["memory"], "128Mi");
                let token = &p["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
                assert_eq!(token["audience"], "shunt.dev/sidecar");
                assert_eq!(token["expirationSeconds"], 3600);
                assert_eq!(p["metadata"]["labels"]["shunt.dev/injected"], "true");
                let st = status(p);
                assert_eq!(
                    (st["version"].clone(), st["container"].clone()),
                    (json!("0.1.0"), json!("shunt-sidecar"))
                );
                assert_eq!(st["ports"], json!([8080]));
                assert_eq!(p["spec"]["containers"][0]["ports"][0]["name"], "http", "app untouched");
            }),
        },
        Case {
            name: "generateName pod without labels, annotations, volumes or initContainers",
            namespace: "team",
            own_ca: None,
            pod: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"},
                "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 80}]}]}}),
            config: same,
            expect: Expect::Inject(|p, ops, _| {
                let paths = paths(ops);
                for parent in [
                    "/spec/volumes",
                    "/spec/initContainers",
                    "/metadata/labels",
                    "/metadata/annotations",
                ] {
                    let created = paths.iter().position(|x| *x == parent).unwrap();
                    let child = paths.iter().position(|x| x.starts_with(&format!("{parent}/"))).unwrap();
                    assert!(created < child, "{parent} created before its child: {paths:?}");
                }
                assert!(paths.contains(&"/metadata/labels/shunt.dev~1injected"), "{paths:?}");
                assert!(paths.contains(&"/metadata/annotations/shunt.dev~1status"), "{paths:?}");
                assert!(p["metadata"].get("name").is_none());
            }),
        },
        Case {
            name: "existing volumes, initContainers, labels and annotations (keys with / and ~) are kept",
            namespace: "team",
            own_ca: None,
            pod: json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "labels": {"app": "web", "example.com/a~b": "1"},
                    "annotations": {"x/y~z": "keep", "shunt.dev/other": "2"}},
                "spec": {
                    "initContainers": [{"name": "migrate", "image": "m:1"}],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}),
            config: same,
            expect: Expect::Inject(|p, ops, _| {
                let paths = paths(ops);
                for whole in [
                    "/spec/volumes",
                    "/spec/initContainers",
                    "/metadata/labels",
                    "/metadata/annotations",
                    "/spec",
                    "/metadata",
                ] {
                    assert!(!paths.contains(&whole), "never replaces {whole}: {paths:?}");
                }
                assert!(ops.iter().all(|op| op["op"] == "add"), "{ops:?}");
                assert_eq!(p["spec"]["initContainers"][0]["name"], "migrate");
                assert_eq!(p["spec"]["initContainers"][1]["name"], "shunt-sidecar");
                assert_eq!(p["spec"]["volumes"][0]["name"], "data");
                assert_eq!(p["metadata"]["labels"]["example.com/a~b"], "1");
                assert_eq!(p["metadata"]["annotations"]["x/y~z"], "keep");
            }),
        },
        Case {
            name: "labels: null is replaced by a map",
            namespace: "team",
            own_ca: None,
            pod: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "labels": null},
                "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 80}]}]}}),
            config: same,
            expect: Expect::Inject(|p, _, _| assert_eq!(p["metadata"]["labels"]["shunt.dev/injected"], "true")),
        },
        Case {
            name: "opt-out annotation",
            namespace: "team",
            own_ca: None,
            pod: annotated(pod(json!([{"containerPort": 80}])), "shunt.dev/inject", "false"),
            config: same,
            expect: Expect::Skip(SkipReason::OptOut),
        },
        Case {
            name: "opt-out annotation, any case",
            namespace: "team",
            own_ca: None,
            pod: annotated(pod(json!([{"containerPort": 80}])), "shunt.dev/inject", " False "),
            config: same,
            expect: Expect::Skip(SkipReason::OptOut),
        },
        Case {
            name: "hostNetwork",
            namespace: "team",
            own_ca: None,
            pod: {
                let mut p = pod(json!([{"containerPort": 80}]));
                p["spec"]["hostNetwork"] = true.into();
                p
            },
            config: same,
            expect: Expect::Skip(SkipReason::HostNetwork),
        },
        Case {
            name: "no container port and no annotation",
            namespace: "team",
            own_ca: None,
            pod: pod(json!([{"containerPort": 53, "protocol": "UDP"}])),
            config: same,
            expect: Expect::Skip(SkipReason::NoPorts),
        },
        Case {
            name: "ports from the annotation, by number and by name",
            namespace: "team",
            own_ca: None,
            pod: annotated(
                pod(json!([{"name": "grpc", "containerPort": 9090}, {"containerPort": 9999}])),
                "shunt.dev/ports",
                "8080, grpc",
            ),
            config: same,
            expect: Expect::Inject(|p, _, _| assert_eq!(env(sidecar(p), "SHUNT_APP_PORTS"), "8080,9090")),
        },
        Case {
            name: "ports annotation on a pod without container ports",
            namespace: "team",
            own_ca: None,
            pod: annotated(pod(json!([])), "shunt.dev/ports", "3000"),
            config: same,
            expect: Expect::Inject(|p, _, _| assert_eq!(env(sidecar(p), "SHUNT_APP_PORTS"), "3000")),
        },
        Case {
            name: "invalid ports annotation",
            namespace: "team",
            own_ca: None,
            pod: annotated(pod(json!([{"containerPort": 80}])), "shunt.dev/ports", "http"),
            config: same,
            expect: Expect::Skip(SkipReason::InvalidAnnotation),
        },
        Case {
            name: "invalid redirect annotation",
            namespace: "team",
            own_ca: None,
            pod: annotated(pod(json!([{"containerPort": 80}])), "shunt.dev/redirect", "iptables"),
            config: same,
            expect: Expect::Skip(SkipReason::InvalidAnnotation),
        },
        Case {
            name: "kube-system",
            namespace: "kube-system",
            own_ca: None,
            pod: pod(json!([{"containerPort": 80}])),
            config: same,
            expect: Expect::Skip(SkipReason::Namespace),
        },
        Case {
            name: "kube-public",
            namespace: "kube-public",
            own_ca: None,
            pod: pod(json!([{"containerPort": 80}])),
            config: same,
            expect: Expect::Skip(SkipReason::Namespace),
        },
        Case {
            name: "kube-node-lease",
            namespace: "kube-node-lease",
            own_ca: None,
            pod: pod(json!([{"containerPort": 80}])),
            config: same,
            expect: Expect::Skip(SkipReason::Namespace),
        },
        Case {
            name: "the webhook's own namespace",
            namespace: "shunt-system",
            own_ca: None,
            pod: pod(json!([{"containerPort": 80}])),
            config: same,
            expect: Expect::Skip(SkipReason::Namespace),
        },
        Case {
            name: "container port on the sidecar's admin port",
            namespace: "team",
            own_ca: None,
            pod: pod(json!([{"containerPort": 8080}, {"containerPort": 15090}])),
            config: same,
            expect: Expect::Skip(SkipReason::PortConflict),
        },
        Case {
            name: "UDP ignored, duplicates across containers once",
            namespace: "team",
            own_ca: None,
            pod: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": [
                {"name": "a", "image": "a:1", "ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]},
                {"name": "b", "image": "b:1", "ports": [{"containerPort": 9090, "protocol": "TCP"}]}]}}),
            config: same,
            expect: Expect::Inject(|p, _, _| assert_eq!(env(sidecar(p), "SHUNT_APP_PORTS"), "8080,9090")),
        },
        Case {
            name: "regular container mode",
            namespace: "team",
            own_ca: None,
            pod: pod(json!([{"containerPort": 80}])),
            config: |c| c.sidecar_mode = SidecarMode::Container,
            expect: Expect::Inject(|p, _, _| {
                assert_eq!(p["spec"]["containers"][1]["name"], "shunt-sidecar");
                assert!(p["spec"].get("initContainers").is_none());
                assert!(sidecar(p).get("restartPolicy").is_none());
            }),
        },
        Case {
            name: "port-takeover by annotation: ports renamed, probes follow",
            namespace: "team",
            own_ca: None,
            pod: annotated(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": [{
                    "name": "app", "image": "app:1",
                    "ports": [{"name": "http", "containerPort": 8080}, {"name": "http-metrics-x", "containerPort": 9100},
                              {"containerPort": 7000}],
                    "livenessProbe": probe(json!("http")),
                    "readinessProbe": {"tcpSocket": {"port": "http"}},
                    "startupProbe": probe(json!(8080)),
                    "lifecycle": {"preStop": {"httpGet": {"path": "/stop", "port": "http-metrics-x"}}}}]}}),
                "shunt.dev/redirect",
                "port-takeover",
            ),
            config: same,
            expect: Expect::Inject(|p, _, w| {
                let app = &p["spec"]["containers"][0];
                assert_eq!(app["ports"][0]["name"], "shunt-http");
                assert_eq!(app["ports"][1]["name"], "shunt-p1");
                assert_eq!(app["livenessProbe"]["httpGet"]["port"], "shunt-http");
                assert_eq!(app["readinessProbe"]["tcpSocket"]["port"], "shunt-http");
                assert_eq!(app["startupProbe"]["httpGet"]["port"], 8080);
                assert_eq!(app["lifecycle"]["preStop"]["httpGet"]["port"], "shunt-p1");
                let s = sidecar(p);
                assert_eq!(env(s, "SHUNT_REDIRECT"), "port-takeover");
                assert_eq!(env(s, "SHUNT_APP_PORTS"), "8080,9100,7000");
                assert_eq!(env(s, "SHUNT_LISTEN_PORT"), "15100,15101,15102");
                let ports: Vec<(Value, Value)> = s["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p["name"].clone(), p["containerPort"].clone()))
                    .collect();
                assert!(ports.contains(&(json!("http"), json!(15100))), "{ports:?}");
                assert!(ports.contains(&(json!("http-metrics-x"), json!(15101))), "{ports:?}");
                let sc = &s["securityContext"];
                assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
                assert_eq!(sc["runAsNonRoot"], true);
                assert_eq!(sc["allowPrivilegeEscalation"], false);
                assert!(w.iter().any(|w| w.contains("port 7000 has no name")), "{w:?}");
                assert_eq!(status(p)["renamedPorts"]["shunt-http"], "http");
            }),
        },
        Case {
            name: "port-takeover from the configuration",
            namespace: "team",
            own_ca: None,
            pod: pod(json!([{"name": "web", "containerPort": 80}])),
            config: |c| c.redirect = RedirectMode::PortTakeover,
            expect: Expect::Inject(|p, _, _| {
                assert_eq!(p["spec"]["containers"][0]["ports"][0]["name"], "shunt-web");
                assert_eq!(env(sidecar(p), "SHUNT_LISTEN_PORT"), "15100");
            }),
        },
        Case {
            name: "the operator's CA and TLS name are given to the sidecar",
            namespace: "team",
            own_ca: None,
            pod: pod(json!([{"name": "web", "containerPort": 80}])),
            config: |c| {
                c.operator_ca_pem = Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into());
                c.operator_server_name = Some("hub.shunt-system".into());
            },
            expect: Expect::Inject(|p, _, _| {
                let ca = env(sidecar(p), "SHUNT_OPERATOR_CA_PEM");
                assert!(ca.as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
                assert_eq!(env(sidecar(p), "SHUNT_OPERATOR_SERVER_NAME"), "hub.shunt-system");
            }),
        },
        Case {
            name: "a container named shunt-sidecar without status is replaced",
            namespace: "team",
            own_ca: None,
            pod: json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": [
                {"name": "app", "image": "app:1", "ports": [{"containerPort": 80}]},
                {"name": "shunt-sidecar", "image": "old:0"}]}}),
            config: same,
            expect: Expect::Inject(|p, _, w| {
                assert_eq!(p["spec"]["containers"].as_array().unwrap().len(), 1);
                assert_eq!(sidecar(p)["image"], "shunt-sidecar:0.1.0");
                assert!(w.iter().any(|w| w.contains("replaced")), "{w:?}");
            }),
        },
        Case {
            name: "mode self without --operator-ca-file: the webhook's own CA bundle, both CAs of it",
            namespace: "team",
            own_ca: Some(OWN_BUNDLE),
            pod: pod(json!([{"name": "web", "containerPort": 80}])),
            config: same,
            expect: Expect::Inject(|p, _, _| assert_eq!(env(sidecar(p), "SHUNT_OPERATOR_CA_PEM"), OWN_BUNDLE)),
        },
        Case {
            name: "--operator-ca-file wins over the webhook's own CA bundle",
            namespace: "team",
            own_ca: Some(OWN_BUNDLE),
            pod: pod(json!([{"name": "web", "containerPort": 80}])),
            config: |c| c.operator_ca_pem = Some(CA_FILE.into()),
            expect: Expect::Inject(|p, _, _| assert_eq!(env(sidecar(p), "SHUNT_OPERATOR_CA_PEM"), CA_FILE)),
        },
        Case {
            name: "mode files without --operator-ca-file: no operator CA (the sidecar stays dormant)",
            namespace: "team",
            own_ca: None,
            pod: pod(json!([{"name": "web", "containerPort": 80}])),
            config: same,
            expect: Expect::Inject(|p, _, _| assert_eq!(env(sidecar(p), "SHUNT_OPERATOR_CA_PEM"), Value::Null)),
        },
        Case {
            name: "a pod injected by an older version (port-takeover) gets its sidecar replaced",
            namespace: "team",
            own_ca: None,
            pod: injected_by_0_0_9(annotated(
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {"containers": [{
                    "name": "app", "image": "app:1", "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}}}]}}),
                "shunt.dev/redirect",
                "port-takeover",
            )),
            config: same,
            expect: Expect::Inject(|p, _, w| {
                assert!(w.iter().any(|w| w.contains("0.0.9")), "{w:?}");
                assert_eq!(sidecar(p)["image"], "shunt-sidecar:0.1.0");
                assert_eq!(status(p)["version"], "0.1.0");
                assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1);
                let app = &p["spec"]["containers"][0];
                assert_eq!(
                    app["ports"][0]["name"], "shunt-http",
                    "renamed once, not shunt-shunt-http"
                );
                assert_eq!(app["readinessProbe"]["httpGet"]["port"], "shunt-http");
            }),
        },
    ]
}

/// The webhook's own CA bundle in the operator-CA cases (two CAs, as during a rotation).
const OWN_BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nT1dO\n-----END CERTIFICATE-----\n\
                          -----BEGIN CERTIFICATE-----\nTkVYVA==\n-----END CERTIFICATE-----\n";
/// The contents of an `--operator-ca-file`.
const CA_FILE: &str = "-----BEGIN CERTIFICATE-----\nRklMRQ==\n-----END CERTIFICATE-----\n";

/// `pod` as injected by version 0.0.9 of the webhook.
fn injected_by_0_0_9(pod: Value) -> Value {
    let mut old = config();
    old.version = "0.0.9".into();
    old.image = "shunt-sidecar:0.0.9".into();
    let Decision::Inject { patch, .. } = mutate(&pod, "team", &old, None).unwrap() else {
        panic!("0.0.9 must inject {pod}")
    };
    let mut injected = pod;
    apply(&mut injected, &patch);
    injected
}

fn apply(pod: &mut Value, patch: &[shunt_webhook::patch::Op]) {
    let patch: json_patch::Patch = serde_json::from_value(serde_json::to_value(patch).unwrap()).unwrap();
    json_patch::patch(pod, &patch).unwrap();
}

fn annotated(mut pod: Value, key: &str, value: &str) -> Value {
    pod["metadata"]["annotations"][key] = value.into();
    pod
}

/// The version whose sidecar an injection must report replacing: the one in the pod's
/// `shunt.dev/status`, `unknown` for a `shunt-sidecar` container without status, else none.
fn replaced_version(pod: &Value) -> Option<String> {
    if let Some(status) = pod["metadata"]["annotations"]["shunt.dev/status"].as_str() {
        let status: Value = serde_json::from_str(status).unwrap();
        return Some(status["version"].as_str().unwrap().to_owned());
    }
    let spec = &pod["spec"];
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| spec[list].as_array().into_iter().flatten())
        .any(|c| c["name"] == "shunt-sidecar")
        .then(|| "unknown".to_owned())
}

/// Runs one case; returns the mutated pod when injected.
fn run(case: &Case) -> Option<Value> {
    let mut cfg = config();
    (case.config)(&mut cfg);
    let decision = mutate(&case.pod, case.namespace, &cfg, case.own_ca).unwrap();
    let injected_before = replaced_version(&case.pod);
    match (&case.expect, decision) {
        (Expect::Skip(want), Decision::Skip { reason, detail }) => {
            assert_eq!(*want, reason, "{}: {detail}", case.name);
            assert!(!detail.is_empty());
            None
        }
        (
            Expect::Inject(check),
            Decision::Inject {
                patch,
                warnings,
                replaced,
            },
        ) => {
            assert_eq!(replaced, injected_before, "{}: the version replaced", case.name);
            let ops: Vec<Value> = patch.iter().map(|op| serde_json::to_value(op).unwrap()).collect();
            let mut mutated = case.pod.clone();
            let parsed: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone())).unwrap();
            json_patch::patch(&mut mutated, &parsed).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            check(&mutated, &ops, &warnings);
            match mutate(&mutated, case.namespace, &cfg, case.own_ca).unwrap() {
                Decision::Skip {
                    reason: SkipReason::AlreadyInjected,
                    ..
                } => {}
                other => panic!("{}: re-mutating must be a no-op, got {other:?}", case.name),
            }
            Some(mutated)
        }
        (_, other) => panic!("{}: unexpected {other:?}", case.name),
    }
}

#[test]
fn every_rule_decides_as_documented_and_patches_apply() {
    for case in cases() {
        run(&case);
    }
}

#[test]
fn every_mutated_pod_is_valid_against_the_official_pod_schema() {
    let dir = std::env::temp_dir().join(format!("shunt-webhook-schema-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (i, case) in cases().iter().enumerate() {
        if let Some(mut mutated) = run(case) {
            // The API server fills these before validation; the fixtures leave them out.
            if mutated["metadata"].get("name").is_none() {
                mutated["metadata"]["name"] = "web-x7k2p".into();
            }
            let path = dir.join(format!("case-{i:02}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(&mutated).unwrap()).unwrap();
            files.push(path);
        }
    }
    // Every injecting case of the table, the older-version replacement and operator CA included.
    assert!(files.len() >= 15, "{} mutated pods", files.len());
    let output = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.32.0"])
        .args(&files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run kubernetes-validate ({e}); install it with scripts/setup (pip install kubernetes-validate)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "schema validation failed:\n{text}");
    assert_eq!(text.matches(" passed for resource pod/").count(), files.len(), "{text}");

    // The validator is strict: a field the schema lacks is refused (so the check above has teeth).
    let mut bad = run(&cases().remove(0)).unwrap();
    bad["spec"]["initContainers"][0]["restartPolicyy"] = "Always".into();
    let bad_path = dir.join("bad.json");
    std::fs::write(&bad_path, serde_json::to_vec(&bad).unwrap()).unwrap();
    let refused = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.32.0"])
        .arg(&bad_path)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "an unknown field must fail strict validation"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
