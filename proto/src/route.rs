//! The route model: what a sidecar is told to do with the traffic of one app port.
//!
//! Two sources speak it: the routes file (`SHUNT_ROUTES_FILE`, see [`RouteSet::from_json`])
//! and, later, the operator's route stream. Both go through [`RouteSet::new`], so the
//! invariants the data plane relies on hold whatever the source:
//! - route ids are unique;
//! - on one port, the filters of steal routes are pairwise disjoint ([`crate::filter::overlap`]),
//!   so a request has at most one steal owner;
//! - an unfiltered steal is the only steal route on its port.
//!
//! Mirror routes never conflict with anything.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::filter::{DisjointIndex, Filter, Witness};

/// What a route does with the requests its filter matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The request goes to the route's upstream instead of the app.
    Steal,
    /// The app serves the request; the upstream gets a copy.
    Mirror,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Steal => "steal",
            Mode::Mirror => "mirror",
        })
    }
}

/// One route: requests to `port` that match `filter` are stolen or mirrored to `upstream`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique id (a session name, for operator routes); used in metrics and logs.
    pub id: String,
    /// The app port whose traffic this route applies to.
    pub port: u16,
    /// Steal or mirror.
    pub mode: Mode,
    /// Which requests the route takes; `None` means all of them (an unfiltered steal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// Where matched requests (or their copies) go, e.g. `http://10.0.0.1:9000`.
    pub upstream: Upstream,
}

/// The destination of a route.
///
/// Written as a string: `http://host:port` for an address the sidecar dials itself, or
/// `hub` for routes of operator sessions, whose requests travel over the sidecar's
/// connection to the operator (see [`crate::hub`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Upstream {
    /// An address the sidecar dials (`http://host:port`).
    Http(http::uri::Authority),
    /// The operator, over the sidecar's hub connection.
    Hub,
}

impl Upstream {
    /// `host:port` of an [`Upstream::Http`], as dialled and as sent in `Host`; `None` for the hub.
    pub fn authority(&self) -> Option<&http::uri::Authority> {
        match self {
            Upstream::Http(authority) => Some(authority),
            Upstream::Hub => None,
        }
    }
}

impl TryFrom<String> for Upstream {
    type Error = RouteError;

    fn try_from(text: String) -> Result<Self, RouteError> {
        text.parse()
    }
}

impl From<Upstream> for String {
    fn from(upstream: Upstream) -> String {
        upstream.to_string()
    }
}

impl std::str::FromStr for Upstream {
    type Err = RouteError;

    fn from_str(text: &str) -> Result<Self, RouteError> {
        if text == "hub" {
            return Ok(Upstream::Hub);
        }
        let bad = |why: &str| RouteError::Upstream {
            upstream: text.to_owned(),
            why: why.to_owned(),
        };
        let uri: http::Uri = text.parse().map_err(|_| bad("not a URI"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("the scheme must be http://"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("an upstream has no path or query"));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("missing host"))?;
        if authority.port_u16().is_none() {
            return Err(bad("missing port, e.g. http://10.0.0.1:9000"));
        }
        Ok(Upstream::Http(authority))
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Http(authority) => write!(f, "http://{authority}"),
            Upstream::Hub => f.write_str("hub"),
        }
    }
}

