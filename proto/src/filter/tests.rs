//! Unit tests for the filter language: what a user writes, what matches, what the
//! errors say, the JSON form, and overlap examples.
#![allow(clippy::unwrap_used)]

use http::{HeaderMap, HeaderValue, Request};

use super::*;

fn f(text: &str) -> Filter {
    Filter::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

fn err(text: &str) -> String {
    Filter::parse(text).unwrap_err().to_string()
}

fn request(path: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut builder = Request::get(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

#[test]
fn parses_examples_and_prints_canonically() {
    let cases = [
        ("x-user: alice", "x-user: alice"),
        ("path: /api/", "path: /api/"),
        ("X-User:^al", "x-user: ^al"),
        ("path: =/health", "path: =/health"),
        ("x-user: =~tilde", "x-user: =~tilde"),
        ("x-user: \"a && b\"", "x-user: \"a && b\""),
        ("x-user:   spaced out  ", "x-user: spaced out"),
        ("x-user: ~^(a|b)$", "x-user: ~^(a|b)$"),
        (
            "(x-user: alice || x-user: ~^bob-) && path: /api/",
            "(x-user: alice || x-user: ~^bob-) && path: /api/",
        ),
        ("a: 1 || b: 2 && c: 3", "a: 1 || b: 2 && c: 3"),
        ("((a: 1 && (b: 2 && c: 3)))", "a: 1 && b: 2 && c: 3"),
        ("x: \"\"", "x: \"\""),
        ("x: ^\"\"", "x: ^\"\""),
        ("x: f(y)", "x: f(y)"),
        ("(x: ~\\))", "x: ~\\)"),
        ("x: \"a )\"", "x: \"a )\""),
    ];
    for (input, canonical) in cases {
        let filter = f(input);
        assert_eq!(filter.to_string(), canonical, "{input}");
        assert_eq!(f(canonical), filter, "{input}");
        assert_eq!(canonical.parse::<Filter>().unwrap(), filter);
    }
    assert_eq!(
        f("path: /api/").expr(),
        &Expr::Atom(Atom {
            key: Key::Path,
            value: ValueMatch::Prefix("/api/".into()),
        })
    );
    assert_eq!(
        f("x-user: =~tilde").expr(),
        &Expr::Atom(Atom {
            key: Key::Header("x-user".into()),
            value: ValueMatch::Exact("~tilde".into()),
        })
    );
}

#[test]
fn header_names_are_case_insensitive() {
    let filter = f("X-User: alice && x-TEAM: ^a");
    assert_eq!(filter, f("x-user: alice && X-TEAM: ^a"));
    assert_eq!(filter.header_names(), ["x-team", "x-user"]);
    assert!(filter.matches(&request("/", &[("X-USER", "alice"), ("x-team", "ab")])));
    assert!(!filter.matches(&request("/", &[("x-user", "Alice"), ("x-team", "ab")])));
}

#[test]
fn exact_prefix_and_regex() {
    let exact = f("x-user: alice");
    let prefix = f("x-user: ^al");
    let regex = f("x-user: ~bob");
    assert!(exact.matches(&request("/", &[("x-user", "alice")])));
    assert!(!exact.matches(&request("/", &[("x-user", "alice2")])));
    assert!(prefix.matches(&request("/", &[("x-user", "alice2")])));
    assert!(!prefix.matches(&request("/", &[("x-user", "xal")])));
    assert!(regex.matches(&request("/", &[("x-user", "xbobx")])));
    assert!(!regex.matches(&request("/", &[("x-user", "bo")])));
    assert!(f("x-user: ~^al.*$").matches(&request("/", &[("x-user", "alex")])));
    assert!(!f("x-user: ~^al.*$").matches(&request("/", &[("x-user", "pal")])));
    assert!(!exact.matches(&request("/", &[])), "a missing header never matches");
    let path = f("path: /api/");
    assert!(path.matches(&request("/api/v1?x=1", &[])));
    assert!(!path.matches(&request("/ap", &[])));
    assert!(f("path: =/health").matches(&request("/health?full", &[])));
    assert!(!f("path: =/health").matches(&request("/healthz", &[])));
    assert!(f("path: ~^/v[0-9]+/").matches(&request("/v12/x", &[])));
}

#[test]
fn multi_valued_header_matches_if_any_value_does() {
    let filter = f("x-user: alice");
    let mut headers = HeaderMap::new();
    headers.append("x-user", HeaderValue::from_static("bob"));
    headers.append("x-user", HeaderValue::from_static("alice"));
    assert!(filter.matches_head(&"/".parse().unwrap(), &headers));
}

#[test]
fn combinators() {
    let filter = f("(x-user: alice || x-user: ~^bob-) && path: /api/");
    assert!(filter.matches(&request("/api/x", &[("x-user", "bob-1")])));
    assert!(filter.matches(&request("/api/x", &[("x-user", "alice")])));
    assert!(!filter.matches(&request("/web", &[("x-user", "alice")])));
    assert!(!filter.matches(&request("/api/", &[("x-user", "carol")])));
}

#[test]
fn errors_say_where_and_what() {
    assert_eq!(
        err("x: a && : b"),
        "at 8: empty header name; write 'name: value', e.g. 'x-user: alice' or 'path: /api/'"
    );
    assert!(
        err("x-user: ~(a").starts_with("at 9: invalid regex: unclosed group"),
        "{}",
        err("x-user: ~(a")
    );
    assert!(err("x-user: ~a(b").starts_with("at 10: invalid regex: unclosed group"));
    assert_eq!(err("(x: a"), "at 0: unbalanced parenthesis: this '(' is never closed");
    assert_eq!(err("x: a)"), "at 4: unbalanced parenthesis: this ')' closes nothing");
    assert!(
        err("x: a &&").starts_with("at 7: expected a filter after '&&'"),
        "{}",
        err("x: a &&")
    );
    assert!(err("&& x: a").starts_with("at 0: expected a filter before '&&'"));
    assert!(err("x: 1 || || y: 2").starts_with("at 8: expected a filter before '||'"));
    assert!(err("@: a").starts_with("at 0: invalid character '@' in a filter"));
    assert!(err("x@y: a").starts_with("at 1: invalid character '@' in a header name"));
    assert!(err("x y: a").starts_with("at 2: expected ':' after \"x\""));
    assert!(err("x:").starts_with("at 2: empty value"));
    assert!(err("x:   && y: 1").starts_with("at 5: empty value"));
    assert!(err("x: \"abc").starts_with("at 3: unterminated quoted value"));
    assert!(err("").starts_with("at 0: expected a filter"));
    assert!(err(&"(".repeat(100)).contains("nested too deeply"));
    let complex = err("x: ~(a|b)*a(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)(a|b)$");
    assert!(
        complex.starts_with("at 4: regex too complex to prove disjointness (DFA over"),
        "{complex}"
    );
    // Each regex alone fits; together on one key in one alternative they do not.
    let both = err(r"x: ~\w && x: ~^.{0,20}$");
    assert!(both.starts_with("at 14: regex too complex"), "{both}");
    assert!(Filter::parse(r"x: ~\w || x: ~^.{0,20}$").is_ok());
    assert!(err(r"x: ~\bbob").contains("Unicode word boundaries"));
    assert!(Filter::parse(r"x: ~(?-u:\b)bob").is_ok());
    let many = ["(a: 1 || a: 2)"; 9].join(" && ");
    assert_eq!(Filter::parse(&many).unwrap_err(), FilterError::TooLarge);
    let long = ["a: 1"; 65].join(" && ");
    assert_eq!(Filter::parse(&long).unwrap_err(), FilterError::TooLarge);
    assert!(Filter::parse(&["a: 1"; 64].join(" && ")).is_ok());
}

#[test]
fn serde_structured_and_text_forms() {
    let filter = f("x-user: alice && path: /api/");
    let json = serde_json::to_string(&filter).unwrap();
    assert_eq!(
        json,
        r#"{"all":[{"header":{"name":"x-user","exact":"alice"}},{"path":{"prefix":"/api/"}}]}"#
    );
    assert_eq!(serde_json::from_str::<Filter>(&json).unwrap(), filter);
    let text: Filter = serde_json::from_str(r#""x-user: alice && path: /api/""#).unwrap();
    assert_eq!(text, filter);
    let mixed: Filter = serde_json::from_str(r#"{"any":["x: 1",{"header":{"name":"X-B","regex":"^a"}}]}"#).unwrap();
    assert_eq!(mixed, f("x: 1 || x-b: ~^a"));
    let bad = serde_json::from_str::<Filter>(r#""x-user: ~(""#)
        .unwrap_err()
        .to_string();
    assert!(bad.contains("invalid regex"), "{bad}");
    let bad = serde_json::from_str::<Filter>(r#"{"header":{"name":"a b","exact":"x"}}"#);
    assert!(bad.unwrap_err().to_string().contains("invalid character"));
    let bad = serde_json::from_str::<Filter>(r#"{"header":{"name":"path","exact":"x"}}"#);
    assert!(bad.unwrap_err().to_string().contains("reserved"));
    assert!(serde_json::from_str::<Filter>(r#"{"all":[]}"#).is_err());
    assert!(serde_json::from_str::<Filter>(r#"{"nope":1}"#).is_err());
}

fn witness(a: &str, b: &str) -> Option<Witness> {
    let (a, b) = (f(a), f(b));
    let found = overlap(&a, &b);
    assert_eq!(found.is_some(), overlap(&b, &a).is_some(), "symmetric");
    if let Some(w) = &found {
        let parts = w.to_parts();
        assert!(a.matches(&parts) && b.matches(&parts), "{w} must match {a} and {b}");
    }
    found
}

#[test]
fn overlap_examples() {
    assert_eq!(witness("x-user: alice", "x-user: bob"), None);
    let w = witness("x-user: ~^al", "x-user: alice").unwrap();
    assert_eq!(w.headers, [("x-user".to_string(), "alice".to_string())]);
    let w = witness("x-user: alice", "path: /api/").unwrap();
    assert_eq!(w.path, "/api/");
    assert_eq!(w.to_string(), "GET /api/ with x-user: alice");
    let w = witness("x-user: ~^a.*z$", "x-user: ~^a[0-9]+z$").unwrap();
    assert_eq!(w.headers[0].1, "a0z");
    assert_eq!(witness("path: /a/ && x: 1", "path: /b/"), None);
    assert_eq!(
        witness("path: /a/ || x: 1", "path: /b/").unwrap().to_string(),
        "GET /b/ with x: 1"
    );
    assert_eq!(witness("x: ^ab", "x: ^ac"), None);
    assert_eq!(witness("x: ~^a", "x: ~^b"), None);
    assert_eq!(witness("x: ~b$ && x: ~^a", "x: ^a").unwrap().headers[0].1, "ab");
    assert_eq!(witness("path: =/a", "path: ~b"), None);
    assert_eq!(witness("y: 1", "z: 2").unwrap().to_string(), "GET / with y: 1, z: 2");
    assert_eq!(witness("x: ~é", "x: ^a").unwrap().headers[0].1, "aé");
    // Values a request cannot carry: space in a path, trailing space in a header.
    assert_eq!(witness("path: =/a b", "path: /"), None);
    assert_eq!(witness("x: ~^a $", "x: ~^a"), None);
    assert_eq!(witness("x: ~\"^a \"", "x: ~^a").unwrap().headers[0].1, "a a");
    assert_eq!(witness("path: ~[^/]$", "path: ~^/$"), None);
    assert_eq!(witness("path: ~x", "path: ~^/$"), None);
}
