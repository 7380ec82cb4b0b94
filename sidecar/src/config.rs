//! Sidecar configuration: every `SHUNT_*` variable, parsed once at start.
//!
//! Bad configuration is reported with the variable's name and what it accepts; `main`
//! turns it into exit code 64 (EX_USAGE), so a misconfigured pod fails loudly at start
//! instead of routing wrongly later.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use shunt_proto::names::{DEFAULT_ADMIN_PORT, DEFAULT_PROXY_PORT};

/// How traffic for an app port reaches the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectMode {
    /// A redirect rule in the pod's own network namespace, only while routes exist.
    Nftables,
    /// The sidecar owns a port of its own that Services target, and passes bytes through
    /// to the app while dormant (no capabilities needed).
    PortTakeover,
}

/// The parsed configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Redirect mode (`SHUNT_REDIRECT`).
    pub redirect: RedirectMode,
    /// App ports the sidecar may route (`SHUNT_APP_PORTS`).
    pub app_ports: Vec<u16>,
    /// Port-takeover: listen port per app port (`SHUNT_LISTEN_PORT`, paired by position).
    pub listen_ports: BTreeMap<u16, u16>,
    /// Transparent proxy port of nftables mode (`SHUNT_PROXY_PORT`).
    pub proxy_port: u16,
    /// Admin HTTP port (`SHUNT_ADMIN_PORT`).
    pub admin_port: u16,
    /// Address the sidecar binds its listeners to (`SHUNT_POD_IP`, else all addresses).
    pub bind_ip: IpAddr,
    /// Address the app is reached at (`SHUNT_APP_HOST`).
    pub app_host: IpAddr,
    /// Routes file to watch (`SHUNT_ROUTES_FILE`).
    pub routes_file: Option<PathBuf>,
    /// Lifetime of a redirect set element; renewed every second (`SHUNT_LEASE_SECONDS`).
    pub lease: Duration,
    /// Grace time for open connections at shutdown (`SHUNT_DRAIN_SECONDS`).
    pub drain: Duration,
    /// The `nft` executable (`SHUNT_NFT`).
    pub nft: PathBuf,
    /// Log as JSON lines (`SHUNT_LOG_FORMAT=json`, default) or human text (`text`).
    pub log_json: bool,
    /// Proxy threads connections are served on (`SHUNT_WORKERS`).
    pub workers: usize,
    /// The operator's hub as the route source (`SHUNT_OPERATOR_ADDR` and friends).
    pub hub: Option<HubSettings>,
}

/// Where and how the sidecar reaches the operator's hub.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSettings {
    /// `host:port` of the hub (`SHUNT_OPERATOR_ADDR`).
    pub addr: String,
    /// PEM CA bundle that signs the hub's certificate (`SHUNT_OPERATOR_CA`).
    pub ca_file: Option<PathBuf>,
    /// The same bundle given inline (`SHUNT_OPERATOR_CA_PEM`, as the webhook injects it);
    /// used when `ca_file` is not set.
    pub ca_pem: Option<String>,
    /// The TLS name the hub's certificate must carry (`SHUNT_OPERATOR_SERVER_NAME`).
    pub server_name: String,
    /// The projected ServiceAccount token, re-read on every connection (`SHUNT_TOKEN_FILE`).
    pub token_file: PathBuf,
    /// The pod's namespace (`SHUNT_POD_NAMESPACE`).
    pub pod_namespace: String,
    /// The pod's name (`SHUNT_POD_NAME`).
    pub pod_name: String,
}

/// Default of `SHUNT_OPERATOR_SERVER_NAME`.
pub const DEFAULT_OPERATOR_SERVER_NAME: &str = "shunt-operator";
/// Default of `SHUNT_TOKEN_FILE` (where the webhook mounts the projected token).
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/shunt/token";

/// The help text, printed by `--help`: the variables, their defaults and meaning.
pub const HELP: &str = "\
shunt-sidecar: shunt's per-pod proxy. Dormant until a route exists; then it routes each
HTTP request of the app ports to the app or a developer, and fails open.

