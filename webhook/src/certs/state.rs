//! What the certificate Secret holds, and the rotation plan: a pure function of the
//! Secret, the published `caBundle` and the time.
//!
//! Secret keys: `tls.crt`/`tls.key` (served), `ca.crt` (its CA), `ca-bundle.crt` (every CA
//! `caBundle` must hold), and during a rotation `next-ca.crt`/`next-tls.crt`/`next-tls.key`.
//!
//! Rotation, so that no request fails (API servers cache `caBundle`, replicas see the
//! Secret at slightly different times, open connections keep their certificate):
//! 1. **stage** (at `notAfter - renew_before`): a new CA and certificate are written as
//!    `next-*`; the bundle becomes old CA + new CA and is published. Nothing served changes.
//! 2. **promote** (once the new CA has been in the published `caBundle` for `overlap`): the
//!    next certificate becomes the served one; the bundle still holds both CAs, because
//!    some replicas still serve the old certificate for a moment.
//! 3. **drop** (after another `overlap`): the bundle holds only the new CA.

use std::collections::BTreeMap;

use base64::Engine as _;
use k8s_openapi::ByteString;
use rustls_pki_types::CertificateDer;

use super::issue::Material;
use crate::tls::{self, TlsError};

/// Secret key of the served certificate.
pub const TLS_CRT: &str = "tls.crt";
/// Secret key of the served certificate's key.
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the served certificate's CA.
pub const CA_CRT: &str = "ca.crt";
/// Secret key of the CAs `caBundle` must hold.
pub const CA_BUNDLE: &str = "ca-bundle.crt";
const NEXT_CA: &str = "next-ca.crt";
const NEXT_CRT: &str = "next-tls.crt";
const NEXT_KEY: &str = "next-tls.key";
/// Annotation: Unix time the `next-*` certificate was staged.
pub const STAGED_AT: &str = "shunt.dev/next-staged-at";
/// Annotation: Unix time after which the previous CA leaves the bundle.
pub const PREVIOUS_UNTIL: &str = "shunt.dev/previous-ca-until";

/// Timing of renewals, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Lifetime of a new certificate (and its CA).
    pub validity: i64,
    /// Renewal starts this long before `notAfter`.
    pub renew_before: i64,
    /// How long both CAs stay trusted before each switch.
    pub overlap: i64,
}

/// A certificate with its CA, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Issued {
    /// The PEM texts.
    pub material: Material,
    /// The CA, DER.
    pub ca: CertificateDer<'static>,
    /// `notAfter` of the serving certificate (Unix time).
    pub not_after: i64,
    /// The serving certificate's DNS names and IP addresses.
    pub names: Vec<String>,
}

impl Issued {
    /// Parses and checks `material` (certificate and key match, CA parses).
    pub fn parse(material: Material) -> Result<Issued, TlsError> {
        let loaded = tls::load_pem(material.cert_pem.as_bytes(), material.key_pem.as_bytes())?;
        let ca = tls::parse_bundle(material.ca_pem.as_bytes())?.swap_remove(0);
        let names = match loaded.key.cert.first() {
            Some(leaf) => tls::subject_alt_names(leaf)?,
            None => Vec::new(),
        };
        Ok(Issued {
            material,
            ca,
            not_after: loaded.not_after,
            names,
        })
    }

    /// The names of `wanted` the serving certificate is not for (IP addresses compared as
    /// addresses, DNS names case-insensitively).
    pub fn missing_names<'a>(&self, wanted: &'a [String]) -> Vec<&'a str> {
        let normal = |name: &str| match name.parse::<std::net::IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => name.to_ascii_lowercase(),
        };
        wanted
            .iter()
            .filter(|w| !self.names.contains(&normal(w)))
            .map(String::as_str)
            .collect()
    }
}

/// The Secret's contents.
#[derive(Clone, Debug, PartialEq)]
pub struct CertState {
    /// What is served.
    pub active: Issued,
    /// Staged for the next rotation, with the time it was staged.
    pub next: Option<(Issued, i64)>,
    /// The CAs `caBundle` must hold, in order.
    pub bundle: Vec<CertificateDer<'static>>,
    /// When the previous CA leaves the bundle.
    pub previous_until: Option<i64>,
}

