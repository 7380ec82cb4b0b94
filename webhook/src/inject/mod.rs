//! The injection rules: a pure function from a Pod (as JSON) and the configuration to a
//! decision, either a JSON patch that adds the sidecar or a reason not to.
//!
//! [`mutate`] never talks to anything; the HTTP handler in `review.rs` turns its result
//! into an AdmissionReview response. Submodules: `ports.rs` chooses the app ports and
//! renames them for port-takeover, `sidecar.rs` builds the container and volume, `undo.rs`
//! takes out what an older version injected.

mod ports;
mod sidecar;
mod skeleton;
mod undo;

use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use shunt_proto::names::{
    ANNOTATION_INJECT, ANNOTATION_REDIRECT, ANNOTATION_STATUS, LABEL_INJECTED, SIDECAR_CONTAINER,
};

use crate::patch::{Op, PatchBuilder, PatchError, Pointer};

pub use sidecar::{SidecarResources, TOKEN_FILE, TOKEN_MOUNT_PATH, TOKEN_VOLUME};

/// How traffic for an app port reaches the sidecar (the sidecar's `SHUNT_REDIRECT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RedirectMode {
    /// A redirect in the pod's network namespace while routes exist (needs `NET_ADMIN`).
    Nftables,
    /// The sidecar takes over the app's named ports (no capabilities at all).
    PortTakeover,
}

impl RedirectMode {
    /// The value the sidecar and the `shunt.dev/redirect` annotation use.
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectMode::Nftables => "nftables",
            RedirectMode::PortTakeover => "port-takeover",
        }
    }
}

/// Where the sidecar container goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SidecarMode {
    /// A native sidecar: an init container with `restartPolicy: Always` (Kubernetes ≥ 1.29).
    Native,
    /// A regular container next to the app's.
    Container,
}

/// Everything `mutate` needs besides the pod. Built once from the flags.
#[derive(Clone, Debug)]
pub struct InjectConfig {
    /// Version recorded in `shunt.dev/status`; a pod injected by another version is redone.
    pub version: String,
    /// Sidecar image.
    pub image: String,
    /// `imagePullPolicy` of the sidecar, or the cluster default when `None`.
    pub image_pull_policy: Option<String>,
    /// Native sidecar or regular container.
    pub sidecar_mode: SidecarMode,
    /// Redirect mode for pods without a `shunt.dev/redirect` annotation.
    pub redirect: RedirectMode,
    /// The operator's address given to the sidecar (`SHUNT_OPERATOR_ADDR`).
    pub operator_addr: String,
    /// PEM CA of the hub's certificate, given inline (`SHUNT_OPERATOR_CA_PEM`), if configured
    /// (`--operator-ca-file`); without it, `mutate`'s `own_ca_bundle` is given.
    pub operator_ca_pem: Option<String>,
    /// TLS name of the hub (`SHUNT_OPERATOR_SERVER_NAME`), if not the sidecar's default.
    pub operator_server_name: Option<String>,
    /// Lifetime of the projected ServiceAccount token, in seconds (≥ 600).
    pub token_expiration_seconds: i64,
    /// The sidecar's transparent proxy port (nftables mode).
    pub proxy_port: u16,
    /// The sidecar's admin port (`/readyz`, `/metrics`).
    pub admin_port: u16,
    /// Port-takeover: the sidecar listens for app port number `i` on `listen_port_base + i`.
    pub listen_port_base: u16,
    /// CPU and memory requests and limits of the sidecar.
    pub resources: SidecarResources,
    /// Namespaces never injected (system namespaces and the webhook's own).
    pub excluded_namespaces: Vec<String>,
}

/// Why a pod was left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// A namespace that is never injected.
    Namespace,
    /// The pod says `shunt.dev/inject: "false"`.
    OptOut,
    /// `hostNetwork: true`: the sidecar would redirect the node's traffic.
    HostNetwork,
    /// No container port and no `shunt.dev/ports` annotation: nothing to route.
    NoPorts,
    /// Already injected by this version.
    AlreadyInjected,
    /// A `shunt.dev/*` annotation has a value we cannot use.
    InvalidAnnotation,
    /// An app port or container port collides with a port the sidecar needs.
    PortConflict,
}

