//! The routes file (`SHUNT_ROUTES_FILE`) as the sidecar reads it, and so also a line of
//! the operator's route stream (both are `RouteSet::from_json`).
//!
//! Invariants: no panic; bad input is an error with a message; what is accepted keeps
//! the route set's rules (unique ids, managed ports, no port 0, at most one steal owner
//! per request on a port), becomes a routing table, and survives both JSON forms (the
//! file's and the stream's line) unchanged.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use shunt_proto::filter::overlap;
use shunt_proto::route::{Mode, RouteSet};
use shunt_sidecar::metrics::Metrics;
use shunt_sidecar::source;
use shunt_sidecar::table::Table;

/// The ports the sidecar manages in this harness (the seeds use them).
const APP_PORTS: &[u16] = &[8080, 9090];

fuzz_target!(|data: &[u8]| {
    let set = match source::parse(Path::new("routes.json"), data, APP_PORTS) {
        Ok(set) => set,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    let mut ids = HashSet::new();
    for route in set.routes() {
        assert!(ids.insert(route.id.as_str()), "duplicate id {:?} accepted", route.id);
        assert!(
            APP_PORTS.contains(&route.port),
            "unmanaged port {} accepted",
            route.port
        );
    }
    let steals: Vec<_> = set.routes().iter().filter(|r| r.mode == Mode::Steal).collect();
    for (i, first) in steals.iter().enumerate() {
        for second in steals[i + 1..].iter().filter(|r| r.port == first.port) {
            match (&first.filter, &second.filter) {
                (Some(a), Some(b)) => assert!(
                    overlap(a, b).is_none(),
                    "overlapping steals {:?} and {:?} accepted",
                    first.id,
                    second.id
                ),
                _ => panic!("an unfiltered steal shares port {} with another steal", first.port),
            }
        }
    }
    for text in [set.to_json(), set.to_json_line()] {
        match RouteSet::from_json(text.as_bytes()) {
            Ok(again) => assert_eq!(again, set, "{text} re-parses to another route set"),
            Err(e) => panic!("{text} does not re-parse: {e}"),
        }
    }
    // A fresh registry per input: route ids are metric labels.
    let table = Table::new(set.clone(), &Metrics::default());
    assert_eq!(table.ports(), set.ports());
    for port in set.ports() {
        let routes = table.port(port).expect("a port with routes has a table entry");
        let on_port = set.routes().iter().filter(|r| r.port == port).count();
        assert_eq!(routes.steals.len() + routes.mirrors.len(), on_port);
    }
});
