//! The load generators, in the root namespace: `wrk` for HTTP/1.1 keep-alive and
//! `h2load` for HTTP/2 with prior knowledge, each with one thread (`-t1`) so the client
//! takes one of the two cores.
//!
//! Every scenario sends the same mix, so the client's own work is the same in all of
//! them: wrk alternates requests for `/` without and with `x-user: alice` (a Lua
//! script), h2load alternates `/alice/x` and `/other/x`. Only the 50% route and HAProxy
//! route the marked half to the developer.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::interrupt;
use crate::parse::{self, Load};
use crate::world::TempDir;

/// Seconds of load before each measured run, not counted.
pub const WARM_UP_SECONDS: u64 = 2;

/// Pre-formats both requests once, so the script costs the same per request always.
const MIX_LUA: &str = r#"
local i = 0
local plain, alice
request = function()
  if not plain then
    plain = wrk.format("GET", wrk.path)
    alice = wrk.format("GET", wrk.path, {["x-user"] = "alice"})
  end
  i = i + 1
  if i % 2 == 0 then return alice end
  return plain
end
"#;

/// The protocol a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 keep-alive (wrk).
    Http1,
    /// HTTP/2 with prior knowledge (h2load).
    H2,
}

impl Proto {
    /// Both, in table order.
    pub const ALL: [Proto; 2] = [Proto::Http1, Proto::H2];

    /// The name shown in tables.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Http1 => "http/1.1",
            Proto::H2 => "h2",
        }
    }
}

/// Runs wrk and h2load with the options of this benchmark.
pub struct Clients {
    duration: u64,
    connections: u32,
    lua: PathBuf,
    log: PathBuf,
}

impl Clients {
    /// Writes the Lua script into `dir`.
    pub fn new(dir: &TempDir, duration: u64, connections: u32) -> Result<Clients> {
        let lua = dir.path("mix.lua");
        std::fs::write(&lua, MIX_LUA)?;
        Ok(Clients {
            duration,
            connections,
            lua,
            log: dir.path("h2load.log"),
        })
    }

    /// h2load connections: a quarter of wrk's, each with 10 streams in flight.
    pub fn h2_connections(&self) -> u32 {
        (self.connections / 4).max(1)
    }

    fn command(&self, proto: Proto, base: &str, seconds: u64) -> Command {
        match proto {
            Proto::Http1 => {
                let mut cmd = Command::new("wrk");
                cmd.args(["-t1", &format!("-c{}", self.connections), &format!("-d{seconds}s")])
                    .arg("--latency")
                    .arg("-s")
                    .arg(&self.lua)
                    .arg(format!("{base}/"));
                cmd
            }
            Proto::H2 => {
                let mut cmd = Command::new("h2load");
                cmd.args(["-t1", "-c", &self.h2_connections().to_string(), "-m", "10"])
                    .args(["-D", &seconds.to_string()])
                    .arg(format!("--log-file={}", self.log.display()))
                    .args([format!("{base}/alice/x"), "/other/x".to_owned()]);
                cmd
            }
        }
    }

    /// Loads `base` (`http://ip:port`) for the warm-up time; the result is discarded
    /// except for failing when nothing got through.
    pub fn warm_up(&self, proto: Proto, base: &str) -> Result<()> {
        let load = self.execute(proto, base, WARM_UP_SECONDS, &mut || {})?;
        if load.requests == 0 {
            bail!("{} warm-up against {base}: no request succeeded", proto.name());
        }
        Ok(())
    }

    /// The measured run; `sample` is called every 200 ms while it runs.
    pub fn measure(&self, proto: Proto, base: &str, sample: &mut dyn FnMut()) -> Result<Load> {
        self.execute(proto, base, self.duration, sample)
    }

    fn execute(&self, proto: Proto, base: &str, seconds: u64, sample: &mut dyn FnMut()) -> Result<Load> {
        let mut cmd = self.command(proto, base, seconds);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let tool = cmd.get_program().to_string_lossy().into_owned();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {tool} (is it installed?)"))?;
        let guard = interrupt::client(child.id());
        let deadline = Instant::now() + Duration::from_secs(seconds + 30);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{tool} did not finish within {seconds} s + 30 s");
            }
            sample();
            std::thread::sleep(Duration::from_millis(200));
        }
        drop(guard);
        let out = child.wait_with_output()?;
        interrupt::check()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "{tool} against {base} failed ({}): {stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        match proto {
            Proto::Http1 => parse::wrk(&stdout),
            Proto::H2 => {
                let mut load = parse::h2load(&stdout)?;
                let log = std::fs::read_to_string(&self.log).context("reading h2load's log file")?;
                (load.p50, load.p99) = parse::h2load_log(&log).with_context(|| format!("h2load: {stdout}"))?;
                Ok(load)
            }
        }
    }
}
