//! Globs of policy names (`deployment/payments-*`, `*_PASSWORD`): `*` any run of
//! characters, `?` one character, `[abc]`/`[a-z]`/`[!a-z]` one of a class; everything
//! else literal. Compiled once, matched without allocation.

use std::fmt;

/// A compiled glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Char(char),
    Any,
    Star,
    Class { negated: bool, ranges: Vec<(char, char)> },
}

/// Why a glob does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// The glob is empty.
    #[error("empty glob: write a name or a pattern like payments-*")]
    Empty,
    /// A `[` without its `]`.
    #[error("invalid glob {0:?}: a '[' class is not closed; close it with ']' or remove the '['")]
    Unclosed(String),
    /// A class like `[]` or `[z-a]`.
    #[error("invalid glob {0:?}: a '[...]' class is empty or has a reversed range")]
    BadClass(String),
}

impl Glob {
    /// Compiles `text`.
    pub fn new(text: &str) -> Result<Glob, GlobError> {
        if text.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut parts = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if parts.last() != Some(&Part::Star) {
                        parts.push(Part::Star);
                    }
                }
                '?' => parts.push(Part::Any),
                '[' => {
                    let negated = chars.next_if_eq(&'!').is_some();
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    while let Some(c) = chars.next() {
                        if c == ']' {
                            closed = true;
                            break;
                        }
                        if chars.peek() == Some(&'-') {
                            chars.next();
                            match chars.next() {
                                Some(']') | None => return Err(GlobError::Unclosed(text.into())),
                                Some(hi) if hi < c => return Err(GlobError::BadClass(text.into())),
                                Some(hi) => ranges.push((c, hi)),
                            }
                        } else {
                            ranges.push((c, c));
                        }
                    }
                    if !closed {
                        return Err(GlobError::Unclosed(text.into()));
                    }
                    if ranges.is_empty() {
                        return Err(GlobError::BadClass(text.into()));
                    }
                    parts.push(Part::Class { negated, ranges });
                }
                c => parts.push(Part::Char(c)),
            }
        }
        Ok(Glob {
            text: text.into(),
            parts,
        })
    }

    /// Whether `name` matches the whole glob.
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        // Iterative wildcard matching with one backtrack point (the last `*`).
        let (mut p, mut n) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while n < name.len() {
            let step = match self.parts.get(p) {
                Some(Part::Star) => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                Some(Part::Any) => true,
                Some(Part::Char(c)) => *c == name[n],
                Some(Part::Class { negated, ranges }) => {
                    ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&name[n])) != *negated
                }
                None => false,
            };
            if step {
                p += 1;
                n += 1;
            } else if let Some((sp, sn)) = star {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        self.parts[p..].iter().all(|part| *part == Part::Star)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stars_classes_and_errors() {
        let g = Glob::new("deployment/payments-*").unwrap();
        assert!(g.matches("deployment/payments-api") && g.matches("deployment/payments-"));
        assert!(!g.matches("deployment/orders") && !g.matches("statefulset/payments-db"));
        assert!(Glob::new("*_PASSWORD").unwrap().matches("DB_PASSWORD"));
        assert!(Glob::new("a*b*c").unwrap().matches("aXbYbZc") && !Glob::new("a*b*c").unwrap().matches("acb"));
        assert!(Glob::new("api-v[0-9]").unwrap().matches("api-v2"));
        assert!(!Glob::new("api-v[!0-9]").unwrap().matches("api-v2"));
        assert!(Glob::new("?pi").unwrap().matches("api") && !Glob::new("?pi").unwrap().matches("pi"));
        assert_eq!(
            Glob::new("payments-[").unwrap_err(),
            GlobError::Unclosed("payments-[".into())
        );
        assert!(matches!(Glob::new("[z-a]"), Err(GlobError::BadClass(_))));
        assert!(matches!(Glob::new("[]"), Err(GlobError::BadClass(_))));
        assert_eq!(Glob::new(""), Err(GlobError::Empty));
    }
}
