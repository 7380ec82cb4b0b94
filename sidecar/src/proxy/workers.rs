//! The proxy's threads: one single-threaded runtime per thread (`SHUNT_WORKERS`), and each
//! accepted connection handed whole to the least busy of them.
//!
//! A connection and everything it spawns (its upstream connections' drivers, its HTTP/2
//! streams, its mirror copies) then runs on one thread: a request wakes tasks on the
//! thread that is already running, so there is no work stealing and no cross-thread
//! wake-up (a futex call each) on the request path. A work-stealing runtime moved the
//! halves of one proxied request between the two cores several times per request.
//!
//! Connections are spread by count, not by hashing, so 8 long-lived HTTP/2 connections
//! land 4 and 4. The accept loops and the control plane (operator connection, redirect,
//! admin port) stay on the main runtime.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The proxy threads. Dropping this ends them, and with them every connection still on them.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Connections being served on this thread.
    load: Arc<AtomicUsize>,
    /// Dropped to end the thread.
    _stop: oneshot::Sender<()>,
}

impl Workers {
    /// Starts `count` threads, each running its own single-threaded runtime.
    pub fn start(count: usize) -> io::Result<Workers> {
        let workers = (0..count.max(1))
            .map(|i| {
                let runtime = Builder::new_current_thread().enable_all().build()?;
                let handle = runtime.handle().clone();
                let (stop, stopped) = oneshot::channel::<()>();
                std::thread::Builder::new()
                    .name(format!("shunt-proxy-{i}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    })?;
                Ok(Worker {
                    handle,
                    load: Arc::default(),
                    _stop: stop,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok(Workers { workers })
    }

    /// Runs `conn` (one connection, start to end) on the thread serving the fewest
    /// connections. Sockets in it must be registered on that thread (`from_std` inside).
    pub fn spawn<F>(&self, conn: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self.workers.iter().min_by_key(|w| w.load.load(Ordering::Relaxed)) else {
            return;
        };
        let load = Counted::new(worker.load.clone());
        worker.handle.spawn(async move {
            let _load = load;
            conn.await;
        });
    }

    /// Connections each thread is serving now.
    pub fn loads(&self) -> Vec<usize> {
        self.workers.iter().map(|w| w.load.load(Ordering::Relaxed)).collect()
    }
}

/// One unit of a thread's load, given back when the connection ends however it ends.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(load: Arc<AtomicUsize>) -> Counted {
        load.fetch_add(1, Ordering::Relaxed);
        Counted(load)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connections_spread_over_threads_by_count_and_stay_on_theirs() {
        let workers = Workers::start(2).expect("threads start");
        let (names_tx, names_rx) = std::sync::mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..4 {
            let (release, released) = oneshot::channel::<()>();
            releases.push(release);
            let names_tx = names_tx.clone();
            workers.spawn(async move {
                let before = std::thread::current().name().map(str::to_owned);
                let _ = released.await;
                tokio::task::yield_now().await;
                let after = std::thread::current().name().map(str::to_owned);
                names_tx.send((before, after)).expect("the test listens");
            });
        }
        assert_eq!(workers.loads(), vec![2, 2]);
        drop(releases);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (before, after) = names_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("every connection ends");
            assert_eq!(before, after, "a connection moved threads");
            seen.push(before.expect("worker threads are named"));
        }
        seen.sort();
        assert_eq!(
            seen,
            ["shunt-proxy-0", "shunt-proxy-0", "shunt-proxy-1", "shunt-proxy-1"]
        );
        for _ in 0..50 {
            if workers.loads() == [0, 0] {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("loads not given back: {:?}", workers.loads());
    }
}
