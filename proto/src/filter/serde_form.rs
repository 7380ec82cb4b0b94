//! The JSON form of a filter: structured and externally tagged on output, e.g.
//! `{"all":[{"header":{"name":"x-user","exact":"alice"}},{"path":{"prefix":"/api/"}}]}`;
//! on input also a text-syntax string at any level (`"filter": "x-user: alice"`).
//! Deserialising validates and compiles, so a `Filter` is always usable.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::compile::Pos;
use super::syntax::is_tchar;
use super::{syntax, Atom, Expr, Filter, FilterError, Key, ValueMatch};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Form {
    Header(HeaderForm),
    Path(ValueForm),
    All(Vec<Node>),
    Any(Vec<Node>),
}

#[derive(Serialize, Deserialize)]
struct HeaderForm {
    name: String,
    #[serde(flatten)]
    value: ValueForm,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ValueForm {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// One element: structured, or a text-syntax string (input only).
enum Node {
    Form(Box<Form>),
    Text(String),
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Form(form) => form.serialize(s),
            Node::Text(text) => s.serialize_str(text),
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        // Through a JSON value so each branch reports its own precise error
        // (an untagged enum would only say "did not match any variant").
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(text) => Ok(Node::Text(text)),
            other => serde_json::from_value(other)
                .map(|form| Node::Form(Box::new(form)))
                .map_err(D::Error::custom),
        }
    }
}

fn to_form(expr: &Expr) -> Form {
    let nodes = |list: &[Expr]| list.iter().map(|e| Node::Form(Box::new(to_form(e)))).collect();
    match expr {
        Expr::All(list) => Form::All(nodes(list)),
        Expr::Any(list) => Form::Any(nodes(list)),
        Expr::Atom(Atom { key, value }) => {
            let value = match value.clone() {
                ValueMatch::Exact(v) => ValueForm::Exact(v),
                ValueMatch::Prefix(v) => ValueForm::Prefix(v),
                ValueMatch::Regex(v) => ValueForm::Regex(v),
            };
            match key {
                Key::Path => Form::Path(value),
                Key::Header(name) => Form::Header(HeaderForm {
                    name: name.clone(),
                    value,
                }),
            }
        }
    }
}

/// Converts a node to an expression; text nodes are parsed, and their value
/// positions (relative to that text) appended to `positions` so atom order holds.
fn to_expr(node: Node, positions: &mut Vec<Pos>) -> Result<Expr, FilterError> {
    let form = match node {
        Node::Text(text) => {
            let (expr, pos) = syntax::parse(&text)?;
            positions.extend(pos);
            return Ok(expr);
        }
        Node::Form(form) => *form,
    };
    let mut list = |nodes: Vec<Node>, what: &str| -> Result<Vec<Expr>, FilterError> {
        if nodes.is_empty() {
            return Err(FilterError::Syntax {
                at: 0,
                message: format!("'{what}' needs at least one filter"),
            });
        }
        nodes.into_iter().map(|n| to_expr(n, positions)).collect()
    };
    let (key, value) = match form {
        Form::All(nodes) => return Ok(Expr::all(list(nodes, "all")?)),
        Form::Any(nodes) => return Ok(Expr::any(list(nodes, "any")?)),
        Form::Path(value) => (Key::Path, value),
        Form::Header(HeaderForm { name, value }) => (Key::Header(header_name(&name)?), value),
    };
    positions.push(Pos::default());
    let value = match value {
        ValueForm::Exact(v) => ValueMatch::Exact(v),
        ValueForm::Prefix(v) => ValueMatch::Prefix(v),
        ValueForm::Regex(v) => ValueMatch::Regex(v),
    };
    Ok(Expr::Atom(Atom { key, value }))
}

/// Validates and lowercases a structured header name.
fn header_name(name: &str) -> Result<String, FilterError> {
    let error = |at, message: String| Err(FilterError::Syntax { at, message });
    if name.is_empty() {
        return error(0, "empty header name".into());
    }
    if let Some(at) = name.bytes().position(|b| !is_tchar(b)) {
        return error(
            at,
            format!(
                "invalid character in header name {name:?}; header names use letters, \
                 digits and !#$%&'*+-.^_`|~"
            ),
        );
    }
    let lower = name.to_ascii_lowercase();
    if lower == "path" {
        // The text syntax reads `path:` as the request path; keep the forms equal.
        return error(0, "'path' is reserved for the request path; use {\"path\": ...}".into());
    }
    Ok(lower)
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        to_form(self.expr()).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Filter, D::Error> {
        let mut positions = Vec::new();
        let result =
            to_expr(Node::deserialize(d)?, &mut positions).and_then(|expr| Filter::from_expr(expr, &positions));
        result.map_err(D::Error::custom)
    }
}
