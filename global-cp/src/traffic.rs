//! The traffic map's data: request rates, error ratios and latency between services across
//! zones, from the totals each zone reports on its sync stream (the sums of its sidecars'
//! inbound counters, the data behind their metrics).
//!
//! In: each zone's report every few seconds. Out: per edge (mesh, caller service and zone,
//! service called and its zone, protocol), the rate of requests over the last reports, the
//! share answered 5xx, and p50/p99 latency from the histogram's buckets. A zone that stopped
//! reporting for [`STALE`] has no rates.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use strait_api::dps::{TrafficEdge, TrafficReport};

/// Rates are measured over at least this much of the reports (or the two last ones).
pub const WINDOW: Duration = Duration::from_secs(10);
/// A zone silent for this long shows no rates.
pub const STALE: Duration = Duration::from_secs(30);

/// Reports kept per zone.
const KEPT: usize = 16;

#[derive(Default)]
struct Inner {
    zones: HashMap<String, VecDeque<(Instant, TrafficReport)>>,
}

/// Every zone's recent reports; cheap to clone.
#[derive(Clone, Default)]
pub struct TrafficMap(Arc<Mutex<Inner>>);

/// One side of an edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct End {
    /// The service.
    pub service: String,
    /// Its zone.
    pub zone: String,
}

/// Traffic from one service to another.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// The mesh.
    pub mesh: String,
    /// The caller.
    pub source: End,
    /// The called.
    pub destination: End,
    /// `http`, `http2`, `grpc` or `tcp`.
    pub protocol: String,
    /// Requests (or TCP connections) per second.
    pub rps: f64,
    /// The share of them answered 5xx.
    pub error_ratio: f64,
    /// Median latency in milliseconds (HTTP), when requests came.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds (HTTP), when requests came.
    pub p99_ms: Option<f64>,
    /// Requests counted since the zone started.
    pub total: u64,
}

impl TrafficMap {
    /// Keeps zone `zone`'s latest report.
    pub fn record(&self, zone: &str, report: TrafficReport) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let kept = inner.zones.entry(zone.to_string()).or_default();
        // A zone that restarted counts from zero again: its older reports no longer compare.
        let total = |r: &TrafficReport| r.edges.iter().map(|e| e.requests).sum::<u64>();
        if kept.back().is_some_and(|(_, last)| total(&report) < total(last)) {
            kept.clear();
        }
        kept.push_back((Instant::now(), report));
        while kept.len() > KEPT {
            kept.pop_front();
        }
    }

    /// Every edge's rates now.
    pub fn edges(&self) -> Vec<Edge> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (zone, kept) in &inner.zones {
            let Some((newest_at, newest)) = kept.back() else { continue };
            let fresh = newest_at.elapsed() < STALE;
            // The earliest report at least WINDOW older than the newest, else the oldest kept.
            let base = kept.iter().rev().skip(1).find(|(at, _)| newest_at.duration_since(*at) >= WINDOW).or_else(|| kept.front());
            let base = base.filter(|(at, _)| at < newest_at);
            for edge in &newest.edges {
                let before = base.and_then(|(_, r)| r.edges.iter().find(|e| same(e, edge)));
                let (rps, error_ratio, p50_ms, p99_ms) = match base {
                    Some((at, _)) if fresh => {
                        let seconds = newest_at.duration_since(*at).as_secs_f64();
                        let requests = edge.requests.saturating_sub(before.map_or(0, |b| b.requests));
                        let errors = edge.errors.saturating_sub(before.map_or(0, |b| b.errors));
                        let buckets: Vec<u64> = edge
                            .latency_buckets
                            .iter()
                            .enumerate()
                            .map(|(i, n)| n.saturating_sub(before.and_then(|b| b.latency_buckets.get(i)).copied().unwrap_or(0)))
                            .collect();
                        let ratio = if requests == 0 { 0.0 } else { errors as f64 / requests as f64 };
                        let quantile = |q| quantile_ms(&buckets, &newest.latency_bounds, q);
                        (requests as f64 / seconds, ratio, quantile(0.5), quantile(0.99))
                    }
                    _ => (0.0, 0.0, None, None),
                };
                out.push(Edge {
                    mesh: edge.mesh.clone(),
                    source: End { service: edge.source_service.clone(), zone: edge.source_zone.clone() },
                    destination: End {
                        service: edge.destination_service.clone(),
                        zone: if edge.destination_zone.is_empty() { zone.clone() } else { edge.destination_zone.clone() },
                    },
                    protocol: edge.protocol.clone(),
                    rps,
                    error_ratio,
                    p50_ms,
                    p99_ms,
                    total: edge.requests,
                });
            }
        }
        out.sort_by(|a, b| (&a.mesh, &a.source.service, &a.destination.service).cmp(&(&b.mesh, &b.source.service, &b.destination.service)));
        out
    }
}

fn same(a: &TrafficEdge, b: &TrafficEdge) -> bool {
    a.mesh == b.mesh
        && a.source_service == b.source_service
        && a.source_zone == b.source_zone
        && a.destination_service == b.destination_service
        && a.protocol == b.protocol
}

/// The `q` quantile, in milliseconds, of a histogram of per-bucket counts with upper `bounds`
/// (then +Inf), interpolated within its bucket; `None` without observations.
fn quantile_ms(buckets: &[u64], bounds: &[f64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { bounds.get(i - 1).copied().unwrap_or(0.0) };
            // Past the last bound: the last bound is all that is known.
            let Some(upper) = bounds.get(i).copied() else { return Some(lower * 1000.0) };
            let within = (rank - below as f64) / *n as f64;
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += n;
    }
    bounds.last().map(|b| b * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        let bounds = [0.001, 0.002, 0.004];
        assert_eq!(quantile_ms(&[0, 0, 0, 0], &bounds, 0.5), None);
        let p50 = quantile_ms(&[0, 10, 0, 0], &bounds, 0.5).unwrap();
        assert!((p50 - 1.5).abs() < 1e-9, "{p50}");
        let p99 = quantile_ms(&[50, 49, 1, 0], &bounds, 0.99).unwrap();
        assert!((1.0..=2.0).contains(&p99), "{p99}");
        assert_eq!(quantile_ms(&[0, 0, 0, 5], &bounds, 0.99), Some(4.0));
    }

    #[test]
    fn rates_come_from_the_difference_of_reports() {
        let map = TrafficMap::default();
        let report = |requests, errors| TrafficReport {
            edges: vec![TrafficEdge {
                mesh: "default".into(),
                source_service: "web".into(),
                source_zone: "zone-1".into(),
                destination_service: "api".into(),
                destination_zone: "zone-2".into(),
                protocol: "http".into(),
                requests,
                errors,
                latency_buckets: vec![requests, 0],
                ..Default::default()
            }],
            latency_bounds: vec![0.001],
        };
        map.record("zone-2", report(100, 0));
        assert_eq!(map.edges()[0].rps, 0.0, "one report: no rate yet");
        std::thread::sleep(Duration::from_millis(50));
        map.record("zone-2", report(110, 5));
        let edge = &map.edges()[0];
        assert!(edge.rps > 10.0, "10 requests in about 50 ms: {edge:?}");
        assert!((edge.error_ratio - 0.5).abs() < 1e-9, "{edge:?}");
        assert!(edge.p99_ms.is_some_and(|p| p <= 1.0), "{edge:?}");
        assert_eq!((edge.total, edge.destination.zone.as_str()), (110, "zone-2"));
    }
}
