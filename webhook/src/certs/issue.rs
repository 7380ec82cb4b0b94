//! Making a CA and a serving certificate (ECDSA P-256) with rcgen.
//!
//! Every issue makes a *new* CA and signs one serving certificate with it; the CA's key is
//! then dropped. Nothing ever signs with it again, so it is never stored: a leaked Secret
//! cannot be used to mint certificates for other names.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use super::CertError;

/// A serving certificate with its key and the CA that signed it, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    /// The CA certificate (what `caBundle` must hold).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving certificate's private key (PKCS#8).
    pub key_pem: String,
}

/// Clock skew allowed between this webhook and the API servers that verify it.
const BACKDATE_SECONDS: i64 = 300;

/// Issues a fresh CA and a serving certificate for `dns_names`, valid from now (minus a
/// little clock skew) for `validity_seconds`.
pub fn issue(dns_names: &[String], now_unix: i64, validity_seconds: i64) -> Result<Material, CertError> {
    let fail = |what: &'static str| move |e: rcgen::Error| CertError::Issue(format!("{what}: {e}"));
    let not_before = at(now_unix - BACKDATE_SECONDS)?;
    let not_after = at(now_unix + validity_seconds)?;

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail("CA parameters"))?;
    // A unique name per CA, so that old and new CA are told apart in the bundle and logs.
    ca.distinguished_name
        .push(DnType::CommonName, format!("shunt-webhook CA {now_unix}"));
    ca.distinguished_name.push(DnType::OrganizationName, "shunt");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().map_err(fail("CA key"))?;
    let ca_cert = ca.self_signed(&ca_key).map_err(fail("CA certificate"))?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(dns_names.to_vec()).map_err(fail("DNS names"))?;
    if let Some(first) = dns_names.first() {
        leaf.distinguished_name.push(DnType::CommonName, first.clone());
    }
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = not_before;
    leaf.not_after = not_after;
    let leaf_key = KeyPair::generate().map_err(fail("serving key"))?;
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .map_err(fail("serving certificate"))?;

    Ok(Material {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

fn at(unix: i64) -> Result<OffsetDateTime, CertError> {
    OffsetDateTime::from_unix_timestamp(unix).map_err(|e| CertError::Issue(format!("time {unix}: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use rustls::client::danger::ServerCertVerifier;

    use super::*;
    use crate::tls;

    #[test]
    fn the_serving_certificate_chains_to_the_ca_and_covers_the_names() {
        let names = vec!["shunt-webhook.shunt.svc".to_owned(), "localhost".to_owned()];
        let m = issue(&names, 1_700_000_000, 3600).unwrap();
        let loaded = tls::load_pem(m.cert_pem.as_bytes(), m.key_pem.as_bytes()).unwrap();
        assert_eq!(loaded.not_after, 1_700_003_600);
        let ca = tls::parse_bundle(m.ca_pem.as_bytes()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), tls::provider())
            .build()
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("shunt-webhook.shunt.svc").unwrap();
        let now = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_100));
        verifier
            .verify_server_cert(&loaded.key.cert[0], &[], &name, &[], now)
            .unwrap();
        let other = rustls_pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(verifier
            .verify_server_cert(&loaded.key.cert[0], &[], &other, &[], now)
            .is_err());
    }
}
