//! The whole configuration of one sidecar, as the zone control plane sends it over DPS.
//!
//! In: the sidecar's Dataplane, the policies of its mesh, the mesh's Dataplanes (endpoints),
//! and the mesh's trust bundle. Out: a [`ProxyConfig`]: its identity, inbounds with their
//! permission rules, outbounds with endpoints and merged policies. Pure and I/O-free, so the
//! zone can compute it for every sidecar and send only the ones that changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dataplane::DataplaneSpec;
use crate::gateway_config::ZoneInventory;
use crate::merge::{effective_config, FromRule, RouteRule};
use crate::names::{PROTOCOL_TAG, SERVICE_TAG};
use crate::{Resource, ResourceType, Spec};

/// A sidecar's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// The mesh.
    pub mesh: String,
    /// The Dataplane's name.
    pub dataplane: String,
    /// The zone the Dataplane runs in; its endpoints are preferred.
    #[serde(default)]
    pub zone: String,
    /// The workload identity (`spiffe://<mesh>/<service>`).
    pub identity: String,
    /// Services this proxy serves.
    pub inbounds: Vec<InboundConfig>,
    /// Services this proxy reaches.
    pub outbounds: Vec<OutboundConfig>,
    /// Roots and revoked intermediates of the mesh.
    pub trust_bundle: Value,
    /// Lifetime of workload certificates, in seconds.
    pub certificate_lifetime_secs: u64,
    /// Proxy-wide policies (MeshTrace, MeshMetric), merged.
    pub proxy: BTreeMap<ResourceType, Value>,
    /// Port of the transparent outbound listener, when the Dataplane uses transparent proxying.
    #[serde(default)]
    pub transparent_outbound_port: Option<u16>,
}

/// One inbound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundConfig {
    /// Port for mTLS traffic from other sidecars.
    pub port: u16,
    /// Where the application listens.
    pub service_address: String,
    /// The application's port.
    pub service_port: u16,
    /// The service.
    pub service: String,
    /// `tcp`, `http`, `http2` or `grpc`.
    pub protocol: String,
    /// Per policy type, rules by caller (MeshTrafficPermission among them); no
    /// MeshTrafficPermission rule for a caller means it is denied.
    pub policies: BTreeMap<ResourceType, Vec<FromRule>>,
}

/// One destination service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundConfig {
    /// The service.
    pub service: String,
    /// The local port for explicit outbounds (None: reached through transparent proxying).
    pub port: Option<u16>,
    /// The local address of an explicit outbound.
    pub address: Option<String>,
    /// `tcp`, `http`, `http2` or `grpc` (from the endpoints' tags).
    pub protocol: String,
    /// Where the service runs.
    pub endpoints: Vec<Endpoint>,
    /// Per policy type, the merged conf.
    pub policies: BTreeMap<ResourceType, Value>,
    /// HTTP routes, most specific first.
    pub http_routes: Vec<RouteRule>,
    /// TCP route, if any.
    pub tcp_route: Option<Value>,
}

/// An endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Address of the endpoint's sidecar.
    pub address: String,
    /// Its inbound port.
    pub port: u16,
    /// Its zone.
    pub zone: String,
    /// Its inbound tags.
    pub tags: BTreeMap<String, String>,
}

/// The other zones, as a sidecar reaches them: their inventories, and this zone's egresses.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    /// Every zone's inventory (this zone's own is skipped).
    pub inventories: Vec<ZoneInventory>,
    /// This zone's gateways' egresses (`ip:port`); without one, other zones are out of reach.
    pub egresses: Vec<String>,
}

