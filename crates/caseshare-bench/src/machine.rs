//! Figures about where the bench runs: the machine (CPUs, memory, load)
//! and the CPU time a process has used.

use crate::summary::Machine;

/// The machine, from `/proc` (unknown parts empty or 0).
pub(crate) fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        mem_gib: mem_kib / (1024.0 * 1024.0),
        loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    }
}

/// User + system CPU seconds of a process (`self` or a pid), from
/// `/proc/<pid>/stat` (`caseshare_alloc::cpu_time`); 0 where unreadable.
pub(crate) fn cpu_secs(pid: &str) -> f64 {
    caseshare_alloc::cpu_time(pid).map_or(0.0, |d| d.as_secs_f64())
}
