//! The reference: HAProxy 2.6 in the pod doing the same routing as the sidecar's 50%
//! route (`x-user: alice` or a path under `/alice/` to the dev upstream, else the app),
//! on its own ports: HTTP/1.1 on [`H1_PORT`], h2c with prior knowledge on [`H2_PORT`].
//!
//! Tuned as one would for a fair fight: 2 threads (the machine has 2 cores), a high
//! maxconn (4096: far above the load, and HAProxy needs two open files per connection
//! within the usual 20000 hard limit), no logging, kept-alive server connections
//! shared across clients (`http-reuse always`), and `option forwardfor` because the
//! sidecar adds `x-forwarded-for` too.

use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::http;
use crate::interrupt::eventually;
use crate::world::{World, APP_PORT, DEV_ADDR};

/// HAProxy's HTTP/1.1 port.
pub const H1_PORT: u16 = 8081;
/// HAProxy's h2c (prior knowledge) port.
pub const H2_PORT: u16 = 8082;

fn config() -> String {
    format!(
        "\
global
    nbthread 2
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    option forwardfor
    http-reuse always

frontend routing
    bind 0.0.0.0:{H1_PORT}
    bind 0.0.0.0:{H2_PORT} proto h2
    acl dev hdr(x-user) -m str alice
    acl dev path_beg /alice/
    use_backend dev if dev
    default_backend app

backend app
    server app 127.0.0.1:{APP_PORT}

backend dev
    server dev {DEV_ADDR}
"
    )
}

/// Starts HAProxy in the pod and waits until it routes both ways. Returns its pid
/// (the `Pod` kills it on drop; stop it earlier with `pod.terminate`).
pub fn start(world: &World) -> Result<u32> {
    let path = world.dir.path("haproxy.cfg");
    std::fs::write(&path, config())?;
    let check = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .context("running haproxy -c (is HAProxy installed?)")?;
    if !check.status.success() {
        bail!(
            "haproxy rejects its config: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
    let mut cmd = world.pod.command("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let pid = world.spawn_logged(cmd, "haproxy")?;
    let h1 = world.addr(H1_PORT);
    let probes = [
        (None, "/", "app"),
        (Some("x-user: alice"), "/", "dev"),
        (None, "/alice/x", "dev"),
    ];
    for (header, path, want) in probes {
        eventually(
            &format!("HAProxy to route {header:?} {path} to {want}"),
            Duration::from_secs(10),
            || (http::served_by(h1, path, header)? == want).then_some(()),
        )
        .with_context(|| world.log_tail("haproxy"))?;
    }
    let h2 = world.addr(H2_PORT);
    eventually("HAProxy's h2 port", Duration::from_secs(5), || {
        TcpStream::connect_timeout(&h2, Duration::from_secs(1)).ok()
    })?;
    Ok(pid)
}