impl SkipReason {
    /// The metric label and short name.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Namespace => "namespace",
            SkipReason::OptOut => "opt_out",
            SkipReason::HostNetwork => "host_network",
            SkipReason::NoPorts => "no_ports",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::InvalidAnnotation => "invalid_annotation",
            SkipReason::PortConflict => "port_conflict",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `mutate` decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Add the sidecar with this patch.
    Inject {
        /// RFC 6902 operations, in order.
        patch: Vec<Op>,
        /// Things the pod's author should know (shown by kubectl).
        warnings: Vec<String>,
        /// The version whose sidecar was replaced, if the pod had one.
        replaced: Option<String>,
    },
    /// Leave the pod unchanged.
    Skip {
        /// Why (metric label).
        reason: SkipReason,
        /// Why, for people (goes into the response warnings).
        detail: String,
    },
}

/// What the webhook records in `shunt.dev/status`: enough to recognise its own injection
/// and to undo it when a newer version replaces the sidecar.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InjectionStatus {
    /// The webhook version that injected.
    pub version: String,
    /// The injected container's name.
    pub container: String,
    /// True when injected as a native sidecar (in `initContainers`).
    #[serde(default)]
    pub native: bool,
    /// Redirect mode.
    #[serde(default)]
    pub redirect: String,
    /// App ports the sidecar manages.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Port-takeover: the sidecar's listen port for each app port, in the same order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen_ports: Vec<u16>,
    /// Port-takeover: renamed container ports, new name → original name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub renamed_ports: std::collections::BTreeMap<String, String>,
    /// The projected token volume's name.
    #[serde(default)]
    pub volume: String,
}

