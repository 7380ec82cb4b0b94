//! Exact overlap of two filters, with a witness request.
//!
//! Both filters are in disjunctive normal form; a pair of alternatives can match one
//! request iff, for the path and for every header either mentions, the languages of
//! all atoms on that key intersect (keys are independent: one value each). Exact and
//! prefix atoms are handled directly; regex DFAs are intersected by a breadth-first
//! search over their product, which yields a shortest value (bytes tried in a
//! readable order). The search only walks bytes a real request can carry (derived
//! once from the `http` crate) and only valid UTF-8, so witnesses are real requests
//! with `String` fields. That loses nothing: regexes are compiled in UTF-8 mode, so
//! each match is valid UTF-8 and self-synchronising; replacing every invalid byte of
//! a matching value by `!` (allowed everywhere, neither word, space nor newline)
//! keeps it matching.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::OnceLock;

use http::{HeaderName, HeaderValue, Request, Uri};
use regex_automata::util::primitives::StateID;
use serde::{Deserialize, Serialize};

use super::compile::{Dfa, Test};
use super::{Filter, Key};

/// A request matched by two filters: `GET {path}` with exactly these headers
/// (each with one value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Witness {
    /// The request path (starts with `/`, no query).
    pub path: String,
    /// `(lowercase name, value)`, sorted by name.
    pub headers: Vec<(String, String)>,
}

impl Witness {
    /// The witness as request parts (`GET`, HTTP/1.1). Fields that are not a valid
    /// path or header (only possible in a hand-made witness) are left out.
    pub fn to_parts(&self) -> http::request::Parts {
        let mut request = Request::new(());
        if let Ok(uri) = self.path.parse::<http::uri::PathAndQuery>().map(Uri::from) {
            *request.uri_mut() = uri;
        }
        for (name, value) in &self.headers {
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
                request.headers_mut().append(name, value);
            }
        }
        request.into_parts().0
    }
}

impl fmt::Display for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GET {}", self.path)?;
        for (i, (name, value)) in self.headers.iter().enumerate() {
            write!(f, "{} {name}: {value}", if i == 0 { " with" } else { "," })?;
        }
        Ok(())
    }
}

/// Some request matching both filters, or `None` iff none exists (under the
/// single-value model described in the module docs of `filter`).
pub fn overlap(a: &Filter, b: &Filter) -> Option<Witness> {
    let (ca, cb) = (a.compiled(), b.compiled());
    for left in &ca.dnf {
        for right in &cb.dnf {
            let mut keys: BTreeMap<&Key, Vec<&Test>> = BTreeMap::new();
            keys.insert(&Key::Path, Vec::new());
            let atoms = left.iter().map(|&i| &ca.atoms[i]);
            for atom in atoms.chain(right.iter().map(|&i| &cb.atoms[i])) {
                keys.entry(&atom.key).or_default().push(&atom.test);
            }
            if let Some(witness) = solve_all(&keys) {
                return Some(witness);
            }
        }
    }
    None
}

fn solve_all(keys: &BTreeMap<&Key, Vec<&Test>>) -> Option<Witness> {
    let mut witness = Witness {
        path: String::new(),
        headers: Vec::new(),
    };
    for (key, tests) in keys {
        let value = solve(key, tests)?;
        // The search only produces valid UTF-8; lossy conversion is never lossy.
        let value = String::from_utf8_lossy(&value).into_owned();
        match key {
            Key::Path => witness.path = value,
            Key::Header(name) => witness.headers.push((name.clone(), value)),
        }
    }
    Some(witness)
}

/// Bytes a value may contain, in the order the search tries them.
struct Alphabet {
    order: Vec<u8>,
    path: bool,
}

fn alphabet(path: bool) -> &'static Alphabet {
    static PATH: OnceLock<Alphabet> = OnceLock::new();
    static HEADER: OnceLock<Alphabet> = OnceLock::new();
    let (cell, allowed): (_, fn(u8) -> bool) = if path {
        (&PATH, path_byte)
    } else {
        (&HEADER, |b| HeaderValue::from_bytes(&[b'x', b, b'x']).is_ok())
    };
    cell.get_or_init(|| {
        let readable = (b'a'..=b'z').chain(b'0'..=b'9').chain([b'-']);
        let rest = (0..=255u8).filter(|b| !b.is_ascii_lowercase() && !b.is_ascii_digit() && *b != b'-');
        Alphabet {
            order: readable.chain(rest).filter(|&b| allowed(b)).collect(),
            path,
        }
    })
}

/// Whether `http` keeps byte `b` in a path. Bytes >= 0x80 count if `http` accepts
/// valid UTF-8 of every length (validity itself is tracked by the search).
fn path_byte(b: u8) -> bool {
    let keeps = |bytes: &[u8]| {
        http::uri::PathAndQuery::try_from(bytes).is_ok_and(|p| p.path().as_bytes() == bytes && p.query().is_none())
    };
    if b.is_ascii() {
        keeps(&[b'/', b, b'x'])
    } else {
        ["/é", "/€", "/😀"].iter().all(|s| keeps(s.as_bytes()))
    }
}

/// Search state besides the DFA states: bit 4 = nothing read yet, bit 3 = last
/// byte was space/tab, bits 0-2 = UTF-8 decoder state (0 = between characters).
const AT_START: u8 = 0x10;
const LAST_WS: u8 = 0x08;

