//! Mode `files`: certificate and key from mounted files (e.g. a cert-manager Secret),
//! polled and swapped in when their contents change.
//!
//! Polling rather than inotify: Secret volumes are updated by swapping a `..data` symlink,
//! which inotify watches on the files themselves miss. A pair that does not load (the two
//! files are not updated atomically together, so for a moment the key may not fit the
//! certificate) keeps the certificate in force and is retried on the next poll.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::CertError;
use crate::metrics::Metrics;
use crate::tls::{self, CertStore, Loaded};

/// The two files to serve.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl CertFiles {
    /// Reads and checks both files.
    pub async fn load(&self) -> Result<Loaded, CertError> {
        let (cert, key) = self.read().await?;
        Ok(tls::load_pem(&cert, &key)?)
    }

    async fn read(&self) -> Result<(Vec<u8>, Vec<u8>), CertError> {
        Ok((read(&self.cert).await?, read(&self.key).await?))
    }

    /// Polls the files every `interval` and serves a new pair as soon as it loads.
    pub async fn watch(self, store: Arc<CertStore>, metrics: Arc<Metrics>, interval: Duration) {
        let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
        let mut reported: Option<String> = None;
        loop {
            tokio::time::sleep(interval).await;
            let contents = match self.read().await {
                Ok(contents) => contents,
                Err(error) => {
                    report(&mut reported, &metrics, error.to_string());
                    continue;
                }
            };
            if last.as_ref() == Some(&contents) {
                continue;
            }
            match tls::load_pem(&contents.0, &contents.1) {
                Ok(loaded) => {
                    if store.set(loaded) {
                        tracing::info!(cert.file = %self.cert.display(), "certificate files changed; reloaded");
                    }
                    last = Some(contents);
                    reported = None;
                }
                Err(error) => report(
                    &mut reported,
                    &metrics,
                    format!("{error}; keeping the certificate in force"),
                ),
            }
        }
    }
}

/// Logs and counts an error once until it changes or the files load again.
fn report(reported: &mut Option<String>, metrics: &Metrics, message: String) {
    if reported.as_deref() != Some(message.as_str()) {
        metrics.certificate_error();
        tracing::warn!(error = %message, "cannot reload the certificate files");
        *reported = Some(message);
    }
}

async fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    tokio::fs::read(path).await.map_err(|source| CertError::File {
        path: path.to_owned(),
        source,
    })
}
