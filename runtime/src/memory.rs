//! The C allocator's settings for long-running processes with many connections.
//!
//! glibc's malloc gives threads up to eight arenas per core, and memory freed in one arena is
//! reused only by the threads that allocate from it: a control plane whose worker and blocking
//! threads take turns with thousands of long-lived connections keeps the high-water mark of
//! every arena (measured on `strait-zone` with 1,000 sidecars: about 40 KB more resident memory
//! per sidecar than with one arena per core). This caps the arenas at one per core.
//!
//! glibc also keeps what a burst freed: after 10,000 sidecars connect at once the zone holds
//! about 24 KB per sidecar of freed memory that only `malloc_trim` gives back (it returns the
//! free pages inside the heap, which glibc's own trimming, from the heap's top only, cannot).
//! [`give_back_after_bursts`] calls it once a busy spell is over, never during one: returning
//! pages while connections still arrive would cost page faults when they are used again.
//!
//! The only `unsafe` of the crate: `mallopt`, `malloc_trim` and `getrusage` are C functions;
//! called with documented parameters and an owned, zeroed out-struct they have no
//! memory-safety precondition.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// Caps glibc's malloc arenas at one per available core (at least 2). Call it first thing in
/// `main`, before threads start; elsewhere than glibc it does nothing. Returns the cap set.
pub fn one_arena_per_core() -> Option<usize> {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get).max(2);
    set_arena_max(cores).then_some(cores)
}

/// Caps glibc's malloc arenas at `arenas` (at least 1). A sidecar proxies on `--concurrency`
/// threads beside its control thread: with one data thread, one arena serves both (glibc's
/// default gives the data thread an arena of its own, about 0.4 MB more resident memory per
/// sidecar, idle or busy; measured with the sidecar benchmark). Call it before threads start.
pub fn cap_arenas(arenas: usize) -> bool {
    set_arena_max(arenas.max(1))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_arena_max(arenas: usize) -> bool {
    let value = libc::c_int::try_from(arenas).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt takes a parameter number and an int; M_ARENA_MAX with a positive value
    // only changes how many arenas later allocations may create.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, value) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: usize) -> bool {
    false
}

/// What one call to [`give_back_freed`] did.
#[derive(Clone, Copy, Debug)]
pub struct Trimmed {
    /// By how much the resident memory fell (bytes).
    pub returned: u64,
    /// How long the call held the allocator.
    pub took: Duration,
}

/// Returns the free pages of every malloc arena to the system (`malloc_trim(0)`), and says
/// how much resident memory that gave back. Blocks while it walks the heap (a few
/// milliseconds per hundred megabytes; allocations wait meanwhile): call it off the async
/// workers, e.g. in `spawn_blocking`. Elsewhere than glibc it does nothing and returns `None`.
pub fn give_back_freed() -> Option<Trimmed> {
    let before = resident_bytes()?;
    let start = Instant::now();
    if !malloc_trim() {
        return None;
    }
    let took = start.elapsed();
    let after = resident_bytes().unwrap_or(before);
    Some(Trimmed { returned: before.saturating_sub(after), took })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_trim() -> bool {
    // SAFETY: malloc_trim takes the padding to keep at the heap's top and only releases free
    // memory; it takes the arenas' locks itself.
    unsafe { libc::malloc_trim(0) };
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn malloc_trim() -> bool {
    false
}

/// The process's resident memory (VmRSS of /proc/self/status), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.trim_start_matches("VmRSS:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user and system) the process has used so far.
#[cfg(unix)]
pub fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the struct it is given, which is ours and zeroed.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return Duration::ZERO;
        }
        usage
    };
    let micros = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0)) + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

/// When to give freed memory back, from the CPU the process used in each interval: after a
/// busy interval, at the first quiet one; and at least every `every` while quiet, for memory
/// freed a little at a time.
#[derive(Clone, Debug)]
pub struct TrimPolicy {
    /// Cores used on average in an interval for it to count as busy.
    pub busy_cores: f64,
    /// Cores used on average in an interval, at most, for it to count as quiet.
    pub quiet_cores: f64,
    /// The longest time between two trims while the process is quiet.
    pub every: Duration,
    busy_since_trim: bool,
    last_trim: Option<Instant>,
}

impl Default for TrimPolicy {
    fn default() -> Self {
        TrimPolicy { busy_cores: 0.5, quiet_cores: 0.1, every: Duration::from_secs(600), busy_since_trim: false, last_trim: None }
    }
}

impl TrimPolicy {
    /// Busy above `busy_cores`, quiet below `quiet_cores`, a trim at least `every` while quiet.
    pub fn new(busy_cores: f64, quiet_cores: f64, every: Duration) -> Self {
        TrimPolicy { busy_cores, quiet_cores, every, ..TrimPolicy::default() }
    }

    /// Takes an interval of `length` in which the process used `used` CPU time, ending at
    /// `now`; true when the process should trim now (and then counts it as trimmed).
    pub fn observe(&mut self, used: Duration, length: Duration, now: Instant) -> bool {
        let cores = used.as_secs_f64() / length.as_secs_f64().max(1e-3);
        if cores >= self.busy_cores {
            self.busy_since_trim = true;
        }
        let quiet = cores <= self.quiet_cores;
        // The first deadline counts from the first interval.
        let due = now.duration_since(*self.last_trim.get_or_insert(now)) >= self.every;
        if quiet && (self.busy_since_trim || due) {
            self.busy_since_trim = false;
            self.last_trim = Some(now);
            return true;
        }
        false
    }
}

