//! The REST verbs on resources: get, list, watch, create, update, patch, delete,
//! deletecollection, and the subresources `status`, `scale`, `log`, `token` and the
//! review resources.

use std::collections::HashMap;
use std::sync::Arc;

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::path::RequestInfo;
use super::{error, json, read_body, read_object, Body};
use crate::api::{Api, DeleteOptions, PatchOptions, User};
use crate::patch::PatchType;
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;

/// Handles a resource request that passed authorization.
pub async fn handle(
    api: Arc<Api>,
    user: User,
    info: RequestInfo,
    params: HashMap<String, String>,
    req: Request<Incoming>,
) -> Response<Body> {
    match dispatch(&api, &user, &info, &params, req).await {
        Ok(resp) => resp,
        Err(e) => error(&e),
    }
}

fn selectors(params: &HashMap<String, String>, rt: &ResourceType) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let fields = FieldSelector::parse_for(
        params.get("fieldSelector").map_or("", String::as_str),
        &rt.group,
        &rt.plural,
        rt.custom,
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    Ok((labels, fields))
}

/// `?dryRun=All` (the only value kube-apiserver knows): validate and admit, store nothing.
fn dry_run(params: &HashMap<String, String>, options: &str) -> Result<bool, ApiError> {
    dry_run_value(params.get("dryRun").map(String::as_str), options)
}

fn dry_run_value(value: Option<&str>, options: &str) -> Result<bool, ApiError> {
    match value {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::invalid(
            options,
            "",
            format!("dryRun: Unsupported value: {other:?}: supported values: \"All\""),
        )),
    }
}

fn with_warnings(mut resp: Response<Body>, warnings: Vec<String>) -> Response<Body> {
    for w in warnings {
        if let Ok(v) = header::HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "'"))) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

