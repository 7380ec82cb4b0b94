//! Ctrl-C and SIGTERM: instead of dying with the pod, namespace and temp files left
//! behind, the benchmark notes the signal, stops the running load generator, and lets
//! every wait return an error, so `main` unwinds through the Drop guards.
//!
//! The signals are blocked in every thread and taken by one thread with `sigwait`
//! (no async-signal-safety concerns, no unsafe). `std::process::Command` resets the
//! signal mask in children, so the tools it starts still die on Ctrl-C as usual.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The load generator running now, stopped when a signal arrives.
static CLIENT: Mutex<Option<u32>> = Mutex::new(None);

/// Takes SIGINT, SIGTERM and SIGHUP from here on. Call before starting any thread.
pub fn install() -> Result<()> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block()?;
    std::thread::spawn(move || loop {
        let Ok(signal) = set.wait() else { continue };
        eprintln!("shunt-bench: {signal}, stopping and cleaning up");
        INTERRUPTED.store(true, Ordering::SeqCst);
        if let Some(pid) = *CLIENT.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    });
    Ok(())
}

/// The error that unwinds the benchmark after a signal (`main` exits 130 on it).
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Fails once a signal has arrived.
pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!(Interrupted);
    }
    Ok(())
}

/// Sleeps for `d`, returning early with an error on a signal.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Polls `f` every 50 ms until it returns `Some`, `timeout` passes, or a signal arrives.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(Duration::from_millis(50))?;
    }
}

/// Marks `pid` as the running load generator until the guard drops.
pub fn client(pid: u32) -> ClientGuard {
    *CLIENT.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
    ClientGuard
}

/// See [`client`].
pub struct ClientGuard;

impl Drop for ClientGuard {
    fn drop(&mut self) {
        *CLIENT.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
