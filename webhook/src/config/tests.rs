#![allow(clippy::unwrap_used)]

use super::*;

fn args(extra: &[&str]) -> Result<Settings, String> {
    let argv = std::iter::once("shunt-webhook").chain(extra.iter().copied());
    let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
    args.settings().map_err(|e| e.to_string())
}

#[test]
fn durations_accept_sums_of_units_and_refuse_the_rest() {
    assert_eq!(parse_duration("30d").unwrap(), Duration::from_secs(30 * 86_400));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    for bad in ["", "10", "d", "10x", "1.5h", "-1s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn defaults_give_self_mode_with_the_service_dns_names() {
    let s = args(&["--namespace", "team"]).unwrap();
    let CertSource::SelfManaged(own) = s.cert else {
        panic!("self mode expected")
    };
    assert_eq!(own.dns_names[2], "shunt-webhook.team.svc");
    assert_eq!(own.policy.renew_before, 30 * 86_400);
    assert_eq!(s.inject.operator_addr, "shunt-operator.team.svc:15443");
    assert_eq!((s.inject.operator_ca_pem, s.inject.operator_server_name), (None, None));
    assert!(s.inject.excluded_namespaces.contains(&"team".to_owned()));
    assert!(s.inject.excluded_namespaces.contains(&"kube-system".to_owned()));
    assert_eq!(s.inject.resources.memory_limit.as_deref(), Some("128Mi"));
    assert_eq!(s.inject.resources.cpu_limit, None);
}

#[test]
fn files_mode_needs_both_files() {
    let err = args(&["--cert-mode", "files", "--cert-file", "/c"]).unwrap_err();
    assert!(err.contains("--cert-file and --key-file"), "{err}");
    assert!(args(&["--cert-mode", "files", "--cert-file", "/c", "--key-file", "/k"]).is_ok());
}

#[test]
fn certificate_files_imply_files_mode_and_are_refused_with_an_explicit_self_mode() {
    let s = args(&["--cert-file", "/c", "--key-file", "/k"]).unwrap();
    let CertSource::Files { files, .. } = s.cert else {
        panic!("files mode expected")
    };
    assert_eq!((files.cert.to_str(), files.key.to_str()), (Some("/c"), Some("/k")));
    // One file alone is files mode missing the other, not self mode ignoring it.
    let err = args(&["--key-file", "/k"]).unwrap_err();
    assert!(err.contains("--cert-file and --key-file"), "{err}");
    for argv in [
        &["--cert-mode", "self", "--cert-file", "/c", "--key-file", "/k"][..],
        &["--cert-mode", "self", "--key-file", "/k"],
    ] {
        let err = args(argv).unwrap_err();
        assert!(
            err.starts_with("--cert-mode self: does not use --cert-file/--key-file"),
            "{argv:?}: {err}"
        );
    }
}

#[test]
fn errors_name_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--renew-before", "400d"], "--renew-before"),
        (&["--rotation-overlap", "20d"], "--rotation-overlap"),
        (&["--token-expiration", "5m"], "--token-expiration"),
        (&["--sidecar-memory-limit", "lots"], "--sidecar-memory-limit"),
        (&["--secret-name", "Bad_Name"], "--secret-name"),
        (&["--admin-port", "15101"], "--admin-port"),
        (
            &["--sidecar-image-pull-policy", "Sometimes"],
            "--sidecar-image-pull-policy",
        ),
        (&["--cert-validity", "forever"], "--cert-validity"),
        (
            &[
                "--cert-validity",
                "10s",
                "--renew-before",
                "6s",
                "--rotation-overlap",
                "2s",
            ],
            "--cert-validity",
        ),
    ];
    for (argv, flag) in cases {
        let err = args(argv).unwrap_err();
        assert!(err.contains(flag), "{argv:?}: {err}");
    }
}

#[test]
fn the_operator_ca_file_is_read_and_must_hold_only_certificates() {
    let dir = std::env::temp_dir().join(format!("shunt-webhook-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    std::fs::write(&ca, pem).unwrap();
    let path = ca.to_str().unwrap();
    let s = args(&["--operator-ca-file", path, "--operator-server-name", "hub.local"]).unwrap();
    assert_eq!(s.inject.operator_ca_pem.as_deref(), Some(pem));
    assert_eq!(s.inject.operator_server_name.as_deref(), Some("hub.local"));
    std::fs::write(
        &ca,
        format!("{pem}-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let err = args(&["--operator-ca-file", path]).unwrap_err();
    assert!(
        err.contains("--operator-ca-file") && err.contains("private key"),
        "{err}"
    );
    let missing = dir.join("missing.pem");
    let err = args(&["--operator-ca-file", missing.to_str().unwrap()]).unwrap_err();
    assert!(err.contains("cannot read"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dns_names_for_the_three_services_become_leaf_names_once_each() {
    let list = "shunt-webhook.ns.svc,shunt-api.ns.svc,shunt-operator.ns.svc,\
                shunt-api.ns.svc.cluster.local, Shunt-Operator.ns.svc.cluster.local ,,10.0.0.7,::1,*.ns.svc";
    let s = args(&["--namespace", "ns", "--dns-names", list]).unwrap();
    let CertSource::SelfManaged(own) = s.cert else {
        panic!("self mode expected")
    };
    assert_eq!(
        own.dns_names,
        [
            "shunt-webhook",
            "shunt-webhook.ns",
            "shunt-webhook.ns.svc",
            "shunt-webhook.ns.svc.cluster.local",
            "shunt-api.ns.svc",
            "shunt-operator.ns.svc",
            "shunt-api.ns.svc.cluster.local",
            "shunt-operator.ns.svc.cluster.local",
            "10.0.0.7",
            "::1",
            "*.ns.svc",
        ]
    );
    // And rcgen accepts every one of them.
    crate::certs::issue::issue(&own.dns_names, 1_700_000_000, 3600).unwrap();
    for bad in [
        "shunt_api.ns.svc",
        "-api.ns.svc",
        "api-.ns.svc",
        "api..svc",
        "api.ns.svc.",
        "a.*.svc",
        "http://api",
        "10.0.0.256:443",
    ] {
        let err = args(&[&format!("--dns-names={bad}")]).unwrap_err();
        assert!(
            err.contains("--dns-names") && err.contains("not a DNS name"),
            "{bad}: {err}"
        );
    }
    let long = format!("{}.svc", "a".repeat(64));
    assert!(args(&["--dns-names", &long]).is_err());
}

#[test]
fn the_api_service_name_is_optional_and_checked() {
    let own = |argv: &[&str]| match args(argv).unwrap().cert {
        CertSource::SelfManaged(own) => own,
        CertSource::Files { .. } => panic!("self mode expected"),
    };
    assert_eq!(own(&[]).api_service_name, None);
    assert_eq!(
        own(&["--api-service-name", "v1.api.shunt.dev"])
            .api_service_name
            .as_deref(),
        Some("v1.api.shunt.dev")
    );
    let err = args(&["--api-service-name", "V1.Api"]).unwrap_err();
    assert!(err.contains("--api-service-name"), "{err}");
}
