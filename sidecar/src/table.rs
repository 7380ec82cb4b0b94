//! The routing table the data plane reads: routes of a [`RouteSet`] grouped by port.
//!
//! A new table is built whenever a route source publishes a new set and swapped in
//! through a `watch` channel; each request reads the current table, so on a keep-alive
//! connection every request is routed by the routes in force when it arrives.
//! Per-route counters are resolved here once, so the hot path never formats labels.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use shunt_proto::route::{Mode, Route, RouteSet};
use tokio::sync::Semaphore;

use crate::metrics::{Metrics, Outcome, RequestLabels, RouteLabels};

/// Counters of one route, resolved once.
#[derive(Debug)]
pub struct RouteCounters {
    /// Requests answered by the route's upstream.
    pub stolen: Counter,
    /// Requests the app served because the upstream failed before the request was sent.
    pub failed_open: Counter,
    /// Requests that failed after being sent upstream.
    pub upstream_error: Counter,
    /// Mirror copies sent.
    pub mirror_sent: Counter,
    /// Mirror copies dropped.
    pub mirror_dropped: Counter,
}

/// Mirror copies in flight per route; past that, copies are dropped (and counted).
pub const MIRROR_IN_FLIGHT: usize = 64;

/// A route with its counters.
#[derive(Debug)]
pub struct ActiveRoute {
    /// The route as given by the source.
    pub route: Route,
    /// Its counters.
    pub counters: RouteCounters,
    /// Bounds the mirror copies in flight, so a stalled consumer costs bounded memory.
    pub mirror_slots: Arc<Semaphore>,
}

/// Routes of one app port.
#[derive(Debug)]
pub struct PortRoutes {
    /// The app port.
    pub port: u16,
    /// Steal routes; their filters are pairwise disjoint (checked by [`RouteSet::new`]).
    pub steals: Vec<Arc<ActiveRoute>>,
    /// Mirror routes.
    pub mirrors: Vec<Arc<ActiveRoute>>,
    /// Requests served by the app because no steal route matched.
    pub app: Counter,
    /// Requests that matched several steal routes through a repeated header.
    pub ambiguous: Counter,
    /// Requests the app could not serve.
    pub app_error: Counter,
}

impl PortRoutes {
    /// An unfiltered steal owns every byte of the port, HTTP or not.
    pub fn unfiltered_steal(&self) -> Option<&Arc<ActiveRoute>> {
        self.steals.iter().find(|r| r.route.filter.is_none())
    }
}

/// The whole table: port → routes. Ports without routes are absent.
#[derive(Debug, Default)]
pub struct Table {
    ports: HashMap<u16, Arc<PortRoutes>>,
    set: RouteSet,
}

impl Table {
    /// Builds the table for `set`, resolving counters in `metrics`.
    pub fn new(set: RouteSet, metrics: &Metrics) -> Table {
        let mut ports: HashMap<u16, PortRoutes> = HashMap::new();
        for route in set.routes() {
            let port = ports.entry(route.port).or_insert_with(|| PortRoutes {
                port: route.port,
                steals: Vec::new(),
                mirrors: Vec::new(),
                app: request_counter(metrics, "none", route.port, Outcome::app),
                ambiguous: request_counter(metrics, "none", route.port, Outcome::ambiguous),
                app_error: request_counter(metrics, "none", route.port, Outcome::app_error),
            });
            let labels = RouteLabels {
                route: route.id.clone(),
            };
            let active = Arc::new(ActiveRoute {
                route: route.clone(),
                counters: RouteCounters {
                    stolen: request_counter(metrics, &route.id, route.port, Outcome::stolen),
                    failed_open: request_counter(metrics, &route.id, route.port, Outcome::failed_open),
                    upstream_error: request_counter(metrics, &route.id, route.port, Outcome::upstream_error),
                    mirror_sent: metrics.mirror_sent.get_or_create(&labels).clone(),
                    mirror_dropped: metrics.mirror_dropped.get_or_create(&labels).clone(),
                },
                mirror_slots: Arc::new(Semaphore::new(MIRROR_IN_FLIGHT)),
            });
            match route.mode {
                Mode::Steal => port.steals.push(active),
                Mode::Mirror => port.mirrors.push(active),
            }
        }
        metrics.keep_route_series(set.routes().iter().map(|r| (r.id.clone(), r.port)).collect());
        Table {
            ports: ports.into_iter().map(|(p, r)| (p, Arc::new(r))).collect(),
            set,
        }
    }

    /// The routes of `port`, if it has any.
    pub fn port(&self, port: u16) -> Option<Arc<PortRoutes>> {
        self.ports.get(&port).cloned()
    }

    /// Ports that have routes, ascending.
    pub fn ports(&self) -> Vec<u16> {
        self.set.ports()
    }

    /// The route set this table was built from.
    pub fn set(&self) -> &RouteSet {
        &self.set
    }
}

fn request_counter(metrics: &Metrics, route: &str, port: u16, outcome: Outcome) -> Counter {
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.to_owned(),
            port,
            outcome,
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: &str) -> RouteSet {
        RouteSet::from_json(json.as_bytes()).expect("valid routes")
    }

    fn exposition(metrics: &Metrics) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry()).expect("encodes");
        text
    }

    #[test]
    fn series_of_ended_routes_are_removed() {
        let metrics = Metrics::default();
        let alice = set(
            r#"{"routes": [{"id": "alice-1", "port": 8080, "mode": "steal", "filter": "x-user: alice", "upstream": "http://10.0.0.1:9000"},
                           {"id": "carol-1", "port": 8080, "mode": "mirror", "filter": "x-user: alice", "upstream": "http://10.0.0.2:9000"}]}"#,
        );
        let table = Table::new(alice, &metrics);
        table.port(8080).expect("port 8080").steals[0].counters.stolen.inc();
        let text = exposition(&metrics);
        assert!(text.contains(r#"route="alice-1""#), "{text}");
        assert!(
            text.contains(r#"shunt_sidecar_mirror_copies_sent_total{route="carol-1"}"#),
            "{text}"
        );

        // The sessions ended and a new one began: only its series remain (and the
        // per-port series of requests no route took).
        let bob = set(
            r#"{"routes": [{"id": "bob-2", "port": 8080, "mode": "steal", "filter": "x-user: bob", "upstream": "http://10.0.0.3:9000"}]}"#,
        );
        let _table = Table::new(bob, &metrics);
        let text = exposition(&metrics);
        assert!(!text.contains("alice-1") && !text.contains("carol-1"), "{text}");
        assert!(text.contains(r#"route="bob-2""#), "{text}");
        assert!(text.contains(r#"route="none""#), "{text}");

        let _dormant = Table::new(RouteSet::default(), &metrics);
        assert!(!exposition(&metrics).contains("bob-2"));
    }
}
