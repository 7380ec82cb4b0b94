//! Metrics of the hub (prometheus-client): connected sidecars, relayed requests by
//! outcome, refused sidecars by reason, outbound connections and DNS questions by outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of a relayed request: `relayed`, `unavailable`, `failed`, `refused`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What became of it.
    pub outcome: &'static str,
}

/// Label of a refused sidecar: `no_token`, `invalid_token`, `not_bound`, `pod_mismatch`,
/// `pod_gone`, `not_injected`, `review_failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: &'static str,
}

/// The hub's metrics. Cheap to clone (shared counters).
#[derive(Clone, Debug, Default)]
pub struct HubMetrics {
    /// Sidecars whose routes watch is open.
    pub connected: Gauge,
    /// Relayed requests by outcome.
    pub relayed: Family<OutcomeLabels, Counter>,
    /// Refused sidecar connections by reason.
    pub refused: Family<ReasonLabels, Counter>,
    /// Outbound connections (`CONNECT` on `shunt exec`'s tunnel) by outcome: `connected`,
    /// `denied` (a policy), `dial_failed` (the pod could not connect), `unavailable` (no
    /// pod with a reverse connection), `limit` (too many open), `failed` (the relay broke).
    pub outbound_connects: Family<OutcomeLabels, Counter>,
    /// DNS questions on outbound tunnels by outcome: `resolved`, `not_found`, `denied`,
    /// `unavailable`, `failed`.
    pub outbound_dns: Family<OutcomeLabels, Counter>,
    /// Sidecars whose reverse connection (for outbound traffic) is up.
    pub reverse_connected: Gauge,
}

impl HubMetrics {
    /// Registers the metrics under `shunt_operator_hub_*`.
    pub fn register(&self, registry: &mut Registry) {
        let hub = registry.sub_registry_with_prefix("shunt_operator_hub");
        hub.register(
            "connected_sidecars",
            "Sidecars whose routes watch is open",
            self.connected.clone(),
        );
        hub.register(
            "relayed_requests",
            "Requests relayed from sidecars to CLIs, by outcome",
            self.relayed.clone(),
        );
        hub.register(
            "refused_sidecars",
            "Sidecar requests refused by authentication, by reason",
            self.refused.clone(),
        );
        hub.register(
            "outbound_connects",
            "Outbound connections of shunt exec through a pod, by outcome",
            self.outbound_connects.clone(),
        );
        hub.register(
            "outbound_dns",
            "DNS questions of shunt exec answered by a pod's resolver, by outcome",
            self.outbound_dns.clone(),
        );
        hub.register(
            "reverse_connected_sidecars",
            "Sidecars whose reverse connection for outbound traffic is up",
            self.reverse_connected.clone(),
        );
    }

    /// The metrics alone in the Prometheus text format (for a `/metrics` of their own).
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    pub(crate) fn outcome(&self, outcome: &'static str) {
        self.relayed.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn outbound(&self, outcome: &'static str) {
        self.outbound_connects.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn dns(&self, outcome: &'static str) {
        self.outbound_dns.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }
}
