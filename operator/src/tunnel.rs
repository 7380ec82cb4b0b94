//! Tunnels: for each session, the HTTP/2 connection on which its CLI *serves* the
//! session's requests (the CLI is the HTTP/2 server on its `dir=inbound` tunnel, which
//! runs over a WebSocket through kube-apiserver). The hub relays each stolen or mirrored
//! request here; a session without a connected CLI is [`ForwardError::Unavailable`] and
//! the request comes back unsent, so the sidecar can let the app serve it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http2;

/// Error type of relayed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body of relayed requests.
pub type Body = BoxBody<Bytes, BoxError>;

/// A relay that did not complete.
#[derive(Debug)]
pub enum ForwardError {
    /// No CLI is connected for the session (or its connection just closed before the
    /// request was sent): the request is returned untouched.
    Unavailable(Box<Request<Body>>),
    /// The request was sent and the exchange failed.
    Failed(hyper::Error),
}

type Key = (String, String);

/// The connected CLIs. Cheap to clone.
#[derive(Clone, Default)]
pub struct Tunnels {
    inner: Arc<Mutex<HashMap<Key, http2::SendRequest<Body>>>>,
}

impl Tunnels {
    /// Registers the inbound connection of session `namespace/name` (replacing an older one,
    /// as after a reconnect).
    pub fn register(&self, namespace: &str, name: &str, sender: http2::SendRequest<Body>) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.insert((namespace.to_owned(), name.to_owned()), sender);
    }

    /// Forgets the session's connection.
    pub fn unregister(&self, namespace: &str, name: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Forgets the session's connection if it is closed (a connection that ends must not
    /// unregister the newer one a reconnect put in its place).
    pub fn unregister_closed(&self, namespace: &str, name: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (namespace.to_owned(), name.to_owned());
        if map.get(&key).is_some_and(|s| s.is_closed()) {
            map.remove(&key);
        }
    }

    /// Whether a live connection is registered for the session.
    pub fn is_connected(&self, namespace: &str, name: &str) -> bool {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|s| !s.is_closed())
    }

    /// Relays `req` to the session's CLI.
    pub async fn forward(
        &self,
        namespace: &str,
        name: &str,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let sender = {
            let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&(namespace.to_owned(), name.to_owned()))
                .filter(|s| !s.is_closed())
                .cloned()
        };
        let Some(mut sender) = sender else {
            return Err(ForwardError::Unavailable(Box::new(req)));
        };
        if sender.ready().await.is_err() {
            return Err(ForwardError::Unavailable(Box::new(req)));
        }
        match sender.try_send_request(req).await {
            Ok(resp) => Ok(resp),
            Err(mut e) => match e.take_message() {
                Some(back) => Err(ForwardError::Unavailable(Box::new(back))),
                None => Err(ForwardError::Failed(e.into_error())),
            },
        }
    }
}
