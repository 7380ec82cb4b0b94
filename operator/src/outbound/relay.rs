//! The CLI's outbound tunnel (`sessions/{name}/tunnel?dir=outbound`): the CLI is the
//! HTTP/2 client, the operator the server. Requests:
//!
//! - `CONNECT host:port` → 200 and a byte stream dialled by a pod of the target; 403
//!   `{"message"}` naming the policy and rule that forbid it; 502 when the pod cannot
//!   connect (its error); 503 when no pod has a reverse connection up, or the tunnel has
//!   [`MAX_CONNECTS`] connections open already.
//! - `GET /dns?name=<name>` → the pod resolver's answer, relayed as the sidecar gave it
//!   (200 `{"addresses": [...]}` or 404 `{"message"}`); 403 under `block: [outgoing]`.
//!
//! While the tunnel is open the session counts as having outbound traffic
//! ([`Registry::set_outbound`]), which makes its pods' sidecars dial their reverse
//! connection. When policies need a destination's addresses (a CIDR rule), a name is
//! first resolved by the pod that will dial it and the pod is then told to dial the
//! checked address, so what was checked is what is dialled.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shunt_proto::hub::{encode_query_value, query_value, DNS_PATH};
use shunt_proto::policy::outgoing::Destination;
use shunt_proto::session::TargetRef;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;

use super::Picked;
use crate::hub::HubState;
use crate::policy::{exposure, Policies, Target};
use crate::registry::Registry;
use crate::tunnel::Body;

/// Connections one outbound tunnel may hold open at once.
pub const MAX_CONNECTS: usize = 256;
/// How long the pod may take to answer a CONNECT (it dials with a shorter timeout).
const POD_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the pod may take to answer a DNS question.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer body read from a sidecar (DNS answers, error messages).
const MAX_ANSWER: usize = 64 * 1024;
const KEEPALIVE: Duration = Duration::from_secs(10);

/// What an outbound tunnel needs from the operator.
#[derive(Clone)]
pub struct OutboundCtx {
    /// Sessions (and their outbound count).
    pub registry: Registry,
    /// Reverse connections and metrics.
    pub hub: HubState,
    /// The policies, if the operator enforces them.
    pub policies: Option<Policies>,
    /// The operator's client (the target's labels for the policies).
    pub client: kube::Client,
}

struct Tunnel {
    ctx: OutboundCtx,
    namespace: String,
    name: String,
    target: TargetRef,
    /// The target as policies see it, read when the tunnel opened (or why it could not be).
    policy_target: Option<Result<Target, String>>,
    limit: Arc<Semaphore>,
}

/// Marks the session as having an outbound tunnel while alive.
struct OutboundOpen {
    registry: Registry,
    namespace: String,
    name: String,
}

impl Drop for OutboundOpen {
    fn drop(&mut self) {
        self.registry.set_outbound(&self.namespace, &self.name, false);
    }
}

/// Serves the outbound tunnel of session `namespace/name` on `io` until the CLI closes it
/// or the session ends.
pub async fn serve<T>(io: T, ctx: OutboundCtx, namespace: &str, name: &str)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Some(session) = ctx.registry.get(namespace, name) else {
        return;
    };
    let policy_target = match &ctx.policies {
        None => None,
        Some(p) => Some(
            p.target(&ctx.client, namespace, &session.spec.target)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot read the target for the outgoing policies");
                    format!(
                        "cannot read {} to check the outgoing policies; reopen the tunnel later",
                        session.spec.target
                    )
                }),
        ),
    };
    ctx.registry.set_outbound(namespace, name, true);
    let _open = OutboundOpen {
        registry: ctx.registry.clone(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    };
    let mut changes = ctx.registry.changes();
    let registry = ctx.registry.clone();
    let tunnel = Arc::new(Tunnel {
        ctx,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        target: session.spec.target,
        policy_target,
        limit: Arc::new(Semaphore::new(MAX_CONNECTS)),
    });
    let service = hyper::service::service_fn(move |req| {
        let tunnel = tunnel.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(&tunnel, req).await) }
    });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE)
        .keep_alive_timeout(KEEPALIVE * 2)
        .max_concurrent_streams(u32::try_from(MAX_CONNECTS * 2).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tracing::info!(session.namespace = %namespace, session.name = %name, "outbound tunnel connected");
    let mut shutting_down = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                match result {
                    Ok(()) => tracing::info!(session.namespace = %namespace, session.name = %name, "outbound tunnel closed"),
                    Err(error) => tracing::info!(session.namespace = %namespace, session.name = %name, %error, "outbound tunnel ended"),
                }
                return;
            }
            changed = changes.changed(), if !shutting_down => {
                if changed.is_err() || registry.get(namespace, name).is_none() {
                    tracing::info!(session.namespace = %namespace, session.name = %name, "session ended: closing its outbound tunnel");
                    conn.as_mut().graceful_shutdown();
                    shutting_down = true;
                }
            }
        }
    }
}

