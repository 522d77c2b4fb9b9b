//! A clock for timestamps that need milliseconds, not nanoseconds: when a pooled connection
//! went idle, when a header-read deadline falls.
//!
//! `Instant::now()` reads the CPU's time-stamp counter and scales it (about 34 ns in a loop on
//! this project's benchmark machine, and several times that in a proxy that wakes from sleep
//! with cold caches: 2.5% of a sidecar's CPU at 1,000 requests per second went to reading the
//! clock). The coarse clock is the kernel's copy of the same monotonic clock taken at its last
//! tick (1 to 4 ms behind), read from memory shared with the kernel: about 6 ns.
//!
//! The only `unsafe` here: `clock_gettime`, called with a valid clock id and an owned out-struct.
#![allow(unsafe_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Now, to the kernel's last timer tick (at most a few milliseconds late). Monotonic, and
/// comparable with `Instant::now()` to within a tick.
pub fn coarse_now() -> Instant {
    static ORIGIN: OnceLock<(Instant, Duration)> = OnceLock::new();
    let &(instant, at) = ORIGIN.get_or_init(|| (Instant::now(), coarse_since_boot()));
    instant + coarse_since_boot().saturating_sub(at)
}

/// Seconds since the Unix epoch, to the kernel's last timer tick.
pub fn coarse_unix_seconds() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: CLOCK_REALTIME_COARSE is a valid clock id and `now` an owned timespec to fill.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut now) } == 0 {
            return u64::try_from(now.tv_sec).unwrap_or(0);
        }
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(target_os = "linux")]
fn coarse_since_boot() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: CLOCK_MONOTONIC_COARSE is a valid clock id and `now` an owned timespec to fill.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    if read != 0 {
        return precise_since_start();
    }
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
fn coarse_since_boot() -> Duration {
    precise_since_start()
}

/// Where there is no coarse clock: the precise one, from the first call.
fn precise_since_start() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_keeps_up_with_the_precise_one_to_within_a_tick() {
        // A tick is at most 10 ms (HZ=100); the anchor may put the coarse clock a tick ahead.
        let tick = Duration::from_millis(10);
        let within = |read: fn() -> Instant| {
            let before = Instant::now();
            let coarse = read();
            let after = Instant::now();
            assert!(coarse + tick >= before && coarse <= after + tick, "{coarse:?} is not within a tick of [{before:?}, {after:?}]");
            coarse
        };
        let first = within(coarse_now);
        std::thread::sleep(Duration::from_millis(30));
        let second = within(coarse_now);
        let moved = second.duration_since(first);
        assert!(moved >= Duration::from_millis(20), "30 ms of sleep moved the coarse clock by {moved:?}");
    }
}
