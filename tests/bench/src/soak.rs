//! `shunt-bench soak`: the full stack of `shunt demo` on kubesim (3 replicas of `api`)
//! for `--duration` seconds while sessions come and go: alice, bob and carol each, in a
//! loop, start `shunt intercept` or `shunt mirror` (in turn) with their own header, send
//! requests with it through Service `api`, stop the CLI (SIGTERM) and wait until their
//! session is gone. Two clients send requests no session matches all along.
//!
//! Every ~5 s it samples the operator's and every sidecar's VmRSS and open fds
//! (`/proc/PID/status`, `/proc/PID/fd`). Once the last session has ended it checks that
//! no session is left and (netns mode) that no pod's nftables table holds a redirect
//! element. It prints a table per component and PASS/FAIL per criterion, and fails (exit
//! 1) when a criterion fails.
//!
//! ```text
//! cargo build --release -p shunt-cli -p shunt-bench && target/release/shunt-bench soak --duration 600
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use shunt_cli::demo::developer::{Developer, Kind};
use shunt_cli::demo::stack::{poll, Stack, StackOptions, DEVELOPERS};
use shunt_cli::demo::traffic::served_by;

use crate::faults::init_container_pid;
use crate::{interrupt, procfs};

/// How often the processes are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Requests each developer sends through the Service per session.
const REQUESTS_PER_SESSION: usize = 20;
/// Concurrent clients sending requests no session matches.
const UNMATCHED_CLIENTS: usize = 2;
/// Memory counts as flat when the fitted growth over the second half stays within this
/// many KiB, or [`FLAT_SHARE`] of the largest RSS, whichever is more (allocators keep
/// pages in arenas; a step of a few hundred KiB is not a leak).
const FLAT_KIB: f64 = 2048.0;
const FLAT_SHARE: f64 = 0.05;
/// Open fds a process may hold at the end beyond what it held at the start.
const FD_SLACK: usize = 2;
/// The warm-up round before the first sample.
const WARM_UP: Duration = Duration::from_secs(10);
/// How long the system may take to clean up after the last session ended.
const SETTLE: Duration = Duration::from_secs(30);

struct Options {
    duration: Duration,
    network: kubesim::Network,
}

/// Runs the soak; `args` are the arguments after `soak`.
pub fn main(args: impl Iterator<Item = String>) -> Result<()> {
    let mut options = Options {
        duration: Duration::from_secs(600),
        network: if shunt_netns::is_root() {
            kubesim::Network::Netns
        } else {
            kubesim::Network::Loopback
        },
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--duration" => {
                let secs: u64 = args.next().context("--duration needs seconds")?.parse()?;
                if secs < 30 {
                    bail!("--duration must be at least 30 seconds (the slope needs samples)");
                }
                options.duration = Duration::from_secs(secs);
            }
            "--network" => {
                options.network = match args.next().as_deref() {
                    Some("netns") => kubesim::Network::Netns,
                    Some("loopback") => kubesim::Network::Loopback,
                    other => bail!("--network netns|loopback, not {other:?}"),
                }
            }
            "-h" | "--help" => {
                println!(
                    "Usage: shunt-bench soak [--duration SECS] [--network netns|loopback]\n  \
                     --duration  seconds of sessions coming and going [default: 600, at least 30]\n  \
                     --network   pod networking (default: netns as root, else loopback)"
                );
                return Ok(());
            }
            other => bail!("unknown option {other:?}; see shunt-bench soak --help"),
        }
    }
    if options.network == kubesim::Network::Netns && !shunt_netns::is_root() {
        bail!("--network netns needs root");
    }
    let shunt = crate::session::shunt_next_to_me()?;
    interrupt::install().context("taking SIGINT/SIGTERM")?;
    let failed = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(run(&shunt, &options))?;
    if failed > 0 {
        bail!("{failed} soak criteria failed (see the table)");
    }
    Ok(())
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    unmatched_sent: usize,
    unmatched_failed: usize,
    sessions: usize,
    session_requests: usize,
    by_developer: usize,
    /// Intercepted users' requests a pod served (routes still on their way, fail-open).
    intercept_by_pods: usize,
    session_failed: usize,
    misrouted: usize,
    mirror_copies: u64,
    /// When the stack was up: the clock of `problems` and `events`.
    origin: Option<Instant>,
    /// The first problems seen, with their time.
    problems: Vec<(f64, String)>,
    /// Sessions starting, stopping and gone, with their time.
    events: Vec<(f64, String)>,
}

