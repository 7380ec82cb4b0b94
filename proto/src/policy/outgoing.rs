//! `spec.outgoing` and `block: [outgoing]`, decided for one destination of `shunt exec`'s
//! outbound tunnel (a `CONNECT host:port` dialled from a pod of the target).
//!
//! A rule is a CIDR (`10.0.0.0/8`, `fd00::/8`, a bare IP) or `host:port` where the host is
//! a glob on names (`db.shop`, `*.internal`, `*`) or an IP, and the port a number or `*`.
//! A destination is described by every name it goes by and every address it resolves
//! to ([`Destination`]): a Service named `reviews` from namespace `shop` is also
//! `reviews.shop`, `reviews.shop.svc` and `reviews.shop.svc.cluster.local`, so a rule
//! written with any of these forms governs the others too. CIDR rules look at the
//! addresses only (a name that was not resolved matches no CIDR).
//!
//! Per policy: `block: [outgoing]` refuses everything; a `block` rule that matches
//! refuses (it wins over `allow`); a non-empty `allow` list refuses what no rule of it
//! matches. [`decide`] returns the first refusing rule, written as the user wrote it.

use std::net::IpAddr;

use super::glob::Glob;
use super::{Block, PolicyRules};

/// One parsed rule of `outgoing.allow` or `outgoing.block`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A network: addresses whose first `prefix` bits equal `network`'s.
    Cidr {
        /// The network address.
        network: IpAddr,
        /// The prefix length (32 or 128 for a bare IP).
        prefix: u8,
    },
    /// `host:port`: the host a glob on names, or an IP; the port `None` for `*`.
    HostPort {
        /// The host part, lowercased.
        host: HostPattern,
        /// The port, `None` meaning every port.
        port: Option<u16>,
    },
}

/// The host part of a `host:port` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// An IP address: matches a destination that resolves to it.
    Ip(IpAddr),
    /// A glob on the destination's names (`*` alone matches every destination).
    Name(Glob),
}

/// Why a rule does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outgoing {0:?} is neither a CIDR (10.0.0.0/8) nor host:port (db.shop:5432, *:443)")]
pub struct RuleError(pub String);

impl Rule {
    /// Parses one rule.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let bad = || RuleError(text.to_owned());
        if let Some((ip, prefix)) = text.split_once('/') {
            let network: IpAddr = ip.parse().map_err(|_| bad())?;
            let max = if network.is_ipv4() { 32 } else { 128 };
            let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?;
            return Ok(Rule::Cidr { network, prefix });
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(Rule::Cidr { network: ip, prefix });
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
        };
        // `[fd00::1]:443`: brackets around an IPv6 host.
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() {
            return Err(bad());
        }
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => HostPattern::Ip(ip),
            Err(_) => HostPattern::Name(Glob::new(&host.to_ascii_lowercase()).map_err(|_| bad())?),
        };
        Ok(Rule::HostPort { host, port })
    }

    /// Whether this rule matches `dest`.
    pub fn matches(&self, dest: &Destination) -> bool {
        match self {
            Rule::Cidr { network, prefix } => dest.addresses.iter().any(|a| in_network(*a, *network, *prefix)),
            Rule::HostPort { host, port } => {
                if port.is_some_and(|p| p != dest.port) {
                    return false;
                }
                match host {
                    HostPattern::Ip(ip) => dest.addresses.contains(ip),
                    HostPattern::Name(glob) => glob.to_string() == "*" || dest.names.iter().any(|n| glob.matches(n)),
                }
            }
        }
    }
}

fn in_network(addr: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let bits = |a: IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    // An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is its IPv4 address.
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    let ((a, width), (n, n_width)) = (bits(addr), bits(network));
    if width != n_width {
        return false;
    }
    let prefix = u32::from(prefix).min(width);
    if prefix == 0 {
        return true;
    }
    let shift = width - prefix;
    (a >> shift) == (n >> shift)
}

/// Where a connection goes, in every form a rule may name it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Destination {
    /// Lowercase names without a trailing dot (empty for a bare IP).
    pub names: Vec<String>,
    /// The addresses it resolves to (the IP itself for a bare IP).
    pub addresses: Vec<IpAddr>,
    /// The port.
    pub port: u16,
}

