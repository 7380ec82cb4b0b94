//! End to end faults on kubesim (loopback mode, no root), all real code as in `e2e.rs`:
//! test 6 of issue 5 (the operator killed and restarted during sessions) and the second
//! half of test 7 (a stalled mirror consumer does not slow the clients).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shunt_cli::demo::developer::{Developer, Kind, LocalApp};
use shunt_cli::demo::stack::{poll, Stack, StackOptions};
use shunt_cli::demo::traffic::served_by;

const GRACE: Duration = Duration::from_secs(2);

/// The tests of this file run one at a time: the latency test measures on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn shunt() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shunt"))
}

async fn stack(replicas: u32) -> Stack {
    Stack::start(StackOptions {
        session_grace: GRACE,
        ..StackOptions::new(shunt(), replicas)
    })
    .await
    .unwrap()
}

async fn intercept(stack: &Stack, name: &str) -> Developer {
    let header = format!("x-user: {name}");
    Developer::start(stack, &shunt(), name, Kind::Intercept, Some(&header))
        .await
        .unwrap()
}

/// One request of the background traffic: when it was sent, with which `x-user`, and who
/// answered (or why it failed).
#[derive(Clone, Debug)]
struct Sent {
    at: Instant,
    user: Option<&'static str>,
    answer: Result<String, String>,
}

/// Sends requests with alice's, bob's and no header in turn until `stop`, recording each.
fn traffic(stack: &Stack, stop: Arc<AtomicBool>, log: Arc<Mutex<Vec<Sent>>>) -> tokio::task::JoinHandle<()> {
    let service = stack.service;
    tokio::spawn(async move {
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let user = [Some("alice"), Some("bob"), None][(i + i / 3) % 3];
            let at = Instant::now();
            let answer = served_by(service, user.map(|u| ("x-user", u)))
                .await
                .map_err(|e| format!("{e:#}"));
            log.lock().unwrap().push(Sent { at, user, answer });
            i += 1;
        }
    })
}

fn sent_count(log: &Mutex<Vec<Sent>>) -> usize {
    log.lock().unwrap().len()
}

