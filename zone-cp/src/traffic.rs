//! The zone's traffic totals, for the global's traffic map: the sum of what its sidecars'
//! inbounds served, since the zone started.
//!
//! In: each sidecar's traffic report (counters since the sidecar started). Out: the zone's
//! totals per (mesh, caller service and zone, service called, protocol), which only grow: a
//! report adds what changed since the sidecar's previous one (all of it after the sidecar
//! restarted), and a sidecar that leaves takes nothing away.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use strait_api::dps::{TrafficEdge, TrafficReport};

type Key = (String, String, String, String, String);

fn key(e: &TrafficEdge) -> Key {
    (e.mesh.clone(), e.source_service.clone(), e.source_zone.clone(), e.destination_service.clone(), e.protocol.clone())
}

#[derive(Default)]
struct Inner {
    /// Each connected sidecar's last report, by edge.
    last: HashMap<String, HashMap<Key, TrafficEdge>>,
    totals: BTreeMap<Key, TrafficEdge>,
    /// The latency buckets' bounds, as the sidecars report them.
    bounds: Vec<f64>,
}

/// The zone's totals; cheap to clone.
#[derive(Clone, Default)]
pub struct Traffic(Arc<Mutex<Inner>>);

impl Traffic {
    /// Adds what sidecar `id` served since its previous report.
    pub fn record(&self, id: &str, report: TrafficReport) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !report.latency_bounds.is_empty() {
            inner.bounds = report.latency_bounds.clone();
        }
        let Inner { last, totals, .. } = &mut *inner;
        let previous = last.entry(id.to_string()).or_default();
        for edge in report.edges {
            let k = key(&edge);
            let before = previous.get(&k);
            // Counters that went down: the sidecar restarted, everything is new.
            let restarted = before.is_some_and(|b| edge.requests < b.requests);
            let total = totals.entry(k.clone()).or_insert_with(|| TrafficEdge {
                mesh: edge.mesh.clone(),
                source_service: edge.source_service.clone(),
                source_zone: edge.source_zone.clone(),
                destination_service: edge.destination_service.clone(),
                protocol: edge.protocol.clone(),
                ..Default::default()
            });
            let base = before.filter(|_| !restarted);
            total.requests += edge.requests - base.map_or(0, |b| b.requests);
            total.errors += edge.errors.saturating_sub(base.map_or(0, |b| b.errors));
            total.latency_sum_seconds += (edge.latency_sum_seconds - base.map_or(0.0, |b| b.latency_sum_seconds)).max(0.0);
            if total.latency_buckets.len() < edge.latency_buckets.len() {
                total.latency_buckets.resize(edge.latency_buckets.len(), 0);
            }
            for (i, n) in edge.latency_buckets.iter().enumerate() {
                let was = base.and_then(|b| b.latency_buckets.get(i)).copied().unwrap_or(0);
                total.latency_buckets[i] += n.saturating_sub(was);
            }
            previous.insert(k, edge);
        }
    }

    /// Forgets sidecar `id` (it left); what it served stays counted.
    pub fn forget(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).last.remove(id);
    }

    /// The totals, each edge's destination in `zone`.
    pub fn report(&self, zone: &str) -> TrafficReport {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let edges = inner.totals.values().map(|e| TrafficEdge { destination_zone: zone.to_string(), ..e.clone() }).collect();
        TrafficReport { edges, latency_bounds: inner.bounds.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(requests: u64, errors: u64, buckets: Vec<u64>) -> TrafficEdge {
        TrafficEdge {
            mesh: "default".into(),
            source_service: "web".into(),
            source_zone: "zone-1".into(),
            destination_service: "api".into(),
            protocol: "http".into(),
            requests,
            errors,
            latency_buckets: buckets,
            ..Default::default()
        }
    }

    #[test]
    fn totals_add_what_changed_and_survive_restarts_and_departures() {
        let traffic = Traffic::default();
        traffic.record("default/api-1", TrafficReport { edges: vec![edge(10, 1, vec![6, 4])], latency_bounds: vec![0.1] });
        traffic.record("default/api-2", TrafficReport { edges: vec![edge(5, 0, vec![5, 0])], ..Default::default() });
        traffic.record("default/api-1", TrafficReport { edges: vec![edge(12, 1, vec![7, 5])], ..Default::default() });
        let totals = traffic.report("zone-2");
        assert_eq!((totals.edges[0].requests, totals.edges[0].errors, totals.edges[0].latency_buckets.clone()), (17, 1, vec![12, 5]));
        assert_eq!(totals.edges[0].destination_zone, "zone-2");
        assert_eq!(totals.latency_bounds, [0.1]);
        // api-2 restarted: its counters begin again, all of it new.
        traffic.record("default/api-2", TrafficReport { edges: vec![edge(2, 2, vec![1, 1])], ..Default::default() });
        assert_eq!(traffic.report("zone-2").edges[0].requests, 19);
        traffic.forget("default/api-1");
        assert_eq!(traffic.report("zone-2").edges[0].requests, 19, "a sidecar that leaves takes nothing away");
        traffic.record("default/api-1", TrafficReport { edges: vec![edge(3, 0, vec![3, 0])], ..Default::default() });
        assert_eq!(traffic.report("zone-2").edges[0].requests, 22, "a sidecar that comes back starts from zero");
    }
}