Configuration (environment variables):
  SHUNT_REDIRECT       nftables | port-takeover                 [default: nftables]
                       nftables: redirect app ports with a set in table `inet shunt`
                       whose elements time out (needs NET_ADMIN in the pod's netns);
                       port-takeover: listen on SHUNT_LISTEN_PORT, forward to the app.
  SHUNT_APP_PORTS      comma list of app ports the sidecar may route   (required)
  SHUNT_LISTEN_PORT    port-takeover only: comma list of listen ports, paired by
                       position with SHUNT_APP_PORTS                   (required there)
  SHUNT_PROXY_PORT     nftables mode: transparent proxy port           [default: 15080]
  SHUNT_ADMIN_PORT     /healthz, /readyz, /metrics                     [default: 15090]
  SHUNT_POD_IP         address to bind listeners to                    [default: all]
  SHUNT_APP_HOST       where the app listens      [default: SHUNT_POD_IP or 127.0.0.1]
  SHUNT_ROUTES_FILE    JSON routes file, reloaded when it changes      [default: none]
  SHUNT_OPERATOR_ADDR  host:port of the operator's hub: routes come from there
                       (TLS, HTTP/2); exclusive with SHUNT_ROUTES_FILE [default: none]
  SHUNT_OPERATOR_CA    PEM CA bundle file trusted for the hub's certificate
                       (this or SHUNT_OPERATOR_CA_PEM is required with
                       SHUNT_OPERATOR_ADDR, else the sidecar stays dormant)
  SHUNT_OPERATOR_CA_PEM  the same bundle inline (PEM text, as the webhook injects
                       it); SHUNT_OPERATOR_CA wins when both are set
  SHUNT_OPERATOR_SERVER_NAME  TLS name of the hub               [default: shunt-operator]
  SHUNT_TOKEN_FILE     projected token (audience shunt.dev/sidecar), re-read on
                       every connection        [default: /var/run/secrets/shunt/token]
  SHUNT_POD_NAMESPACE  this pod's namespace        (required with SHUNT_OPERATOR_ADDR)
  SHUNT_POD_NAME       this pod's name             (required with SHUNT_OPERATOR_ADDR)
  SHUNT_LEASE_SECONDS  lifetime of a redirect element, renewed each second [default: 3]
  SHUNT_DRAIN_SECONDS  grace time for open connections on SIGTERM      [default: 5]
  SHUNT_NFT            the nft executable                              [default: nft]
  SHUNT_WORKERS        proxy threads (a sidecar shares the pod's CPU)  [default: 2]
  SHUNT_LOG            tracing filter, e.g. info,shunt_sidecar=debug   [default: info]
  SHUNT_LOG_FORMAT     json | text                                     [default: json]

Routes file example:
  {\"routes\": [{\"id\": \"alice\", \"port\": 8080, \"mode\": \"steal\",
    \"filter\": \"x-user: alice\", \"upstream\": \"http://10.0.0.1:9000\"}]}
";

/// A configuration error: names the variable, the value and what is accepted.
#[derive(Debug, thiserror::Error)]
#[error("{var}={value:?}: {why}")]
pub struct ConfigError {
    var: &'static str,
    value: String,
    why: String,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let var = |name: &'static str| get(name).filter(|v| !v.trim().is_empty());
        let err = |var: &'static str, value: &str, why: &str| ConfigError {
            var,
            value: value.to_owned(),
            why: why.to_owned(),
        };
        let redirect = match var("SHUNT_REDIRECT").as_deref().map(str::trim) {
            None | Some("nftables") => RedirectMode::Nftables,
            Some("port-takeover") => RedirectMode::PortTakeover,
            Some(other) => return Err(err("SHUNT_REDIRECT", other, "expected nftables or port-takeover")),
        };
        let app_ports = match var("SHUNT_APP_PORTS") {
            Some(text) => port_list("SHUNT_APP_PORTS", &text)?,
            None => return Err(err("SHUNT_APP_PORTS", "", "required: e.g. SHUNT_APP_PORTS=8080,9090")),
        };
        let mut listen_ports = BTreeMap::new();
        if redirect == RedirectMode::PortTakeover {
            let text = var("SHUNT_LISTEN_PORT").unwrap_or_default();
            let listen = port_list("SHUNT_LISTEN_PORT", &text)?;
            if listen.len() != app_ports.len() {
                return Err(err(
                    "SHUNT_LISTEN_PORT",
                    &text,
                    "port-takeover needs one listen port per SHUNT_APP_PORTS entry, in the same order",
                ));
            }
            for (app, listen) in app_ports.iter().zip(listen) {
                if app_ports.contains(&listen) {
                    return Err(err("SHUNT_LISTEN_PORT", &text, "a listen port cannot be an app port"));
                }
                listen_ports.insert(*app, listen);
            }
        }
        let proxy_port = parse_or("SHUNT_PROXY_PORT", var("SHUNT_PROXY_PORT"), DEFAULT_PROXY_PORT)?;
        let admin_port = parse_or("SHUNT_ADMIN_PORT", var("SHUNT_ADMIN_PORT"), DEFAULT_ADMIN_PORT)?;
        if app_ports.contains(&proxy_port) || app_ports.contains(&admin_port) {
            return Err(err(
                "SHUNT_APP_PORTS",
                &format!("{app_ports:?}"),
                "must not contain SHUNT_PROXY_PORT or SHUNT_ADMIN_PORT",
            ));
        }
        let pod_ip: Option<IpAddr> = match var("SHUNT_POD_IP") {
            Some(text) => Some(parse("SHUNT_POD_IP", &text)?),
            None => None,
        };
        let unspecified = IpAddr::from([0, 0, 0, 0]);
        let default_app_host = match redirect {
            RedirectMode::PortTakeover => pod_ip.unwrap_or(IpAddr::from([127, 0, 0, 1])),
            RedirectMode::Nftables => IpAddr::from([127, 0, 0, 1]),
        };
        let app_host = parse_or("SHUNT_APP_HOST", var("SHUNT_APP_HOST"), default_app_host)?;
        let lease_secs: u64 = parse_or("SHUNT_LEASE_SECONDS", var("SHUNT_LEASE_SECONDS"), 3)?;
        if !(2..=60).contains(&lease_secs) {
            return Err(err(
                "SHUNT_LEASE_SECONDS",
                &lease_secs.to_string(),
                "must be 2..=60 (it is renewed every second)",
            ));
        }
        let drain_secs: u64 = parse_or("SHUNT_DRAIN_SECONDS", var("SHUNT_DRAIN_SECONDS"), 5)?;
        let workers: usize = parse_or("SHUNT_WORKERS", var("SHUNT_WORKERS"), 2)?;
        if !(1..=64).contains(&workers) {
            return Err(err("SHUNT_WORKERS", &workers.to_string(), "must be 1..=64"));
        }
        let log_json = match var("SHUNT_LOG_FORMAT").as_deref() {
            None | Some("json") => true,
            Some("text") => false,
            Some(other) => return Err(err("SHUNT_LOG_FORMAT", other, "expected json or text")),
        };
        let routes_file = var("SHUNT_ROUTES_FILE").map(PathBuf::from);
        let hub = match var("SHUNT_OPERATOR_ADDR") {
            None => None,
            Some(_) if routes_file.is_some() => {
                return Err(err(
                    "SHUNT_OPERATOR_ADDR",
                    &var("SHUNT_OPERATOR_ADDR").unwrap_or_default(),
                    "routes come from one source at a time: unset SHUNT_ROUTES_FILE or SHUNT_OPERATOR_ADDR",
                ))
            }
            Some(addr) => {
                let addr = addr.trim().to_owned();
                if addr
                    .rsplit_once(':')
                    .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
                {
                    return Err(err(
                        "SHUNT_OPERATOR_ADDR",
                        &addr,
                        "expected host:port, e.g. shunt-operator.shunt-system:15443",
                    ));
                }
                let required = |name: &'static str| {
                    var(name).map(|v| v.trim().to_owned()).ok_or_else(|| {
                        err(
                            name,
                            "",
                            "required with SHUNT_OPERATOR_ADDR (the webhook injects it from the pod's metadata)",
                        )
                    })
                };
                Some(HubSettings {
                    addr,
                    ca_file: var("SHUNT_OPERATOR_CA").map(PathBuf::from),
                    ca_pem: var("SHUNT_OPERATOR_CA_PEM"),
                    server_name: var("SHUNT_OPERATOR_SERVER_NAME")
                        .map_or_else(|| DEFAULT_OPERATOR_SERVER_NAME.to_owned(), |v| v.trim().to_owned()),
                    token_file: var("SHUNT_TOKEN_FILE")
                        .map_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE), PathBuf::from),
                    pod_namespace: required("SHUNT_POD_NAMESPACE")?,
                    pod_name: required("SHUNT_POD_NAME")?,
                })
            }
        };
        Ok(Config {
            redirect,
            app_ports,
            listen_ports,
            proxy_port,
            admin_port,
            bind_ip: pod_ip.unwrap_or(unspecified),
            app_host,
            routes_file,
            lease: Duration::from_secs(lease_secs),
            drain: Duration::from_secs(drain_secs),
            nft: var("SHUNT_NFT").map_or_else(|| PathBuf::from("nft"), PathBuf::from),
            log_json,
            workers,
            hub,
        })
    }
}

