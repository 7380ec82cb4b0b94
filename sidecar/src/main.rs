//! `shunt-sidecar` binary: reads the configuration, sets up logging, runs.

use std::process::ExitCode;

use shunt_sidecar::config::{Config, HELP};

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("-h" | "--help") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("shunt-sidecar {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!(
                "shunt-sidecar: unexpected argument {other:?}; configuration comes from SHUNT_* variables, see --help"
            );
            return ExitCode::from(64);
        }
        None => {}
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shunt-sidecar: bad configuration: {error}\nsee shunt-sidecar --help");
            return ExitCode::from(64);
        }
    };
    init_tracing(config.log_json);
    // The control plane runs here; connections run on the proxy threads (`proxy::workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shunt-sidecar: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(shunt_sidecar::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "shunt-sidecar stopped");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHUNT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
