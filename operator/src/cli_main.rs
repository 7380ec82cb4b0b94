//! The `shunt-operator` process around [`crate::run`]: flags, logging, the runtime and
//! SIGTERM/SIGINT. One copy for the `shunt-operator` binary and for `shunt __operator`,
//! the command kubesim runs for the operator's image.

use std::ffi::OsString;
use std::future::Future;
use std::process::ExitCode;

use clap::Parser as _;

use crate::config::Args;

/// EX_USAGE: bad command line or environment.
pub const EXIT_USAGE: u8 = 64;

/// Runs the operator with the command line `argv` (its first item is the program name
/// shown in usage messages) until SIGTERM, SIGINT or `stop` completes; then drains.
pub fn main_with<I, T>(argv: I, stop: impl Future<Output = ()> + Send) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("shunt-operator: bad configuration: --log {:?}: {error}", args.log);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // `try_init`: a process that already has a subscriber keeps it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shunt-operator: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        tokio::select! {
            () = shutdown_signal() => {}
            () = stop => tracing::info!("stop requested: draining"),
        }
    };
    match runtime.block_on(crate::run(args, shutdown)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "shunt-operator stopped");
            eprintln!("shunt-operator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the operator");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received: draining");
}
