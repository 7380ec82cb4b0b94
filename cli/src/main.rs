//! `shunt`: parses the command line, runs it, prints an error as one message and exits 1.
//!
//! Hidden subcommands are the processes of pods on kubesim, so that one binary carries
//! the whole system: `__sidecar` and `__echo` (the pods of `shunt demo`), and
//! `__operator ARGS` and `__webhook ARGS`, which run exactly what the `shunt-operator`
//! and `shunt-webhook` binaries run with ARGS (kubesim maps the control plane's images
//! to them and appends the containers' `args`). All of them exit when their parent, the
//! kubelet, is gone.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::time::Duration;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    match std::env::args_os().nth(1).and_then(|a| a.into_string().ok()).as_deref() {
        Some("__sidecar") => return shunt_cli::demo::pods::sidecar(),
        Some("__echo") => return shunt_cli::demo::pods::echo(),
        Some("__operator") => return shunt_operator::cli_main::main_with(component_argv("__operator"), orphaned()),
        Some("__webhook") => return shunt_webhook::cli_main::main_with(component_argv("__webhook"), orphaned()),
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("SHUNT_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(shunt_cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // `shunt exec`: the program's own exit code, already explained by the program.
        Err(e) if e.downcast_ref::<shunt_cli::exec::ProgramExit>().is_some() => {
            std::process::ExitCode::from(e.downcast_ref::<shunt_cli::exec::ProgramExit>().map_or(1, |p| p.0))
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command line; run as `kubectl-shunt` (a kubectl plugin: `kubectl shunt …`), help
/// and errors name the command `kubectl shunt`.
fn parse() -> shunt_cli::args::Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let program = std::env::args_os().next().map(std::path::PathBuf::from);
    let as_plugin = program
        .as_deref()
        .and_then(std::path::Path::file_name)
        .is_some_and(|name| name == "kubectl-shunt");
    if !as_plugin {
        return shunt_cli::args::Cli::parse();
    }
    let matches = shunt_cli::args::Cli::command()
        .bin_name("kubectl shunt")
        .name("kubectl shunt")
        .get_matches();
    shunt_cli::args::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// `shunt __operator --flag …` as the component sees it: program name `shunt __operator`,
/// then the flags.
fn component_argv(command: &str) -> Vec<OsString> {
    std::iter::once(OsString::from(format!("shunt {command}")))
        .chain(std::env::args_os().skip(2))
        .collect()
}

/// Completes once the process is re-parented: the kubelet that started it died without
/// stopping it, and nothing would ever send it SIGTERM.
async fn orphaned() {
    let parent = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tracing::warn!("the parent process is gone; stopping");
}