/// A JSON `{"message": ...}` answer.
pub(crate) fn message(code: StatusCode, text: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": text }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *resp.status_mut() = code;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn empty() -> Body {
    Full::new(Bytes::new()).map_err(|never| match never {}).boxed()
}

async fn handle(tunnel: &Tunnel, req: Request<Incoming>) -> Response<Body> {
    if req.method() == Method::CONNECT {
        let dest = req.uri().authority().map(ToString::to_string).unwrap_or_default();
        let span = tracing::info_span!("outbound.connect", session.name = %tunnel.name, dest = %dest, pod.name = tracing::field::Empty);
        return tracing::Instrument::instrument(connect(tunnel, req), span).await;
    }
    if req.method() == Method::GET && req.uri().path() == DNS_PATH {
        return dns(tunnel, &req).await;
    }
    message(
        StatusCode::NOT_FOUND,
        &format!(
            "the outbound tunnel serves CONNECT host:port and GET {DNS_PATH}?name=<name>, not {} {}",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The policies and the target, or the answer that says why they cannot be checked.
/// A refusal before anything was relayed: status and message (see [`message`]).
type Refusal = (StatusCode, String);

fn refused((code, text): Refusal) -> Response<Body> {
    message(code, &text)
}

fn policy_view(tunnel: &Tunnel) -> Result<Option<(Vec<crate::policy::Policy>, &Target)>, Refusal> {
    let (Some(policies), Some(target)) = (&tunnel.ctx.policies, &tunnel.policy_target) else {
        return Ok(None);
    };
    if !policies.loaded() {
        let text = "the operator has not loaded the shunt policies yet; retry in a few seconds";
        return Err((StatusCode::SERVICE_UNAVAILABLE, text.to_owned()));
    }
    match target {
        Ok(target) => Ok(Some((policies.valid(), target))),
        Err(why) => Err((StatusCode::SERVICE_UNAVAILABLE, why.clone())),
    }
}

/// A pod of the session's target with its reverse connection up, or the 503 that says so.
fn pick(tunnel: &Tunnel) -> Result<Picked, Refusal> {
    let Some(session) = tunnel.ctx.registry.get(&tunnel.namespace, &tunnel.name) else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("session {:?} has ended", tunnel.name),
        ));
    };
    let hub = &tunnel.ctx.hub;
    hub.reverse.pick(&tunnel.namespace, &session.selector).ok_or_else(|| {
        let connected = session.status.pods.iter().filter(|p| p.connected).count();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no pod of {} in {} can carry outbound traffic now: none has its sidecar's reverse connection up \
                 ({connected} of {} pods have a connected sidecar; a sidecar dials the reverse connection within \
                 seconds of the tunnel opening); check `shunt doctor {}`",
                tunnel.target,
                tunnel.namespace,
                session.status.pods.len(),
                tunnel.target
            ),
        )
    })
}

/// Reads a small answer body (bounded in size and time).
async fn read_small(body: Incoming, timeout: Duration) -> Result<Bytes, String> {
    match tokio::time::timeout(timeout, Limited::new(body, MAX_ANSWER).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(format!("the pod's answer could not be read: {e}")),
        Err(_) => Err(format!("the pod's answer did not complete within {timeout:?}")),
    }
}

/// The `message` of a JSON error answer, or the text itself.
fn message_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).trim().to_owned())
}

