//! `shunt-sidecar`: the proxy injected into every pod of an opted-in namespace.
//!
//! Dormant until a route exists; then it takes the traffic of the routed app ports
//! ([`redirect`]), routes each HTTP request to the app or a developer ([`proxy`]) by the
//! routes in force ([`table`], fed by a [`source`] or the operator's [`hub`]), and fails
//! open whenever its own path fails. For `shunt exec` it also dials connections and
//! answers DNS questions in the pod's network ([`outbound`]). [`run`] wires it together;
//! `main.rs` only parses the configuration.

pub mod admin;
pub mod config;
pub mod hub;
pub mod metrics;
pub mod outbound;
pub mod proxy;
pub mod redirect;
pub mod source;
pub mod table;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;

use tokio::sync::{mpsc, oneshot, watch};

use config::{Config, RedirectMode};
use metrics::Metrics;
use table::Table;

/// Runs the sidecar until SIGTERM or SIGINT, then drains and returns.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Metrics::default();
    let (table_tx, table_rx) = watch::channel(Arc::new(Table::default()));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (live_tx, mut live_rx) = mpsc::channel::<()>(1);

    let admin = Arc::new(admin::Admin {
        registry: metrics.registry(),
        ready: false.into(),
        table: table_rx.clone(),
    });
    let admin_listener = admin::bind(SocketAddr::new(config.bind_ip, config.admin_port)).await?;
    tokio::spawn(admin::serve(admin_listener, admin.clone()));

    let link = match &config.hub {
        Some(hub) => hub::HubLink::new(&hub.pod_namespace, &hub.pod_name),
        None => hub::HubLink::default(),
    };
    let shared = Arc::new(
        proxy::Shared::new(
            table_rx,
            metrics.clone(),
            config.app_host,
            &config.app_ports,
            shutdown_rx.clone(),
            live_tx,
        )
        .with_hub(link.clone())
        .with_workers(proxy::workers::Workers::start(config.workers).context("starting the proxy threads")?),
    );

    // Ready once the redirect is in place: in nftables mode after the first install
    // (which replaces a previous sidecar's stale table), in port-takeover mode once the
    // listen ports are bound.
    let (redirect_ready, redirect_installed) = oneshot::channel();
    let redirect = match config.redirect {
        RedirectMode::Nftables => {
            // The redirect task replaces a table left by a previous sidecar (which would
            // redirect to a dead proxy until its elements expire) before anything else.
            let nft = redirect::nft::Nft::new(config.nft.clone(), config.proxy_port, config.lease);
            tokio::spawn(redirect::run_nftables(
                config.clone(),
                shared.clone(),
                nft,
                shutdown_rx.clone(),
                redirect_ready,
            ))
        }
        RedirectMode::PortTakeover => {
            let (config, shared, shutdown) = (config.clone(), shared.clone(), shutdown_rx.clone());
            let task = redirect::run_takeover(config, shared, shutdown, redirect_ready);
            tokio::spawn(async move {
                if let Err(error) = task.await {
                    tracing::error!(%error, "port takeover failed");
                }
            })
        }
    };

    // Without a source the sidecar stays dormant; the sender is kept so the channel stays open.
    let _dormant = match (config.routes_file.clone(), config.hub.clone()) {
        (_, Some(settings)) => {
            tokio::spawn(outbound::run(settings.clone(), link.outbound_wanted(), metrics.clone()));
            tokio::spawn(hub::run(
                settings,
                config.app_ports.clone(),
                config.lease,
                metrics.clone(),
                table_tx,
                link,
            ));
            None
        }
        (Some(path), None) => {
            tokio::spawn(source::watch_file(
                path,
                config.app_ports.clone(),
                metrics.clone(),
                table_tx,
            ));
            None
        }
        (None, None) => Some(table_tx),
    };
    tokio::spawn({
        let admin = admin.clone();
        async move {
            // An error means the redirect task ended without getting ready (it logged why).
            if redirect_installed.await.is_ok() {
                admin.ready.store(true, Ordering::Relaxed);
                tracing::debug!("redirect in place; ready");
            }
        }
    });
    tracing::info!(mode = ?config.redirect, app.ports = ?config.app_ports, "shunt-sidecar started");

    wait_for_signal().await?;
    tracing::info!(grace = ?config.drain, "shutting down: redirect off, draining connections");
    let _ = shutdown_tx.send(true);
    let _ = redirect.await;
    drop(shared);
    if tokio::time::timeout(config.drain, live_rx.recv()).await.is_err() {
        tracing::warn!("drain grace time over; closing remaining connections");
    }
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
