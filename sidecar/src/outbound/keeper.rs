//! Keeps the reverse connection up while outbound traffic is wanted, and replaces it when
//! the kubelet rotates the token (make-before-break), like the routes watch's keeper
//! ([`crate::hub`]).
//!
//! The hub retires a reverse connection whose token has expired: out of its registry, so
//! until a new one is up, `shunt exec`'s CONNECT and DNS through this pod find no route.
//! So the token file is polled every [`TOKEN_POLL`]; a changed token gets a second
//! connection while the first keeps serving. Once the hub has accepted the new one
//! ([`dial`]: the 101 and its first HTTP/2 bytes; the hub registers it in place of the
//! old one), the old one is retired: GOAWAY, its open tunnels finish, then it closes. A
//! new connection that fails leaves the old one serving and is retried with back-off
//! (logged once). A connection the hub ends cleanly is redialled at once (at most once
//! per [`BACKOFF_MAX`]); a broken one after back-off.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::{Id, JoinSet};

use super::dial::{self, Accepted};
use super::{serve, ReverseError, State, MAX_OPEN};
use crate::config::HubSettings;
use crate::hub::conn::read_token;
use crate::hub::keeper::{finish, TOKEN_POLL};
use crate::hub::redial::{EndLog, OpenLog, Redial};
use crate::metrics::Metrics;

/// Longest time to open a reverse connection and hear the hub on it.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

const END_LOG: EndLog = EndLog {
    ended: "the operator closed the reverse connection; reconnecting",
    ended_again: "the operator closed the reverse connection again",
    broke: "reverse connection for outbound traffic failed",
};

const OPEN_LOG: OpenLog = OpenLog {
    failed: "reverse connection for outbound traffic failed",
    rotation_failed:
        "cannot open a reverse connection with the rotated token; the current one keeps serving until it works",
    rotation_still_failing: "still cannot open a reverse connection with the rotated token",
};

/// Keeps the reverse connection up while `wanted` is `true`, until its sender is gone.
pub async fn run(settings: HubSettings, wanted: watch::Receiver<bool>, metrics: Metrics) {
    let dial_settings = settings.clone();
    let dial = move |token: String| {
        let settings = dial_settings.clone();
        async move { dial::open(&settings, token).await }
    };
    keep(&settings, wanted, &metrics, dial).await;
}

/// The connection that takes the hub's new outbound traffic.
struct Current {
    task: Id,
    token: String,
    /// Fired when a newer connection has replaced this one.
    retire: oneshot::Sender<()>,
}

/// [`run`] with the dialling given (tests dial in-memory hubs).
pub(super) async fn keep<D, F>(settings: &HubSettings, mut wanted: watch::Receiver<bool>, metrics: &Metrics, dial: D)
where
    D: Fn(String) -> F,
    F: Future<Output = Result<Accepted, ReverseError>> + Send + 'static,
{
    let addr = settings.addr.as_str();
    // Shared by the current and the retired connections: MAX_OPEN is per pod.
    let state = Arc::new(State {
        metrics: metrics.clone(),
        pod: format!("{}/{}", settings.pod_namespace, settings.pod_name),
        open: Arc::new(Semaphore::new(MAX_OPEN)),
    });
    // Every connection serving, the current one and retired ones finishing their tunnels.
    let mut serving: JoinSet<Result<(), ReverseError>> = JoinSet::new();
    let mut current: Option<Current> = None;
    let mut opening: Option<Pin<Box<tokio::time::Timeout<F>>>> = None;
    // The token the connection being opened carries.
    let mut opening_token = String::new();
    let mut redial = Redial::new();
    let mut poll = tokio::time::interval(TOKEN_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if !*wanted.borrow_and_update() {
            if current.is_some() || !serving.is_empty() {
                tracing::info!("outbound traffic no longer wanted: reverse connection closed");
            }
            // Dropping the set aborts the connections and their streams.
            (serving, current, opening) = (JoinSet::new(), None, None);
            redial.reset();
            if wanted.wait_for(|w| *w).await.is_err() {
                return;
            }
            redial.dial_now();
        }
        tokio::select! {
            changed = wanted.changed() => if changed.is_err() {
                return;
            },
            Some(ended) = serving.join_next_with_id(), if !serving.is_empty() => {
                let (task, result) = match ended {
                    Ok((task, result)) => (task, result),
                    Err(error) => (error.id(), Err(ReverseError::Task(error))),
                };
                if current.as_ref().is_none_or(|c| c.task != task) {
                    tracing::debug!(result = ?result.err(), "a replaced reverse connection closed");
                    continue;
                }
                current = None;
                redial.ended(result, opening.is_some(), addr, &END_LOG);
            },
            opened = finish(&mut opening) => {
                opening = None;
                let opened = opened.unwrap_or_else(|_| {
                    Err(ReverseError::NotTaken(format!("no answer within {OPEN_TIMEOUT:?}")))
                });
                match opened {
                    Ok(accepted) => {
                        let (retire, retired) = oneshot::channel();
                        let task = serving.spawn(serve(accepted, state.clone(), retired)).id();
                        let token = std::mem::take(&mut opening_token);
                        redial.connected();
                        match current.replace(Current { task, token, retire }) {
                            Some(old) => {
                                tracing::info!(hub.addr = addr, "reverse connection with the rotated token up; the old one finishes its open connections and closes");
                                let _ = old.retire.send(());
                            }
                            None => tracing::info!(hub.addr = addr, "reverse connection up: serving outbound traffic"),
                        }
                    }
                    Err(error) => redial.open_failed(error, current.is_some(), addr, &OPEN_LOG),
                }
            },
            () = redial.due(), if opening.is_none() => {
                redial.dialling();
                let token = match read_token(settings) {
                    Ok(token) => token,
                    Err(error) => {
                        let retry_in = redial.retry();
                        tracing::warn!(%error, ?retry_in, "no token to open the reverse connection with");
                        continue;
                    }
                };
                // A rotation retried after the file went back to the current token: done.
                if current.as_ref().is_some_and(|c| c.token == token) {
                    redial.rotation_done();
                    continue;
                }
                opening_token.clone_from(&token);
                opening = Some(Box::pin(tokio::time::timeout(OPEN_TIMEOUT, dial(token))));
            },
            _ = poll.tick(), if opening.is_none() && !redial.scheduled() && current.is_some() => {
                let rotated = read_token(settings)
                    .is_ok_and(|token| current.as_ref().is_some_and(|c| c.token != token));
                if rotated {
                    tracing::info!(hub.addr = addr, "the token file changed; opening a reverse connection with the new token");
                    redial.dial_now();
                }
            },
        }
    }
}
