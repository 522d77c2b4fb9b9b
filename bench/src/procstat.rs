//! CPU time and memory of processes, from `/proc`.
//!
//! In: process ids. Out: CPU seconds used so far (user + system) and resident memory.

use std::process::Command;

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) used by `pid` so far, 0 if it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    ticks_in(&stat).unwrap_or(0.0) / ticks_per_second()
}

/// CPU time of a set of processes at one moment, thread by thread, in nanoseconds (from
/// `/proc/<pid>/task/<tid>/schedstat`). `/proc/<pid>/stat` counts in clock ticks (10 ms here):
/// a sidecar busy 45 ms in a 1-second round would read 40 or 50, a 10% step on a figure whose
/// target is a 10% difference.
#[derive(Debug, Clone, Default)]
pub struct CpuSnapshot(Vec<((u32, u32), u64)>);

impl CpuSnapshot {
    /// The threads of `pids` now.
    pub fn take(pids: &[u32]) -> CpuSnapshot {
        let mut threads = Vec::new();
        for &pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
            for tid in tasks.filter_map(|t| t.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
                if let Some(ns) = thread_cpu_ns(pid, tid) {
                    threads.push(((pid, tid), ns));
                }
            }
        }
        threads.sort_unstable();
        CpuSnapshot(threads)
    }

    /// CPU seconds the threads used since `before`: a thread started since counts whole, one
    /// that ended since counts nothing of its last stretch (none of a sidecar's threads does
    /// under load).
    pub fn seconds_since(&self, before: &CpuSnapshot) -> f64 {
        let used: u64 = self
            .0
            .iter()
            .map(|(id, now)| {
                let then = before.0.binary_search_by_key(id, |(i, _)| *i).map_or(0, |at| before.0[at].1);
                now.saturating_sub(then)
            })
            .sum();
        used as f64 / 1e9
    }
}

/// Nanoseconds thread `tid` of `pid` has run: the first field of its `schedstat`, or, where the
/// kernel keeps none, its `stat` ticks.
fn thread_cpu_ns(pid: u32, tid: u32) -> Option<u64> {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")) {
        Ok(schedstat) => schedstat.split_whitespace().next()?.parse().ok(),
        Err(_) => {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
            Some((ticks_in(&stat)? / ticks_per_second() * 1e9) as u64)
        }
    }
}

/// utime + stime, in ticks, of a `stat` line.
fn ticks_in(stat: &str) -> Option<f64> {
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    Some(field(11) + field(12))
}

/// Resident memory of `pid` in bytes (VmRSS), 0 if it is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// This process's limit of open descriptors (the soft `Max open files` of `/proc/self/limits`;
/// `u64::MAX` when unlimited or unreadable).
pub fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> u64 {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(u64::MAX)
}

/// A process as `/proc/<pid>/stat` gives it.
pub struct Process {
    pub pid: u32,
    /// `R`, `S`, `Z` (ended, not yet reaped) …
    pub state: String,
    pub parent: u32,
    pub group: u32,
}

/// Every process of the system now, from `/proc`.
pub fn processes() -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // State, parent and group follow the command name, which is in parentheses and may
            // hold spaces.
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?.to_string();
            let parent = fields.next()?.parse().ok()?;
            let group = fields.next()?.parse().ok()?;
            Some(Process { pid, state, parent, group })
        })
        .collect()
}

/// The children of `pid` (nginx workers under their master).
pub fn children(pid: u32) -> Vec<u32> {
    processes().into_iter().filter(|p| p.parent == pid).map(|p| p.pid).collect()
}

#[cfg(test)]
mod tests {
    /// This thread's own CPU time, in nanoseconds, as the kernel counts it.
    fn own_cpu_ns() -> u64 {
        let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        schedstat.split_whitespace().next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_snapshot_counts_three_milliseconds_of_work_finer_than_a_clock_tick() {
        let me = std::process::id();
        let window_start = own_cpu_ns();
        let before = super::CpuSnapshot::take(&[me]);
        let start = own_cpu_ns();
        while own_cpu_ns() - start < 3_000_000 {
            std::hint::black_box(start);
        }
        let used = super::CpuSnapshot::take(&[me]).seconds_since(&before);
        // This thread's own clock over the same window (the 3 ms, and reading the snapshots,
        // which a busy machine can make slow); the harness's other threads do nothing much
        // meanwhile. Ticks would read 0 or 10 ms, not within a millisecond of it.
        let window = (own_cpu_ns() - window_start) as f64 / 1e9;
        assert!(used >= 0.003 && (used - window).abs() < 0.001, "{used} s by the snapshots, {window} s by the thread's clock");
    }

    #[test]
    fn a_thread_that_started_since_counts_whole_and_one_that_ended_counts_nothing() {
        let before = super::CpuSnapshot(vec![((1, 1), 100), ((1, 2), 50)]);
        let after = super::CpuSnapshot(vec![((1, 1), 300), ((1, 3), 1_000)]);
        assert!((after.seconds_since(&before) - 1_200e-9).abs() < 1e-15);
    }

    #[test]
    fn the_soft_limit_of_open_files_is_read_from_the_limits_table() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             95000                95000                processes\n\
                      Max open files            20000                40000                files\n";
        assert_eq!(super::parse_open_files_limit(limits), 20000);
        assert_eq!(super::parse_open_files_limit("Max open files            unlimited            unlimited            files\n"), u64::MAX);
    }
}
