//! Keeps one routes watch up: dials, redials, and replaces the connection when the
//! kubelet rotates the token (make-before-break).
//!
//! The hub ends a watch when its token expires; the kubelet writes a fresh token at ~80 %
//! of the old one's life. Waiting for the end would leave a gap in which the sessions'
//! requests are served by the app, so the token file is polled every [`TOKEN_POLL`]: a
//! changed token gets a second connection while the first keeps serving. Once the new
//! watch has delivered its first document, the link sends on the new connection and the
//! old one is retired ([`conn::Watch::retire`]: requests on it get their answers). A new
//! connection that fails leaves the old one in place and is retried with back-off.
//!
//! `up` is `true` while some watch is open; [`lease_keeper`] drops the routes when it
//! stays `false` for the lease.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shunt_proto::route::RouteSet;
use tokio::sync::watch;

use super::conn::{self, HubError, Watch};
use super::redial::{EndLog, OpenLog, Redial};
use super::HubLink;
use crate::config::HubSettings;
use crate::metrics::Metrics;
use crate::table::Table;

/// How often the token file is compared with the token of the open watch.
pub(crate) const TOKEN_POLL: Duration = Duration::from_secs(2);
/// Longest time to open a connection and receive the watch's first document.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a replaced connection may take to hand over its requests' responses heads.
const RETIRE_GRACE: Duration = Duration::from_secs(10);

const END_LOG: EndLog = EndLog {
    ended: "the operator ended the routes watch; reconnecting",
    ended_again: "the operator ended the routes watch again",
    broke: "the routes watch broke",
};

const OPEN_LOG: OpenLog = OpenLog {
    failed: "no routes from the operator",
    rotation_failed: "cannot connect with the rotated token; the current connection keeps serving until it works",
    rotation_still_failing: "still cannot connect with the rotated token",
};

/// Runs the hub source until `tx` has no receivers: connect, watch, publish, redial.
pub async fn run(
    settings: HubSettings,
    app_ports: Vec<u16>,
    lease: Duration,
    metrics: Metrics,
    tx: watch::Sender<Arc<Table>>,
    link: HubLink,
) {
    let dial_settings = settings.clone();
    let dial = move |token: String| {
        let settings = dial_settings.clone();
        async move { conn::open(&settings, token).await }
    };
    keep(&settings, &app_ports, lease, &metrics, &tx, &link, dial).await;
}

/// [`run`] with the dialling given (tests dial in-memory hubs).
pub(super) async fn keep<D, F>(
    settings: &HubSettings,
    app_ports: &[u16],
    lease: Duration,
    metrics: &Metrics,
    tx: &watch::Sender<Arc<Table>>,
    link: &HubLink,
    dial: D,
) where
    D: Fn(String) -> F,
    F: Future<Output = Result<(Watch, Bytes), HubError>> + Send + 'static,
{
    let (up, up_rx) = watch::channel(false);
    tokio::spawn(lease_keeper(up_rx, lease, tx.clone(), metrics.clone()));
    let addr = settings.addr.as_str();
    let publish = |line: &[u8]| conn::publish(line, app_ports, metrics, tx, link);

    let mut current: Option<Watch> = None;
    let mut opening: Option<std::pin::Pin<Box<tokio::time::Timeout<F>>>> = None;
    let mut redial = Redial::new();
    let mut poll = tokio::time::interval(TOKEN_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            () = tx.closed() => return,
            doc = next_document(&mut current) => match doc {
                Ok(Some(line)) => publish(&line),
                ended => {
                    current = None;
                    link.set(None);
                    // Without the routes watch nobody says the reverse connection is still wanted.
                    link.want_outbound(false);
                    up.send_replace(false);
                    redial.ended(ended.map(drop), opening.is_some(), addr, &END_LOG);
                }
            },
            opened = finish(&mut opening) => {
                opening = None;
                match opened.unwrap_or_else(|_| Err(HubError::Stream(format!("no routes document within {OPEN_TIMEOUT:?}")))) {
                    Ok((watch, first)) => {
                        publish(&first);
                        link.set(Some(watch.connection()));
                        up.send_replace(true);
                        redial.connected();
                        if let Some(old) = current.replace(watch) {
                            tracing::info!(hub.addr = addr, "switched to a connection with the rotated token; closing the old one");
                            tokio::spawn(old.retire(RETIRE_GRACE));
                        }
                    }
                    Err(error) => redial.open_failed(error, current.is_some(), addr, &OPEN_LOG),
                }
            },
            () = redial.due(), if opening.is_none() => {
                redial.dialling();
                let token = match conn::read_token(settings) {
                    Ok(token) => token,
                    Err(error) => {
                        let retry_in = redial.retry();
                        tracing::warn!(%error, ?retry_in, "no token to connect to the operator with");
                        continue;
                    }
                };
                // A rotation retried after the file went back to the current token: done.
                if current.as_ref().is_some_and(|w| w.token() == token) {
                    redial.rotation_done();
                    continue;
                }
                opening = Some(Box::pin(tokio::time::timeout(OPEN_TIMEOUT, dial(token))));
            },
            _ = poll.tick(), if opening.is_none() && !redial.scheduled() && current.is_some() => {
                let rotated = conn::read_token(settings)
                    .is_ok_and(|token| current.as_ref().is_some_and(|w| w.token() != token));
                if rotated {
                    tracing::info!(hub.addr = addr, "the token file changed; opening a connection with the new token");
                    redial.dial_now();
                }
            },
        }
    }
}

/// The open watch's next document; never resolves without one.
async fn next_document(current: &mut Option<Watch>) -> Result<Option<Bytes>, HubError> {
    match current {
        Some(watch) => watch.next_document().await,
        None => std::future::pending().await,
    }
}

/// The connection being opened; never resolves without one.
pub(crate) async fn finish<F: Future + Unpin>(opening: &mut Option<F>) -> F::Output {
    match opening {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// While the watch is down for longer than `lease`, the routes are dropped (dormant).
async fn lease_keeper(mut up: watch::Receiver<bool>, lease: Duration, tx: watch::Sender<Arc<Table>>, metrics: Metrics) {
    loop {
        if up.wait_for(|up| !*up).await.is_err() {
            return;
        }
        let back = tokio::time::timeout(lease, up.wait_for(|up| *up))
            .await
            .map(|r| r.is_ok());
        match back {
            Ok(true) => continue,
            Ok(false) => return,
            Err(_) => {
                if !tx.borrow().set().is_empty() {
                    tracing::warn!(?lease, "no operator connection for the lease; routes dropped (dormant)");
                    metrics.routes.set(0);
                    tx.send_replace(Arc::new(Table::new(RouteSet::default(), &metrics)));
                }
                if up.wait_for(|up| *up).await.is_err() {
                    return;
                }
            }
        }
    }
}
