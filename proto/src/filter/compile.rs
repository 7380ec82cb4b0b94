//! Compiled form of a filter: one matcher per atom (precomputed `HeaderName`s,
//! literal bytes, minimised dense DFAs for regexes), the expression tree over them
//! for per-request matching, and the disjunctive normal form used by `overlap`.
//!
//! A regex `re` becomes an anchored DFA for the full-string language
//! `(?s-u:.)*(?:re)(?s-u:.)*`, so "the value contains a match" is plain DFA
//! membership: the very same automaton answers `matches` and `overlap`.

use std::collections::{BTreeMap, HashSet};

use http::{HeaderMap, HeaderName, Uri};
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::nfa::thompson;
use regex_automata::util::{primitives::StateID, start};
use regex_automata::{Anchored, MatchKind};
use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, Hir, Repetition};

use super::{Atom, Expr, FilterError, Key, ValueMatch, MAX_ALTERNATIVES, MAX_ATOMS, MAX_DFA_STATES};

/// Caps on intermediate automata (bytes), so a pathological regex fails fast at
/// parse time instead of eating memory; the real limit is `MAX_DFA_STATES`.
const NFA_SIZE_LIMIT: usize = 1 << 20;
const DFA_SIZE_LIMIT: usize = 2 << 20;

/// Where an atom's value was written, for error messages.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pos {
    /// Byte offset of the value.
    pub(crate) at: usize,
    /// Whether offsets inside the value map 1:1 to the input (not a quoted value).
    pub(crate) verbatim: bool,
}

/// A full-string DFA with its anchored start state.
pub(crate) struct Dfa {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
    /// Reachable states (including the dead state), for the overlap budget.
    states: usize,
}

impl Dfa {
    pub(crate) fn start(&self) -> StateID {
        self.start
    }

    pub(crate) fn step(&self, state: StateID, byte: u8) -> StateID {
        self.dfa.next_state(state, byte)
    }

    pub(crate) fn is_dead(&self, state: StateID) -> bool {
        self.dfa.is_dead_state(state)
    }

    /// Whether the input fed so far (ending in `state`) is in the language.
    pub(crate) fn accepts_at_end(&self, state: StateID) -> bool {
        self.dfa.is_match_state(self.dfa.next_eoi_state(state))
    }

    fn accepts(&self, bytes: &[u8]) -> bool {
        let mut state = self.start;
        for &b in bytes {
            state = self.dfa.next_state(state, b);
            if self.dfa.is_dead_state(state) {
                return false;
            }
        }
        self.accepts_at_end(state)
    }

    /// States reachable from the start, stopping once past `limit`.
    fn reachable_states(&self, limit: usize) -> usize {
        let mut seen = HashSet::from([self.start]);
        let mut todo = vec![self.start];
        while let Some(state) = todo.pop() {
            for b in 0..=255u8 {
                let next = self.dfa.next_state(state, b);
                if seen.insert(next) {
                    if seen.len() > limit {
                        return seen.len();
                    }
                    todo.push(next);
                }
            }
        }
        seen.len()
    }
}

/// How one atom tests a value's bytes.
pub(crate) enum Test {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(Box<Dfa>),
}

impl Test {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            Test::Exact(v) => value == &v[..],
            Test::Prefix(p) => value.starts_with(p),
            Test::Regex(dfa) => dfa.accepts(value),
        }
    }
}

/// One compiled atom.
pub(crate) struct Matcher {
    pub(crate) key: Key,
    /// The header to look up (precomputed so matching does not allocate).
    name: Option<HeaderName>,
    pub(crate) test: Test,
}

enum Node {
    Atom(usize),
    All(Vec<Node>),
    Any(Vec<Node>),
}

/// Everything derived from an expression.
pub(crate) struct Compiled {
    pub(crate) atoms: Vec<Matcher>,
    tree: Node,
    /// Alternatives, each a sorted, deduplicated set of atom indices (all must match).
    pub(crate) dnf: Vec<Vec<usize>>,
}

impl Compiled {
    pub(crate) fn new(expr: &Expr, positions: &[Pos]) -> Result<Compiled, FilterError> {
        let mut atoms = Vec::new();
        let mut where_ = Vec::new();
        let tree = build(expr, positions, &mut atoms, &mut where_)?;
        let dnf = dnf(&tree)?;
        check_budget(&atoms, &where_, &dnf)?;
        Ok(Compiled { atoms, tree, dnf })
    }

    pub(crate) fn matches(&self, uri: &Uri, headers: &HeaderMap) -> bool {
        self.eval(&self.tree, uri, headers)
    }

    fn eval(&self, node: &Node, uri: &Uri, headers: &HeaderMap) -> bool {
        match node {
            Node::Atom(i) => {
                let atom = &self.atoms[*i];
                match &atom.name {
                    None => atom.test.matches(uri.path().as_bytes()),
                    Some(name) => headers.get_all(name).iter().any(|v| atom.test.matches(v.as_bytes())),
                }
            }
            Node::All(children) => children.iter().all(|c| self.eval(c, uri, headers)),
            Node::Any(children) => children.iter().any(|c| self.eval(c, uri, headers)),
        }
    }
}

fn build(expr: &Expr, positions: &[Pos], atoms: &mut Vec<Matcher>, where_: &mut Vec<Pos>) -> Result<Node, FilterError> {
    let mut children = |list: &[Expr]| -> Result<Vec<Node>, FilterError> {
        list.iter().map(|e| build(e, positions, atoms, where_)).collect()
    };
    Ok(match expr {
        Expr::All(list) => Node::All(children(list)?),
        Expr::Any(list) => Node::Any(children(list)?),
        Expr::Atom(atom) => {
            if atoms.len() >= MAX_ATOMS {
                return Err(FilterError::TooLarge);
            }
            let pos = positions.get(atoms.len()).copied().unwrap_or_default();
            atoms.push(matcher(atom, pos)?);
            where_.push(pos);
            Node::Atom(atoms.len() - 1)
        }
    })
}

