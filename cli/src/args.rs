//! The command line: global kubeconfig flags like kubectl's, and one subcommand per task.
//! Every subcommand's `--help` ends with examples.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// shunt: take your own requests off every replica of a shared workload and serve them
/// from your machine, while everyone else's traffic keeps reaching the pods.
#[derive(Debug, Parser)]
#[command(name = "shunt", version, after_help = EXAMPLES)]
pub struct Cli {
    /// Kubeconfig flags.
    #[command(flatten)]
    pub kube: KubeArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  shunt intercept deployment/api --port 8080:3000 --header auto -n shop
  shunt mirror deployment/api --port 8080 --header 'x-user: carol'
  shunt sessions -A
  shunt doctor -n shop
  shunt demo                # the whole system on a local test cluster
  source <(shunt completion bash)";

/// Which cluster, as kubectl chooses it.
#[derive(Debug, Args, Clone, Default)]
pub struct KubeArgs {
    /// Path of the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace, then `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Steal the requests matching a header from every pod of a workload and serve them locally.
    #[command(after_help = INTERCEPT_EXAMPLES)]
    Intercept(SessionArgs),
    /// Receive copies of the matching requests of every pod (the pods still answer).
    #[command(after_help = MIRROR_EXAMPLES)]
    Mirror(SessionArgs),
    /// Run a local program as if it were in the target's pod: its requests, network, DNS and env.
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(crate::exec::ExecArgs),
    /// List sessions, or end one.
    #[command(after_help = SESSIONS_EXAMPLES)]
    Sessions(SessionsArgs),
    /// List the workloads that sessions can target, with injected and ready pods.
    #[command(after_help = "Examples:\n  shunt targets -n shop\n  shunt targets -o yaml")]
    Targets(OutputArgs),
    /// Check the installation, a namespace and optionally a target; each failed check says how to fix it.
    #[command(
        after_help = "Examples:\n  shunt doctor -n shop\n  shunt doctor -n shop deploy/api   # also: every pod injected, every sidecar connected"
    )]
    Doctor {
        /// A target (`deploy/api`, `service/api`, ...) whose pods to check.
        target: Option<shunt_proto::TargetRef>,
    },
    /// Explain the shunt policies: would a session be allowed, and which policy and rule decide?
    Policy(crate::policy::PolicyArgs),
    /// Run the whole system on a local test cluster (no root) and show who answers what.
    #[command(after_help = DEMO_EXAMPLES)]
    Demo(crate::demo::DemoArgs),
    /// Print a shell completion script.
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

const INTERCEPT_EXAMPLES: &str = "Examples:
  # requests with `x-user: alice` to deployment/api's port 8080 go to localhost:3000
  shunt intercept deployment/api --port 8080:3000 --header 'x-user: alice' -n shop
  # the header is `x-shunt-user: <your user name>`
  shunt intercept deploy/api --port 8080 --header auto
  # every request of the port (needs the steal-unfiltered permission)
  shunt intercept svc/api --port 8080

Ctrl-C ends the session. The header is a filter: `name: value` (exact), `name: ^prefix`,
`name: ~regex`, `path: /prefix`, combined with && and ||.";

const EXEC_EXAMPLES: &str = "Examples:
  # your requests (x-shunt-user: <you>) to deploy/api go to the local server; its
  # outgoing connections and DNS leave from a pod; it gets the container's env
  shunt exec deploy/api -n shop -- python3 -m http.server 8080
  shunt exec deploy/api --port 8080:3000 -- npm start
  shunt exec deploy/api --env-exclude 'AWS_*' --local 192.168.0.0/16 -- cargo run

Ctrl-C ends the program and the session; shunt exits with the program's exit code.
Not for statically linked or Go programs (use `shunt intercept`).";

const MIRROR_EXAMPLES: &str = "Examples:
  shunt mirror deployment/api --port 8080:3000 --header 'x-user: carol' -n shop
  shunt mirror deployment/api --port 8080 --header 'path: /api/'";

