//! What the kernel says about the processes under test: memory (`/proc/<pid>/status`),
//! CPU time (`/proc/<pid>/stat`) and open file descriptors (`/proc/<pid>/fd`).

use std::fs;

use anyhow::{Context, Result};

/// Clock ticks per second of the CPU times in `/proc/*/stat` (`USER_HZ`). The kernel
/// fixes it at 100 for userspace on every Linux architecture shunt targets.
const TICKS_PER_SECOND: f64 = 100.0;

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// How many file descriptors a process has open (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> Result<usize> {
    let path = format!("/proc/{pid}/fd");
    Ok(fs::read_dir(&path).with_context(|| format!("reading {path}"))?.count())
}

/// Fields of `/proc/<pid>/stat` after the command name (which may contain spaces),
/// so index 0 is field 3 (`state`) of proc(5).
fn stat_fields(pid: &str) -> Result<Vec<u64>> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("odd stat line")?;
    // Field 3 (state) is a letter; keep positions by mapping non-numbers to 0.
    Ok(rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

/// CPU seconds (user + system) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let f = stat_fields(&pid.to_string())?;
    // utime and stime are fields 14 and 15.
    Ok((f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / TICKS_PER_SECOND)
}

/// CPU seconds used by this process's waited-for children (the load generators; the
/// servers in the pod are reaped only at the end).
pub fn children_cpu_seconds() -> Result<f64> {
    let f = stat_fields("self")?;
    // cutime and cstime are fields 16 and 17.
    Ok((f.get(13).copied().unwrap_or(0) + f.get(14).copied().unwrap_or(0)) as f64 / TICKS_PER_SECOND)
}

/// CPU seconds the machine has been busy: everything in `/proc/stat` but idle and
/// iowait. Interrupt and softirq time count too, because a process's own CPU time
/// includes the softirq work (most of the network stack) that ran on its behalf while
/// it was on the CPU; what is left after subtracting the processes under test is other
/// processes plus kernel threads (`ksoftirqd`).
pub fn machine_busy_seconds() -> Result<f64> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| ticks.get(i)).sum();
    Ok(busy as f64 / TICKS_PER_SECOND)
}
