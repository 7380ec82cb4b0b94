//! `shunt-bench session`: a developer's session on the full stack of `shunt demo`
//! (`shunt_cli::demo::stack`: kubesim in loopback mode, shunt installed from the Helm
//! chart; the operator, webhook, sidecars and echo apps are pod processes of the release
//! `shunt`), and
//! the real `shunt intercept` as the developer's process. Measures:
//!
//! - set-up time: from spawning `shunt intercept` to the first request through Service
//!   `api` with the session's header answered by the developer's local app, and to the
//!   route being listed by every sidecar (`/routes`), for 3 and for 30 replicas;
//! - the latency of a stolen request (client → Service → sidecar → operator hub → tunnel
//!   → CLI → local app) against the local app called directly, and against the Service
//!   reaching the pods' app (no header), p50/p99 over sequential requests on fresh
//!   connections;
//! - mirroring: the clients' latency through the Service with no session, with a mirror
//!   session whose consumer answers, and with one whose consumer stalls (accepts, never
//!   reads): blocks of the three alternate, so drift of a shared machine hits all alike;
//! - memory: the growth of the operator process's VmRSS when 1,000 simulated sidecars
//!   connect to the hub ([`crate::hubload`]).
//!
//! No root. It builds nothing: it runs the `shunt` found next to its own executable.
//!
//! ```text
//! cargo build --release -p shunt-cli -p shunt-bench && target/release/shunt-bench session
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use shunt_cli::demo::developer::{Developer, Kind, LocalApp};
use shunt_cli::demo::stack::{Stack, StackOptions, NS};
use shunt_cli::demo::traffic::{get_text, served_by};

/// The developer of the benchmark (bound to the Role `shunt-user` by the stack).
const USER: &str = "alice";
/// How long one set-up may take before the run fails.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Unmeasured requests before each latency series.
const WARM_UP: usize = 50;

/// Options of `shunt-bench session`.
struct Options {
    requests: usize,
    runs_small: usize,
    runs_large: usize,
    large: u32,
    sidecars: usize,
}

/// Runs the benchmark; `args` are the arguments after `session`.
pub fn main(args: impl Iterator<Item = String>) -> Result<()> {
    let mut options = Options {
        requests: 1000,
        runs_small: 5,
        runs_large: 3,
        large: 30,
        sidecars: 1000,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<usize> {
            args.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name}: a number"))
        };
        match arg.as_str() {
            "--requests" => options.requests = value("--requests")?,
            "--runs" => options.runs_small = value("--runs")?,
            "--large-runs" => options.runs_large = value("--large-runs")?,
            "--large" => options.large = u32::try_from(value("--large")?)?,
            "--sidecars" => options.sidecars = value("--sidecars")?,
            "-h" | "--help" => {
                println!(
                    "Usage: shunt-bench session [--requests N] [--runs N] [--large N] [--large-runs N] [--sidecars N]\n  \
                     --requests N    sequential requests per latency series [default: 1000]\n  \
                     --runs N        set-up runs with 3 replicas [default: 5]\n  \
                     --large N       replicas of the second set-up series [default: 30]\n  \
                     --large-runs N  set-up runs with that many replicas [default: 3]\n  \
                     --sidecars N    simulated sidecars connected to the hub for the memory row [default: 1000]"
                );
                return Ok(());
            }
            other => bail!("unknown option {other:?}; see shunt-bench session --help"),
        }
    }
    if options.requests == 0 || options.runs_small == 0 || options.runs_large == 0 || options.large < 3 {
        bail!("--requests, --runs and --large-runs must be at least 1, --large at least 3");
    }
    let shunt = shunt_next_to_me()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(run(&shunt, &options))
}

/// The `shunt` binary next to this executable (built with it), or what to build.
pub fn shunt_next_to_me() -> Result<std::path::PathBuf> {
    let shunt = std::env::current_exe()?
        .parent()
        .context("this executable has no directory")?
        .join("shunt");
    if !shunt.is_file() {
        bail!(
            "{} is missing; build it first: cargo build --release -p shunt-cli -p shunt-bench",
            shunt.display()
        );
    }
    Ok(shunt)
}

