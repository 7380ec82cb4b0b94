#![allow(clippy::unwrap_used)]

use super::check::{check, parse_duration};
use super::*;

/// The directory of the checked-in CRDs.
fn crd_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/shunt/crds")
}

/// Regenerates the files with `SHUNT_UPDATE_CRDS=1`; otherwise fails when they drift.
#[test]
fn checked_in_crds_match_the_types() {
    let dir = crd_dir();
    for (name, text) in crd_files() {
        let path = dir.join(name);
        if std::env::var_os("SHUNT_UPDATE_CRDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == text,
            "{} is out of date with proto/src/policy: run SHUNT_UPDATE_CRDS=1 cargo test -p shunt-proto policy",
            path.display()
        );
    }
}

#[test]
fn the_schema_has_cel_rules_printer_columns_status_and_the_block_enum() {
    let crd = serde_json::to_value(ShuntPolicy::crd()).unwrap();
    let version = &crd["spec"]["versions"][0];
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(ClusterShuntPolicy::crd().spec.scope, "Cluster");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Targets", "Blocks", "Ready", "Age"]);
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(
        spec["block"]["items"]["enum"],
        serde_json::json!(["mirror", "steal", "steal-unfiltered", "outgoing", "env"])
    );
    let text = serde_json::to_string(&crd).unwrap();
    assert!(text.contains("x-kubernetes-validations") && text.contains("p >= 1 && p <= 65535"));
    assert!(spec["identityHeader"]["x-kubernetes-validations"].is_array(), "{spec}");
}

#[test]
fn checks_report_bad_globs_durations_and_addresses() {
    let rules = |json: serde_json::Value| -> PolicyRules { serde_json::from_value(json).unwrap() };
    let ok = check(&rules(serde_json::json!({
        "targetSelector": {"names": ["deployment/payments-*", "api"]},
        "maxSessionDuration": "1h30m", "env": {"exclude": ["*_PASSWORD"]},
        "outgoing": {"allow": ["10.0.0.0/8", "db.shop:5432", "*:443"], "block": ["169.254.169.254/32"]}
    })))
    .unwrap();
    assert_eq!(ok.max_duration, Some(std::time::Duration::from_secs(5400)));
    assert_eq!(ok.names[0].kind, Some(crate::TargetKind::Deployment));
    assert!(ok.names[1].kind.is_none() && ok.env_exclude[0].matches("DB_PASSWORD"));
    let bad = |json| check(&rules(json)).unwrap_err();
    assert_eq!(
        bad(serde_json::json!({"targetSelector": {"names": ["deployment/pay-["]}})).reason,
        "InvalidGlob"
    );
    assert_eq!(
        bad(serde_json::json!({"targetSelector": {"names": ["pod/x"]}})).reason,
        "InvalidGlob"
    );
    assert_eq!(
        bad(serde_json::json!({"maxSessionDuration": "2 hours"})).reason,
        "InvalidDuration"
    );
    assert_eq!(
        bad(serde_json::json!({"outgoing": {"allow": ["10.0.0.0/99"]}})).reason,
        "InvalidAddress"
    );
    assert_eq!(bad(serde_json::json!({"ports": [0]})).reason, "InvalidPort");
    assert!(parse_duration("0s").is_none() && parse_duration("5").is_none() && parse_duration("2h").is_some());
    assert!(serde_json::from_value::<PolicyRules>(serde_json::json!({"block": ["teleport"]})).is_err());
}
