//! The filter language (`shunt-proto`): parse, print, JSON form, match, overlap.
//!
//! Input: up to three parts separated by the byte `0xFF` (never part of UTF-8 text):
//! filter A, filter B, and a request written as a path line followed by `name: value`
//! lines. Invariants, on whatever parses:
//! - nothing panics;
//! - `Display` and the JSON form re-parse to an equal filter;
//! - overlap is symmetric, its witness is a real request (every field survives
//!   `to_parts`) that both filters match;
//! - a request in overlap's model (one value per header, values without surrounding
//!   blanks) that matches both filters proves they overlap.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shunt_proto::filter::{overlap, Filter};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0xFF);
    let a = parts.next().and_then(parse);
    let b = parts.next().and_then(parse);
    let request = parts.next().and_then(request);
    for filter in [&a, &b].into_iter().flatten() {
        round_trips(filter);
        if let Some(req) = &request {
            let _ = filter.matches(req);
        }
    }
    let (Some(a), Some(b)) = (a, b) else { return };
    let ab = overlap(&a, &b);
    assert_eq!(
        ab.is_some(),
        overlap(&b, &a).is_some(),
        "overlap is not symmetric for {a} and {b}"
    );
    if let Some(witness) = &ab {
        let parts = witness.to_parts();
        assert_eq!(
            parts.uri.path(),
            witness.path,
            "witness path is not a real path: {witness}"
        );
        assert_eq!(
            parts.headers.len(),
            witness.headers.len(),
            "witness header is not a real header: {witness}"
        );
        assert!(
            a.matches(&parts),
            "{a} does not match its own overlap witness {witness}"
        );
        assert!(
            b.matches(&parts),
            "{b} does not match its own overlap witness {witness}"
        );
    }
    if let Some(req) = request.filter(in_model) {
        if a.matches(&req) && b.matches(&req) {
            assert!(ab.is_some(), "{a} and {b} both match {req:?} but overlap says disjoint");
        }
    }
});

fn parse(bytes: &[u8]) -> Option<Filter> {
    Filter::parse(std::str::from_utf8(bytes).ok()?).ok()
}

fn round_trips(filter: &Filter) {
    let text = filter.to_string();
    match Filter::parse(&text) {
        Ok(again) => assert_eq!(&again, filter, "Display form {text:?} re-parses to another filter"),
        Err(e) => panic!("Display form {text:?} of a parsed filter does not parse: {e}"),
    }
    let json = serde_json::to_string(filter).expect("a filter serialises");
    match serde_json::from_str::<Filter>(&json) {
        Ok(again) => assert_eq!(&again, filter, "JSON form {json} re-parses to another filter"),
        Err(e) => panic!("JSON form {json} of a parsed filter does not parse: {e}"),
    }
}

/// `GET path` with the given header lines; `None` when any of it is not valid HTTP.
fn request(bytes: &[u8]) -> Option<http::request::Parts> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.split('\n');
    let mut builder = http::Request::get(lines.next()?);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        builder = builder.header(name, value.trim_start());
    }
    Some(builder.body(()).ok()?.into_parts().0)
}

/// The requests overlap decides about: one value per header, no surrounding blanks,
/// a path that starts with `/`.
fn in_model(req: &http::request::Parts) -> bool {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    req.uri.path().starts_with('/')
        && req
            .headers
            .keys()
            .all(|name| req.headers.get_all(name).iter().count() == 1)
        && req.headers.values().all(|v| {
            let v = v.as_bytes();
            v.first().is_none_or(|b| !blank(b)) && v.last().is_none_or(|b| !blank(b))
        })
}
