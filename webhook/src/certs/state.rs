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
//!    some replicas still serve the old certificate for a moment. The overlap counts from
//!    when the bundle holding both CAs was last *written* to `caBundle` (annotation
//!    [`PUBLISHED_AT`]), not from the staging: a `caBundle` reset (e.g. by `helm upgrade`)
//!    and put back later starts the overlap again, so API servers always get `overlap` to
//!    see the new CA before any replica serves a certificate signed by it.
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
/// Annotation: Unix time the bundle holding the `next-*` CA was last written to `caBundle`.
pub const PUBLISHED_AT: &str = "shunt.dev/next-published-at";
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
    /// Staged for the next rotation.
    pub next: Option<Staged>,
    /// The CAs `caBundle` must hold, in order.
    pub bundle: Vec<CertificateDer<'static>>,
    /// When the previous CA leaves the bundle.
    pub previous_until: Option<i64>,
}

/// A certificate staged for the next rotation.
#[derive(Clone, Debug, PartialEq)]
pub struct Staged {
    /// The certificate and its CA.
    pub issued: Issued,
    /// When it was staged (Unix time).
    pub staged_at: i64,
    /// When the bundle holding its CA was last written to `caBundle`; `None` until a
    /// replica has seen it published (the overlap before promotion counts from here).
    pub published_at: Option<i64>,
}

/// What a reconcile saw of the published `caBundle`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    /// They do not (all) hold the bundle.
    No,
    /// They already held the bundle when read.
    Already,
    /// They lacked it and this reconcile wrote it at this Unix time (first publication, or
    /// putting it back after a reset): API servers may only see it from now on.
    WrittenAt(i64),
}

impl Published {
    /// What a reconcile saw of two places together: published only if both hold the
    /// bundle, since the later write if either was written.
    pub fn and(self, other: Published) -> Published {
        match (self, other) {
            (Published::No, _) | (_, Published::No) => Published::No,
            (Published::WrittenAt(a), Published::WrittenAt(b)) => Published::WrittenAt(a.max(b)),
            (Published::WrittenAt(at), _) | (_, Published::WrittenAt(at)) => Published::WrittenAt(at),
            (Published::Already, Published::Already) => Published::Already,
        }
    }
}

/// The annotations this crate owns, with their values (`None`: remove it).
pub type OwnedAnnotations = [(&'static str, Option<String>); 3];

/// The next step of a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    Keep,
    /// Issue the next certificate and publish its CA.
    Stage,
    /// Record that the bundle with the next CA is published from now on.
    MarkPublished,
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
        let time = |key: &str| annotations.get(key).and_then(|t| t.parse::<i64>().ok());
        let next = match (material(NEXT_CA, NEXT_CRT, NEXT_KEY), time(STAGED_AT)) {
            (Some(m), Some(staged_at)) => match Issued::parse(m) {
                Ok(issued) => Some(Staged {
                    issued,
                    staged_at,
                    // Absent (staged by an older version, or not yet seen published): the
                    // next reconcile that sees the bundle published records it.
                    published_at: time(PUBLISHED_AT),
                }),
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
        for ca in std::iter::once(&active.ca).chain(next.as_ref().map(|n| &n.issued.ca)) {
            if !bundle.contains(ca) {
                bundle.push(ca.clone());
                repaired = true;
            }
        }
        let previous_until = time(PREVIOUS_UNTIL);
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
        if let Some(next) = &self.next {
            put(NEXT_CA, &next.issued.material.ca_pem);
            put(NEXT_CRT, &next.issued.material.cert_pem);
            put(NEXT_KEY, &next.issued.material.key_pem);
        }
        let next = self.next.as_ref();
        let annotations = [
            (STAGED_AT, next.map(|n| n.staged_at.to_string())),
            (PUBLISHED_AT, next.and_then(|n| n.published_at).map(|t| t.to_string())),
            (PREVIOUS_UNTIL, self.previous_until.map(|t| t.to_string())),
        ];
        (data, annotations)
    }

    /// The bundle as PEM, the text `caBundle` must hold.
    pub fn bundle_pem(&self) -> String {
        self.bundle.iter().map(|der| pem(der)).collect()
    }

    /// What to do at `now`, given what the reconcile saw of the published `caBundle`s.
    pub fn plan(&self, now: i64, published: Published, policy: &Policy) -> Step {
        if let Some(next) = &self.next {
            // An expired served certificate is useless: switch even without the overlap.
            if now >= self.active.not_after {
                return Step::Promote;
            }
            return match (published, next.published_at) {
                (Published::No, _) => Step::Keep,
                // Written by us just now, after the time recorded (a reset put back):
                // the overlap starts again.
                (Published::WrittenAt(at), recorded) if recorded.is_none_or(|r| r < at) => Step::MarkPublished,
                (Published::Already, None) => Step::MarkPublished,
                (_, Some(since)) if now >= since + policy.overlap => Step::Promote,
                _ => Step::Keep,
            };
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
            // Not seen published yet: look again an overlap after staging (watch events on
            // the webhook configuration usually come first).
            Some(next) => (next.published_at.unwrap_or(next.staged_at) + policy.overlap).min(self.active.not_after),
            None => {
                let renew = self.active.not_after - policy.renew_before;
                self.previous_until.map_or(renew, |until| until.min(renew))
            }
        }
    }

    /// The state after `step` at `now`; `Stage` takes the freshly issued certificate.
    /// `MarkPublished` records `now`: callers take `now` after writing the `caBundle`.
    pub fn apply(mut self, step: Step, now: i64, policy: &Policy, staged: Option<Issued>) -> CertState {
        match (step, staged) {
            (Step::Stage, Some(next)) => {
                self.bundle = vec![self.active.ca.clone(), next.ca.clone()];
                self.next = Some(Staged {
                    issued: next,
                    staged_at: now,
                    published_at: None,
                });
                self.previous_until = None;
            }
            (Step::MarkPublished, _) => {
                if let Some(next) = &mut self.next {
                    next.published_at = Some(now);
                }
            }
            (Step::Promote, _) => {
                if let Some(Staged { issued: next, .. }) = self.next.take() {
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