/// The annotations this crate owns, with their values (`None`: remove it).
pub type OwnedAnnotations = [(&'static str, Option<String>); 2];

/// The next step of a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Keep,
    /// Issue the next certificate and publish its CA.
    Stage,
    /// Serve the next certificate.
    Promote,
    /// Remove the previous CA from the bundle.
    DropPrevious,
}

impl CertState {
    /// A state serving `active` alone.
    pub fn fresh(active: Issued) -> CertState {
        CertState {
            bundle: vec![active.ca.clone()],
            active,
            next: None,
            previous_until: None,
        }
    }

    /// Reads a Secret's data and annotations. An unusable `next-*` or bundle is repaired
    /// (dropped or rebuilt) rather than refused; only an unusable served certificate is an
    /// error. The flag is true when something was repaired and should be written back.
    pub fn decode(
        data: &BTreeMap<String, ByteString>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<(CertState, bool), TlsError> {
        let text = |key: &str| data.get(key).map(|b| String::from_utf8_lossy(&b.0).into_owned());
        let material = |ca: &str, crt: &str, key: &str| -> Option<Material> {
            Some(Material {
                ca_pem: text(ca)?,
                cert_pem: text(crt)?,
                key_pem: text(key)?,
            })
        };
        let active =
            material(CA_CRT, TLS_CRT, TLS_KEY).ok_or(TlsError::NoCertificate("Secret (tls.crt, tls.key, ca.crt)"))?;
        let active = Issued::parse(active)?;
        let mut repaired = false;
        let staged_at = annotations.get(STAGED_AT).and_then(|t| t.parse::<i64>().ok());
        let next = match (material(NEXT_CA, NEXT_CRT, NEXT_KEY), staged_at) {
            (Some(m), Some(at)) => match Issued::parse(m) {
                Ok(issued) => Some((issued, at)),
                Err(_) => {
                    repaired = true;
                    None
                }
            },
            (None, None) => None,
            _ => {
                repaired = true;
                None
            }
        };
        let mut bundle = text(CA_BUNDLE)
            .and_then(|pem| tls::parse_bundle(pem.as_bytes()).ok())
            .unwrap_or_default();
        for ca in std::iter::once(&active.ca).chain(next.as_ref().map(|(n, _)| &n.ca)) {
            if !bundle.contains(ca) {
                bundle.push(ca.clone());
                repaired = true;
            }
        }
        let previous_until = annotations.get(PREVIOUS_UNTIL).and_then(|t| t.parse().ok());
        Ok((
            CertState {
                active,
                next,
                bundle,
                previous_until,
            },
            repaired,
        ))
    }

    /// The Secret data and the annotations this crate owns (absent ones are to be removed).
    pub fn encode(&self) -> (BTreeMap<String, ByteString>, OwnedAnnotations) {
        let mut data = BTreeMap::new();
        let mut put = |key: &str, text: &str| data.insert(key.to_owned(), ByteString(text.as_bytes().to_vec()));
        put(TLS_CRT, &self.active.material.cert_pem);
        put(TLS_KEY, &self.active.material.key_pem);
        put(CA_CRT, &self.active.material.ca_pem);
        put(CA_BUNDLE, &self.bundle_pem());
        if let Some((next, _)) = &self.next {
            put(NEXT_CA, &next.material.ca_pem);
            put(NEXT_CRT, &next.material.cert_pem);
            put(NEXT_KEY, &next.material.key_pem);
        }
        let annotations = [
            (STAGED_AT, self.next.as_ref().map(|(_, at)| at.to_string())),
            (PREVIOUS_UNTIL, self.previous_until.map(|t| t.to_string())),
        ];
        (data, annotations)
    }

    /// The bundle as PEM, the text `caBundle` must hold.
    pub fn bundle_pem(&self) -> String {
        self.bundle.iter().map(|der| pem(der)).collect()
    }

    /// What to do at `now`, given the CAs currently published in `caBundle`.
    pub fn plan(&self, now: i64, published: &[CertificateDer<'_>], policy: &Policy) -> Step {
        if let Some((next, staged_at)) = &self.next {
            let visible = published.iter().any(|ca| ca.as_ref() == next.ca.as_ref());
            // An expired served certificate is useless: switch even without the overlap.
            if (visible && now >= staged_at + policy.overlap) || now >= self.active.not_after {
                return Step::Promote;
            }
            return Step::Keep;
        }
        if now >= self.active.not_after - policy.renew_before {
            return Step::Stage;
        }
        if self.previous_until.is_some_and(|until| now >= until) {
            return Step::DropPrevious;
        }
        Step::Keep
    }

    /// The earliest time `plan` may answer differently (without other changes).
    pub fn next_check(&self, policy: &Policy) -> i64 {
        match &self.next {
            Some((_, staged_at)) => (staged_at + policy.overlap).min(self.active.not_after),
            None => {
                let renew = self.active.not_after - policy.renew_before;
                self.previous_until.map_or(renew, |until| until.min(renew))
            }
        }
    }

    /// The state after `step` at `now`; `Stage` takes the freshly issued certificate.
    pub fn apply(mut self, step: Step, now: i64, policy: &Policy, staged: Option<Issued>) -> CertState {
        match (step, staged) {
            (Step::Stage, Some(next)) => {
                self.bundle = vec![self.active.ca.clone(), next.ca.clone()];
                self.next = Some((next, now));
                self.previous_until = None;
            }
            (Step::Promote, _) => {
                if let Some((next, _)) = self.next.take() {
                    if !self.bundle.contains(&next.ca) {
                        self.bundle.push(next.ca.clone());
                    }
                    self.active = next;
                    self.previous_until = Some(now + policy.overlap);
                }
            }
            (Step::DropPrevious, _) => {
                self.bundle = vec![self.active.ca.clone()];
                self.previous_until = None;
            }
            _ => {}
        }
        self
    }
}

/// PEM text of one DER certificate.
pub fn pem(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
