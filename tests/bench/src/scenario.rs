//! The scenarios, measured in one run against one pod so they are comparable: the app
//! `direct`, through `haproxy`, then with the sidecar `dormant` (no routes), `active,
//! no match` (a steal route nobody's requests match) and `active, 50% match` (the
//! marked half of the mix goes to the developer). Each with HTTP/1.1 and h2, each
//! after a warm-up. Also samples the sidecar's memory and everyone's CPU time.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::client::{Clients, Proto};
use crate::interrupt::{self, eventually};
use crate::parse::Load;
use crate::world::{Bins, World, APP_PORT};
use crate::{haproxy, http, procfs};

/// Scenario names, in table order.
pub const DIRECT: &str = "direct";
/// See [`DIRECT`].
pub const DORMANT: &str = "dormant";
/// See [`DIRECT`].
pub const NO_MATCH: &str = "active, no match";
/// See [`DIRECT`].
pub const HALF: &str = "active, 50% match";
/// See [`DIRECT`].
pub const HAPROXY: &str = "haproxy";
/// All scenarios, in table order.
pub const ORDER: [&str; 5] = [DIRECT, DORMANT, NO_MATCH, HALF, HAPROXY];

/// Command-line options.
pub struct Options {
    /// Measured seconds per scenario and protocol.
    pub duration: u64,
    /// wrk connections (h2load uses a quarter, with 10 streams each).
    pub connections: u32,
}

/// CPU use during a measured run, in % of one core.
#[derive(Debug)]
pub struct Cpu {
    /// wrk or h2load.
    pub client: f64,
    /// The app's echo server.
    pub app: f64,
    /// The developer's echo server.
    pub dev: f64,
    /// The sidecar or HAProxy, if running.
    pub proxy: Option<f64>,
    /// Every other process on the machine (not part of the benchmark: noise).
    pub other: f64,
}

/// One scenario × protocol.
#[derive(Debug)]
pub struct Row {
    /// One of [`ORDER`].
    pub scenario: &'static str,
    /// The protocol.
    pub proto: Proto,
    /// What the client measured.
    pub load: Load,
    /// Who used the CPU.
    pub cpu: Cpu,
    /// Share of the completed requests the sidecar's route sent to the developer.
    pub stolen: Option<f64>,
}

/// The sidecar's resident memory, KiB.
#[derive(Debug, Default)]
pub struct Memory {
    /// Dormant, 1 s after start.
    pub dormant_idle: u64,
    /// Route installed and redirect active, no traffic.
    pub active_idle: u64,
    /// Highest VmRSS sampled every 200 ms during the 50% scenario.
    pub peak_load: u64,
    /// VmHWM at the end of the run (the high-water mark since start).
    pub hwm: u64,
}

/// Everything measured.
#[derive(Debug)]
pub struct Results {
    /// One row per scenario × protocol, in measurement order.
    pub rows: Vec<Row>,
    /// Sidecar memory.
    pub memory: Memory,
}

struct Bench<'a> {
    world: &'a World,
    clients: &'a Clients,
    rows: Vec<Row>,
}

/// Runs every scenario; everything started is gone when this returns.
pub fn run(bins: Bins, options: &Options) -> Result<Results> {
    let world = World::start(bins)?;
    let clients = Clients::new(&world.dir, options.duration, options.connections)?;
    let mut bench = Bench {
        world: &world,
        clients: &clients,
        rows: Vec::new(),
    };
    let mut memory = Memory::default();

    bench.both(DIRECT, [APP_PORT; 2], None, None, &mut || {})?;

    let haproxy = haproxy::start(&world)?;
    bench.both(
        HAPROXY,
        [haproxy::H1_PORT, haproxy::H2_PORT],
        Some(haproxy),
        None,
        &mut || {},
    )?;
    world.pod.terminate(haproxy).context("stopping HAProxy")?;

    let sidecar = world.start_sidecar()?;
    interrupt::sleep(Duration::from_secs(1))?;
    memory.dormant_idle = procfs::status_kib(sidecar, "VmRSS")?;
    bench.both(DORMANT, [APP_PORT; 2], Some(sidecar), None, &mut || {})?;

    world.set_route(Some(("nobody", "x-user: nobody")))?;
    bench.probe(&[
        (Some("x-user: nobody"), "/", "dev"),
        (Some("x-user: alice"), "/", "app"),
    ])?;
    interrupt::sleep(Duration::from_secs(1))?;
    memory.active_idle = procfs::status_kib(sidecar, "VmRSS")?;
    bench.both(NO_MATCH, [APP_PORT; 2], Some(sidecar), Some("nobody"), &mut || {})?;

    world.set_route(Some(("half", "x-user: alice || path: /alice/")))?;
    let probes = [
        (Some("x-user: alice"), "/", "dev"),
        (None, "/alice/x", "dev"),
        (None, "/other/x", "app"),
    ];
    bench.probe(&probes)?;
    let mut peak = 0;
    let mut sample = || {
        if let Ok(kib) = procfs::status_kib(sidecar, "VmRSS") {
            peak = peak.max(kib);
        }
    };
    bench.both(HALF, [APP_PORT; 2], Some(sidecar), Some("half"), &mut sample)?;
    memory.peak_load = peak;
    memory.hwm = procfs::status_kib(sidecar, "VmHWM")?;
    Ok(Results {
        rows: bench.rows,
        memory,
    })
}

