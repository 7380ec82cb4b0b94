//! The cluster as the CLI sees it: a kube client from the kubeconfig (like kubectl), the
//! `api.shunt.dev/v1` resources as dynamic objects, who the caller is, and API errors
//! turned into messages a developer can act on.

use anyhow::Context as _;
use http::Request;
use kube::api::{ApiResource, DynamicObject};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{json, Value};
use shunt_proto::names::API_GROUP;

use crate::args::KubeArgs;

/// A connected client and the namespace commands default to.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
}

/// Loads the kubeconfig as kubectl would and connects.
pub async fn connect(args: &KubeArgs) -> anyhow::Result<Cluster> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None => Config::from_kubeconfig(&options).await,
    }
    .context("cannot load the kubeconfig: pass --kubeconfig or set KUBECONFIG, and check --context")?;
    // Errors should reach the developer now, not after minutes of retries.
    config.default_retry = false;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("cannot build a client from the kubeconfig")?;
    Ok(Cluster { client, namespace })
}

/// The `api.shunt.dev/v1` resource `plural` (kind `kind`).
pub fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: API_GROUP.into(),
        version: "v1".into(),
        api_version: format!("{API_GROUP}/v1"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

impl Cluster {
    /// Sessions of `namespace` (all namespaces if `None`).
    pub fn sessions(&self, namespace: Option<&str>) -> Api<DynamicObject> {
        let ar = resource("Session", "sessions");
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// The caller's user name, from a `SelfSubjectReview`.
    pub async fn whoami(&self) -> anyhow::Result<String> {
        let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
        let req = Request::post("/apis/authentication.k8s.io/v1/selfsubjectreviews")
            .header("content-type", "application/json")
            .body(review.to_string().into_bytes())?;
        let answer: Value = self
            .client
            .request(req)
            .await
            .map_err(explain)
            .context("cannot find out who you are (SelfSubjectReview)")?;
        answer["status"]["userInfo"]["username"]
            .as_str()
            .map(str::to_owned)
            .context("the SelfSubjectReview named no user: use --header 'x-shunt-user: <you>' instead of auto")
    }

    /// GETs a path as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, kube::Error> {
        self.client
            .request(Request::get(path).body(Vec::new()).map_err(kube::Error::HttpError)?)
            .await
    }
}

/// An API error as one clear sentence (the server's message says what and why).
pub fn explain(err: kube::Error) -> anyhow::Error {
    match err {
        kube::Error::Api(status) => {
            let hint = match status.code {
                401 => " (your credentials were refused: renew them in the kubeconfig)",
                503 => " (is the shunt operator running? try `shunt doctor`)",
                404 if status
                    .message
                    .contains("the server could not find the requested resource") =>
                {
                    " (is shunt installed in this cluster? try `shunt doctor`)"
                }
                _ => "",
            };
            anyhow::anyhow!("{} ({} {}){hint}", status.message, status.code, status.reason)
        }
        other => anyhow::Error::new(other).context("the Kubernetes API could not be reached"),
    }
}

/// `5s`, `3m`, `2h`, `4d` since an RFC 3339 timestamp.
pub fn age(created: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    let Some(t) = created else { return "<unknown>".into() };
    let secs = k8s_openapi::jiff::Timestamp::now().duration_since(t.0).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
