//! The outbound path of `shunt exec` on kubesim, all real code: the chart's operator and
//! webhook as pods, a real sidecar in every pod of deployment/api (`shunt __sidecar`),
//! alice's session created through kube-apiserver and `shunt_cli::outbound::Outbound` on
//! its outbound tunnel. The sidecar dials its reverse connection once the tunnel opens;
//! CONNECT reaches the echo app through the Service from the pod, DNS answers from the
//! pod's resolver, a policy's `outgoing.block` refuses with 403 naming the policy and the
//! rule, and without a connected sidecar the answer is 503 saying so.
//!
//! Loopback mode (no root): pods share the host's network and resolver, so DNS is shown
//! with `localhost`. In netns mode (root) each pod has its own network and `/etc/hosts`:
//! Service names resolve in every form and CONNECT by name reaches the Service.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use shunt_cli::args::KubeArgs;
use shunt_cli::cluster::{self, Cluster};
use shunt_cli::demo::stack::{create, poll, request, Stack, StackOptions, NS};
use shunt_cli::outbound::{Outbound, OutboundError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn shunt() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shunt"))
}

async fn developer(stack: &Stack, user: &str) -> Cluster {
    let args = KubeArgs {
        kubeconfig: Some(stack.kubeconfig(user).unwrap()),
        context: None,
        namespace: Some(NS.into()),
    };
    cluster::connect(&args).await.unwrap()
}

async fn start_session(cluster: &Cluster, name: &str) {
    let object = serde_json::from_value(json!({
        "apiVersion": "api.shunt.dev/v1", "kind": "Session",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"target": "deployment/api", "mode": "steal", "filter": "x-shunt-user: alice", "ports": [{"port": 8080}]},
    }))
    .unwrap();
    cluster
        .sessions(Some(NS))
        .create(&Default::default(), &object)
        .await
        .unwrap();
}

/// An HTTP/1.1 GET over `stream`; the whole answer.
async fn get(mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, host: &str) -> String {
    let req = format!("GET /hello HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// Retries while no pod has its reverse connection up yet (the sidecar dials it when
/// the routes stream says outbound).
async fn connect_when_ready(outbound: &Outbound, authority: &str) -> shunt_cli::outbound::OutboundStream {
    poll(
        "a pod to carry outbound traffic",
        Duration::from_secs(30),
        async || match outbound.connect(authority).await {
            Ok(stream) => Some(stream),
            Err(OutboundError::Unavailable(_)) => None,
            Err(e) => panic!("CONNECT {authority}: {e}"),
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_dns_through_a_pod_policies_refuse_and_no_sidecar_is_503() {
    let mut options = StackOptions::new(shunt(), 1);
    // No inbound tunnel in this test: the session must outlive its grace period.
    options.session_grace = Duration::from_secs(600);
    let stack = Stack::start(options).await.unwrap();
    let alice = developer(&stack, "alice").await;
    start_session(&alice, "alice-exec").await;
    let outbound = Outbound::open(&alice, NS, "alice-exec").await.unwrap();

    // CONNECT to the Service's address from the pod: the echo app answers.
    let service = stack.service.to_string();
    let stream = connect_when_ready(&outbound, &service).await;
    let answer = get(stream, "api").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(outbound.is_connected());

    // DNS from the pod's resolver (loopback pods share the host's).
    let addresses = outbound.resolve("localhost").await.unwrap();
    assert!(addresses.contains(&"127.0.0.1".parse().unwrap()), "{addresses:?}");
    let missing = outbound.resolve("no-such-host.invalid").await.unwrap_err();
    assert!(
        matches!(&missing, OutboundError::NotFound(m) if m.contains("no-such-host.invalid") && m.contains("does not resolve in pod shop/api-")),
        "{missing}"
    );

    // A port nothing listens on: the pod's own dial error.
    let refused = outbound.connect("127.0.0.1:1").await.unwrap_err();
    assert!(
        matches!(&refused, OutboundError::Unreachable(m) if m.contains("cannot connect to 127.0.0.1:1")),
        "{refused}"
    );
    assert!(matches!(
        outbound.connect("no-port").await,
        Err(OutboundError::Invalid(_))
    ));

    // A policy blocks the Service's address and a name in another form of it.
    let ip = stack.service.ip();
    let policy = json!({"apiVersion": "policy.shunt.dev/v1alpha1", "kind": "ShuntPolicy",
        "metadata": {"name": "no-api", "namespace": NS},
        "spec": {"targetSelector": {"names": ["deployment/api"]},
                 "outgoing": {"block": [format!("{ip}/32"), "db.shop.svc.cluster.local:5432"]}}});
    let path = format!("/apis/policy.shunt.dev/v1alpha1/namespaces/{NS}/shuntpolicies");
    create(&stack.admin, &path, policy).await.unwrap();
    let denied = poll(
        "the policy to refuse",
        Duration::from_secs(20),
        async || match outbound.connect(&service).await {
            Err(OutboundError::Forbidden(m)) => Some(m),
            _ => None,
        },
    )
    .await
    .unwrap();
    assert!(
        denied.contains("ShuntPolicy shop/no-api") && denied.contains(&format!("rule outgoing.block: {ip}/32")),
        "{denied}"
    );
    let by_name = outbound.connect("db:5432").await.unwrap_err();
    assert!(
        matches!(&by_name, OutboundError::Forbidden(m) if m.contains("rule outgoing.block: db.shop.svc.cluster.local:5432")),
        "{by_name}"
    );
    let (status, _) = request(&stack.admin, "DELETE", &format!("{path}/no-api"), None)
        .await
        .unwrap();
    assert!(status < 300);

    // Without a connected sidecar: 503 that says why.
    stack.scale(0).await.unwrap();
    let unavailable = poll(
        "outbound to be unavailable",
        Duration::from_secs(30),
        async || match outbound.connect(&service).await {
            Err(OutboundError::Unavailable(m)) => Some(m),
            _ => None,
        },
    )
    .await
    .unwrap();
    assert!(
        unavailable.contains("no pod of deployment/api in shop can carry outbound traffic now"),
        "{unavailable}"
    );
    let dns = outbound.resolve("localhost").await.unwrap_err();
    assert!(matches!(dns, OutboundError::Unavailable(_)), "{dns}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_names_resolve_and_connect_from_the_pods_network_namespace() {
    if !shunt_netns::root_available("service_names_resolve_and_connect_from_the_pods_network_namespace") {
        return;
    }
    let stack = Stack::start(StackOptions {
        session_grace: Duration::from_secs(600),
        network: kubesim::Network::Netns,
        ..StackOptions::new(shunt(), 1)
    })
    .await
    .unwrap();
    let alice = developer(&stack, "alice").await;
    start_session(&alice, "alice-exec").await;
    let outbound = Outbound::open(&alice, NS, "alice-exec").await.unwrap();
    let answer = get(connect_when_ready(&outbound, "api:80").await, "api").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let ip = stack.service.ip();
    for name in ["api", "api.shop", "api.shop.svc.cluster.local"] {
        assert_eq!(outbound.resolve(name).await.unwrap(), vec![ip], "{name}");
    }
    let answer = get(outbound.connect("api.shop.svc.cluster.local:80").await.unwrap(), "api").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The laptop's resolver knows none of these: they are the pod's names.
    assert!(tokio::net::lookup_host(("api.shop.svc.cluster.local", 80))
        .await
        .is_err());
}