fn matcher(atom: &Atom, pos: Pos) -> Result<Matcher, FilterError> {
    let name = match &atom.key {
        Key::Path => None,
        Key::Header(name) => Some(
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| FilterError::Syntax {
                at: pos.at,
                message: format!("invalid header name {name:?}"),
            })?,
        ),
    };
    let test = match &atom.value {
        ValueMatch::Exact(v) => Test::Exact(v.as_bytes().into()),
        ValueMatch::Prefix(p) => Test::Prefix(p.as_bytes().into()),
        ValueMatch::Regex(re) => Test::Regex(Box::new(compile_regex(re, pos)?)),
    };
    Ok(Matcher {
        key: atom.key.clone(),
        name,
        test,
    })
}

/// Compiles `re` (UTF-8 mode: it can only match valid UTF-8, which `overlap`
/// relies on) into the full-string DFA of `(?s-u:.)*(?:re)(?s-u:.)*`.
pub(crate) fn compile_regex(re: &str, pos: Pos) -> Result<Dfa, FilterError> {
    let regex_error = |offset: usize, message: String| FilterError::Regex {
        at: if pos.verbatim { pos.at + offset } else { pos.at },
        message,
    };
    let hir = regex_syntax::Parser::new().parse(re).map_err(|e| match &e {
        regex_syntax::Error::Parse(e) => regex_error(e.span().start.offset, e.kind().to_string()),
        regex_syntax::Error::Translate(e) => regex_error(e.span().start.offset, e.kind().to_string()),
        other => regex_error(0, other.to_string()),
    })?;
    // Built as a syntax tree, not by pasting strings, so `a)|(b` cannot escape.
    let any_bytes = Hir::repetition(Repetition {
        min: 0,
        max: None,
        greedy: true,
        sub: Box::new(Hir::class(Class::Bytes(ClassBytes::new([ClassBytesRange::new(
            0, 255,
        )])))),
    });
    let full = Hir::concat(vec![any_bytes.clone(), hir, any_bytes]);
    let too_complex = |states| FilterError::TooComplex { at: pos.at, states };
    let nfa = thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .which_captures(thompson::WhichCaptures::None)
                .nfa_size_limit(Some(NFA_SIZE_LIMIT)),
        )
        .build_from_hir(&full)
        .map_err(|_| too_complex(MAX_DFA_STATES + 1))?;
    let dfa = dense::Builder::new()
        .configure(
            dense::Config::new()
                .match_kind(MatchKind::All)
                .start_kind(StartKind::Anchored)
                .minimize(true)
                .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
        )
        .build_from_nfa(&nfa)
        .map_err(|e| {
            if e.is_size_limit_exceeded() {
                too_complex(MAX_DFA_STATES + 1)
            } else {
                // e.g. a Unicode `\b`, which dense DFAs cannot do exactly.
                regex_error(0, format!("{e}; for word boundaries use (?-u:\\b)"))
            }
        })?;
    let start = dfa
        .start_state(&start::Config::new().anchored(Anchored::Yes))
        .map_err(|e| regex_error(0, e.to_string()))?;
    let mut dfa = Dfa { dfa, start, states: 0 };
    dfa.states = dfa.reachable_states(MAX_DFA_STATES);
    if dfa.states > MAX_DFA_STATES {
        return Err(too_complex(dfa.states));
    }
    Ok(dfa)
}

/// Expands to alternatives of atom sets, refusing more than `MAX_ALTERNATIVES`.
fn dnf(node: &Node) -> Result<Vec<Vec<usize>>, FilterError> {
    match node {
        Node::Atom(i) => Ok(vec![vec![*i]]),
        Node::Any(children) => {
            let mut out = Vec::new();
            for child in children {
                out.extend(dnf(child)?);
                if out.len() > MAX_ALTERNATIVES {
                    return Err(FilterError::TooLarge);
                }
            }
            Ok(out)
        }
        Node::All(children) => {
            let mut out: Vec<Vec<usize>> = vec![Vec::new()];
            for child in children {
                let alternatives = dnf(child)?;
                if out.len().saturating_mul(alternatives.len()) > MAX_ALTERNATIVES {
                    return Err(FilterError::TooLarge);
                }
                out = out
                    .iter()
                    .flat_map(|left| {
                        alternatives.iter().map(move |right| {
                            let mut both = left.clone();
                            both.extend(right);
                            both.sort_unstable();
                            both.dedup();
                            both
                        })
                    })
                    .collect();
            }
            Ok(out)
        }
    }
}

/// Refuses a filter whose regexes on one key, within one alternative, need more
/// than `MAX_DFA_STATES` product states: that bound is what keeps `overlap` exact
/// and bounded (it explores at most the product of both filters' budgets).
fn check_budget(atoms: &[Matcher], where_: &[Pos], dnf: &[Vec<usize>]) -> Result<(), FilterError> {
    for alternative in dnf {
        let mut product: BTreeMap<&Key, (usize, usize)> = BTreeMap::new();
        for &i in alternative {
            if let Test::Regex(dfa) = &atoms[i].test {
                let states = dfa.states;
                let entry = product.entry(&atoms[i].key).or_insert((1, i));
                *entry = (entry.0.saturating_mul(states), i);
            }
        }
        if let Some((states, i)) = product.into_values().find(|(s, _)| *s > MAX_DFA_STATES) {
            let at = where_.get(i).map_or(0, |p| p.at);
            return Err(FilterError::TooComplex { at, states });
        }
    }
    Ok(())
}
