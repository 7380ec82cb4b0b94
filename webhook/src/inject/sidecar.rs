//! The injected container and its token volume.
//!
//! The environment is the sidecar's contract (`sidecar/src/config.rs`): redirect mode,
//! app ports, listen ports (port-takeover), proxy and admin ports, the pod's IP, name and
//! namespace from the downward API, the operator's address, CA (inline PEM) and TLS name, the path of the projected
//! ServiceAccount token (audience `shunt.dev/sidecar`) it presents to the operator.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};
use shunt_proto::names::{SIDECAR_CONTAINER, SIDECAR_TOKEN_AUDIENCE};

use super::ports::PortPlan;
use super::{InjectConfig, RedirectMode};

/// Name of the projected token volume added to the pod.
pub const TOKEN_VOLUME: &str = "shunt-token";
/// Where the token volume is mounted in the sidecar.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/shunt";
/// The token file the sidecar reads (`SHUNT_TOKEN_FILE`).
pub const TOKEN_FILE: &str = "/var/run/secrets/shunt/token";
/// Name of the sidecar's admin container port (informative; port-takeover renames avoid it).
pub(super) const ADMIN_PORT_NAME: &str = "shunt-admin";
/// User the sidecar runs as in port-takeover mode (the distroless `nonroot` user).
const NON_ROOT_UID: i64 = 65532;

/// CPU and memory requests and limits of the sidecar (Kubernetes quantities).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SidecarResources {
    /// `requests.cpu`.
    pub cpu_request: Option<String>,
    /// `requests.memory`.
    pub memory_request: Option<String>,
    /// `limits.cpu`.
    pub cpu_limit: Option<String>,
    /// `limits.memory`.
    pub memory_limit: Option<String>,
}

/// The sidecar container as JSON; `operator_ca` is the PEM the sidecar verifies the hub with.
pub(super) fn container(
    config: &InjectConfig,
    redirect: RedirectMode,
    plan: &PortPlan,
    operator_ca: Option<&str>,
) -> serde_json::Result<Value> {
    let join = |ports: &[u16]| ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let mut env = vec![
        value("SHUNT_REDIRECT", redirect.as_str()),
        value("SHUNT_APP_PORTS", &join(&plan.app_ports)),
    ];
    if redirect == RedirectMode::PortTakeover {
        env.push(value("SHUNT_LISTEN_PORT", &join(&plan.listen_ports)));
    }
    env.extend([
        value("SHUNT_PROXY_PORT", &config.proxy_port.to_string()),
        value("SHUNT_ADMIN_PORT", &config.admin_port.to_string()),
        field("SHUNT_POD_IP", "status.podIP"),
        field("SHUNT_POD_NAME", "metadata.name"),
        field("SHUNT_POD_NAMESPACE", "metadata.namespace"),
        value("SHUNT_OPERATOR_ADDR", &config.operator_addr),
        value("SHUNT_TOKEN_FILE", TOKEN_FILE),
    ]);
    if let Some(pem) = operator_ca {
        env.push(value("SHUNT_OPERATOR_CA_PEM", pem));
    }
    if let Some(name) = &config.operator_server_name {
        env.push(value("SHUNT_OPERATOR_SERVER_NAME", name));
    }
    let mut ports = vec![ContainerPort {
        container_port: i32::from(config.admin_port),
        name: Some(ADMIN_PORT_NAME.into()),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }];
    // The app may itself use `shunt-admin`: the admin port's name is only informative.
    if plan.sidecar_ports.iter().any(|(name, _)| name == ADMIN_PORT_NAME) {
        ports[0].name = None;
    }
    ports.extend(plan.sidecar_ports.iter().map(|(name, listen)| ContainerPort {
        container_port: i32::from(*listen),
        name: Some(name.clone()),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }));
    let container = Container {
        name: SIDECAR_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        // Native sidecar: an init container that keeps running next to the app.
        restart_policy: (config.sidecar_mode == super::SidecarMode::Native).then(|| "Always".into()),
        env: Some(env),
        ports: Some(ports),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(i32::from(config.admin_port)),
                scheme: Some("HTTP".into()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        resources: resources(&config.resources),
        security_context: Some(security_context(redirect)),
        volume_mounts: Some(vec![VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_MOUNT_PATH.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    serde_json::to_value(container)
}

/// The projected ServiceAccount token volume (audience `shunt.dev/sidecar`).
pub(super) fn token_volume(config: &InjectConfig) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {
            "sources": [{
                "serviceAccountToken": {
                    "audience": SIDECAR_TOKEN_AUDIENCE,
                    "expirationSeconds": config.token_expiration_seconds,
                    "path": "token",
                }
            }]
        }
    })
}

/// nftables mode needs `NET_ADMIN` in the pod's network namespace and nothing else. It runs
/// as uid 0 on purpose: an added capability is only effective for root (a pod-level
/// `runAsUser` would otherwise leave the sidecar without it). Port-takeover needs no
/// capability at all and runs as a fixed non-root user.
fn security_context(redirect: RedirectMode) -> SecurityContext {
    let base = SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    };
    match redirect {
        RedirectMode::Nftables => SecurityContext {
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["NET_ADMIN".into()]),
            }),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            ..base
        },
        RedirectMode::PortTakeover => SecurityContext {
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            run_as_non_root: Some(true),
            run_as_user: Some(NON_ROOT_UID),
            run_as_group: Some(NON_ROOT_UID),
            ..base
        },
    }
}

fn resources(r: &SidecarResources) -> Option<ResourceRequirements> {
    let map = |pairs: [(&str, &Option<String>); 2]| {
        let map: BTreeMap<String, Quantity> = pairs
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), Quantity(v.clone()))))
            .collect();
        (!map.is_empty()).then_some(map)
    };
    let requests = map([("cpu", &r.cpu_request), ("memory", &r.memory_request)]);
    let limits = map([("cpu", &r.cpu_limit), ("memory", &r.memory_limit)]);
    (requests.is_some() || limits.is_some()).then_some(ResourceRequirements {
        requests,
        limits,
        ..ResourceRequirements::default()
    })
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.into(),
            }),
            ..EnvVarSource::default()
        }),
    }
}
