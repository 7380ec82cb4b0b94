//! The webhook's Prometheus metrics, served as text on `/metrics`.
//!
//! - `shunt_webhook_reviews_total{outcome}`: reviews answered, by outcome;
//! - `shunt_webhook_skips_total{reason}`: pods left alone, by reason;
//! - `shunt_webhook_review_duration_seconds`: time from the body read to the answer;
//! - `shunt_webhook_certificate_expiry_timestamp_seconds`: `notAfter` of the served
//!   certificate (alert when `- time() < 7 * 86400`);
//! - `shunt_webhook_certificate_reloads_total`, `shunt_webhook_certificate_errors_total`.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::inject::SkipReason;

/// What happened to one review.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)] // label values are Prometheus snake_case on purpose
pub enum Outcome {
    /// The sidecar was injected.
    injected,
    /// An older version's sidecar was replaced.
    replaced,
    /// The pod was left alone for a reason (see `skips_total`).
    skipped,
    /// Not a pod CREATE (e.g. UPDATE): nothing to do.
    ignored,
    /// Our own failure: the pod was admitted unchanged, with a warning.
    error,
    /// A bad request (HTTP 400 or 413).
    rejected,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// All metrics, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reviews: Family<OutcomeLabels, Counter>,
    skips: Family<ReasonLabels, Counter>,
    latency: Histogram,
    expiry: Gauge,
    reloads: Counter,
    cert_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("shunt_webhook");
        let reviews = Family::<OutcomeLabels, Counter>::default();
        registry.register("reviews", "AdmissionReviews answered, by outcome", reviews.clone());
        let skips = Family::<ReasonLabels, Counter>::default();
        registry.register("skips", "Pods left without a sidecar, by reason", skips.clone());
        let latency = Histogram::new(exponential_buckets(0.000_025, 2.0, 18));
        registry.register_with_unit(
            "review_duration",
            "Time to answer one AdmissionReview",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let expiry = Gauge::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "notAfter of the served certificate, as a Unix time",
            expiry.clone(),
        );
        let reloads = Counter::default();
        registry.register("certificate_reloads", "Served certificate swaps", reloads.clone());
        let cert_errors = Counter::default();
        registry.register(
            "certificate_errors",
            "Failures to load, create, renew or publish the certificate",
            cert_errors.clone(),
        );
        for outcome in [
            Outcome::injected,
            Outcome::replaced,
            Outcome::skipped,
            Outcome::ignored,
            Outcome::error,
            Outcome::rejected,
        ] {
            drop(reviews.get_or_create(&OutcomeLabels { outcome }));
        }
        Metrics {
            registry,
            reviews,
            skips,
            latency,
            expiry,
            reloads,
            cert_errors,
        }
    }

    /// Counts one review and its duration.
    pub fn review(&self, outcome: Outcome, skip: Option<SkipReason>, seconds: f64) {
        self.reviews.get_or_create(&OutcomeLabels { outcome }).inc();
        if let Some(reason) = skip {
            self.skips
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .inc();
        }
        self.latency.observe(seconds);
    }

    /// Records a newly served certificate.
    pub fn certificate_loaded(&self, not_after_unix: i64) {
        self.expiry.set(not_after_unix);
        self.reloads.inc();
    }

    /// Counts a certificate failure.
    pub fn certificate_error(&self) {
        self.cert_errors.inc();
    }

    /// The reviews counted with `outcome` so far (tests and logs).
    pub fn reviews(&self, outcome: Outcome) -> u64 {
        self.reviews.get_or_create(&OutcomeLabels { outcome }).get()
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
