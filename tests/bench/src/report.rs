//! Prints the results as markdown: throughput and latency per scenario × protocol with
//! ratios against `direct` and `haproxy`, the sidecar's memory, CPU use, and one
//! PASS/MISS line per goal. A missed goal is a finding, not a failure of the run.

use std::time::Duration;

use crate::client::Proto;
use crate::scenario::{Results, Row, DIRECT, DORMANT, HALF, HAPROXY, NO_MATCH, ORDER};

/// The most idle RSS the sidecar may use.
const IDLE_RSS_GOAL_KIB: u64 = 10 * 1024;

/// CPU use by unrelated processes (% of one core) above which a run is flagged noisy.
const NOISE_PERCENT: f64 = 10.0;

/// Writes every table and the goals to stdout.
pub fn print(results: &Results, header: &str) {
    let find = |scenario: &str, proto: Proto| results.rows.iter().find(|r| r.scenario == scenario && r.proto == proto);
    let ordered: Vec<&Row> = ORDER
        .iter()
        .flat_map(|s| Proto::ALL.map(|p| find(s, p)))
        .flatten()
        .collect();

    println!("{header}\n");
    println!("| scenario | proto | req/s | p50 | p99 | × direct | × haproxy |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in &ordered {
        let ratio = |base: &str| match find(base, row.proto) {
            Some(b) if b.load.rps > 0.0 => format!("{:.3}×", row.load.rps / b.load.rps),
            _ => "–".to_owned(),
        };
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} |",
            row.scenario,
            row.proto.name(),
            row.load.rps,
            ms(row.load.p50),
            ms(row.load.p99),
            ratio(DIRECT),
            ratio(HAPROXY),
        );
    }

    let m = &results.memory;
    println!("\n| sidecar memory | MiB |\n|---|---:|");
    println!("| idle (dormant, 1 s after start), VmRSS | {} |", mib(m.dormant_idle));
    println!(
        "| active idle (route installed, no traffic), VmRSS | {} |",
        mib(m.active_idle)
    );
    println!(
        "| peak under load (50% match, VmRSS every 200 ms) | {} |",
        mib(m.peak_load)
    );
    println!("| high-water mark at the end (VmHWM) | {} |", mib(m.hwm));

    println!("\n| CPU, % of one core (2 cores = 200%) | proto | client | app | dev | proxy | other |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for row in &ordered {
        let c = &row.cpu;
        let proxy = c.proxy.map_or("–".to_owned(), |p| format!("{p:.0}"));
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {proxy} | {:.0} |",
            row.scenario,
            row.proto.name(),
            c.client,
            c.app,
            c.dev,
            c.other
        );
    }

    println!();
    for row in &ordered {
        if let Some(share) = row.stolen {
            println!(
                "- {} / {}: the sidecar sent {:.1}% of {} requests to the developer",
                row.scenario,
                row.proto.name(),
                share * 100.0,
                row.load.requests
            );
        }
    }
    for row in ordered.iter().filter(|r| r.cpu.other > NOISE_PERCENT) {
        println!(
            "- WARNING {} / {}: other processes used {:.0}% of a core during the run; \
             it competed with them for the 2 cores, rerun on a quiet machine",
            row.scenario,
            row.proto.name(),
            row.cpu.other
        );
    }
    for row in ordered.iter().filter(|r| r.load.errors > 0) {
        println!(
            "- WARNING {} / {}: {} failed requests (socket errors, failed streams or 4xx/5xx)",
            row.scenario,
            row.proto.name(),
            row.load.errors
        );
    }

    println!();
    for proto in Proto::ALL {
        if let (Some(d), Some(direct)) = (find(DORMANT, proto), find(DIRECT, proto)) {
            let ratio = d.load.rps / direct.load.rps;
            goal(
                ratio >= 0.99,
                &format!("dormant ≥ 0.99× direct ({}): {ratio:.3}×", proto.name()),
            );
        }
    }
    for scenario in [NO_MATCH, HALF] {
        for proto in Proto::ALL {
            let (Some(s), Some(h)) = (find(scenario, proto), find(HAPROXY, proto)) else {
                continue;
            };
            goal(
                s.load.rps >= h.load.rps && s.load.p99 <= h.load.p99,
                &format!(
                    "{scenario} ≥ haproxy ({}): req/s {:.0} vs {:.0} ({:.3}×), p99 {} vs {}",
                    proto.name(),
                    s.load.rps,
                    h.load.rps,
                    s.load.rps / h.load.rps,
                    ms(s.load.p99),
                    ms(h.load.p99)
                ),
            );
        }
    }
    goal(
        m.dormant_idle <= IDLE_RSS_GOAL_KIB,
        &format!("idle RSS ≤ 10 MiB (dormant): {} MiB", mib(m.dormant_idle)),
    );
    goal(
        m.active_idle <= IDLE_RSS_GOAL_KIB,
        &format!("idle RSS ≤ 10 MiB (active, no traffic): {} MiB", mib(m.active_idle)),
    );
}

fn goal(pass: bool, text: &str) {
    println!("{} {text}", if pass { "PASS" } else { "MISS" });
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}
