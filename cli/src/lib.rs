//! `shunt-cli`: the `shunt` command. Each module owns one task:
//!
//! - [`args`]: the command line (clap);
//! - [`cluster`]: the kube client from the kubeconfig, API errors as messages;
//! - [`intercept`]: `intercept`/`mirror` sessions (create, tunnel, status, Ctrl-C);
//! - [`exec`]: `exec`, a local program run as if in the target's pod (with `libshunt_layer.so`);
//! - [`tunnel`]: the inbound tunnel (WebSocket byte stream, HTTP/2 server);
//! - [`forward`]: requests from the tunnel to the local app;
//! - [`outbound`]: `shunt exec`'s outbound tunnel (CONNECT and DNS through a pod);
//! - [`list`]: `sessions`, `sessions kill`, `targets`;
//! - [`doctor`]: installation checks;
//! - [`policy`]: `policy explain` (a `policyreviews` create);
//! - [`curl`]: the example request printed for a session;
//! - [`demo`]: `shunt demo`, the whole system on kubesim (also the end to end tests' stack).
#![forbid(unsafe_code)]

pub mod args;
pub mod cluster;
pub mod curl;
pub mod demo;
pub mod doctor;
pub mod exec;
pub mod forward;
pub mod intercept;
pub mod list;
pub mod outbound;
pub mod policy;
pub mod tunnel;

use args::{Cli, Command, SessionsCommand};
use clap::CommandFactory as _;
use shunt_proto::Mode;

/// Runs one command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "shunt", &mut std::io::stdout());
        return Ok(());
    }
    if let Command::Demo(args) = &cli.command {
        return demo::run(args).await;
    }
    if let Command::Exec(args) = &cli.command {
        // A program shunt exec cannot serve is refused before anything touches the cluster.
        exec::program::check(&args.command[0])?;
    }
    let cluster = cluster::connect(&cli.kube).await?;
    match cli.command {
        Command::Intercept(args) => intercept::run(&cluster, &args, Mode::Steal).await,
        Command::Mirror(args) => intercept::run(&cluster, &args, Mode::Mirror).await,
        Command::Exec(args) => exec::run(&cluster, &args).await,
        Command::Sessions(args) => match args.kill {
            Some(SessionsCommand::Kill { name }) => list::kill(&cluster, &name).await,
            None => list::sessions(&cluster, args.all_namespaces, args.output.output).await,
        },
        Command::Targets(output) => list::targets(&cluster, output.output).await,
        Command::Doctor { target } => doctor::run(&cluster, target.as_ref()).await,
        Command::Policy(args) => policy::run(&cluster, &args).await,
        Command::Completion { .. } | Command::Demo(_) => Ok(()),
    }
}
