//! RFC 6902 JSON Patch operations over RFC 6901 JSON pointers, built one fine-grained
//! operation at a time.
//!
//! [`PatchBuilder`] owns a working copy of the document and applies every operation to it
//! as it records it. That is what lets later steps see earlier ones (a label map created
//! for the first label is not created again for the second) and what guarantees that the
//! recorded operations apply, in order, to the original document: the builder refuses an
//! operation that would not apply. Missing parents are created first (`add` of `{}` or
//! `[]`), so a patch never replaces a whole object that already exists.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// A JSON pointer (RFC 6901), kept as unescaped segments and escaped when printed:
/// `~` becomes `~0` and `/` becomes `~1`, so `shunt.dev/status` is `shunt.dev~1status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pointer {
    segments: Vec<String>,
}

impl Pointer {
    /// The pointer to the whole document (`""`).
    pub fn root() -> Pointer {
        Pointer::default()
    }

    /// A pointer from unescaped segments: `Pointer::new(["metadata", "labels"])`.
    pub fn new<S: Into<String>>(segments: impl IntoIterator<Item = S>) -> Pointer {
        Pointer {
            segments: segments.into_iter().map(Into::into).collect(),
        }
    }

    /// This pointer extended by one (unescaped) object key.
    pub fn key(&self, key: impl Into<String>) -> Pointer {
        let mut next = self.clone();
        next.segments.push(key.into());
        next
    }

    /// This pointer extended by one array index.
    pub fn index(&self, index: usize) -> Pointer {
        self.key(index.to_string())
    }

    /// The pointer of the parent, or `None` for the root.
    pub fn parent(&self) -> Option<Pointer> {
        let (_, parent) = self.segments.split_last()?;
        Some(Pointer::new(parent.iter().cloned()))
    }

    /// The unescaped segments.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in &self.segments {
            f.write_str("/")?;
            // Order matters: `~` first, or the `~` of `~1` would be escaped again.
            f.write_str(&segment.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

impl Serialize for Pointer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// One RFC 6902 operation.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Adds a member, inserts into an array (`-` appends), or sets an existing member.
    Add {
        /// Where.
        path: Pointer,
        /// What.
        value: Value,
    },
    /// Removes a member or array element.
    Remove {
        /// What.
        path: Pointer,
    },
    /// Replaces an existing value.
    Replace {
        /// Where.
        path: Pointer,
        /// The new value.
        value: Value,
    },
}

/// An operation that cannot apply to the working document: a bug in the caller, reported
/// instead of producing a patch the API server would reject.
#[derive(Debug, thiserror::Error)]
#[error("JSON patch {op} {path} does not apply: {why}")]
pub struct PatchError {
    op: &'static str,
    path: String,
    why: &'static str,
}

/// Records operations while applying them to a working copy of the document.
#[derive(Debug)]
pub struct PatchBuilder {
    doc: Value,
    ops: Vec<Op>,
}

impl PatchBuilder {
    /// Starts from `doc`, the document the patch will be applied to.
    pub fn new(doc: Value) -> PatchBuilder {
        PatchBuilder { doc, ops: Vec::new() }
    }

