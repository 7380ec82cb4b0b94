//! The pod under test: a `shunt_netns::Pod` with the app (`shunt-echo` on
//! `0.0.0.0:8080`, name `app`) and the developer's local upstream (`shunt-echo` on
//! `127.0.0.1:9000`, name `dev`) inside, a temp dir for configs and logs, and the
//! sidecar's start-up and routes file. Dropping the `World` kills every process it
//! started and removes the namespace (the `Pod`) and then the temp dir.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shunt_netns::Pod;

use crate::http;
use crate::interrupt::eventually;

/// The app's port in the pod.
pub const APP_PORT: u16 = 8080;
/// The developer upstream, local to the pod so shunt and HAProxy reach it equally.
pub const DEV_ADDR: &str = "127.0.0.1:9000";
/// The sidecar's admin port (its default).
pub const ADMIN_PORT: u16 = 15090;
/// How to build what the benchmark runs; printed when a binary is missing.
pub const BUILD: &str = "cargo build --release -p shunt-sidecar -p shunt-echo -p shunt-bench";

/// The release binaries under test, found next to this executable.
pub struct Bins {
    sidecar: PathBuf,
    echo: PathBuf,
}

impl Bins {
    /// Finds `shunt-sidecar` and `shunt-echo` in this executable's directory.
    pub fn locate() -> Result<Bins> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let dir = exe.parent().context("executable has no directory")?;
        let find = |name: &str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                bail!(
                    "{} not found; build the release binaries first, from the workspace root:\n  \
                     {BUILD} && target/release/shunt-bench sidecar",
                    path.display()
                )
            }
        };
        Ok(Bins {
            sidecar: find("shunt-sidecar")?,
            echo: find("shunt-echo")?,
        })
    }
}

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("shunt-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    /// A path inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pod with its app and developer upstream running.
pub struct World {
    /// The namespace and every process started in it (dropped first).
    pub pod: Pod,
    /// Configs, scripts and logs.
    pub dir: TempDir,
    bins: Bins,
    /// Pid of the app's echo server.
    pub app: u32,
    /// Pid of the developer's echo server.
    pub dev: u32,
}

impl World {
    /// Creates the pod and starts the two echo servers.
    pub fn start(bins: Bins) -> Result<World> {
        let pod = Pod::create().context("creating the pod network namespace")?;
        let dir = TempDir::new()?;
        let echo = |addr: &str, name: &str| -> Result<u32> {
            let mut cmd = pod.command(&bins.echo);
            cmd.args([addr, name]).stdout(Stdio::null()).stderr(Stdio::null());
            pod.spawn(cmd)
                .with_context(|| format!("starting {}", bins.echo.display()))
        };
        let app = echo(&format!("0.0.0.0:{APP_PORT}"), "app")?;
        let dev = echo(DEV_ADDR, "dev")?;
        let world = World {
            pod,
            dir,
            bins,
            app,
            dev,
        };
        // The dev upstream is only reachable inside the pod; the first probe through a
        // proxy that must reach it (HAProxy's) waits for it.
        let app_addr = world.addr(APP_PORT);
        eventually("the app to answer", Duration::from_secs(10), || {
            (http::served_by(app_addr, "/", None)? == "app").then_some(())
        })?;
        Ok(world)
    }

    /// `pod-ip:port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.pod.ip, port))
    }

    /// Starts `cmd` (from `pod.command`) with stdout and stderr in `<name>.log`.
    pub fn spawn_logged(&self, mut cmd: Command, name: &str) -> Result<u32> {
        let log = File::create(self.dir.path(&format!("{name}.log")))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        self.pod.spawn(cmd).with_context(|| format!("starting {name}"))
    }

    /// The last lines of `<name>.log`, for error messages.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path(&format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "last lines of {name}.log:\n{}\n",
            lines[lines.len().saturating_sub(15)..].join("\n")
        )
    }

    fn routes_file(&self) -> PathBuf {
        self.dir.path("routes.json")
    }

    /// Starts the sidecar in nftables mode with an empty routes file; waits for /readyz.
    pub fn start_sidecar(&self) -> Result<u32> {
        self.write_routes(None)?;
        let mut cmd = self.pod.command(&self.bins.sidecar);
        cmd.env("SHUNT_APP_PORTS", APP_PORT.to_string())
            .env("SHUNT_REDIRECT", "nftables")
            .env("SHUNT_ROUTES_FILE", self.routes_file());
        let pid = self.spawn_logged(cmd, "sidecar")?;
        let admin = self.addr(ADMIN_PORT);
        eventually("sidecar /readyz", Duration::from_secs(10), || {
            (http::get(admin, "/readyz", None).ok()?.status == 200).then_some(())
        })
        .with_context(|| self.log_tail("sidecar"))?;
        Ok(pid)
    }

    /// Installs one steal route `id` with `filter` to the dev upstream (or none), and
    /// waits until the sidecar's `/routes` lists exactly that.
    pub fn set_route(&self, route: Option<(&str, &str)>) -> Result<()> {
        self.write_routes(route)?;
        let want: Vec<&str> = route.map(|(id, _)| id).into_iter().collect();
        let admin = self.addr(ADMIN_PORT);
        eventually(&format!("/routes to list {want:?}"), Duration::from_secs(10), || {
            let doc: serde_json::Value = serde_json::from_str(&http::get(admin, "/routes", None).ok()?.body).ok()?;
            let ids: Vec<&str> = doc["routes"]
                .as_array()?
                .iter()
                .filter_map(|r| r["id"].as_str())
                .collect();
            (ids == want).then_some(())
        })
        .with_context(|| self.log_tail("sidecar"))
    }

    fn write_routes(&self, route: Option<(&str, &str)>) -> Result<()> {
        let routes: Vec<serde_json::Value> = route
            .map(|(id, filter)| {
                serde_json::json!({
                    "id": id, "port": APP_PORT, "mode": "steal",
                    "filter": filter, "upstream": format!("http://{DEV_ADDR}"),
                })
            })
            .into_iter()
            .collect();
        write_atomically(
            &self.routes_file(),
            &serde_json::json!({ "routes": routes }).to_string(),
        )
    }

    /// The sidecar's Prometheus text.
    pub fn metrics(&self) -> Result<String> {
        Ok(http::get(self.addr(ADMIN_PORT), "/metrics", None)?.body)
    }
}

/// Replaces a file by rename, so a watcher never reads it half-written.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