/// A failure of our own while mutating: the pod is admitted unchanged, with a warning.
#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    /// The object does not deserialize as a Pod.
    #[error("the object is not a valid Pod: {0}")]
    NotAPod(#[source] serde_json::Error),
    /// The patch being built did not apply to the pod (a bug in the rules).
    #[error(transparent)]
    Patch(#[from] PatchError),
    /// Serialising the sidecar failed.
    #[error("cannot serialise the sidecar: {0}")]
    Serialize(#[source] serde_json::Error),
}

/// Decides what to do with `pod` (the Pod JSON of a CREATE review) in `namespace`.
///
/// `own_ca_bundle` is the webhook's current CA bundle (mode `self`; the operator serves a
/// certificate of the same Secret): the sidecar gets it as the operator's CA unless
/// `config.operator_ca_pem` (`--operator-ca-file`) is set, which wins.
pub fn mutate(
    pod: &Value,
    namespace: &str,
    config: &InjectConfig,
    own_ca_bundle: Option<&str>,
) -> Result<Decision, MutateError> {
    let text = serde_json::to_string(pod).map_err(MutateError::NotAPod)?;
    mutate_json(&text, namespace, config, own_ca_bundle)
}

/// [`mutate`] of the pod's JSON text as it came in the review (read without building a
/// tree of the whole pod).
pub fn mutate_json(
    pod: &str,
    namespace: &str,
    config: &InjectConfig,
    own_ca_bundle: Option<&str>,
) -> Result<Decision, MutateError> {
    let skip = |reason, detail: String| Ok(Decision::Skip { reason, detail });
    if config.excluded_namespaces.iter().any(|n| n == namespace) {
        return skip(
            SkipReason::Namespace,
            format!("namespace {namespace} is never injected"),
        );
    }
    let parsed: Pod = serde_json::from_str(pod).map_err(MutateError::NotAPod)?;
    let no_annotations = std::collections::BTreeMap::new();
    let annotations = parsed.metadata.annotations.as_ref().unwrap_or(&no_annotations);
    if let Some(value) = annotations.get(ANNOTATION_INJECT) {
        if value.trim().eq_ignore_ascii_case("false") {
            return skip(SkipReason::OptOut, format!("annotation {ANNOTATION_INJECT}={value:?}"));
        }
    }
    if parsed.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return skip(
            SkipReason::HostNetwork,
            "hostNetwork pods share the node's network; the sidecar is not injected".into(),
        );
    }
    let status = annotations
        .get(ANNOTATION_STATUS)
        .map(|s| serde_json::from_str::<InjectionStatus>(s));
    let has_sidecar = undo::has_sidecar(&parsed);
    if let (Some(Ok(status)), true) = (&status, has_sidecar) {
        if status.version == config.version {
            return skip(
                SkipReason::AlreadyInjected,
                format!("already injected by version {}", config.version),
            );
        }
    }
    let redirect = match annotations.get(ANNOTATION_REDIRECT).map(|v| v.trim()) {
        None => config.redirect,
        Some("nftables") => RedirectMode::Nftables,
        Some("port-takeover") => RedirectMode::PortTakeover,
        Some(other) => {
            return skip(
                SkipReason::InvalidAnnotation,
                format!("annotation {ANNOTATION_REDIRECT}={other:?}: expected nftables or port-takeover"),
            )
        }
    };

    let ports_annotation = annotations.get(shunt_proto::names::ANNOTATION_PORTS).cloned();
    let mut builder = PatchBuilder::new(skeleton::skeleton(&parsed, pod).map_err(MutateError::Serialize)?);
    let mut warnings = Vec::new();
    let mut replaced = None;
    let mut pod = parsed;
    if has_sidecar || status.is_some() {
        let old = match &status {
            Some(Ok(old)) => Some(old),
            Some(Err(error)) => {
                warnings.push(format!(
                    "{ANNOTATION_STATUS} is not valid JSON ({error}); replacing the sidecar"
                ));
                None
            }
            None => None,
        };
        undo::remove(&mut builder, &pod, old)?;
        replaced = Some(old.map_or_else(|| "unknown".to_owned(), |s| s.version.clone()));
        pod = Pod::deserialize(builder.doc()).map_err(MutateError::NotAPod)?;
    }

    let plan = match ports::plan(&pod, ports_annotation.as_ref(), redirect, config) {
        Ok(plan) => plan,
        Err(ports::PortsSkip(reason, detail)) => return skip(reason, detail),
    };
    warnings.extend(plan.warnings.iter().cloned());
    ports::apply_renames(&mut builder, &plan)?;
    let native = config.sidecar_mode == SidecarMode::Native;
    let operator_ca = config.operator_ca_pem.as_deref().or(own_ca_bundle);
    let container = sidecar::container(config, redirect, &plan, operator_ca).map_err(MutateError::Serialize)?;
    builder.push(&Pointer::new(["spec", "volumes"]), sidecar::token_volume(config))?;
    let list = if native { "initContainers" } else { "containers" };
    builder.push(&Pointer::new(["spec", list]), container)?;

    let status = InjectionStatus {
        version: config.version.clone(),
        container: SIDECAR_CONTAINER.to_owned(),
        native,
        redirect: redirect.as_str().to_owned(),
        ports: plan.app_ports.clone(),
        listen_ports: plan.listen_ports.clone(),
        renamed_ports: plan
            .renames
            .iter()
            .map(|r| (r.new.clone(), r.original.clone()))
            .collect(),
        volume: TOKEN_VOLUME.to_owned(),
    };
    let status = serde_json::to_string(&status).map_err(MutateError::Serialize)?;
    builder.set_key(&Pointer::new(["metadata", "labels"]), LABEL_INJECTED, "true".into())?;
    builder.set_key(
        &Pointer::new(["metadata", "annotations"]),
        ANNOTATION_STATUS,
        status.into(),
    )?;
    if let Some(old) = &replaced {
        warnings.push(format!(
            "replaced the shunt sidecar of version {old} with version {}",
            config.version
        ));
    }
    Ok(Decision::Inject {
        patch: builder.into_ops(),
        warnings,
        replaced,
    })
}
