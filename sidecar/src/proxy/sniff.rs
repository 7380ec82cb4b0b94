//! Protocol detection on a fresh connection, by peeking: no byte is consumed, so
//! whatever handles the connection next sees it from the first byte.

use std::time::Duration;

use tokio::net::TcpStream;

/// What a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface (prior knowledge, h2c).
    Http2,
    /// Anything else, including a client that sends nothing at first.
    Other,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token looked at ("OPTIONS", "PROPFIND", extension methods).
const MAX_METHOD: usize = 20;
/// A client that has not shown its protocol by then is passed through as plain TCP
/// (server-speaks-first protocols send nothing until the server greets them).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(2);

/// Decides from the bytes seen so far; `None` means "need more bytes".
pub fn classify(seen: &[u8]) -> Option<Protocol> {
    if seen.is_empty() {
        return None;
    }
    let n = seen.len().min(H2_PREFACE.len());
    if seen[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // A request line starts with a method token (RFC 9110 tchar; real methods are
    // uppercase letters, and accepting only those keeps binary protocols out).
    for (i, &b) in seen.iter().enumerate().take(MAX_METHOD + 1) {
        match b {
            b'A'..=b'Z' | b'-' | b'_' => continue,
            b' ' if i > 0 => return Some(Protocol::Http1),
            _ => return Some(Protocol::Other),
        }
    }
    if seen.len() > MAX_METHOD {
        Some(Protocol::Other)
    } else {
        None
    }
}

/// Peeks at `stream` until [`classify`] decides, EOF, or [`SNIFF_TIMEOUT`].
pub async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    let mut buf = [0u8; 32];
    loop {
        let wait = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await;
        let n = match wait {
            Err(_) => return Ok(Protocol::Other),
            Ok(result) => result?,
        };
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(protocol) = classify(&buf[..n]) {
            return Ok(protocol);
        }
        // Only part of the first line has arrived; peek returns at once while data is
        // buffered, so wait a little for the rest instead of spinning.
        if tokio::time::Instant::now() >= deadline {
            return Ok(Protocol::Other);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_request_lines_prefaces_and_garbage() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Other));
        assert_eq!(classify(b"get / HTTP/1.1"), Some(Protocol::Other));
        assert_eq!(classify(b" GET"), Some(Protocol::Other));
        assert_eq!(classify(&[b'A'; 40]), Some(Protocol::Other));
    }

    #[test]
    fn waits_for_more_bytes_when_undecided() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"PRI "), None);
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
    }
}
