//! Which app ports the sidecar manages, the ports it needs for itself, and, in
//! port-takeover mode, which container ports are renamed so that Services reach the
//! sidecar.
//!
//! Port-takeover scheme (documented in the README): app port number `i` (in the order of
//! `SHUNT_APP_PORTS`) is served by the sidecar on `listen_port_base + i` (default 15100 +
//! i). Each *named* container port of an app port is renamed `shunt-<name>` (or
//! `shunt-p<i>` when that would exceed the 15 characters of an IANA service name or is
//! taken), and the sidecar gets a container port with the original name on its listen
//! port. A Service with `targetPort: http` then reaches the sidecar, which passes bytes to
//! the app while dormant; probes and lifecycle hooks of the app that referred to `http`
//! by name are rewritten to the new name, so the kubelet keeps probing the app directly.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod};

use super::{InjectConfig, RedirectMode, SkipReason};
use crate::patch::{PatchBuilder, PatchError, Pointer};

/// A reason to skip the pod, with its explanation.
pub(super) struct PortsSkip(pub SkipReason, pub String);

/// One renamed container port of the app.
#[derive(Clone, Debug)]
pub(super) struct Rename {
    pub container: usize,
    pub port: usize,
    pub original: String,
    pub new: String,
}

/// The ports of one injection.
#[derive(Clone, Debug, Default)]
pub(super) struct PortPlan {
    /// `SHUNT_APP_PORTS`, in order.
    pub app_ports: Vec<u16>,
    /// Port-takeover: `SHUNT_LISTEN_PORT`, paired with `app_ports`.
    pub listen_ports: Vec<u16>,
    /// Port-takeover: the sidecar's named container ports `(original name, listen port)`.
    pub sidecar_ports: Vec<(String, u16)>,
    /// Port-takeover: app container ports to rename.
    pub renames: Vec<Rename>,
    /// Notes for the pod's author.
    pub warnings: Vec<String>,
}

/// Chooses the app ports (from `annotation` or the containers' TCP ports) and checks
/// them against the ports the sidecar needs.
pub(super) fn plan(
    pod: &Pod,
    annotation: Option<&String>,
    redirect: RedirectMode,
    config: &InjectConfig,
) -> Result<PortPlan, PortsSkip> {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let app_ports = match annotation {
        Some(text) => from_annotation(text, containers)?,
        None => dedup(tcp_ports(containers).map(|(_, _, p)| p.container_port)),
    };
    if app_ports.is_empty() {
        return Err(PortsSkip(
            SkipReason::NoPorts,
            format!(
                "no TCP container port and no {} annotation: nothing for the sidecar to route",
                shunt_proto::names::ANNOTATION_PORTS
            ),
        ));
    }
    let mut plan = PortPlan {
        app_ports: app_ports.iter().map(|&p| p as u16).collect(),
        ..PortPlan::default()
    };
    let mut reserved = vec![(config.admin_port, "admin port (--admin-port)".to_owned())];
    match redirect {
        RedirectMode::Nftables => reserved.push((config.proxy_port, "proxy port (--proxy-port)".to_owned())),
        RedirectMode::PortTakeover => {
            for i in 0..plan.app_ports.len() {
                let listen = u32::from(config.listen_port_base) + i as u32;
                let Ok(listen) = u16::try_from(listen) else {
                    return Err(PortsSkip(
                        SkipReason::PortConflict,
                        "too many app ports for --listen-port-base".into(),
                    ));
                };
                plan.listen_ports.push(listen);
                reserved.push((listen, "port-takeover listen port (--listen-port-base)".to_owned()));
            }
        }
    }
    let spec = pod.spec.as_ref();
    let all = spec
        .into_iter()
        .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
    for container in all {
        for port in container.ports.iter().flatten().filter(|p| is_tcp(p)) {
            if let Some((_, what)) = reserved.iter().find(|(r, _)| i32::from(*r) == port.container_port) {
                return Err(conflict(port.container_port, &container.name, what));
            }
        }
    }
    for &app in &plan.app_ports {
        if app == config.proxy_port || app == config.admin_port {
            return Err(conflict(i32::from(app), "(app ports)", "sidecar"));
        }
        if let Some((_, what)) = reserved.iter().find(|(r, _)| *r == app) {
            return Err(conflict(i32::from(app), "(app ports)", what));
        }
    }
    if redirect == RedirectMode::PortTakeover {
        takeover(pod, &mut plan);
    }
    Ok(plan)
}

fn conflict(port: i32, container: &str, what: &str) -> PortsSkip {
    PortsSkip(
        SkipReason::PortConflict,
        format!("port {port} of container {container} is the shunt sidecar's {what}; change one of them"),
    )
}

