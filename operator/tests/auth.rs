//! Authentication and authorization as an attacker meets them (issue 9, "Hostile input").
//!
//! - The sidecar hub: a sidecar with an expired token is refused, and a routes watch ends
//!   when its token expires; the REAL sidecar reconnects with the token the kubelet
//!   rotated (its routes stay) and, left with an expired one, goes dormant. A reverse
//!   connection is retired when its token expires, and the REAL sidecar's reverse
//!   connection carries a CONNECT every 50 ms across a token rotation without a failure.
//! - The aggregated API on kubesim, with the chart's own ClusterRole `shunt-user`: bob
//!   cannot open, read, change or end alice's session (raw HTTP, as the CLI would not
//!   send it), and alice's traffic still reaches only her; clients that are not
//!   kube-apiserver's front proxy are refused at the operator's port.
//! - Policies hold without the CLI: `block: [outgoing]` refuses a raw CONNECT and a DNS
//!   question on the outbound tunnel, naming the policy and the rule. (Session-creating
//!   blocks — mirror, steal, steal-unfiltered, identityHeader, … — are raw POSTs in
//!   `policy.rs` already.)
#![allow(clippy::unwrap_used, missing_docs)]

mod hub_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use shunt_operator::api::tunnel::WsIo;
use shunt_operator::hub::HubState;
use shunt_operator::registry::{Registry, Session};
use shunt_operator::tunnel::{Body, Tunnels};
use shunt_proto::names::SIDECAR_TOKEN_AUDIENCE;
use shunt_proto::route::Mode;
use support::{poll, request, sessions, Operator, Setup};

const NS: &str = "shop";

/// alice's steal session on `deployment/api` in `default` (the hub tests' namespace).
fn alice_session(app_port: u16) -> Session {
    hub_support::hub_session("alice", "alice", "api", app_port, Mode::Steal)
}

