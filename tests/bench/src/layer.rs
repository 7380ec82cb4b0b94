//! `shunt-bench layer`: what `libshunt_layer.so` adds to a local `connect` and `accept`
//! it does not divert (goal: < 2 µs each, issue 7).
//!
//! The same loop runs twice in one run, in two child processes of this binary: once
//! plain and once with the layer preloaded and `SHUNT_LAYER_SOCKET` naming a fake CLI
//! here that answers every question like `shunt exec` does for a port that is not a
//! session port. Each iteration times one `connect` to a loopback listener and the
//! `accept` of that connection. No root. From the workspace root:
//!
//! ```text
//! cargo build --release -p shunt-layer -p shunt-bench && target/release/shunt-bench layer
//! ```

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};

/// The hidden subcommand of the measuring child.
pub const LOOP_COMMAND: &str = "__layer-loop";
const GOAL_NS: f64 = 2_000.0;

/// `shunt-bench layer [--iterations N]`.
pub fn main(mut args: impl Iterator<Item = String>) -> Result<()> {
    let mut iterations: u32 = 20_000;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iterations" => {
                iterations = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .context("--iterations needs a number")?
            }
            other => bail!("unknown argument {other:?}; usage: shunt-bench layer [--iterations N]"),
        }
    }
    let layer = locate()?;
    let dir = std::env::temp_dir().join(format!("shunt-bench-layer-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("layer.sock");
    let fake = UnixListener::bind(&socket).context("binding the fake CLI socket")?;
    std::thread::spawn(move || {
        for conn in fake.incoming().flatten() {
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            let _ = (&conn).write_all(b"{}\n");
        }
    });
    let plain = child(iterations, None)?;
    let with_layer = child(iterations, Some((&layer, &socket)));
    let _ = std::fs::remove_dir_all(&dir);
    let with_layer = with_layer?;
    println!("## libshunt_layer.so: undiverted loopback calls, {iterations} iterations each, same run");
    println!();
    println!("| call | without layer p50 / mean (ns) | with layer p50 / mean (ns) | ratio (mean) | added (mean) | goal < 2 µs |");
    println!("|---|---|---|---|---|---|");
    for (i, call) in ["connect", "accept"].iter().enumerate() {
        let (a, b) = (plain[i], with_layer[i]);
        let added = b.1 - a.1;
        println!(
            "| {call} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {:.0} ns | {} |",
            a.0,
            a.1,
            b.0,
            b.1,
            b.1 / a.1,
            added,
            if added < GOAL_NS { "PASS" } else { "MISS" }
        );
    }
    Ok(())
}

fn locate() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory for this executable")?;
    [dir.join("libshunt_layer.so"), dir.join("deps/libshunt_layer.so")]
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "libshunt_layer.so is not next to {}: cargo build --release -p shunt-layer",
                exe.display()
            )
        })
}

/// Runs the loop in a child; `[(p50, mean)]` for connect and accept.
fn child(iterations: u32, layer: Option<(&PathBuf, &PathBuf)>) -> Result<[(f64, f64); 2]> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([LOOP_COMMAND, &iterations.to_string()]);
    cmd.env_remove("LD_PRELOAD").env_remove("SHUNT_LAYER_SOCKET");
    if let Some((lib, socket)) = layer {
        cmd.env("LD_PRELOAD", lib).env("SHUNT_LAYER_SOCKET", socket);
    }
    let out = cmd.output().context("running the measuring child")?;
    if !out.status.success() {
        bail!("the measuring child failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let numbers: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers[..] {
        [a, b, c, d] => Ok([(a, b), (c, d)]),
        _ => bail!("the measuring child printed {numbers:?}"),
    }
}

/// The child: times `iterations` loopback connects and accepts (after a warm-up) and
/// prints `connect_p50 connect_mean accept_p50 accept_mean` in nanoseconds.
pub fn measure(mut args: impl Iterator<Item = String>) -> Result<()> {
    let iterations: usize = args.next().and_then(|n| n.parse().ok()).context("iterations")?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut connect = Vec::with_capacity(iterations);
    let mut accept = Vec::with_capacity(iterations);
    for i in 0..iterations + 1_000 {
        let t0 = Instant::now();
        let client = TcpStream::connect(addr)?;
        let t1 = Instant::now();
        let (server, _) = listener.accept()?;
        let t2 = Instant::now();
        if i >= 1_000 {
            connect.push((t1 - t0).as_nanos() as f64);
            accept.push((t2 - t1).as_nanos() as f64);
        }
        drop((client, server));
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v.iter().sum::<f64>() / v.len() as f64)
    };
    let (c, a) = (stats(&mut connect), stats(&mut accept));
    println!("{} {} {} {}", c.0, c.1, a.0, a.1);
    Ok(())
}
