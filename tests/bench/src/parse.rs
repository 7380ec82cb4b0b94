//! Parsers for what the load generators print: wrk's `--latency` report, h2load's
//! summary, and h2load's per-request `--log-file` (h2load prints no percentiles, so
//! p50/p99 come from the log). Pure functions, tested on outputs captured from the real
//! tools (`testdata/`).

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The result of one measured client run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Load {
    /// Requests per second, as the client reports it.
    pub rps: f64,
    /// Median request latency.
    pub p50: Duration,
    /// 99th percentile request latency.
    pub p99: Duration,
    /// Requests completed in the measured period.
    pub requests: u64,
    /// Failures: socket errors and timeouts, failed streams, 4xx/5xx answers.
    pub errors: u64,
}

/// Parses `wrk --latency` output.
pub fn wrk(text: &str) -> Result<Load> {
    let mut load = Load::default();
    let (mut p50, mut p99, mut rps) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse().context("wrk Requests/sec")?);
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = Some(wrk_duration(v.trim())?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(wrk_duration(v.trim())?);
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            load.requests = n.trim().parse().context("wrk request count")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 4"
            for part in v.split(',') {
                let n = part.split_whitespace().nth(1).context("wrk socket errors")?;
                load.errors += n.parse::<u64>().context("wrk socket errors")?;
            }
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            load.errors += v.trim().parse::<u64>().context("wrk non-2xx count")?;
        }
    }
    match (rps, p50, p99) {
        (Some(rps), Some(p50), Some(p99)) => Ok(Load { rps, p50, p99, ..load }),
        _ => bail!("not a wrk --latency report:\n{text}"),
    }
}

/// A wrk duration: `251.00us`, `1.93ms`, `1.02s`, `2.00m`.
fn wrk_duration(text: &str) -> Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("duration without a unit: {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().with_context(|| format!("duration {text:?}"))?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => bail!("unknown duration unit in {text:?}"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses h2load's summary (req/s, counts); latencies come from [`h2load_log`].
pub fn h2load(text: &str) -> Result<Load> {
    let mut load = Load::default();
    let mut rps = None;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("finished in ") {
            // "2.00s, 108241.50 req/s, 19.72MB/s"
            let field = v.split(',').nth(1).context("h2load finished line")?;
            let number = field.trim().strip_suffix(" req/s").context("h2load req/s")?;
            rps = Some(number.parse().context("h2load req/s")?);
        } else if let Some(v) = line.strip_prefix("requests:") {
            // "N total, N started, N done, N succeeded, N failed, N errored, N timeout"
            for (n, what) in v.split(',').filter_map(|p| p.trim().split_once(' ')) {
                let n: u64 = n.parse().context("h2load request counts")?;
                match what {
                    "succeeded" => load.requests = n,
                    "failed" => load.errors += n, // includes errored and timed-out streams
                    _ => {}
                }
            }
        } else if let Some(v) = line.strip_prefix("status codes:") {
            // "N 2xx, N 3xx, N 4xx, N 5xx": count error statuses like wrk does.
            for (n, class) in v.split(',').filter_map(|p| p.trim().split_once(' ')) {
                if class == "4xx" || class == "5xx" {
                    load.errors += n.parse::<u64>().context("h2load status codes")?;
                }
            }
        }
    }
    match rps {
        Some(rps) => Ok(Load { rps, ..load }),
        None => bail!("not an h2load report:\n{text}"),
    }
}

/// p50 and p99 of the successful requests of an h2load `--log-file` (tab-separated:
/// start time µs, status, µs until the end of the response; status -1 = failed).
pub fn h2load_log(text: &str) -> Result<(Duration, Duration)> {
    let mut micros = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut cols = line.split('\t');
        let status: i32 = cols.nth(1).context("h2load log: status")?.trim().parse()?;
        let elapsed: u64 = cols.next().context("h2load log: elapsed")?.trim().parse()?;
        if status > 0 {
            micros.push(elapsed);
        }
    }
    micros.sort_unstable();
    let p50 = percentile(&micros, 50.0).context("h2load log has no successful request")?;
    let p99 = percentile(&micros, 99.0).context("h2load log has no successful request")?;
    Ok((Duration::from_micros(p50), Duration::from_micros(p99)))
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn wrk_report_with_lua_script() {
        let load = wrk(include_str!("../testdata/wrk_mix.txt")).unwrap();
        assert_eq!(load.rps, 99444.48);
        assert_eq!((load.p50, load.p99), (us(251), us(1930)));
        assert_eq!((load.requests, load.errors), (198973, 0));
    }

    #[test]
    fn wrk_counts_error_statuses_and_socket_errors() {
        let statuses = wrk(include_str!("../testdata/wrk_503.txt")).unwrap();
        assert_eq!((statuses.requests, statuses.errors), (82143, 82143));
        assert_eq!(statuses.p50, us(41));
        let timeouts = wrk(include_str!("../testdata/wrk_timeout.txt")).unwrap();
        assert_eq!((timeouts.rps, timeouts.errors), (1.99, 4));
    }

    #[test]
    fn wrk_durations_in_every_unit() {
        assert_eq!(wrk_duration("1.93ms").unwrap(), us(1930));
        assert_eq!(wrk_duration("1.50s").unwrap(), Duration::from_millis(1500));
        assert_eq!(wrk_duration("2.00m").unwrap(), Duration::from_secs(120));
        assert!(wrk_duration("7").is_err() && wrk_duration("3.0xs").is_err());
        assert!(wrk("unable to connect to 10.0.0.1:80 Connection refused").is_err());
    }

    #[test]
    fn h2load_summary() {
        let load = h2load(include_str!("../testdata/h2load_mix.txt")).unwrap();
        assert_eq!(load.rps, 108241.50);
        assert_eq!((load.requests, load.errors), (216483, 0));
        let refused = h2load(include_str!("../testdata/h2load_refused.txt")).unwrap();
        assert_eq!((refused.rps, refused.requests), (0.0, 0));
    }

    #[test]
    fn h2load_log_percentiles_skip_failed_streams() {
        let log = include_str!("../testdata/h2load_log.tsv");
        assert_eq!(h2load_log(log).unwrap(), (us(515), us(986)));
        let with_failure = format!("{log}1795302744803090\t-1\t99999\n");
        assert_eq!(h2load_log(&with_failure).unwrap(), (us(515), us(986)));
        assert!(h2load_log("").is_err());
    }

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