/// Builds the configuration of Dataplane `dp` (in `zone`) from the mesh's `resources`
/// (policies and Dataplanes), the other zones' services reached through `remote`, its
/// `trust_bundle` and certificate lifetime.
pub fn build(
    dp: &Resource,
    zone: &str,
    resources: &[Resource],
    remote: &Remote,
    trust_bundle: Value,
    certificate_lifetime_secs: u64,
) -> Option<ProxyConfig> {
    let Spec::Dataplane(spec) = &dp.spec else { return None };
    let mesh = dp.mesh.clone()?;
    let mut endpoints = endpoints_by_service(resources, zone);
    add_remote_endpoints(&mut endpoints, remote, &mesh, zone);
    let services: Vec<&str> = endpoints.keys().map(String::as_str).collect();
    let effective = effective_config(&dp.name, spec, resources, &services);
    let inbounds = spec
        .networking
        .inbound
        .iter()
        .zip(&effective.inbounds)
        .map(|(i, eff)| InboundConfig {
            port: i.port,
            service_address: i.service_address.clone().unwrap_or_else(|| "127.0.0.1".into()),
            service_port: i.service_port.unwrap_or(i.port),
            service: i.service().to_string(),
            protocol: i.tags.get(PROTOCOL_TAG).cloned().unwrap_or_else(|| "tcp".into()),
            policies: eff.from.clone(),
        })
        .collect();
    let outbounds = effective
        .outbounds
        .into_iter()
        .map(|o| {
            let explicit = spec.networking.outbound.iter().find(|x| x.service() == o.service);
            let eps = endpoints.get(&o.service).cloned().unwrap_or_default();
            let protocol = eps.iter().find_map(|e| e.tags.get(PROTOCOL_TAG).cloned()).unwrap_or_else(|| "tcp".into());
            OutboundConfig {
                port: explicit.map(|x| x.port),
                address: explicit.map(|x| x.address.clone().unwrap_or_else(|| "127.0.0.1".into())),
                protocol,
                endpoints: eps,
                policies: o.to.into_iter().map(|(k, v)| (k, v.conf)).collect(),
                http_routes: o.http_routes,
                tcp_route: o.tcp_route.map(|t| t.conf),
                service: o.service,
            }
        })
        .collect();
    let service = spec.networking.inbound.first().map(|i| i.service().to_string()).unwrap_or_default();
    Some(ProxyConfig {
        identity: format!("spiffe://{mesh}/{service}"),
        mesh,
        dataplane: dp.name.clone(),
        zone: zone.to_string(),
        inbounds,
        outbounds,
        trust_bundle,
        certificate_lifetime_secs,
        proxy: effective.proxy.into_iter().map(|(k, v)| (k, v.conf)).collect(),
        transparent_outbound_port: spec.networking.transparent_proxying.as_ref().map(|t| t.redirect_port_outbound),
    })
}

fn endpoints_by_service(resources: &[Resource], zone: &str) -> BTreeMap<String, Vec<Endpoint>> {
    let mut out: BTreeMap<String, Vec<Endpoint>> = BTreeMap::new();
    for r in resources.iter().filter(|r| r.kind == ResourceType::Dataplane) {
        let Spec::Dataplane(DataplaneSpec { networking }) = &r.spec else { continue };
        for inbound in &networking.inbound {
            let Some(service) = inbound.tags.get(SERVICE_TAG) else { continue };
            out.entry(service.clone()).or_default().push(Endpoint {
                address: networking.address.clone(),
                port: inbound.port,
                zone: zone.to_string(),
                tags: inbound.tags.clone(),
            });
        }
    }
    out
}

