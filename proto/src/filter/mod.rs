//! The HTTP filter language: which requests a developer's session receives.
//!
//! A [`Filter`] combines *atoms* with all/any (no negation). An atom matches one
//! header (name case-insensitive; a header with several field lines matches if any
//! value does; a missing header never matches) or the request path (`uri.path()`,
//! without the query), by exact value, prefix, or regex. Regexes *search*
//! (unanchored, like `Regex::is_match`); anchor them with `^`/`$`.
//!
//! Text syntax (CLI, routes file), `&&` binding tighter than `||`:
//!
//! ```text
//! (x-user: alice || x-user: ~^bob-) && path: /api/
//! ```
//!
//! `name: value` is an exact header match, `path: value` a path prefix; write `=`
//! (exact), `^` (prefix) or `~` (regex) right after the colon to choose, and a value
//! as a JSON string (`x-user: "a && b"`) to include anything. The JSON form is
//! structured (`{"all":[{"header":{"name":"x-user","exact":"alice"}},...]}`) and also
//! accepts a text-syntax string.
//!
//! [`overlap`] decides *exactly* whether two filters can match one request and then
//! returns a [`Witness`] request. Model: each header has at most one value in a
//! witness (multi-valued headers are resolved per request by the sidecar), a header
//! value never starts or ends with space/tab (HTTP parsers trim them), a path starts
//! with `/` and uses the bytes `http::uri::PathAndQuery` accepts (no `?`/`#`).
//!
//! This module owns the public types; `syntax` parses and prints the text form,
//! `serde_form` the JSON form, `compile` builds the automata and matches, `overlap`
//! intersects automata, `index` checks one filter against many without comparing
//! every pair.

mod compile;
mod index;
mod overlap;
#[cfg(test)]
mod proptests;
mod serde_form;
mod syntax;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

pub use index::DisjointIndex;
pub use overlap::{overlap, Witness};

/// Matchers (atoms) one filter may contain; bounds the work of compiling it, which
/// untrusted API input triggers.
pub const MAX_ATOMS: usize = 64;

/// Alternatives a filter may expand to (`a && (b || c)` is two); bounds [`overlap`].
pub const MAX_ALTERNATIVES: usize = 256;

/// Most DFA states the regexes on one key (a header or the path) may have together
/// within one alternative (Unicode `\w` alone needs about 320). Two filters meeting
/// on a key explore at most `9 * MAX_DFA_STATES^2 + 1` product states, so
/// [`overlap`] always terminates with an exact answer in bounded memory.
pub const MAX_DFA_STATES: usize = 400;

/// Why a filter was rejected. Positions are byte offsets into the text given to
/// [`Filter::parse`], or into the offending field of the JSON form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The text does not follow the filter syntax.
    #[error("at {at}: {message}")]
    Syntax {
        /// Byte offset of the problem.
        at: usize,
        /// What went wrong and what is allowed there.
        message: String,
    },
    /// A `~` value is not a valid regex (or uses a feature DFAs lack).
    #[error("at {at}: invalid regex: {message}")]
    Regex {
        /// Byte offset of the problem.
        at: usize,
        /// The regex parser's explanation.
        message: String,
    },
    /// The regexes on one key need too big an automaton to decide overlap exactly.
    #[error(
        "at {at}: regex too complex to prove disjointness (DFA over {states} states, \
         limit {MAX_DFA_STATES}); simplify it, e.g. [a-z0-9_] for \\w, [^/] for ., \
         fewer {{m,n}} repeats"
    )]
    TooComplex {
        /// Byte offset of the regex.
        at: usize,
        /// States needed (at least this many).
        states: usize,
    },
    /// The filter has more than [`MAX_ATOMS`] matchers or expands to more than
    /// [`MAX_ALTERNATIVES`] alternatives.
    #[error(
        "filter too large: at most {MAX_ATOMS} matchers and {MAX_ALTERNATIVES} alternatives \
         once expanded ('a && (b || c)' is two); split it into several filters"
    )]
    TooLarge,
}