impl Tally {
    fn now(&self) -> f64 {
        self.origin.map_or(0.0, |o| o.elapsed().as_secs_f64())
    }

    fn problem(&mut self, what: String) {
        if self.problems.len() < 8 {
            self.problems.push((self.now(), what));
        }
    }

    fn event(&mut self, what: String) {
        let at = self.now();
        self.events.push((at, what));
    }
}

type Shared = Arc<Mutex<Tally>>;

fn tally(shared: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run(shunt: &Path, options: &Options) -> Result<usize> {
    eprintln!("starting the stack (kubesim, operator, webhook, 3 replicas)…");
    let stack = Stack::start(StackOptions {
        network: options.network,
        timeout: Duration::from_secs(180),
        ..StackOptions::new(shunt.to_owned(), 3)
    })
    .await?;
    let shared: Shared = Arc::default();
    tally(&shared).origin = Some(Instant::now());
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..UNMATCHED_CLIENTS)
        .map(|_| tokio::spawn(unmatched(stack.service, stop.clone(), shared.clone())))
        .collect();
    // A warm-up round first: the connections and caches a session leaves for the next
    // (a sidecar's connection to the hub for stolen requests, its pooled connection to
    // the app) exist before the first sample, so the fd count compares like with like.
    eprintln!("warm-up: one intercept and one mirror session per developer…");
    churn_all(&stack, shunt, Instant::now() + WARM_UP, &shared).await?;
    settle(&stack, options.network).await?;
    let started = Instant::now();
    let mut samples = Samples::default();
    samples.take(&stack, started).await?;
    let end = started + options.duration;
    eprintln!("soaking for {} s…", options.duration.as_secs());
    let users = churn_all(&stack, shunt, end, &shared);
    let sampler = async {
        while Instant::now() < end && interrupt::check().is_ok() {
            tokio::time::sleep(SAMPLE_EVERY.min(end.saturating_duration_since(Instant::now()))).await;
            if let Err(error) = samples.take(&stack, started).await {
                eprintln!("  sampling failed: {error:#}");
            }
        }
    };
    let (result, ()) = tokio::join!(users, sampler);
    interrupt::check()?;
    result?;

    let (left, leftover_elements) = settle(&stack, options.network).await?;
    // Connections the sidecars held for sessions drain; then the last sample.
    tokio::time::sleep(SAMPLE_EVERY).await;
    samples.take(&stack, started).await?;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        let _ = task.await;
    }
    let tally = std::mem::take(&mut *tally(&shared));
    Ok(report(options, &samples, &tally, left, leftover_elements.as_deref()))
}

/// Waits (up to [`SETTLE`]) until no session is left and (netns) no pod has a redirect
/// element; what is left then: sessions, and the elements (`None` in loopback mode).
async fn settle(stack: &Stack, network: kubesim::Network) -> Result<(usize, Option<Vec<String>>)> {
    let _ = poll("no session left", SETTLE, async || {
        stack.sessions().await.ok()?.is_empty().then_some(())
    })
    .await;
    let left = stack.sessions().await?.len();
    if network != kubesim::Network::Netns {
        return Ok((left, None));
    }
    let found = poll("no redirect element in any pod", SETTLE, async || {
        let found = leftover_nft(stack).await.ok()?;
        found.is_empty().then_some(found)
    })
    .await;
    let elements = match found {
        Ok(none) => none,
        Err(_) => leftover_nft(stack).await?,
    };
    Ok((left, Some(elements)))
}