/// For each other zone that has a healthy endpoint of the service and a gateway to reach it
/// by, one endpoint per egress of this zone, tagged with that zone: the sidecar prefers its own
/// zone, orders the others, and spreads over (and fails over between) the egresses.
fn add_remote_endpoints(out: &mut BTreeMap<String, Vec<Endpoint>>, remote: &Remote, mesh: &str, zone: &str) {
    let egresses: Vec<(String, u16)> = remote
        .egresses
        .iter()
        .filter_map(|e| e.rsplit_once(':'))
        .filter_map(|(a, p)| Some((a.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse().ok()?)))
        .collect();
    if egresses.is_empty() {
        return;
    }
    for inventory in remote.inventories.iter().filter(|i| i.zone != zone && !i.ingress_addresses.is_empty()) {
        for service in inventory.services.iter().filter(|s| s.mesh == mesh && s.healthy > 0) {
            let tags =
                BTreeMap::from([(SERVICE_TAG.to_string(), service.name.clone()), (PROTOCOL_TAG.to_string(), service.protocol.clone())]);
            let endpoints = out.entry(service.name.clone()).or_default();
            for (address, port) in &egresses {
                endpoints.push(Endpoint { address: address.clone(), port: *port, zone: inventory.zone.clone(), tags: tags.clone() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_documents;

    #[test]
    fn a_sidecar_gets_its_inbounds_permissions_and_destinations() {
        let docs = r#"
type: Dataplane
name: web-1
mesh: default
spec:
  networking:
    address: 192.0.2.1
    inbound: [{port: 8080, servicePort: 80, tags: {strait.io/service: web, strait.io/protocol: http}}]
    outbound: [{port: 10001, tags: {strait.io/service: api}}]
---
type: Dataplane
name: api-1
mesh: default
spec:
  networking:
    address: 192.0.2.2
    inbound: [{port: 9090, tags: {strait.io/service: api, strait.io/protocol: http, version: v1}}]
---
type: MeshTrafficPermission
name: allow-all
mesh: default
spec:
  from: [{targetRef: {kind: Mesh}, default: {action: Allow}}]
---
type: MeshTimeout
name: t
mesh: default
spec:
  to: [{targetRef: {kind: MeshService, name: api}, default: {idleTimeout: 5s}}]
"#;
        let resources: Vec<Resource> = parse_documents(docs).into_iter().map(|r| r.unwrap()).collect();
        let cfg = build(&resources[0], "zone-1", &resources, &Remote::default(), serde_json::json!({"roots": []}), 3600).unwrap();
        assert_eq!(cfg.identity, "spiffe://default/web");
        assert_eq!(cfg.inbounds[0].service_port, 80);
        assert_eq!(cfg.inbounds[0].protocol, "http");
        let mtp = &cfg.inbounds[0].policies[&ResourceType::MeshTrafficPermission];
        assert_eq!(mtp[0].conf["action"], "Allow");
        let api = cfg.outbounds.iter().find(|o| o.service == "api").unwrap();
        assert_eq!(api.port, Some(10001));
        assert_eq!(api.protocol, "http");
        assert_eq!(
            api.endpoints,
            vec![Endpoint {
                address: "192.0.2.2".into(),
                port: 9090,
                zone: "zone-1".into(),
                tags: resources[1].clone().spec_value()["networking"]["inbound"][0]["tags"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            }]
        );
        assert_eq!(api.policies[&ResourceType::MeshTimeout]["idleTimeout"], "5s");
        let web = cfg.outbounds.iter().find(|o| o.service == "web").unwrap();
        assert_eq!(web.port, None, "reachable through transparent proxying only");
    }

    #[test]
    fn services_of_other_zones_are_reached_through_the_egress() {
        let docs = r#"
type: Dataplane
name: web-1
mesh: default
spec:
  networking:
    address: 192.0.2.1
    inbound: [{port: 8080, tags: {strait.io/service: web}}]
---
type: Dataplane
name: api-1
mesh: default
spec:
  networking:
    address: 192.0.2.2
    inbound: [{port: 9090, tags: {strait.io/service: api, strait.io/protocol: http}}]
"#;
        let resources: Vec<Resource> = parse_documents(docs).into_iter().map(|r| r.unwrap()).collect();
        let inventory = |zone: &str, services: serde_json::Value| -> ZoneInventory {
            serde_json::from_value(serde_json::json!({"zone": zone, "services": services, "ingressAddresses": ["192.0.2.200:10001"]}))
                .unwrap()
        };
        let remote = Remote {
            inventories: vec![
                inventory(
                    "zone-1",
                    serde_json::json!([{"mesh": "default", "name": "api", "endpoints": 1, "healthy": 1, "protocol": "http"}]),
                ),
                inventory(
                    "zone-2",
                    serde_json::json!([
                        {"mesh": "default", "name": "api", "endpoints": 2, "healthy": 2, "protocol": "http"},
                        {"mesh": "default", "name": "db", "endpoints": 1, "healthy": 1, "protocol": "tcp"},
                        {"mesh": "default", "name": "down", "endpoints": 1, "healthy": 0, "protocol": "tcp"},
                        {"mesh": "other", "name": "elsewhere", "endpoints": 1, "healthy": 1, "protocol": "tcp"},
                    ]),
                ),
            ],
            egresses: vec!["192.0.2.100:10002".into()],
        };
        let cfg = build(&resources[0], "zone-1", &resources, &remote, serde_json::json!({}), 3600).unwrap();
        let zones = |service: &str| -> Vec<(String, String, u16)> {
            cfg.outbounds
                .iter()
                .find(|o| o.service == service)
                .map(|o| o.endpoints.iter().map(|e| (e.zone.clone(), e.address.clone(), e.port)).collect())
                .unwrap_or_default()
        };
        assert_eq!(
            zones("api"),
            vec![("zone-1".into(), "192.0.2.2".into(), 9090), ("zone-2".into(), "192.0.2.100".into(), 10002)],
            "this zone's own inventory adds nothing: its endpoints are the Dataplanes"
        );
        assert_eq!(zones("db"), vec![("zone-2".into(), "192.0.2.100".into(), 10002)], "a service only in another zone is reachable");
        assert_eq!(cfg.outbounds.iter().find(|o| o.service == "db").unwrap().protocol, "tcp");
        assert!(zones("down").is_empty(), "a zone with no healthy endpoint is not used");
        assert!(zones("elsewhere").is_empty(), "other meshes stay apart");

        let mut no_gateway = remote.clone();
        no_gateway.inventories[1].ingress_addresses.clear();
        let cfg = build(&resources[0], "zone-1", &resources, &no_gateway, serde_json::json!({}), 3600).unwrap();
        assert!(cfg.outbounds.iter().all(|o| o.service != "db"), "a zone whose gateways are all gone is out of reach");

        let two = Remote { egresses: vec!["192.0.2.100:10002".into(), "192.0.2.101:10002".into()], ..remote.clone() };
        let cfg = build(&resources[0], "zone-1", &resources, &two, serde_json::json!({}), 3600).unwrap();
        let db = cfg.outbounds.iter().find(|o| o.service == "db").unwrap();
        let via: Vec<_> = db.endpoints.iter().map(|e| (e.zone.as_str(), e.address.as_str())).collect();
        assert_eq!(via, [("zone-2", "192.0.2.100"), ("zone-2", "192.0.2.101")], "one endpoint per egress of this zone");

        let no_egress = Remote { egresses: vec![], ..remote };
        let cfg = build(&resources[0], "zone-1", &resources, &no_egress, serde_json::json!({}), 3600).unwrap();
        assert!(cfg.outbounds.iter().all(|o| o.service != "db"), "without a gateway in this zone, other zones are out of reach");
    }
}