fn refused_total(state: &HubState, reason: &str) -> u64 {
    let text = state.metrics().encode();
    let prefix = format!("shunt_operator_hub_refused_sidecars_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_refuses_an_expired_token_and_ends_a_watch_when_its_token_expires() {
    use hub_support::{start_hub, HubConn, TestCluster, Tls};
    let env = TestCluster::start().await;
    let (registry, tunnels, state, tls) = (Registry::default(), Tunnels::default(), HubState::default(), Tls::new());
    let (hub_addr, _hub) = start_hub(&tls, &registry, &tunnels, &env.client, &state).await;
    let token = |lifetime: Duration| env.sidecar_token(lifetime);

    // An expired token opens nothing, and the sidecar is told why.
    let conn = HubConn::connect(hub_addr, &tls.ca_pem).await;
    let (status, body) = conn.get_routes(Some(&token(Duration::ZERO)), "default/api-0").await;
    assert_eq!(status, 401, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["reason"], "Unauthorized", "{body}");
    let message = doc["message"].as_str().unwrap();
    assert!(
        message.contains("service account token has expired") && message.contains("unexpired projected"),
        "{message}"
    );
    assert_eq!(refused_total(&state, "invalid_token"), 1);

    // A watch opened with a token that expires 3 s later ends then; one opened with a
    // 10-minute token stays.
    registry.create(alice_session(8080)).unwrap();
    let issued = Instant::now();
    let short = token(Duration::from_secs(3));
    let (short_conn, long_conn) = (
        HubConn::connect(hub_addr, &tls.ca_pem).await,
        HubConn::connect(hub_addr, &tls.ca_pem).await,
    );
    let mut short_watch = short_conn.open_routes(&short, "default/api-0").await;
    let mut long_watch = long_conn
        .open_routes(&env.token("api-0", SIDECAR_TOKEN_AUDIENCE).await, "default/api-0")
        .await;
    assert!(short_watch.next_line().await.contains("\"alice\""));
    assert!(long_watch.next_line().await.contains("\"alice\""));
    assert_eq!(
        short_conn.relay("alice", "default/api-0").await,
        503,
        "relays while the token is valid"
    );
    let rest = short_watch
        .ends_within(Duration::from_secs(15))
        .await
        .expect("the watch of an expired token ends");
    let ended = issued.elapsed();
    assert!(
        ended >= Duration::from_secs(3),
        "ended before the token expired: {ended:?}"
    );
    // The routes are not withdrawn: the pod is still entitled to them, only this token is
    // not; the sidecar keeps them for its lease while it reconnects.
    assert_eq!(rest, "", "nothing after the routes: {rest}");
    assert_eq!(
        short_conn.relay("alice", "default/api-0").await,
        401,
        "the connection relays nothing once its token expired"
    );
    assert_eq!(refused_total(&state, "invalid_token"), 2);
    // Reconnecting with the same token is refused; the 10-minute watch goes on.
    let again = HubConn::connect(hub_addr, &tls.ca_pem).await;
    let (status, body) = again.get_routes(Some(&short), "default/api-0").await;
    assert!(status == 401 && body.contains("expired"), "{status} {body}");
    registry.delete("default", "alice").unwrap();
    assert_eq!(long_watch.next_line().await.trim(), r#"{"routes":[]}"#);
    assert!(state.is_connected("default", "api-0"));
}

/// A sidecar's reverse connection as the sidecar dials it (TLS with ALPN http/1.1, the
/// upgrade, then the HTTP/2 server that would dial outbound connections): the upgrade's
/// status, and while it lived the server's future.
async fn reverse_connection(
    hub: std::net::SocketAddr,
    ca_pem: &str,
    token: &str,
) -> (u16, Option<tokio::task::JoinHandle<()>>) {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(hub).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("shunt-operator").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let req = http::Request::get("/hub/v1/reverse")
        .header("host", "shunt-operator")
        .header("connection", "Upgrade")
        .header("upgrade", "shunt-reverse")
        .header("authorization", format!("Bearer {token}"))
        .header("shunt-pod", "default/api-0")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    if status != 101 {
        return (status, None);
    }
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let service = hyper::service::service_fn(|_req: http::Request<Incoming>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Empty::<Bytes>::new()))
    });
    let server = tokio::spawn(async move {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(upgraded, service)
            .await;
    });
    (status, Some(server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reverse_connection_takes_no_outbound_traffic_once_its_token_expired() {
    use hub_support::{eventually, sidecar_binary, start_hub, Sidecar, TempDir, TestCluster, Tls};
    let env = TestCluster::start().await;
    let (registry, tunnels, state, tls) = (Registry::default(), Tunnels::default(), HubState::default(), Tls::new());
    let (hub_addr, _hub) = start_hub(&tls, &registry, &tunnels, &env.client, &state).await;
    let token = |lifetime: Duration| env.sidecar_token(lifetime);
    let (status, _) = reverse_connection(hub_addr, &tls.ca_pem, &token(Duration::ZERO)).await;
    assert_eq!(status, 401, "an expired token opens no reverse connection");

    let issued = Instant::now();
    let (status, server) = reverse_connection(hub_addr, &tls.ca_pem, &token(Duration::from_secs(3))).await;
    assert_eq!(status, 101);
    let server = server.unwrap();
    eventually("the reverse connection to register", Duration::from_secs(5), || async {
        state.reverse.is_connected("default", "api-0").then_some(())
    })
    .await;
    eventually(
        "the expired reverse connection to leave the registry",
        Duration::from_secs(15),
        || async { (!state.reverse.is_connected("default", "api-0")).then_some(()) },
    )
    .await;
    assert!(
        issued.elapsed() >= Duration::from_secs(3),
        "retired before its token expired"
    );
    // Nothing was open on it, so it closes at once.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the operator closes a retired reverse connection")
        .unwrap();
    assert!(refused_total(&state, "invalid_token") >= 2);

    // The REAL sidecar, whose token the kubelet rotates long before it expires: a CONNECT
    // through the pod every 50 ms succeeds at every moment, across the switch to the new
    // token's reverse connection and the old token's expiry (when the hub retires the old
    // connection). A tunnel open across the rotation keeps working until it is closed.
    let dir = TempDir::new("auth-reverse");
    let ca_file = dir.write("ca.pem", &tls.ca_pem);
    let app = shunt_echo::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), "app").unwrap();
    let dest = tcp_echo().await;
    let first_lifetime = Duration::from_secs(6);
    let first_expires = Instant::now() + first_lifetime;
    let token_file = dir.write("token", &token(first_lifetime));
    let (_sidecar, ..) = Sidecar::takeover(&sidecar_binary(), app.addr.port(), hub_addr, &ca_file, &token_file, &[]);
    let session = alice_session(app.addr.port());
    let selector = session.selector.clone();
    registry.create(session).unwrap();
    registry.set_outbound("default", "alice", true);
    let connect = || async {
        let mut picked = state
            .reverse
            .pick("default", &selector)
            .ok_or("no pod has a reverse connection")?;
        let req = http::Request::connect(dest.to_string()).body(Body::default()).unwrap();
        picked.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = picked.sender.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("CONNECT answered {}", resp.status()));
        }
        let mut tunnel = TokioIo::new(hyper::upgrade::on(resp).await.map_err(|e| e.to_string())?);
        echoes(&mut tunnel, b"ping").await?;
        Ok::<_, String>(tunnel)
    };
    let mut open_tunnel = eventually("outbound traffic through the pod", Duration::from_secs(10), || async {
        connect().await.ok()
    })
    .await;

    std::fs::write(&token_file, token(Duration::from_secs(30))).unwrap();
    let past_first_expiry = first_expires + Duration::from_millis(1500);
    let (mut connected, mut failed) = (0, Vec::new());
    while Instant::now() < past_first_expiry {
        match connect().await {
            Ok(_) => connected += 1,
            Err(why) => failed.push(why),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "during the rotation: {connected} CONNECTs through the pod succeeded, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} CONNECTs through the pod failed across the token rotation: {failed:?}",
        failed.len(),
        connected + failed.len()
    );
    assert!(state.reverse.is_connected("default", "api-0"));
    echoes(&mut open_tunnel, b"still open")
        .await
        .expect("the tunnel open across the rotation still works");
}