/// Sequential GETs without a session header, each on a fresh connection, until `stop`.
async fn unmatched(service: SocketAddr, stop: Arc<AtomicBool>, shared: Shared) {
    while !stop.load(Ordering::Relaxed) && interrupt::check().is_ok() {
        let answer = served_by(service, None).await;
        let mut t = tally(&shared);
        t.unmatched_sent += 1;
        match answer {
            Ok(who) if who.starts_with("api-") => {}
            Ok(who) => {
                t.misrouted += 1;
                t.problem(format!("a request without a session header reached {who}"));
            }
            Err(error) => {
                t.unmatched_failed += 1;
                t.problem(format!("unmatched request failed: {error:#}"));
            }
        }
    }
}

/// Every developer's sessions, side by side, until `end`.
async fn churn_all(stack: &Stack, shunt: &Path, end: Instant, shared: &Shared) -> Result<()> {
    let users = DEVELOPERS
        .iter()
        .enumerate()
        .map(|(i, user)| churn(stack, shunt, user, i, end, shared));
    futures_util::future::join_all(users).await.into_iter().collect()
}

/// One developer's sessions, one after the other, until `end`.
async fn churn(stack: &Stack, shunt: &Path, user: &str, index: usize, end: Instant, shared: &Shared) -> Result<()> {
    let header = format!("x-user: {user}");
    let mut round = 0;
    while Instant::now() < end {
        interrupt::check()?;
        let kind = if (round + index) % 2 == 0 {
            Kind::Intercept
        } else {
            Kind::Mirror
        };
        round += 1;
        let mut dev = match Developer::start(stack, shunt, user, kind, Some(&header)).await {
            Ok(dev) => dev,
            Err(error) => {
                tally(shared).problem(format!("{user}'s session did not start: {error:#}"));
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        {
            let mut t = tally(shared);
            t.sessions += 1;
            t.event(format!("{user}'s {kind:?} session up"));
        }
        for _ in 0..REQUESTS_PER_SESSION {
            let answer = served_by(stack.service, Some(("x-user", user))).await;
            let mut t = tally(shared);
            t.session_requests += 1;
            match (answer, kind) {
                (Ok(who), _) if !who.starts_with("api-") && who != user => {
                    t.misrouted += 1;
                    t.problem(format!("{user}'s request reached {who}"));
                }
                (Ok(who), Kind::Mirror) if who == user => {
                    t.misrouted += 1;
                    t.problem(format!("{user}'s mirrored request was answered by their laptop"));
                }
                (Ok(who), Kind::Intercept) if who == user => t.by_developer += 1,
                (Ok(_), Kind::Intercept) => t.intercept_by_pods += 1,
                (Ok(_), Kind::Mirror) => {}
                (Err(error), _) => {
                    t.session_failed += 1;
                    t.problem(format!("{user}'s request failed: {error:#}"));
                }
            }
        }
        tally(shared).event(format!("{user}'s CLI stopping"));
        stop_developer(&mut dev).await;
        tally(shared).mirror_copies += if kind == Kind::Mirror { dev.served() } else { 0 };
        drop(dev);
        // The next session of this user may only start once this one is gone (its
        // filter would overlap).
        let gone = poll(&format!("{user}'s session to end"), SETTLE, async || {
            let sessions = stack.sessions().await.ok()?;
            (!sessions.iter().any(|s| s["status"]["user"] == user)).then_some(())
        })
        .await;
        match gone {
            Ok(()) => tally(shared).event(format!("{user}'s session gone")),
            Err(error) => tally(shared).problem(format!("{error:#}")),
        }
        tokio::time::sleep(Duration::from_millis(500 + 500 * index as u64)).await;
    }
    Ok(())
}

/// SIGTERM to the CLI (it ends its session), then wait for it to exit.
async fn stop_developer(dev: &mut Developer) {
    if let Some(pid) = dev.cli.id() {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), dev.cli.wait())
        .await
        .is_err()
    {
        let _ = dev.cli.start_kill();
        let _ = dev.cli.wait().await;
    }
}

/// `pod: element line` for every redirect element left in a pod's `inet shunt` table.
async fn leftover_nft(stack: &Stack) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for pod in stack.pods().await? {
        let name = pod["metadata"]["name"].as_str().unwrap_or("?").to_owned();
        let pid = init_container_pid(&pod, shunt_proto::names::SIDECAR_CONTAINER)
            .with_context(|| format!("the sidecar of {name} is not running"))?;
        let out = tokio::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "nft", "list", "ruleset"])
            .output()
            .await
            .context("cannot run nsenter")?;
        if !out.status.success() {
            bail!(
                "nft list ruleset in {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        found.extend(
            text.lines()
                .filter(|l| l.contains("elements"))
                .map(|l| format!("{name}: {}", l.trim())),
        );
    }
    Ok(found)
}

