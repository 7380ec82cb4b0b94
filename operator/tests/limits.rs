//! Resource limits of the session registry: 10,000 steal sessions with distinct exact
//! header filters on one port of one workload are admitted in bounded time (overlap is
//! not checked pair by pair), the overlap guarantee still holds among them, and the
//! routes of a pod (computed on every change, for every connected pod) stay cheap.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use shunt_operator::registry::{Refusal, Registry, Session};
use shunt_proto::filter::Filter;
use shunt_proto::route::Mode;
use shunt_proto::session::{SessionPort, SessionSpec, SessionStatus};

const SESSIONS: usize = 10_000;

fn session(name: &str, mode: Mode, filter: Option<&str>) -> Session {
    Session {
        namespace: "shop".into(),
        name: name.into(),
        uid: name.into(),
        user: name.into(),
        groups: vec![],
        spec: SessionSpec {
            target: "deployment/api".parse().unwrap(),
            mode,
            filter: filter.map(|f| Filter::parse(f).unwrap()),
            ports: vec![SessionPort { port: 8080 }],
        },
        selector: BTreeMap::from([("app".into(), "api".into())]),
        created: SystemTime::now(),
        status: SessionStatus::default(),
    }
}

fn user(i: usize) -> String {
    format!("user-{i:05}")
}

#[test]
fn ten_thousand_exact_header_sessions_on_one_port_are_admitted_fast_and_stay_disjoint() {
    let registry = Registry::default();
    let started = Instant::now();
    for i in 0..SESSIONS {
        let filter = format!("x-shunt-user: {}", user(i));
        registry.create(session(&user(i), Mode::Steal, Some(&filter))).unwrap();
    }
    let created = started.elapsed();
    eprintln!(
        "{SESSIONS} sessions created in {created:?} ({:?} per session)",
        created / SESSIONS as u32
    );
    // Pair by pair this is 50 million overlap checks (minutes in a debug build).
    assert!(created < Duration::from_secs(20), "took {created:?}");

    // The guarantee holds: a duplicate value, a regex that matches one of them, a filter
    // on another header (a request may carry both) and an unfiltered steal are refused.
    let refused = |name: &str, filter: Option<&str>| {
        let t = Instant::now();
        let err = registry.create(session(name, Mode::Steal, filter)).unwrap_err();
        eprintln!("{filter:?} refused in {:?}: {err}", t.elapsed());
        err
    };
    let err = refused("dup", Some("x-shunt-user: user-09999"));
    assert!(
        matches!(&err, Refusal::Overlap { other, .. } if other == "user-09999"),
        "{err}"
    );
    let err = refused("re", Some("x-shunt-user: ~^user-0999[89]$"));
    assert!(
        matches!(&err, Refusal::Overlap { other, .. } if other == "user-09998"),
        "{err}"
    );
    let err = refused("team", Some("x-team: blue"));
    assert!(matches!(err, Refusal::Overlap { .. }), "{err}");
    assert!(err.to_string().contains("x-team: blue"), "{err}");
    let err = refused("any", Some("x-shunt-user: user-00001 || x-shunt-user: newcomer"));
    assert!(
        matches!(&err, Refusal::Overlap { other, .. } if other == "user-00001"),
        "{err}"
    );
    assert!(matches!(refused("all", None), Refusal::PortTaken { .. }));

    // Disjoint newcomers still get in, also with a second condition; mirrors always do.
    let t = Instant::now();
    registry
        .create(session(
            "new",
            Mode::Steal,
            Some("x-shunt-user: newcomer && path: /api"),
        ))
        .unwrap();
    registry.create(session("copy", Mode::Mirror, None)).unwrap();
    eprintln!("a disjoint session admitted in {:?}", t.elapsed());

    // A pod's routes: every session, validated again (the sidecar does the same).
    let api = BTreeMap::from([("app".to_owned(), "api".to_owned())]);
    let t = Instant::now();
    let routes = registry.routes_for_pod("shop", &api);
    let routes_time = t.elapsed();
    eprintln!(
        "routes of one pod ({} routes) in {routes_time:?}",
        routes.routes().len()
    );
    assert_eq!(routes.routes().len(), SESSIONS + 2);
    assert!(routes_time < Duration::from_secs(5), "took {routes_time:?}");

    // Ending a session frees its value (the index forgets it), and only its value.
    registry.delete("shop", "user-05000").unwrap();
    registry
        .create(session("taker", Mode::Steal, Some("x-shunt-user: user-05000")))
        .unwrap();
    let err = refused("late", Some("x-shunt-user: user-05000"));
    assert!(
        matches!(&err, Refusal::Overlap { other, .. } if other == "taker"),
        "{err}"
    );
    registry.delete("shop", "new").unwrap();
    let err = refused("late2", Some("path: /api"));
    assert!(matches!(err, Refusal::Overlap { .. }), "{err}");
}

#[test]
fn an_unfiltered_steal_that_ends_gives_the_port_back() {
    let registry = Registry::default();
    registry.create(session("all", Mode::Steal, None)).unwrap();
    let err = registry
        .create(session("alice", Mode::Steal, Some("x-shunt-user: alice")))
        .unwrap_err();
    assert!(
        matches!(err, Refusal::PortTaken { ref other, .. } if other == "all"),
        "{err}"
    );
    registry.delete("shop", "all").unwrap();
    registry
        .create(session("alice", Mode::Steal, Some("x-shunt-user: alice")))
        .unwrap();
    let err = registry.create(session("all", Mode::Steal, None)).unwrap_err();
    assert!(
        matches!(err, Refusal::PortTaken { ref other, .. } if other == "alice"),
        "{err}"
    );
}
