//! Status-like JSON error answers of the hub (`{"kind": "Status", "code": 403, ...}`),
//! the shape Kubernetes clients already know how to read.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::tunnel::Body;

/// A full body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A Status document with `code`, a machine `reason` and a human `message`.
pub(crate) fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let doc = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code.as_u16(),
        "reason": reason,
        "message": message,
    });
    let mut resp = Response::new(full(format!("{doc}\n")));
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// 404 for a path the hub does not serve.
pub(crate) fn not_found(path: &str) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!(
            "the sidecar hub serves GET {} and relayed requests (with shunt-session), not {path:?}",
            shunt_proto::hub::ROUTES_PATH
        ),
    )
}