async fn run(shunt: &Path, options: &Options) -> Result<()> {
    eprintln!("starting the stack (kubesim, operator, webhook, 3 replicas)…");
    let stack = Stack::start(StackOptions {
        timeout: Duration::from_secs(180),
        ..StackOptions::new(shunt.to_owned(), 3)
    })
    .await?;
    let mut setups = vec![(3, setup_series(&stack, shunt, options.runs_small).await?)];
    eprintln!("latency: {} requests per series…", options.requests);
    let latency = latency(&stack, shunt, options.requests).await?;
    eprintln!("mirroring: {} requests per case…", options.requests);
    let mirror = mirror(&stack, shunt, options.requests).await?;
    eprintln!("scaling to {} replicas…", options.large);
    stack.scale(options.large).await?;
    setups.push((options.large, setup_series(&stack, shunt, options.runs_large).await?));
    eprintln!("memory: {} simulated sidecars…", options.sidecars);
    let memory = crate::hubload::measure(&stack, options.sidecars).await?;

    println!("## Sessions: full stack on kubesim (loopback), real `shunt intercept`\n");
    println!("| replicas | runs | CLI start → first request answered locally (median, min–max) | CLI start → route on every sidecar (median, min–max) |");
    println!("|---:|---:|---:|---:|");
    for (replicas, runs) in &setups {
        let first: Vec<Duration> = runs.iter().map(|r| r.0).collect();
        let all: Vec<Duration> = runs.iter().map(|r| r.1).collect();
        println!(
            "| {replicas} | {} | {} | {} |",
            runs.len(),
            spread(&first),
            spread(&all)
        );
    }
    println!(
        "\n{} sequential GETs per row, each on a fresh connection, after {WARM_UP} unmeasured:\n",
        options.requests
    );
    println!("| path | p50 | p99 |");
    println!("|---|---:|---:|");
    let [direct, pods, stolen] = &latency;
    println!("| local app directly | {} | {} |", ms(direct.0), ms(direct.1));
    println!(
        "| Service → sidecar → pod's app (no header) | {} | {} |",
        ms(pods.0),
        ms(pods.1)
    );
    println!(
        "| Service → sidecar → operator hub → tunnel → CLI → local app (stolen) | {} | {} |",
        ms(stolen.0),
        ms(stolen.1)
    );
    println!(
        "| stolen − direct (added) | {} | {} |",
        ms(stolen.0.saturating_sub(direct.0)),
        ms(stolen.1.saturating_sub(direct.1))
    );
    println!(
        "| stolen ÷ direct | {:.1}× | {:.1}× |",
        ratio(stolen.0, direct.0),
        ratio(stolen.1, direct.1)
    );
    println!(
        "\nMirroring: the clients' requests carry the mirror session's header; {} per case, in \
         {MIRROR_ROUNDS} alternating blocks, each on a fresh connection; every answer came from a pod:\n",
        options.requests
    );
    println!("| case | p50 | p99 | p50 × none | p99 × none | copies at the consumer |");
    println!("|---|---:|---:|---:|---:|---:|");
    let none = mirror.cases[0].1;
    for (case, (p50, p99), copies) in &mirror.cases {
        println!(
            "| {case} | {} | {} | {:.2}× | {:.2}× | {copies} |",
            ms(*p50),
            ms(*p99),
            ratio(*p50, none.0),
            ratio(*p99, none.1)
        );
    }
    println!(
        "\nMemory with {n} simulated sidecars (TLS + HTTP/2, routes watch open, pod-bound tokens) \
         connected to the hub, the clients in a child process; VmRSS of the operator's process \
         (its pod, installed from the chart):\n",
        n = options.sidecars
    );
    println!("| VmRSS before | VmRSS after | growth | per sidecar | (the clients' process) |");
    println!("|---:|---:|---:|---:|---:|");
    let growth = memory.after.saturating_sub(memory.before);
    #[allow(clippy::cast_precision_loss)]
    let per = growth as f64 / options.sidecars.max(1) as f64;
    println!(
        "| {:.1} MiB | {:.1} MiB | {:.1} MiB | {per:.0} KiB | {:.1} MiB |",
        mib(memory.before),
        mib(memory.after),
        mib(growth),
        mib(memory.clients)
    );
    Ok(())
}

