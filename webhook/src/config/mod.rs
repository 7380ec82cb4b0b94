//! The command line: every option is a flag and a `SHUNT_WEBHOOK_*` variable (clap derive),
//! checked once at start into [`Settings`]. A bad value is a [`ConfigError`] naming the
//! flag; the binary exits with 64 (EX_USAGE) on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use shunt_proto::names::{DEFAULT_ADMIN_PORT, DEFAULT_PROXY_PORT};

use crate::certs::files::CertFiles;
use crate::certs::self_managed::SelfSettings;
use crate::certs::state::Policy;
use crate::inject::{InjectConfig, RedirectMode, SidecarMode, SidecarResources};

mod values;

pub use values::parse_duration;
use values::{name, nonzero, quantity, san, seconds};

/// Where the serving certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CertMode {
    /// Make a CA and certificate, keep them in a Secret, publish the caBundle, rotate.
    #[value(name = "self")]
    SelfManaged,
    /// Serve --cert-file/--key-file (e.g. from cert-manager), reloaded on change; no API access.
    Files,
}

/// shunt-webhook: injects shunt's sidecar into pods of namespaces labelled
/// shunt.dev/injection=enabled, and manages its own TLS certificate.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, max_term_width = 110)]
pub struct Args {
    /// Address of the HTTPS server (POST /mutate-pods, /healthz, /readyz, /metrics).
    #[arg(long, env = "SHUNT_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Where the serving certificate comes from [default: files when --cert-file or
    /// --key-file is given, else self].
    #[arg(long, env = "SHUNT_WEBHOOK_CERT_MODE", value_enum)]
    pub cert_mode: Option<CertMode>,
    /// Mode files: PEM certificate chain, leaf first (implies --cert-mode files).
    #[arg(long, env = "SHUNT_WEBHOOK_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Mode files: PEM private key (implies --cert-mode files).
    #[arg(long, env = "SHUNT_WEBHOOK_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Mode files: how often the files are checked for changes.
    #[arg(long, env = "SHUNT_WEBHOOK_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// The webhook's own namespace (never injected; holds the Secret in mode self).
    #[arg(long, env = "SHUNT_WEBHOOK_NAMESPACE", default_value = "shunt-system")]
    pub namespace: String,
    /// Name of the webhook's Service; the certificate covers <name>, <name>.<ns>, <name>.<ns>.svc
    /// and <name>.<ns>.svc.cluster.local.
    #[arg(long, env = "SHUNT_WEBHOOK_SERVICE_NAME", default_value = "shunt-webhook")]
    pub service_name: String,
    /// Mode self: more DNS names or IP addresses for the certificate (comma list), e.g. the
    /// operator's Services when it serves the same Secret (--tls-secret):
    /// shunt-api.<ns>.svc,shunt-operator.<ns>.svc,… A Secret whose certificate lacks one is
    /// rotated.
    #[arg(long, env = "SHUNT_WEBHOOK_DNS_NAMES", value_delimiter = ',')]
    pub dns_names: Vec<String>,
    /// Mode self: Secret holding the CA and certificate (created if absent).
    #[arg(long, env = "SHUNT_WEBHOOK_SECRET_NAME", default_value = "shunt-webhook-tls")]
    pub secret_name: String,
    /// Mode self: MutatingWebhookConfiguration whose caBundle is kept correct.
    #[arg(long, env = "SHUNT_WEBHOOK_WEBHOOK_CONFIG_NAME", default_value = "shunt-webhook")]
    pub webhook_config_name: String,
    /// Mode self: an apiregistration.k8s.io/v1 APIService (e.g. v1.api.shunt.dev) whose
    /// caBundle is kept equal to the CA bundle too, for an operator that serves the same
    /// Secret. While it does not exist, this is logged and retried.
    #[arg(long, env = "SHUNT_WEBHOOK_API_SERVICE_NAME")]
    pub api_service_name: Option<String>,
    /// Mode self: lifetime of each new certificate and its CA (units: d, h, m, s).
    #[arg(long, env = "SHUNT_WEBHOOK_CERT_VALIDITY", default_value = "365d", value_parser = parse_duration)]
    pub cert_validity: Duration,
    /// Mode self: start renewing this long before the certificate expires.
    #[arg(long, env = "SHUNT_WEBHOOK_RENEW_BEFORE", default_value = "30d", value_parser = parse_duration)]
    pub renew_before: Duration,
    /// Mode self: how long the old and new CA are both in caBundle before each switch.
    #[arg(long, env = "SHUNT_WEBHOOK_ROTATION_OVERLAP", default_value = "10m", value_parser = parse_duration)]
    pub rotation_overlap: Duration,
    /// Mode self: re-check the Secret and caBundle at least this often.
    #[arg(long, env = "SHUNT_WEBHOOK_RESYNC_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Sidecar image.
    #[arg(long, env = "SHUNT_WEBHOOK_SIDECAR_IMAGE", default_value = concat!("shunt-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// Sidecar imagePullPolicy (Always, IfNotPresent, Never); the cluster default if unset.
    #[arg(long, env = "SHUNT_WEBHOOK_SIDECAR_IMAGE_PULL_POLICY")]
    pub sidecar_image_pull_policy: Option<String>,
    /// native: an init container with restartPolicy Always (Kubernetes >= 1.29); container: a
    /// regular container.
    #[arg(long, env = "SHUNT_WEBHOOK_SIDECAR_MODE", value_enum, default_value = "native")]
    pub sidecar_mode: SidecarMode,
    /// Redirect mode for pods without a shunt.dev/redirect annotation.
    #[arg(long, env = "SHUNT_WEBHOOK_REDIRECT", value_enum, default_value = "nftables")]
    pub redirect: RedirectMode,
    /// The operator hub's host:port, given to sidecars [default: shunt-operator.<namespace>.svc:15443].
    #[arg(long, env = "SHUNT_WEBHOOK_OPERATOR_ADDR")]
    pub operator_addr: Option<String>,
    /// PEM file with the CA of the operator hub's certificate (public; no key): given to
    /// sidecars inline as SHUNT_OPERATOR_CA_PEM. Without it, mode self gives them the
    /// webhook's own CA bundle at the time the pod is created (the operator serves the same
    /// Secret with --tls-secret; pods created before a CA rotation need a restart to reach
    /// the operator after it); mode files gives none (sidecars stay dormant unless they get
    /// SHUNT_OPERATOR_CA otherwise).
    #[arg(long, env = "SHUNT_WEBHOOK_OPERATOR_CA_FILE")]
    pub operator_ca_file: Option<PathBuf>,
    /// TLS name the hub's certificate carries, given to sidecars as SHUNT_OPERATOR_SERVER_NAME
    /// [default: the sidecar's, shunt-operator].
    #[arg(long, env = "SHUNT_WEBHOOK_OPERATOR_SERVER_NAME")]
    pub operator_server_name: Option<String>,
    /// Lifetime of the sidecar's projected ServiceAccount token (at least 10m).
    #[arg(long, env = "SHUNT_WEBHOOK_TOKEN_EXPIRATION", default_value = "1h", value_parser = parse_duration)]
    pub token_expiration: Duration,
    /// The sidecar's transparent proxy port (nftables mode).
    #[arg(long, env = "SHUNT_WEBHOOK_PROXY_PORT", default_value_t = DEFAULT_PROXY_PORT)]
    pub proxy_port: u16,
    /// The sidecar's admin port (readiness probe GET /readyz, /metrics).
    #[arg(long, env = "SHUNT_WEBHOOK_ADMIN_PORT", default_value_t = DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,
    /// Port-takeover: the sidecar listens for app port number i on this port + i.
    #[arg(long, env = "SHUNT_WEBHOOK_LISTEN_PORT_BASE", default_value_t = 15100)]
    pub listen_port_base: u16,
    /// Sidecar CPU request ("" for none).
    #[arg(long, env = "SHUNT_WEBHOOK_SIDECAR_CPU_REQUEST", default_value = "10m")]
    pub sidecar_cpu_request: String,
    /// Sidecar memory request ("" for none).
    #[arg(long, env = "SHUNT_WEBHOOK_SIDECAR_MEMORY_REQUEST", default_value = "32Mi")]
    pub sidecar_memory_request: String,
    /// Sidecar CPU limit ("" for none).
    #[arg(long, env = "SHUNT_WEBHOOK_SIDECAR_CPU_LIMIT", default_value = "")]
    pub sidecar_cpu_limit: String,
    /// Sidecar memory limit ("" for none).
    #[arg(long, env = "SHUNT_WEBHOOK_SIDECAR_MEMORY_LIMIT", default_value = "128Mi")]
    pub sidecar_memory_limit: String,
    /// Largest AdmissionReview body accepted, in bytes (larger: HTTP 413).
    #[arg(long, env = "SHUNT_WEBHOOK_MAX_BODY_BYTES", default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// On SIGTERM, how long requests in flight may take to finish.
    #[arg(long, env = "SHUNT_WEBHOOK_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Log filter (tracing syntax), e.g. info,shunt_webhook=debug.
    #[arg(long, env = "SHUNT_WEBHOOK_LOG", default_value = "info")]
    pub log: String,
    /// Log format.
    #[arg(long, env = "SHUNT_WEBHOOK_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Where the certificate comes from, checked.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// Mode self.
    SelfManaged(SelfSettings),
    /// Mode files.
    Files {
        /// The files.
        files: CertFiles,
        /// Poll interval.
        interval: Duration,
    },
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// Certificate source.
    pub cert: CertSource,
    /// Injection rules' configuration.
    pub inject: InjectConfig,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Drain time on shutdown.
    pub drain: Duration,
}

