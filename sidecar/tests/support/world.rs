//! The world of the nftables-mode tests: a pod with the echo app on port 8080 (or an
//! app of the test's own) and a running sidecar; helpers for keep-alive curl runs.

use std::net::SocketAddr;

use shunt_echo::Echo;
use shunt_netns::Pod;

use super::{curl, SidecarPod};

/// The pod, its sidecar's pid and the in-process app (if any).
pub struct World {
    pub ns: SidecarPod,
    pub sidecar: u32,
    pub app: Option<Echo>,
}

impl std::ops::Deref for World {
    type Target = SidecarPod;

    fn deref(&self) -> &SidecarPod {
        &self.ns
    }
}

/// A pod with the echo app on 8080 (or none, for tests that bring their own app).
pub async fn world(with_app: bool) -> World {
    let pod = Pod::create().unwrap();
    let app = if with_app {
        let listener = pod.bind(SocketAddr::from(([0, 0, 0, 0], 8080))).unwrap();
        Some(shunt_echo::spawn(tokio::net::TcpListener::from_std(listener).unwrap(), "app").unwrap())
    } else {
        None
    };
    let ns = SidecarPod::new(pod, "netns");
    let sidecar = ns.start_sidecar("info");
    World { ns, sidecar, app }
}

/// Curl arguments for one keep-alive connection carrying one request per header.
pub fn keep_alive_args(url: &str, headers: &[Option<&str>], extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            args.push("--next".to_owned());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(h) = h {
            args.extend(["-H".to_owned(), h.to_string()]);
        }
        args.push(url.to_owned());
    }
    args
}

pub fn curl_owned(args: &[String]) -> (String, String, bool) {
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

pub const ALICE: Option<&str> = Some("x-user: alice");
pub const BOB: Option<&str> = Some("x-user: bob");

/// Kills and reaps a child process when dropped (also when a test fails).
pub struct KillOnDrop<'a>(pub &'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