impl Bench<'_> {
    /// Measures one scenario with both protocols (`ports` per protocol).
    fn both(
        &mut self,
        scenario: &'static str,
        ports: [u16; 2],
        proxy: Option<u32>,
        route: Option<&str>,
        sample: &mut dyn FnMut(),
    ) -> Result<()> {
        for (proto, port) in Proto::ALL.into_iter().zip(ports) {
            let row = self
                .measure(scenario, proto, port, proxy, route, sample)
                .with_context(|| format!("scenario {scenario:?} over {}", proto.name()))?;
            self.rows.push(row);
        }
        Ok(())
    }

    fn measure(
        &self,
        scenario: &'static str,
        proto: Proto,
        port: u16,
        proxy: Option<u32>,
        route: Option<&str>,
        sample: &mut dyn FnMut(),
    ) -> Result<Row> {
        let base = format!("http://{}", self.world.addr(port));
        eprintln!("shunt-bench: {scenario} / {} ({base})", proto.name());
        self.clients.warm_up(proto, &base)?;
        let stolen_before = route.map(|id| self.stolen(id)).transpose()?;
        let cpu_before = self.cpu_seconds(proxy)?;
        let started = Instant::now();
        let load = self.clients.measure(proto, &base, sample)?;
        let wall = started.elapsed().as_secs_f64();
        let cpu_after = self.cpu_seconds(proxy)?;
        let percent = |i: usize| (cpu_after[i] - cpu_before[i]) / wall * 100.0;
        let stolen = match (route, stolen_before) {
            (Some(id), Some(before)) => Some((self.stolen(id)? - before) / load.requests.max(1) as f64),
            _ => None,
        };
        Ok(Row {
            scenario,
            proto,
            load,
            cpu: Cpu {
                client: percent(0),
                app: percent(1),
                dev: percent(2),
                proxy: proxy.map(|_| percent(3)),
                other: percent(4) - (0..4).map(percent).sum::<f64>(),
            },
            stolen,
        })
    }

    /// CPU seconds so far of client(s), app, dev, proxy, and the whole machine.
    fn cpu_seconds(&self, proxy: Option<u32>) -> Result<[f64; 5]> {
        Ok([
            procfs::children_cpu_seconds()?,
            procfs::cpu_seconds(self.world.app)?,
            procfs::cpu_seconds(self.world.dev)?,
            proxy.map(procfs::cpu_seconds).transpose()?.unwrap_or(0.0),
            procfs::machine_busy_seconds()?,
        ])
    }

    /// Requests the sidecar's route `id` has sent to the developer so far.
    fn stolen(&self, id: &str) -> Result<f64> {
        let text = self.world.metrics()?;
        let route = format!("route=\"{id}\"");
        Ok(http::metric_sum(
            &text,
            "shunt_sidecar_requests_total",
            &[&route, "outcome=\"stolen\""],
        ))
    }

    /// Waits until each probe request through the app port is served by the expected
    /// side: the route is in force (redirect installed, table loaded).
    fn probe(&self, probes: &[(Option<&str>, &str, &str)]) -> Result<()> {
        let addr = self.world.addr(APP_PORT);
        for &(header, path, want) in probes {
            let what = format!("{header:?} {path} to be served by {want}");
            eventually(&what, Duration::from_secs(10), || {
                (http::served_by(addr, path, header)? == want).then_some(())
            })
            .with_context(|| self.world.log_tail("sidecar"))?;
        }
        Ok(())
    }
}
