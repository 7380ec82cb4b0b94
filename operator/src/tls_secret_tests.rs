#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

use super::*;

/// A CA and a leaf for `names`, PEM: (ca, cert, key).
fn issue(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

fn secret(cert: &str, key: &str) -> Secret {
    let data = [(TLS_CRT, cert), (TLS_KEY, key)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect::<BTreeMap<_, _>>();
    Secret {
        data: Some(data),
        ..Secret::default()
    }
}

fn served(cert: &ServingCert) -> Vec<u8> {
    cert.current().unwrap().key.cert[0].to_vec()
}

#[test]
fn a_pair_loads_and_broken_ones_say_what_is_wrong() {
    let (_, cert, key) = issue(&["shunt-api.shunt-system.svc"]);
    let pair = load(&secret(&cert, &key)).unwrap();
    assert!(pair.not_after > 0 && !pair.serial.is_empty());

    let (_, _, other_key) = issue(&["x"]);
    let cases = [
        (secret(&cert, ""), "has no tls.key"),
        (secret("", &key), "has no tls.crt"),
        (secret("garbage", &key), "tls.crt is not valid PEM"),
        (
            secret(&cert, "-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n"),
            "tls.key is not valid PEM",
        ),
        (secret(&cert, &other_key), "tls.key does not fit tls.crt"),
        (Secret::default(), "has no tls.crt"),
    ];
    for (secret, want) in cases {
        let err = load(&secret).unwrap_err().to_string();
        assert!(err.contains(want), "{want}: {err}");
    }
}

#[tokio::test]
async fn not_ready_until_a_pair_arrives_then_a_damaged_pair_keeps_the_last_good_one() {
    let cert = ServingCert::new("shunt-system", "shunt-tls", Gauge::default());
    assert!(cert.not_ready().unwrap().contains("waiting for the first read"));
    cert.update(None);
    let reason = cert.not_ready().unwrap();
    assert!(
        reason.contains("Secret shunt-system/shunt-tls not found") && reason.contains("--cert-mode self"),
        "{reason}"
    );
    cert.update(Some(&secret("garbage", "garbage")));
    assert!(cert.not_ready().unwrap().contains("holds no usable certificate"));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(10), cert.loaded())
            .await
            .is_err()
    );

    let (_, first, first_key) = issue(&["shunt-api.shunt-system.svc"]);
    cert.update(Some(&secret(&first, &first_key)));
    assert_eq!(cert.not_ready(), None);
    cert.loaded().await;
    let good = served(&cert);
    assert_eq!(cert.expiry.get(), cert.current().unwrap().not_after);

    // Damaged, deleted, unreadable: the last good pair stays in force, still ready.
    let (_, _, wrong_key) = issue(&["x"]);
    cert.update(Some(&secret(&first, &wrong_key)));
    cert.update(None);
    cert.problem("cannot watch".into());
    assert_eq!(served(&cert), good);
    assert_eq!(cert.not_ready(), None);

    // A new pair is served from the next handshake on.
    let (_, second, second_key) = issue(&["shunt-api.shunt-system.svc"]);
    cert.update(Some(&secret(&second, &second_key)));
    assert_ne!(served(&cert), good);
}