/// A TCP echo server on `127.0.0.1:0` (a destination of outbound connections).
async fn tcp_echo() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Whether `what` comes back through `tunnel` (within 5 s).
async fn echoes<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tunnel: &mut T,
    what: &[u8],
) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut back = vec![0; what.len()];
    let round = async {
        tunnel.write_all(what).await?;
        tunnel.read_exact(&mut back).await
    };
    match tokio::time::timeout(Duration::from_secs(5), round).await {
        Ok(Ok(_)) if back == what => Ok(()),
        Ok(Ok(_)) => Err(format!("the tunnel echoed {back:?}")),
        Ok(Err(e)) => Err(format!("the tunnel broke: {e}")),
        Err(_) => Err("no echo within 5 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_reconnects_with_its_rotated_token_and_goes_dormant_when_left_with_an_expired_one() {
    use hub_support::{eventually, sidecar_binary, start_hub, who, Cli, Sidecar, TempDir, TestCluster, Tls};
    let sidecar_bin = sidecar_binary();
    let env = TestCluster::start().await;
    let (registry, tunnels, state, tls) = (Registry::default(), Tunnels::default(), HubState::default(), Tls::new());
    let (hub_addr, _hub) = start_hub(&tls, &registry, &tunnels, &env.client, &state).await;
    let dir = TempDir::new("auth");
    let ca_file = dir.write("ca.pem", &tls.ca_pem);
    let token = |lifetime: Duration| env.sidecar_token(lifetime);
    let app = shunt_echo::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), "app").unwrap();
    let first_lifetime = Duration::from_secs(6);
    let first_expires = Instant::now() + first_lifetime;
    let token_file = dir.write("token", &token(first_lifetime));
    let (_sidecar, listen, admin_port) = Sidecar::takeover(
        &sidecar_bin,
        app.addr.port(),
        hub_addr,
        &ca_file,
        &token_file,
        &[("SHUNT_LEASE_SECONDS", "2")],
    );
    let _cli = Cli::register(&tunnels, "default", "alice").await;
    registry.create(alice_session(app.addr.port())).unwrap();
    let url = format!("http://127.0.0.1:{listen}/");
    eventually("alice's requests reach her CLI", Duration::from_secs(10), || async {
        (who(&url, Some("x-shunt-user: alice")).await? == "cli-alice").then_some(())
    })
    .await;
    let conn_id = || {
        let pods = state.connected_pods(Some("default"));
        pods.first().map(|(_, info)| info.conn_id)
    };
    let first = conn_id().unwrap();

    // The kubelet rotates the token file (here to a 12 s token) long before the old token
    // expires. The sidecar opens a second connection with the new token while the first
    // one serves, switches once the new routes watch is up and closes the first: across
    // the switch and the old token's expiry (when the hub would end the first watch)
    // every request of alice reaches alice, none is served by the app.
    std::fs::write(&token_file, token(Duration::from_secs(12))).unwrap();
    let (mut by_alice, mut by_app) = (0, 0);
    let past_first_expiry = first_expires + Duration::from_millis(1500);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut second = None;
    while second.is_none() || Instant::now() < past_first_expiry {
        match who(&url, Some("x-shunt-user: alice")).await.as_deref() {
            Some("cli-alice") => by_alice += 1,
            Some("app") => by_app += 1,
            other => panic!("a request of alice failed during the token rotation: {other:?}"),
        }
        second = second.or(conn_id().filter(|id| *id != first));
        assert!(Instant::now() < deadline, "the sidecar did not reconnect within 15 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = second.unwrap();
    eprintln!("during the rotation: {by_alice} requests reached alice, {by_app} the app");
    assert_eq!(
        by_app,
        0,
        "{by_app} of {} requests of alice were served by the app during the token rotation",
        by_alice + by_app
    );
    assert_eq!(
        conn_id(),
        Some(second),
        "the hub still serves the sidecar's new connection"
    );

    // Left with the expired token (no rotation), the sidecar is refused and goes dormant
    // within its lease: the app serves alice's requests.
    eventually(
        "the second token to expire and the sidecar to be refused",
        Duration::from_secs(20),
        || async {
            (!state.is_connected("default", "api-0") && refused_total(&state, "invalid_token") >= 2).then_some(())
        },
    )
    .await;
    assert_ne!(conn_id(), Some(second));
    eventually("dormant within the lease", Duration::from_secs(2 + 3), || async {
        (hub_support::routes_installed(&format!("127.0.0.1:{admin_port}")).await? == 0).then_some(())
    })
    .await;
    assert_eq!(who(&url, Some("x-shunt-user: alice")).await.as_deref(), Some("app"));
    assert!(!state.is_connected("default", "api-0"));
}

/// kubesim + the operator's API server, Deployment `shop/api`, and the chart's ClusterRole
/// `shunt-user` (as rendered into the demo's install manifests) bound to alice and bob in
/// `shop`.
async fn with_shunt_users(policies: bool) -> Operator {
    let env = Operator::start(Setup {
        namespaces: &[(NS, json!({}))],
        policies,
    })
    .await;
    env.deployment(NS, "api", json!({}), &[8080]).await;
    let manifests = std::fs::read_to_string(support::repo("cli/src/demo/install.yaml")).unwrap();
    let role = manifests
        .split("\n---\n")
        .find(|doc| doc.contains("\nkind: ClusterRole\n") && doc.contains("\n  name: shunt-user\n"))
        .expect("the rendered chart has the ClusterRole shunt-user");
    let admin = env.kubeconfig("kubesim-admin", &["system:masters"]);
    let file = admin.with_extension("shunt-user.yaml");
    std::fs::write(&file, role).unwrap();
    let (ok, out) = support::kubectl(&admin, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(ok, "{out}");
    for path in [admin, file] {
        let _ = std::fs::remove_file(path);
    }
    env.bind(NS, "shunt-user", "ClusterRole", "shunt-user", &["alice", "bob"])
        .await;
    env
}

/// Alice's end of her inbound tunnel: an HTTP/2 server on the WebSocket that answers
/// `served by alice: <path>`.
async fn alice_serves(alice: &kube::Client, name: &str) {
    let path = format!("{}/{name}/tunnel?dir=inbound", sessions(NS));
    let ws = alice
        .connect(http::Request::get(path).body(Vec::new()).unwrap())
        .await
        .unwrap();
    let service = hyper::service::service_fn(|req: http::Request<Incoming>| async move {
        let body = format!("served by alice: {}", req.uri().path());
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(body))))
    });
    tokio::spawn(
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(WsIo::new(ws.into_stream())), service),
    );
}

