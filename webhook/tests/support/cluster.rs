//! The webhook's Kubernetes API tests run against kubesim, the project's test cluster,
//! started in-process (loopback mode, no root). This module starts it with the webhook's
//! namespace and MutatingWebhookConfiguration, makes clients (optionally with a
//! [`Recorder`] in their tower stack, to count requests and widen races) and reads back
//! what a user would see with kubectl.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kubesim::{Cluster, Options};
use serde_json::{json, Value};

/// The webhook's namespace in these tests.
pub const NS: &str = "shunt-system";
/// The name of both the MutatingWebhookConfiguration and the webhook's Service.
pub const CONFIG: &str = "shunt-webhook";
/// The certificate Secret.
pub const SECRET: &str = "shunt-webhook-tls";
/// The operator's APIService, whose caBundle the webhook keeps with `--api-service-name`.
pub const API_SERVICE: &str = "v1.api.shunt.dev";

/// A running kubesim with an admin client.
pub struct TestCluster {
    /// The cluster (stops when dropped).
    pub cluster: Cluster,
    /// An admin client (`system:masters`).
    pub admin: kube::Client,
}

impl TestCluster {
    /// Starts kubesim with `options` and creates namespace `shunt-system`.
    pub async fn start_with(options: Options) -> TestCluster {
        // Only ring is compiled in, but be explicit: several tests share the process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cluster = Cluster::start(options).await.unwrap();
        let admin = client_for(&cluster, None).await;
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NS}})).unwrap();
        namespaces.create(&PostParams::default(), &ns).await.unwrap();
        TestCluster { cluster, admin }
    }

    /// Starts kubesim and creates the webhook's namespace and configuration (two
    /// webhooks, no caBundle, as the Helm chart installs it).
    pub async fn start() -> TestCluster {
        let test = TestCluster::start_with(Options::default()).await;
        test.create_webhook_configuration(super::webhook_configuration()).await;
        test
    }

    /// Creates a MutatingWebhookConfiguration.
    pub async fn create_webhook_configuration(&self, config: Value) {
        let config: MutatingWebhookConfiguration = serde_json::from_value(config).unwrap();
        self.configs().create(&PostParams::default(), &config).await.unwrap();
    }

    /// An admin client whose requests go through `recorder`.
    pub async fn recorded_client(&self, recorder: &Recorder) -> kube::Client {
        client_for(&self.cluster, Some(recorder)).await
    }

    /// A client for `user` (no groups: RBAC grants it nothing unless a test binds it).
    pub async fn client_as(&self, user: &str) -> kube::Client {
        let kubeconfig: Kubeconfig = serde_json::from_value(self.cluster.kubeconfig(user, &[]).unwrap()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// Secrets of the webhook's namespace.
    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), NS)
    }

    /// MutatingWebhookConfigurations.
    pub fn configs(&self) -> Api<MutatingWebhookConfiguration> {
        Api::all(self.admin.clone())
    }

    /// APIServices.
    pub fn api_services(&self) -> Api<APIService> {
        Api::all(self.admin.clone())
    }

    /// Creates APIService [`API_SERVICE`] as the operator's chart does: no caBundle.
    pub async fn create_api_service(&self) {
        let service: APIService = serde_json::from_value(json!({
            "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": API_SERVICE},
            "spec": {"group": "api.shunt.dev", "version": "v1", "groupPriorityMinimum": 1000,
                "versionPriority": 15, "service": {"namespace": NS, "name": "shunt-api", "port": 443}},
        }))
        .unwrap();
        self.api_services()
            .create(&PostParams::default(), &service)
            .await
            .unwrap();
    }

    /// The decoded `spec.caBundle` of APIService [`API_SERVICE`] (empty if unset or absent).
    pub async fn api_service_bundle(&self) -> Vec<u8> {
        let service = self.api_services().get_opt(API_SERVICE).await.unwrap();
        service
            .and_then(|s| s.spec)
            .and_then(|s| s.ca_bundle)
            .map(|b| b.0)
            .unwrap_or_default()
    }

    /// The certificate Secret as JSON (`data` base64 as stored), if it exists.
    pub async fn secret(&self) -> Option<Value> {
        let secret = self.secrets().get_opt(SECRET).await.unwrap()?;
        Some(serde_json::to_value(secret).unwrap())
    }

    /// The MutatingWebhookConfiguration as JSON.
    pub async fn config(&self) -> Value {
        serde_json::to_value(self.configs().get(CONFIG).await.unwrap()).unwrap()
    }

    /// The decoded `caBundle` of every webhook of the configuration (empty if unset).
    pub async fn ca_bundles(&self) -> Vec<Vec<u8>> {
        let config = self.config().await;
        config["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| decode(w["clientConfig"]["caBundle"].as_str().unwrap_or_default()))
            .collect()
    }
}

