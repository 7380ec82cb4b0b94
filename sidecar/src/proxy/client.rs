//! Outgoing HTTP connections (to the app and to route upstreams), pooled per destination.
//!
//! Built on hyper's connection API rather than a ready-made client because failing open
//! needs one thing those clients hide: when a request could not be sent (connection
//! refused, or a pooled connection that turned out dead), the request **with its body
//! untouched** comes back to the caller ([`SendError::Unsent`]), who then lets the app
//! serve it. Only a request whose bytes already left is an error for the client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::OutBody;

/// How long a connection attempt may take before the destination counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle HTTP/1.1 connections kept per destination.
const MAX_IDLE_PER_DEST: usize = 64;

/// Which protocol to speak to a destination: the one the client spoke to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// HTTP/1.1 (keep-alive, upgrades).
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// A failed send.
#[derive(Debug)]
pub enum SendError {
    /// Nothing was sent: the request comes back untouched, with why.
    Unsent(Box<Request<OutBody>>, String),
    /// The request was (partly) sent; it is gone.
    Sent(hyper::Error),
}

/// Idle HTTP/1.1 connections per destination, each with the thread that drives it: a
/// connection is only reused on its own thread (`proxy::workers`), because using one from
/// another thread makes every request wake that thread (an eventfd write each way).
type H1Pool = HashMap<String, Vec<(ThreadId, http1::SendRequest<OutBody>)>>;

/// Upstream HTTP/1.1 connections kept by one client connection.
const STICKY_SLOTS: usize = 4;

/// The HTTP/1.1 connections one client connection uses onwards, one per destination.
///
/// Requests on an HTTP/1.1 connection arrive one after another, so the client
/// connection can keep "its" upstream connections without touching the shared pool:
/// no lock contention and no search on the hot path. When the client connection
/// closes, its connections go back to the shared pool.
pub struct Sticky {
    clients: Clients,
    slots: Mutex<Vec<(Box<str>, http1::SendRequest<OutBody>)>>,
    /// HTTP/2 client connections get their own HTTP/2 connection onwards per destination,
    /// so the streams of different clients are driven by different tasks (cores).
    h2: Mutex<Vec<(Box<str>, http2::SendRequest<OutBody>)>>,
}

impl Sticky {
    /// An empty set for a new client connection.
    pub fn new(clients: Clients) -> Sticky {
        Sticky {
            clients,
            slots: Mutex::new(Vec::new()),
            h2: Mutex::new(Vec::new()),
        }
    }

    fn take(&self, dest: &str) -> Option<http1::SendRequest<OutBody>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|(_, s)| !s.is_closed());
        let i = slots.iter().position(|(d, s)| &**d == dest && s.is_ready())?;
        Some(slots.swap_remove(i).1)
    }

    fn h2(&self, dest: &str) -> Option<http2::SendRequest<OutBody>> {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.retain(|(_, s)| !s.is_closed());
        h2.iter().find(|(d, _)| &**d == dest).map(|(_, s)| s.clone())
    }

    fn put_h2(&self, dest: &str, sender: http2::SendRequest<OutBody>) {
        let mut h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        if h2.len() < STICKY_SLOTS && !h2.iter().any(|(d, _)| &**d == dest) {
            h2.push((dest.into(), sender));
        }
    }

    fn put(&self, dest: &str, sender: http1::SendRequest<OutBody>) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() < STICKY_SLOTS {
            slots.push((dest.into(), sender));
        } else {
            drop(slots);
            self.clients.park_h1(dest, sender, false);
        }
    }
}

impl Drop for Sticky {
    fn drop(&mut self) {
        let slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|p| p.into_inner()));
        for (dest, sender) in slots {
            if !sender.is_closed() {
                self.clients.park_h1(&dest, sender, false);
            }
        }
    }
}

/// A pool of connections to many destinations, shared by all proxy connections.
#[derive(Clone, Default)]
pub struct Clients {
    h1: Arc<Mutex<H1Pool>>,
    h2: Arc<Mutex<HashMap<String, http2::SendRequest<OutBody>>>>,
}

impl Clients {
    /// Sends `req` to `dest` (`host:port`), reusing a pooled connection when one is ready.
    /// For an HTTP/1.1 upgrade the connection is not returned to the pool.
    /// With `sticky`, HTTP/1.1 connections are taken from and returned to the client
    /// connection's own set first.
    pub async fn send(
        &self,
        dest: &str,
        proto: Proto,
        req: Request<OutBody>,
        sticky: Option<&Sticky>,
    ) -> Result<Response<Incoming>, SendError> {
        match proto {
            Proto::Http1 => self.send_h1(dest, req, sticky).await,
            Proto::Http2 => self.send_h2(dest, req, sticky).await,
        }
    }

