//! Mode `self`: the certificate lives in a Secret that the webhook creates, serves, publishes
//! (`caBundle` of its MutatingWebhookConfiguration and, with `--api-service-name`, of the
//! operator's APIService: [`super::publish`]) and rotates. The operator serves the same
//! Secret's certificate (`--tls-secret`), so the certificate also carries the operator's
//! Service names (`--dns-names`); a Secret whose certificate lacks a configured name is
//! rotated like an expiring one.
//!
//! Every replica runs the same reconcile loop; all writes are conditional, so replicas that
//! start or rotate at once agree on one Secret: a create that meets `409 AlreadyExists`
//! and an update that meets `409 Conflict` re-read the Secret and go on from what won.
//! The loop runs on Secret, webhook-configuration and APIService watch events (so a rotation
//! done by another replica is served at once, and a `caBundle` reset by `helm upgrade` is
//! put back), on the rotation timer, and every `resync` as a safety net.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt as _;
use kube::Api;

use super::issue::issue;
use super::publish::{self, Object};
use super::state::{CertState, Issued, Policy, Published, Step};
use super::{api_status, unix_now, CertError};
use crate::metrics::Metrics;
use crate::tls::{self, CertStore};

/// Where the certificate lives and how it is renewed.
#[derive(Clone, Debug)]
pub struct SelfSettings {
    /// Namespace of the Secret (the webhook's own).
    pub namespace: String,
    /// Name of the Secret.
    pub secret_name: String,
    /// Name of the MutatingWebhookConfiguration whose `caBundle` is kept correct.
    pub webhook_config_name: String,
    /// Name of the APIService whose `caBundle` is kept correct too, if any.
    pub api_service_name: Option<String>,
    /// DNS names of the serving certificate.
    pub dns_names: Vec<String>,
    /// Validity, renewal and overlap.
    pub policy: Policy,
    /// Reconcile at least this often.
    pub resync: Duration,
}

/// The self-managed certificate source.
#[derive(Clone)]
pub struct SelfManaged {
    client: kube::Client,
    secrets: Api<Secret>,
    settings: SelfSettings,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    /// Whether the APIService was found missing (and that was logged).
    api_service_missing: Arc<AtomicBool>,
}

const MAX_CONFLICTS: usize = 10;

