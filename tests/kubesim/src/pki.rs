//! The cluster's certificates, made fresh for every cluster with `rcgen`:
//! - the cluster CA, which signs the API server's serving certificate and every client
//!   certificate (CN = user, O = groups, as kube-apiserver reads them);
//! - the front-proxy CA and its client certificate, which kubesim presents to
//!   aggregated API servers, published like kube-apiserver does in
//!   `kube-system/extension-apiserver-authentication`.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// A certificate authority that can sign leaves.
pub struct Ca {
    /// The CA certificate, PEM.
    pub cert_pem: String,
    params: CertificateParams,
    key: KeyPair,
}

/// A failure to make certificates.
#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct PkiError(#[from] rcgen::Error);

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            params,
            key,
        })
    }

    /// A serving certificate for `dns` names and `ips`.
    pub fn server(&self, dns: &[String], ips: &[IpAddr]) -> Result<CertPair, PkiError> {
        let mut params = CertificateParams::new(dns.to_vec())?;
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.distinguished_name = dn(dns.first().map_or("kubesim", String::as_str), &[]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        self.sign(params)
    }

    /// A client certificate for `user` in `groups`.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<CertPair, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertPair, PkiError> {
        let key = KeyPair::generate()?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn dn(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn
}

/// All certificates of one cluster.
pub struct Pki {
    /// Cluster CA: serving certificate and client certificates.
    pub ca: Ca,
    /// The API server's serving certificate.
    pub server: CertPair,
    /// Front-proxy CA (trusted by aggregated API servers for `X-Remote-*` headers).
    pub front_proxy_ca: Ca,
    /// The client certificate kubesim presents to aggregated API servers.
    pub front_proxy_client: CertPair,
}

/// CN of the front-proxy client certificate (`requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT_NAME: &str = "front-proxy-client";

impl Pki {
    /// Fresh certificates; the server certificate covers `ips`, `localhost` and the
    /// in-cluster names of the `kubernetes` Service.
    pub fn new(ips: &[IpAddr]) -> Result<Arc<Pki>, PkiError> {
        let ca = Ca::new("kubesim-ca")?;
        let dns: Vec<String> = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let server = ca.server(&dns, ips)?;
        let front_proxy_ca = Ca::new("kubesim-front-proxy-ca")?;
        let front_proxy_client = front_proxy_ca.client(FRONT_PROXY_CLIENT_NAME, &[])?;
        Ok(Arc::new(Pki {
            ca,
            server,
            front_proxy_ca,
            front_proxy_client,
        }))
    }
}