/// A stolen request as the hub relays it into session `name`; who answered.
async fn relay_to(env: &Operator, name: &str) -> String {
    let req = http::Request::get("http://api.shop:8080/orders")
        .header("x-shunt-user", "alice")
        .body::<Body>(Empty::new().map_err(|never| match never {}).boxed())
        .unwrap();
    let resp = env.state.tunnels.forward(NS, name, req).await.unwrap();
    String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn bob_cannot_open_read_change_or_end_alices_session_and_her_traffic_reaches_only_her() {
    let env = with_shunt_users(false).await;
    let alice = env.user("alice", &[]).await;
    let bob = env.user("bob", &[]).await;
    let body = support::session(
        "alice-api",
        "deployment/api",
        "steal",
        Some("x-shunt-user: alice"),
        8080,
    );
    let (status, created) = request(&alice, "POST", &sessions(NS), Some(body)).await;
    assert_eq!(status, 201, "{created}");
    alice_serves(&alice, "alice-api").await;
    poll("alice's tunnel", async || {
        env.state.tunnels.is_connected(NS, "alice-api").then_some(())
    })
    .await;
    assert_eq!(relay_to(&env, "alice-api").await, "served by alice: /orders");
    let session = format!("{}/alice-api", sessions(NS));

    // Her tunnel, both directions, as the CLI opens it (a WebSocket) and as plain requests.
    for dir in ["inbound", "outbound"] {
        let path = format!("{session}/tunnel?dir={dir}");
        let err = bob
            .connect(http::Request::get(&path).body(Vec::new()).unwrap())
            .await
            .err()
            .unwrap_or_else(|| panic!("bob opened alice's {dir} tunnel"));
        assert!(err.to_string().contains("403"), "{dir}: {err}");
        for method in ["GET", "POST"] {
            let (status, body) = request(&bob, method, &path, None).await;
            assert_eq!(status, 403, "{method} {path}: {body}");
            assert!(
                message(&body).contains("belongs to \"alice\": only its own user may open its tunnel"),
                "{method} {path}: {body}"
            );
        }
    }
    // Any other way to her traffic: subresources the API does not have are not granted.
    for sub in [
        "log",
        "proxy",
        "attach",
        "exec",
        "portforward",
        "mirror",
        "traffic",
        "status",
    ] {
        for method in ["GET", "POST"] {
            let (status, body) = request(&bob, method, &format!("{session}/{sub}"), None).await;
            assert_eq!(status, 403, "{method} sessions/{sub}: {body}");
            assert!(
                message(&body).contains("User \"bob\" cannot")
                    && message(&body).contains(&format!("\"sessions/{sub}\"")),
                "{method} sessions/{sub}: {body}"
            );
        }
    }
    // Her filter and ports: sessions cannot be changed by anyone, and bob may not even ask.
    let take = json!({"spec": {"filter": "x-shunt-user: bob", "ports": [{"port": 9090}]}});
    for (method, verb) in [("PATCH", "patch"), ("PUT", "update")] {
        let (status, body) = request(&bob, method, &session, Some(take.clone())).await;
        assert_eq!(status, 403, "{method}: {body}");
        assert!(
            message(&body).contains(&format!("User \"bob\" cannot {verb} resource \"sessions\"")),
            "{method}: {body}"
        );
    }
    let (status, body) = request(&env.admin, "PATCH", &session, Some(take.clone())).await;
    assert_eq!(status, 405, "even an admin cannot change a session: {body}");
    assert!(
        message(&body).contains("delete the session and create a new one"),
        "{body}"
    );
    // Ending it takes the `kill` verb; replacing it by name is a conflict.
    let (status, body) = request(&bob, "DELETE", &session, None).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        message(&body).contains("may not end session \"alice-api\" of user \"alice\"")
            && message(&body).contains("\"kill\""),
        "{body}"
    );
    let mine = support::session("alice-api", "deployment/api", "mirror", Some("x-shunt-user: bob"), 8080);
    let (status, body) = request(&bob, "POST", &sessions(NS), Some(mine)).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("AlreadyExists")),
        "{body}"
    );
    // Identity headers a client sends are dropped by the front proxy: bob stays bob.
    let req = http::Request::delete(&session)
        .header("x-remote-user", "alice")
        .header("x-remote-group", "system:masters")
        .body(Vec::new())
        .unwrap();
    let resp = bob.send(req.map(Into::into)).await.unwrap();
    assert_eq!(resp.status(), 403, "forged X-Remote-User through kube-apiserver");

    // Nothing changed: the session is alice's as created, and her traffic reaches her.
    let now = env.registry().get(NS, "alice-api").unwrap();
    assert_eq!(
        (
            now.user.as_str(),
            now.spec.filter.unwrap().to_string(),
            now.spec.ports[0].port
        ),
        ("alice", "x-shunt-user: alice".to_owned(), 8080)
    );
    assert_eq!(relay_to(&env, "alice-api").await, "served by alice: /orders");
}

