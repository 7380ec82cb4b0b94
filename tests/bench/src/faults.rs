//! `shunt-bench faults`: the fault matrix. For each fault, a fresh stack of `shunt demo`
//! (kubesim, shunt installed from the chart, Deployment `api` with 3 replicas; netns mode
//! with nftables redirects as root, or loopback mode with `--network loopback`), two
//! header sessions (alice and bob intercept), and a steady stream of requests through
//! Service `api` cycling `x-user: alice`, `x-user: bob` and no header, each on a fresh
//! connection with a 5 s timeout. The fault is injected after a warm-up; the stream goes
//! on until the system has recovered (or `--window` seconds), then the run counts:
//!
//! - sent, answered by pods, answered by developers, failed;
//! - failed among requests no session matches (must be 0), not counting a request that
//!   was in flight on a process the fault killed (its connection dies with the process;
//!   it is counted as failed and named in the note);
//! - misrouted: a request answered by a developer it was not meant for (must be 0);
//! - recovery: from the fault to the last request that was not answered as it should be
//!   once everything is back (a session request served by a pod while the session is
//!   meant to be up, or any failure).
//!
//! ```text
//! cargo build --release -p shunt-cli -p shunt-bench && target/release/shunt-bench faults
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use shunt_cli::demo::developer::{Developer, Kind, LocalApp};
use shunt_cli::demo::stack::{container_pid, request, Stack, StackOptions, NS};
use shunt_cli::demo::traffic::served_by;

/// Requests before the fault.
const WARM_UP: Duration = Duration::from_secs(3);
/// Quiet time after the last abnormal answer before a run counts as recovered.
const SETTLED: Duration = Duration::from_secs(5);

/// The faults, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    SidecarKill,
    OperatorKill,
    NewLeader,
    ApiDown,
    CliKill,
    DeveloperHangs,
    MirrorStalls,
    WebhookDown,
    PodDeleted,
}

impl Fault {
    const ALL: [Fault; 9] = [
        Fault::SidecarKill,
        Fault::OperatorKill,
        Fault::NewLeader,
        Fault::ApiDown,
        Fault::CliKill,
        Fault::DeveloperHangs,
        Fault::MirrorStalls,
        Fault::WebhookDown,
        Fault::PodDeleted,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::SidecarKill => "sidecar `kill -9` in one pod",
            Fault::OperatorKill => "operator `kill -9` (kubelet restarts it)",
            Fault::NewLeader => "operator leader's pod deleted (2 replicas: the standby leads)",
            Fault::ApiDown => "kube API unavailable for 10 s",
            Fault::CliKill => "alice's CLI `kill -9`",
            Fault::DeveloperHangs => "bob's local server hangs",
            Fault::MirrorStalls => "a mirror consumer (carol) stalls",
            Fault::WebhookDown => "webhook down while a pod is created",
            Fault::PodDeleted => "a pod deleted mid-traffic",
        }
    }
}

/// One request of the stream.
#[derive(Clone, Debug)]
struct Sent {
    at: Instant,
    user: Option<&'static str>,
    answer: Result<String, String>,
}

/// The counts of one fault run.
struct Row {
    fault: Fault,
    sent: usize,
    by_pods: usize,
    by_developers: usize,
    failed: usize,
    failed_unmatched: usize,
    misrouted: usize,
    recovery: Option<Duration>,
    note: String,
}

struct Options {
    network: kubesim::Network,
    window: Duration,
    only: Option<String>,
    check: bool,
    logs: Option<std::path::PathBuf>,
}

