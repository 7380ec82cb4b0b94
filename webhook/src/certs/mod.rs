//! Where the served certificate comes from.
//!
//! - Mode `self` ([`self_managed`]): the webhook makes its own CA and certificate, keeps
//!   them in a Secret shared by all replicas, publishes the CA in the `caBundle` of its
//!   MutatingWebhookConfiguration and of the operator's APIService ([`publish`]), and
//!   rotates before expiry ([`state`] has the plan). The operator serves the same
//!   certificate, so it is also issued for the operator's Service names.
//! - Mode `files` ([`files`]): certificate and key are mounted files (cert-manager), reloaded
//!   when they change; no Kubernetes API is used.

pub mod files;
pub mod issue;
pub mod publish;
pub mod self_managed;
pub mod state;

use std::path::PathBuf;

use crate::tls::TlsError;

/// A certificate could not be made, read, stored or published.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen failed.
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
    /// The certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A Kubernetes API call failed; `hint` says what to check.
    #[error("{action}: {source}; {hint}")]
    Kube {
        /// What we were doing, e.g. `create Secret shunt/shunt-webhook-tls`.
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
        /// What to check or do.
        hint: String,
    },
    /// Other replicas kept changing the Secret while we tried to settle it.
    #[error("Secret {0} kept changing under us (too many write conflicts); will retry")]
    Conflicts(String),
    /// A certificate file could not be read.
    #[error("cannot read {path}: {source}; check --cert-file/--key-file and the volume mount")]
    File {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The HTTP status of an API error, if the API server answered with one.
pub fn api_status(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Now, as a Unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
