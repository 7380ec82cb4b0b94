//! The CLI's side of the layer protocol: a Unix socket (path in `SHUNT_LAYER_SOCKET`)
//! on which the program's `libshunt_layer.so` asks one question per connection, one
//! JSON line each way (the JSON form is pinned by tests here and in the layer):
//!
//! - `{"op":"listen","port":L,"addr":A}` → `{"session":true}` if L is the local port
//!   of a session port P (`--port P:L`, or P itself): P's stolen requests go to it from
//!   now on; `{}` for any other port (the layer then never asks about its clients);
//! - `{"op":"resolve","name":N}` → `{"addresses":[…]}` from the pod's resolver, or
//!   `{"local":true}` when the pod does not know N (libc then resolves it here);
//! - `{"op":"connect","addr":"ip:port"}` → `{"port":L}`: the connection is open from a
//!   pod of the target and waits on loopback port L for the program's one connection;
//!   `{"local":true}` for `--local` destinations; `{"errno":111,"error":…}` when the
//!   pod may not or cannot connect (the reason is printed here);
//! - `{"op":"peer","port":Q}` → `{"addr":"ip:0"}`: the pod client behind the CLI's
//!   connection from local port Q, when known.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};

/// A byte stream opened from a pod.
pub type RemoteStream = Box<dyn RemoteIo>;

/// What a stream from a pod can do.
pub trait RemoteIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> RemoteIo for T {}

/// The pod's network as the exec code uses it (the outbound tunnel; a fake in tests).
pub trait Remote: Send + Sync + 'static {
    /// A stream to `authority` (`host:port`) dialled from a pod; `Err` says why not.
    fn connect<'a>(&'a self, authority: &'a str) -> BoxFuture<'a, Result<RemoteStream, String>>;
    /// The pod resolver's addresses for `name`; `Err` when it does not know it.
    fn resolve<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>>;
}

/// A question (the layer's `client::Question`).
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Question {
    /// See the module doc.
    Listen {
        /// Local port.
        port: u16,
        /// Bound address.
        addr: IpAddr,
    },
    /// See the module doc.
    Resolve {
        /// Name.
        name: String,
    },
    /// See the module doc.
    Connect {
        /// Destination.
        addr: SocketAddr,
    },
    /// See the module doc.
    Peer {
        /// Local port of the CLI's connection.
        port: u16,
    },
}

/// An answer (the layer's `client::Answer`).
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Answer {
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    session: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    local: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    addresses: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `ECONNREFUSED` on Linux: what a refused outbound connection looks like to the program.
const ECONNREFUSED: i32 = 111;
/// How long the program has to connect to the relay port it was given.
const RELAY_ACCEPT: Duration = Duration::from_secs(10);
/// Bounds on the pod's answers (below the layer's own deadlines).
const REMOTE_CONNECT: Duration = Duration::from_secs(20);
const REMOTE_RESOLVE: Duration = Duration::from_secs(8);

/// A `--local` destination: an address or network, optionally one port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRule {
    net: IpAddr,
    prefix: u8,
    port: Option<u16>,
}

impl std::str::FromStr for LocalRule {
    type Err = String;

    fn from_str(text: &str) -> Result<LocalRule, String> {
        let bad = || format!("{text:?} is not an address: write 192.168.0.0/16, 10.1.2.3 or 10.1.2.3:5432");
        if let Ok(addr) = text.parse::<SocketAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(LocalRule {
                net: addr.ip(),
                prefix,
                port: Some(addr.port()),
            });
        }
        let (ip, prefix) = text.split_once('/').map_or((text, None), |(a, p)| (a, Some(p)));
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(LocalRule {
            net,
            prefix,
            port: None,
        })
    }
}

impl LocalRule {
    fn matches(&self, addr: SocketAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32u8),
            IpAddr::V6(v6) => (u128::from(v6), 128u8),
        };
        let ((want, wmax), (have, hmax)) = (bits(self.net), bits(addr.ip()));
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        wmax == hmax && want & mask == have & mask && self.port.is_none_or(|p| p == addr.port())
    }
}

/// What the layer server and the inbound forwarder share.
pub struct Shared {
    /// `(pod port, local port)` of the session.
    pub ports: Vec<(u16, u16)>,
    /// Pod port → where the program listens for it.
    pub listeners: Mutex<HashMap<u16, SocketAddr>>,
    /// Local port of the CLI's connection to the program → the pod client.
    pub peers: Mutex<HashMap<u16, IpAddr>>,
    /// Addresses the pod resolved → the name (outbound connections name it again).
    resolved: Mutex<HashMap<IpAddr, String>>,
    local: Vec<LocalRule>,
    /// The pod's network; `None`: everything stays local.
    remote: Option<Arc<dyn Remote>>,
}

impl Shared {
    /// State for a session's `ports`, with `--local` rules and the pod's network.
    pub fn new(ports: Vec<(u16, u16)>, local: Vec<LocalRule>, remote: Option<Arc<dyn Remote>>) -> Arc<Shared> {
        Arc::new(Shared {
            ports,
            listeners: Mutex::default(),
            peers: Mutex::default(),
            resolved: Mutex::default(),
            local,
            remote,
        })
    }
}

/// Where the program listens for pod port `port`, if it does.
pub fn listener_for(shared: &Shared, port: u16) -> Option<SocketAddr> {
    lock(&shared.listeners).get(&port).copied()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves the layer's questions until the listener fails.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(answer_one(conn, shared.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "the layer socket failed; the program's calls stay local");
                return;
            }
        }
    }
}

