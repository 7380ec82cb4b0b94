//! Stolen requests of a `shunt exec` session, from the inbound tunnel to the program.
//!
//! The port a request is for comes from its `shunt-session` route id (`name:port`, or
//! `name` for a one-port session); it goes to where the program listens for that port
//! (reported by the layer). While the program has no listener there, or the listener
//! refuses, the answer is 503 with `shunt-unavailable` and the body unread, the signal
//! with which the operator says "no CLI": the sidecar then lets the pod's app serve the
//! request. The CLI opens the connection to the program itself so that it knows its
//! local port: the layer asks for it (`peer`) when the program accepts, and shows the
//! pod client's address (the sidecar's `x-forwarded-for`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use shunt_proto::hub::HEADER_UNAVAILABLE;
use shunt_proto::names::{HOP_HEADER_POD, HOP_HEADER_SESSION};
use tokio::net::TcpSocket;

use super::server::Shared;
use crate::forward::{self, Body};

/// Forwards one tunnel request to the program.
pub async fn forward(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<Body> {
    let port = req
        .headers()
        .get(HOP_HEADER_SESSION)
        .and_then(|v| v.to_str().ok())
        .and_then(|id| id.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .or_else(|| shared.ports.first().map(|p| p.0))
        .unwrap_or_default();
    let listener = super::server::listener_for(&shared, port);
    let Some(addr) = listener else {
        return unavailable(&format!("the program does not listen for pod port {port} yet"));
    };
    // The local port is bound (and the pod client recorded) before connecting: the
    // program may accept, and its layer ask who the client is, before `connect` returns.
    let (socket, local_port) = match bind_local(addr) {
        Ok(bound) => bound,
        Err(e) => return unavailable(&format!("no local port to reach the program: {e}")),
    };
    let _peer = client_ip(&req).map(|ip| PeerGuard::new(shared.clone(), local_port, ip));
    let tcp = match socket.connect(addr).await {
        Ok(tcp) => tcp,
        Err(e) => return unavailable(&format!("the program's listener {addr} for pod port {port}: {e}")),
    };
    req.headers_mut().remove(HOP_HEADER_SESSION);
    req.headers_mut().remove(HOP_HEADER_POD);
    match forward::send_on(tcp, req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            forward::strip_connection_headers(&mut parts.headers);
            Response::from_parts(parts, body.map_err(Into::into).boxed())
        }
        Err(error) => {
            tracing::info!(%addr, %error, "the program failed a request");
            forward::text_response(
                StatusCode::BAD_GATEWAY,
                &format!("the program at {addr} did not answer: {error}"),
            )
        }
    }
}

/// A socket bound to an ephemeral local port of `to`'s family, and that port.
fn bind_local(to: SocketAddr) -> std::io::Result<(TcpSocket, u16)> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    let any = if to.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from([0u16; 8])
    };
    socket.bind(SocketAddr::new(any, 0))?;
    let port = socket.local_addr()?.port();
    Ok((socket, port))
}

/// 503 + `shunt-unavailable`: the body is unread, the pod's app may serve the request.
fn unavailable(why: &str) -> Response<Body> {
    tracing::debug!(why, "request left to the pod's app");
    let mut resp = forward::text_response(StatusCode::SERVICE_UNAVAILABLE, why);
    resp.headers_mut()
        .insert(HEADER_UNAVAILABLE, HeaderValue::from_static("1"));
    resp
}

/// The client the sidecar saw: the last `x-forwarded-for` entry (the sidecar appends it).
fn client_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    let value = req.headers().get("x-forwarded-for")?.to_str().ok()?;
    value.rsplit(',').next()?.trim().parse().ok()
}

/// Keeps `local port → client` known while the request is in flight.
struct PeerGuard {
    shared: Arc<Shared>,
    port: u16,
}

impl PeerGuard {
    fn new(shared: Arc<Shared>, port: u16, ip: IpAddr) -> PeerGuard {
        shared.peers.lock().unwrap_or_else(|p| p.into_inner()).insert(port, ip);
        PeerGuard { shared, port }
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        self.shared
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.port);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_last_forwarded_for_entry() {
        let req = Request::builder()
            .header("x-forwarded-for", "203.0.113.7, 10.244.0.9")
            .body(())
            .unwrap();
        assert_eq!(client_ip(&req), Some("10.244.0.9".parse().unwrap()));
        assert_eq!(client_ip(&Request::new(())), None);
    }
}