    fn keep_h1(&self, dest: &str, sender: http1::SendRequest<OutBody>, upgrade: bool, sticky: Option<&Sticky>) {
        match sticky {
            Some(sticky) if !upgrade => sticky.put(dest, sender),
            _ => self.park_h1(dest, sender, upgrade),
        }
    }

    async fn send_h1(
        &self,
        dest: &str,
        mut req: Request<OutBody>,
        sticky: Option<&Sticky>,
    ) -> Result<Response<Incoming>, SendError> {
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        // A pooled connection may have been closed by the peer just now; then the request
        // comes back unsent and goes out once more on a fresh connection.
        let reused = sticky.and_then(|s| s.take(dest)).or_else(|| self.idle_h1(dest));
        if let Some(mut sender) = reused {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.keep_h1(dest, sender, upgrade, sticky);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(SendError::Sent(e.into_error())),
                },
            }
        }
        let io = match connect(dest).await {
            Ok(io) => io,
            Err(why) => return Err(SendError::Unsent(Box::new(req), why)),
        };
        let (mut sender, conn) = match http1::Builder::new().handshake(io).await {
            Ok(pair) => pair,
            Err(e) => return Err(SendError::Unsent(Box::new(req), e.to_string())),
        };
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
            }
        });
        if let Err(e) = sender.ready().await {
            return Err(SendError::Unsent(Box::new(req), e.to_string()));
        }
        match sender.try_send_request(req).await {
            Ok(resp) => {
                self.keep_h1(dest, sender, upgrade, sticky);
                Ok(resp)
            }
            Err(mut e) => match e.take_message() {
                Some(back) => Err(SendError::Unsent(Box::new(back), e.into_error().to_string())),
                None => Err(SendError::Sent(e.into_error())),
            },
        }
    }

    fn idle_h1(&self, dest: &str) -> Option<http1::SendRequest<OutBody>> {
        let mut pool = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = pool.get_mut(dest)?;
        idle.retain(|(_, s)| !s.is_closed());
        let here = thread::current().id();
        let ready = idle.iter().position(|(t, s)| *t == here && s.is_ready())?;
        Some(idle.swap_remove(ready).1)
    }

    /// Keeps the connection for later; it is picked again once its response is read.
    fn park_h1(&self, dest: &str, sender: http1::SendRequest<OutBody>, upgrade: bool) {
        if upgrade {
            return;
        }
        let mut pool = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = pool.entry(dest.to_owned()).or_default();
        if idle.len() < MAX_IDLE_PER_DEST {
            idle.push((thread::current().id(), sender));
        }
    }

    async fn send_h2(
        &self,
        dest: &str,
        req: Request<OutBody>,
        sticky: Option<&Sticky>,
    ) -> Result<Response<Incoming>, SendError> {
        let cached = match sticky {
            Some(sticky) => sticky.h2(dest),
            None => {
                let pool = self.h2.lock().unwrap_or_else(|p| p.into_inner());
                pool.get(dest).filter(|s| !s.is_closed()).cloned()
            }
        };
        let mut sender = match cached {
            Some(sender) => sender,
            None => {
                let io = match connect(dest).await {
                    Ok(io) => io,
                    Err(why) => return Err(SendError::Unsent(Box::new(req), why)),
                };
                let (sender, conn) = match http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(20))
                    .handshake(io)
                    .await
                {
                    Ok(pair) => pair,
                    Err(e) => return Err(SendError::Unsent(Box::new(req), e.to_string())),
                };
                tokio::spawn(async move {
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, "upstream HTTP/2 connection ended");
                    }
                });
                match sticky {
                    Some(sticky) => sticky.put_h2(dest, sender.clone()),
                    None => {
                        let mut pool = self.h2.lock().unwrap_or_else(|p| p.into_inner());
                        pool.insert(dest.to_owned(), sender.clone());
                    }
                }
                sender
            }
        };
        if let Err(e) = sender.ready().await {
            return Err(SendError::Unsent(Box::new(req), e.to_string()));
        }
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(back) => Err(SendError::Unsent(Box::new(back), e.into_error().to_string())),
                None => Err(SendError::Sent(e.into_error())),
            },
        }
    }
}

async fn connect(dest: &str) -> Result<TokioIo<TcpStream>, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(dest)).await {
        Ok(Ok(stream)) => {
            // Small requests and responses must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        }
        Ok(Err(e)) => Err(format!("connect {dest}: {e}")),
        Err(_) => Err(format!("connect {dest}: timed out after {CONNECT_TIMEOUT:?}")),
    }
}