/// A raw HTTP/1.1 client to `addr` over TLS (trusting `ca_pem` for `server_name`),
/// presenting `cert` if given.
async fn raw_client(
    addr: std::net::SocketAddr,
    server_name: &str,
    ca_pem: &str,
    cert: Option<&kubesim::pki::CertPair>,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    use kubesim::admission::client::{connect, tls_config, Trust};
    let tls = tls_config(Trust::Roots(ca_pem.as_bytes()), cert).unwrap();
    let stream = connect(addr, server_name, tls).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send_raw(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Value), String> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shunt");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

#[tokio::test]
async fn only_kube_apiservers_front_proxy_may_call_the_operator_and_say_who_is_calling() {
    let env = with_shunt_users(false).await;
    let alice = env.user("alice", &[]).await;
    let body = support::session(
        "alice-api",
        "deployment/api",
        "steal",
        Some("x-shunt-user: alice"),
        8080,
    );
    assert_eq!(request(&alice, "POST", &sessions(NS), Some(body)).await.0, 201);
    let pki = &env.cluster.api.pki;
    let forged = [("x-remote-user", "alice"), ("x-remote-group", "system:masters")];
    let (list, session) = (sessions(NS), format!("{}/alice-api", sessions(NS)));
    let tunnel = format!("{session}/tunnel?dir=inbound");
    let every_route = [
        ("GET", "/apis/api.shunt.dev/v1"),
        ("GET", "/apis/api.shunt.dev/v1/sessions"),
        ("GET", list.as_str()),
        ("POST", list.as_str()),
        ("GET", session.as_str()),
        ("DELETE", session.as_str()),
        ("GET", tunnel.as_str()),
        ("GET", "/apis/api.shunt.dev/v1/namespaces/shop/targets"),
        ("POST", "/apis/api.shunt.dev/v1/namespaces/shop/policyreviews"),
    ];
    let server = "shunt-api.shunt-system.svc";

    // Straight to the operator's port: no certificate, or a certificate of the cluster's
    // client CA (a user's, valid for kube-apiserver) — forged identity headers or not.
    let mut none = raw_client(env.addr, server, &env.api_ca_pem, None).await.unwrap();
    for (method, path) in every_route {
        let (status, body) = send_raw(&mut none, method, path, &forged).await.unwrap();
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(message(&body).contains("served through kube-apiserver"), "{body}");
    }
    let user_cert = pki.ca.client("alice", &[]).unwrap();
    match raw_client(env.addr, server, &env.api_ca_pem, Some(&user_cert)).await {
        Err(handshake) => assert!(!handshake.is_empty()),
        Ok(mut sender) => match send_raw(&mut sender, "GET", &session, &forged).await {
            Err(refused) => assert!(!refused.is_empty()),
            Ok((status, body)) => assert_eq!(status, 401, "a user's certificate is not the front proxy's: {body}"),
        },
    }
    // The front-proxy CA, but a name not in requestheader-allowed-names.
    let other = pki.front_proxy_ca.client("mallory", &[]).unwrap();
    let mut sender = raw_client(env.addr, server, &env.api_ca_pem, Some(&other))
        .await
        .unwrap();
    let (status, body) = send_raw(&mut sender, "GET", &session, &forged).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(
        message(&body).contains("\"mallory\" is not in requestheader-allowed-names"),
        "{body}"
    );
    // The front proxy itself, without saying who is calling: still not authenticated.
    let mut front = raw_client(env.addr, server, &env.api_ca_pem, Some(&pki.front_proxy_client))
        .await
        .unwrap();
    let (status, body) = send_raw(&mut front, "GET", &session, &[]).await.unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(message(&body).contains("no X-Remote-User"), "{body}");
    // (The same client saying who is calling is served: the refusals above are not a
    // broken client.)
    let (status, body) = send_raw(&mut front, "GET", &session, &forged).await.unwrap();
    assert_eq!(status, 200, "{body}");

    // Through kube-apiserver without credentials, or with a sidecar's token (audience
    // shunt.dev/sidecar, not the API server's): 401 before the operator is asked.
    let api_ca = pki.ca.cert_pem.clone();
    let sa = json!({"metadata": {"name": "api"}});
    support::create(&env.admin, "/api/v1/namespaces/shop/serviceaccounts", sa).await;
    let sidecar_token = env
        .cluster
        .issue_token(NS, "api", None, &[SIDECAR_TOKEN_AUDIENCE], Duration::from_secs(600))
        .unwrap();
    let bearer = format!("Bearer {sidecar_token}");
    for headers in [&forged[..], &[("authorization", bearer.as_str())][..]] {
        let mut anonymous = raw_client(env.cluster.addr, "127.0.0.1", &api_ca, None).await.unwrap();
        for (method, path) in every_route {
            let (status, body) = send_raw(&mut anonymous, method, path, headers).await.unwrap();
            assert_eq!(status, 401, "{method} {path} via kube-apiserver: {body}");
        }
    }
    assert_eq!(
        env.registry().get(NS, "alice-api").map(|s| s.user),
        Some("alice".to_owned())
    );
}

#[tokio::test]
async fn a_policy_blocking_outgoing_traffic_refuses_raw_connect_and_dns_on_the_tunnel() {
    let env = with_shunt_users(true).await;
    let admin = env.kubeconfig("kubesim-admin", &["system:masters"]);
    for crd in ["shuntpolicies", "clustershuntpolicies"] {
        let file = support::repo(&format!("charts/shunt/crds/{crd}.yaml"));
        let (ok, out) = support::kubectl(&admin, &["apply", "-f", file.to_str().unwrap()]).await;
        assert!(ok, "{out}");
    }
    let _ = std::fs::remove_file(&admin);
    let policy = json!({"apiVersion": "policy.shunt.dev/v1alpha1", "kind": "ShuntPolicy",
        "metadata": {"name": "no-egress"}, "spec": {"targetSelector": {"names": ["deployment/api"]}, "block": ["outgoing"]}});
    support::create(
        &env.admin,
        "/apis/policy.shunt.dev/v1alpha1/namespaces/shop/shuntpolicies",
        policy,
    )
    .await;
    let alice = env.user("alice", &[]).await;
    let body = support::session(
        "alice-api",
        "deployment/api",
        "steal",
        Some("x-shunt-user: alice"),
        8080,
    );
    let (status, created) = request(&alice, "POST", &sessions(NS), Some(body)).await;
    assert_eq!(status, 201, "{created}");

    // The outbound tunnel as `shunt exec` opens it, then what a program could send on it.
    let rule = "denied by ShuntPolicy shop/no-egress (rule block: outgoing)";
    let answer = poll("the policy to refuse a CONNECT", async || {
        let path = format!("{}/alice-api/tunnel?dir=outbound", sessions(NS));
        let ws = alice
            .connect(http::Request::get(path).body(Vec::new()).unwrap())
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
            TokioExecutor::new(),
            TokioIo::new(WsIo::new(ws.into_stream())),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let connect = http::Request::connect("db.shop:5432").body(Empty::new()).unwrap();
        let resp = sender.send_request(connect).await.unwrap();
        let status = resp.status().as_u16();
        let text = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
        // Before the controller has loaded the policy, no pod can carry it (503).
        (status == 403).then_some((sender, text))
    })
    .await;
    let (mut sender, text) = answer;
    assert!(text.contains(rule) && text.contains("db.shop:5432"), "{text}");
    let dns = http::Request::get("http://operator/dns?name=db.shop")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(dns).await.unwrap();
    assert_eq!(resp.status(), 403);
    let text = String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned();
    assert!(text.contains(rule), "{text}");
}
