//! `shunt-bench sidecar`: measures `shunt-sidecar` in a network-namespace pod against
//! the app reached directly and against HAProxy 2.6 doing the same routing, in one
//! run, with wrk (HTTP/1.1) and h2load (h2c), and prints markdown tables and PASS/MISS
//! per goal.
//!
//! It builds nothing: it runs the release `shunt-sidecar` and `shunt-echo` found next
//! to its own executable. From the workspace root, as root:
//!
//! ```text
//! cargo build --release -p shunt-sidecar -p shunt-echo -p shunt-bench && target/release/shunt-bench sidecar
//! ```
//!
//! Exits 0 when it measured (also when a goal is missed), 1 when the setup failed,
//! 130 on Ctrl-C/SIGTERM, 64 on bad arguments. The pod, its processes and the temp
//! files are removed in every case.
#![forbid(unsafe_code)]

mod client;
mod faults;
mod haproxy;
mod http;
mod hubload;
mod interrupt;
mod layer;
mod parse;
mod procfs;
mod report;
mod scenario;
mod session;
mod soak;
mod webhook;
mod world;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::scenario::Options;

const HELP: &str = "\
shunt-bench: measures shunt-sidecar against direct traffic and HAProxy, in one run.

Build first and run as root, from the workspace root:
  cargo build --release -p shunt-sidecar -p shunt-echo -p shunt-bench && target/release/shunt-bench sidecar

Usage: shunt-bench sidecar [--duration SECS] [--connections N]
       shunt-bench webhook [--duration SECS]   (shunt-webhook vs an echo handler over TLS; no root;
                                                build with -p shunt-webhook too)
       shunt-bench layer [--iterations N]     (what libshunt_layer.so adds to a loopback connect/accept it
                                                does not divert; no root; build with -p shunt-layer too)
       shunt-bench session [--requests N]     (session set-up time and stolen-request latency on the
                                                full stack on kubesim; no root; build with -p shunt-cli too)
       shunt-bench faults [--network M]       (the fault matrix on the full stack on kubesim; netns mode
                                                as root; build with -p shunt-cli too)
       shunt-bench soak [--duration SECS] [--network M]
                                               (sessions coming and going on the full stack for SECS
                                                [600]: operator and sidecar memory and fds, leftovers;
                                                exits 1 on FAIL; build with -p shunt-cli too)

  --duration SECS   measured seconds per scenario and protocol, after a 2 s warm-up [default: 10]
  --connections N   wrk connections; h2load opens N/4 connections with 10 streams each [default: 32]

Scenarios (app = shunt-echo in a pod namespace, clients in the root namespace):
  direct, dormant sidecar, active sidecar with a route nothing matches, active sidecar
  routing 50% to a local developer upstream, HAProxy doing that same routing.
Needs: root, ip, nft, wrk, h2load, haproxy; shunt-sidecar and shunt-echo next to this binary.
";

fn main() -> ExitCode {
    // `webhook` has its own arguments and needs no root: see webhook.rs.
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("webhook") => return exit(webhook::main(args)),
        Some("session") => return exit(session::main(args)),
        Some("layer") => return exit(layer::main(args)),
        Some(layer::LOOP_COMMAND) => return exit(layer::measure(args)),
        Some("faults") => return exit(faults::main(args)),
        Some("soak") => return exit(soak::main(args)),
        Some(hubload::CLIENTS_COMMAND) => return exit(hubload::clients_main(args)),
        Some(webhook::ECHO_COMMAND) => return exit(webhook::echo_server(args)),
        _ => {}
    }
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("shunt-bench: {error:#}\n\n{HELP}");
            return ExitCode::from(64);
        }
    };
    match run(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if error.chain().any(|e| e.is::<interrupt::Interrupted>()) => {
            eprintln!("shunt-bench: interrupted; everything it started is removed");
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("shunt-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shunt-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: &Options) -> Result<()> {
    if !shunt_netns::is_root() {
        bail!("needs root (network namespaces, veth, nftables); run it with sudo");
    }
    for tool in ["ip", "nft", "wrk", "h2load", "haproxy"] {
        if !on_path(tool) {
            bail!("{tool} is not installed (needed: ip, nft, wrk, h2load, haproxy)");
        }
    }
    let bins = world::Bins::locate()?;
    interrupt::install().context("taking SIGINT/SIGTERM")?;
    let results = scenario::run(bins, options)?;
    let header = format!(
        "## shunt-sidecar benchmark: {} s per run after a {} s warm-up; wrk -t1 -c{}, h2load -t1 -c{} -m 10",
        options.duration,
        client::WARM_UP_SECONDS,
        options.connections,
        (options.connections / 4).max(1)
    );
    report::print(&results, &header);
    Ok(())
}

/// The options, or None for `--help`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<Option<Options>> {
    let mut options = Options {
        duration: 10,
        connections: 32,
    };
    let mut args = args.peekable();
    match args.next().as_deref() {
        Some("sidecar") => {}
        None | Some("-h" | "--help" | "help") => return Ok(None),
        Some(other) => bail!("unknown command {other:?}; the one benchmark is `sidecar`"),
    }
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .with_context(|| format!("{name} needs a value"))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(None),
            "--duration" => options.duration = value()?.parse().context("--duration: seconds")?,
            "--connections" => options.connections = value()?.parse().context("--connections: a number")?,
            _ => bail!("unknown option {arg:?}"),
        }
    }
    if options.duration == 0 || options.connections == 0 {
        bail!("--duration and --connections must be at least 1");
    }
    Ok(Some(options))
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| Path::new(&dir).join(tool).is_file())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Options>> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        let o = args(&["sidecar"]).unwrap().unwrap();
        assert_eq!((o.duration, o.connections), (10, 32));
        let o = args(&["sidecar", "--duration", "5", "--connections=8"])
            .unwrap()
            .unwrap();
        assert_eq!((o.duration, o.connections), (5, 8));
        assert!(args(&[]).unwrap().is_none());
        assert!(args(&["sidecar", "--help"]).unwrap().is_none());
        assert!(args(&["proxy"]).is_err());
        assert!(args(&["sidecar", "--duration"]).is_err());
        assert!(args(&["sidecar", "--duration", "0"]).is_err());
    }
}
