//! The sidecar's Prometheus metrics, served as text on the admin port.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What happened to one request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are Prometheus snake_case on purpose
pub enum Outcome {
    /// Matched a steal route and was answered by its upstream.
    stolen,
    /// Matched no steal route; served by the app.
    app,
    /// Matched a steal route whose upstream failed before the request was sent: the app served it.
    failed_open,
    /// Matched a steal route whose upstream failed after the request was sent: 502.
    upstream_error,
    /// Matched several steal routes (only possible with a repeated header): the app served it.
    ambiguous,
    /// The app itself could not be reached: 502.
    app_error,
}

/// Labels of a routed request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route id, or `none` for requests no steal route took.
    pub route: String,
    /// The app port.
    pub port: u16,
    /// What happened.
    pub outcome: Outcome,
}

/// Labels of a mirror route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route id.
    pub route: String,
}

/// Labels of a lease renewal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels of an outbound connection or DNS question (`shunt exec`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    /// Connections: `connected`, `dial_failed`, `timeout`, `limit`; DNS: `resolved`, `not_found`.
    pub outcome: &'static str,
}

/// All sidecar metrics, registered once at start.
#[derive(Clone, Default)]
pub struct Metrics {
    /// Requests by route, port and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Mirror copies sent to their upstream.
    pub mirror_sent: Family<RouteLabels, Counter>,
    /// Mirror copies dropped because the mirror consumer was slow or down.
    pub mirror_dropped: Family<RouteLabels, Counter>,
    /// Connections passed through as plain TCP.
    pub tcp_passthrough: Counter,
    /// App ports currently redirected to (or taken over by) the sidecar with routes.
    pub active_ports: Gauge,
    /// Redirect lease renewals by result.
    pub lease_renewals: Family<ResultLabels, Counter>,
    /// Routes file reloads by result.
    pub route_reloads: Family<ResultLabels, Counter>,
    /// Routes currently installed.
    pub routes: Gauge,
    /// Outbound connections dialled for `shunt exec`, by outcome.
    pub outbound: Family<OutboundLabels, Counter>,
    /// DNS questions answered for `shunt exec`, by outcome.
    pub dns_lookups: Family<OutboundLabels, Counter>,
    /// (route id, port) of the routes whose series exist, so that the series of a route
    /// that ended can be removed: every session has a new id, and a sidecar lives long.
    route_series: Arc<Mutex<HashSet<(String, u16)>>>,
}

impl Metrics {
    /// Removes the per-route series of routes not in `live` (the routes of a new table).
    pub fn keep_route_series(&self, live: HashSet<(String, u16)>) {
        let mut known = self.route_series.lock().unwrap_or_else(PoisonError::into_inner);
        let live_ids: HashSet<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
        for (route, port) in known.difference(&live) {
            for outcome in [Outcome::stolen, Outcome::failed_open, Outcome::upstream_error] {
                self.requests.remove(&RequestLabels {
                    route: route.clone(),
                    port: *port,
                    outcome,
                });
            }
            if !live_ids.contains(route.as_str()) {
                let labels = RouteLabels { route: route.clone() };
                self.mirror_sent.remove(&labels);
                self.mirror_dropped.remove(&labels);
            }
        }
        *known = live;
    }

    /// Registers every metric in a new registry.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("shunt_sidecar");
        r.register(
            "requests",
            "HTTP requests by route, port and outcome",
            self.requests.clone(),
        );
        r.register(
            "mirror_copies_sent",
            "Mirror copies sent, by route",
            self.mirror_sent.clone(),
        );
        r.register(
            "mirror_copies_dropped",
            "Mirror copies dropped because the consumer was slow or down, by route",
            self.mirror_dropped.clone(),
        );
        r.register(
            "tcp_passthrough_connections",
            "Connections passed through as plain TCP",
            self.tcp_passthrough.clone(),
        );
        r.register("active_ports", "App ports with routes", self.active_ports.clone());
        r.register(
            "lease_renewals",
            "Redirect lease renewals by result",
            self.lease_renewals.clone(),
        );
        r.register(
            "route_reloads",
            "Route source reloads by result",
            self.route_reloads.clone(),
        );
        r.register("routes", "Routes installed", self.routes.clone());
        r.register(
            "outbound_connections",
            "Outbound connections dialled for shunt exec, by outcome",
            self.outbound.clone(),
        );
        r.register(
            "outbound_dns_lookups",
            "DNS questions answered for shunt exec, by outcome",
            self.dns_lookups.clone(),
        );
        r
    }
}
