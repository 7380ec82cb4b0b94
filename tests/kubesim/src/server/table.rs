//! Server-side printing: a `get`, `list` or `watch` asking for
//! `application/json;as=Table;v=v1;g=meta.k8s.io` (as `kubectl get` does) gets
//! `meta.k8s.io/v1` Tables (one per watch event, as kube-apiserver sends them). Custom
//! resources with `additionalPrinterColumns` get a Name column and the CRD's columns,
//! cells computed like apiextensions-apiserver's table convertor (simple JSONPaths,
//! `date` columns as ages); pods and deployments get kube-apiserver's columns
//! ([`super::printers`]). Other types answer with plain objects, which kubectl prints
//! itself (NAME and AGE).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::resources::ResourceType;

/// Whether the client asked for a Table.
pub fn wanted(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').next().is_some_and(|first| first.contains("as=Table")))
}

/// Whether objects of `rt` can be printed as a Table.
pub fn available(rt: &ResourceType) -> bool {
    !rt.printer_columns.is_empty() || super::printers::columns(rt).is_some()
}

/// The age cell of a `creationTimestamp`-like value.
fn age(t: &Value) -> Value {
    t.as_str()
        .and_then(parse_timestamp)
        .map_or(Value::Null, |t| json!(human_age(t)))
}

/// The Table of `objects` of `rt` (which is [`available`]).
pub fn table(rt: &ResourceType, objects: &[Value], resource_version: &Value) -> Value {
    if let Some(columns) = super::printers::columns(rt) {
        let rows: Vec<Value> = objects
            .iter()
            .map(|obj| json!({"cells": super::printers::cells(rt, obj, &age), "object": partial(obj)}))
            .collect();
        return json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": columns, "rows": rows});
    }
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace."}),
    ];
    for c in &rt.printer_columns {
        columns.push(json!({
            "name": c["name"], "type": c["type"], "format": c["format"].as_str().unwrap_or_default(),
            "description": c["description"].as_str().unwrap_or_default(), "priority": c["priority"].as_i64().unwrap_or(0),
        }));
    }
    let rows: Vec<Value> = objects
        .iter()
        .map(|obj| {
            let mut cells = vec![obj["metadata"]["name"].clone()];
            for c in &rt.printer_columns {
                let value = json_path(obj, c["jsonPath"].as_str().unwrap_or_default());
                cells.push(match (c["type"].as_str(), value) {
                    (Some("date"), Some(t)) => age(&t),
                    (_, Some(v)) => v,
                    (_, None) => Value::Null,
                });
            }
            json!({"cells": cells, "object": partial(obj)})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns, "rows": rows})
}

/// What a row carries of its object by default (`includeObject=Metadata`).
fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
}

/// `.a.b[0].c` (the paths printer columns use; filters are not supported).
fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj;
    for part in path
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, Some(rest.trim_end_matches(']').parse::<usize>().ok()?)),
            None => (part, None),
        };
        if !field.is_empty() {
            cur = cur.get(field)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    (!cur.is_null()).then(|| cur.clone())
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SSZ`.
fn parse_timestamp(t: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from civil (Howard Hinnant's algorithm), the inverse of util::timestamp.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The age of a timestamp as kubectl shows it (`apimachinery/pkg/util/duration.HumanDuration`).
fn human_age(since: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    human_duration(now - since)
}

fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (minutes, hours, days) = (s / 60, s / 3600, s / 86_400);
    let unit = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if minutes < 10 => unit(minutes, "m", s % 60, "s"),
        _ if minutes < 180 => format!("{minutes}m"),
        _ if hours < 8 => unit(hours, "h", minutes % 60, "m"),
        _ if hours < 48 => format!("{hours}h"),
        _ if hours < 24 * 8 => unit(days, "d", hours % 24, "h"),
        _ if hours < 24 * 365 * 2 => format!("{days}d"),
        _ if hours < 24 * 365 * 8 => unit(days / 365, "y", days % 365, "d"),
        _ => format!("{}y", days / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_ages_like_kube_apiserver() {
        let obj = json!({"spec": {"size": 3, "ports": [{"port": 80}]}});
        assert_eq!(json_path(&obj, ".spec.size"), Some(json!(3)));
        assert_eq!(json_path(&obj, ".spec.ports[0].port"), Some(json!(80)));
        assert_eq!(json_path(&obj, ".status.phase"), None);
        assert_eq!(parse_timestamp("2026-11-21T23:00:00Z"), Some(1_795_302_000));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86_400, "3d"),
            (20 * 86_400, "20d"),
        ];
        for (secs, shown) in cases {
            assert_eq!(human_duration(secs), shown);
        }
    }
}
