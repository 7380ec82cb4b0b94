//! The `shunt-webhook` process around [`crate::run`]: flags, logging, the runtime and
//! SIGTERM/SIGINT. One copy for the `shunt-webhook` binary and for `shunt __webhook`,
//! the command kubesim runs for the webhook's image.

use std::ffi::OsString;
use std::future::Future;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

use crate::config::{Args, LogFormat, Settings};

/// EX_USAGE: bad command line or environment.
pub const EXIT_USAGE: u8 = 64;

/// Runs the webhook with the command line `argv` (its first item is the program name
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
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("shunt-webhook: bad configuration: {error}\nsee shunt-webhook --help");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(error) = init_tracing(&args.log, args.log_format) {
        eprintln!("shunt-webhook: bad configuration: --log: {error:#}");
        return ExitCode::from(EXIT_USAGE);
    }
    match run(settings, stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "shunt-webhook stopped");
            eprintln!("shunt-webhook: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: Settings, stop: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let shutdown = async {
        tokio::select! {
            () = shutdown_signal() => {}
            () = stop => tracing::info!("stop requested"),
        }
    };
    runtime.block_on(async { crate::run(settings, shutdown).await.context("shunt-webhook failed") })
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
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the webhook");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutdown signal received");
}

/// `try_init`: a process that already has a subscriber keeps it.
fn init_tracing(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("not a tracing filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}
