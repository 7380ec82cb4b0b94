//! Parsers and checks for flag values: durations, Kubernetes names and quantities.

use std::time::Duration;

use super::{bad, ConfigError};

/// Parses `1d12h`, `30d`, `10m`, `90s`, `500ms` (a sum of number+unit terms).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let err = || format!("{text:?} is not a duration; use e.g. 30d, 12h, 10m, 90s or 500ms");
    if text.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        let term = u32::try_from(number)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(err)?;
        total = total.checked_add(term).ok_or_else(err)?;
    }
    Ok(total)
}

pub(super) fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

pub(super) fn nonzero(flag: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(bad(flag, "must be longer than zero"));
    }
    Ok(d)
}

/// A Kubernetes object name (DNS-1123 label or subdomain).
pub(super) fn name(flag: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(bad(
            flag,
            format!("{value:?} is not a Kubernetes name (lowercase letters, digits, '-', '.')"),
        ))
    }
}

/// A subject alternative name: an IP address, or a DNS name (RFC 1123 labels of 1-63
/// letters, digits and `-`, at most 253 characters, optionally `*.` in front). Returned
/// lowercased (DNS names are case-insensitive; certificates carry them lowercase).
pub(super) fn san(flag: &'static str, value: &str) -> Result<String, ConfigError> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(value.to_owned());
    }
    let lower = value.to_ascii_lowercase();
    let host = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if lower.len() <= 253 && host.split('.').all(label_ok) {
        Ok(lower)
    } else {
        Err(bad(
            flag,
            format!(
                "{value:?} is not a DNS name or IP address (DNS labels of 1-63 letters, digits and '-', \
                 separated by '.', optionally starting with '*.')"
            ),
        ))
    }
}

/// A Kubernetes quantity such as `10m`, `0.5`, `128Mi`; empty means none.
pub(super) fn quantity(flag: &'static str, value: &str) -> Result<Option<String>, ConfigError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    let number_ok = !number.is_empty() && number.parse::<f64>().is_ok();
    let suffixes = [
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    if number_ok && suffixes.contains(&suffix) {
        Ok(Some(value.to_owned()))
    } else {
        Err(bad(
            flag,
            format!("{value:?} is not a Kubernetes quantity (e.g. 10m, 0.5, 128Mi)"),
        ))
    }
}
