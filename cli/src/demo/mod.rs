//! `shunt demo`: the whole system on a local test cluster, without root. Starts kubesim,
//! installs shunt from the Helm chart's rendered manifests ([`install`], [`stack`]), a 3-replica echo Deployment behind a
//! Service; alice and bob intercept it with their headers and carol mirrors it
//! ([`developer`], the real `shunt` as child processes); then sends requests through the
//! Service with `x-user: alice`, `x-user: bob` or no header in turn, prints who answered
//! each, and sums up. Exits non-zero if a request was misrouted or failed.
//!
//! [`pods`] holds the hidden `__sidecar`/`__echo` entry points the pods run.

pub mod developer;
pub mod install;
pub mod kube;
pub mod pods;
pub mod stack;
pub mod traffic;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use developer::{Developer, Kind};
use stack::{Stack, StackOptions};

/// Arguments of `shunt demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Requests to send through the Service.
    #[arg(long, default_value_t = 60)]
    pub requests: u32,
    /// Replicas of the demo Deployment.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub replicas: u32,
}

/// Who a request was meant for: the header it carries. Round-robin, rotated every 3
/// requests so that kubesim's round-robin balancer does not pair each header with one pod.
fn header_for(i: u32) -> Option<&'static str> {
    match (i + i / 3) % 3 {
        0 => Some("alice"),
        1 => Some("bob"),
        _ => None,
    }
}

/// The tally of the demo.
#[derive(Debug, Default)]
struct Tally {
    by_pod: BTreeMap<String, u32>,
    alice: u32,
    bob: u32,
    misrouted: u32,
    failed: u32,
}

/// Runs the demo.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let shunt = std::env::current_exe()?;
    let started = Instant::now();
    eprintln!(
        "starting kubesim (loopback network, no root), installing shunt from its Helm chart (operator and webhook pods), deployment/api with {} replicas…",
        args.replicas
    );
    let stack = Stack::start(StackOptions::new(shunt.clone(), args.replicas)).await?;
    eprintln!(
        "cluster ready in {:.1} s: {} pods injected, sidecars connected to the operator's hub",
        started.elapsed().as_secs_f64(),
        args.replicas
    );
    let alice = Developer::start(&stack, &shunt, "alice", Kind::Intercept, Some("x-user: alice")).await?;
    let bob = Developer::start(&stack, &shunt, "bob", Kind::Intercept, Some("x-user: bob")).await?;
    let carol = Developer::start(&stack, &shunt, "carol", Kind::Mirror, None).await?;
    stack.wait_routes(3).await?;
    println!("sessions: alice intercepts `x-user: alice`, bob intercepts `x-user: bob`, carol mirrors everything");
    println!(
        "sending {} requests through Service api ({}):\n",
        args.requests, stack.service
    );
    println!("{:>4}  {:<16} answered by", "#", "header");

    let mut tally = Tally::default();
    for i in 0..args.requests {
        let user = header_for(i);
        let header = user.map(|u| ("x-user", u));
        let shown = user.map_or_else(|| "-".to_owned(), |u| format!("x-user: {u}"));
        let outcome = traffic::served_by(stack.service, header).await;
        let (verdict, line) = match (&outcome, user) {
            (Err(e), _) => {
                tally.failed += 1;
                ("FAILED", format!("{e:#}"))
            }
            (Ok(who), Some(u)) if who == u => {
                if u == "alice" {
                    tally.alice += 1;
                } else {
                    tally.bob += 1;
                }
                ("ok", format!("{who}'s laptop"))
            }
            (Ok(who), None) if who.starts_with("api-") => {
                *tally.by_pod.entry(who.clone()).or_default() += 1;
                ("ok", format!("pod {who}"))
            }
            (Ok(who), _) => {
                tally.misrouted += 1;
                ("MISROUTED", who.clone())
            }
        };
        println!("{:>4}  {:<16} {:<28} {verdict}", i + 1, shown, line);
    }
    // Mirror copies travel on their own; give the last ones a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    while carol.served() < u64::from(args.requests) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut rows = vec![("requests sent".to_owned(), args.requests.to_string())];
    rows.extend(
        tally
            .by_pod
            .iter()
            .map(|(pod, n)| (format!("answered by pod {pod}"), n.to_string())),
    );
    rows.extend([
        (
            "answered by alice".to_owned(),
            format!("{} (her laptop served {})", tally.alice, alice.served()),
        ),
        (
            "answered by bob".to_owned(),
            format!("{} (his laptop served {})", tally.bob, bob.served()),
        ),
        (
            "mirrored to carol".to_owned(),
            format!("{} of {}", carol.served(), args.requests),
        ),
        ("misrouted".to_owned(), tally.misrouted.to_string()),
        ("failed".to_owned(), tally.failed.to_string()),
    ]);
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    println!("\nsummary");
    for (label, value) in rows {
        println!("  {label:<width$}  {value}");
    }
    drop((alice, bob, carol));
    drop(stack);
    eprintln!("cleaned up: cluster, pods and sessions stopped");
    anyhow::ensure!(
        tally.misrouted == 0 && tally.failed == 0,
        "{} requests misrouted and {} failed",
        tally.misrouted,
        tally.failed
    );
    Ok(())
}
