//! Container logs: stdout and stderr of every container, interleaved as they arrive, in
//! a bounded buffer per container (the oldest bytes go first), served by `pods/log`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::api::PodLogs;

/// Bytes kept per container.
pub const LOG_CAPACITY: usize = 1 << 20;

type Key = (String, String, String);

/// The logs of every container on the node.
#[derive(Default)]
pub struct Logs {
    buffers: Mutex<HashMap<Key, VecDeque<u8>>>,
    first: Mutex<HashMap<(String, String), String>>,
}

impl Logs {
    /// Records which container `kubectl logs` without `-c` shows.
    pub fn set_default(&self, ns: &str, pod: &str, container: &str) {
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((ns.into(), pod.into()), container.into());
    }

    /// Appends output of a container.
    pub fn append(&self, key: &Key, bytes: &[u8]) {
        let mut buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let buf = buffers.entry(key.clone()).or_default();
        buf.extend(bytes);
        let excess = buf.len().saturating_sub(LOG_CAPACITY);
        buf.drain(..excess);
    }

    /// Forgets the logs of a deleted pod.
    pub fn remove_pod(&self, ns: &str, pod: &str) {
        self.buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(n, p, _), _| !(n == ns && p == pod));
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(ns.into(), pod.into()));
    }

    /// Copies `stream` into the log of `key` until it ends.
    pub async fn capture(self: std::sync::Arc<Self>, key: Key, mut stream: impl AsyncRead + Unpin) {
        let mut chunk = vec![0u8; 8192];
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            tracing::trace!(pod = %format!("{}/{}", key.0, key.1), container = %key.2, output = %String::from_utf8_lossy(&chunk[..n]).trim_end(), "container output");
            self.append(&key, &chunk[..n]);
        }
    }
}

/// The last `n` lines of `text` (`tailLines`); a last line without a newline counts.
pub fn tail_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.bytes().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    text
}

impl PodLogs for Logs {
    fn logs(&self, namespace: &str, name: &str, container: Option<&str>) -> Option<String> {
        let container = match container {
            Some(c) => c.to_owned(),
            None => self
                .first
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(namespace.into(), name.into()))?
                .clone(),
        };
        let buffers = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let buf = buffers.get(&(namespace.into(), name.into(), container))?;
        let (a, b) = buf.as_slices();
        Some(String::from_utf8_lossy(&[a, b].concat()).into_owned())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_bounded_and_default_to_the_first_container() {
        let logs = Logs::default();
        let key = ("ns".to_owned(), "p".to_owned(), "c".to_owned());
        logs.set_default("ns", "p", "c");
        logs.append(&key, &vec![b'a'; LOG_CAPACITY]);
        logs.append(&key, b"tail");
        let text = logs.logs("ns", "p", None).unwrap();
        assert_eq!(text.len(), LOG_CAPACITY);
        assert!(text.ends_with("tail"));
        logs.remove_pod("ns", "p");
        assert!(logs.logs("ns", "p", Some("c")).is_none());
    }

    #[test]
    fn tail_lines_counts_from_the_end() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail_lines("a\nb\n", 0), "");
    }
}
