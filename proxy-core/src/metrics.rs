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

/// One sample of a Prometheus text exposition: its name, its labels (`k`, `v` with the
/// quotes removed, escapes kept) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The sample's name (`..._total`, `..._bucket`).
    pub name: &'a str,
    /// Its labels, in order.
    pub labels: Vec<(&'a str, &'a str)>,
    /// Its value.
    pub value: f64,
}

impl Sample<'_> {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// The samples of a Prometheus (or OpenMetrics) text exposition; comments and lines that do
/// not parse are skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.trim().parse::<f64>().ok()?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}')?),
            None => (series, ""),
        };
        let labels = split_labels(labels)
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                Some((k, v.strip_prefix('"')?.strip_suffix('"')?))
            })
            .collect();
        Some(Sample { name, labels, value })
    })
}

/// The sum of the samples of a Prometheus text exposition that `selector` picks, or `None`
/// when it picks none. `selector` is a metric name, optionally with labels
/// (`name{a="x",b="y"}`): a sample is picked when its name is exactly `name` and it carries
/// every label given, whatever its other labels. For tools and tests that read `/metrics`.
pub fn sum_samples(text: &str, selector: &str) -> Option<f64> {
    let (name, wanted) = match selector.split_once('{') {
        Some((name, labels)) => (name, labels.trim_end_matches('}')),
        None => (selector, ""),
    };
    let wanted: Vec<(&str, &str)> = split_labels(wanted)
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k, v.trim_matches('"')))
        })
        .collect();
    samples(text)
        .filter(|s| s.name == name && wanted.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map(|s| s.value)
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// The `k="v"` pairs of a label set (commas inside quoted values are kept).
fn split_labels(labels: &str) -> impl Iterator<Item = &str> {
    let mut rest = labels;
    std::iter::from_fn(move || {
        let rest_trimmed = rest.trim_start_matches(',');
        if rest_trimmed.is_empty() {
            return None;
        }
        let (mut quoted, mut escaped, mut end) = (false, false, rest_trimmed.len());
        for (i, c) in rest_trimmed.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let (pair, after) = rest_trimmed.split_at(end);
        rest = after;
        Some(pair.trim())
    })
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use prometheus_client::registry::Registry;

    use super::*;

    #[test]
    fn selectors_sum_the_samples_with_every_label_given() {
        let text =
            "# TYPE a counter\na_total{x=\"1\",y=\"p,q\"} 2\na_total{x=\"1\",y=\"r\"} 3\na_total{x=\"2\"} 5\na_total_more 7\nb 1.5\n";
        assert_eq!(sum_samples(text, "a_total{x=\"1\"}"), Some(5.0));
        assert_eq!(sum_samples(text, "a_total{y=\"p,q\"}"), Some(2.0));
        assert_eq!(sum_samples(text, "a_total"), Some(10.0));
        assert_eq!(sum_samples(text, "a_total{x=\"3\"}"), None);
        assert_eq!(sum_samples(text, "b"), Some(1.5));
        assert_eq!(sum_samples(text, "a"), None);
    }

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
