//! The text syntax: a recursive-descent parser with byte positions in its errors,
//! and the canonical printer that parses back to an equal filter.

use std::fmt;

use super::compile::Pos;
use super::{Atom, Expr, FilterError, Key, ValueMatch};

/// Parentheses deeper than this are rejected, so hostile input cannot overflow the
/// stack (here, in Display, or in compilation).
const MAX_DEPTH: usize = 64;

const EXAMPLE: &str = "write 'name: value', e.g. 'x-user: alice' or 'path: /api/'";

/// Parses `text`; also returns where each atom's value starts, in pre-order.
pub(crate) fn parse(text: &str) -> Result<(Expr, Vec<Pos>), FilterError> {
    let mut p = Parser {
        src: text.as_bytes(),
        text,
        pos: 0,
        atoms: Vec::new(),
    };
    let expr = p.or(0)?;
    p.skip_ws();
    if let Some(&c) = p.src.get(p.pos) {
        return Err(if c == b')' {
            syntax(p.pos, "unbalanced parenthesis: this ')' closes nothing")
        } else {
            syntax(p.pos, "expected '&&', '||' or the end of the filter")
        });
    }
    Ok((expr, p.atoms))
}

fn syntax(at: usize, message: impl Into<String>) -> FilterError {
    FilterError::Syntax {
        at,
        message: message.into(),
    }
}

/// RFC 9110 `tchar`: what a header name may contain.
pub(crate) fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

struct Parser<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    atoms: Vec<Pos>,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.src.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, token: &[u8]) -> bool {
        self.skip_ws();
        if self.src[self.pos..].starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self, depth: usize) -> Result<Expr, FilterError> {
        let mut items = vec![self.and(depth, None)?];
        while self.eat(b"||") {
            items.push(self.and(depth, Some("||"))?);
        }
        Ok(Expr::any(items))
    }

    fn and(&mut self, depth: usize, after: Option<&str>) -> Result<Expr, FilterError> {
        let mut items = vec![self.primary(depth, after)?];
        while self.eat(b"&&") {
            items.push(self.primary(depth, Some("&&"))?);
        }
        Ok(Expr::all(items))
    }

    fn primary(&mut self, depth: usize, after: Option<&str>) -> Result<Expr, FilterError> {
        self.skip_ws();
        let start = self.pos;
        match self.src.get(start) {
            None => Err(syntax(
                start,
                match after {
                    Some(op) => format!("expected a filter after '{op}'; {EXAMPLE}"),
                    None => format!("expected a filter; {EXAMPLE}"),
                },
            )),
            Some(b'(') => {
                if depth >= MAX_DEPTH {
                    return Err(syntax(start, "parentheses nested too deeply (at most 64)"));
                }
                self.pos += 1;
                let inner = self.or(depth + 1)?;
                if self.eat(b")") {
                    Ok(inner)
                } else {
                    Err(syntax(start, "unbalanced parenthesis: this '(' is never closed"))
                }
            }
            // `&` and `|` are valid in header names; say what was probably meant.
            Some(b'&' | b'|') if self.src[start..].starts_with(b"&&") || self.src[start..].starts_with(b"||") => {
                let op = &self.text[start..start + 2];
                Err(syntax(start, format!("expected a filter before '{op}'; {EXAMPLE}")))
            }
            Some(_) => self.atom().map(Expr::Atom),
        }
    }

    fn atom(&mut self) -> Result<Atom, FilterError> {
        let start = self.pos;
        while self.src.get(self.pos).copied().is_some_and(is_tchar) {
            self.pos += 1;
        }
        let name = self.text[start..self.pos].to_ascii_lowercase();
        let name_end = self.pos;
        self.skip_ws();
        match self.src.get(self.pos) {
            Some(b':') if name.is_empty() => return Err(syntax(start, format!("empty header name; {EXAMPLE}"))),
            Some(b':') => self.pos += 1,
            Some(&c) if self.pos == name_end && !c.is_ascii_whitespace() => {
                let shown = self.text[self.pos..].chars().next().unwrap_or('?');
                let what = if name.is_empty() { "a filter" } else { "a header name" };
                return Err(syntax(
                    self.pos,
                    format!(
                        "invalid character {shown:?} in {what}; header names use letters, \
                         digits and !#$%&'*+-.^_`|~ ({EXAMPLE})"
                    ),
                ));
            }
            _ => return Err(syntax(self.pos, format!("expected ':' after {name:?}; {EXAMPLE}"))),
        }
        let key = if name == "path" { Key::Path } else { Key::Header(name) };
        self.skip_ws();
        let op = self.src.get(self.pos).copied();
        let explicit = matches!(op, Some(b'=' | b'^' | b'~'));
        if explicit {
            self.pos += 1;
            self.skip_ws();
        }
        self.atoms.push(Pos {
            at: self.pos,
            verbatim: self.src.get(self.pos) != Some(&b'"'),
        });
        let value = self.value()?;
        let value = match (op, &key) {
            (Some(b'^'), _) => ValueMatch::Prefix(value),
            (Some(b'~'), _) => ValueMatch::Regex(value),
            (Some(b'='), _) | (_, Key::Header(_)) => ValueMatch::Exact(value),
            (_, Key::Path) => ValueMatch::Prefix(value),
        };
        Ok(Atom { key, value })
    }

    fn value(&mut self) -> Result<String, FilterError> {
        let start = self.pos;
        if self.src.get(start) == Some(&b'"') {
            let mut i = start + 1;
            loop {
                match self.src.get(i) {
                    None => return Err(syntax(start, "unterminated quoted value")),
                    Some(b'\\') => i += 2,
                    Some(b'"') => break,
                    Some(_) => i += 1,
                }
            }
            self.pos = i + 1;
            return serde_json::from_str(&self.text[start..=i])
                .map_err(|e| syntax(start, format!("invalid quoted value (a JSON string): {e}")));
        }
        let end = scan_unquoted(self.src, start);
        self.pos = end;
        let value = self.text[start..end].trim_ascii();
        if value.is_empty() {
            return Err(syntax(
                start,
                format!("empty value; {EXAMPLE}, or '\"\"' for an empty value"),
            ));
        }
        Ok(value.to_owned())
    }
}

