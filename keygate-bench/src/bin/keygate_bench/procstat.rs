//! CPU time of a process from `/proc/<pid>/stat`, to tell whether the
//! server or the load generator was the bottleneck of a run.

use std::time::{Duration, Instant};

use super::stats::CpuReport;

/// Linux reports `utime`/`stime` in USER_HZ ticks, 100 on every mainstream
/// architecture and kernel configuration.
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU seconds of `pid` (`"self"` for this process).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing
    // parenthesis are space-separated, utime and stime being the 12th and
    // 13th of them.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// (steal, total) ticks of all CPUs from `/proc/stat`. Steal is time the
/// hypervisor ran something else while a vCPU wanted to run: on a shared VM
/// it delays both sides of a benchmark unpredictably.
fn steal_ticks() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already counted in user.
    let total: f64 = ticks.iter().take(8).sum();
    Some((*ticks.get(7)?, total))
}

/// CPU counters of the load generator and, when known, the server, taken at
/// the start of a measured window.
pub struct CpuMeter {
    server_pid: Option<u32>,
    client: Option<f64>,
    server: Option<f64>,
    steal: Option<(f64, f64)>,
    started: Instant,
}

impl CpuMeter {
    pub fn start(server_pid: Option<u32>) -> Self {
        Self {
            server_pid,
            client: cpu_seconds("self"),
            server: server_pid.and_then(|pid| cpu_seconds(&pid.to_string())),
            steal: steal_ticks(),
            started: Instant::now(),
        }
    }

    /// Average use over the window, in % of one core.
    pub fn stop(&self) -> CpuReport {
        let elapsed = self.started.elapsed().max(Duration::from_millis(1));
        let pct = |before: Option<f64>, now: Option<f64>| {
            Some(100.0 * (now? - before?) / elapsed.as_secs_f64())
        };
        CpuReport {
            client_pct: pct(self.client, cpu_seconds("self")),
            server_pct: pct(
                self.server,
                self.server_pid
                    .and_then(|pid| cpu_seconds(&pid.to_string())),
            ),
            steal_pct: self
                .steal
                .zip(steal_ticks())
                .and_then(|((s0, t0), (s1, t1))| (t1 > t0).then(|| 100.0 * (s1 - s0) / (t1 - t0))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_the_machine() {
        assert!(cpu_seconds("self").is_some());
        assert!(steal_ticks().is_some());
    }
}
