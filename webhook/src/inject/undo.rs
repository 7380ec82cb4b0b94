//! Taking out a sidecar injected by another version, so that the new one replaces it.
//!
//! The `shunt.dev/status` annotation says what was injected; without it (or when it is
//! unreadable) everything that carries our reserved names is removed: containers named
//! `shunt-sidecar` in either list and the `shunt-token` volume. Renamed ports are only
//! restored when the status lists them, since nothing else says what their names were.

use k8s_openapi::api::core::v1::Pod;
use shunt_proto::names::SIDECAR_CONTAINER;

use super::ports::rename_refs;
use super::{InjectionStatus, TOKEN_VOLUME};
use crate::patch::{PatchBuilder, PatchError, Pointer};

/// True when the pod has a container with the sidecar's name in either list.
pub(super) fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == SIDECAR_CONTAINER)
    })
}

/// Records the operations that remove the old injection from `pod` (which must be the
/// builder's current document).
pub(super) fn remove(builder: &mut PatchBuilder, pod: &Pod, old: Option<&InjectionStatus>) -> Result<(), PatchError> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let container_name = old.map_or(SIDECAR_CONTAINER, |s| s.container.as_str());
    let is_ours = |name: &str| name == SIDECAR_CONTAINER || name == container_name;
    // Highest index first, so the indexes still to remove stay valid.
    let init: Vec<usize> = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| is_ours(&c.name))
        .map(|(i, _)| i)
        .collect();
    for i in init.into_iter().rev() {
        builder.remove(Pointer::new(["spec", "initContainers"]).index(i))?;
    }
    let regular: Vec<usize> = spec
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| is_ours(&c.name))
        .map(|(i, _)| i)
        .collect();
    for &i in regular.iter().rev() {
        builder.remove(Pointer::new(["spec", "containers"]).index(i))?;
    }
    let volume_name = old.map_or(TOKEN_VOLUME, |s| s.volume.as_str());
    let volumes: Vec<usize> = spec
        .volumes
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, v)| v.name == TOKEN_VOLUME || v.name == volume_name)
        .map(|(i, _)| i)
        .collect();
    for i in volumes.into_iter().rev() {
        builder.remove(Pointer::new(["spec", "volumes"]).index(i))?;
    }
    let Some(old) = old else { return Ok(()) };
    // Container indexes after the removals above: the app containers that remain.
    let remaining: Vec<_> = spec
        .containers
        .iter()
        .enumerate()
        .filter(|(i, _)| !regular.contains(i))
        .map(|(_, c)| c)
        .collect();
    for (ci, container) in remaining.iter().enumerate() {
        for (pi, port) in container.ports.iter().flatten().enumerate() {
            let Some(original) = port.name.as_ref().and_then(|n| old.renamed_ports.get(n)) else {
                continue;
            };
            let Some(new) = port.name.as_deref() else { continue };
            let at = Pointer::new(["spec", "containers"])
                .index(ci)
                .key("ports")
                .index(pi)
                .key("name");
            builder.replace(at, original.clone().into())?;
            rename_refs(builder, ci, new, original)?;
        }
    }
    Ok(())
}
