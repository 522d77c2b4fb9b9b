//! The traffic report a sidecar sends its zone every few seconds, for the global's traffic
//! map: what its inbounds served, per caller, read from its own metrics.
//!
//! In: the sidecar's registry (the same counters `/metrics` shows). Out: a [`TrafficReport`]
//! with one edge per (mesh, caller service and zone, service called, protocol): HTTP
//! requests (with the 5xx among them and the latency histogram) and closed TCP connections,
//! counted since the sidecar started. Only the inbound side reports, so that a request
//! between two sidecars is counted once.

use std::collections::BTreeMap;

use prometheus_client::registry::Registry;
use strait_api::dps::{TrafficEdge, TrafficReport};
use strait_proxy_core::metrics::{samples, LATENCY_BUCKETS};

/// One edge's key: mesh, source service, source zone, destination service, protocol.
type Key = (String, String, String, String, String);

/// What the sidecar's inbounds served so far.
pub fn report(registry: &Registry) -> TrafficReport {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return TrafficReport::default();
    }
    from_exposition(&text)
}

fn from_exposition(text: &str) -> TrafficReport {
    let mut edges: BTreeMap<Key, TrafficEdge> = BTreeMap::new();
    // Cumulative bucket counts by edge, in the exposition's order of bounds.
    let mut cumulative: BTreeMap<Key, Vec<u64>> = BTreeMap::new();
    for sample in samples(text) {
        let counted = matches!(
            sample.name,
            "strait_dp_http_requests_total"
                | "strait_dp_tcp_connections_total"
                | "strait_dp_http_request_duration_seconds_bucket"
                | "strait_dp_http_request_duration_seconds_sum"
        );
        if !counted || sample.label("direction") != Some("inbound") {
            continue;
        }
        let label = |k: &str| sample.label(k).unwrap_or_default().to_string();
        let key = (label("mesh"), label("source_service"), label("source_zone"), label("destination_service"), label("protocol"));
        let edge = edges.entry(key.clone()).or_insert_with(|| TrafficEdge {
            mesh: key.0.clone(),
            source_service: key.1.clone(),
            source_zone: key.2.clone(),
            destination_service: key.3.clone(),
            protocol: key.4.clone(),
            ..Default::default()
        });
        let n = sample.value.max(0.0) as u64;
        match sample.name {
            "strait_dp_http_requests_total" => {
                edge.requests += n;
                if sample.label("status").is_some_and(|s| s.starts_with('5')) {
                    edge.errors += n;
                }
            }
            "strait_dp_tcp_connections_total" => edge.requests += n,
            "strait_dp_http_request_duration_seconds_sum" => edge.latency_sum_seconds += sample.value,
            _ => {
                let bound = sample.label("le").unwrap_or("+Inf");
                let index = bound
                    .parse::<f64>()
                    .ok()
                    .and_then(|b| LATENCY_BUCKETS.iter().position(|upper| (upper - b).abs() < 1e-9))
                    .unwrap_or(LATENCY_BUCKETS.len());
                let counts = cumulative.entry(key).or_insert_with(|| vec![0; LATENCY_BUCKETS.len() + 1]);
                counts[index] = n;
            }
        }
    }
    for (key, counts) in cumulative {
        if let Some(edge) = edges.get_mut(&key) {
            edge.latency_buckets = counts
                .iter()
                .scan(0u64, |below, &c| {
                    let in_bucket = c.saturating_sub(*below);
                    *below = (*below).max(c);
                    Some(in_bucket)
                })
                .collect();
        }
    }
    TrafficReport { edges: edges.into_values().filter(|e| e.requests > 0).collect(), latency_bounds: LATENCY_BUCKETS.to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_requests_errors_latency_and_connections_per_caller() {
        let labels = |status: &str| {
            format!("direction=\"inbound\",mesh=\"default\",source_service=\"web\",source_zone=\"zone-1\",destination_service=\"api\",destination_zone=\"zone-2\",protocol=\"http\"{status}")
        };
        let text = format!(
            "strait_dp_http_requests_total{{{}}} 7\nstrait_dp_http_requests_total{{{}}} 3\n\
             strait_dp_http_requests_total{{direction=\"outbound\",mesh=\"default\",source_service=\"api\",source_zone=\"zone-2\",destination_service=\"db\",destination_zone=\"zone-2\",protocol=\"http\",status=\"200\"}} 5\n\
             strait_dp_http_request_duration_seconds_bucket{{{},le=\"0.0001\"}} 2\nstrait_dp_http_request_duration_seconds_bucket{{{},le=\"0.0002\"}} 6\n\
             strait_dp_http_request_duration_seconds_bucket{{{},le=\"+Inf\"}} 10\nstrait_dp_http_request_duration_seconds_sum{{{}}} 0.5\n\
             strait_dp_tcp_connections_total{{direction=\"inbound\",mesh=\"default\",source_service=\"batch\",source_zone=\"zone-2\",destination_service=\"api\",destination_zone=\"zone-2\",protocol=\"tcp\"}} 4\n",
            labels(",status=\"200\""),
            labels(",status=\"503\""),
            labels(""),
            labels(""),
            labels(""),
            labels(""),
        );
        let report = from_exposition(&text);
        assert_eq!(report.edges.len(), 2, "{report:?}");
        let web = report.edges.iter().find(|e| e.source_service == "web").unwrap();
        assert_eq!((web.requests, web.errors, web.source_zone.as_str(), web.protocol.as_str()), (10, 3, "zone-1", "http"));
        assert_eq!(web.latency_buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!((web.latency_buckets[0], web.latency_buckets[1], web.latency_buckets[LATENCY_BUCKETS.len()]), (2, 4, 4));
        assert!((web.latency_sum_seconds - 0.5).abs() < 1e-9);
        let batch = report.edges.iter().find(|e| e.source_service == "batch").unwrap();
        assert_eq!((batch.requests, batch.protocol.as_str()), (4, "tcp"));
    }
}