/// Test 6: the operator's process is killed (`kill -9`, no drain) and restarted by the
/// kubelet, as on a cluster, while alice and bob intercept and traffic flows: requests without a session header never
/// fail; session requests are served by the pods while the operator is away (never by
/// the wrong developer, never failing); once the CLIs reconnect, they reach alice and bob
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_fails_open_and_the_sessions_come_back() {
    let _serial = SERIAL.lock().await;
    let stack = stack(3).await;
    let mut alice = intercept(&stack, "alice").await;
    let mut bob = intercept(&stack, "bob").await;
    stack.wait_routes(2).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let sender = traffic(&stack, stop.clone(), log.clone());
    poll("30 requests before the kill", Duration::from_secs(30), async || {
        (sent_count(&log) >= 30).then_some(())
    })
    .await
    .unwrap();

    let old_pid = stack.operator_pid().await.unwrap();
    stack.kill_operator().await.unwrap();
    let killed = Instant::now();
    let at_kill = sent_count(&log);
    poll(
        "30 requests while the operator is away",
        Duration::from_secs(30),
        async || (sent_count(&log) >= at_kill + 30).then_some(()),
    )
    .await
    .unwrap();
    // The kubelet restarts the container (back-off 1 s); the window ends when the new
    // process exists, before it can serve anything.
    poll(
        "the kubelet to restart the operator",
        Duration::from_secs(30),
        async || {
            let pid = stack.operator_pid().await.ok()?;
            (pid != old_pid).then_some(())
        },
    )
    .await
    .unwrap();
    let restarted = Instant::now();
    // Fail-open while the operator was away, checked before waiting for the recovery.
    check(&log.lock().unwrap(), killed, restarted, "before the CLIs reconnected");

    // Back: the latest alice and bob requests reach them again (the CLIs reconnect with
    // back-off up to 10 s, the sidecars re-fetch the routes).
    let recovered = poll(
        "alice's and bob's requests to reach them again",
        Duration::from_secs(45),
        async || {
            for dev in [&mut alice, &mut bob] {
                if let Ok(Some(status)) = dev.cli.try_wait() {
                    panic!("{}'s shunt exited ({status}):\n{}", dev.name, dev.log());
                }
            }
            let since = sent_count(&log);
            // A fresh round of each header, sent after this check started.
            let seen = poll("a new round", Duration::from_secs(10), async || {
                let log = log.lock().unwrap();
                (log.len() >= since + 6).then(|| log[since..].to_vec())
            })
            .await
            .ok()?;
            let back = |user| {
                seen.iter()
                    .filter(|s| s.user == Some(user))
                    .all(|s| s.answer.as_deref() == Ok(user))
            };
            (back("alice") && back("bob")).then(|| restarted.elapsed())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nalice's shunt said:\n{}\nbob's:\n{}", alice.log(), bob.log()));
    stop.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    check(&log.lock().unwrap(), killed, restarted, "over the whole run");
    println!("alice and bob reached again {recovered:?} after the restart");
}

/// No request failed or reached the wrong developer, and every request sent while the
/// operator was away (`killed`..`restarted`) was answered by a pod.
fn check(log: &[Sent], killed: Instant, restarted: Instant, when: &str) {
    let failed: Vec<&Sent> = log.iter().filter(|s| s.answer.is_err()).collect();
    let misrouted: Vec<&Sent> = log
        .iter()
        .filter(|s| match (&s.answer, s.user) {
            (Ok(who), Some(user)) => who != user && !who.starts_with("api-"),
            (Ok(who), None) => !who.starts_with("api-"),
            (Err(_), _) => false,
        })
        .collect();
    let outage: Vec<&Sent> = log.iter().filter(|s| s.at >= killed && s.at < restarted).collect();
    let by_pods = outage
        .iter()
        .filter(|s| s.answer.as_deref().is_ok_and(|w| w.starts_with("api-")))
        .count();
    println!(
        "{when}: {} requests, {} failed, {} misrouted; operator away {:?}: {} requests, {by_pods} answered by pods",
        log.len(),
        failed.len(),
        misrouted.len(),
        restarted - killed,
        outage.len(),
    );
    assert!(
        failed.is_empty(),
        "{when}: {} requests failed: {failed:#?}",
        failed.len()
    );
    assert!(misrouted.is_empty(), "{when}: misrouted: {misrouted:#?}");
    assert_eq!(by_pods, outage.len(), "while the operator was away: {outage:#?}");
}

/// p99 of `n` requests through the Service with carol's header and of `n` without,
/// interleaved (same load, same moment); each checked to be a pod's answer.
async fn p99(stack: &Stack, n: usize) -> (Duration, Duration) {
    let mut took = [Vec::with_capacity(n), Vec::with_capacity(n)];
    for i in 0..2 * n {
        let header = (i % 2 == 0).then_some(("x-user", "carol"));
        let start = Instant::now();
        let who = served_by(stack.service, header)
            .await
            .unwrap_or_else(|e| panic!("request {i} failed: {e:#}"));
        took[i % 2].push(start.elapsed());
        assert!(who.starts_with("api-"), "request {i} answered by {who}");
    }
    let [mut carol, mut other] = took;
    carol.sort();
    other.sort();
    (carol[n * 99 / 100 - 1], other[n * 99 / 100 - 1])
}

/// Test 7, second half: carol mirrors into a local app that never answers; the clients'
/// requests do not wait for it (the p99s with and without her mirror are printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_mirror_consumer_does_not_slow_the_clients() {
    let _serial = SERIAL.lock().await;
    let stack = stack(3).await;
    p99(&stack, 30).await; // warm up
    let (without, _) = p99(&stack, 300).await;

    let mut carol = Developer::start_with(
        &stack,
        &shunt(),
        "carol",
        Kind::Mirror,
        Some("x-user: carol"),
        LocalApp::Stalled,
    )
    .await
    .unwrap();
    stack.wait_routes(1).await.unwrap();
    let (with, unmirrored) = p99(&stack, 300).await;
    let held = carol.served();
    assert!(
        held > 0,
        "carol's stalled app never got a copy: the test measured nothing"
    );
    // Her CLI bounds the copies waiting on her app; the rest are dropped and counted.
    assert!(
        held <= shunt_cli::forward::MIRROR_IN_FLIGHT as u64,
        "her CLI holds {held} connections to the stalled app"
    );
    assert!(carol.cli.try_wait().unwrap().is_none(), "carol's shunt exited");

    println!(
        "client p99 (300 requests each): before carol's session {without:?}; during it, mirrored to her stalled app \
         {with:?}, not mirrored {unmirrored:?}"
    );
    // What a user must observe: no request waits for the stalled consumer (her app never
    // answers, so a request that waited would not come back at all). How much a mirror
    // costs in latency is a speed figure for the benchmarks, not for a timed test.
    assert!(
        with < Duration::from_millis(500),
        "requests mirrored to a stalled consumer waited for it: p99 {with:?} (not mirrored: {unmirrored:?})"
    );
}
