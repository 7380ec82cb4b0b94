//! [`run`]: wires the operator — Kubernetes client, leader election, registry, tunnels,
//! hub, API server, session lifecycle, admin server (`/healthz`, `/readyz`, `/metrics`) —
//! and shuts it down gracefully.
//!
//! Only the leader serves the API and the hub: sessions live in its memory, so one
//! replica must own them all. A standby answers `/healthz` but not `/readyz`, so its
//! Service endpoints (API, hub) stay empty until it leads.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;

use crate::api::{self, auth::FrontProxy, AppState};
use crate::config::{tls_pair, Args};
use crate::hub::{self, HubConfig, HubState};
use crate::leader::Leader;
use crate::lifecycle::{Events, Lifecycle};
use crate::registry::Registry;
use crate::tunnel::Tunnels;

struct Admin {
    ready: AtomicBool,
    metrics: prometheus_client::registry::Registry,
}

async fn readyz(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    if admin.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "standby: another replica holds the Lease",
        )
    }
}

async fn metrics_text(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &admin.metrics);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Runs the operator until `shutdown` completes (then drains for `--drain`) or a part of
/// it fails (an error, e.g. the Lease was lost).
pub async fn run(args: Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster or KUBECONFIG)")?;
    let hub_state = HubState::default();
    let sessions_gauge = Gauge::<i64>::default();
    let mut metrics = prometheus_client::registry::Registry::default();
    hub_state.metrics().register(&mut metrics);
    metrics.register("shunt_operator_sessions", "Sessions held", sessions_gauge.clone());
    let admin = Arc::new(Admin {
        ready: AtomicBool::new(false),
        metrics,
    });
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--admin-listen)", args.admin_listen))?;
    let admin_router = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(admin.clone());
    tokio::spawn(async move {
        if let Err(error) = axum::serve(admin_listener, admin_router).await {
            tracing::error!(%error, "admin server failed");
        }
    });

    tokio::pin!(shutdown);
    let leader = Leader::new(client.clone(), &args.namespace, &args.lease_name, &args.identity());
    tokio::select! {
        () = leader.acquire() => {}
        () = &mut shutdown => return Ok(()),
    }

    let trust = FrontProxy::load(client.clone()).await?;
    let (api_cert, api_key) = tls_pair(
        args.api_tls_cert.as_ref(),
        args.api_tls_key.as_ref(),
        &args.server_name,
        "API",
    )?;
    let tls = trust.server_tls(api_cert.as_bytes(), api_key.as_bytes())?;
    let (hub_cert, hub_key) = tls_pair(
        args.hub_tls_cert.as_ref(),
        args.hub_tls_key.as_ref(),
        &args.server_name,
        "hub",
    )?;
    let hub_config = HubConfig {
        listen: args.hub_listen,
        cert_pem: hub_cert,
        key_pem: hub_key,
    };
    let (registry, tunnels) = (Registry::default(), Tunnels::default());
    let events = Events::new(client.clone(), Some(args.identity()));
    let state = Arc::new(AppState {
        registry: registry.clone(),
        tunnels: tunnels.clone(),
        client: client.clone(),
        trust,
        hub: hub_state.clone(),
        events: events.clone(),
    });
    let api_listener = tokio::net::TcpListener::bind(args.api_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--api-listen)", args.api_listen))?;
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(api::serve(
        api_listener,
        tls,
        api::router(state),
        async {
            let _ = api_stopped.await;
        },
        args.drain,
    ));
    let lifecycle = Lifecycle {
        client: client.clone(),
        registry: registry.clone(),
        tunnels: tunnels.clone(),
        hub: hub_state.clone(),
        events,
        grace: args.session_grace,
        interval: std::time::Duration::from_secs(1),
    };
    let lifecycle_task = tokio::spawn(lifecycle.run());
    let gauge_task = tokio::spawn({
        let (registry, gauge) = (registry.clone(), sessions_gauge);
        let mut changes = registry.changes();
        async move {
            while changes.changed().await.is_ok() {
                gauge.set(i64::try_from(registry.list(None).len()).unwrap_or(i64::MAX));
            }
        }
    });
    let hub = hub::serve(hub_config, registry, tunnels, client, hub_state);
    admin.ready.store(true, Ordering::Relaxed);
    tracing::info!(api = %args.api_listen, hub = %args.hub_listen, admin = %args.admin_listen, "serving");

    let outcome = tokio::select! {
        () = &mut shutdown => Ok(()),
        () = leader.hold() => Err(anyhow::anyhow!("lost the Lease {}: stopping so a new leader serves the sessions", args.lease_name)),
        result = hub => result.context("the sidecar hub stopped"),
    };
    admin.ready.store(false, Ordering::Relaxed);
    lifecycle_task.abort();
    gauge_task.abort();
    let _ = stop_api.send(());
    let _ = api_task.await;
    outcome
}
