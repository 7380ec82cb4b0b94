//! Small helpers: RFC 3339 timestamps, UIDs, random name suffixes.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

/// Now, as Kubernetes writes timestamps (`2026-11-21T23:00:00Z`).
pub fn now() -> String {
    timestamp(SystemTime::now())
}

/// `t` in RFC 3339, UTC, seconds precision.
pub fn timestamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `lastTransitionTime` for condition `kind` now at `status` ("True"/"False"): kept from
/// the `old` status when the condition did not change, so a pass that changes nothing
/// writes nothing.
pub fn transition_time(old: &serde_json::Value, kind: &str, status: &str) -> serde_json::Value {
    let previous = old["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind);
    match previous {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => serde_json::Value::String(now()),
    }
}

/// A random UUID (version 4 layout).
pub fn uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]]),
    )
}

/// The 5-character suffix of `generateName` (consonants and digits, as Kubernetes).
pub fn suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_secs(1_795_302_000)),
            "2026-11-21T23:00:00Z"
        );
        assert_eq!(uid().len(), 36);
    }
}
