//! Decoding of the Kubernetes protobuf encoding for the request bodies kubectl sends
//! with typed clients (`kubectl create namespace|configmap|secret|serviceaccount|
//! rolebinding|token`, `kubectl auth can-i|whoami`). Responses are always JSON, which kubectl
//! accepts. Each supported message is described by its field numbers from the
//! upstream `generated.proto` files; other kinds are refused with 415 and a hint.
//!
//! Envelope: the magic `k8s\0`, then `runtime.Unknown { typeMeta = 1 { apiVersion = 1,
//! kind = 2 }, raw = 2 }`, where `raw` is the object's own message.

use serde_json::{json, Map, Value};

/// How one field decodes.
#[derive(Clone, Copy)]
enum F {
    Str,
    Int,
    Bool,
    Msg(&'static str),
    StrMap,
    BytesMap,
    RepStr,
    RepMsg(&'static str),
}

fn fields(message: &str) -> &'static [(u64, &'static str, F)] {
    use F::*;
    match message {
        "ObjectMeta" => &[
            (1, "name", Str),
            (2, "generateName", Str),
            (3, "namespace", Str),
            (11, "labels", StrMap),
            (12, "annotations", StrMap),
            (14, "finalizers", RepStr),
        ],
        "Namespace" => &[(1, "metadata", Msg("ObjectMeta"))],
        "ConfigMap" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "data", StrMap),
            (3, "binaryData", BytesMap),
            (4, "immutable", Bool),
        ],
        "Secret" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "data", BytesMap),
            (3, "type", Str),
            (4, "stringData", StrMap),
            (5, "immutable", Bool),
        ],
        "ServiceAccount" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (4, "automountServiceAccountToken", Bool),
        ],
        "SelfSubjectAccessReview" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "spec", Msg("SelfSubjectAccessReviewSpec")),
        ],
        "SelfSubjectAccessReviewSpec" => &[
            (1, "resourceAttributes", Msg("ResourceAttributes")),
            (2, "nonResourceAttributes", Msg("NonResourceAttributes")),
        ],
        "ResourceAttributes" => &[
            (1, "namespace", Str),
            (2, "verb", Str),
            (3, "group", Str),
            (4, "version", Str),
            (5, "resource", Str),
            (6, "subresource", Str),
            (7, "name", Str),
        ],
        "NonResourceAttributes" => &[(1, "path", Str), (2, "verb", Str)],
        "SelfSubjectReview" => &[(1, "metadata", Msg("ObjectMeta"))],
        "SelfSubjectRulesReview" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "spec", Msg("SelfSubjectRulesReviewSpec")),
        ],
        "SelfSubjectRulesReviewSpec" => &[(1, "namespace", Str)],
        "TokenRequest" => &[(1, "metadata", Msg("ObjectMeta")), (2, "spec", Msg("TokenRequestSpec"))],
        "TokenRequestSpec" => &[
            (1, "audiences", RepStr),
            (3, "boundObjectRef", Msg("BoundObjectReference")),
            (4, "expirationSeconds", Int),
        ],
        "BoundObjectReference" => &[
            (1, "kind", Str),
            (2, "apiVersion", Str),
            (3, "name", Str),
            (4, "uid", Str),
        ],
        "RoleBinding" | "ClusterRoleBinding" => &[
            (1, "metadata", Msg("ObjectMeta")),
            (2, "subjects", RepMsg("Subject")),
            (3, "roleRef", Msg("RoleRef")),
        ],
        "Subject" => &[
            (1, "kind", Str),
            (2, "apiGroup", Str),
            (3, "name", Str),
            (4, "namespace", Str),
        ],
        "RoleRef" => &[(1, "apiGroup", Str), (2, "kind", Str), (3, "name", Str)],
        _ => &[],
    }
}