/// Runs the matrix; `args` are the arguments after `faults`.
pub fn main(args: impl Iterator<Item = String>) -> Result<()> {
    let mut options = Options {
        network: if shunt_netns::is_root() {
            kubesim::Network::Netns
        } else {
            kubesim::Network::Loopback
        },
        window: Duration::from_secs(40),
        only: None,
        logs: None,
        check: false,
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--network" => {
                options.network = match args.next().as_deref() {
                    Some("netns") => kubesim::Network::Netns,
                    Some("loopback") => kubesim::Network::Loopback,
                    other => bail!("--network netns|loopback, not {other:?}"),
                }
            }
            "--window" => {
                let secs: u64 = args.next().context("--window needs seconds")?.parse()?;
                options.window = Duration::from_secs(secs.max(10));
            }
            "--only" => options.only = Some(args.next().context("--only needs a word of a fault's name")?),
            "--logs" => options.logs = Some(args.next().context("--logs needs a directory")?.into()),
            "--check" => options.check = true,
            "-h" | "--help" => {
                println!(
                    "Usage: shunt-bench faults [--network netns|loopback] [--window SECS] [--only WORD] [--logs DIR] [--check]\n  \
                     --network  pod networking (default: netns as root, else loopback)\n  \
                     --window   longest time to wait for recovery per fault [default: 40]\n  \
                     --only     run the faults whose name contains WORD (e.g. operator)\n  \
                     --logs DIR write every container's log after each fault into DIR/<fault>/\n  \
                     --check    exit 1 if a request no session matched failed, a request was misrouted,\n  \
                                or a fault did not recover within the window (CI runs this)"
                );
                return Ok(());
            }
            other => bail!("unknown option {other:?}; see shunt-bench faults --help"),
        }
    }
    if options.network == kubesim::Network::Netns && !shunt_netns::is_root() {
        bail!("--network netns needs root");
    }
    let shunt = crate::session::shunt_next_to_me()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?
        .block_on(run(&shunt, &options))
}

async fn run(shunt: &Path, options: &Options) -> Result<()> {
    let mut rows = Vec::new();
    for fault in Fault::ALL {
        if options.only.as_deref().is_some_and(|w| !fault.name().contains(w)) {
            continue;
        }
        eprintln!("fault: {}…", fault.name());
        let row = one(shunt, options, fault)
            .await
            .with_context(|| format!("fault {:?}", fault.name()))?;
        rows.push(row);
    }
    let mode = match options.network {
        kubesim::Network::Netns => "netns mode, nftables redirects",
        kubesim::Network::Loopback => "loopback mode, port takeover",
    };
    println!("## Fault matrix: kubesim ({mode}), 3 replicas, alice and bob intercepting\n");
    println!(
        "Sequential GETs through Service `api` (x-user: alice / bob / none in turn, fresh connection, 5 s timeout).\n"
    );
    println!("| fault | sent | by pods | by developers | failed | failed, no session matched | misrouted | recovery | note |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.fault.name(),
            r.sent,
            r.by_pods,
            r.by_developers,
            r.failed,
            r.failed_unmatched,
            r.misrouted,
            r.recovery.map_or_else(
                || "not within the window".to_owned(),
                |d| format!("{:.1} s", d.as_secs_f64())
            ),
            r.note
        );
    }
    if options.check {
        let broken: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                let mut why = Vec::new();
                if r.failed_unmatched > 0 {
                    why.push(format!(
                        "{} failed requests that no session matched",
                        r.failed_unmatched
                    ));
                }
                if r.misrouted > 0 {
                    why.push(format!("{} misrouted requests", r.misrouted));
                }
                if r.recovery.is_none() {
                    why.push(format!("no recovery within {} s", options.window.as_secs()));
                }
                (!why.is_empty()).then(|| format!("{}: {}", r.fault.name(), why.join(", ")))
            })
            .collect();
        if !broken.is_empty() {
            bail!("the fault matrix failed its checks:\n  {}", broken.join("\n  "));
        }
        println!("\nChecks passed: no unmatched request failed, nothing misrouted, every fault recovered.");
    }
    Ok(())
}

/// Sends requests until `stop`, recording each.
fn stream(service: SocketAddr, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Sent>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let user = [Some("alice"), Some("bob"), None][(i + i / 3) % 3];
            let at = Instant::now();
            let answer = served_by(service, user.map(|u| ("x-user", u)))
                .await
                .map_err(|e| format!("{e:#}"));
            if let Ok(mut log) = log.lock() {
                log.push(Sent { at, user, answer });
            }
            i += 1;
        }
    })
}

