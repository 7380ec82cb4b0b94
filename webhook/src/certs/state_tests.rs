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
    assert_eq!(state.plan(100, Published::Already, &POLICY), Step::Keep);
    assert_eq!(state.next_check(&POLICY), 700);

    // 1. stage at notAfter - renew_before: served certificate unchanged, bundle = old + new.
    assert_eq!(state.plan(700, Published::Already, &POLICY), Step::Stage);
    let new = issued(700);
    let state = roundtrip(&state.apply(Step::Stage, 700, &POLICY, Some(new.clone())));
    assert_eq!(state.active, old);
    assert_eq!(state.bundle, vec![old.ca.clone(), new.ca.clone()]);
    assert_eq!(state.next.as_ref().unwrap().published_at, None);

    // 2. not promoted while the published caBundle lacks the new CA, however long.
    assert_eq!(state.plan(900, Published::No, &POLICY), Step::Keep);
    // Written at 710: recorded, and the overlap counts from there.
    assert_eq!(state.plan(710, Published::WrittenAt(710), &POLICY), Step::MarkPublished);
    let state = roundtrip(&state.apply(Step::MarkPublished, 710, &POLICY, None));
    assert_eq!(state.next.as_ref().unwrap().published_at, Some(710));
    assert_eq!(state.plan(710, Published::WrittenAt(710), &POLICY), Step::Keep);
    assert_eq!(state.plan(769, Published::Already, &POLICY), Step::Keep);
    assert_eq!(state.next_check(&POLICY), 770);
    assert_eq!(state.plan(770, Published::Already, &POLICY), Step::Promote);
    let state = roundtrip(&state.apply(Step::Promote, 770, &POLICY, None));
    assert_eq!(state.active, new);
    assert!(state.next.is_none());
    assert_eq!(
        state.bundle.len(),
        2,
        "old replicas may still serve the old certificate"
    );

    // 3. the old CA leaves after another overlap.
    assert_eq!(state.plan(829, Published::Already, &POLICY), Step::Keep);
    assert_eq!(state.plan(830, Published::Already, &POLICY), Step::DropPrevious);
    let state = roundtrip(&state.apply(Step::DropPrevious, 830, &POLICY, None));
    assert_eq!(state.bundle, vec![new.ca.clone()]);
    assert_eq!(state.next_check(&POLICY), 700 + 1000 - 300);
}

#[test]
fn a_ca_bundle_reset_and_put_back_after_the_overlap_starts_the_overlap_again() {
    let state = CertState::fresh(issued(0))
        .apply(Step::Stage, 700, &POLICY, Some(issued(700)))
        .apply(Step::MarkPublished, 705, &POLICY, None);
    let state = roundtrip(&state);
    // `helm upgrade` reset the caBundle at 720; a replica puts it back at 800, long after
    // staged_at + overlap and published_at + overlap. API servers have not seen the new
    // CA for a moment: promoting now would break their calls.
    assert_eq!(state.plan(800, Published::WrittenAt(800), &POLICY), Step::MarkPublished);
    let state = roundtrip(&state.apply(Step::MarkPublished, 800, &POLICY, None));
    assert_eq!(state.next_check(&POLICY), 860);
    // The same reconcile, after re-reading the Secret (or another replica's), sees its own
    // write as recorded.
    assert_eq!(state.plan(801, Published::WrittenAt(800), &POLICY), Step::Keep);
    assert_eq!(state.plan(859, Published::Already, &POLICY), Step::Keep);
    assert_eq!(state.plan(860, Published::Already, &POLICY), Step::Promote);
    // An expired certificate is still replaced at once.
    assert_eq!(state.plan(1000, Published::WrittenAt(1000), &POLICY), Step::Promote);
}

#[test]
fn a_staged_certificate_without_a_publication_time_waits_a_full_overlap_from_when_it_is_seen() {
    // Staged by an older version (no shunt.dev/next-published-at annotation) long ago.
    let state = CertState::fresh(issued(0)).apply(Step::Stage, 700, &POLICY, Some(issued(700)));
    let (data, _) = state.encode();
    let annotations = BTreeMap::from([(STAGED_AT.to_owned(), "700".to_owned())]);
    let (state, repaired) = CertState::decode(&data, &annotations).unwrap();
    assert!(!repaired);
    assert_eq!(state.plan(900, Published::Already, &POLICY), Step::MarkPublished);
    let state = state.apply(Step::MarkPublished, 900, &POLICY, None);
    assert_eq!(state.plan(959, Published::Already, &POLICY), Step::Keep);
    assert_eq!(state.plan(960, Published::Already, &POLICY), Step::Promote);
}

#[test]
fn two_places_are_published_only_together_and_since_the_later_write() {
    use Published::{Already, No, WrittenAt};
    assert_eq!(Already.and(Already), Already);
    assert_eq!(Already.and(No), No);
    assert_eq!(WrittenAt(5).and(No), No);
    assert_eq!(Already.and(WrittenAt(5)), WrittenAt(5));
    assert_eq!(WrittenAt(7).and(WrittenAt(5)), WrittenAt(7));
}

#[test]
fn an_expired_served_certificate_is_replaced_without_waiting() {
    let old = issued(0);
    let state = CertState::fresh(old.clone());
    let state = state.apply(Step::Stage, 5000, &POLICY, Some(issued(5000)));
    assert_eq!(state.plan(5000, Published::No, &POLICY), Step::Promote);
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
