//! What the schema cannot check: name and env globs, durations, CIDRs and `host:port`
//! strings, label-selector operators. [`check`] compiles a policy's rules for
//! enforcement or says, with a kstatus reason and message, why it is invalid.

use std::time::Duration;

use super::glob::Glob;
use super::PolicyRules;
use crate::session::TargetKind;

/// Why a policy cannot be enforced (`Ready=False` with this reason and message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// A CamelCase kstatus reason, e.g. `InvalidGlob`.
    pub reason: &'static str,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// A name glob: `<kind>/<glob>` or a glob on the name alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameGlob {
    /// The kind, if the glob named one.
    pub kind: Option<TargetKind>,
    /// The glob on the name.
    pub name: Glob,
}

/// A policy's rules, compiled.
#[derive(Clone, Debug, PartialEq)]
pub struct Compiled {
    /// The rules as written.
    pub rules: PolicyRules,
    /// `targetSelector.names`, compiled.
    pub names: Vec<NameGlob>,
    /// `maxSessionDuration`, parsed.
    pub max_duration: Option<Duration>,
    /// `env.exclude`, compiled.
    pub env_exclude: Vec<Glob>,
}

fn invalid(reason: &'static str, message: String) -> Invalid {
    Invalid { reason, message }
}

/// Parses `2h`, `90m`, `1h30m`, `45s`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let (mut total, mut digits, mut any) = (0u64, String::new(), false);
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
        any = true;
    }
    (any && digits.is_empty() && total > 0).then(|| Duration::from_secs(total))
}

fn kind_of(word: &str) -> Option<TargetKind> {
    format!("{word}/x")
        .parse::<crate::session::TargetRef>()
        .ok()
        .map(|t| t.kind)
}

/// Compiles `rules`, or says why they are invalid.
pub fn check(rules: &PolicyRules) -> Result<Compiled, Invalid> {
    let mut names = Vec::new();
    for text in &rules.target_selector.names {
        let (kind, glob) = match text.split_once('/') {
            Some((kind, glob)) => {
                let kind = kind_of(kind).ok_or_else(|| {
                    invalid(
                        "InvalidGlob",
                        format!(
                            "targetSelector.names {text:?}: unknown kind {kind:?}; use deployment, statefulset, \
                             replicaset, daemonset, rollout or service, e.g. deployment/payments-*"
                        ),
                    )
                })?;
                (Some(kind), glob)
            }
            None => (None, text.as_str()),
        };
        let name =
            Glob::new(glob).map_err(|e| invalid("InvalidGlob", format!("targetSelector.names {text:?}: {e}")))?;
        names.push(NameGlob { kind, name });
    }
    if let Some(selector) = &rules.target_selector.label_selector {
        for expr in selector.match_expressions.iter().flatten() {
            if !matches!(expr.operator.as_str(), "In" | "NotIn" | "Exists" | "DoesNotExist") {
                return Err(invalid(
                    "InvalidSelector",
                    format!(
                        "targetSelector.labelSelector: operator {:?} on {:?} is not In, NotIn, Exists or DoesNotExist",
                        expr.operator, expr.key
                    ),
                ));
            }
        }
    }
    let max_duration = match &rules.max_session_duration {
        Some(text) => Some(parse_duration(text).ok_or_else(|| {
            invalid(
                "InvalidDuration",
                format!("maxSessionDuration {text:?} is not a duration: write e.g. 2h, 90m or 1h30m"),
            )
        })?),
        None => None,
    };
    let env_exclude = rules
        .env
        .iter()
        .flat_map(|e| &e.exclude)
        .map(|g| Glob::new(g).map_err(|e| invalid("InvalidGlob", format!("env.exclude {g:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    for address in rules.outgoing.iter().flat_map(|o| o.allow.iter().chain(&o.block)) {
        if let Err(e) = super::outgoing::Rule::parse(address) {
            return Err(invalid("InvalidAddress", e.to_string()));
        }
    }
    if let Some(port) = rules.ports.iter().flatten().find(|p| !(1..=65535).contains(*p)) {
        return Err(invalid("InvalidPort", format!("ports: {port} is not in 1..65535")));
    }
    Ok(Compiled {
        rules: rules.clone(),
        names,
        max_duration,
        env_exclude,
    })
}