/// A configuration error: names the flag and says what is accepted.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {why}")]
pub struct ConfigError {
    flag: &'static str,
    why: String,
}

pub(crate) fn bad(flag: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError { flag, why: why.into() }
}

impl Args {
    /// The certificate mode: the one given, else `files` when a certificate file is given
    /// (so that `--cert-file F --key-file F` alone serves the files), else `self`.
    fn cert_mode(&self) -> CertMode {
        match self.cert_mode {
            Some(mode) => mode,
            None if self.files_given() => CertMode::Files,
            None => CertMode::SelfManaged,
        }
    }

    fn files_given(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Checks the arguments and builds the settings.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let cert = match self.cert_mode() {
            CertMode::Files => {
                let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
                    return Err(bad(
                        "--cert-mode files",
                        "needs --cert-file and --key-file (the PEM certificate chain and its key, e.g.                          from a cert-manager Secret); give both",
                    ));
                };
                CertSource::Files {
                    files: CertFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    },
                    interval: nonzero("--reload-interval", self.reload_interval)?,
                }
            }
            CertMode::SelfManaged if self.files_given() => {
                return Err(bad(
                    "--cert-mode self",
                    "does not use --cert-file/--key-file (it makes its own certificate and keeps it in                      a Secret); leave out --cert-mode self to serve the files, or leave out the files",
                ));
            }
            CertMode::SelfManaged => CertSource::SelfManaged(self.self_settings()?),
        };
        name("--namespace", &self.namespace)?;
        let token = seconds(self.token_expiration);
        if !(600..=u32::MAX as i64).contains(&token) {
            return Err(bad("--token-expiration", "must be at least 10m (a Kubernetes limit)"));
        }
        if let Some(policy) = &self.sidecar_image_pull_policy {
            if !["Always", "IfNotPresent", "Never"].contains(&policy.as_str()) {
                return Err(bad(
                    "--sidecar-image-pull-policy",
                    "expected Always, IfNotPresent or Never",
                ));
            }
        }
        if self.sidecar_image.trim().is_empty() {
            return Err(bad("--sidecar-image", "must not be empty"));
        }
        let ports = [("--proxy-port", self.proxy_port), ("--admin-port", self.admin_port)];
        for (flag, port) in ports {
            if port == 0 {
                return Err(bad(flag, "must be a port (1-65535)"));
            }
            if (self.listen_port_base..self.listen_port_base.saturating_add(100)).contains(&port) {
                return Err(bad(flag, "must not be within 100 ports above --listen-port-base"));
            }
        }
        if self.proxy_port == self.admin_port || self.listen_port_base == 0 {
            return Err(bad(
                "--proxy-port/--admin-port/--listen-port-base",
                "must be distinct, non-zero ports",
            ));
        }
        let inject = InjectConfig {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            image: self.sidecar_image.clone(),
            image_pull_policy: self.sidecar_image_pull_policy.clone(),
            sidecar_mode: self.sidecar_mode,
            redirect: self.redirect,
            operator_addr: self
                .operator_addr
                .clone()
                .unwrap_or_else(|| format!("shunt-operator.{}.svc:15443", self.namespace)),
            operator_ca_pem: self.operator_ca_pem()?,
            operator_server_name: self
                .operator_server_name
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            token_expiration_seconds: token,
            proxy_port: self.proxy_port,
            admin_port: self.admin_port,
            listen_port_base: self.listen_port_base,
            resources: SidecarResources {
                cpu_request: quantity("--sidecar-cpu-request", &self.sidecar_cpu_request)?,
                memory_request: quantity("--sidecar-memory-request", &self.sidecar_memory_request)?,
                cpu_limit: quantity("--sidecar-cpu-limit", &self.sidecar_cpu_limit)?,
                memory_limit: quantity("--sidecar-memory-limit", &self.sidecar_memory_limit)?,
            },
            excluded_namespaces: ["kube-system", "kube-public", "kube-node-lease", self.namespace.as_str()]
                .map(str::to_owned)
                .to_vec(),
        };
        if self.max_body_bytes < 1024 {
            return Err(bad("--max-body-bytes", "must be at least 1024"));
        }
        Ok(Settings {
            listen: self.listen,
            cert,
            inject,
            max_body_bytes: self.max_body_bytes,
            drain: self.drain_timeout,
        })
    }

    /// The operator CA file's PEM, checked to hold at least one certificate and no key.
    fn operator_ca_pem(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.operator_ca_file else {
            return Ok(None);
        };
        let flag = "--operator-ca-file";
        let pem =
            std::fs::read_to_string(path).map_err(|e| bad(flag, format!("cannot read {}: {e}", path.display())))?;
        if pem.contains("PRIVATE KEY") {
            return Err(bad(
                flag,
                format!(
                    "{} holds a private key: give only the CA certificate (it is copied into every pod)",
                    path.display()
                ),
            ));
        }
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(bad(flag, format!("{} holds no PEM certificate", path.display())));
        }
        Ok(Some(pem))
    }

    fn self_settings(&self) -> Result<SelfSettings, ConfigError> {
        for (flag, value) in [
            ("--service-name", &self.service_name),
            ("--secret-name", &self.secret_name),
            ("--webhook-config-name", &self.webhook_config_name),
        ] {
            name(flag, value)?;
        }
        let api_service_name = self
            .api_service_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| name("--api-service-name", n).map(|()| n.to_owned()))
            .transpose()?;
        let policy = Policy {
            validity: seconds(nonzero("--cert-validity", self.cert_validity)?),
            renew_before: seconds(nonzero("--renew-before", self.renew_before)?),
            overlap: seconds(nonzero("--rotation-overlap", self.rotation_overlap)?),
        };
        if policy.renew_before >= policy.validity {
            return Err(bad("--renew-before", "must be shorter than --cert-validity"));
        }
        if 2 * policy.overlap > policy.renew_before {
            return Err(bad(
                "--rotation-overlap",
                "must be at most half of --renew-before (a rotation takes two overlaps)",
            ));
        }
        if policy.validity - policy.renew_before <= 2 * policy.overlap {
            return Err(bad(
                "--cert-validity",
                "minus --renew-before must be longer than two --rotation-overlap, or a new certificate \
                 would be due for renewal before its own rotation completes",
            ));
        }
        let (svc, ns) = (&self.service_name, &self.namespace);
        let mut dns_names = vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ];
        for extra in self.dns_names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            let extra = san("--dns-names", extra)?;
            if !dns_names.contains(&extra) {
                dns_names.push(extra);
            }
        }
        Ok(SelfSettings {
            namespace: self.namespace.clone(),
            secret_name: self.secret_name.clone(),
            webhook_config_name: self.webhook_config_name.clone(),
            api_service_name,
            dns_names,
            policy,
            resync: nonzero("--resync-interval", self.resync_interval)?,
        })
    }
}

#[cfg(test)]
mod tests;
