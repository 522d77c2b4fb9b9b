//! Strait's benchmark harness.
//!
//! In: the real components, started on this machine, and a baseline measured in the same run.
//! Out: figures printed as percentiles and as ratios against that baseline. Benchmarks are run
//! on demand (`cargo run --release -p strait-bench --bin <name>`), never as tests.
#![forbid(unsafe_code)]

pub mod cleanup;
pub mod control;
pub mod load;
pub mod procstat;
pub mod relay;
pub mod rig;

use std::time::Duration;

/// The `p`th percentile (0-100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut s, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&mut s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut s, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }
}
