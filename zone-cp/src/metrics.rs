//! Prometheus metrics of the zone control plane (`strait_zone_*`).
//!
//! In: sync events. Out: gauges and counters in the registry served on `/metrics`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The zone's metrics.
#[derive(Clone, Default)]
pub struct ZoneMetrics {
    /// 1 while the sync stream is open.
    pub connected: Gauge,
    /// Last global revision applied.
    pub revision: Gauge,
    /// NACKs sent.
    pub nacks: Counter,
    /// Sync streams opened to the global, one per (re)connection.
    pub streams: Counter,
}

impl ZoneMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ZoneMetrics::default();
        let r = registry.sub_registry_with_prefix("strait_zone_kds");
        r.register("connected", "1 while the zone sync stream is open", m.connected.clone());
        r.register("revision", "Last global revision applied", m.revision.clone());
        r.register("nacks", "Revisions rejected by this zone", m.nacks.clone());
        r.register("streams", "Sync streams opened to the global, one per (re)connection", m.streams.clone());
        m
    }
}

/// A mesh as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeshLabel {
    /// The mesh.
    pub mesh: String,
}

/// Metrics of the zone's dataplane config server (`strait_zone_dps_*`).
#[derive(Clone)]
pub struct DpsMetrics {
    /// Configurations refused by sidecars.
    pub config_nacks: Counter,
    /// Time from sending a configuration to a sidecar to its acknowledgement.
    pub push_latency: Histogram,
    /// Workload certificates signed.
    pub certificates_issued: Counter,
    /// When each mesh's intermediate CA of this zone expires (Unix seconds), as of its last signing.
    pub intermediate_expiry: Family<MeshLabel, Gauge>,
    /// Time to read a mesh's inputs and build its view, once per change that sessions need.
    pub view_builds: Histogram,
}

impl DpsMetrics {
    /// Creates and registers the metrics; `connected` is the set of connected proxies
    /// (`mesh/name` for sidecars, `gateway/name` for gateways), counted on each scrape.
    pub fn register(registry: &mut Registry, connected: Arc<Mutex<HashSet<String>>>) -> Self {
        let m = DpsMetrics {
            config_nacks: Counter::default(),
            push_latency: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            certificates_issued: Counter::default(),
            intermediate_expiry: Family::default(),
            view_builds: Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]),
        };
        let r = registry.sub_registry_with_prefix("strait_zone_dps");
        r.register("config_nacks", "Configurations refused by sidecars (NACK); each keeps its previous one", m.config_nacks.clone());
        r.register(
            "config_push_latency_seconds",
            "Time from sending a configuration to a sidecar to its acknowledgement",
            m.push_latency.clone(),
        );
        r.register("certificates_issued", "Workload certificates signed", m.certificates_issued.clone());
        r.register(
            "intermediate_expiry_timestamp_seconds",
            "When this zone's intermediate CA of each mesh expires",
            m.intermediate_expiry.clone(),
        );
        r.register(
            "mesh_view_build_seconds",
            "Time to read a mesh's policies and endpoints and build the view its sidecars' configurations come from, once per change they need",
            m.view_builds.clone(),
        );
        registry.register_collector(Box::new(ConnectedProxies(connected)));
        m
    }
}

/// `strait_zone_dps_connected_proxies{kind}`, counted from the connected set on each scrape.
#[derive(Debug)]
struct ConnectedProxies(Arc<Mutex<HashSet<String>>>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

impl Collector for ConnectedProxies {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (gateways, sidecars) = {
            let set = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let gateways = set.iter().filter(|id| id.starts_with("gateway/")).count();
            (gateways, set.len() - gateways)
        };
        let mut metric = encoder.encode_descriptor(
            "strait_zone_dps_connected_proxies",
            "Proxies connected to this zone now, by kind (sidecar, gateway)",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in [("sidecar", sidecars), ("gateway", gateways)] {
            let label = KindLabel { kind };
            let family = metric.encode_family(&label)?;
            ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)).encode(family)?;
        }
        Ok(())
    }
}
