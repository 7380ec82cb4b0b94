//! Route sources: where the sidecar learns its routes.
//!
//! This module has the routes file (`SHUNT_ROUTES_FILE`). It is polled rather than
//! watched with inotify because Kubernetes updates mounted ConfigMaps by swapping a
//! symlink, which inotify on the file misses; a poll of a small file every 500 ms is
//! cheap and sees every kind of change. A document that fails validation is logged
//! and counted, and the routes in force stay as they were: bad input loses nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shunt_proto::route::RouteSet;
use tokio::sync::watch;

use crate::metrics::{Metrics, ResultLabels};
use crate::table::Table;

/// How often the routes file is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A route set the sidecar cannot install, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("cannot read routes file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The document is invalid.
    #[error("routes file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: shunt_proto::route::RouteError,
    },
    /// A route names a port the sidecar does not manage.
    #[error("route {id:?} is for port {port}, which is not in SHUNT_APP_PORTS {allowed:?}; add the port there or fix the route")]
    PortNotManaged {
        /// The route.
        id: String,
        /// Its port.
        port: u16,
        /// The managed ports.
        allowed: Vec<u16>,
    },
}

/// Checks that every route is for a port this sidecar manages.
pub fn check_ports(set: &RouteSet, app_ports: &[u16]) -> Result<(), SourceError> {
    match set.routes().iter().find(|r| !app_ports.contains(&r.port)) {
        None => Ok(()),
        Some(route) => Err(SourceError::PortNotManaged {
            id: route.id.clone(),
            port: route.port,
            allowed: app_ports.to_vec(),
        }),
    }
}

/// Reads the routes file; a missing file reads as empty ("no routes").
pub fn read(path: &Path) -> Result<Vec<u8>, SourceError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(SourceError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Validates a routes document; blank means "no routes".
pub fn parse(path: &Path, bytes: &[u8], app_ports: &[u16]) -> Result<RouteSet, SourceError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(RouteSet::default());
    }
    let set = RouteSet::from_json(bytes).map_err(|source| SourceError::Invalid {
        path: path.to_owned(),
        source,
    })?;
    check_ports(&set, app_ports)?;
    Ok(set)
}

/// Polls `path` until `tx` has no receivers, publishing each new valid route set.
pub async fn watch_file(path: PathBuf, app_ports: Vec<u16>, metrics: Metrics, tx: watch::Sender<Arc<Table>>) {
    let mut last: Option<Vec<u8>> = None;
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if tx.is_closed() {
            return;
        }
        let bytes = match tokio::task::spawn_blocking({
            let path = path.clone();
            move || read(&path)
        })
        .await
        {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(error)) => {
                tracing::warn!(%error, "routes file unreadable; the routes in force stay unchanged");
                continue;
            }
            Err(join) => {
                tracing::error!(error = %join, "routes file reader failed");
                continue;
            }
        };
        // Each distinct document is handled (and a bad one logged) once, not every poll.
        if last.as_ref() == Some(&bytes) {
            continue;
        }
        let result = parse(&path, &bytes, &app_ports);
        last = Some(bytes);
        match result {
            Ok(set) if tx.borrow().set() == &set => {}
            Ok(set) => {
                tracing::info!(routes.file = %path.display(), routes.count = set.routes().len(), "routes updated");
                metrics
                    .route_reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                metrics.routes.set(set.routes().len() as i64);
                tx.send_replace(Arc::new(Table::new(set, &metrics)));
            }
            Err(error) => {
                metrics
                    .route_reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                tracing::error!(%error, "routes file rejected; the routes in force stay unchanged");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_file_means_no_routes() {
        let dir = std::env::temp_dir().join(format!("shunt-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("routes.json");
        assert!(read(&path).unwrap().is_empty());
        std::fs::write(&path, "\n").unwrap();
        assert!(parse(&path, &read(&path).unwrap(), &[8080]).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_routes_for_unmanaged_ports() {
        let set = RouteSet::from_json(
            br#"{"routes": [{"id": "a", "port": 9999, "mode": "mirror", "upstream": "http://127.0.0.1:1"}]}"#,
        )
        .unwrap();
        let err = check_ports(&set, &[8080]).unwrap_err().to_string();
        assert!(err.contains("9999") && err.contains("SHUNT_APP_PORTS"), "{err}");
    }
}