#[allow(clippy::cast_precision_loss)]
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `runs` set-ups at the stack's current size: (first answered locally, routed everywhere).
async fn setup_series(stack: &Stack, shunt: &Path, runs: usize) -> Result<Vec<(Duration, Duration)>> {
    let mut out = Vec::with_capacity(runs);
    for run in 0..runs {
        let result = setup_once(stack, shunt)
            .await
            .with_context(|| format!("set-up run {}", run + 1))?;
        eprintln!(
            "  set-up {}/{runs}: first local answer {}, every sidecar routed {}",
            run + 1,
            ms(result.0),
            ms(result.1)
        );
        out.push(result);
    }
    Ok(out)
}

/// One session: spawns `shunt intercept`, times it, ends it (SIGINT) and waits until no
/// sidecar lists a route any more.
async fn setup_once(stack: &Stack, shunt: &Path) -> Result<(Duration, Duration)> {
    let app = shunt_echo::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await?, USER)?;
    let kubeconfig = stack.kubeconfig(USER)?;
    let started = Instant::now();
    let mut cli = tokio::process::Command::new(shunt)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args([
            "intercept",
            "deployment/api",
            "-n",
            NS,
            "--header",
            &format!("x-user: {USER}"),
        ])
        .args(["--port", &format!("8080:{}", app.addr.port())])
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run {}", shunt.display()))?;
    let first = async {
        until("a request with the header answered by the local app", async || {
            let who = served_by(stack.service, Some(("x-user", USER))).await.ok()?;
            (who == USER).then_some(())
        })
        .await
        .map(|()| started.elapsed())
    };
    let everywhere = async {
        until("the route on every sidecar", async || {
            routes_everywhere(stack, 1).await.then_some(())
        })
        .await
        .map(|()| started.elapsed())
    };
    let (first, everywhere) = tokio::join!(first, everywhere);
    let result = (first?, everywhere?);

    if let Some(pid) = cli.id().and_then(|id| i32::try_from(id).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT);
    }
    if tokio::time::timeout(Duration::from_secs(10), cli.wait()).await.is_err() {
        cli.start_kill()?;
    }
    until("every sidecar to drop the route after Ctrl-C", async || {
        routes_everywhere(stack, 0).await.then_some(())
    })
    .await?;
    Ok(result)
}

/// Whether every live pod's sidecar lists exactly `routes` routes.
async fn routes_everywhere(stack: &Stack, routes: usize) -> bool {
    let Ok(pods) = stack.pods().await else { return false };
    let mut checks = Vec::new();
    for pod in pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()) {
        let Some(ip) = pod["status"]["podIP"].as_str().and_then(|ip| ip.parse().ok()) else {
            return false;
        };
        checks.push(async move {
            let admin = SocketAddr::new(ip, shunt_proto::names::DEFAULT_ADMIN_PORT);
            let text = get_text(admin, "/routes").await.ok()?;
            let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
            Some(doc["routes"].as_array().map_or(0, Vec::len))
        });
    }
    let counts = futures_util::future::join_all(checks).await;
    !counts.is_empty() && counts.iter().all(|c| *c == Some(routes))
}

