//! The redirect under a stream of fresh connections (each redirected, or not, by its own
//! SYN) in a real pod namespace: lease renewals and routes coming and going lose nothing.
//!
//! Needs root; with `SHUNT_REQUIRE_ROOT=1` (CI) a non-root run fails instead of passing.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use shunt_netns::root_available;
use support::world::*;
use support::*;

/// A client process sending GETs on fresh connections until its stdin closes; it prints
/// `sent N` and one line per failure. Arguments: `host:port`, then `alternate` (every
/// other request has alice's header) or `alice` (all have it), then optionally the name
/// that must serve alice's requests (the echo server's `x-served-by`).
const CHURN_CLIENT: &str = r#"
import socket, sys, threading
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
host, port = sys.argv[1].rsplit(":", 1)
every = sys.argv[2]
expect = sys.argv[3].encode() if len(sys.argv) > 3 else None
n = 0
while not stop.is_set():
    alice = every == "alice" or n % 2 == 1
    header = "x-user: alice\r\n" if alice else ""
    try:
        s = socket.create_connection((host, int(port)), timeout=3)
        s.sendall(("GET / HTTP/1.1\r\nhost: pod\r\n%sconnection: close\r\n\r\n" % header).encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        served = [l[12:].strip() for l in head.split(b"\r\n") if l.startswith(b"x-served-by:")]
        if not (data.startswith(b"HTTP/1.") and data[8:13] == b" 200 "):
            print("failed: answer %r" % data[:80], flush=True)
        elif alice and expect is not None and served != [expect]:
            print("failed: request %d served by %r" % (n, served), flush=True)
    except Exception as e:
        print("failed: %s" % e, flush=True)
    n += 1
print("sent %d" % n, flush=True)
"#;

/// [`CHURN_CLIENT`] running in the background; killed if the test fails first.
struct ChurnClient(Option<std::process::Child>);

impl ChurnClient {
    fn start(args: &[&str]) -> ChurnClient {
        let child = std::process::Command::new("python3")
            .args(["-c", CHURN_CLIENT])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the client");
        ChurnClient(Some(child))
    }

    /// Stops the client; how many requests it sent and its failure lines.
    async fn finish(mut self) -> (usize, Vec<String>) {
        let mut child = self.0.take().unwrap();
        drop(child.stdin.take());
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        let failures = out
            .lines()
            .filter(|l| l.starts_with("failed"))
            .map(str::to_owned)
            .collect();
        let sent = out
            .lines()
            .find_map(|l| l.strip_prefix("sent "))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the client did not finish: {out}"));
        (sent, failures)
    }
}

impl Drop for ChurnClient {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The lease is renewed every second (flush + add in one batch); a renewal must never
/// leave a moment in which the port is not in the set. Fresh connections, each redirected
/// by its own SYN, all carry alice's header for over ten renewals: every one must reach
/// her, none the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewals_leave_no_gap_for_fresh_connections() {
    if !root_available("renewal gap") {
        return;
    }
    let w = world(true).await;
    let alice = w.developer("dev-alice").await;
    w.set_routes(&[route("alice", "steal", ALICE, &alice.addr.to_string())]);
    eventually("alice's route active", Duration::from_secs(5), || {
        (who(&w.url("/"), ALICE)? == "dev-alice").then_some(())
    });
    const RENEWALS: &str = "shunt_sidecar_lease_renewals_total{result=\"ok\"}";
    let renewed = metric(&w.admin, RENEWALS);
    let (alice_before, app_before) = (alice.count(), w.app.as_ref().unwrap().count());
    let client = ChurnClient::start(&[&w.base, "alice", "dev-alice"]);
    let started = Instant::now();
    eventually("ten renewals and ten seconds", Duration::from_secs(30), || {
        (started.elapsed() >= Duration::from_secs(10) && metric(&w.admin, RENEWALS) >= renewed + 10.0).then_some(())
    });
    let (sent, failures) = client.finish().await;
    let renewals = metric(&w.admin, RENEWALS) - renewed;
    eprintln!(
        "renewal gap: {sent} fresh connections over {:?} and {renewals} renewals, {} failed",
        started.elapsed(),
        failures.len()
    );
    assert!(sent > 200, "the client sent only {sent} requests");
    assert!(failures.is_empty(), "{} of {sent} failed: {failures:?}", failures.len());
    assert_eq!(
        w.app.as_ref().unwrap().count() - app_before,
        0,
        "the app saw none of them"
    );
    assert!(alice.count() - alice_before >= sent as u64);
}

/// Routes coming and going under a stream of fresh connections lose nothing. Each
/// activation used to switch the kernel's connection tracking on under live connections
/// and lose about one request in three to five activations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_coming_and_going_under_load_lose_no_request() {
    if !root_available("route churn") {
        return;
    }
    // The app is a process of its own, as in a real pod (an in-process app shares the
    // test's scheduler, which hides the timing this test is about).
    let w = world(false).await;
    let mut app = w.pod.command("python3");
    app.args(["-m", "http.server", "--bind", "0.0.0.0", "8080"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    w.pod.spawn(app).unwrap();
    eventually("app listening", Duration::from_secs(10), || {
        w.pod
            .run("ss", &["-Hltn", "sport = :8080"])
            .ok()
            .filter(|s| s.contains("8080"))
    });
    let alice = w.developer("dev-alice").await;
    let client = ChurnClient::start(&[&w.base, "alternate"]);
    const ACTIVATIONS: usize = 10;
    let on = [route("alice", "steal", ALICE, &alice.addr.to_string())];
    for _ in 0..ACTIVATIONS {
        w.set_routes(&on);
        eventually("redirecting", Duration::from_secs(5), || w.redirecting().then_some(()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        w.set_routes(&[]);
        eventually("emptied", Duration::from_secs(5), || (!w.redirecting()).then_some(()));
        // Past the listener's linger and the old drain, so each activation starts from
        // dormant (where the table used to be deleted).
        tokio::time::sleep(Duration::from_millis(2200)).await;
    }
    let (sent, failures) = client.finish().await;
    eprintln!(
        "route churn: {sent} requests over {ACTIVATIONS} activations, {} failed",
        failures.len()
    );
    assert!(sent > 1000, "the client sent only {sent} requests");
    assert!(failures.is_empty(), "{} of {sent} failed: {failures:?}", failures.len());
}