/// A rejected route or route set: says which route and what to change.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The routes document is not valid JSON of the expected shape.
    #[error("invalid routes document: {0}; expected {{\"routes\": [{{\"id\": \"alice\", \"port\": 8080, \"mode\": \"steal\", \"filter\": \"x-user: alice\", \"upstream\": \"http://10.0.0.1:9000\"}}]}}")]
    Json(#[source] serde_json::Error),
    /// An upstream address is not of the form `http://host:port`.
    #[error("invalid upstream {upstream:?}: {why}")]
    Upstream {
        /// The text given.
        upstream: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two routes share an id.
    #[error("route id {0:?} is used twice; ids must be unique")]
    DuplicateId(String),
    /// Port 0 cannot be routed.
    #[error("route {0:?}: port 0 is not a valid app port")]
    PortZero(String),
    /// Two steal routes on one port can both match a request.
    #[error("steal routes {first:?} and {second:?} on port {port} overlap: both match {witness}; make their filters disjoint (e.g. different values of the identity header)")]
    Overlap {
        /// The route already accepted.
        first: String,
        /// The route that conflicts with it.
        second: String,
        /// The port they share.
        port: u16,
        /// A request both filters match.
        witness: Box<Witness>,
    },
    /// An unfiltered steal shares its port with another steal route.
    #[error("route {unfiltered:?} steals all of port {port} without a filter, so it cannot share the port with steal route {other:?}; give it a filter or remove the other route")]
    UnfilteredShared {
        /// The unfiltered steal route.
        unfiltered: String,
        /// The other steal route on that port.
        other: String,
        /// The port.
        port: u16,
    },
}

/// A validated set of routes (see the module docs for the invariants), plus the
/// `outbound` flag of the operator's route stream: `true` while a session on the pod's
/// target has an outbound tunnel open (`shunt exec`), so the sidecar keeps its reverse
/// connection to the operator up ([`crate::hub::REVERSE_PATH`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteSet {
    routes: Vec<Route>,
    outbound: bool,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RoutesDocument {
    routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    outbound: bool,
}

impl RouteSet {
    /// Validates `routes`; the first violated invariant is returned as the error.
    pub fn new(routes: Vec<Route>) -> Result<RouteSet, RouteError> {
        let mut ids = HashSet::new();
        // Per port: the steal routes so far (by position), the unfiltered one if any, and
        // an index of their filters (not every pair is compared: 10,000 routes on a port
        // would be 50 million overlap checks).
        let mut steals: BTreeMap<u16, PortSteals> = BTreeMap::new();
        for (i, route) in routes.iter().enumerate() {
            if !ids.insert(route.id.as_str()) {
                return Err(RouteError::DuplicateId(route.id.clone()));
            }
            if route.port == 0 {
                return Err(RouteError::PortZero(route.id.clone()));
            }
            if route.mode == Mode::Steal {
                let (on_port, unfiltered, index) = steals.entry(route.port).or_default();
                if let Some(u) = unfiltered {
                    return Err(unfiltered_shared(&routes[*u], route));
                }
                match &route.filter {
                    None => match on_port.first() {
                        Some(&other) => return Err(unfiltered_shared(route, &routes[other])),
                        None => *unfiltered = Some(i),
                    },
                    Some(filter) => {
                        if let Some((&other, witness)) = index.first_overlap(filter) {
                            return Err(RouteError::Overlap {
                                first: routes[other].id.clone(),
                                second: route.id.clone(),
                                port: route.port,
                                witness: Box::new(witness),
                            });
                        }
                        index.insert(i, filter.clone());
                    }
                }
                on_port.push(i);
            }
        }
        Ok(RouteSet {
            routes,
            outbound: false,
        })
    }

    /// Parses and validates a routes document: `{"routes": [...], "outbound": true}`
    /// (`outbound` is optional, `false` when absent).
    pub fn from_json(bytes: &[u8]) -> Result<RouteSet, RouteError> {
        let doc: RoutesDocument = serde_json::from_slice(bytes).map_err(RouteError::Json)?;
        Ok(RouteSet::new(doc.routes)?.with_outbound(doc.outbound))
    }

    /// Serializes to the routes document form accepted by [`RouteSet::from_json`].
    pub fn to_json(&self) -> String {
        // Serializing plain structs with string keys cannot fail.
        serde_json::to_string_pretty(&self.document()).unwrap_or_default()
    }

    /// The document on one line, as the operator streams it (ndjson, without the newline).
    pub fn to_json_line(&self) -> String {
        // Serializing plain structs with string keys cannot fail.
        serde_json::to_string(&self.document()).unwrap_or_default()
    }

    fn document(&self) -> RoutesDocument {
        RoutesDocument {
            routes: self.routes.clone(),
            outbound: self.outbound,
        }
    }

    /// The same routes with the `outbound` flag set to `outbound`.
    pub fn with_outbound(mut self, outbound: bool) -> RouteSet {
        self.outbound = outbound;
        self
    }

    /// Whether the sidecar must keep its reverse connection for outbound traffic up.
    pub fn outbound(&self) -> bool {
        self.outbound
    }

    /// All routes, in the order given.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The distinct ports that have at least one route, ascending.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.routes.iter().map(|r| r.port).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// True when there is nothing to route: the sidecar is dormant (it may still serve
    /// outbound connections, see [`RouteSet::outbound`]).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The steal routes of one port so far (by position), the unfiltered one, their filters.
type PortSteals = (Vec<usize>, Option<usize>, DisjointIndex<usize>);

fn unfiltered_shared(unfiltered: &Route, other: &Route) -> RouteError {
    RouteError::UnfilteredShared {
        unfiltered: unfiltered.id.clone(),
        other: other.id.clone(),
        port: unfiltered.port,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn doc(routes: &str) -> Result<RouteSet, RouteError> {
        RouteSet::from_json(format!("{{\"routes\": [{routes}]}}").as_bytes())
    }

    const ALICE: &str = r#"{"id": "alice", "port": 8080, "mode": "steal", "filter": "x-user: alice", "upstream": "http://10.0.0.1:9000"}"#;
    const BOB: &str =
        r#"{"id": "bob", "port": 8080, "mode": "steal", "filter": "x-user: bob", "upstream": "http://10.0.0.2:9000"}"#;

    #[test]
    fn accepts_disjoint_steals_and_a_mirror() {
        let mirror = r#"{"id": "carol", "port": 8080, "mode": "mirror", "filter": "x-user: ~.", "upstream": "http://10.0.0.3:9000"}"#;
        let set = doc(&format!("{ALICE}, {BOB}, {mirror}")).unwrap();
        assert_eq!(set.routes().len(), 3);
        assert_eq!(set.ports(), vec![8080]);
        assert_eq!(RouteSet::from_json(set.to_json().as_bytes()).unwrap(), set);
    }

    #[test]
    fn refuses_overlapping_steals_with_a_witness() {
        let al = r#"{"id": "al", "port": 8080, "mode": "steal", "filter": "x-user: ~^al", "upstream": "http://10.0.0.2:9000"}"#;
        let err = doc(&format!("{ALICE}, {al}")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("\"alice\" and \"al\""), "{text}");
        assert!(text.contains("alice"), "{text}");
        assert!(matches!(err, RouteError::Overlap { port: 8080, .. }));
    }

    #[test]
    fn same_filters_on_different_ports_do_not_conflict() {
        let other_port = ALICE.replace("\"alice\", \"port\": 8080", "\"alice2\", \"port\": 9090");
        doc(&format!("{ALICE}, {other_port}")).unwrap();
    }

    #[test]
    fn unfiltered_steal_needs_the_port_alone() {
        let all = r#"{"id": "all", "port": 8080, "mode": "steal", "upstream": "http://10.0.0.2:9000"}"#;
        doc(all).unwrap();
        let err = doc(&format!("{ALICE}, {all}")).unwrap_err();
        assert!(matches!(err, RouteError::UnfilteredShared { .. }), "{err}");
    }

    #[test]
    fn names_the_problem_in_bad_documents() {
        let dup = doc(&format!("{ALICE}, {ALICE}")).unwrap_err();
        assert!(dup.to_string().contains("used twice"));
        let bad_mode = doc(&ALICE.replace("steal", "stael")).unwrap_err();
        assert!(bad_mode.to_string().contains("unknown variant"), "{bad_mode}");
        let bad_upstream = doc(&ALICE.replace("http://10.0.0.1:9000", "https://x:1")).unwrap_err();
        assert!(bad_upstream.to_string().contains("scheme"), "{bad_upstream}");
        let no_port = doc(&ALICE.replace("http://10.0.0.1:9000", "http://x")).unwrap_err();
        assert!(no_port.to_string().contains("missing port"), "{no_port}");
        let bad_filter = doc(&ALICE.replace("x-user: alice", "x-user: ~(")).unwrap_err();
        assert!(bad_filter.to_string().contains("regex"), "{bad_filter}");
        assert!(RouteSet::from_json(b"{").is_err());
        assert!(RouteSet::from_json(b"{\"routes\": []}").unwrap().is_empty());
    }

    #[test]
    fn the_outbound_flag_round_trips_and_is_absent_when_false() {
        let plain = doc(ALICE).unwrap();
        assert!(!plain.outbound());
        assert!(!plain.to_json_line().contains("outbound"));
        let flagged = plain.clone().with_outbound(true);
        assert_ne!(flagged, plain, "a flag change is a change the operator must stream");
        let line = flagged.to_json_line();
        assert!(line.ends_with(",\"outbound\":true}") && !line.contains('\n'), "{line}");
        assert_eq!(RouteSet::from_json(line.as_bytes()).unwrap(), flagged);
        assert_eq!(RouteSet::from_json(flagged.to_json().as_bytes()).unwrap(), flagged);
        let dormant = RouteSet::from_json(br#"{"routes": [], "outbound": true}"#).unwrap();
        assert!(dormant.is_empty() && dormant.outbound());
        assert!(RouteSet::from_json(br#"{"routes": [], "outbound": "yes"}"#).is_err());
    }
}
