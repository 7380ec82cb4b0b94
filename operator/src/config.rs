//! Configuration: every option is a flag and a `SHUNT_OPERATOR_*` variable
//! (`shunt-operator --help` lists them); bad configuration exits 64 (see `main`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// `shunt-operator`: the aggregated API `api.shunt.dev/v1` (sessions, targets, CLI
/// tunnels) and the hub every injected sidecar dials. One replica serves at a time: it
/// holds the Lease `--lease-name` in `--namespace`; standbys wait (not ready) and take
/// over when the leader stops renewing it.
#[derive(Clone, Debug, Parser)]
#[command(name = "shunt-operator", version, about, long_about = None)]
pub struct Args {
    /// Address of the aggregated API server (HTTPS; the APIService's Service points here).
    #[arg(long, env = "SHUNT_OPERATOR_API_LISTEN", default_value = "0.0.0.0:8443")]
    pub api_listen: SocketAddr,
    /// PEM certificate (chain) of the API server; its CA is the APIService's caBundle.
    /// Without --api-tls-cert/--api-tls-key a self-signed pair is generated (only for
    /// tests: the APIService then needs insecureSkipTLSVerify).
    #[arg(long, env = "SHUNT_OPERATOR_API_TLS_CERT", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// PEM private key of the API server.
    #[arg(long, env = "SHUNT_OPERATOR_API_TLS_KEY", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Address of the sidecar hub (TLS, HTTP/2).
    #[arg(long, env = "SHUNT_OPERATOR_HUB_LISTEN", default_value = "0.0.0.0:15443")]
    pub hub_listen: SocketAddr,
    /// PEM certificate of the hub; sidecars verify it. Without --hub-tls-cert/--hub-tls-key
    /// a self-signed pair for --server-name is generated (tests only).
    #[arg(long, env = "SHUNT_OPERATOR_HUB_TLS_CERT", requires = "hub_tls_key")]
    pub hub_tls_cert: Option<PathBuf>,
    /// PEM private key of the hub.
    #[arg(long, env = "SHUNT_OPERATOR_HUB_TLS_KEY", requires = "hub_tls_cert")]
    pub hub_tls_key: Option<PathBuf>,
    /// Serve the API server and the hub with tls.crt/tls.key of this kubernetes.io/tls
    /// Secret in --namespace, read through the Kubernetes API (get, list, watch on it) and
    /// swapped without a restart when it changes. In the default install the webhook
    /// (--cert-mode self) manages it (shunt-tls) for the names shunt-api.<ns>.svc and
    /// shunt-operator.<ns>.svc; with cert-manager or a supplied Secret, they must be in it.
    /// Not ready until the Secret holds a usable pair. Instead of --api-tls-*/--hub-tls-*.
    #[arg(
        long,
        env = "SHUNT_OPERATOR_TLS_SECRET",
        value_parser = kube_name,
        conflicts_with_all = ["api_tls_cert", "api_tls_key", "hub_tls_cert", "hub_tls_key"]
    )]
    pub tls_secret: Option<String>,
    /// DNS name in generated certificates (what sidecars and the APIService dial).
    #[arg(long, env = "SHUNT_OPERATOR_SERVER_NAME", default_value = "shunt-operator")]
    pub server_name: String,
    /// Address of the admin HTTP server: /healthz, /readyz (ready = leader and serving), /metrics.
    #[arg(long, env = "SHUNT_OPERATOR_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Namespace of the operator (holds the Lease).
    #[arg(long, env = "SHUNT_OPERATOR_NAMESPACE", default_value = "shunt-system")]
    pub namespace: String,
    /// Name of the coordination.k8s.io/v1 Lease for leader election.
    #[arg(long, env = "SHUNT_OPERATOR_LEASE_NAME", default_value = "shunt-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the pod name from HOSTNAME).
    #[arg(long, env = "SHUNT_OPERATOR_IDENTITY")]
    pub identity: Option<String>,
    /// How long a session survives while its CLI tunnel is disconnected (reconnects within
    /// it keep the session): e.g. 10s, 1500ms, 2m.
    #[arg(long, env = "SHUNT_OPERATOR_SESSION_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub session_grace: Duration,
    /// How long open connections may drain on SIGTERM.
    #[arg(long, env = "SHUNT_OPERATOR_DRAIN", default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Log filter (tracing EnvFilter syntax), e.g. info or shunt_operator=debug.
    #[arg(long, env = "SHUNT_OPERATOR_LOG", default_value = "info")]
    pub log: String,
}

/// A Kubernetes object name (DNS-1123 subdomain).
pub fn kube_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 253
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a Kubernetes name (lowercase letters, digits, '-' and '.')"
        ))
    }
}

/// `10s`, `1500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 10s, 1500ms, 2m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("unknown unit {unit:?} in {text:?}: use ms, s, m or h")),
    }
}

impl Args {
    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("shunt-operator-{}", std::process::id()))
    }
}

/// A PEM certificate and key, read from files or generated self-signed.
pub fn tls_pair(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    name: &str,
    what: &str,
) -> anyhow::Result<(String, String)> {
    use anyhow::Context as _;
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read the {what} TLS file {}", p.display()))
            };
            Ok((read(cert)?, read(key)?))
        }
        _ => {
            tracing::warn!(%name, "no {what} certificate given: using a generated self-signed one (tests only)");
            let names = vec![name.to_owned(), "localhost".to_owned()];
            let cert =
                rcgen::generate_simple_self_signed(names).context("cannot generate a self-signed certificate")?;
            Ok((cert.cert.pem(), cert.signing_key.serialize_pem()))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn flags_have_defaults_and_durations_parse() {
        let args = Args::try_parse_from(["shunt-operator", "--session-grace", "1500ms"]).unwrap();
        assert_eq!(args.session_grace, Duration::from_millis(1500));
        assert_eq!(args.api_listen.port(), 8443);
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("ten").is_err() && parse_duration("5d").is_err());
        assert!(
            Args::try_parse_from(["shunt-operator", "--api-tls-cert", "/x"]).is_err(),
            "key required with cert"
        );
        let (cert, key) = tls_pair(None, None, "shunt-operator", "API").unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
    }

    #[test]
    fn the_tls_secret_is_a_name_and_excludes_the_certificate_files() {
        let args = Args::try_parse_from(["shunt-operator", "--tls-secret", "shunt-tls"]).unwrap();
        assert_eq!(args.tls_secret.as_deref(), Some("shunt-tls"));
        assert_eq!(Args::try_parse_from(["shunt-operator"]).unwrap().tls_secret, None);
        let err = Args::try_parse_from(["shunt-operator", "--tls-secret", "Shunt_TLS"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Kubernetes name"), "{err}");
        for flag in ["--api-tls-cert", "--hub-tls-cert"] {
            let key = flag.replace("cert", "key");
            let err = Args::try_parse_from(["shunt-operator", "--tls-secret", "shunt-tls", flag, "/c", &key, "/k"])
                .unwrap_err()
                .to_string();
            assert!(err.contains("cannot be used with"), "{flag}: {err}");
        }
    }
}