fn parse<T: std::str::FromStr>(var: &'static str, text: &str) -> Result<T, ConfigError> {
    text.trim().parse().map_err(|_| ConfigError {
        var,
        value: text.to_owned(),
        why: format!(
            "not a valid {}",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("value")
        ),
    })
}

fn parse_or<T: std::str::FromStr>(var: &'static str, text: Option<String>, default: T) -> Result<T, ConfigError> {
    text.map_or(Ok(default), |t| parse(var, &t))
}

fn port_list(var: &'static str, text: &str) -> Result<Vec<u16>, ConfigError> {
    let mut ports = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port: u16 = parse(var, item)?;
        if port == 0 || ports.contains(&port) {
            return Err(ConfigError {
                var,
                value: text.to_owned(),
                why: format!("port {port} is 0 or listed twice"),
            });
        }
        ports.push(port);
    }
    if ports.is_empty() {
        return Err(ConfigError {
            var,
            value: text.to_owned(),
            why: "expected a comma list of ports, e.g. 8080,9090".into(),
        });
    }
    Ok(ports)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_to_nftables_with_the_documented_ports() {
        let c = config(&[("SHUNT_APP_PORTS", "8080, 9090")]).unwrap();
        assert_eq!(c.redirect, RedirectMode::Nftables);
        assert_eq!(c.app_ports, vec![8080, 9090]);
        assert_eq!((c.proxy_port, c.admin_port), (15080, 15090));
        assert_eq!(c.lease, Duration::from_secs(3));
    }

    #[test]
    fn port_takeover_pairs_listen_ports_and_binds_the_pod_ip() {
        let c = config(&[
            ("SHUNT_REDIRECT", "port-takeover"),
            ("SHUNT_APP_PORTS", "8080"),
            ("SHUNT_LISTEN_PORT", "18080"),
            ("SHUNT_POD_IP", "127.0.0.7"),
        ])
        .unwrap();
        assert_eq!(c.listen_ports.get(&8080), Some(&18080));
        assert_eq!(c.app_host.to_string(), "127.0.0.7");
        assert_eq!(c.bind_ip.to_string(), "127.0.0.7");
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        let missing = config(&[]).unwrap_err().to_string();
        assert!(
            missing.contains("SHUNT_APP_PORTS") && missing.contains("required"),
            "{missing}"
        );
        let mode = config(&[("SHUNT_APP_PORTS", "1"), ("SHUNT_REDIRECT", "iptables")]).unwrap_err();
        assert!(mode.to_string().contains("nftables or port-takeover"));
        let port = config(&[("SHUNT_APP_PORTS", "80,x")]).unwrap_err();
        assert!(port.to_string().contains("SHUNT_APP_PORTS=\"x\""), "{port}");
        let unpaired = config(&[
            ("SHUNT_APP_PORTS", "1,2"),
            ("SHUNT_REDIRECT", "port-takeover"),
            ("SHUNT_LISTEN_PORT", "3"),
        ]);
        assert!(unpaired.unwrap_err().to_string().contains("one listen port per"));
        let clash = config(&[("SHUNT_APP_PORTS", "15080")]).unwrap_err();
        assert!(clash.to_string().contains("SHUNT_PROXY_PORT"));
    }

    #[test]
    fn the_hub_is_one_source_and_needs_the_pod() {
        let hub = [
            ("SHUNT_APP_PORTS", "8080"),
            ("SHUNT_OPERATOR_ADDR", "op:15443"),
            ("SHUNT_POD_NAMESPACE", "shop"),
            ("SHUNT_POD_NAME", "api-0"),
        ];
        let c = config(&hub).unwrap().hub.unwrap();
        assert_eq!(
            (c.server_name.as_str(), c.pod_name.as_str()),
            ("shunt-operator", "api-0")
        );
        assert_eq!(c.token_file, PathBuf::from(DEFAULT_TOKEN_FILE));
        let both = config(&[hub[0], hub[1], hub[2], hub[3], ("SHUNT_ROUTES_FILE", "/r.json")]).unwrap_err();
        assert!(both.to_string().contains("one source at a time"), "{both}");
        let no_pod = config(&hub[..3]).unwrap_err();
        assert!(no_pod.to_string().contains("SHUNT_POD_NAME"), "{no_pod}");
        let bad = config(&[hub[0], ("SHUNT_OPERATOR_ADDR", "op"), hub[2], hub[3]]).unwrap_err();
        assert!(bad.to_string().contains("host:port"), "{bad}");
    }
}
