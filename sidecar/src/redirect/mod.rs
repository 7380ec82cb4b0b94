//! How traffic of app ports reaches the proxy, and only while routes exist.
//!
//! - nftables mode ([`run_nftables`]): dormant = no table and no proxy listener. The
//!   first route binds the proxy port and installs the table; every second the lease
//!   of the routed ports is renewed; the last route removed empties the set (nothing new
//!   is redirected), closes the listener a moment later (connections redirected just
//!   before still land), and deletes the table only once the proxy has no connection
//!   left: deleting a namespace's last NAT chain makes the kernel drop the NAT bindings
//!   of live connections (conntrack cleanup), which cut requests in flight.
//! - port-takeover mode ([`run_takeover`]): the sidecar owns its listen ports from the
//!   start (Services target them) and passes bytes through while a port has no routes.

pub mod nft;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::ResultLabels;
use crate::proxy::{accept_loop, PortSource, Shared};
use nft::Nft;

/// How long the proxy listener stays open after the redirect is gone.
const LISTENER_LINGER: Duration = Duration::from_secs(1);
/// How often a draining redirect looks whether its connections are done.
const DRAIN_POLL: Duration = Duration::from_millis(200);
/// Renewal period of the redirect lease.
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// The proxy listener of nftables mode: open, closing, or closed.
enum Listener {
    Closed,
    Open(watch::Sender<bool>),
    Closing(watch::Sender<bool>, Instant),
}

/// Keeps the nftables redirect in step with the routing table until shutdown, then
/// removes the table.
pub async fn run_nftables(config: Config, shared: Arc<Shared>, nft: Nft, mut shutdown: watch::Receiver<bool>) {
    let mut table = shared.table.clone();
    let mut listener = Listener::Closed;
    let mut installed = false;
    // The set is empty but the table stays while redirected connections are open.
    let mut draining = false;
    let mut healthy = true;
    let proxy_addr = SocketAddr::new(config.bind_ip, config.proxy_port);
    loop {
        let ports = table.borrow_and_update().ports();
        shared.metrics.active_ports.set(ports.len() as i64);
        if !ports.is_empty() {
            listener = match listener {
                Listener::Open(stop) | Listener::Closing(stop, _) => Listener::Open(stop),
                Listener::Closed => match TcpListener::bind(proxy_addr).await {
                    Ok(bound) => {
                        let (stop, stopped) = watch::channel(false);
                        tokio::spawn(accept_loop(shared.clone(), bound, PortSource::OriginalDst, stopped));
                        Listener::Open(stop)
                    }
                    Err(error) => {
                        tracing::error!(%error, %proxy_addr, "cannot listen on the proxy port; SHUNT_PROXY_PORT must be free");
                        Listener::Closed
                    }
                },
            };
            if matches!(listener, Listener::Open(_)) {
                let result = if installed {
                    nft.renew(&ports).await
                } else {
                    nft.install(&ports).await
                };
                let ok = result.is_ok();
                shared
                    .metrics
                    .lease_renewals
                    .get_or_create(&ResultLabels {
                        result: if ok { "ok" } else { "error" },
                    })
                    .inc();
                match result {
                    Ok(()) if !installed => tracing::info!(?ports, "redirect active"),
                    Ok(()) => {}
                    // Log the first failure of a streak, not one line per second.
                    Err(error) if healthy => {
                        tracing::error!(%error, "redirect lease not renewed; traffic goes to the app")
                    }
                    Err(_) => {}
                }
                // After a failure the table may be gone or stale: rebuild it next time.
                installed = ok;
                healthy = ok;
                draining = false;
            }
        } else {
            if installed && !draining {
                // No new connection is redirected from now on; the table itself stays
                // until the connections it redirected are done (see Shared::connections).
                match nft.renew(&[]).await {
                    Ok(()) => tracing::info!("redirect emptied; draining"),
                    Err(error) => tracing::warn!(%error, "cannot empty the redirect set; removing the table"),
                }
                draining = true;
            }
            listener = match listener {
                Listener::Open(stop) => Listener::Closing(stop, Instant::now() + LISTENER_LINGER),
                Listener::Closing(_, deadline) if Instant::now() >= deadline => Listener::Closed,
                other => other,
            };
            if installed && matches!(listener, Listener::Closed) && shared.connections() == 0 {
                match nft.remove().await {
                    Ok(()) => tracing::info!("redirect removed; dormant"),
                    Err(error) => {
                        tracing::error!(%error, "cannot remove the redirect table; its elements expire by themselves")
                    }
                }
                installed = false;
                draining = false;
            }
        }
        let wake = match &listener {
            Listener::Closing(_, deadline) => (*deadline).min(Instant::now() + RENEW_EVERY),
            // Draining: look at the open connections often.
            _ if draining => Instant::now() + DRAIN_POLL,
            _ => Instant::now() + RENEW_EVERY,
        };
        tokio::select! {
            changed = table.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(wake) => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Err(error) = nft.remove().await {
        tracing::error!(%error, "cannot remove the redirect table at shutdown; its elements expire by themselves");
    }
    shared.metrics.active_ports.set(0);
}

/// Binds the takeover listen ports (one per app port); serves them until shutdown.
pub async fn run_takeover(config: Config, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    for (&app, &listen) in &config.listen_ports {
        let addr = SocketAddr::new(config.bind_ip, listen);
        let bound = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {addr} (SHUNT_LISTEN_PORT for app port {app}): {e}"),
            )
        })?;
        tracing::info!(listen.addr = %addr, app.port = app, "taking over port");
        tokio::spawn(accept_loop(
            shared.clone(),
            bound,
            PortSource::Fixed(app),
            shutdown.clone(),
        ));
    }
    let mut table = shared.table.clone();
    let mut shutdown = shutdown;
    loop {
        let active = table.borrow_and_update().ports().len();
        shared.metrics.active_ports.set(active as i64);
        tokio::select! {
            changed = table.changed() => if changed.is_err() { return Ok(()) },
            _ = shutdown.changed() => return Ok(()),
        }
    }
}
