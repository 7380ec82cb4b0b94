//! How traffic of app ports reaches the proxy, and only while routes exist.
//!
//! - nftables mode ([`run_nftables`]): the table `inet shunt` exists from the sidecar's
//!   start to its clean shutdown; dormant = its port set is empty and no proxy listener
//!   is open. The first route binds the proxy port and puts the port in the set; every
//!   second the lease of the routed ports is renewed; the last route removed empties the
//!   set (nothing new is redirected) and closes the listener a moment later (connections
//!   redirected just before still land; those accepted are served to their end).
//!
//!   Why the table is not removed while dormant: the kernel tracks connections in a
//!   network namespace only while a NAT chain exists there. Deleting the last one drops
//!   the NAT bindings of live connections (a redirected request in flight is cut);
//!   creating it again picks up the connections open at that moment mid-stream, and a
//!   segment the app sends then can be taken for a new flow that clashes with the
//!   client's and leaves with another source port (the client hangs or is reset). Both
//!   lost about one request per switch under load. An empty set redirects nothing.
//! - port-takeover mode ([`run_takeover`]): the sidecar owns its listen ports from the
//!   start (Services target them) and passes bytes through while a port has no routes.

pub mod nft;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::metrics::ResultLabels;
use crate::proxy::{accept_loop, PortSource, Shared};
use nft::Nft;

/// How long the proxy listener stays open after the redirect is gone.
const LISTENER_LINGER: Duration = Duration::from_secs(1);
/// How often a dormant redirect loop wakes without a route change (it has nothing to do).
const DORMANT_WAKE: Duration = Duration::from_secs(3600);
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
///
/// `ready` fires once the first install has finished: from then on no stale table of a
/// previous sidecar redirects to a dead proxy port. It fires when that install failed
/// too, since the app then serves every connection itself (the sidecar fails open) and
/// the error is logged; keeping the pod unready would only take the app out of service.
pub async fn run_nftables(
    config: Config,
    shared: Arc<Shared>,
    nft: Nft,
    mut shutdown: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) {
    let mut table = shared.table.clone();
    let mut listener = Listener::Closed;
    // One batch replaces a stale table (a previous sidecar's) with an empty one, so
    // connection tracking never stops in between.
    let mut installed = match nft.install(&[]).await {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, "cannot install the redirect table; routes will not take effect until it can be");
            false
        }
    };
    let _ = ready.send(());
    // The set holds ports.
    let mut leased = false;
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
                    Ok(()) if !leased => tracing::info!(?ports, "redirect active"),
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
                leased = ok;
            }
        } else {
            if leased {
                // No new connection is redirected from now on; those redirected before
                // keep their NAT binding, since the table stays.
                match nft.renew(&[]).await {
                    Ok(()) => tracing::info!("redirect emptied; dormant"),
                    Err(error) => {
                        installed = false;
                        tracing::warn!(%error, "cannot empty the redirect set; its elements expire within the lease")
                    }
                }
                leased = false;
            }
            listener = match listener {
                Listener::Open(stop) => Listener::Closing(stop, Instant::now() + LISTENER_LINGER),
                Listener::Closing(_, deadline) if Instant::now() >= deadline => Listener::Closed,
                other => other,
            };
        }
        let wake = match &listener {
            Listener::Closing(_, deadline) => (*deadline).min(Instant::now() + RENEW_EVERY),
            Listener::Open(_) => Instant::now() + RENEW_EVERY,
            // Dormant: nothing to renew; a route change wakes the loop.
            Listener::Closed => Instant::now() + DORMANT_WAKE,
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
/// `ready` fires once every listen port is bound (Services target them); never if one
/// cannot be bound.
pub async fn run_takeover(
    config: Config,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    ready: oneshot::Sender<()>,
) -> std::io::Result<()> {
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
    let _ = ready.send(());
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