/// A body that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProtoError(pub String);

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .0
                .split_first()
                .ok_or_else(|| ProtoError("truncated varint".into()))?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProtoError("varint too long".into()))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let len = self.varint()? as usize;
        if len > self.0.len() {
            return Err(ProtoError("truncated field".into()));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    /// Next (field number, wire type), or None at the end.
    fn tag(&mut self) -> Result<Option<(u64, u64)>, ProtoError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let t = self.varint()?;
        Ok(Some((t >> 3, t & 7)))
    }

    fn skip(&mut self, wire: u64) -> Result<(), ProtoError> {
        match wire {
            0 => self.varint().map(|_| ()),
            1 => self.advance(8),
            2 => self.bytes().map(|_| ()),
            5 => self.advance(4),
            other => Err(ProtoError(format!("unsupported wire type {other}"))),
        }
    }

    fn advance(&mut self, n: usize) -> Result<(), ProtoError> {
        if n > self.0.len() {
            return Err(ProtoError("truncated field".into()));
        }
        self.0 = &self.0[n..];
        Ok(())
    }
}

fn text(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

fn map_entry(b: &[u8], bytes_values: bool) -> Result<(String, Value), ProtoError> {
    let mut r = Reader(b);
    let (mut key, mut value) = (String::new(), Value::String(String::new()));
    while let Some((n, wire)) = r.tag()? {
        match (n, wire) {
            (1, 2) => key = String::from_utf8_lossy(r.bytes()?).into_owned(),
            (2, 2) if bytes_values => {
                use base64::Engine;
                value = Value::String(base64::engine::general_purpose::STANDARD.encode(r.bytes()?));
            }
            (2, 2) => value = text(r.bytes()?),
            (_, w) => r.skip(w)?,
        }
    }
    Ok((key, value))
}

fn message(name: &str, b: &[u8]) -> Result<Value, ProtoError> {
    let spec = fields(name);
    let mut out = Map::new();
    let mut r = Reader(b);
    while let Some((n, wire)) = r.tag()? {
        let Some(&(_, json_name, kind)) = spec.iter().find(|(num, _, _)| *num == n) else {
            r.skip(wire)?;
            continue;
        };
        let key = json_name.to_owned();
        match kind {
            F::Str => {
                out.insert(key, text(r.bytes()?));
            }
            F::Int => {
                out.insert(key, json!(r.varint()? as i64));
            }
            F::Bool => {
                out.insert(key, json!(r.varint()? != 0));
            }
            F::Msg(inner) => {
                out.insert(key, message(inner, r.bytes()?)?);
            }
            F::StrMap | F::BytesMap => {
                let (k, v) = map_entry(r.bytes()?, matches!(kind, F::BytesMap))?;
                out.entry(key).or_insert_with(|| json!({}))[k] = v;
            }
            F::RepStr => {
                let item = text(r.bytes()?);
                if let Some(a) = out.entry(key).or_insert_with(|| json!([])).as_array_mut() {
                    a.push(item);
                }
            }
            F::RepMsg(inner) => {
                let item = message(inner, r.bytes()?)?;
                if let Some(a) = out.entry(key).or_insert_with(|| json!([])).as_array_mut() {
                    a.push(item);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a `k8s\0`-enveloped protobuf body into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ProtoError> {
    let raw = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| ProtoError("missing the k8s protobuf envelope".into()))?;
    let mut r = Reader(raw);
    let (mut api_version, mut kind, mut object) = (String::new(), String::new(), &[][..]);
    while let Some((n, wire)) = r.tag()? {
        match (n, wire) {
            (1, 2) => {
                let mut tm = Reader(r.bytes()?);
                while let Some((n, w)) = tm.tag()? {
                    match (n, w) {
                        (1, 2) => api_version = String::from_utf8_lossy(tm.bytes()?).into_owned(),
                        (2, 2) => kind = String::from_utf8_lossy(tm.bytes()?).into_owned(),
                        (_, w) => tm.skip(w)?,
                    }
                }
            }
            (2, 2) => object = r.bytes()?,
            (_, w) => r.skip(w)?,
        }
    }
    if fields(&kind).is_empty() {
        return Err(ProtoError(format!(
            "kubesim decodes protobuf bodies only for the kinds kubectl's typed commands send; {kind} is not one of them: send JSON (Content-Type: application/json)"
        )));
    }
    let mut obj = message(&kind, object)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Ok(obj)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn field(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_namespace_in_its_envelope() {
        let meta = field(1, b"shop");
        let ns = field(1, &meta);
        let type_meta = [field(1, b"v1"), field(2, b"Namespace")].concat();
        let body = [b"k8s\0".to_vec(), field(1, &type_meta), field(2, &ns)].concat();
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
        );
        assert!(decode(b"garbage").is_err());
    }
}
