//! `shunt-webhook` binary: parses the flags, sets up logging, runs until SIGTERM/SIGINT.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use shunt_webhook::config::{Args, LogFormat};

/// Reviews are allocation-bound (JSON in, JSON out): mimalloc roughly halves their cost
/// against glibc malloc under the multi-threaded runtime.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE: bad command line or environment.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
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
    match run(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "shunt-webhook stopped");
            eprintln!("shunt-webhook: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(settings: shunt_webhook::config::Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        shunt_webhook::run(settings, shutdown_signal())
            .await
            .context("shunt-webhook failed")
    })
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

fn init_tracing(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("not a tracing filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}
