//! `shunt-webhook`: the mutating admission webhook that injects shunt's sidecar into pods
//! of opted-in namespaces, and keeps its own TLS certificate valid.
//!
//! - [`inject::mutate`] is the pure core: Pod JSON + [`inject::InjectConfig`] → a decision
//!   with a fine-grained RFC 6902 patch ([`patch`]).
//! - [`review`] reads and writes `admission.k8s.io/v1` AdmissionReviews; [`server`] serves
//!   them over HTTPS (axum + rustls) with `/healthz`, `/readyz` and `/metrics`.
//! - [`tls`] holds the served certificate and swaps it without a restart; [`certs`] gets it
//!   from a Secret it manages itself (mode `self`) or from mounted files (mode `files`).
//! - [`config`] is the command line (every flag also a `SHUNT_WEBHOOK_*` variable);
//!   [`cli_main`] the process around [`run`] (logging, runtime, signals).

#![forbid(unsafe_code)]

pub mod certs;
pub mod cli_main;
pub mod config;
pub mod inject;
pub mod metrics;
pub mod patch;
pub mod review;
pub mod server;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::certs::self_managed::SelfManaged;
use crate::certs::CertError;
use crate::config::{CertSource, Settings};
use crate::metrics::Metrics;
use crate::server::AppState;
use crate::tls::{CertStore, TlsError};

/// A failure that stops the webhook.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The certificate could not be obtained at start.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Binding the listen address failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// No Kubernetes client configuration (mode self).
    #[error("cannot configure the Kubernetes client: {0}; run in a pod with a ServiceAccount, set KUBECONFIG, or use --cert-mode files")]
    Client(#[source] kube::Error),
    /// `run_with` was called for mode self without a client.
    #[error("--cert-mode self needs a Kubernetes client")]
    NoClient,
}

/// Runs the webhook until `shutdown` completes: binds `--listen`, gets the certificate,
/// serves, drains.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()> + Send) -> Result<(), RunError> {
    let client = match settings.cert {
        CertSource::SelfManaged(_) => Some(kube::Client::try_default().await.map_err(RunError::Client)?),
        CertSource::Files { .. } => None,
    };
    let listener = server::bind(settings.listen).await?;
    run_with(settings, client, listener, Arc::new(Metrics::new()), shutdown).await
}

/// [`run`] with the pieces given: a Kubernetes client (mode self), a bound listener and the
/// metrics. Tests use it with a fake API server and `127.0.0.1:0`.
pub async fn run_with(
    settings: Settings,
    client: Option<kube::Client>,
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let store = Arc::new(CertStore::new(metrics.clone()));
    let mut background = Vec::new();
    tokio::pin!(shutdown);
    match (&settings.cert, client) {
        (CertSource::Files { files, interval }, _) => {
            store.set(files.load().await?);
            background.push(tokio::spawn(files.clone().watch(
                store.clone(),
                metrics.clone(),
                *interval,
            )));
        }
        (CertSource::SelfManaged(own), Some(client)) => {
            let source = SelfManaged::new(client, own.clone(), store.clone(), metrics.clone());
            let mut backoff = Duration::from_secs(1);
            // No certificate, nothing to serve: retry until the API lets us have one.
            loop {
                let attempt = tokio::select! {
                    attempt = source.reconcile() => attempt,
                    () = &mut shutdown => return Ok(()),
                };
                match attempt {
                    Ok(_) => break,
                    Err(error) => {
                        metrics.certificate_error();
                        tracing::warn!(%error, retry_in = ?backoff, "cannot get a certificate yet");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = &mut shutdown => return Ok(()),
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
            background.push(tokio::spawn(source.run()));
        }
        (CertSource::SelfManaged(_), None) => {
            return Err(RunError::NoClient);
        }
    }
    let tls = store.server_config()?;
    let state = Arc::new(AppState {
        inject: settings.inject.clone(),
        metrics,
        store,
        max_body_bytes: settings.max_body_bytes,
    });
    tracing::info!(listen = %listener.local_addr()?, "serving AdmissionReviews");
    server::serve(listener, tls, server::router(state), shutdown, settings.drain).await;
    for task in background {
        task.abort();
    }
    Ok(())
}
