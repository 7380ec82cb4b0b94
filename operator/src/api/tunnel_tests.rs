//! The tunnel handler behind a plain HTTP/1.1 server with upgrades, and a test CLI that
//! serves HTTP/2 over its side of the WebSocket.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use shunt_proto::route::Mode;
use shunt_proto::session::{SessionPort, SessionSpec, SessionStatus};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::*;
use crate::registry::Session;
use crate::tunnel::ForwardError;

fn session(name: &str, user: &str) -> Session {
    Session {
        namespace: "shop".into(),
        name: name.into(),
        uid: name.into(),
        user: user.into(),
        groups: vec![],
        spec: SessionSpec {
            target: "deployment/api".parse().unwrap(),
            mode: Mode::Steal,
            filter: Some(shunt_proto::Filter::parse(&format!("x-user: {user}")).unwrap()),
            ports: vec![SessionPort { port: 8080 }],
        },
        selector: BTreeMap::from([("app".into(), "api".into())]),
        created: SystemTime::now(),
        status: SessionStatus::default(),
    }
}

/// Serves `handle` for user `caller` on 127.0.0.1:0; the path's last segment before
/// `/tunnel` is the session name.
async fn server(caller: &'static str, registry: Registry, tunnels: Tunnels) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (registry, tunnels) = (registry.clone(), tunnels.clone());
            let svc = service_fn(move |req: Request<Incoming>| {
                let (registry, tunnels) = (registry.clone(), tunnels.clone());
                async move {
                    let name = req
                        .uri()
                        .path()
                        .trim_end_matches("/tunnel")
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_owned();
                    Ok::<_, std::convert::Infallible>(handle(req, caller, "shop", &name, &registry, &tunnels).await)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades(),
            );
        }
    });
    addr
}

async fn open(addr: SocketAddr, path: &str) -> Result<WsIo<TcpStream>, u16> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"),
    );
    let tcp = TcpStream::connect(addr).await.unwrap();
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.headers()[header::SEC_WEBSOCKET_PROTOCOL], "v5.channel.k8s.io");
            Ok(WsIo::new(ws))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn requests_reach_the_cli_serving_http2_over_the_websocket() {
    let (registry, tunnels) = (Registry::default(), Tunnels::default());
    registry.create(session("s1", "alice")).unwrap();
    let addr = server("alice", registry.clone(), tunnels.clone()).await;
    let io = open(
        addr,
        "/apis/api.shunt.dev/v1/namespaces/shop/sessions/s1/tunnel?dir=inbound",
    )
    .await
    .unwrap();
    // The test CLI: an HTTP/2 server answering with what it received.
    let cli = tokio::spawn(async move {
        let svc = service_fn(|req: Request<Incoming>| async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let text = format!(
                "{} {} x-user={:?} {}",
                parts.method,
                parts.uri,
                parts.headers["x-user"],
                String::from_utf8_lossy(&body)
            );
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
        });
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(io), svc)
            .await
    });
    until("the tunnel is registered", || tunnels.is_connected("shop", "s1")).await;
    let big = "x".repeat(200_000);
    let req = Request::post("http://api.shop/orders?id=1")
        .header("x-user", "alice")
        .body(
            Full::new(Bytes::from(big.clone()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    let resp = tunnels.forward("shop", "s1", req).await.unwrap();
    let text = String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert_eq!(text, format!("POST http://api.shop/orders?id=1 x-user=\"alice\" {big}"));

    // The CLI goes away: the registration goes with it and requests come back unsent.
    cli.abort();
    until("the tunnel is unregistered", || !tunnels.is_connected("shop", "s1")).await;
    let req = Request::get("/").body(empty()).unwrap();
    assert!(matches!(
        tunnels.forward("shop", "s1", req).await,
        Err(ForwardError::Unavailable(_))
    ));
}

#[tokio::test]
async fn only_the_sessions_user_may_open_it_and_outbound_needs_its_context() {
    let (registry, tunnels) = (Registry::default(), Tunnels::default());
    registry.create(session("bobs", "bob")).unwrap();
    registry.create(session("alices", "alice")).unwrap();
    let addr = server("alice", registry.clone(), tunnels.clone()).await;
    let base = "/apis/api.shunt.dev/v1/namespaces/shop/sessions";
    assert_eq!(
        open(addr, &format!("{base}/bobs/tunnel?dir=inbound")).await.err(),
        Some(403)
    );
    assert_eq!(
        open(addr, &format!("{base}/nobody/tunnel?dir=inbound")).await.err(),
        Some(404)
    );
    assert_eq!(
        open(addr, &format!("{base}/alices/tunnel?dir=outbound")).await.err(),
        Some(400)
    );
    assert_eq!(open(addr, &format!("{base}/alices/tunnel")).await.err(), Some(400));
    assert!(!tunnels.is_connected("shop", "bobs"));

    let req = Request::get(format!("{base}/alices/tunnel?dir=outbound"))
        .body(())
        .unwrap();
    let resp = handle(req, "alice", "shop", "alices", &registry, &tunnels).await;
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["message"], "this operator does not serve dir=outbound tunnels");
    assert_eq!(body["kind"], "Status");
}