/// Where an unquoted value starting at `start` ends: at the end of input, before
/// `&&`/`||` with whitespace before and whitespace or the end after, or at a `)`
/// that closes nothing opened inside the value (`\)` does not count).
fn scan_unquoted(src: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < src.len() {
        match src[i] {
            b'\\' => {
                i += 2;
                continue;
            }
            b'(' => depth += 1,
            b')' if depth == 0 => return i,
            b')' => depth -= 1,
            b'&' | b'|'
                if i > 0
                    && src[i - 1].is_ascii_whitespace()
                    && src.get(i + 1) == Some(&src[i])
                    && src.get(i + 2).is_none_or(u8::is_ascii_whitespace) =>
            {
                return i
            }
            _ => {}
        }
        i += 1;
    }
    src.len()
}

/// Whether `value` reads back unchanged when written unquoted before any of the
/// things the printer may put after it (end, ` && `, ` || `, `)`).
fn safe_unquoted(value: &str) -> bool {
    // The printer always puts a space before a value it writes unquoted.
    let open = [b" ", value.as_bytes()].concat();
    let closed = [&open[..], b")"].concat();
    !value.is_empty()
        && value.trim_ascii() == value
        && !value.starts_with('"')
        && scan_unquoted(&open, 1) == open.len()
        && scan_unquoted(&closed, 1) == open.len()
}

/// Prints `expr` canonically; `nested` asks for parentheses around an `Any`.
pub(crate) fn write_expr(f: &mut fmt::Formatter<'_>, expr: &Expr, nested: bool) -> fmt::Result {
    match expr {
        Expr::Atom(atom) => write_atom(f, atom),
        Expr::All(children) => {
            for (i, child) in children.iter().enumerate() {
                if i > 0 {
                    f.write_str(" && ")?;
                }
                write_expr(f, child, true)?;
            }
            Ok(())
        }
        Expr::Any(children) => {
            if nested {
                f.write_str("(")?;
            }
            for (i, child) in children.iter().enumerate() {
                if i > 0 {
                    f.write_str(" || ")?;
                }
                // `&&` binds tighter, so an All inside an Any needs no parentheses.
                write_expr(f, child, false)?;
            }
            if nested {
                f.write_str(")")?;
            }
            Ok(())
        }
    }
}

fn write_atom(f: &mut fmt::Formatter<'_>, atom: &Atom) -> fmt::Result {
    match &atom.key {
        Key::Path => f.write_str("path: ")?,
        Key::Header(name) => write!(f, "{name}: ")?,
    }
    let (op, value, default) = match (&atom.value, &atom.key) {
        (ValueMatch::Exact(v), Key::Header(_)) => ("=", v, true),
        (ValueMatch::Exact(v), Key::Path) => ("=", v, false),
        (ValueMatch::Prefix(v), Key::Path) => ("^", v, true),
        (ValueMatch::Prefix(v), Key::Header(_)) => ("^", v, false),
        (ValueMatch::Regex(v), _) => ("~", v, false),
    };
    // The default operator is implicit unless the value itself starts with an
    // operator character, which would otherwise be read as one.
    if !default || value.starts_with(['=', '^', '~']) {
        f.write_str(op)?;
    }
    if safe_unquoted(value) {
        f.write_str(value)
    } else {
        // A JSON string of a `String` cannot fail to serialise; fall back to Debug
        // (also a quoted form) rather than panic.
        match serde_json::to_string(value) {
            Ok(quoted) => f.write_str(&quoted),
            Err(_) => write!(f, "{value:?}"),
        }
    }
}