/// UTF-8 decoder: states 1-3 = that many continuation bytes still due; 4-7 = the
/// restricted second byte after E0, ED, F0, F4 (no overlongs, surrogates, > U+10FFFF).
fn utf8_step(state: u8, b: u8) -> Option<u8> {
    Some(match (state, b) {
        (0, 0x00..=0x7F) => 0,
        (0, 0xC2..=0xDF) => 1,
        (0, 0xE0) => 4,
        (0, 0xE1..=0xEC | 0xEE..=0xEF) => 2,
        (0, 0xED) => 5,
        (0, 0xF0) => 6,
        (0, 0xF1..=0xF3) => 3,
        (0, 0xF4) => 7,
        (1, 0x80..=0xBF) => 0,
        (2, 0x80..=0xBF) | (4, 0xA0..=0xBF) | (5, 0x80..=0x9F) => 1,
        (3, 0x80..=0xBF) | (6, 0x90..=0xBF) | (7, 0x80..=0x8F) => 2,
        _ => return None,
    })
}

struct Search<'a> {
    alphabet: &'static Alphabet,
    dfas: Vec<&'a Dfa>,
}

impl Search<'_> {
    /// Feeds one byte; `None` if the value can no longer be valid or match.
    fn step(&self, aux: u8, states: &[StateID], b: u8) -> Option<(u8, Vec<StateID>)> {
        let ws = b == b' ' || b == b'\t';
        let first_ok = if self.alphabet.path { b == b'/' } else { !ws };
        if aux & AT_START != 0 && !first_ok {
            return None;
        }
        let utf8 = utf8_step(aux & 0x07, b)?;
        let mut next = Vec::with_capacity(states.len());
        for (dfa, &s) in self.dfas.iter().zip(states) {
            let n = dfa.step(s, b);
            if dfa.is_dead(n) {
                return None;
            }
            next.push(n);
        }
        Some((utf8 | if ws { LAST_WS } else { 0 }, next))
    }

    fn accepts(&self, aux: u8, states: &[StateID]) -> bool {
        aux & 0x07 == 0
            && aux & LAST_WS == 0
            && !(self.alphabet.path && aux & AT_START != 0)
            && self.dfas.iter().zip(states).all(|(d, &s)| d.accepts_at_end(s))
    }
}

/// A shortest value for `key` passing every test, if any.
fn solve(key: &Key, tests: &[&Test]) -> Option<Vec<u8>> {
    let search = Search {
        alphabet: alphabet(*key == Key::Path),
        dfas: tests
            .iter()
            .filter_map(|t| match t {
                Test::Regex(dfa) => Some(&**dfa),
                _ => None,
            })
            .collect(),
    };
    let mut prefix: &[u8] = &[];
    let mut exact: Option<&[u8]> = None;
    for test in tests {
        match test {
            Test::Exact(v) if exact.is_some_and(|e| e != &v[..]) => return None,
            Test::Exact(v) => exact = Some(v),
            Test::Prefix(p) if p.starts_with(prefix) => prefix = p,
            Test::Prefix(p) if prefix.starts_with(p) => {}
            Test::Prefix(_) => return None,
            Test::Regex(_) => {}
        }
    }
    if let Some(v) = exact {
        // A fixed value: it must be feasible and pass the other tests.
        if !v.starts_with(prefix) {
            return None;
        }
        prefix = v;
    }
    // The prefix is forced: feed it, then search for the rest.
    let mut aux = AT_START;
    let mut states: Vec<StateID> = search.dfas.iter().map(|d| d.start()).collect();
    for &b in prefix {
        if !search.alphabet.order.contains(&b) {
            return None;
        }
        (aux, states) = search.step(aux, &states, b)?;
    }
    if search.accepts(aux, &states) {
        return Some(prefix.to_vec());
    }
    if exact.is_some() {
        return None;
    }
    bfs(&search, aux, states).map(|rest| [prefix, &rest].concat())
}

/// Breadth-first search over (DFA states, aux) for a shortest accepted suffix.
/// Terminates: the state space is finite and bounded by the DFA budgets.
fn bfs(search: &Search<'_>, aux: u8, states: Vec<StateID>) -> Option<Vec<u8>> {
    struct Node {
        parent: usize,
        byte: u8,
        aux: u8,
        states: Vec<StateID>,
    }
    let mut seen = HashSet::from([(aux, states.clone())]);
    let mut nodes = vec![Node {
        parent: 0,
        byte: 0,
        aux,
        states,
    }];
    let mut queue = VecDeque::from([0usize]);
    while let Some(at) = queue.pop_front() {
        for &b in &search.alphabet.order {
            let Some((aux, states)) = search.step(nodes[at].aux, &nodes[at].states, b) else {
                continue;
            };
            if !seen.insert((aux, states.clone())) {
                continue;
            }
            let accepted = search.accepts(aux, &states);
            nodes.push(Node {
                parent: at,
                byte: b,
                aux,
                states,
            });
            if accepted {
                let mut bytes = Vec::new();
                let mut i = nodes.len() - 1;
                while i != 0 {
                    bytes.push(nodes[i].byte);
                    i = nodes[i].parent;
                }
                bytes.reverse();
                return Some(bytes);
            }
            queue.push_back(nodes.len() - 1);
        }
    }
    None
}