/// A parsed and compiled filter. Cloning is cheap (shared, immutable).
#[derive(Clone)]
pub struct Filter {
    inner: Arc<Inner>,
}

struct Inner {
    expr: Expr,
    compiled: compile::Compiled,
}

/// The filter's structure; equality of filters is equality of this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Expr {
    Atom(Atom),
    /// Non-empty, no direct `All` children, never a single child (see `Expr::all`).
    All(Vec<Expr>),
    /// Non-empty, no direct `Any` children, never a single child.
    Any(Vec<Expr>),
}

/// One matcher on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Atom {
    pub(crate) key: Key,
    pub(crate) value: ValueMatch,
}

/// What an atom looks at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Key {
    /// The request path.
    Path,
    /// A header, by lowercase name.
    Header(String),
}

/// How an atom compares the value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum ValueMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

impl Expr {
    /// Builds `All`, flattening nested `All`s and collapsing one child, so that
    /// `a && (b && c)` and `a && b && c` are the same filter and Display round-trips.
    pub(crate) fn all(children: Vec<Expr>) -> Expr {
        Self::combine(children, true)
    }

    /// Builds `Any`, normalised like [`Expr::all`].
    pub(crate) fn any(children: Vec<Expr>) -> Expr {
        Self::combine(children, false)
    }

    fn combine(children: Vec<Expr>, all: bool) -> Expr {
        let mut flat = Vec::with_capacity(children.len());
        for child in children {
            match child {
                Expr::All(inner) if all => flat.extend(inner),
                Expr::Any(inner) if !all => flat.extend(inner),
                other => flat.push(other),
            }
        }
        if flat.len() == 1 {
            if let Some(only) = flat.pop() {
                return only;
            }
        }
        if all {
            Expr::All(flat)
        } else {
            Expr::Any(flat)
        }
    }
}

impl Filter {
    /// Parses the text syntax (see the module docs) and compiles the matchers.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let (expr, positions) = syntax::parse(text)?;
        Filter::from_expr(expr, &positions)
    }

    /// Compiles an expression; `positions[i]` is where the i-th atom's value
    /// (pre-order) was written, for error messages (missing entries count as 0).
    pub(crate) fn from_expr(expr: Expr, positions: &[compile::Pos]) -> Result<Filter, FilterError> {
        let compiled = compile::Compiled::new(&expr, positions)?;
        Ok(Filter {
            inner: Arc::new(Inner { expr, compiled }),
        })
    }

    pub(crate) fn expr(&self) -> &Expr {
        &self.inner.expr
    }

    pub(crate) fn compiled(&self) -> &compile::Compiled {
        &self.inner.compiled
    }

    /// Whether the request matches. Allocation-free.
    pub fn matches(&self, parts: &http::request::Parts) -> bool {
        self.matches_head(&parts.uri, &parts.headers)
    }

    /// Whether a request with this URI and these headers matches. Allocation-free.
    pub fn matches_head(&self, uri: &http::Uri, headers: &http::HeaderMap) -> bool {
        self.inner.compiled.matches(uri, headers)
    }

    /// The lowercase header names the filter looks at, sorted, without duplicates.
    pub fn header_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        collect_names(&self.inner.expr, &mut names);
        names.sort();
        names.dedup();
        names
    }
}

fn collect_names(expr: &Expr, out: &mut Vec<String>) {
    match expr {
        Expr::Atom(Atom {
            key: Key::Header(name), ..
        }) => out.push(name.clone()),
        Expr::Atom(_) => {}
        Expr::All(children) | Expr::Any(children) => {
            children.iter().for_each(|c| collect_names(c, out));
        }
    }
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The text form is what users write and read; the automata are noise.
        f.debug_tuple("Filter").field(&self.to_string()).finish()
    }
}

impl fmt::Display for Filter {
    /// The canonical text syntax: `Filter::parse(&f.to_string()) == Ok(f)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        syntax::write_expr(f, &self.inner.expr, false)
    }
}

impl FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Filter, FilterError> {
        Filter::parse(text)
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        self.inner.expr == other.inner.expr
    }
}

impl Eq for Filter {}
