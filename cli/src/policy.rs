//! `shunt policy explain <target>`: asks the operator (a namespaced `policyreviews` create, like
//! `kubectl auth can-i`) whether a session would be allowed, and which policy and rule
//! decide.

use anyhow::Context as _;
use clap::{Args, Subcommand};
use http::Request;
use serde_json::{json, Value};
use shunt_proto::{Filter, Mode, TargetRef};

use crate::cluster::{explain, Cluster};

/// `shunt policy ...`.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// The `policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Would this session be allowed? Prints the decision, the policy and the rule.
    #[command(after_help = EXPLAIN_EXAMPLES)]
    Explain(ExplainArgs),
}

const EXPLAIN_EXAMPLES: &str = "Examples:
  shunt policy explain deployment/payments-api --mode steal --header 'x-shunt-user: bob' -n shop
  shunt policy explain deploy/api --as alice --mode mirror --port 8080
Exit status: 0 allowed, 1 denied.";

/// `shunt policy explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The target, `<kind>/<name>` (e.g. deployment/api).
    pub target: TargetRef,
    /// Whose session (default: you).
    #[arg(long = "as", value_name = "USER")]
    pub user: Option<String>,
    /// Their groups.
    #[arg(long = "as-group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// `steal` or `mirror`.
    #[arg(long, default_value = "steal", value_parser = parse_mode)]
    pub mode: Mode,
    /// The filter (`name: value`, …); none means every request.
    #[arg(long)]
    pub header: Option<String>,
    /// Target ports (repeat the flag); none means ports are not checked.
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// Print the PolicyReview as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_mode(text: &str) -> Result<Mode, String> {
    serde_json::from_value(json!(text)).map_err(|_| format!("unknown mode {text:?}: use steal or mirror"))
}

/// Runs `shunt policy`: prints the decision; a denial is also an error (exit status 1).
pub async fn run(cluster: &Cluster, args: &PolicyArgs) -> anyhow::Result<()> {
    let PolicyCommand::Explain(args) = &args.command;
    let filter = args
        .header
        .as_deref()
        .map(Filter::parse)
        .transpose()
        .with_context(|| format!("invalid --header {:?}", args.header.as_deref().unwrap_or_default()))?;
    let body = json!({
        "apiVersion": "api.shunt.dev/v1", "kind": "PolicyReview",
        "spec": {"user": args.user.clone().unwrap_or_default(), "groups": args.groups,
            "namespace": cluster.namespace, "target": args.target, "mode": args.mode,
            "ports": args.ports, "filter": filter.map(|f| f.to_string())},
    });
    let path = format!("/apis/api.shunt.dev/v1/namespaces/{}/policyreviews", cluster.namespace);
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(body.to_string().into_bytes())
        .context("cannot build the PolicyReview request")?;
    let review: Value = cluster.client.request(req).await.map_err(explain)?;
    let status = &review["status"];
    let allowed = status["allowed"] == true;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&review)?);
    } else {
        println!("{}", render(&review));
    }
    anyhow::ensure!(
        allowed,
        "the session would be denied by {} (rule {})",
        status["policy"].as_str().unwrap_or("a policy"),
        status["rule"].as_str().unwrap_or("-")
    );
    Ok(())
}

/// The decision as a few lines for people.
pub fn render(review: &Value) -> String {
    let (spec, status) = (&review["spec"], &review["status"]);
    let who = spec["user"].as_str().unwrap_or_default();
    let what = format!(
        "{} {} in {}",
        spec["mode"].as_str().unwrap_or_default(),
        spec["target"].as_str().unwrap_or_default(),
        spec["namespace"].as_str().unwrap_or_default()
    );
    let mut out = if status["allowed"] == true {
        format!("allowed: {who} may {what}")
    } else {
        format!(
            "denied: {who} may not {what}\n  policy: {}\n  rule:   {}",
            status["policy"].as_str().unwrap_or("-"),
            status["rule"].as_str().unwrap_or("-")
        )
    };
    out.push_str(&format!("\n  {}", status["message"].as_str().unwrap_or_default()));
    let matched: Vec<&str> = status["matched"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !matched.is_empty() {
        out.push_str(&format!("\n  policies on this target: {}", matched.join(", ")));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn denials_name_the_policy_and_the_rule() {
        let review = json!({"spec": {"user": "alice", "mode": "steal", "target": "deployment/api", "namespace": "shop"},
            "status": {"allowed": false, "policy": "ShuntPolicy shop/guard", "rule": "identityHeader",
                "message": "denied by ...", "matched": ["ShuntPolicy shop/guard"]}});
        let text = render(&review);
        assert!(
            text.starts_with("denied: alice may not steal deployment/api in shop"),
            "{text}"
        );
        assert!(
            text.contains("policy: ShuntPolicy shop/guard") && text.contains("rule:   identityHeader"),
            "{text}"
        );
    }
}