/// What a request should have got once the system is back: `Some(developer)` while that
/// developer's session is meant to be up, else a pod.
type Expect = fn(Option<&'static str>) -> Option<&'static str>;

fn sessions_up(user: Option<&'static str>) -> Option<&'static str> {
    user
}

fn alice_gone(user: Option<&'static str>) -> Option<&'static str> {
    user.filter(|u| *u != "alice")
}

/// Pods without a sidecar serve everything themselves: any answer that is not misrouted
/// is right.
fn any_owner(_: Option<&'static str>) -> Option<&'static str> {
    None
}

async fn one(shunt: &Path, options: &Options, fault: Fault) -> Result<Row> {
    let stack = Stack::start(StackOptions {
        network: options.network,
        operator_replicas: if fault == Fault::NewLeader { 2 } else { 1 },
        ..StackOptions::new(shunt.to_owned(), 3)
    })
    .await?;
    let alice = Developer::start(&stack, shunt, "alice", Kind::Intercept, Some("x-user: alice")).await?;
    let bob_app = if fault == Fault::DeveloperHangs {
        LocalApp::Stalled
    } else {
        LocalApp::Echo
    };
    let bob = if fault == Fault::DeveloperHangs {
        None
    } else {
        Some(Developer::start(&stack, shunt, "bob", Kind::Intercept, Some("x-user: bob")).await?)
    };
    stack.wait_routes(if bob.is_some() { 2 } else { 1 }).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let sender = stream(stack.service, stop.clone(), log.clone());
    tokio::time::sleep(WARM_UP).await;

    let injected = Instant::now();
    let mut note = String::new();
    let mut expect: Expect = sessions_up;
    let mut keep = Vec::new();
    let mut alice = Some(alice);
    // When a process on the request path was killed: a request sent before that moment
    // may have been in flight on it, and its connection died with the process.
    let mut killed_at = None;
    match fault {
        Fault::SidecarKill => {
            let pod = stack.pods().await?.into_iter().next().context("no pod")?;
            let pid = init_container_pid(&pod, shunt_proto::names::SIDECAR_CONTAINER)
                .context("the sidecar of the first pod is not running")?;
            kill(pid)?;
            killed_at = Some(Instant::now());
            note = format!("pod {}", pod["metadata"]["name"].as_str().unwrap_or("?"));
        }
        Fault::OperatorKill => stack.kill_operator().await?,
        Fault::ApiDown => {
            stack.cluster.set_api_down(true);
            tokio::time::sleep(Duration::from_secs(10)).await;
            stack.cluster.set_api_down(false);
            note = "every API connection cut, new ones refused, for 10 s (tunnels go through it)".into();
        }
        Fault::NewLeader => {
            let leader = stack.operator_pod().await?;
            let name = leader["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let path = format!("/api/v1/namespaces/shunt-system/pods/{name}");
            let (status, body) = request(&stack.admin, "DELETE", &path, None).await?;
            if status >= 300 {
                bail!("deleting the leader {name} failed ({status}): {body}");
            }
            let new = shunt_cli::demo::stack::poll("a new leader", Duration::from_secs(60), async || {
                let pod = stack.operator_pod().await.ok()?;
                let now = pod["metadata"]["name"].as_str()?.to_owned();
                (now != name && shunt_cli::demo::kube::pod_ready(&pod)).then_some(now)
            })
            .await?;
            note = format!(
                "{name} deleted; {new} leads after {:.1} s",
                injected.elapsed().as_secs_f64()
            );
        }
        Fault::CliKill => {
            if let Some(mut dev) = alice.take() {
                dev.cli.start_kill()?;
                let _ = dev.cli.wait().await;
            }
            expect = alice_gone;
            note = "alice's session ends after the grace period".into();
        }
        Fault::DeveloperHangs => {
            // bob's session comes up now, in front of a local server that never answers.
            keep.push(
                Developer::start_with(&stack, shunt, "bob", Kind::Intercept, Some("x-user: bob"), bob_app).await?,
            );
            note = "bob's requests reach his server and time out there (counted as failed)".into();
        }
        Fault::MirrorStalls => {
            keep.push(
                Developer::start_with(
                    &stack,
                    shunt,
                    "carol",
                    Kind::Mirror,
                    Some("x-user: alice"),
                    LocalApp::Stalled,
                )
                .await?,
            );
            note = "carol mirrors alice's requests into a server that never reads".into();
        }
        Fault::WebhookDown => {
            scale(&stack, "shunt-system", "shunt-webhook", 0).await?;
            wait_no_webhook(&stack).await?;
            scale(&stack, NS, "api", 4).await?;
            let injected_pods = wait_pods(&stack, 4).await?;
            note = format!(
                "{injected_pods} of 4 pods injected while the webhook was down (failurePolicy Ignore); \
                 the uninjected pod serves session requests itself"
            );
            expect = any_owner;
            scale(&stack, "shunt-system", "shunt-webhook", 1).await?;
        }
        Fault::PodDeleted => {
            let pod = stack.pods().await?.into_iter().next().context("no pod")?;
            let name = pod["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let (status, body) = request(
                &stack.admin,
                "DELETE",
                &format!("/api/v1/namespaces/{NS}/pods/{name}"),
                None,
            )
            .await?;
            if status >= 300 {
                bail!("deleting pod {name} failed ({status}): {body}");
            }
            note = format!("pod {name}; the ReplicaSet replaces it");
        }
    }

    // Until recovered (no abnormal answer for SETTLED) or the window ends.
    let deadline = injected + options.window;
    let recovery = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let last_bad = last_abnormal(&log, injected, expect, fault);
        let now = Instant::now();
        let since = last_bad.unwrap_or(injected);
        if now.duration_since(since) >= SETTLED && now.duration_since(injected) >= SETTLED {
            break Some(since.duration_since(injected));
        }
        if now >= deadline {
            break None;
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = sender.await;
    if let Some(dir) = &options.logs {
        let dir = dir.join(format!("{fault:?}"));
        if let Err(error) = write_logs(&stack, &dir).await {
            eprintln!("  cannot write the logs into {}: {error:#}", dir.display());
        }
    }
    drop(keep);
    drop(bob);
    drop(alice);
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(count(fault, &log, injected, killed_at, recovery, note))
}

/// The time of the last request after `from` that was not answered as `expect` says.
fn last_abnormal(log: &Mutex<Vec<Sent>>, from: Instant, expect: Expect, fault: Fault) -> Option<Instant> {
    let log = log.lock().ok()?;
    log.iter()
        .rev()
        .filter(|s| s.at >= from)
        .filter(|s| match (&s.answer, expect(s.user)) {
            // A hung developer's requests reach their server and time out there: delivered,
            // never answered (the stalled server counts them), not a failure of shunt.
            (_, Some("bob")) if fault == Fault::DeveloperHangs => false,
            (Err(_), _) => true,
            (Ok(who), Some(dev)) => who != dev,
            (Ok(who), None) => {
                // With `any_owner`, a developer answering their own header is right too.
                let own = s.user.is_some_and(|u| u == who);
                !who.starts_with("api-") && !own
            }
        })
        .map(|s| s.at)
        .next()
}

/// Counts one fault run. A failed request sent before `killed_at` was in flight on the
/// killed process (the stream is sequential, so there is at most one): it is counted as
/// failed, but not against the check, which is about what shunt does once a fault has
/// happened; the note says so.
fn count(
    fault: Fault,
    log: &[Sent],
    injected: Instant,
    killed_at: Option<Instant>,
    recovery: Option<Duration>,
    note: String,
) -> Row {
    let is_pod = |who: &str| who.starts_with("api-");
    let by_pods = log.iter().filter(|s| s.answer.as_deref().is_ok_and(is_pod)).count();
    let failed = log.iter().filter(|s| s.answer.is_err()).count();
    let in_flight = |s: &Sent| s.answer.is_err() && killed_at.is_some_and(|k| s.at < k);
    let died_with_it = log.iter().filter(|s| in_flight(s)).count();
    let failed_unmatched = log
        .iter()
        .filter(|s| s.user.is_none() && s.answer.is_err() && !in_flight(s))
        .count();
    let misrouted = log
        .iter()
        .filter(|s| match (&s.answer, s.user) {
            (Ok(who), Some(user)) => !is_pod(who) && who != user,
            (Ok(who), None) => !is_pod(who),
            (Err(_), _) => false,
        })
        .count();
    let mut note = note;
    if died_with_it > 0 {
        let sep = if note.is_empty() { "" } else { "; " };
        note = format!("{note}{sep}{died_with_it} request in flight on the killed process failed with it");
    }
    if let Some(failed) = log.iter().find(|s| s.answer.is_err()) {
        let user = failed.user.unwrap_or("no header");
        let at = failed.at.saturating_duration_since(injected).as_secs_f64();
        let why = failed.answer.as_ref().err().map_or("", String::as_str);
        let sep = if note.is_empty() { "" } else { "; " };
        note = format!("{note}{sep}first failure ({user}, {at:+.2} s): {why}");
    }
    Row {
        fault,
        sent: log.len(),
        by_pods,
        by_developers: log.len() - by_pods - failed,
        failed,
        failed_unmatched,
        misrouted,
        recovery,
        note,
    }
}

fn kill(pid: u32) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).context("kill -9")
}

/// The pid of a running init container (a native sidecar).
pub(crate) fn init_container_pid(pod: &Value, name: &str) -> Option<u32> {
    let statuses = pod["status"]["initContainerStatuses"].as_array()?;
    let status = statuses.iter().find(|s| s["name"] == name)?;
    let shaped = json!({"status": {"containerStatuses": [status]}});
    container_pid(&shaped, name)
}

async fn scale(stack: &Stack, ns: &str, deployment: &str, replicas: u32) -> Result<()> {
    let path = format!("/apis/apps/v1/namespaces/{ns}/deployments/{deployment}");
    let (status, body) = request(
        &stack.admin,
        "PATCH",
        &path,
        Some(&json!({"spec": {"replicas": replicas}})),
    )
    .await?;
    if status >= 300 {
        bail!("scaling {ns}/{deployment} failed ({status}): {body}");
    }
    Ok(())
}

/// Waits until the webhook's Service has no endpoint left.
async fn wait_no_webhook(stack: &Stack) -> Result<()> {
    shunt_cli::demo::stack::poll("the webhook to be gone", Duration::from_secs(60), async || {
        let path = "/api/v1/namespaces/shunt-system/endpoints/shunt-webhook";
        let (_, endpoints) = request(&stack.admin, "GET", path, None).await.ok()?;
        let any = endpoints["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["addresses"].as_array().is_some_and(|a| !a.is_empty()));
        (!any).then_some(())
    })
    .await
}

/// Waits for `want` Ready pods of `api`; how many have a sidecar.
async fn wait_pods(stack: &Stack, want: usize) -> Result<usize> {
    shunt_cli::demo::stack::poll("the new pod to run", Duration::from_secs(120), async || {
        let pods = stack.pods().await.ok()?;
        let live: Vec<&Value> = pods
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let ready = live
            .iter()
            .filter(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        (live.len() == want && ready == want).then(|| {
            live.iter()
                .filter(|p| p["metadata"]["labels"][shunt_proto::names::LABEL_INJECTED] == "true")
                .count()
        })
    })
    .await
}

/// Every container's log of namespaces `shop` and `shunt-system` into `dir`.
async fn write_logs(stack: &Stack, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    for ns in [NS, "shunt-system"] {
        let (_, pods) = request(&stack.admin, "GET", &format!("/api/v1/namespaces/{ns}/pods"), None).await?;
        for pod in pods["items"].as_array().into_iter().flatten() {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let containers = ["initContainers", "containers"]
                .iter()
                .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default());
            for c in containers {
                let container = c["name"].as_str().unwrap_or_default();
                let path = format!("/api/v1/namespaces/{ns}/pods/{name}/log?container={container}");
                let (_, log) = request(&stack.admin, "GET", &path, None).await?;
                let text = log.as_str().map_or_else(|| log.to_string(), str::to_owned);
                std::fs::write(dir.join(format!("{name}.{container}.log")), text)?;
            }
        }
    }
    Ok(())
}
