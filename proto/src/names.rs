//! Names fixed by ARCHITECTURE.md. Other tools, charts and tests rely on them verbatim.

/// Namespace label that opts a namespace into sidecar injection (value [`INJECTION_ENABLED`]).
pub const LABEL_INJECTION: &str = "shunt.dev/injection";
/// Value of [`LABEL_INJECTION`] that enables injection.
pub const INJECTION_ENABLED: &str = "enabled";
/// Pod annotation that opts a single pod out (`"false"`).
pub const ANNOTATION_INJECT: &str = "shunt.dev/inject";
/// Label put on every injected pod (`"true"`).
pub const LABEL_INJECTED: &str = "shunt.dev/injected";
/// Annotation holding the JSON of what was injected.
pub const ANNOTATION_STATUS: &str = "shunt.dev/status";
/// Name of the injected container.
pub const SIDECAR_CONTAINER: &str = "shunt-sidecar";
/// Default identity header used by `--header auto`.
pub const DEFAULT_IDENTITY_HEADER: &str = "x-shunt-user";
/// Hop header naming the session a request was routed for; removed before any app sees it.
pub const HOP_HEADER_SESSION: &str = "shunt-session";
/// Hop header naming the pod a request was taken from; removed before any app sees it.
pub const HOP_HEADER_POD: &str = "shunt-pod";
/// API group of the aggregated API.
pub const API_GROUP: &str = "api.shunt.dev";
/// API group of the policy CRDs.
pub const POLICY_GROUP: &str = "policy.shunt.dev";
/// Audience of the projected ServiceAccount token sidecars present to the operator.
pub const SIDECAR_TOKEN_AUDIENCE: &str = "shunt.dev/sidecar";
/// Name of the nftables table the sidecar owns in the pod's network namespace.
pub const NFT_TABLE: &str = "shunt";
/// Default port the sidecar's transparent proxy listens on (nftables mode).
pub const DEFAULT_PROXY_PORT: u16 = 15080;
/// Default port of the sidecar's admin HTTP server.
pub const DEFAULT_ADMIN_PORT: u16 = 15090;
/// Pod annotation listing the app ports the sidecar manages (`"8080,9090"`, numbers or
/// container port names); without it, every TCP container port of the pod's containers.
pub const ANNOTATION_PORTS: &str = "shunt.dev/ports";
/// Pod annotation choosing how traffic reaches the sidecar: `nftables` or `port-takeover`.
pub const ANNOTATION_REDIRECT: &str = "shunt.dev/redirect";