    /// The document with every recorded operation applied.
    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The value at `at` in the working document.
    pub fn get(&self, at: &Pointer) -> Option<&Value> {
        at.segments.iter().try_fold(&self.doc, |value, segment| match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
    }

    /// Records `add` of `value` at `at` (array index `-` appends).
    pub fn add(&mut self, at: Pointer, value: Value) -> Result<(), PatchError> {
        let fail = |why| PatchError {
            op: "add",
            path: at.to_string(),
            why,
        };
        let Some((last, _)) = at.segments.split_last() else {
            return Err(fail("the root cannot be added to"));
        };
        let parent = at.parent().unwrap_or_default();
        match self.get_mut(&parent).ok_or(fail("the parent does not exist"))? {
            Value::Object(map) => {
                map.insert(last.clone(), value.clone());
            }
            Value::Array(items) if last == "-" => items.push(value.clone()),
            Value::Array(items) => match last.parse::<usize>() {
                Ok(i) if i <= items.len() => items.insert(i, value.clone()),
                _ => return Err(fail("bad array index")),
            },
            _ => return Err(fail("the parent is neither an object nor an array")),
        }
        self.ops.push(Op::Add { path: at, value });
        Ok(())
    }

    /// Records `remove` of the value at `at`.
    pub fn remove(&mut self, at: Pointer) -> Result<(), PatchError> {
        let fail = |why| PatchError {
            op: "remove",
            path: at.to_string(),
            why,
        };
        let (last, _) = at.segments.split_last().ok_or(fail("the root cannot be removed"))?;
        let parent = at.parent().unwrap_or_default();
        let removed = match self.get_mut(&parent) {
            Some(Value::Object(map)) => map.remove(last).is_some(),
            Some(Value::Array(items)) => match last.parse::<usize>() {
                Ok(i) if i < items.len() => {
                    items.remove(i);
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !removed {
            return Err(fail("nothing there"));
        }
        self.ops.push(Op::Remove { path: at });
        Ok(())
    }

    /// Records `replace` of the existing value at `at`.
    pub fn replace(&mut self, at: Pointer, value: Value) -> Result<(), PatchError> {
        let slot = self.get_mut(&at).ok_or(PatchError {
            op: "replace",
            path: at.to_string(),
            why: "nothing there",
        })?;
        *slot = value.clone();
        self.ops.push(Op::Replace { path: at, value });
        Ok(())
    }

    /// Makes sure an object exists at `at`, adding `{}` for it and every missing (or
    /// `null`) parent, outermost first.
    pub fn ensure_object(&mut self, at: &Pointer) -> Result<(), PatchError> {
        self.ensure(at, || Value::Object(Default::default()))
    }

    /// Sets `key` of the object at `map` (creating the object if needed) to `value`.
    pub fn set_key(&mut self, map: &Pointer, key: &str, value: Value) -> Result<(), PatchError> {
        self.ensure_object(map)?;
        if self.get(&map.key(key)) == Some(&value) {
            return Ok(());
        }
        self.add(map.key(key), value)
    }

    /// Appends `value` to the array at `array`, creating the array (and its parents) first.
    pub fn push(&mut self, array: &Pointer, value: Value) -> Result<(), PatchError> {
        if let Some(parent) = array.parent() {
            self.ensure_object(&parent)?;
        }
        self.ensure(array, || Value::Array(Vec::new()))?;
        self.add(array.key("-"), value)
    }

    /// The recorded operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// The recorded operations, consuming the builder.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    fn ensure(&mut self, at: &Pointer, empty: impl Fn() -> Value) -> Result<(), PatchError> {
        for depth in 1..=at.segments.len() {
            let prefix = Pointer::new(at.segments[..depth].iter().cloned());
            let leaf = depth == at.segments.len();
            match self.get(&prefix) {
                Some(Value::Null) | None => {
                    let value = if leaf {
                        empty()
                    } else {
                        Value::Object(Default::default())
                    };
                    self.add(prefix, value)?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn get_mut(&mut self, at: &Pointer) -> Option<&mut Value> {
        at.segments
            .iter()
            .try_fold(&mut self.doc, |value, segment| match value {
                Value::Object(map) => map.get_mut(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pointers_escape_tilde_before_slash() {
        let p = Pointer::new(["metadata", "annotations", "a~b/c", "~1"]);
        assert_eq!(p.to_string(), "/metadata/annotations/a~0b~1c/~01");
        assert_eq!(Pointer::root().to_string(), "");
    }

    #[test]
    fn missing_parents_are_created_outermost_first_and_only_once() {
        let mut b = PatchBuilder::new(json!({"metadata": {"labels": null}}));
        let labels = Pointer::new(["metadata", "labels"]);
        b.set_key(&labels, "a/b", json!("1")).unwrap();
        b.set_key(&labels, "c", json!("2")).unwrap();
        b.push(&Pointer::new(["spec", "volumes"]), json!({"name": "v"}))
            .unwrap();
        let ops = serde_json::to_value(b.ops()).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "add", "path": "/metadata/labels", "value": {}},
                {"op": "add", "path": "/metadata/labels/a~1b", "value": "1"},
                {"op": "add", "path": "/metadata/labels/c", "value": "2"},
                {"op": "add", "path": "/spec", "value": {}},
                {"op": "add", "path": "/spec/volumes", "value": []},
                {"op": "add", "path": "/spec/volumes/-", "value": {"name": "v"}},
            ])
        );
        let mut original = json!({"metadata": {"labels": null}});
        let patch: json_patch::Patch = serde_json::from_value(ops).unwrap();
        json_patch::patch(&mut original, &patch).unwrap();
        assert_eq!(&original, b.doc());
    }

    #[test]
    fn operations_that_cannot_apply_are_refused() {
        let mut b = PatchBuilder::new(json!({"a": [1]}));
        assert!(b.remove(Pointer::new(["a", "1"])).is_err());
        assert!(b.replace(Pointer::new(["b"]), json!(1)).is_err());
        assert!(b.add(Pointer::new(["x", "y"]), json!(1)).is_err());
        b.remove(Pointer::new(["a", "0"])).unwrap();
        assert_eq!(b.doc(), &json!({"a": []}));
    }
}