async fn dispatch(
    api: &Arc<Api>,
    user: &User,
    info: &RequestInfo,
    params: &HashMap<String, String>,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let rt = api
        .registry
        .lookup(&info.group, &info.version, &info.resource)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        })?;
    let ns = if rt.namespaced { info.namespace.as_str() } else { "" };
    if rt.namespaced && ns.is_empty() && !matches!(info.verb.as_str(), "list" | "watch") && !rt.create_only {
        return Err(ApiError::bad_request(format!(
            "{} is namespaced: the URL needs /namespaces/{{namespace}}/",
            rt.plural
        )));
    }
    if rt.create_only {
        if info.verb != "create" {
            return Err(ApiError::method_not_allowed(format!(
                "{} only supports create",
                rt.plural
            )));
        }
        let body = read_object(req).await?;
        let answer = crate::auth::review(api, user, &rt, ns, body)?;
        return Ok(json(StatusCode::CREATED, &answer));
    }
    let sub = info.subresource.as_str();
    if !sub.is_empty() && !rt.subresources.iter().any(|s| s == sub) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} has no subresource {sub:?}", rt.plural),
        ));
    }
    let name = info.name.as_str();
    match (info.verb.as_str(), sub) {
        ("get", "log") => logs(api, ns, name, params),
        ("get" | "update" | "patch", "scale") => {
            let dry = dry_run(params, "UpdateOptions")?;
            scale(api, user, &rt, ns, name, &info.verb, dry, req).await
        }
        ("create", "token") => {
            let body = read_object(req).await?;
            Ok(json(
                StatusCode::CREATED,
                &crate::auth::token_request(api, ns, name, &body)?,
            ))
        }
        ("get" | "list", "") if super::table::available(&rt) && super::table::wanted(req.headers()) => {
            let (labels, fields) = selectors(params, &rt)?;
            let list = if name.is_empty() {
                api.list(&rt, non_empty(ns), &labels, &fields)
            } else {
                json!({"items": [api.get(&rt, ns, name)?]})
            };
            let items = list["items"].as_array().cloned().unwrap_or_default();
            Ok(json(
                StatusCode::OK,
                &super::table::table(&rt, &items, &list["metadata"]["resourceVersion"]),
            ))
        }
        ("get", _) => Ok(json(StatusCode::OK, &api.get(&rt, ns, name)?)),
        ("list", _) => {
            let (labels, fields) = selectors(params, &rt)?;
            Ok(json(
                StatusCode::OK,
                &api.list(&rt, (!ns.is_empty()).then_some(ns), &labels, &fields),
            ))
        }
        ("watch", _) => {
            let (labels, fields) = selectors(params, &rt)?;
            let as_table = sub.is_empty() && super::table::available(&rt) && super::table::wanted(req.headers());
            let render = super::watch::Render {
                rt: rt.clone(),
                as_table,
            };
            Ok(super::watch::watch(
                api.clone(),
                render,
                ns.to_owned(),
                labels,
                fields,
                params,
                name,
            ))
        }
        ("create", "") => {
            let dry = dry_run(params, "CreateOptions")?;
            let body = read_object(req).await?;
            let (obj, warnings) = api.create_with(user, &rt, ns, body, dry).await?;
            Ok(with_warnings(json(StatusCode::CREATED, &obj), warnings))
        }
        ("update", _) => {
            let dry = dry_run(params, "UpdateOptions")?;
            let body = read_object(req).await?;
            let (obj, warnings) = api.update_with(user, &rt, ns, name, body, non_empty(sub), dry).await?;
            Ok(with_warnings(json(StatusCode::OK, &obj), warnings))
        }
        ("patch", _) => {
            let dry = dry_run(params, "PatchOptions")?;
            let ct = req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let kind = PatchType::from_content_type(&ct)
                .ok_or_else(|| ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})")))?;
            let body = read_body(req).await?;
            let opts = PatchOptions {
                field_manager: params.get("fieldManager").map(String::as_str),
                dry_run: dry,
            };
            let (obj, warnings) = api
                .patch_with(user, &rt, ns, name, kind, &body, non_empty(sub), opts)
                .await?;
            Ok(with_warnings(json(StatusCode::OK, &obj), warnings))
        }
        ("delete", "") => {
            let opts = delete_options(params, &read_body(req).await?)?;
            Ok(json(StatusCode::OK, &api.delete(user, &rt, ns, name, &opts).await?))
        }
        ("deletecollection", "") => {
            let (labels, fields) = selectors(params, &rt)?;
            let opts = delete_options(params, &read_body(req).await?)?;
            Ok(json(
                StatusCode::OK,
                &api.delete_collection(user, &rt, (!ns.is_empty()).then_some(ns), &labels, &fields, &opts)
                    .await?,
            ))
        }
        (verb, sub) => Err(ApiError::method_not_allowed(format!(
            "{verb} is not supported on {}{}{sub}",
            rt.plural,
            if sub.is_empty() { "" } else { "/" }
        ))),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn parse_object(bytes: &[u8]) -> Result<Value, ApiError> {
    let v: Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

/// The options of a delete, from the query or a `DeleteOptions` body (kubectl sends
/// `dryRun: [All]` there).
fn delete_options(params: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut dry = dry_run(params, "DeleteOptions")?;
    for value in body["dryRun"].as_array().into_iter().flatten() {
        dry |= dry_run_value(Some(value.as_str().unwrap_or_default()), "DeleteOptions")?;
    }
    Ok(DeleteOptions {
        propagation: params
            .get("propagationPolicy")
            .cloned()
            .or_else(|| body["propagationPolicy"].as_str().map(str::to_owned)),
        grace_seconds: params
            .get("gracePeriodSeconds")
            .and_then(|g| g.parse().ok())
            .or_else(|| body["gracePeriodSeconds"].as_i64()),
        dry_run: dry,
    })
}

fn logs(api: &Api, ns: &str, name: &str, params: &HashMap<String, String>) -> Result<Response<Body>, ApiError> {
    let pods = api.rt("", "pods")?;
    api.get(&pods, ns, name)?;
    let text = api
        .pod_logs
        .get()
        .and_then(|k| k.logs(ns, name, params.get("container").map(String::as_str)))
        .unwrap_or_default();
    // `follow`, `previous`, `sinceSeconds` and `timestamps` are not emulated (README).
    let text = match params.get("tailLines") {
        Some(n) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("tailLines must be a non-negative integer, not {n:?}")))?;
            crate::kubelet::logs::tail_lines(&text, n).to_owned()
        }
        None => text,
    };
    let mut resp = json(StatusCode::OK, &Value::Null);
    *resp.body_mut() = http_body_util::BodyExt::boxed(http_body_util::BodyExt::map_err(
        http_body_util::Full::new(bytes::Bytes::from(text)),
        |e: std::convert::Infallible| match e {},
    ));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    Ok(resp)
}

#[allow(clippy::too_many_arguments)]
async fn scale(
    api: &Api,
    user: &User,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    verb: &str,
    dry_run: bool,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    if verb != "get" {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let body = read_body(req).await?;
        let mut scale_obj = scale_of(&api.get(rt, ns, name)?);
        match PatchType::from_content_type(&ct) {
            Some(kind) if verb == "patch" => crate::patch::apply(&mut scale_obj, kind, &body)?,
            _ => scale_obj = parse_object(&body)?,
        }
        let replicas = scale_obj["spec"]["replicas"]
            .as_i64()
            .ok_or_else(|| ApiError::invalid("Scale", name, "spec.replicas: Required value"))?;
        let patch = json!({"spec": {"replicas": replicas}}).to_string();
        let opts = PatchOptions {
            field_manager: None,
            dry_run,
        };
        let (obj, _) = api
            .patch_with(user, rt, ns, name, PatchType::Merge, patch.as_bytes(), None, opts)
            .await?;
        return Ok(json(StatusCode::OK, &scale_of(&obj)));
    }
    Ok(json(StatusCode::OK, &scale_of(&api.get(rt, ns, name)?)))
}

fn scale_of(obj: &Value) -> Value {
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"], "resourceVersion": obj["metadata"]["resourceVersion"], "uid": obj["metadata"]["uid"]},
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0)},
    })
}