/// Answers the one question of one layer connection (public for the fuzz targets, which
/// feed it arbitrary bytes; [`serve`] runs it for every connection).
#[doc(hidden)]
pub async fn answer_one(conn: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    // Lines from the layer are short: a peer that sends more without a newline is cut off.
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, 64 * 1024));
    match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let question: Question = match serde_json::from_str(&line) {
        Ok(q) => q,
        Err(error) => {
            tracing::warn!(%error, "the layer asked something this CLI does not know; is it the same shunt version?");
            return;
        }
    };
    tracing::debug!(?question, "layer question");
    let dest = match &question {
        Question::Connect { addr } => Some(*addr),
        _ => None,
    };
    let (answer, stream) = match question {
        Question::Listen { port, addr } => (listen(&shared, port, addr), None),
        Question::Peer { port } => (peer(&shared, port), None),
        Question::Resolve { name } => (resolve(&shared, &name).await, None),
        Question::Connect { addr } => connect(&shared, addr).await,
    };
    let Some(remote) = stream else {
        let _ = reply(&mut write, &answer).await;
        return;
    };
    // The pod's connection is open: the program gets a loopback port to connect to.
    let relay = match TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| Ok((l.local_addr()?.port(), l)))
    {
        Ok(relay) => relay,
        Err(e) => {
            let _ = reply(&mut write, &refused(format!("no loopback port for the relay: {e}"))).await;
            return;
        }
    };
    let answer = Answer {
        port: Some(relay.0),
        ..Answer::default()
    };
    let answered = reply(&mut write, &answer).await;
    drop(write); // one question per connection: the layer's side is done
    if answered.is_ok() {
        pipe(relay.1, remote, dest).await;
    }
}

/// Accepts the program's one connection on `listener` and pipes it to the pod's.
async fn pipe(listener: TcpListener, mut remote: RemoteStream, dest: Option<SocketAddr>) {
    match tokio::time::timeout(RELAY_ACCEPT, listener.accept()).await {
        Ok(Ok((mut local, _))) => {
            drop(listener);
            let _ = local.set_nodelay(true);
            if let Err(error) = tokio::io::copy_bidirectional(&mut local, &mut remote).await {
                tracing::debug!(?dest, %error, "outbound connection ended");
            }
        }
        _ => tracing::info!(?dest, "the program did not pick up its outbound connection"),
    }
}

async fn reply(write: &mut tokio::net::unix::OwnedWriteHalf, answer: &Answer) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

fn refused(error: String) -> Answer {
    Answer {
        errno: Some(ECONNREFUSED),
        error: Some(error),
        ..Answer::default()
    }
}

fn listen(shared: &Shared, port: u16, addr: IpAddr) -> Answer {
    let Some(&(pod_port, _)) = shared.ports.iter().find(|(_, local)| *local == port) else {
        tracing::debug!(port, "the program listens on a port that is not a session port");
        return Answer::default();
    };
    let host = match addr {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        other => other,
    };
    let target = SocketAddr::new(host, port);
    if lock(&shared.listeners).insert(pod_port, target) != Some(target) {
        eprintln!(
            "shunt exec: the program listens on {target}: requests of the session for pod port {pod_port} go to it"
        );
    }
    Answer {
        session: true,
        ..Answer::default()
    }
}

fn peer(shared: &Shared, port: u16) -> Answer {
    let addr = lock(&shared.peers)
        .get(&port)
        .map(|ip| SocketAddr::new(*ip, 0).to_string());
    Answer {
        addr,
        ..Answer::default()
    }
}

async fn resolve(shared: &Shared, name: &str) -> Answer {
    let Some(remote) = &shared.remote else {
        return Answer {
            local: true,
            ..Answer::default()
        };
    };
    match tokio::time::timeout(REMOTE_RESOLVE, remote.resolve(name)).await {
        Ok(Ok(addresses)) => {
            let mut resolved = lock(&shared.resolved);
            for ip in &addresses {
                resolved.insert(*ip, name.to_owned());
            }
            Answer {
                addresses: Some(addresses.iter().map(IpAddr::to_string).collect()),
                ..Answer::default()
            }
        }
        Ok(Err(why)) => {
            tracing::debug!(name, %why, "the pod does not resolve the name; resolving it locally");
            Answer {
                local: true,
                ..Answer::default()
            }
        }
        Err(_) => {
            eprintln!("shunt exec: the pod did not resolve {name} within {REMOTE_RESOLVE:?}; resolving it locally");
            Answer {
                local: true,
                ..Answer::default()
            }
        }
    }
}

/// The answer, and the pod's stream when the connection is open.
async fn connect(shared: &Shared, addr: SocketAddr) -> (Answer, Option<RemoteStream>) {
    let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
    let Some(remote) = shared
        .remote
        .as_ref()
        .filter(|_| !shared.local.iter().any(|rule| rule.matches(addr)))
    else {
        return (
            Answer {
                local: true,
                ..Answer::default()
            },
            None,
        );
    };
    let authority = match lock(&shared.resolved).get(&addr.ip()) {
        Some(name) => format!("{name}:{}", addr.port()),
        None => addr.to_string(),
    };
    match tokio::time::timeout(REMOTE_CONNECT, remote.connect(&authority)).await {
        Ok(Ok(stream)) => (Answer::default(), Some(stream)),
        Ok(Err(why)) => {
            eprintln!("shunt exec: connection to {authority} from the pod failed: {why}");
            (refused(why), None)
        }
        Err(_) => {
            let why = format!("no connection from the pod within {REMOTE_CONNECT:?}");
            eprintln!("shunt exec: connection to {authority}: {why}");
            (refused(why), None)
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