/// Base64 decoding of API data.
pub fn decode(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

/// A decoded `data` entry of a Secret in JSON form.
pub fn data(secret: &Value, key: &str) -> Vec<u8> {
    decode(secret["data"][key].as_str().unwrap_or_default())
}

async fn client_for(cluster: &Cluster, recorder: Option<&Recorder>) -> kube::Client {
    let kubeconfig: Kubeconfig = serde_json::from_value(cluster.admin_kubeconfig().unwrap()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let builder = kube::client::ClientBuilder::try_from(config).unwrap();
    match recorder {
        Some(recorder) => builder.with_layer(recorder).build(),
        None => builder.build(),
    }
}

/// One request seen by a [`Recorder`]: method, path, response status.
pub type Seen = (Method, String, StatusCode);

/// A tower layer for a kube client that records every request and its response status,
/// and can hold responses to reads of one path so that concurrent callers all act on
/// the same (stale) answer: the race the API's optimistic concurrency must resolve.
#[derive(Clone, Default)]
pub struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
    hold_reads: Arc<Mutex<Option<(String, Duration)>>>,
    gather: Arc<Mutex<Option<Gather>>>,
}

/// The next `left` reads of `path` are handed out together, when all have been answered.
struct Gather {
    path: String,
    left: usize,
    barrier: Arc<tokio::sync::Barrier>,
}

impl Recorder {
    /// Delays the response of every GET of `path` by `delay`.
    pub fn hold_reads(&self, path: &str, delay: Duration) {
        *self.hold_reads.lock().unwrap() = Some((path.to_owned(), delay));
    }

    /// Hands the responses to the next `n` GETs of `path` to their callers only once all
    /// `n` have been answered (at most 10 s), so that `n` concurrent callers surely act on
    /// the same version; later GETs pass.
    pub fn gather_reads(&self, path: &str, n: usize) {
        *self.gather.lock().unwrap() = Some(Gather {
            path: path.to_owned(),
            left: n,
            barrier: Arc::new(tokio::sync::Barrier::new(n)),
        });
    }

    /// How many requests `method path…` got `status` (any status if `None`).
    pub fn count(&self, method: &Method, path_prefix: &str, status: Option<StatusCode>) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p, s)| m == method && p.starts_with(path_prefix) && status.is_none_or(|want| want == *s))
            .count()
    }
}

impl<S> tower::Layer<S> for Recorder {
    type Service = Recorded<S>;

    fn layer(&self, inner: S) -> Recorded<S> {
        Recorded {
            inner,
            recorder: self.clone(),
        }
    }
}

/// The service of [`Recorder`].
pub struct Recorded<S> {
    inner: S,
    recorder: Recorder,
}

impl<S, B> tower::Service<Request<kube::client::Body>> for Recorded<S>
where
    S: tower::Service<Request<kube::client::Body>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<kube::client::Body>) -> Self::Future {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let hold = self
            .recorder
            .hold_reads
            .lock()
            .unwrap()
            .clone()
            .filter(|(p, _)| method == Method::GET && *p == path)
            .map(|(_, delay)| delay);
        let barrier = match self.recorder.gather.lock().unwrap().as_mut() {
            Some(gather) if gather.left > 0 && method == Method::GET && gather.path == path => {
                gather.left -= 1;
                Some(gather.barrier.clone())
            }
            _ => None,
        };
        let seen = self.recorder.seen.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            seen.lock().unwrap().push((method, path, response.status()));
            if let Some(delay) = hold {
                tokio::time::sleep(delay).await;
            }
            if let Some(barrier) = barrier {
                let _ = tokio::time::timeout(Duration::from_secs(10), barrier.wait()).await;
            }
            Ok(response)
        })
    }
}
