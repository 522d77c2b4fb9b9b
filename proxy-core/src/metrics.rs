//! Metric types for the request hot path.
//!
//! In: observations from every request. Out: values that `prometheus-client` encodes.
//! [`LatencyHistogram`] records with atomic adds only: `prometheus-client`'s own histogram
//! takes a lock per observation, which every request of both proxies would contend on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds, in seconds, of the latency buckets: 100 µs doubling up to about 13 s.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048, 0.4096, 0.8192, 1.6384, 3.2768, 6.5536,
    13.1072,
];

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS`] plus `+Inf`); clones share
/// the same counts.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let index = LATENCY_BUCKETS.iter().position(|upper| secs <= *upper).unwrap_or(LATENCY_BUCKETS.len());
        self.0.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per-bucket counts, not cumulative: the encoder accumulates them.
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, self.count(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn buckets_are_cumulative_in_the_exposition() {
        let h = LatencyHistogram::default();
        let mut registry = Registry::default();
        registry.register("latency_seconds", "test", h.clone());
        for micros in [50, 150, 150, 20_000_000] {
            h.observe(Duration::from_micros(micros));
        }
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(text.contains("latency_seconds_bucket{le=\"0.0001\"} 1\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"0.0002\"} 3\n"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"13.1072\"} 3\n"), "{text}");
        assert!(text.contains("latency_seconds_count 4\n"), "{text}");
        assert!(text.contains("latency_seconds_sum 20.00035"), "{text}");
        assert_eq!(h.count(), 4);
    }
}
