//! Prometheus metrics of the zone control plane (`strait_zone_*`).
//!
//! In: sync events. Out: gauges and counters in the registry served on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
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

/// Metrics of the zone's dataplane config server (`strait_zone_dps_*`).
#[derive(Clone, Default)]
pub struct DpsMetrics {
    /// Configurations refused by sidecars.
    pub config_nacks: Counter,
}

impl DpsMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &mut Registry) -> Self {
        let m = DpsMetrics::default();
        let r = registry.sub_registry_with_prefix("strait_zone_dps");
        r.register("config_nacks", "Configurations refused by sidecars (NACK); each keeps its previous one", m.config_nacks.clone());
        m
    }
}
