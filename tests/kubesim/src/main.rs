//! `kubesim up`: runs a test cluster until SIGINT/SIGTERM and writes an admin kubeconfig.
//! `kubesim echo`: the built-in `kubesim/echo` image's process.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// A Kubernetes API emulator and pod runner for shunt's tests and demo.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Starts a cluster, writes an admin kubeconfig and runs until SIGINT (Ctrl-C) or
    /// SIGTERM, which stop every pod and remove the pod network.
    ///
    /// It does not return while the cluster runs: start it in one shell (or with `&`) and
    /// use it from another, e.g. `kubesim up --kubeconfig /tmp/kubesim.json &` then
    /// `kubectl --kubeconfig /tmp/kubesim.json get ns` once the file exists.
    Up {
        /// Where to write the admin kubeconfig.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Pod networking: loopback (no root) or netns (root).
        #[arg(long, value_enum, default_value_t = NetworkArg::Loopback)]
        network: NetworkArg,
        /// Image registry file: JSON `{"image": ["argv", ...]}` or lines `image=command args`
        /// (tags are ignored). `kubesim/echo` is built in.
        #[arg(long)]
        images: Option<PathBuf>,
    },
    /// The echo server of the `kubesim/echo` image: HTTP/1.1 and h2c, answers with NAME.
    ///
    /// ADDR defaults to `$POD_IP:$PORT` (`0.0.0.0`, `8080` when unset), NAME to `$POD_NAME`
    /// or `$HOSTNAME`.
    Echo {
        /// Listen address.
        addr: Option<String>,
        /// The name it answers with.
        name: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum NetworkArg {
    Loopback,
    Netns,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KUBESIM_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubesim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Up {
            kubeconfig,
            network,
            images,
        } => runtime.block_on(up(kubeconfig, network, images)),
        Command::Echo { addr, name } => runtime.block_on(echo(addr, name)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubesim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn up(kubeconfig: PathBuf, network: NetworkArg, images: Option<PathBuf>) -> anyhow::Result<()> {
    let network = match network {
        NetworkArg::Loopback => kubesim::Network::Loopback,
        NetworkArg::Netns => kubesim::Network::Netns,
    };
    let images = match images {
        Some(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the images file {}", path.display()))?;
            kubesim::kubelet::images::parse_images(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => Default::default(),
    };
    use tokio::signal::unix::{signal, SignalKind};
    // Both handlers are in place before the cluster starts: a signal during start-up is
    // held until the cluster is up and then stops it (no default action killing the
    // process half-way, with pods or a netns bridge left behind).
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let cluster = kubesim::Cluster::start(kubesim::Options { network, images }).await?;
    cluster.write_kubeconfig(&kubeconfig, "kubesim-admin", &["system:masters"])?;
    println!(
        "kubesim is up at {}; admin kubeconfig: {}",
        cluster.url(),
        kubeconfig.display()
    );
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping: pods get SIGTERM, then the pod network is removed");
    cluster.shutdown().await;
    Ok(())
}

async fn echo(addr: Option<String>, name: Option<String>) -> anyhow::Result<()> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let addr = addr.unwrap_or_else(|| {
        format!(
            "{}:{}",
            env("POD_IP").unwrap_or_else(|| "0.0.0.0".into()),
            env("PORT").unwrap_or_else(|| "8080".into())
        )
    });
    let name = name
        .or_else(|| env("POD_NAME"))
        .or_else(|| env("HOSTNAME"))
        .unwrap_or_else(|| "kubesim-echo".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!("kubesim echo {name} listening on {addr}");
    // A container must not outlive its kubelet: if kubesim is killed before it can stop
    // its pods (SIGKILL), this process is re-parented, notices, and exits.
    let parent = std::os::unix::process::parent_id();
    let orphaned = async move {
        while std::os::unix::process::parent_id() == parent {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        _ = shunt_echo::serve(listener, name, Default::default()) => {}
        _ = orphaned => eprintln!("kubesim echo: the kubelet is gone; exiting"),
    }
    Ok(())
}