/// The samples of one process.
struct Series {
    name: String,
    pid: u32,
    restarted: bool,
    /// (seconds since the start, VmRSS KiB, open fds)
    points: Vec<(f64, u64, usize)>,
}

#[derive(Default)]
struct Samples {
    series: Vec<Series>,
}

impl Samples {
    /// Samples the operator and every sidecar now.
    async fn take(&mut self, stack: &Stack, started: Instant) -> Result<()> {
        let mut procs = vec![("operator".to_owned(), stack.operator_pid().await?)];
        for pod in stack.pods().await? {
            let name = pod["metadata"]["name"].as_str().unwrap_or("?");
            if let Some(pid) = init_container_pid(&pod, shunt_proto::names::SIDECAR_CONTAINER) {
                procs.push((format!("sidecar {name}"), pid));
            }
        }
        let at = started.elapsed().as_secs_f64();
        for (name, pid) in procs {
            let (Ok(rss), Ok(fds)) = (procfs::status_kib(pid, "VmRSS"), procfs::open_fds(pid)) else {
                continue; // exited between listing and reading: the next sample sees its successor
            };
            match self.series.iter_mut().find(|s| s.name == name) {
                Some(series) => {
                    series.restarted |= series.pid != pid;
                    series.pid = pid;
                    series.points.push((at, rss, fds));
                }
                None => self.series.push(Series {
                    name,
                    pid,
                    restarted: false,
                    points: vec![(at, rss, fds)],
                }),
            }
        }
        Ok(())
    }
}

