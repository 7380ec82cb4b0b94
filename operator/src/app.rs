//! [`run`]: wires the operator — Kubernetes client, leader election, registry, tunnels,
//! hub, API server, session lifecycle, policies, admin server (`/healthz`, `/readyz`, `/metrics`) —
//! and shuts it down gracefully.
//!
//! Only the leader serves the API and the hub: sessions live in its memory, so one
//! replica must own them all. A standby answers `/healthz` but not `/readyz`, so its
//! Service endpoints (API, hub) stay empty until it leads. With `--tls-secret`, a replica
//! competes for the Lease only once the Secret gave it a certificate to serve; until then
//! `/readyz` says what it waits for.

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
use crate::policy::{Controller as PolicyController, Policies};
use crate::registry::Registry;
use crate::tls_secret::{self, ServingCert};
use crate::tunnel::Tunnels;

struct Admin {
    ready: AtomicBool,
    metrics: prometheus_client::registry::Registry,
    /// The certificate of `--tls-secret`, if given.
    cert: Option<Arc<ServingCert>>,
}

async fn readyz(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    if let Some(reason) = admin.cert.as_ref().and_then(|c| c.not_ready()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no certificate to serve: {reason}\n"),
        );
    }
    if admin.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "standby: another replica holds the Lease".to_owned(),
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

/// The operator's three listeners, bound before it starts (so callers can bind port 0
/// and learn the addresses first).
pub struct Listeners {
    /// The aggregated API server (`--api-listen`).
    pub api: tokio::net::TcpListener,
    /// The sidecar hub (`--hub-listen`).
    pub hub: tokio::net::TcpListener,
    /// The admin server (`--admin-listen`).
    pub admin: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds `--api-listen`, `--hub-listen` and `--admin-listen`.
    pub async fn bind(args: &Args) -> anyhow::Result<Listeners> {
        let bind = |addr: std::net::SocketAddr, flag: &'static str| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} ({flag})"))
        };
        Ok(Listeners {
            api: bind(args.api_listen, "--api-listen").await?,
            hub: bind(args.hub_listen, "--hub-listen").await?,
            admin: bind(args.admin_listen, "--admin-listen").await?,
        })
    }
}

/// Runs the operator until `shutdown` completes (then drains for `--drain`) or a part of
/// it fails (an error, e.g. the Lease was lost).
pub async fn run(args: Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("cannot build a Kubernetes client (in-cluster or KUBECONFIG)")?;
    let listeners = Listeners::bind(&args).await?;
    run_with(args, client, listeners, shutdown).await
}

/// [`run`] with the Kubernetes client and the listeners given (`shunt demo` and the end to
/// end tests run the operator in-process as its own user, on ports bound to 0).
pub async fn run_with(
    args: Args,
    client: kube::Client,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let hub_state = HubState::default();
    let sessions_gauge = Gauge::<i64>::default();
    let mut metrics = prometheus_client::registry::Registry::default();
    hub_state.metrics().register(&mut metrics);
    metrics.register("shunt_operator_sessions", "Sessions held", sessions_gauge.clone());
    let cert = args.tls_secret.as_ref().map(|name| {
        let expiry = Gauge::<i64>::default();
        metrics.register(
            "shunt_operator_certificate_expiry_timestamp_seconds",
            "notAfter of the served certificate (--tls-secret), Unix time",
            expiry.clone(),
        );
        (name.clone(), Arc::new(ServingCert::new(&args.namespace, name, expiry)))
    });
    let admin = Arc::new(Admin {
        ready: AtomicBool::new(false),
        metrics,
        cert: cert.as_ref().map(|(_, cert)| cert.clone()),
    });
    let Listeners {
        api: api_listener,
        hub: hub_listener,
        admin: admin_listener,
    } = listeners;
    let (api_addr, hub_addr, admin_addr) = (
        api_listener.local_addr()?,
        hub_listener.local_addr()?,
        admin_listener.local_addr()?,
    );
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
    // Runs until the operator stops (standbys keep their certificate current too).
    let cert_task = cert.as_ref().map(|(name, cert)| {
        tokio::spawn(tls_secret::watch(
            client.clone(),
            args.namespace.clone(),
            name.clone(),
            cert.clone(),
        ))
    });
    let _cert_task = AbortOnDrop(cert_task);
    if let Some((_, cert)) = &cert {
        tokio::select! {
            () = cert.loaded() => {}
            () = &mut shutdown => return Ok(()),
        }
    }
    let leader = Leader::new(client.clone(), &args.namespace, &args.lease_name, &args.identity());
    tokio::select! {
        () = leader.acquire() => {}
        () = &mut shutdown => return Ok(()),
    }

    let trust = FrontProxy::load(client.clone()).await?;
    let (tls, hub_tls) = match &cert {
        Some((_, cert)) => (trust.server_tls_with(cert.clone())?, hub::tls_config(cert.clone())?),
        None => {
            let (api_cert, api_key) = tls_pair(
                args.api_tls_cert.as_ref(),
                args.api_tls_key.as_ref(),
                &args.server_name,
                "API",
            )?;
            let (hub_cert, hub_key) = tls_pair(
                args.hub_tls_cert.as_ref(),
                args.hub_tls_key.as_ref(),
                &args.server_name,
                "hub",
            )?;
            let hub_config = HubConfig {
                listen: hub_addr,
                cert_pem: hub_cert,
                key_pem: hub_key,
            };
            (
                trust.server_tls(api_cert.as_bytes(), api_key.as_bytes())?,
                hub::fixed_tls_config(&hub_config)?,
            )
        }
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
    let policies = Policies::default();
    let policy_task = tokio::spawn(
        PolicyController {
            client: client.clone(),
            policies: policies.clone(),
            registry: registry.clone(),
            tunnels: tunnels.clone(),
            events: events.clone(),
            interval: std::time::Duration::from_secs(1),
        }
        .run(),
    );
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(api::serve(
        api_listener,
        tls,
        api::router(state).layer(axum::Extension(policies.clone())),
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
    let hub = hub::serve_tls(hub_listener, hub_tls, registry, tunnels, client, hub_state);
    admin.ready.store(true, Ordering::Relaxed);
    tracing::info!(api = %api_addr, hub = %hub_addr, admin = %admin_addr, "serving");

    let outcome = tokio::select! {
        () = &mut shutdown => Ok(()),
        () = leader.hold() => Err(anyhow::anyhow!("lost the Lease {}: stopping so a new leader serves the sessions", args.lease_name)),
        result = hub => result.context("the sidecar hub stopped"),
    };
    admin.ready.store(false, Ordering::Relaxed);
    lifecycle_task.abort();
    policy_task.abort();
    gauge_task.abort();
    let _ = stop_api.send(());
    let _ = api_task.await;
    outcome
}

/// Aborts the task when dropped, on every way out of [`run_with`].
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}
