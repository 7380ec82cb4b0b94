//! Who is calling: only kube-apiserver's front proxy may assert identities.
//!
//! kube-apiserver publishes the front-proxy CA and the allowed client names in the
//! ConfigMap `kube-system/extension-apiserver-authentication`; the operator reads it at
//! start. The TLS server asks every client for a certificate but also accepts clients
//! without one, so that they get a `401 Status` (not a bare handshake failure) saying why.
//! A request is trusted when its connection presented a certificate chained to that CA
//! whose CN is allowed (an empty list allows any); the user is then `X-Remote-User`,
//! the groups every `X-Remote-Group`, and the extras `X-Remote-Extra-<key>`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use k8s_openapi::api::core::v1::ConfigMap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::status::ApiError;
use super::AppState;

/// What the front proxy is: its CA and the CNs it may use.
#[derive(Clone, Debug)]
pub struct FrontProxy {
    /// PEM of `requestheader-client-ca-file`.
    pub ca_pem: String,
    /// `requestheader-allowed-names` (empty: any CN signed by the CA).
    pub allowed_names: Vec<String>,
}

/// Why the front-proxy trust could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The ConfigMap could not be read.
    #[error("cannot read ConfigMap kube-system/extension-apiserver-authentication (the operator needs get on it, e.g. the RoleBinding to extension-apiserver-authentication-reader): {0}")]
    Read(#[source] kube::Error),
    /// The ConfigMap lacks the front-proxy CA (aggregation is not configured).
    #[error("ConfigMap kube-system/extension-apiserver-authentication has no requestheader-client-ca-file: enable the aggregation layer of kube-apiserver (--requestheader-client-ca-file)")]
    NoCa,
    /// A PEM document or key could not be used.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which file or field.
        what: String,
        /// Why.
        reason: String,
    },
}

impl FrontProxy {
    /// Reads the front-proxy trust from the cluster.
    pub async fn load(client: kube::Client) -> Result<FrontProxy, TrustError> {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, "kube-system");
        let cm = api
            .get("extension-apiserver-authentication")
            .await
            .map_err(TrustError::Read)?;
        let data = cm.data.unwrap_or_default();
        let ca_pem = data
            .get("requestheader-client-ca-file")
            .cloned()
            .ok_or(TrustError::NoCa)?;
        let allowed_names = match data.get("requestheader-allowed-names") {
            Some(text) if !text.trim().is_empty() => serde_json::from_str(text).map_err(|e| TrustError::Invalid {
                what: "requestheader-allowed-names (a JSON list of names)".into(),
                reason: e.to_string(),
            })?,
            _ => Vec::new(),
        };
        Ok(FrontProxy { ca_pem, allowed_names })
    }

    /// Whether a client certificate with common name `cn` may assert identities.
    pub fn allows(&self, cn: &str) -> bool {
        self.allowed_names.is_empty() || self.allowed_names.iter().any(|n| n == cn)
    }

    /// The TLS server configuration: `cert_pem`/`key_pem` as the server identity, client
    /// certificates verified against the front-proxy CA (optional, see the module doc),
    /// ALPN h2 and http/1.1.
    pub fn server_tls(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>, TrustError> {
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("API server certificate (--api-tls-cert)", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("API server key (--api-tls-key)", &e))?;
        let mut config = self
            .builder()?
            .with_single_cert(certs, key)
            .map_err(|e| invalid("API server certificate and key", &e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// [`FrontProxy::server_tls`] with the server identity from `resolver`, asked on every
    /// handshake (`--tls-secret`: the certificate changes without a restart).
    pub fn server_tls_with(
        &self,
        resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    ) -> Result<Arc<rustls::ServerConfig>, TrustError> {
        let mut config = self.builder()?.with_cert_resolver(resolver);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn builder(
        &self,
    ) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>, TrustError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| invalid("front-proxy CA", &e))?;
            roots.add(cert).map_err(|e| invalid("front-proxy CA", &e))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| invalid("front-proxy CA", &e))?;
        Ok(rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", &e))?
            .with_client_cert_verifier(verifier))
    }
}

fn invalid(what: &str, error: &dyn std::fmt::Display) -> TrustError {
    TrustError::Invalid {
        what: what.to_owned(),
        reason: error.to_string(),
    }
}

/// The connection's verified client certificate CN, put on each request by the server.
#[derive(Clone, Debug, Default)]
pub struct PeerCn(pub Option<String>);

/// The CN of the first certificate of a verified chain.
pub fn peer_cn(certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    let der = certs?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Caller {
    /// User name.
    pub user: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes (`X-Remote-Extra-<key>`, key percent-decoded and lowercase).
    pub extra: BTreeMap<String, Vec<String>>,
}

/// `%XX` decoding of an extra key (kube-apiserver escapes them that way).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The caller of a request from a trusted front proxy, else a 401 saying why.
pub fn caller(parts: &Parts, trust: &FrontProxy) -> Result<Caller, ApiError> {
    let cn = parts
        .extensions
        .get::<PeerCn>()
        .and_then(|p| p.0.clone())
        .ok_or_else(|| {
            ApiError::unauthorized(
                "no client certificate from the front-proxy CA: the shunt API is served through kube-apiserver; \
             use kubectl or the shunt CLI with your kubeconfig",
            )
        })?;
    if !trust.allows(&cn) {
        return Err(ApiError::unauthorized(format!(
            "client certificate {cn:?} is not in requestheader-allowed-names; it may not assert identities"
        )));
    }
    let values = |name: &str| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let user = values("x-remote-user")
        .into_iter()
        .next()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("the front proxy sent no X-Remote-User: the request is not authenticated")
        })?;
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        if let (Some(key), Ok(value)) = (name.as_str().strip_prefix("x-remote-extra-"), value.to_str()) {
            extra
                .entry(percent_decode(key).to_ascii_lowercase())
                .or_default()
                .push(value.to_owned());
        }
    }
    Ok(Caller {
        user,
        groups: values("x-remote-group"),
        extra,
    })
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Caller, ApiError> {
        caller(parts, &state.trust)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parts(cn: Option<&str>, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().uri("/apis");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let (mut parts, ()) = req.body(()).unwrap().into_parts();
        parts.extensions.insert(PeerCn(cn.map(str::to_owned)));
        parts
    }

    #[test]
    fn identities_come_only_from_allowed_front_proxy_certificates() {
        let trust = FrontProxy {
            ca_pem: String::new(),
            allowed_names: vec!["front-proxy-client".into()],
        };
        let headers = [
            ("x-remote-user", "alice"),
            ("x-remote-group", "devs"),
            ("x-remote-group", "system:authenticated"),
            ("x-remote-extra-scopes%2fa", "x"),
        ];
        let alice = caller(&parts(Some("front-proxy-client"), &headers), &trust).unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, ["devs", "system:authenticated"]);
        assert_eq!(alice.extra["scopes/a"], ["x"]);
        let err = caller(&parts(None, &headers), &trust).unwrap_err();
        assert_eq!(err.code, 401);
        let err = caller(&parts(Some("mallory"), &headers), &trust).unwrap_err();
        assert!(err.message.contains("mallory"), "{err}");
        let any = FrontProxy {
            allowed_names: vec![],
            ..trust
        };
        assert!(caller(&parts(Some("mallory"), &headers), &any).is_ok());
        assert!(caller(&parts(Some("mallory"), &[]), &any).is_err());
    }
}