impl Destination {
    /// The destination `host:port` as asked from a pod in `namespace`: an IP stays an IP;
    /// a name also goes by its Kubernetes forms (`svc` → `svc.ns` → `svc.ns.svc` →
    /// `svc.ns.svc.cluster.local`, and `svc.ns` → …). `addresses` are what the name
    /// resolved to, if it was resolved.
    pub fn new(host: &str, port: u16, namespace: &str, addresses: Vec<IpAddr>) -> Destination {
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Destination {
                names: Vec::new(),
                addresses: vec![ip],
                port,
            };
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        let mut names = vec![name.clone()];
        let suffixes = ["svc", "svc.cluster.local"];
        match name.split('.').count() {
            1 => {
                names.push(format!("{name}.{namespace}"));
                names.extend(suffixes.iter().map(|s| format!("{name}.{namespace}.{s}")));
            }
            2 => names.extend(suffixes.iter().map(|s| format!("{name}.{s}"))),
            _ => {
                if let Some(short) = name.strip_suffix(".cluster.local") {
                    names.push(short.to_owned());
                    if let Some(shorter) = short.strip_suffix(".svc") {
                        names.push(shorter.to_owned());
                    }
                } else if let Some(short) = name.strip_suffix(".svc") {
                    names.push(short.to_owned());
                    names.push(format!("{name}.cluster.local"));
                }
            }
        }
        Destination { names, addresses, port }
    }
}

/// A refusal: the rule that refused, as written (`block: outgoing`, `outgoing.block:
/// 10.0.0.0/8`, `outgoing.allow`), and a sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The rule.
    pub rule: String,
    /// What it means for this destination.
    pub why: String,
}

/// Whether these rules need the destination's addresses (a CIDR or an IP host): then a
/// name must be resolved before it can be decided.
pub fn needs_addresses(rules: &PolicyRules) -> bool {
    rules
        .outgoing
        .iter()
        .flat_map(|o| o.allow.iter().chain(&o.block))
        .any(|text| match Rule::parse(text) {
            Ok(Rule::Cidr { .. })
            | Ok(Rule::HostPort {
                host: HostPattern::Ip(_),
                ..
            }) => true,
            Ok(Rule::HostPort { .. }) | Err(_) => false,
        })
}