/// Samples the process's CPU time every `interval` and gives freed memory back when `policy`
/// says so (on a blocking thread), calling `on_trim` with what each trim did; ends when
/// `stop` is cancelled. Does nothing elsewhere than glibc.
pub async fn give_back_after_bursts(
    mut policy: TrimPolicy,
    interval: Duration,
    stop: tokio_util::sync::CancellationToken,
    mut on_trim: impl FnMut(Trimmed) + Send,
) {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = (Instant::now(), cpu_time());
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = (Instant::now(), cpu_time());
        let trim = policy.observe(now.1.saturating_sub(last.1), now.0.duration_since(last.0), now.0);
        last = now;
        if trim {
            if let Ok(Some(trimmed)) = tokio::task::spawn_blocking(give_back_freed).await {
                on_trim(trimmed);
            }
            // The trim's own CPU is not the process's work.
            last = (Instant::now(), cpu_time());
        }
    }
}

/// The counters of [`give_back_after_bursts`]: `<prefix>_trims_total` and
/// `<prefix>_returned_bytes_total`.
#[derive(Clone, Debug, Default)]
pub struct TrimMetrics {
    /// Times freed memory was given back.
    pub trims: prometheus_client::metrics::counter::Counter,
    /// Resident memory given back, in bytes.
    pub returned: prometheus_client::metrics::counter::Counter,
}

impl TrimMetrics {
    /// Creates the counters and registers them under `prefix` (`strait_zone_memory`).
    pub fn register(registry: &mut prometheus_client::registry::Registry, prefix: &str) -> Self {
        let m = TrimMetrics::default();
        let r = registry.sub_registry_with_prefix(prefix);
        r.register("trims", "Times memory freed after a busy spell was given back to the system", m.trims.clone());
        r.register("returned_bytes", "Resident memory given back to the system after busy spells", m.returned.clone());
        m
    }

    /// Counts a trim, and logs it (at debug: the counters say it).
    pub fn trimmed(&self, t: Trimmed) {
        self.trims.inc();
        self.returned.inc_by(t.returned);
        tracing::debug!(returned_kb = t.returned >> 10, took_ms = t.took.as_millis(), "gave freed memory back to the system");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_cap_is_accepted() {
        let set = super::one_arena_per_core().expect("glibc accepts M_ARENA_MAX");
        assert!(set >= 2);
        assert!(super::cap_arenas(0), "a cap of at least one arena");
        // Back to the per-core cap for the other tests of this process.
        super::one_arena_per_core();
    }

    /// Allocates `count` blocks of `size` bytes, each written through, and frees all but every
    /// `keep_every`th; returns those kept.
    fn churn(count: usize, size: usize, keep_every: usize) -> Vec<Vec<u8>> {
        let blocks: Vec<Vec<u8>> = (0..count).map(|i| vec![u8::try_from(i % 251).unwrap_or(1); size]).collect();
        blocks.into_iter().enumerate().filter(|(i, _)| i % keep_every == 0).map(|(_, b)| b).collect()
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn memory_freed_inside_the_heap_is_given_back() {
        // 256 MB in 4 KB blocks, then all freed but every 64th: the survivors pin the heap, so
        // glibc's own trimming (from the heap's top) cannot return the free pages between them.
        let kept = churn(65_536, 4096, 64);
        let trimmed = give_back_freed().expect("glibc");
        assert!(trimmed.returned > 128 << 20, "gave back only {} bytes of about 252 MB freed", trimmed.returned);
        assert_eq!(kept.len(), 1024);
        println!("returned {} MB in {:?}", trimmed.returned >> 20, trimmed.took);
    }

    fn seconds(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_trim_comes_at_the_first_quiet_interval_after_a_busy_one_and_not_during_it() {
        let mut p = TrimPolicy::default();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(!p.observe(seconds(0.01), seconds(2.0), at(2)), "quiet from the start: nothing to give back yet");
        assert!(!p.observe(seconds(1.8), seconds(2.0), at(4)), "busy");
        assert!(!p.observe(seconds(0.6), seconds(2.0), at(6)), "neither busy nor quiet");
        assert!(p.observe(seconds(0.1), seconds(2.0), at(8)), "quiet after busy");
        assert!(!p.observe(seconds(0.0), seconds(2.0), at(10)), "once per busy spell");
        assert!(!p.observe(seconds(0.9), seconds(1.0), at(11)), "busy again");
        assert!(p.observe(seconds(0.05), seconds(1.0), at(12)), "and quiet again");
    }

    #[test]
    fn a_quiet_process_trims_every_period() {
        let mut p = TrimPolicy { every: Duration::from_secs(60), ..TrimPolicy::default() };
        let start = Instant::now();
        let trims: Vec<u64> = (1..=150).filter(|s| p.observe(Duration::ZERO, seconds(1.0), start + Duration::from_secs(*s))).collect();
        assert_eq!(trims, vec![61, 121]);
    }

    #[test]
    fn a_busy_process_never_trims() {
        let mut p = TrimPolicy { every: Duration::from_secs(60), ..TrimPolicy::default() };
        let start = Instant::now();
        assert!((1..=600).all(|s| !p.observe(seconds(0.7), seconds(1.0), start + Duration::from_secs(s))));
    }
}