/// Asks the picked pod's resolver about `name`: its status and body.
async fn ask_dns(picked: &mut Picked, name: &str) -> Result<(StatusCode, Bytes), String> {
    let uri = format!("http://shunt-sidecar{DNS_PATH}?name={}", encode_query_value(name));
    let req = Request::get(uri)
        .body(empty())
        .map_err(|e| format!("bad DNS question: {e}"))?;
    let exchange = async {
        picked.sender.ready().await?;
        picked.sender.send_request(req).await
    };
    let resp = tokio::time::timeout(DNS_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            format!(
                "pod {} did not answer the DNS question within {DNS_TIMEOUT:?}",
                picked.pod
            )
        })?
        .map_err(|e| format!("the reverse connection of pod {} failed: {e}", picked.pod))?;
    let status = resp.status();
    Ok((status, read_small(resp.into_body(), DNS_TIMEOUT).await?))
}

async fn dns(tunnel: &Tunnel, req: &Request<Incoming>) -> Response<Body> {
    let metrics = tunnel.ctx.hub.metrics();
    let Some(name) = req
        .uri()
        .query()
        .and_then(|q| query_value(q, "name"))
        .filter(|n| !n.is_empty())
    else {
        return message(
            StatusCode::BAD_REQUEST,
            &format!("ask GET {DNS_PATH}?name=<percent-encoded name>"),
        );
    };
    match policy_view(tunnel) {
        Err(refusal) => return refused(refusal),
        Ok(Some((policies, target))) => {
            if let Some(denial) = exposure::outgoing_blocked(&policies, target) {
                metrics.dns("denied");
                tracing::info!(session.name = %tunnel.name, dns.name = %name, policy = %denial.policy, rule = %denial.rule, "DNS question denied by a policy");
                return message(StatusCode::FORBIDDEN, &denial.message);
            }
        }
        Ok(None) => {}
    }
    let mut picked = match pick(tunnel) {
        Ok(p) => p,
        Err(refusal) => {
            metrics.dns("unavailable");
            return refused(refusal);
        }
    };
    match ask_dns(&mut picked, &name).await {
        Ok((status, body)) => {
            metrics.dns(match status {
                StatusCode::OK => "resolved",
                StatusCode::NOT_FOUND => "not_found",
                _ => "failed",
            });
            tracing::debug!(session.name = %tunnel.name, dns.name = %name, pod.name = %picked.pod, %status, "DNS question answered");
            let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(why) => {
            metrics.dns("failed");
            message(StatusCode::BAD_GATEWAY, &why)
        }
    }
}

/// Resolves `host` in the picked pod for the policies (CIDR rules look at addresses).
async fn resolve_for_policy(picked: &mut Picked, host: &str) -> Result<Vec<IpAddr>, Refusal> {
    let (status, body) = ask_dns(picked, host)
        .await
        .map_err(|why| (StatusCode::BAD_GATEWAY, why))?;
    if status != StatusCode::OK {
        let why = message_of(&body);
        return Err((StatusCode::BAD_GATEWAY, format!("cannot connect to {host}: {why}")));
    }
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let addresses: Vec<IpAddr> = doc["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect();
    if addresses.is_empty() {
        return Err((
            StatusCode::BAD_GATEWAY,
            format!("cannot connect to {host}: pod {} resolved it to no address", picked.pod),
        ));
    }
    Ok(addresses)
}

async fn connect(tunnel: &Tunnel, mut req: Request<Incoming>) -> Response<Body> {
    let metrics = tunnel.ctx.hub.metrics().clone();
    let Some(authority) = req.uri().authority().cloned() else {
        return message(
            StatusCode::BAD_REQUEST,
            "CONNECT needs host:port, e.g. CONNECT reviews:8080",
        );
    };
    let shown = authority.to_string();
    let Some(port) = authority.port_u16().filter(|p| *p > 0) else {
        return message(
            StatusCode::BAD_REQUEST,
            &format!("CONNECT {shown}: a port is needed, e.g. {}:80", authority.host()),
        );
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let Ok(permit) = tunnel.limit.clone().try_acquire_owned() else {
        metrics.outbound("limit");
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("this tunnel has {MAX_CONNECTS} outbound connections open already; close some and retry"),
        );
    };
    let policies = match policy_view(tunnel) {
        Ok(p) => p,
        Err(refusal) => return refused(refusal),
    };
    // A destination the policies can decide as asked (an IP, or rules without CIDRs) is
    // decided before a pod is looked for; a name under CIDR rules after the pod resolved it.
    let resolve_first = policies
        .as_ref()
        .is_some_and(|(p, t)| host.parse::<IpAddr>().is_err() && exposure::needs_addresses(p, t));
    let deny = |addresses: Vec<IpAddr>| {
        let (policies, target) = policies.as_ref()?;
        let dest = Destination::new(&host, port, &tunnel.namespace, addresses);
        exposure::outgoing(policies, target, &dest, &shown)
    };
    let refuse = |denial: exposure::OutgoingDenial| {
        metrics.outbound("denied");
        tracing::info!(policy = %denial.policy, rule = %denial.rule, "outbound connection denied by a policy");
        message(StatusCode::FORBIDDEN, &denial.message)
    };
    // A name that a `block` rule names is refused before it is resolved; only an allow
    // list needs the addresses to say no.
    if let Some(denial) = deny(Vec::new()) {
        if !resolve_first || denial.rule != "outgoing.allow" {
            return refuse(denial);
        }
    }
    let mut picked = match pick(tunnel) {
        Ok(p) => p,
        Err(refusal) => {
            metrics.outbound("unavailable");
            return refused(refusal);
        }
    };
    tracing::Span::current().record("pod.name", picked.pod.as_str());
    // What the pod is told to dial: the name, or the address the policies checked.
    let mut dial = shown.clone();
    if resolve_first {
        let addresses = match resolve_for_policy(&mut picked, &host).await {
            Ok(a) => a,
            Err(refusal) => {
                metrics.outbound("dial_failed");
                return refused(refusal);
            }
        };
        dial = SocketAddr::new(addresses[0], port).to_string();
        if let Some(denial) = deny(addresses) {
            return refuse(denial);
        }
    }
    let Ok(upstream) = Request::connect(dial.as_str()).body(empty()) else {
        return message(
            StatusCode::BAD_REQUEST,
            &format!("CONNECT {shown}: not a valid host:port"),
        );
    };
    let exchange = async {
        picked.sender.ready().await?;
        picked.sender.send_request(upstream).await
    };
    let mut resp = match tokio::time::timeout(POD_ANSWER_TIMEOUT, exchange).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            metrics.outbound("failed");
            return message(
                StatusCode::BAD_GATEWAY,
                &format!("the reverse connection of pod {} failed: {e}", picked.pod),
            );
        }
        Err(_) => {
            metrics.outbound("dial_failed");
            return message(
                StatusCode::BAD_GATEWAY,
                &format!(
                    "pod {} did not connect to {shown} within {POD_ANSWER_TIMEOUT:?}",
                    picked.pod
                ),
            );
        }
    };
    if resp.status() != StatusCode::OK {
        let status = resp.status();
        metrics.outbound(if status == StatusCode::BAD_GATEWAY {
            "dial_failed"
        } else {
            "failed"
        });
        let why = match read_small(resp.into_body(), POD_ANSWER_TIMEOUT).await {
            Ok(body) => message_of(&body),
            Err(e) => e,
        };
        tracing::info!(%status, %why, "the pod could not connect");
        return message(status, &why);
    }
    metrics.outbound("connected");
    tracing::debug!("outbound connection open");
    let from_pod = hyper::upgrade::on(&mut resp);
    let from_cli = hyper::upgrade::on(&mut req);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _permit = permit;
            let (pod, cli) = match tokio::try_join!(from_pod, from_cli) {
                Ok(pair) => pair,
                Err(error) => return tracing::debug!(%error, "outbound stream not established"),
            };
            let (mut pod, mut cli) = (TokioIo::new(pod), TokioIo::new(cli));
            match tokio::io::copy_bidirectional(&mut cli, &mut pod).await {
                Ok((up, down)) => tracing::debug!(bytes.up = up, bytes.down = down, "outbound connection closed"),
                Err(error) => tracing::debug!(%error, "outbound connection broke"),
            }
        },
        tracing::Span::current(),
    ));
    Response::new(empty())
}
