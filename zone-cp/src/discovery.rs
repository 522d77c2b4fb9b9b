//! Prometheus HTTP service discovery of a zone: every sidecar with a MeshMetric and every
//! gateway of the zone, so that one `http_sd_configs` entry scrapes the whole zone.
//!
//! In: the scrape target of each connected sidecar, set by its DPS session from the
//! MeshMetric of the configuration it was last sent (and removed when it leaves), and the
//! registered gateways. Out: the JSON of Prometheus's HTTP SD format: target groups with
//! their labels (`component`: sidecar or gateway, `zone`, `dataplane` and `service`, or
//! `gateway`). Target labels never repeat a label the proxies' own series carry (`mesh`,
//! `source_*`, `destination_*`), which Prometheus would rename: the mesh is
//! `__meta_strait_mesh`, for relabelling.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;
use strait_api::proxy_config::ProxyConfig;
use strait_api::Resource;

/// One scrape target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetGroup {
    /// `ip:port`.
    pub targets: Vec<String>,
    /// Its labels, `__metrics_path__` included.
    pub labels: BTreeMap<String, String>,
}

/// The targets of the connected sidecars, by `mesh/name`.
#[derive(Clone, Default)]
pub struct Targets(Arc<Mutex<BTreeMap<String, TargetGroup>>>);

impl Targets {
    /// Sets (or, without a MeshMetric in `config`, removes) the target of sidecar `dp`.
    pub fn set(&self, zone: &str, dp: &Resource, config: &ProxyConfig) {
        let id = format!("{}/{}", dp.mesh.as_deref().unwrap_or_default(), dp.name);
        let group = sidecar_target(zone, dp, config);
        let mut targets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match group {
            Some(g) => targets.insert(id, g),
            None => targets.remove(&id),
        };
    }

    /// Removes the target of sidecar `dp` (it left).
    pub fn remove(&self, dp: &Resource) {
        let id = format!("{}/{}", dp.mesh.as_deref().unwrap_or_default(), dp.name);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// Every sidecar's target group.
    pub fn sidecars(&self) -> Vec<TargetGroup> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }
}

/// The target of a sidecar whose configuration has a MeshMetric: its Dataplane's address and
/// the first Prometheus backend's port and path (the sidecar's defaults when it names none).
fn sidecar_target(zone: &str, dp: &Resource, config: &ProxyConfig) -> Option<TargetGroup> {
    use strait_api::policies::metric::MetricBackendType;
    let metric = config.proxy.metric.as_ref()?;
    let strait_api::Spec::Dataplane(spec) = &dp.spec else { return None };
    let prometheus = metric.backends.iter().find(|b| b.kind == MetricBackendType::Prometheus).and_then(|b| b.prometheus.as_ref());
    let port = prometheus.and_then(|p| p.port).unwrap_or(DEFAULT_SIDECAR_PORT);
    let path = prometheus.and_then(|p| p.path.clone()).unwrap_or_else(|| "/metrics".to_string());
    let address: std::net::IpAddr = spec.networking.address.parse().ok()?;
    let service = config.inbounds.first().map(|i| i.service.clone()).unwrap_or_default();
    let labels = BTreeMap::from([
        ("__metrics_path__".to_string(), path),
        ("__meta_strait_mesh".to_string(), config.mesh.clone()),
        ("component".to_string(), "sidecar".to_string()),
        ("zone".to_string(), zone.to_string()),
        ("dataplane".to_string(), dp.name.clone()),
        ("service".to_string(), service),
    ]);
    Some(TargetGroup { targets: vec![std::net::SocketAddr::new(address, port).to_string()], labels })
}

/// The port a sidecar exposes metrics on when its MeshMetric backend names none.
pub const DEFAULT_SIDECAR_PORT: u16 = 5670;

/// The whole discovery document: the sidecars' groups, then the gateways' (those that said
/// where they are scraped).
pub fn document(zone: &str, sidecars: Vec<TargetGroup>, gateways: &[crate::gateways::Registration]) -> Value {
    let mut groups = sidecars;
    for g in gateways {
        let Some(address) = &g.metrics_address else { continue };
        groups.push(TargetGroup {
            targets: vec![address.clone()],
            labels: BTreeMap::from([
                ("__metrics_path__".to_string(), "/metrics".to_string()),
                ("component".to_string(), "gateway".to_string()),
                ("zone".to_string(), zone.to_string()),
                ("gateway".to_string(), g.name.clone()),
            ]),
        });
    }
    serde_json::to_value(groups).unwrap_or_default()
}
