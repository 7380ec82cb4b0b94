//! `--tls-secret`: the operator's serving certificate, for the API server and the hub, from
//! a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`) read through the Kubernetes API.
//!
//! In the default install the webhook (`--cert-mode self`) makes and rotates that Secret
//! (`shunt-tls`) and issues it for the operator's Service names too; with cert-manager or
//! a user-supplied Secret someone else does. The Secret is watched with a
//! `metadata.name` field selector, so RBAC `resourceNames` on it suffices.
//!
//! [`ServingCert`] is the rustls certificate resolver both servers ask on every handshake:
//! a new pair takes effect for the next connection, open ones keep theirs. A pair that does
//! not load (a key that does not fit, broken PEM, a Secret being rewritten) never replaces
//! a good one: the last good pair stays in force and the problem is logged. Until a first
//! usable pair arrives, [`ServingCert::not_ready`] gives the reason `/readyz` answers with.
//! Each change of state is logged once.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt as _;
use kube::Api;
use prometheus_client::metrics::gauge::Gauge;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Secret key of the certificate chain (leaf first).
pub const TLS_CRT: &str = "tls.crt";
/// Secret key of the private key.
pub const TLS_KEY: &str = "tls.key";

/// Why a Secret's pair cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// `tls.crt` or `tls.key` is missing or empty.
    #[error("it has no {0} (a kubernetes.io/tls Secret needs tls.crt and tls.key)")]
    Missing(&'static str),
    /// A PEM document could not be parsed.
    #[error("{what} is not valid PEM: {reason}")]
    Pem {
        /// `tls.crt` or `tls.key`.
        what: &'static str,
        /// The parser's complaint.
        reason: String,
    },
    /// The leaf certificate is not valid X.509.
    #[error("tls.crt is not a valid X.509 certificate: {0}")]
    X509(String),
    /// rustls refused the key, or the key does not belong to the certificate.
    #[error("tls.key does not fit tls.crt: {0}")]
    Key(#[source] rustls::Error),
}

/// A pair ready to serve.
#[derive(Clone, Debug)]
pub struct Pair {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// `notAfter` of the leaf, as a Unix time.
    pub not_after: i64,
    /// The leaf's serial number (hex), for logs.
    pub serial: String,
}

/// Parses and checks the pair of `secret`.
pub fn load(secret: &Secret) -> Result<Pair, PairError> {
    let data = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| b.0.as_slice())
            .filter(|b| !b.is_empty())
            .ok_or(PairError::Missing(key))
    };
    let (cert_pem, key_pem) = (data(TLS_CRT)?, data(TLS_KEY)?);
    let pem = |what| {
        move |e: rustls::pki_types::pem::Error| PairError::Pem {
            what,
            reason: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(TLS_CRT))?;
    let leaf = chain.first().ok_or(PairError::Pem {
        what: TLS_CRT,
        reason: "no CERTIFICATE block".into(),
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| PairError::X509(e.to_string()))?;
    let (not_after, serial) = (parsed.validity().not_after.timestamp(), parsed.raw_serial_as_string());
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(pem(TLS_KEY))?;
    let provider = rustls::crypto::ring::default_provider();
    let key = CertifiedKey::from_der(chain, key, &provider).map_err(PairError::Key)?;
    Ok(Pair {
        key: Arc::new(key),
        not_after,
        serial,
    })
}

/// The certificate served by the API server and the hub, and why there is none yet.
#[derive(Debug)]
pub struct ServingCert {
    secret: String,
    current: RwLock<Option<Pair>>,
    waiting: RwLock<String>,
    reported: Mutex<String>,
    loaded: tokio::sync::watch::Sender<bool>,
    expiry: Gauge,
}

impl ServingCert {
    /// Nothing served yet, for Secret `namespace/name`; `expiry` gets the served `notAfter`.
    pub fn new(namespace: &str, name: &str, expiry: Gauge) -> ServingCert {
        let secret = format!("{namespace}/{name}");
        ServingCert {
            waiting: RwLock::new(format!("waiting for the first read of Secret {secret}")),
            secret,
            current: RwLock::new(None),
            reported: Mutex::new(String::new()),
            loaded: tokio::sync::watch::Sender::new(false),
            expiry,
        }
    }

    /// Why the operator cannot serve yet (`None` once a pair is served).
    pub fn not_ready(&self) -> Option<String> {
        if self.current.read().unwrap_or_else(PoisonError::into_inner).is_some() {
            return None;
        }
        Some(self.waiting.read().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// The pair served now.
    pub fn current(&self) -> Option<Pair> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Completes once a pair is served.
    pub async fn loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    /// Takes what the watch saw: the Secret, or `None` when it does not exist.
    pub fn update(&self, secret: Option<&Secret>) {
        let secret_ref = &self.secret;
        let Some(secret) = secret else {
            return self.problem(format!(
                "Secret {secret_ref} not found: the webhook (--cert-mode self) creates it, or cert-manager \
                 (certificates.mode cert-manager) or you (certificates.mode secret) must provide it"
            ));
        };
        let pair = match load(secret) {
            Ok(pair) => pair,
            Err(error) => {
                return self.problem(format!("Secret {secret_ref} holds no usable certificate: {error}"));
            }
        };
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.key.cert == pair.key.cert) {
            // E.g. the webhook changed other keys of the Secret; or it is usable again.
            return self.report(format!("serving {}", pair.serial), || {
                tracing::info!(secret = %secret_ref, cert.serial = %pair.serial, "the Secret holds the served certificate again")
            });
        }
        self.expiry.set(pair.not_after);
        self.report(format!("serving {}", pair.serial), || {
            tracing::info!(secret = %secret_ref, cert.serial = %pair.serial, cert.not_after = pair.not_after,
                "serving the certificate of the Secret")
        });
        *current = Some(pair);
        drop(current);
        self.loaded.send_replace(true);
    }

    /// Records a problem: the reason for not being ready yet, or a warning that the last
    /// good pair stays in force.
    pub fn problem(&self, message: String) {
        if self.current.read().unwrap_or_else(PoisonError::into_inner).is_some() {
            self.report(
                message.clone(),
                || tracing::warn!(secret = %self.secret, error = %message, "keeping the certificate in force"),
            );
        } else {
            self.report(
                message.clone(),
                || tracing::warn!(secret = %self.secret, "not ready: {message}"),
            );
            *self.waiting.write().unwrap_or_else(PoisonError::into_inner) = message;
        }
    }

    /// Runs `log` when `state` differs from the last reported one.
    fn report(&self, state: String, log: impl FnOnce()) {
        let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
        if *reported != state {
            log();
            *reported = state;
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        current.as_ref().map(|c| c.key.clone())
    }
}

/// Watches Secret `name` in `namespace` and feeds `cert` until the runtime stops.
pub async fn watch(client: kube::Client, namespace: String, name: String, cert: Arc<ServingCert>) {
    let api: Api<Secret> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api, config).default_backoff();
    let mut events = std::pin::pin!(events);
    // Whether the current (re)list found the Secret.
    let mut listed = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => listed = false,
            Ok(Event::InitApply(secret)) => {
                listed = true;
                cert.update(Some(&secret));
            }
            Ok(Event::InitDone) if !listed => cert.update(None),
            Ok(Event::InitDone) => {}
            Ok(Event::Apply(secret)) => cert.update(Some(&secret)),
            Ok(Event::Delete(_)) => cert.update(None),
            Err(error) => cert.problem(watch_error(&namespace, &name, &error)),
        }
    }
}

fn watch_error(namespace: &str, name: &str, error: &watcher::Error) -> String {
    let forbidden = match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    };
    let hint = if forbidden {
        format!(
            "the operator's ServiceAccount needs get, list and watch on secrets in namespace {namespace} \
             (resourceNames [{name}] suffices)"
        )
    } else {
        "retrying; check that the Kubernetes API server is reachable".to_owned()
    };
    format!("cannot watch Secret {namespace}/{name}: {error}; {hint}")
}

#[cfg(test)]
#[path = "tls_secret_tests.rs"]
mod tests;
