//! Property tests: overlap is exact (witnesses match both filters; a request
//! matching both implies an overlap), symmetric; Display round-trips; parsing
//! arbitrary text never panics.
#![allow(clippy::unwrap_used)]

use http::Request;
use proptest::prelude::*;

use super::*;

/// Small alphabets so random filters and requests often collide.
fn literal() -> impl Strategy<Value = String> {
    "[abc/]{0,4}"
}

fn regex() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a", "b", "c", "/", "[ab]", ".", "c*", "a+", "^", "$", "(a|bc)", "[^a]", "b?",
    ]);
    prop::collection::vec(piece, 1..5).prop_map(|pieces| pieces.concat())
}

fn atom() -> impl Strategy<Value = Expr> {
    let key = prop_oneof![
        Just(Key::Path),
        Just(Key::Header("x".into())),
        Just(Key::Header("y".into())),
    ];
    let path_like = || (any::<bool>(), literal()).prop_map(|(slash, v)| if slash { format!("/{v}") } else { v });
    let value = prop_oneof![
        path_like().prop_map(ValueMatch::Exact),
        path_like().prop_map(ValueMatch::Prefix),
        regex().prop_map(ValueMatch::Regex),
    ];
    (key, value).prop_map(|(key, value)| Expr::Atom(Atom { key, value }))
}

fn expr() -> impl Strategy<Value = Expr> {
    atom().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Expr::all),
            prop::collection::vec(inner, 1..4).prop_map(Expr::any),
        ]
    })
}

fn filter() -> impl Strategy<Value = Filter> {
    expr().prop_filter_map("filter over the limits", |e| Filter::from_expr(e, &[]).ok())
}

/// A request with one value per header (the model `overlap` decides).
fn request() -> impl Strategy<Value = http::request::Parts> {
    let header = || prop::option::of(literal());
    (literal(), header(), header()).prop_map(|(path, x, y)| {
        let mut builder = Request::get(format!("/{path}"));
        for (name, value) in [("x", x), ("y", y)] {
            if let Some(value) = value {
                builder = builder.header(name, value);
            }
        }
        builder.body(()).unwrap().into_parts().0
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn witnesses_match_both_and_overlap_is_symmetric(a in filter(), b in filter()) {
        let ab = overlap(&a, &b);
        let ba = overlap(&b, &a);
        prop_assert_eq!(ab.is_some(), ba.is_some());
        for w in ab.iter().chain(ba.iter()) {
            let parts = w.to_parts();
            prop_assert_eq!(parts.uri.path(), w.path.as_str());
            prop_assert!(a.matches(&parts), "{} does not match {}", w, a);
            prop_assert!(b.matches(&parts), "{} does not match {}", w, b);
        }
    }

    #[test]
    fn requests_matching_both_imply_overlap(
        a in filter(),
        b in filter(),
        requests in prop::collection::vec(request(), 16),
    ) {
        for parts in &requests {
            if a.matches(parts) && b.matches(parts) {
                prop_assert!(
                    overlap(&a, &b).is_some(),
                    "{} {:?} matches {} and {}", parts.uri, parts.headers, a, b
                );
            }
        }
    }

    #[test]
    fn a_satisfiable_filter_overlaps_itself(a in filter(), parts in request()) {
        if a.matches(&parts) {
            prop_assert!(overlap(&a, &a).is_some());
        }
    }

    #[test]
    fn display_round_trips(a in filter()) {
        let text = a.to_string();
        let back = Filter::parse(&text);
        prop_assert!(back.is_ok(), "{:?}: {:?}", text, back);
        prop_assert_eq!(back.unwrap(), a.clone());
        let json = serde_json::to_string(&a).unwrap();
        prop_assert_eq!(serde_json::from_str::<Filter>(&json).unwrap(), a);
    }

    #[test]
    fn the_index_finds_an_overlap_exactly_when_some_held_filter_overlaps(
        held in prop::collection::vec(filter(), 0..12),
        removed in prop::collection::vec(any::<bool>(), 12),
        new in filter(),
    ) {
        let mut index = DisjointIndex::new();
        for (i, f) in held.iter().enumerate() {
            index.insert(i, f.clone());
        }
        for (i, gone) in removed.iter().enumerate().take(held.len()) {
            if *gone {
                prop_assert!(index.remove(&i).is_some());
            }
        }
        let naive = held
            .iter()
            .enumerate()
            .filter(|(i, _)| !removed[*i])
            .find_map(|(i, f)| overlap(&new, f).map(|w| (i, w)));
        let indexed = index.first_overlap(&new).map(|(i, w)| (*i, w));
        prop_assert_eq!(indexed, naive);
    }

    #[test]
    fn parse_never_panics(text in any::<String>()) {
        let _ = Filter::parse(&text);
    }

    #[test]
    fn parse_of_syntax_soup_round_trips(text in r#"[a-c:&|()~^= "\\/.*$]{0,24}"#) {
        if let Ok(filter) = Filter::parse(&text) {
            prop_assert_eq!(Filter::parse(&filter.to_string()).unwrap(), filter);
        }
    }
}
