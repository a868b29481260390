//! What Linux says about a process's CPU time and memory, read from `/proc` (cheap: a directory
//! listing and a few small files). Used by the control plane to sample the extension at each
//! `/event/next` and at the SHUTDOWN handover, and by the benchmark harness.
//!
//! Every function returns `None` when the process is gone or `/proc` does not have the file
//! (another OS, a kernel without schedstats).

use std::path::PathBuf;

/// CPU time the process's threads have run, in nanoseconds: the sum of the first field of
/// `/proc/PID/task/*/schedstat` (time spent on the CPU, all threads). Threads that already exited
/// are no longer listed, so their time is not counted.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = std::fs::read_dir(PathBuf::from(format!("/proc/{pid}/task"))).ok()?;
    let mut total = 0u64;
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = text
            .split_ascii_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
        {
            total = total.saturating_add(ns);
            any = true;
        }
    }
    any.then_some(total)
}

/// A `kB` field of `/proc/PID/status` (`VmHWM`, `VmRSS`, …).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_ascii_whitespace().next()?.parse::<u64>().ok()
    })
}

/// Peak resident set size (`VmHWM`), in KiB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM")
}

/// Current resident set size (`VmRSS`), in KiB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS")
}

/// Number of threads (`Threads` of `/proc/PID/status`).
pub fn threads(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines().find_map(|line| {
        line.strip_prefix("Threads:")?
            .split_ascii_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        if !std::path::Path::new("/proc/self/status").exists() {
            return;
        }
        assert!(peak_rss_kb(pid).is_some_and(|kb| kb > 0));
        assert!(rss_kb(pid).is_some_and(|kb| kb > 0));
        assert!(threads(pid).is_some_and(|n| n >= 1));
        if std::path::Path::new("/proc/self/schedstat").exists() {
            let a = cpu_ns(pid).unwrap_or(0);
            let mut x = 0u64;
            for i in 0..2_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            let b = cpu_ns(pid).unwrap_or(0);
            assert!(b >= a && a > 0);
        }
        assert_eq!(cpu_ns(u32::MAX), None);
        assert_eq!(peak_rss_kb(u32::MAX), None);
    }
}
