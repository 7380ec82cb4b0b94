//! The HTTPS front of the API server: TLS with optional client certificates, HTTP/1.1
//! and HTTP/2 (kubectl and kube-rs use both), authentication, authorization, then
//! dispatch to discovery, aggregation or the REST verbs.

pub mod discovery;
pub mod openapi;
pub mod path;
pub mod printers;
pub mod protobuf;
pub mod rest;
pub mod table;
pub mod watch;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::api::{Api, User};
use crate::auth::{self, Attributes};
use crate::status::ApiError;

/// Response body of every answer (whole or streamed).
pub type Body = BoxBody<Bytes, std::io::Error>;

/// A whole JSON answer.
pub fn json(status: StatusCode, value: &Value) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(value.to_string()))
            .map_err(|e: Infallible| match e {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A `Status` answer for `err`.
pub fn error(err: &ApiError) -> Response<Body> {
    json(err.code, &err.to_status())
}

/// A streamed body fed by a channel (watches, logs).
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(api: Arc<Api>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        if *api.outage.borrow() {
            // "Down": the connection is closed before a byte is read.
            drop(stream);
            continue;
        }
        let (api, acceptor) = (api.clone(), acceptor.clone());
        tokio::spawn(async move {
            let mut outage = api.outage.subscribe();
            tokio::select! {
                () = serve_connection(api, acceptor, stream, peer) => {}
                // Cut like a crashed API server: no response, no graceful close.
                _ = outage.wait_for(|down| *down) => {}
            }
        });
    }
}

async fn serve_connection(api: Arc<Api>, acceptor: TlsAcceptor, stream: tokio::net::TcpStream, peer: SocketAddr) {
    let Ok(tls) = acceptor.accept(stream).await else { return };
    let cert_user = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| user_from_cert(c.as_ref()));
    let service = service_fn(move |req| handle(api.clone(), cert_user.clone(), peer, req));
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await;
}

/// CN = user, O = groups (how kube-apiserver reads client certificates).
fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    groups.push("system:authenticated".into());
    Some(User {
        name,
        groups,
        ..User::default()
    })
}

/// The audience tokens need to authenticate to the API server itself.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

fn authenticate(api: &Api, cert_user: Option<User>, req: &Request<Incoming>) -> Option<User> {
    if let Some(user) = cert_user {
        return Some(user);
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .trim();
    // A token for someone else (e.g. shunt.dev/sidecar) is not an API credential.
    crate::auth::authenticate_token(api, token, &[API_AUDIENCE.to_owned()])
        .ok()
        .map(|(user, _)| user)
}

async fn handle(
    api: Arc<Api>,
    cert_user: Option<User>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let public = matches!(path.as_str(), "/healthz" | "/livez" | "/readyz" | "/version");
    let user = match authenticate(&api, cert_user, &req) {
        Some(user) => user,
        None if public => User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..User::default()
        },
        None => return Ok(error(&ApiError::unauthorized())),
    };
    let params = path::query(req.uri().query());
    let watch = params.get("watch").is_some_and(|w| w == "true" || w == "1");
    let info = path::parse(req.method(), &path, watch);
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let resp = route(api, user.clone(), peer, info, params, req).await;
    tracing::debug!(%method, %path, user = %user.name, status = resp.status().as_u16(), elapsed = ?started.elapsed(), "request");
    Ok(resp)
}

async fn route(
    api: Arc<Api>,
    user: User,
    peer: SocketAddr,
    info: path::RequestInfo,
    params: std::collections::HashMap<String, String>,
    req: Request<Incoming>,
) -> Response<Body> {
    if let Some(target) = crate::aggregator::target(&api, &info) {
        let attrs = attributes(&info, req.uri().path());
        if let Err(e) = auth::authorize(&api, &user, &attrs) {
            return error(&e);
        }
        return crate::aggregator::proxy(&api, &user, target, req).await;
    }
    if !info.is_resource {
        let attrs = Attributes {
            verb: req.method().as_str().to_lowercase(),
            path: Some(req.uri().path().to_owned()),
            ..Attributes::default()
        };
        if let Err(e) = auth::authorize(&api, &user, &attrs) {
            return error(&e);
        }
        if req.uri().path() == "/openapi/v2" {
            return openapi::v2(req.headers());
        }
        return discovery::answer(&api, req.uri().path(), peer).unwrap_or_else(|| {
            error(&ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ))
        });
    }
    let mut attrs = attributes(&info, req.uri().path());
    if attrs.name.is_empty() && matches!(attrs.verb.as_str(), "list" | "watch") {
        // A single-object list/watch is authorized by name (RBAC resourceNames), as in kube-apiserver.
        attrs.name = params
            .get("fieldSelector")
            .and_then(|s| auth::name_from_field_selector(s))
            .unwrap_or_default();
    }
    if let Err(e) = auth::authorize(&api, &user, &attrs) {
        return error(&e);
    }
    rest::handle(api, user, info, params, req).await
}

fn attributes(info: &path::RequestInfo, path: &str) -> Attributes {
    if !info.is_resource {
        return Attributes {
            verb: "get".into(),
            path: Some(path.to_owned()),
            ..Attributes::default()
        };
    }
    Attributes {
        verb: info.verb.clone(),
        group: info.group.clone(),
        resource: info.resource.clone(),
        subresource: info.subresource.clone(),
        namespace: info.namespace.clone(),
        name: info.name.clone(),
        path: None,
    }
}

/// Reads a whole request body (bounded: 8 MiB, like kube-apiserver's default limit order).
pub async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    const LIMIT: usize = 8 * 1024 * 1024;
    let limited = http_body_util::Limited::new(req.into_body(), LIMIT);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(_) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "request body too large or unreadable",
        )),
    }
}

/// Reads a request body as a JSON object (JSON, or protobuf for the kinds kubectl's
/// typed commands send).
pub async fn read_object(req: Request<Incoming>) -> Result<Value, ApiError> {
    let protobuf = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/vnd.kubernetes.protobuf"));
    let bytes = read_body(req).await?;
    let value: Value = if protobuf {
        protobuf::decode(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                e.to_string(),
            )
        })?
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?
    };
    if !value.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(value)
}
