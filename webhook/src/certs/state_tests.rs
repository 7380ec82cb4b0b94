#![allow(clippy::unwrap_used)]

use super::*;
use crate::certs::issue::issue;

const POLICY: Policy = Policy {
    validity: 1000,
    renew_before: 300,
    overlap: 60,
};

fn issued(now: i64) -> Issued {
    Issued::parse(issue(&["svc.ns.svc".to_owned()], now, POLICY.validity).unwrap()).unwrap()
}

fn roundtrip(state: &CertState) -> CertState {
    let (data, annotations) = state.encode();
    let annotations = annotations
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?)))
        .collect();
    let (decoded, repaired) = CertState::decode(&data, &annotations).unwrap();
    assert!(!repaired);
    decoded
}

#[test]
fn a_full_rotation_keeps_both_cas_trusted_around_each_switch() {
    let old = issued(0);
    let state = CertState::fresh(old.clone());
    assert_eq!(state.plan(100, &state.bundle, &POLICY), Step::Keep);
    assert_eq!(state.next_check(&POLICY), 700);

    // 1. stage at notAfter - renew_before: served certificate unchanged, bundle = old + new.
    assert_eq!(state.plan(700, &state.bundle, &POLICY), Step::Stage);
    let new = issued(700);
    let state = roundtrip(&state.apply(Step::Stage, 700, &POLICY, Some(new.clone())));
    assert_eq!(state.active, old);
    assert_eq!(state.bundle, vec![old.ca.clone(), new.ca.clone()]);

    // 2. not promoted while the published caBundle lacks the new CA, nor before the overlap.
    assert_eq!(state.plan(900, std::slice::from_ref(&old.ca), &POLICY), Step::Keep);
    assert_eq!(state.plan(759, &state.bundle, &POLICY), Step::Keep);
    assert_eq!(state.next_check(&POLICY), 760);
    assert_eq!(state.plan(760, &state.bundle, &POLICY), Step::Promote);
    let state = roundtrip(&state.apply(Step::Promote, 760, &POLICY, None));
    assert_eq!(state.active, new);
    assert_eq!(
        state.bundle.len(),
        2,
        "old replicas may still serve the old certificate"
    );

    // 3. the old CA leaves after another overlap.
    assert_eq!(state.plan(819, &state.bundle, &POLICY), Step::Keep);
    assert_eq!(state.plan(820, &state.bundle, &POLICY), Step::DropPrevious);
    let state = roundtrip(&state.apply(Step::DropPrevious, 820, &POLICY, None));
    assert_eq!(state.bundle, vec![new.ca.clone()]);
    assert_eq!(state.next_check(&POLICY), 700 + 1000 - 300);
}

#[test]
fn an_expired_served_certificate_is_replaced_without_waiting() {
    let old = issued(0);
    let state = CertState::fresh(old.clone());
    let state = state.apply(Step::Stage, 5000, &POLICY, Some(issued(5000)));
    assert_eq!(state.plan(5000, &[], &POLICY), Step::Promote);
}

#[test]
fn a_damaged_bundle_or_next_is_repaired_but_a_damaged_served_certificate_is_refused() {
    let state = CertState::fresh(issued(0)).apply(Step::Stage, 700, &POLICY, Some(issued(700)));
    let (mut data, _) = state.encode();
    data.insert(CA_BUNDLE.into(), ByteString(b"garbage".to_vec()));
    data.remove("next-tls.key");
    let annotations = BTreeMap::from([(STAGED_AT.to_owned(), "700".to_owned())]);
    let (decoded, repaired) = CertState::decode(&data, &annotations).unwrap();
    assert!(repaired);
    assert!(decoded.next.is_none());
    assert_eq!(decoded.bundle, vec![decoded.active.ca.clone()]);

    data.insert(
        TLS_KEY.into(),
        ByteString(issue(&["x".into()], 0, 10).unwrap().key_pem.into_bytes()),
    );
    let err = CertState::decode(&data, &annotations).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    data.remove(TLS_CRT);
    assert!(CertState::decode(&data, &annotations).is_err());
}

#[test]
fn missing_names_are_the_wanted_names_the_certificate_lacks() {
    let names = ["svc.ns.svc".to_owned(), "10.0.0.7".to_owned()];
    let cert = Issued::parse(issue(&names, 0, 1000).unwrap()).unwrap();
    assert_eq!(cert.names, names);
    let wanted = [
        "SVC.ns.svc".to_owned(),
        "10.0.0.7".to_owned(),
        "shunt-api.ns.svc".to_owned(),
        "::1".to_owned(),
    ];
    assert_eq!(cert.missing_names(&wanted), ["shunt-api.ns.svc", "::1"]);
    assert!(cert.missing_names(&names).is_empty());
}