const SESSIONS_EXAMPLES: &str = "Examples:
  shunt sessions              # this namespace
  shunt sessions -A -o json   # every namespace
  shunt sessions kill alice-api-3kq9z";

const DEMO_EXAMPLES: &str = "Examples:
  cargo run --release --bin shunt -- demo
  shunt demo --requests 300 --replicas 5

Starts kubesim (a local Kubernetes API and pod runner), the operator and the webhook,
a 3-replica echo Deployment, alice's and bob's intercepts and carol's mirror; sends
requests through the Service and prints who answered each. Exits 1 if any request was
misrouted or failed.";

const COMPLETION_EXAMPLES: &str = "Examples:
  source <(shunt completion bash)
  shunt completion zsh > \"${fpath[1]}/_shunt\"
  shunt completion fish > ~/.config/fish/completions/shunt.fish";

/// Arguments of `intercept` and `mirror`.
#[derive(Debug, Args, Clone)]
pub struct SessionArgs {
    /// The workload: deployment/NAME, statefulset/NAME, replicaset/NAME, daemonset/NAME,
    /// rollout/NAME or service/NAME (short kinds: deploy, sts, rs, ds, ro, svc).
    pub target: shunt_proto::TargetRef,
    /// App port in the pods, optionally `:local port` (default: the same port). Repeatable.
    #[arg(short, long = "port", required = true, value_parser = parse_port)]
    pub ports: Vec<(u16, u16)>,
    /// Which requests: a filter such as `x-user: alice`; `auto` = `x-shunt-user: <you>`.
    /// Without it, every request of the port (steal-unfiltered permission).
    #[arg(long)]
    pub header: Option<String>,
    /// Local host the requests are forwarded to.
    #[arg(long, default_value = "127.0.0.1")]
    pub local_host: String,
}

/// Arguments of `sessions`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SessionsArgs {
    /// List the sessions of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[command(flatten)]
    pub output: OutputArgs,
    /// End a session instead of listing.
    #[command(subcommand)]
    pub kill: Option<SessionsCommand>,
}

/// `sessions` subcommands.
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// End a session (its routes leave every pod; its CLI stops).
    Kill {
        /// The session's name (see `shunt sessions`).
        name: String,
    },
}

/// `-o`.
#[derive(Debug, Args, Clone, Copy)]
pub struct OutputArgs {
    /// Output format: an aligned table, or the API's list object as JSON or YAML.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's list object as JSON.
    Json,
    /// The API's list object as YAML.
    Yaml,
}

/// `8080` or `8080:3000`.
pub fn parse_port(text: &str) -> Result<(u16, u16), String> {
    let num = |s: &str| {
        s.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
            format!("{s:?} is not a port (1-65535); write APP_PORT or APP_PORT:LOCAL_PORT, e.g. 8080:3000")
        })
    };
    match text.split_once(':') {
        Some((remote, local)) => Ok((num(remote)?, num(local)?)),
        None => num(text).map(|p| (p, p)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_ports_parse() {
        Cli::command().debug_assert();
        assert_eq!(parse_port("8080").unwrap(), (8080, 8080));
        assert_eq!(parse_port("8080:3000").unwrap(), (8080, 3000));
        assert!(parse_port("http").unwrap_err().contains("8080:3000"));
        let cli = Cli::try_parse_from([
            "shunt",
            "-n",
            "shop",
            "intercept",
            "deploy/api",
            "--port",
            "80:3000",
            "--header",
            "auto",
        ])
        .unwrap();
        assert_eq!(cli.kube.namespace.as_deref(), Some("shop"));
        let Command::Intercept(args) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(
            (args.target.to_string(), args.ports, args.header.as_deref()),
            ("deployment/api".into(), vec![(80, 3000)], Some("auto"))
        );
        let cli = Cli::try_parse_from(["shunt", "sessions", "kill", "s1", "-n", "shop"]).unwrap();
        assert_eq!(cli.kube.namespace.as_deref(), Some("shop"));
        assert!(matches!(
            cli.command,
            Command::Sessions(SessionsArgs {
                kill: Some(SessionsCommand::Kill { .. }),
                ..
            })
        ));
    }
}