/// Polls `f` every 5 ms until it returns `Some`, for at most [`SETUP_TIMEOUT`].
async fn until(what: &str, mut f: impl AsyncFnMut() -> Option<()>) -> Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        if f().await.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {SETUP_TIMEOUT:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// (p50, p99) of: the local app directly, the Service without header, the Service with the
/// session's header (stolen), for one running session.
async fn latency(stack: &Stack, shunt: &Path, requests: usize) -> Result<[(Duration, Duration); 3]> {
    let header = format!("x-user: {USER}");
    let developer = Developer::start(stack, shunt, USER, Kind::Intercept, Some(&header)).await?;
    stack.wait_routes(1).await?;
    let direct = series(developer.app.addr, None, requests, USER).await?;
    let pods = series(stack.service, None, requests, "api-").await?;
    let stolen = series(stack.service, Some(("x-user", USER)), requests, USER).await?;
    drop(developer);
    stack.wait_routes(0).await?;
    Ok([direct, pods, stolen])
}

/// Blocks of the mirror comparison per case.
const MIRROR_ROUNDS: usize = 4;

/// The mirror comparison: (case, (p50, p99), copies the consumer got or connections it held).
struct Mirror {
    cases: Vec<(&'static str, (Duration, Duration), String)>,
}

/// Clients' latency with carol's header: no session, a mirror to an answering consumer, a
/// mirror to a stalled one.
async fn mirror(stack: &Stack, shunt: &Path, requests: usize) -> Result<Mirror> {
    const CAROL: &str = "carol";
    let header = format!("x-user: {CAROL}");
    let block = requests.div_ceil(MIRROR_ROUNDS);
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut copies = [0u64; 3];
    for _ in 0..MIRROR_ROUNDS {
        for (case, samples) in times.iter_mut().enumerate() {
            let developer = match case {
                0 => None,
                1 => Some(LocalApp::Echo),
                _ => Some(LocalApp::Stalled),
            };
            let developer = match developer {
                Some(app) => Some(Developer::start_with(stack, shunt, CAROL, Kind::Mirror, Some(&header), app).await?),
                None => None,
            };
            stack.wait_routes(usize::from(developer.is_some())).await?;
            samples.extend(timed(stack.service, Some(("x-user", CAROL)), block, "api-").await?);
            if let Some(developer) = developer {
                // Copies still in flight arrive within a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
                copies[case] += developer.served();
                drop(developer);
                stack.wait_routes(0).await?;
            }
        }
    }
    let names = ["no session", "mirror, consumer answers", "mirror, consumer stalled"];
    let cases = names
        .iter()
        .zip(times.iter_mut())
        .zip(copies)
        .enumerate()
        .map(|(case, ((name, samples), copies))| {
            samples.sort();
            let got = match case {
                0 => "-".to_owned(),
                1 => format!("{copies} of {}", samples.len() + WARM_UP * MIRROR_ROUNDS),
                _ => format!("0 ({copies} connections held open by the CLI)"),
            };
            (*name, (quantile(samples, 0.50), quantile(samples, 0.99)), got)
        })
        .collect();
    Ok(Mirror { cases })
}

/// Times `requests` sequential GETs, checking who answered starts with `by`; (p50, p99).
async fn series(
    addr: SocketAddr,
    header: Option<(&str, &str)>,
    requests: usize,
    by: &str,
) -> Result<(Duration, Duration)> {
    let mut times = timed(addr, header, requests, by).await?;
    times.sort();
    Ok((quantile(&times, 0.50), quantile(&times, 0.99)))
}

/// The durations of `requests` sequential GETs after [`WARM_UP`] unmeasured ones,
/// checking who answered starts with `by`.
async fn timed(addr: SocketAddr, header: Option<(&str, &str)>, requests: usize, by: &str) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(requests);
    for i in 0..WARM_UP + requests {
        let started = Instant::now();
        let who = served_by(addr, header)
            .await
            .with_context(|| format!("request {i} to {addr}"))?;
        let took = started.elapsed();
        if !who.starts_with(by) {
            bail!("request {i} to {addr} ({header:?}) was answered by {who}, not {by}");
        }
        if i >= WARM_UP {
            times.push(took);
        }
    }
    Ok(times)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let last = sorted.len().saturating_sub(1);
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((last as f64) * q).round() as usize;
    sorted.get(i.min(last)).copied().unwrap_or_default()
}

/// "median (min–max)".
fn spread(times: &[Duration]) -> String {
    let mut sorted = times.to_vec();
    sorted.sort();
    match (sorted.first(), sorted.last()) {
        (Some(min), Some(max)) => format!("{} ({}–{})", ms(quantile(&sorted, 0.5)), ms(*min), ms(*max)),
        _ => "-".to_owned(),
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(f64::MIN_POSITIVE)
}
