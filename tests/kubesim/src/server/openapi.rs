//! OpenAPI v3, as much as clients need: kubectl checks a group-version document for a
//! PATCH operation with the `fieldValidation` parameter (then it validates on the
//! server instead of downloading schemas), and `kubectl explain` reads the schemas of
//! custom resources. Built-in types are listed without schemas (kubectl then uses its
//! compiled-in types for strategic merge patches, as with any server that omits them).

use std::hash::{Hash, Hasher};

use serde_json::{json, Map, Value};

use crate::api::Api;
use crate::resources::ResourceType;

/// `/openapi/v2`: a document without definitions (protobuf for kubectl, which then
/// skips client-side validation of kinds it finds no schema for; JSON otherwise).
pub fn v2(headers: &http::HeaderMap) -> http::Response<super::Body> {
    let protobuf = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("protobuf"));
    if !protobuf {
        let doc = json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.33.0"}, "paths": {}, "definitions": {}});
        return super::json(http::StatusCode::OK, &doc);
    }
    // An empty protobuf message is a valid, empty `openapi_v2.Document`.
    let mut resp = super::json(http::StatusCode::OK, &Value::Null);
    *resp.body_mut() = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
        http_body_util::Full::new(bytes::Bytes::new()),
        |e: std::convert::Infallible| match e {},
    ));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/com.github.proto-openapi.spec.v2.v1.0+protobuf"),
    );
    resp
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: one entry per served group-version, with a content hash.
pub fn index(api: &Api) -> Value {
    let mut paths = Map::new();
    for (group, versions) in api.registry.groups() {
        for version in versions {
            let path = gv_path(&group, &version);
            let hash = group_version(api, &group, &version).map(|doc| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                doc.to_string().hash(&mut h);
                format!("{:016X}", h.finish())
            });
            paths.insert(
                path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", hash.unwrap_or_default())}),
            );
        }
    }
    json!({"paths": paths})
}

fn gvk(t: &ResourceType) -> Value {
    json!([{"group": t.group, "version": t.version, "kind": t.kind}])
}

fn schema_name(t: &ResourceType) -> String {
    let group: Vec<&str> = t.group.split('.').rev().collect();
    format!(
        "{}.{}.{}",
        if t.group.is_empty() {
            "io.k8s.api.core".to_owned()
        } else {
            group.join(".")
        },
        t.version,
        t.kind
    )
}

/// The document of one group-version.
pub fn group_version(api: &Api, group: &str, version: &str) -> Option<Value> {
    let types = api.registry.group_version(group, version);
    if types.is_empty() {
        return None;
    }
    let base = format!("/{}", gv_path(group, version));
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let field_validation = json!({"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true},
        "description": "Ignore, Warn or Strict: how to treat unknown or duplicate fields"});
    for t in &types {
        let scope = if t.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", t.plural)
        } else {
            format!("{base}/{}", t.plural)
        };
        let op = |action: &str, params: Vec<Value>| json!({"x-kubernetes-group-version-kind": gvk(t)[0], "x-kubernetes-action": action, "parameters": params, "responses": {"200": {"description": "OK"}}});
        if t.create_only {
            paths.insert(scope, json!({"post": op("post", vec![field_validation.clone()])}));
            continue;
        }
        paths.insert(
            scope.clone(),
            json!({"get": op("list", vec![]), "post": op("post", vec![field_validation.clone()])}),
        );
        paths.insert(
            format!("{scope}/{{name}}"),
            json!({"get": op("get", vec![]), "put": op("put", vec![field_validation.clone()]), "patch": op("patch", vec![field_validation.clone()]), "delete": op("delete", vec![])}),
        );
        if let Some(schema) = &t.schema {
            let mut s = schema.clone();
            if let Some(props) = s.get_mut("properties").and_then(Value::as_object_mut) {
                props.entry("apiVersion").or_insert(json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
                props.entry("kind").or_insert(json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
                props
                    .entry("metadata")
                    .or_insert(json!({"type": "object", "description": "Standard object's metadata."}));
            }
            s["x-kubernetes-group-version-kind"] = gvk(t);
            schemas.insert(schema_name(t), s);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
