//! The data plane: accepts connections meant for an app port, decides per connection
//! whether it is HTTP/1.1, HTTP/2 or something else, and per request where it goes.
//!
//! - [`sniff`]: protocol detection by peeking (nothing is consumed);
//! - [`route`]: per-request routing, mirroring and failing open;
//! - [`client`]: pooled connections onwards that hand unsent requests back;
//! - [`body`]: boxed bodies and the mirror tee;
//! - [`tcp`]: plain byte pass-through and the original destination of redirected sockets;
//! - [`workers`]: the proxy threads connections are served on.

pub mod body;
pub mod client;
pub mod route;
pub mod sniff;
pub mod tcp;
pub mod workers;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;
use crate::table::Table;
use client::{Clients, Proto};
use route::ConnInfo;
use sniff::Protocol;

/// A client must send its request head within this time (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted over HTTP/1.1; larger ones get 431.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// State shared by every connection.
pub struct Shared {
    /// The routing table in force.
    pub table: watch::Receiver<Arc<Table>>,
    /// Connections onwards.
    pub clients: Clients,
    /// Metrics.
    pub metrics: Metrics,
    /// `host:port` of the app for each managed port.
    app: HashMap<u16, String>,
    /// Fires once at shutdown: connections finish their request in flight and close.
    shutdown: watch::Receiver<bool>,
    /// Each connection holds a clone; shutdown waits until all are dropped.
    live: mpsc::Sender<()>,
    /// The operator connection that requests of `hub` routes travel on.
    pub hub: crate::hub::HubLink,
    /// The proxy threads; without them connections run on the accepting runtime.
    workers: Option<workers::Workers>,
}

impl Shared {
    /// Creates the shared state. `live` is the sender half of the drain channel.
    pub fn new(
        table: watch::Receiver<Arc<Table>>,
        metrics: Metrics,
        app_host: IpAddr,
        app_ports: &[u16],
        shutdown: watch::Receiver<bool>,
        live: mpsc::Sender<()>,
    ) -> Shared {
        let app = app_ports
            .iter()
            .map(|&p| (p, SocketAddr::new(app_host, p).to_string()))
            .collect();
        Shared {
            table,
            clients: Clients::default(),
            metrics,
            app,
            shutdown,
            live,
            hub: crate::hub::HubLink::default(),
            workers: None,
        }
    }

    /// Serves connections on `workers` instead of the runtime that accepted them.
    pub fn with_workers(mut self, workers: workers::Workers) -> Shared {
        self.workers = Some(workers);
        self
    }

    /// Sends requests of `hub` routes over `hub`.
    pub fn with_hub(mut self, hub: crate::hub::HubLink) -> Shared {
        self.hub = hub;
        self
    }

    /// `host:port` of the app behind `port`.
    pub fn app_authority(&self, port: u16) -> &str {
        // Connections only reach the proxy for managed ports (the redirect set and the
        // takeover listeners are built from them), so the entry exists.
        self.app.get(&port).map_or("127.0.0.1:0", String::as_str)
    }
}

/// Where the app port of an accepted connection comes from.
#[derive(Clone, Copy, Debug)]
pub enum PortSource {
    /// nftables mode: the destination before the redirect (`SO_ORIGINAL_DST`).
    OriginalDst,
    /// port-takeover mode: the listener stands for this app port.
    Fixed(u16),
}

/// Accepts connections until `stop` fires (or the shared shutdown does).
pub async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    ports: PortSource,
    mut stop: watch::Receiver<bool>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
            _ = shutdown.changed() => return,
        };
        let live = shared.live.clone();
        let span = tracing::debug_span!("conn", client.addr = %peer);
        let Some(workers) = &shared.workers else {
            let conn = serve(shared.clone(), stream, peer, ports);
            tokio::spawn(async move {
                let _live = live;
                tracing::Instrument::instrument(conn, span).await;
            });
            continue;
        };
        // The socket moves to the worker's reactor: off this one here, onto that one there.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot hand the connection to a proxy thread; closed");
                continue;
            }
        };
        let conn_shared = shared.clone();
        workers.spawn(async move {
            let _live = live;
            match TcpStream::from_std(stream) {
                Ok(stream) => tracing::Instrument::instrument(serve(conn_shared, stream, peer, ports), span).await,
                Err(error) => tracing::warn!(%error, "proxy thread cannot take the connection; closed"),
            }
        });
    }
}

async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, ports: PortSource) {
    let _ = stream.set_nodelay(true);
    let port = match ports {
        PortSource::Fixed(port) => port,
        PortSource::OriginalDst => match tcp::original_dst(&stream) {
            Ok(dst) if shared.app.contains_key(&dst.port()) => dst.port(),
            // Someone dialled the proxy port itself: nothing to forward to.
            Ok(dst) => return tracing::debug!(%dst, "connection not redirected from an app port; closed"),
            Err(error) => return tracing::warn!(%error, "no original destination; closed"),
        },
    };
    let routes = shared.table.borrow().port(port);
    let Some(routes) = routes else {
        // No routes (any more) for this port: bytes go straight to the app.
        shared.metrics.tcp_passthrough.inc();
        return tcp::pass_through(stream, shared.app_authority(port)).await;
    };
    let proto = match sniff::sniff(&stream).await {
        Ok(Protocol::Http1) => Proto::Http1,
        Ok(Protocol::Http2) => Proto::Http2,
        Ok(Protocol::Other) => {
            // Not HTTP: it belongs to an unfiltered steal to an address if there is one,
            // else to the app (the hub protocol carries HTTP only).
            shared.metrics.tcp_passthrough.inc();
            let dest = match routes.unfiltered_steal().and_then(|r| r.route.upstream.authority()) {
                Some(authority) => authority.as_str(),
                None => shared.app_authority(port),
            };
            return tcp::pass_through(stream, dest).await;
        }
        Err(error) => return tracing::debug!(%error, "connection closed before its first bytes"),
    };
    drop(routes);
    let info = Arc::new(ConnInfo::new(peer, port, proto, shared.clients.clone()));
    let service = {
        let shared = shared.clone();
        service_fn(move |req| route::handle(shared.clone(), info.clone(), req))
    };
    let io = TokioIo::new(stream);
    let mut shutdown = shared.shutdown.clone();
    let result = match proto {
        Proto::Http1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        Proto::Http2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_header_list_size(MAX_HEAD_BYTES as u32)
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "client connection ended with an error");
    }
}