/// The first rule of `rules` that refuses `dest` (see the module doc), or `None`.
/// Rules that do not parse were refused by [`super::check::check`] already; here they
/// match nothing.
pub fn decide(rules: &PolicyRules, dest: &Destination, shown: &str) -> Option<Refusal> {
    if rules.block.contains(&Block::Outgoing) {
        return Some(Refusal {
            rule: "block: outgoing".into(),
            why: format!("outgoing connections through the cluster are blocked (asked for {shown})"),
        });
    }
    let outgoing = rules.outgoing.as_ref()?;
    for text in &outgoing.block {
        if Rule::parse(text).is_ok_and(|r| r.matches(dest)) {
            return Some(Refusal {
                rule: format!("outgoing.block: {text}"),
                why: format!("{shown} is blocked"),
            });
        }
    }
    if !outgoing.allow.is_empty()
        && !outgoing
            .allow
            .iter()
            .any(|t| Rule::parse(t).is_ok_and(|r| r.matches(dest)))
    {
        return Some(Refusal {
            rule: "outgoing.allow".into(),
            why: format!("{shown} is not in the allowed list: {}", outgoing.allow.join(", ")),
        });
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::OutgoingRules;
    use super::*;

    fn rules(allow: &[&str], block: &[&str]) -> PolicyRules {
        PolicyRules {
            outgoing: Some(OutgoingRules {
                allow: allow.iter().map(|s| s.to_string()).collect(),
                block: block.iter().map(|s| s.to_string()).collect(),
            }),
            ..PolicyRules::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_bad_ones_are_named() {
        assert_eq!(
            Rule::parse("10.0.0.0/8").unwrap(),
            Rule::Cidr {
                network: ip("10.0.0.0"),
                prefix: 8
            }
        );
        assert!(matches!(
            Rule::parse("10.1.2.3").unwrap(),
            Rule::Cidr { prefix: 32, .. }
        ));
        assert!(matches!(
            Rule::parse("[fd00::1]:443").unwrap(),
            Rule::HostPort {
                host: HostPattern::Ip(_),
                port: Some(443)
            }
        ));
        assert!(matches!(
            Rule::parse("*:443").unwrap(),
            Rule::HostPort { port: Some(443), .. }
        ));
        assert!(matches!(
            Rule::parse("db.shop:*").unwrap(),
            Rule::HostPort { port: None, .. }
        ));
        for bad in ["10.0.0.0/33", "db.shop", ":443", "db:0", "db:x", "db[:1"] {
            let err = Rule::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad) && err.contains("CIDR"), "{err}");
        }
    }

    #[test]
    fn cidrs_match_addresses_v4_v6_and_mapped() {
        let net = Rule::parse("10.96.0.0/12").unwrap();
        let at = |a: &str| Destination::new(a, 80, "shop", vec![]);
        assert!(net.matches(&at("10.96.0.12")) && net.matches(&at("10.111.255.255")));
        assert!(!net.matches(&at("10.112.0.1")) && !net.matches(&at("192.168.0.1")));
        assert!(net.matches(&at("::ffff:10.96.0.1")));
        assert!(Rule::parse("fd00::/8").unwrap().matches(&at("fd12::1")));
        assert!(!Rule::parse("fd00::/8").unwrap().matches(&at("10.96.0.1")));
        assert!(Rule::parse("0.0.0.0/0").unwrap().matches(&at("1.2.3.4")));
        // A name matches a CIDR through what it resolved to, never by itself.
        let name = Destination::new("db", 5432, "shop", vec![ip("10.96.0.7")]);
        assert!(net.matches(&name));
        assert!(!net.matches(&Destination::new("db", 5432, "shop", vec![])));
    }

    #[test]
    fn service_names_match_in_every_form() {
        let short = Destination::new("reviews", 8080, "shop", vec![]);
        assert!(short.names.contains(&"reviews.shop.svc.cluster.local".to_owned()));
        let full = Destination::new("Reviews.Shop.svc.cluster.local.", 8080, "other", vec![]);
        assert!(full.names.contains(&"reviews.shop".to_owned()) && full.names.contains(&"reviews.shop.svc".to_owned()));
        for rule in ["reviews.shop:8080", "reviews.shop.svc.cluster.local:*", "*.shop:8080"] {
            let r = Rule::parse(rule).unwrap();
            assert!(r.matches(&short) && r.matches(&full), "{rule}");
        }
        assert!(!Rule::parse("reviews.shop:9090").unwrap().matches(&short));
        assert!(!Rule::parse("reviews.other:8080").unwrap().matches(&short));
        assert!(Rule::parse("*:8080")
            .unwrap()
            .matches(&Destination::new("10.0.0.1", 8080, "shop", vec![])));
        assert!(Rule::parse("10.0.0.1:8080").unwrap().matches(&Destination::new(
            "db",
            8080,
            "shop",
            vec![ip("10.0.0.1")]
        )));
    }

    #[test]
    fn block_wins_over_allow_and_allow_lists_what_passes() {
        let db = Destination::new("db", 5432, "shop", vec![ip("10.96.0.7")]);
        let web = Destination::new("web", 80, "shop", vec![ip("10.96.0.8")]);
        assert_eq!(decide(&PolicyRules::default(), &db, "db:5432"), None);
        let r = rules(&["10.96.0.0/12"], &["db.shop:5432"]);
        let refusal = decide(&r, &db, "db:5432").unwrap();
        assert_eq!(refusal.rule, "outgoing.block: db.shop:5432");
        assert!(refusal.why.contains("db:5432"), "{}", refusal.why);
        assert_eq!(decide(&r, &web, "web:80"), None);
        let only_web = rules(&["web.shop:80"], &[]);
        let refusal = decide(&only_web, &db, "db:5432").unwrap();
        assert_eq!(refusal.rule, "outgoing.allow");
        assert!(refusal.why.contains("web.shop:80"), "{}", refusal.why);
        assert!(needs_addresses(&r) && !needs_addresses(&only_web));
    }

    #[test]
    fn block_outgoing_refuses_everything() {
        let r = PolicyRules {
            block: vec![Block::Outgoing],
            ..rules(&["*:*"], &[])
        };
        let refusal = decide(&r, &Destination::new("localhost", 1, "shop", vec![]), "localhost:1").unwrap();
        assert_eq!(refusal.rule, "block: outgoing");
    }
}