/// Least-squares slope of RSS over the second half of the samples, in KiB per minute.
fn slope_kib_per_min(points: &[(f64, u64, usize)]) -> f64 {
    let last = points.last().map_or(0.0, |p| p.0);
    let half: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.0 >= last / 2.0)
        .map(|p| (p.0 / 60.0, p.1 as f64))
        .collect();
    let n = half.len() as f64;
    if half.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (
        half.iter().map(|p| p.0).sum::<f64>() / n,
        half.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = half.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = half.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// Prints the tables; the number of failed criteria.
fn report(options: &Options, samples: &Samples, t: &Tally, sessions_left: usize, nft: Option<&[String]>) -> usize {
    let mode = match options.network {
        kubesim::Network::Netns => "netns mode, nftables redirects",
        kubesim::Network::Loopback => "loopback mode, port takeover",
    };
    println!(
        "## Soak: {} s on kubesim ({mode}), 3 replicas, {} sessions of alice, bob and carol coming and going\n",
        options.duration.as_secs(),
        t.sessions
    );
    println!("| component | RSS start | RSS end | RSS max | slope, 2nd half | fds start | fds end | fds max | memory | fds |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    let mut memory_ok = true;
    let mut fds_ok = true;
    let mut restarts = Vec::new();
    for s in &samples.series {
        let (Some(first), Some(last)) = (s.points.first(), s.points.last()) else {
            continue;
        };
        let max_rss = s.points.iter().map(|p| p.1).max().unwrap_or(0);
        let max_fds = s.points.iter().map(|p| p.2).max().unwrap_or(0);
        let slope = slope_kib_per_min(&s.points);
        let half_minutes = last.0 / 2.0 / 60.0;
        let allowed = FLAT_KIB.max(FLAT_SHARE * max_rss as f64);
        let flat = slope * half_minutes <= allowed && !s.restarted;
        let fd_flat = last.2 <= first.2 + FD_SLACK && !s.restarted;
        memory_ok &= flat;
        fds_ok &= fd_flat;
        if s.restarted {
            restarts.push(s.name.clone());
        }
        let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
        println!(
            "| {} | {} | {} | {} | {slope:+.0} KiB/min | {} | {} | {max_fds} | {} | {} |",
            s.name,
            mib(first.1),
            mib(last.1),
            mib(max_rss),
            first.2,
            last.2,
            pass(flat),
            pass(fd_flat),
        );
    }
    let mut criteria = vec![
        (
            "memory flat",
            memory_ok,
            format!(
                "fitted growth over the second half within max({:.0} MiB, {:.0}% of max RSS); no restart{}",
                FLAT_KIB / 1024.0,
                FLAT_SHARE * 100.0,
                if restarts.is_empty() {
                    String::new()
                } else {
                    format!(" (restarted: {})", restarts.join(", "))
                }
            ),
        ),
        (
            "no fd growth",
            fds_ok,
            format!("fds at the end at most {FD_SLACK} above the start"),
        ),
        (
            "sessions came and went",
            t.sessions >= DEVELOPERS.len() && t.by_developer > 0,
            format!(
                "{} sessions; {} session requests: {} by the developer, {} intercepted ones by pods (routes on their way), {} mirror copies",
                t.sessions, t.session_requests, t.by_developer, t.intercept_by_pods, t.mirror_copies
            ),
        ),
        (
            "no leftover sessions",
            sessions_left == 0,
            format!("{sessions_left} left {} s after the last ended", SETTLE.as_secs()),
        ),
        (
            "zero failed unmatched requests",
            t.unmatched_failed == 0,
            format!(
                "{} of {} failed; session requests failed: {}",
                t.unmatched_failed, t.unmatched_sent, t.session_failed
            ),
        ),
        ("nothing misrouted", t.misrouted == 0, format!("{} misrouted", t.misrouted)),
    ];
    if let Some(nft) = nft {
        criteria.push((
            "no leftover nftables elements",
            nft.is_empty(),
            if nft.is_empty() {
                "no redirect element in any pod".to_owned()
            } else {
                nft.join("; ")
            },
        ));
    }
    println!("\n| criterion | result | detail |\n|---|---|---|");
    for (name, ok, detail) in &criteria {
        println!("| {name} | {} | {detail} |", pass(*ok));
    }
    if !t.problems.is_empty() {
        println!("\nFirst problems seen:");
        for (at, what) in &t.problems {
            let nearest = t
                .events
                .iter()
                .min_by(|a, b| (a.0 - at).abs().total_cmp(&(b.0 - at).abs()))
                .map(|(when, event)| format!(" (nearest session event: {event}, {:+.3} s)", when - at))
                .unwrap_or_default();
            println!("- at {at:.3} s: {what}{nearest}");
        }
    }
    criteria.iter().filter(|c| !c.1).count()
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_fits_the_second_half_only() {
        // Warm-up growth in the first half, then +100 KiB per minute.
        let mut points: Vec<(f64, u64, usize)> = (0..10).map(|i| (i as f64 * 6.0, 1000 + i * 500, 5)).collect();
        points.extend((10..=20).map(|i| (i as f64 * 6.0, 6000 + (i - 10) * 10, 5)));
        let slope = slope_kib_per_min(&points);
        assert!((slope - 100.0).abs() < 1e-6, "{slope}");
        assert_eq!(slope_kib_per_min(&points[..1]), 0.0);
    }

    #[test]
    fn too_short_or_unknown_arguments_are_refused() {
        let args = |list: &[&str]| main(list.iter().map(|s| s.to_string()));
        assert!(args(&["--duration", "5"]).is_err());
        assert!(args(&["--network", "wifi"]).is_err());
        assert!(args(&["--bogus"]).is_err());
        assert!(args(&["--help"]).is_ok());
    }
}