/// Fills in renames and the sidecar's named ports.
fn takeover(pod: &Pod, plan: &mut PortPlan) {
    let Some(spec) = pod.spec.as_ref() else { return };
    let mut used: BTreeSet<String> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| p.name.clone())
        .collect();
    used.insert(super::sidecar::ADMIN_PORT_NAME.to_owned());
    for (i, (&app, &listen)) in plan.app_ports.iter().zip(&plan.listen_ports).enumerate() {
        let mut named = false;
        for (ci, pi, port) in tcp_ports(&spec.containers) {
            let Some(original) = port.name.as_ref().filter(|_| port.container_port == i32::from(app)) else {
                continue;
            };
            if plan.sidecar_ports.iter().any(|(name, _)| name == original) {
                continue;
            }
            let new = pick_name(original, i, &used);
            used.insert(new.clone());
            plan.renames.push(Rename {
                container: ci,
                port: pi,
                original: original.clone(),
                new,
            });
            plan.sidecar_ports.push((original.clone(), listen));
            named = true;
        }
        if !named {
            plan.warnings.push(format!(
                "port-takeover: port {app} has no name, so only Services that target it by name reach the \
                 sidecar; name the container port"
            ));
        }
    }
}

/// `shunt-<name>` when it fits in an IANA service name (15 characters) and is free,
/// else `shunt-p<i>`, else `shunt-p<i>-<n>`.
fn pick_name(original: &str, index: usize, used: &BTreeSet<String>) -> String {
    let preferred = format!("shunt-{original}");
    if preferred.len() <= 15 && !used.contains(&preferred) {
        return preferred;
    }
    let base = format!("shunt-p{index}");
    std::iter::once(base.clone())
        .chain((1..).map(|n| format!("{base}-{n}")))
        .find(|name| !used.contains(name))
        .unwrap_or(base)
}

/// Renames the container ports of the plan and every probe or lifecycle hook of the same
/// container that named them.
pub(super) fn apply_renames(builder: &mut PatchBuilder, plan: &PortPlan) -> Result<(), PatchError> {
    for rename in &plan.renames {
        let port = Pointer::new(["spec", "containers"])
            .index(rename.container)
            .key("ports")
            .index(rename.port)
            .key("name");
        builder.replace(port, rename.new.clone().into())?;
        rename_refs(builder, rename.container, &rename.original, &rename.new)?;
    }
    Ok(())
}

/// Rewrites probes and lifecycle hooks of container `index` that refer to port `from`.
pub(super) fn rename_refs(builder: &mut PatchBuilder, index: usize, from: &str, to: &str) -> Result<(), PatchError> {
    let container = Pointer::new(["spec", "containers"]).index(index);
    let handlers = [
        container.key("livenessProbe"),
        container.key("readinessProbe"),
        container.key("startupProbe"),
        container.key("lifecycle").key("postStart"),
        container.key("lifecycle").key("preStop"),
    ];
    for handler in handlers {
        for action in ["httpGet", "tcpSocket"] {
            let port = handler.key(action).key("port");
            if builder.get(&port).and_then(|v| v.as_str()) == Some(from) {
                builder.replace(port, to.into())?;
            }
        }
    }
    Ok(())
}

fn from_annotation(text: &str, containers: &[Container]) -> Result<Vec<i32>, PortsSkip> {
    let invalid = |why: String| {
        PortsSkip(
            SkipReason::InvalidAnnotation,
            format!("annotation {}={text:?}: {why}", shunt_proto::names::ANNOTATION_PORTS),
        )
    };
    let mut ports = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = match item.parse::<u16>() {
            Ok(0) => return Err(invalid("port 0 is not a port".into())),
            Ok(port) => i32::from(port),
            Err(_) if item.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(invalid(format!("{item} is not a port (1-65535)")))
            }
            Err(_) => match tcp_ports(containers).find(|(_, _, p)| p.name.as_deref() == Some(item)) {
                Some((_, _, p)) => p.container_port,
                None => return Err(invalid(format!("no TCP container port is named {item:?}"))),
            },
        };
        ports.push(port);
    }
    if ports.is_empty() {
        return Err(invalid(
            "expected a comma list of ports or port names, e.g. 8080,grpc".into(),
        ));
    }
    Ok(dedup(ports))
}

fn tcp_ports(containers: &[Container]) -> impl Iterator<Item = (usize, usize, &ContainerPort)> {
    containers.iter().enumerate().flat_map(|(ci, c)| {
        c.ports
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, p)| is_tcp(p) && (1..=65535).contains(&p.container_port))
            .map(move |(pi, p)| (ci, pi, p))
    })
}

fn is_tcp(port: &ContainerPort) -> bool {
    port.protocol.as_deref().is_none_or(|p| p == "TCP")
}

fn dedup(ports: impl IntoIterator<Item = i32>) -> Vec<i32> {
    let mut out: Vec<i32> = Vec::new();
    for port in ports {
        if !out.contains(&port) {
            out.push(port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renamed_ports_fit_an_iana_service_name_and_stay_unique() {
        let used: BTreeSet<String> = ["shunt-http".to_owned(), "shunt-p1".to_owned()].into();
        assert_eq!(pick_name("grpc", 0, &used), "shunt-grpc");
        assert_eq!(pick_name("http", 0, &used), "shunt-p0");
        assert_eq!(pick_name("http-metrics", 1, &used), "shunt-p1-1");
        assert!(pick_name("abcdefghijklmno", 3, &used).len() <= 15);
    }
}
