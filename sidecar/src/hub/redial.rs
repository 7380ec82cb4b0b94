//! When a keeper dials its hub connection next: the redial policy both keepers share (the
//! routes watch's, [`super::keeper`], and the reverse connection's,
//! [`crate::outbound::keeper`]).
//!
//! A connection the hub ends cleanly is redialled at once, at most once per
//! [`BACKOFF_MAX`], so a hub that keeps ending connections at once is not hammered; a
//! broken one, or a dial that fails, is retried after an exponential back-off from
//! [`BACKOFF_MIN`]. While a connection is being opened (a token rotation) nothing else is
//! scheduled: that connection takes over when it is up. The keepers log differently, so
//! they pass their messages in.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::{BACKOFF_MAX, BACKOFF_MIN};

/// What a keeper logs when its connection ends.
pub(crate) struct EndLog {
    /// Ended cleanly; redialled at once.
    pub ended: &'static str,
    /// Ended cleanly again within [`BACKOFF_MAX`]; redialled after back-off.
    pub ended_again: &'static str,
    /// Broke; redialled after back-off.
    pub broke: &'static str,
}

/// What a keeper logs when opening a connection fails.
pub(crate) struct OpenLog {
    /// No connection is serving.
    pub failed: &'static str,
    /// A rotation failed while the current connection keeps serving (logged once).
    pub rotation_failed: &'static str,
    /// The rotation failed again (debug).
    pub rotation_still_failing: &'static str,
}

/// The redial schedule of one keeper.
pub(crate) struct Redial {
    backoff: Duration,
    /// When the last clean end was redialled at once.
    quick_redial: Option<Instant>,
    /// When to dial next; `None` while nothing is scheduled.
    dial_at: Option<Instant>,
    /// A rotation failed and was logged; later failures are logged at debug.
    rotation_failing: bool,
}

impl Redial {
    /// A schedule that dials at once.
    pub(crate) fn new() -> Self {
        Self {
            backoff: BACKOFF_MIN,
            quick_redial: None,
            dial_at: Some(Instant::now()),
            rotation_failing: false,
        }
    }

    /// Resolves when a dial is due; never while none is scheduled.
    pub(crate) fn due(&self) -> impl Future<Output = ()> + 'static {
        sleep_until(self.dial_at)
    }

    /// Whether a dial is scheduled.
    pub(crate) fn scheduled(&self) -> bool {
        self.dial_at.is_some()
    }

    /// A due dial is being made: nothing is scheduled any more.
    pub(crate) fn dialling(&mut self) {
        self.dial_at = None;
    }

    /// Dial at once (the token file changed, or the connection is wanted again).
    pub(crate) fn dial_now(&mut self) {
        self.dial_at = Some(Instant::now());
    }

    /// A connection is up: the back-off starts again from [`BACKOFF_MIN`].
    pub(crate) fn connected(&mut self) {
        self.backoff = BACKOFF_MIN;
        self.rotation_failing = false;
    }

    /// The connection is no longer wanted: the next one starts from scratch.
    pub(crate) fn reset(&mut self) {
        self.backoff = BACKOFF_MIN;
        self.rotation_failing = false;
    }

    /// A rotation is over without a new connection (the token file went back).
    pub(crate) fn rotation_done(&mut self) {
        self.rotation_failing = false;
    }

    /// Schedules a retry after the back-off and returns the delay.
    pub(crate) fn retry(&mut self) -> Duration {
        let retry_in = self.next_backoff();
        self.dial_at = Some(Instant::now() + retry_in);
        retry_in
    }

    /// The serving connection ended, cleanly (`Ok`) or not; schedules the redial unless
    /// `opening` (that connection takes over).
    pub(crate) fn ended<E: Display>(&mut self, result: Result<(), E>, opening: bool, addr: &str, log: &EndLog) {
        let delay = match result {
            Ok(()) if self.quick_redial.is_none_or(|at| at.elapsed() >= BACKOFF_MAX) => {
                tracing::info!(hub.addr = addr, "{}", log.ended);
                self.quick_redial = Some(Instant::now());
                Duration::ZERO
            }
            Ok(()) => {
                tracing::info!(hub.addr = addr, retry_in = ?self.backoff, "{}", log.ended_again);
                self.next_backoff()
            }
            Err(error) => {
                tracing::warn!(hub.addr = addr, %error, retry_in = ?self.backoff, "{}", log.broke);
                self.next_backoff()
            }
        };
        if !opening {
            let at = Instant::now() + delay;
            self.dial_at = Some(self.dial_at.map_or(at, |t| t.min(at)));
        }
    }

    /// Opening a connection failed; `serving` says whether an older one still serves.
    /// Schedules a retry after the back-off.
    pub(crate) fn open_failed<E: Display>(&mut self, error: E, serving: bool, addr: &str, log: &OpenLog) {
        let retry_in = self.retry();
        if !serving {
            tracing::warn!(hub.addr = addr, %error, ?retry_in, "{}", log.failed);
        } else if !self.rotation_failing {
            self.rotation_failing = true;
            tracing::warn!(hub.addr = addr, %error, ?retry_in, "{}", log.rotation_failed);
        } else {
            tracing::debug!(hub.addr = addr, %error, ?retry_in, "{}", log.rotation_still_failing);
        }
    }

    /// The current back-off, doubling the next one (capped).
    fn next_backoff(&mut self) -> Duration {
        let now = self.backoff;
        self.backoff = (now * 2).min(BACKOFF_MAX);
        now
    }
}

/// Sleeps until `at`; never resolves without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
