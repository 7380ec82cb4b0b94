//! Leader election on a `coordination.k8s.io/v1` Lease: one replica serves the API and
//! the hub (sessions live in its memory), standbys wait and are not ready.
//!
//! Every [`RENEW`] the holder renews the Lease (optimistic concurrency on its
//! resourceVersion); a replica takes it over when the holder has not renewed it for
//! [`LEASE_DURATION`]. A leader that cannot renew for a lease duration has lost it and
//! must stop serving ([`Leader::hold`] returns): the process exits and restarts as a
//! standby, and sidecars fail open meanwhile.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

/// How often the Lease is renewed (and acquisition retried).
pub const RENEW: Duration = Duration::from_secs(2);
/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(10);

/// One replica's view of the election.
pub struct Leader {
    api: Api<Lease>,
    name: String,
    identity: String,
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let duration = spec
        .lease_duration_seconds
        .map_or(LEASE_DURATION.as_secs() as i64, i64::from);
    spec.renew_time
        .as_ref()
        .is_none_or(|t| now.as_second() - t.0.as_second() > duration)
}

impl Leader {
    /// The election of Lease `namespace/name` as `identity`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Leader {
        Leader {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
        }
    }

    /// One attempt to take or renew the Lease: whether this replica holds it now.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let spec = |acquire: Option<MicroTime>, transitions: i32| LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: acquire,
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        };
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec(Some(MicroTime(now)), 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let current = lease.spec.clone().unwrap_or_default();
        let mine = current.holder_identity.as_deref() == Some(self.identity.as_str());
        if !mine && !expired(&current, now) {
            return Ok(false);
        }
        let transitions = current.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquire = if mine {
            current.acquire_time.clone()
        } else {
            Some(MicroTime(now))
        };
        lease.spec = Some(spec(acquire, transitions));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => return tracing::info!(lease = %self.name, identity = %self.identity, "became the leader"),
                Ok(false) => tracing::debug!(lease = %self.name, "another replica leads; waiting"),
                Err(error) => tracing::warn!(%error, lease = %self.name, "cannot read or take the Lease; retrying"),
            }
            tokio::time::sleep(RENEW).await;
        }
    }

    /// Renews the Lease every [`RENEW`]; returns when leadership is lost.
    pub async fn hold(&self) {
        let mut last = Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            match self.try_acquire().await {
                Ok(true) => last = Instant::now(),
                Ok(false) => return tracing::error!(lease = %self.name, "another replica took the Lease"),
                Err(error) => tracing::warn!(%error, lease = %self.name, "cannot renew the Lease"),
            }
            if last.elapsed() > LEASE_DURATION {
                return tracing::error!(lease = %self.name, "could not renew the Lease for a lease duration");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn leases_expire_after_their_duration() {
        let now = Timestamp::now();
        let at = |secs_ago: i64| LeaseSpec {
            renew_time: Some(MicroTime(Timestamp::from_second(now.as_second() - secs_ago).unwrap())),
            lease_duration_seconds: Some(10),
            ..LeaseSpec::default()
        };
        assert!(!expired(&at(3), now));
        assert!(expired(&at(11), now));
        assert!(expired(&LeaseSpec::default(), now));
    }
}
