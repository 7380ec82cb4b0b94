//! A minimal blocking HTTP/1.1 GET for probes, `/routes` and `/metrics`: one request
//! per connection, short timeouts, so a wait loop never hangs on a half-started server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const TIMEOUT: Duration = Duration::from_secs(2);

/// A response, as far as the benchmark cares.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The echo server's `x-served-by` header.
    pub served_by: Option<String>,
    /// The body, de-chunked.
    pub body: String,
}

/// `GET path` on `addr`, with one extra `name: value` header line if given.
pub fn get(addr: SocketAddr, path: &str, header: Option<&str>) -> Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let extra = header.map(|h| format!("{h}\r\n")).unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of response head")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let mut served_by = None;
    let mut chunked = false;
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("x-served-by") {
            served_by = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    Ok(Reply {
        status,
        served_by,
        body,
    })
}

/// Who served `GET path` (None while it fails, e.g. during start-up).
pub fn served_by(addr: SocketAddr, path: &str, header: Option<&str>) -> Option<String> {
    get(addr, path, header).ok().and_then(|r| r.served_by)
}

fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        let Some(chunk) = after.get(..size) else {
            bail!("truncated chunk")
        };
        out.push_str(chunk);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// Sum of the Prometheus samples of `metric` whose labels include every one of `labels`
/// (e.g. `route="half"`).
pub fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(metric)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk("3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n").unwrap(), "abcde");
        assert!(dechunk("5\r\nab").is_err());
    }

    #[test]
    fn metric_samples_are_selected_by_labels() {
        let text = "# TYPE shunt_sidecar_requests counter\n\
            shunt_sidecar_requests_total{route=\"half\",port=\"8080\",outcome=\"stolen\"} 10\n\
            shunt_sidecar_requests_total{route=\"none\",port=\"8080\",outcome=\"app\"} 12\n\
            shunt_sidecar_requests_total_other{route=\"half\"} 99\n";
        let m = "shunt_sidecar_requests_total";
        assert_eq!(metric_sum(text, m, &["route=\"half\"", "outcome=\"stolen\""]), 10.0);
        assert_eq!(metric_sum(text, m, &[]), 22.0);
    }
}
