//! The processes kubesim runs for the demo's images, carried by the `shunt` binary itself
//! so that `cargo run --bin shunt -- demo` needs nothing else built: `shunt __sidecar`
//! (image `shunt/sidecar`, the real sidecar configured by its `SHUNT_*` variables) and
//! `shunt __echo` (image `kubesim/echo`, the echo server on port `$PORT` named
//! `$POD_NAME`: on `$POD_IP` in loopback mode, on every address in a pod's own network
//! namespace). Both exit when their parent (kubesim in `shunt demo`) is gone.

use std::process::ExitCode;
use std::time::Duration;

/// Ends the process once it is re-parented (its kubelet died without stopping it).
async fn orphaned() {
    let parent = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `shunt __sidecar`: the sidecar, as the `shunt-sidecar` binary runs it.
pub fn sidecar() -> ExitCode {
    let config = match shunt_sidecar::config::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("shunt __sidecar: bad configuration: {error}\nsee shunt-sidecar --help");
            return ExitCode::from(64);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHUNT_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_json {
        logs.json().flatten_event(true).init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shunt __sidecar: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        tokio::select! {
            result = shunt_sidecar::run(config) => match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "shunt-sidecar stopped");
                    ExitCode::FAILURE
                }
            },
            () = orphaned() => ExitCode::FAILURE,
        }
    })
}

/// `shunt __echo`: the echo app of a pod.
pub fn echo() -> ExitCode {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // A loopback pod shares the host's network and keeps to its own 127.x address; a pod
    // with a network namespace of its own listens on every address, as apps do (the
    // sidecar hands it requests on 127.0.0.1).
    let host = match env("POD_IP") {
        Some(ip) if ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) => ip,
        Some(_) => "0.0.0.0".into(),
        None => "127.0.0.1".into(),
    };
    let addr = format!("{host}:{}", env("PORT").unwrap_or_else(|| "8080".into()));
    let name = env("POD_NAME").unwrap_or_else(|| "echo".into());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shunt __echo: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&addr).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("shunt __echo: cannot listen on {addr}: {error}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("shunt __echo {name} listening on {addr}");
        tokio::select! {
            () = shunt_echo::serve(listener, name, Default::default()) => ExitCode::SUCCESS,
            () = orphaned() => ExitCode::FAILURE,
        }
    })
}
