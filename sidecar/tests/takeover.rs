//! The sidecar in port-takeover mode on loopback: no root, no capabilities. The sidecar
//! owns a listen port and passes bytes through to the app while dormant; with routes it
//! routes each request like in nftables mode. This is how `shunt demo` runs.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::Duration;

use support::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_takeover_passes_through_while_dormant_and_routes_when_active() {
    let app = shunt_echo::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), "app").unwrap();
    let alice = shunt_echo::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(), "dev-alice").unwrap();
    let (listen, admin_port) = (free_port(), free_port());
    let dir = TempDir::new("takeover");
    let routes = dir.path("routes.json");
    let _sidecar = Sidecar(
        Command::new(SIDECAR)
            .env("SHUNT_REDIRECT", "port-takeover")
            .env("SHUNT_APP_PORTS", app.addr.port().to_string())
            .env("SHUNT_LISTEN_PORT", listen.to_string())
            .env("SHUNT_ADMIN_PORT", admin_port.to_string())
            .env("SHUNT_POD_IP", "127.0.0.1")
            .env("SHUNT_ROUTES_FILE", &routes)
            .env("SHUNT_LOG_FORMAT", "text")
            .spawn()
            .unwrap(),
    );
    let admin = format!("127.0.0.1:{admin_port}");
    let url = format!("http://127.0.0.1:{listen}/");
    wait_ready(&admin);

    // Dormant: bytes pass through, so the app answers everything.
    assert_eq!(who(&url, Some("x-user: alice")).as_deref(), Some("app"));
    assert_eq!(metric(&admin, "shunt_sidecar_tcp_passthrough_connections_total"), 1.0);

    let mut r = route("alice", "steal", Some("x-user: alice"), &alice.addr.to_string());
    r["port"] = app.addr.port().into();
    write_routes(&routes, &[r]);
    wait_routes(&admin, 1);
    eventually("alice's route", Duration::from_secs(5), || {
        (who(&url, Some("x-user: alice"))? == "dev-alice").then_some(())
    });
    assert_eq!(who(&url, Some("x-user: bob")).as_deref(), Some("app"));
    assert_eq!(who(&url, None).as_deref(), Some("app"));
    assert_eq!(metric(&admin, "shunt_sidecar_active_ports"), 1.0);

    // A bad document is refused and the routes in force stay.
    std::fs::write(&routes, r#"{"routes": [{"id": "x", "port": 1, "mode": "steal"}]}"#).unwrap();
    eventually("rejection counted", Duration::from_secs(5), || {
        (metric(&admin, "shunt_sidecar_route_reloads_total{result=\"error\"}") >= 1.0).then_some(())
    });
    assert_eq!(who(&url, Some("x-user: alice")).as_deref(), Some("dev-alice"));

    write_routes(&routes, &[]);
    wait_routes(&admin, 0);
    assert_eq!(who(&url, Some("x-user: alice")).as_deref(), Some("app"));
}

#[test]
fn help_lists_every_variable_and_bad_config_exits_64() {
    let help = Command::new(SIDECAR).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for var in [
        "SHUNT_REDIRECT",
        "SHUNT_APP_PORTS",
        "SHUNT_LISTEN_PORT",
        "SHUNT_PROXY_PORT",
        "SHUNT_ADMIN_PORT",
        "SHUNT_ROUTES_FILE",
        "SHUNT_LEASE_SECONDS",
    ] {
        assert!(text.contains(var), "--help documents {var}");
    }
    let bad = Command::new(SIDECAR)
        .env_remove("SHUNT_APP_PORTS")
        .env("SHUNT_REDIRECT", "bogus")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("SHUNT_REDIRECT") && err.contains("nftables or port-takeover"),
        "{err}"
    );
}
