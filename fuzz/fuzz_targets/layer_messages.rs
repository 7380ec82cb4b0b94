//! The layer ↔ CLI messages of `shunt exec` (one JSON line each way on a Unix socket).
//!
//! Input: what a process sends on the CLI's layer socket. Both sides decode it:
//! - the layer's answer decoder (`shunt_layer::client::decode_answer`) gets the bytes as
//!   an answer: no panic, and what decodes re-encodes to the same answer;
//! - the CLI's real per-connection code (`shunt_cli::exec::server::answer_one`, over a
//!   socket pair) gets them as a question, with a fake pod network that resolves some
//!   names and opens connections. Invariants: no panic; the CLI answers at most one
//!   line, which the layer's decoder accepts; a `port` answer is a loopback relay that
//!   takes one connection; the connection's task ends within [`BOUND`].
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use libfuzzer_sys::fuzz_target;
use shunt_cli::exec::server::{answer_one, LocalRule, Remote, RemoteStream, Shared};
use shunt_layer::client::decode_answer;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixStream};
use tokio::runtime::Runtime;

/// Longest one question may take, relay included (the CLI's own bounds are shorter).
const BOUND: Duration = Duration::from_secs(15);
/// Longest answer read (the layer gives up past 1 MiB).
const MAX_ANSWER: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(answer) = decode_answer(data) {
        let json = serde_json::to_vec(&answer).expect("an answer serialises");
        assert_eq!(
            decode_answer(&json).as_ref(),
            Ok(&answer),
            "{answer:?} does not round-trip"
        );
    }
    runtime().block_on(async {
        match tokio::time::timeout(BOUND, ask(data)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("client I/O failed: {e}"),
            Err(_) => panic!("the CLI did not finish one layer connection within {BOUND:?}"),
        }
    });
});

/// Sends `data` as one layer connection and checks the CLI's answer.
async fn ask(data: &[u8]) -> std::io::Result<()> {
    let rules = ["192.168.0.0/16", "10.9.9.9:5432"].map(|r| r.parse::<LocalRule>().expect("a valid rule"));
    let shared = Shared::new(vec![(8080, 3000)], rules.to_vec(), Some(Arc::new(FakePod)));
    let (mut ours, theirs) = UnixStream::pair()?;
    let task = tokio::spawn(answer_one(theirs, shared));
    // The CLI may answer (or give up) before reading everything.
    if ours.write_all(data).await.is_ok() {
        let _ = ours.shutdown().await;
    }
    let mut reply = Vec::new();
    match (&mut ours).take(MAX_ANSWER).read_to_end(&mut reply).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(e),
    }
    if !reply.is_empty() {
        assert_eq!(
            reply.iter().position(|b| *b == b'\n'),
            Some(reply.len() - 1),
            "the answer is not exactly one line: {:?}",
            String::from_utf8_lossy(&reply)
        );
        let answer =
            decode_answer(&reply).unwrap_or_else(|e| panic!("the layer cannot decode the CLI's answer {reply:?}: {e}"));
        if let Some(port) = answer.port {
            // The program's one connection to the relay, closed at once.
            drop(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?);
        }
    }
    if let Err(e) = task.await {
        panic!("the CLI's connection task failed: {e}");
    }
    Ok(())
}

/// A pod network without a network: names of even length resolve, connections to port
/// 80 open (as a stream that ends at once), everything else is refused.
struct FakePod;

impl Remote for FakePod {
    fn connect<'a>(&'a self, authority: &'a str) -> BoxFuture<'a, Result<RemoteStream, String>> {
        Box::pin(async move {
            if authority.ends_with(":80") {
                let (stream, _peer) = tokio::io::duplex(64);
                Ok(Box::new(stream) as RemoteStream)
            } else {
                Err(format!("{authority}: refused by the fake pod"))
            }
        })
    }

    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(async move {
            if name.len().is_multiple_of(2) {
                Ok(vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 12))])
            } else {
                Err(format!("{name}: no such host in the fake pod"))
            }
        })
    }
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        ignore_sigpipe();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// What Rust's `main` does before any code runs: a write to a socket the peer closed is
/// an `EPIPE` error, not a fatal signal. libFuzzer's own `main` leaves SIGPIPE fatal.
fn ignore_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; it
    // runs once, before the harness starts any thread that writes to a socket.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}