impl SelfManaged {
    /// A source using `client` for the API calls.
    pub fn new(client: kube::Client, settings: SelfSettings, store: Arc<CertStore>, metrics: Arc<Metrics>) -> Self {
        SelfManaged {
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            client,
            settings,
            store,
            metrics,
            api_service_missing: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Makes sure the Secret exists and holds a usable certificate (creating or replacing
    /// it, resolving conflicts with other replicas by re-reading), and returns it.
    pub async fn ensure(&self) -> Result<(Secret, CertState), CertError> {
        let name = &self.settings.secret_name;
        for _ in 0..MAX_CONFLICTS {
            let existing = self
                .secrets
                .get_opt(name)
                .await
                .map_err(|e| self.secret_object().error("read", e))?;
            let Some(secret) = existing else {
                let state = CertState::fresh(self.issue()?);
                let mut secret = self.encode(Secret::default(), &state);
                secret.metadata.name = Some(name.clone());
                secret.type_ = Some("kubernetes.io/tls".into());
                match self.secrets.create(&PostParams::default(), &secret).await {
                    Ok(created) => {
                        tracing::info!(secret.name = %name, "created the certificate Secret");
                        return Ok((created, state));
                    }
                    Err(e) if api_status(&e) == Some(409) => {
                        tracing::info!(secret.name = %name, "another replica created the Secret first; using it");
                        continue;
                    }
                    Err(e) => return Err(self.secret_object().error("create", e)),
                }
            };
            let empty = BTreeMap::new();
            let decoded = CertState::decode(
                secret.data.as_ref().unwrap_or(&BTreeMap::new()),
                secret.metadata.annotations.as_ref().unwrap_or(&empty),
            );
            let state = match decoded {
                Ok((state, false)) => return Ok((secret, state)),
                Ok((state, true)) => {
                    tracing::info!(secret.name = %name, "repairing the CA bundle of the certificate Secret");
                    state
                }
                Err(error) => {
                    tracing::warn!(secret.name = %name, %error, "the Secret holds no usable certificate; replacing it");
                    CertState::fresh(self.issue()?)
                }
            };
            if let Some(written) = self.write(secret, &state).await? {
                return Ok((written, state));
            }
        }
        Err(CertError::Conflicts(self.secret_ref()))
    }

    /// One pass: settle the Secret, serve its certificate, publish its CA bundle, take the
    /// next rotation step if one is due. Returns when to look again (Unix time).
    pub async fn reconcile(&self) -> Result<i64, CertError> {
        let policy = self.settings.policy;
        // When this call wrote the caBundle: still true after a write conflict re-read.
        let mut written_at = None;
        for _ in 0..MAX_CONFLICTS {
            let (secret, state) = self.ensure().await?;
            let active = &state.active.material;
            self.store
                .set(tls::load_pem(active.cert_pem.as_bytes(), active.key_pem.as_bytes())?);
            let bundle = state.bundle_pem();
            self.store.set_ca_bundle(&bundle);
            let published = match self.publish(&bundle).await? {
                Published::WrittenAt(at) => {
                    written_at = Some(at);
                    Published::WrittenAt(at)
                }
                Published::Already => written_at.map_or(Published::Already, Published::WrittenAt),
                Published::No => Published::No,
            };
            let now = unix_now();
            let mut step = state.plan(now, published, &policy);
            if step == Step::Keep && state.next.is_none() {
                let missing = state.active.missing_names(&self.settings.dns_names);
                if !missing.is_empty() {
                    tracing::info!(
                        secret.name = %self.settings.secret_name,
                        missing = ?missing,
                        "the certificate is not for every configured name (--dns-names changed); rotating it"
                    );
                    step = Step::Stage;
                }
            }
            if step == Step::Keep {
                return Ok(state.next_check(&policy));
            }
            let staged = match step {
                Step::Stage => Some(self.issue()?),
                _ => None,
            };
            let next = state.apply(step, now, &policy, staged);
            if self.write(secret, &next).await?.is_some() {
                tracing::info!(secret.name = %self.settings.secret_name, step = ?step, "certificate rotation step");
            }
        }
        Err(CertError::Conflicts(self.secret_ref()))
    }

    /// Reconciles forever: on watch events, when a rotation step is due, and every
    /// `resync`; failures are logged, counted and retried with backoff.
    pub async fn run(self) {
        let field = format!("metadata.name={}", self.settings.secret_name);
        let secrets = watcher(self.secrets.clone(), watcher::Config::default().fields(&field)).default_backoff();
        let field = format!("metadata.name={}", self.settings.webhook_config_name);
        let configs: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let configs = watcher(configs, watcher::Config::default().fields(&field)).default_backoff();
        let mut streams: Vec<BoxStream<'static, bool>> =
            vec![secrets.map(|e| e.is_ok()).boxed(), configs.map(|e| e.is_ok()).boxed()];
        if let Some(name) = &self.settings.api_service_name {
            // Also brings us back when the APIService is created after us, or its caBundle reset.
            let field = format!("metadata.name={name}");
            let services: Api<APIService> = Api::all(self.client.clone());
            let services = watcher(services, watcher::Config::default().fields(&field)).default_backoff();
            streams.push(services.map(|e| e.is_ok()).boxed());
        }
        let mut events = futures_util::stream::select_all(streams);
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match self.reconcile().await {
                Ok(next_check) => {
                    backoff = Duration::from_secs(1);
                    // At least a second: a step that is due but blocked (e.g. the caBundle
                    // cannot be published yet) must not spin against the API server.
                    let due = u64::try_from(next_check.saturating_sub(unix_now())).unwrap_or(0);
                    Duration::from_secs(due.max(1)).min(self.settings.resync)
                }
                Err(error) => {
                    self.metrics.certificate_error();
                    tracing::warn!(%error, retry_in = ?backoff, "certificate reconcile failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                event = events.next() => {
                    if event.is_none() {
                        // Watch streams end only if the runtime is going away.
                        return;
                    }
                }
            }
        }
    }

    /// Writes `state` into `secret` conditionally. `Ok(None)` means another writer won the
    /// race (409): the caller re-reads.
    async fn write(&self, secret: Secret, state: &CertState) -> Result<Option<Secret>, CertError> {
        let secret = self.encode(secret, state);
        match self
            .secrets
            .replace(&self.settings.secret_name, &PostParams::default(), &secret)
            .await
        {
            Ok(written) => Ok(Some(written)),
            Err(e) if matches!(api_status(&e), Some(409 | 404)) => Ok(None),
            Err(e) => Err(self.secret_object().error("update", e)),
        }
    }

    fn encode(&self, mut secret: Secret, state: &CertState) -> Secret {
        let (data, owned) = state.encode();
        secret.data = Some(data);
        secret.string_data = None;
        let meta: &mut ObjectMeta = &mut secret.metadata;
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        for (key, value) in owned {
            match value {
                Some(value) => annotations.insert(key.to_owned(), value),
                None => annotations.remove(key),
            };
        }
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert("app.kubernetes.io/managed-by".into(), "shunt-webhook".into());
        secret
    }

    /// Publishes the bundle (PEM) in the webhook configuration and the APIService. Says
    /// whether every place that verifies our certificates trusts exactly the bundle, and
    /// whether this call wrote it there.
    async fn publish(&self, bundle: &str) -> Result<Published, CertError> {
        let webhooks = publish::webhook_config(&self.client, &self.settings.webhook_config_name, bundle).await?;
        let api_service = match &self.settings.api_service_name {
            Some(name) => publish::api_service(&self.client, name, bundle, &self.api_service_missing).await?,
            None => Published::Already,
        };
        Ok(webhooks.and(api_service))
    }

    fn issue(&self) -> Result<Issued, CertError> {
        let s = &self.settings;
        Ok(Issued::parse(issue(&s.dns_names, unix_now(), s.policy.validity)?)?)
    }

    fn secret_ref(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.secret_name)
    }

    fn secret_object(&self) -> Object<'_> {
        Object::Secret(&self.settings.namespace, &self.settings.secret_name)
    }
}
