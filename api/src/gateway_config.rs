//! What crosses zones: each zone's inventory as the global stores and syncs it, and the whole
//! configuration of an east-west gateway, as its zone control plane sends it over DPS.
//!
//! In: the zone's Dataplanes, the other zones' inventories, the zone identity and the system
//! trust bundle. Out: a [`GatewayConfig`] (pure and I/O-free, like the sidecar's
//! [`crate::proxy_config`]), and the SNI names that route a connection through gateways
//! ([`sni`], [`parse_sni`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// One service of a zone's inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryService {
    /// The mesh.
    pub mesh: String,
    /// The service.
    pub name: String,
    /// Endpoints registered in the zone.
    pub endpoints: u32,
    /// Of which healthy.
    pub healthy: u32,
    /// What it speaks (`tcp` when unknown).
    #[serde(default = "tcp")]
    pub protocol: String,
    /// Its endpoints one by one, so that other zones balance over them (empty from zones that
    /// report only counts: those are reached as one endpoint per zone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InventoryInstance>,
}

/// One endpoint of a service, as other zones see it: an opaque id (its address stays in its
/// zone) and its inbound's tags (for subsets such as `version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryInstance {
    /// [`instance_id`] of the endpoint.
    pub id: String,
    /// Its inbound's tags.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// The id other zones know an endpoint by: a hash of its mesh, service and address (a DNS
/// label: `e` and 16 hex digits), the same on the zone's inventory and its gateways' ingress.
pub fn instance_id(mesh: &str, service: &str, address: &std::net::SocketAddr) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{mesh}/{service}/{address}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("e{h:016x}")
}

fn tcp() -> String {
    "tcp".into()
}

/// A sidecar that refused its latest configuration (NACK) and runs on an older one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneNack {
    /// The mesh.
    pub mesh: String,
    /// The Dataplane.
    pub dataplane: String,
    /// The configuration version refused.
    pub version: u64,
    /// Why, as the sidecar said.
    pub error: String,
}

/// A zone's inventory, as stored on the global and synced to every zone (`ZoneInventory`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneInventory {
    /// The zone.
    pub zone: String,
    /// Its services.
    #[serde(default)]
    pub services: Vec<InventoryService>,
    /// Where other zones reach its gateways' ingress (`ip:port`).
    #[serde(default)]
    pub ingress_addresses: Vec<String>,
}

/// A service of the gateway's own zone, with the inbounds of its sidecars.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalService {
    /// The mesh.
    pub mesh: String,
    /// The service.
    pub service: String,
    /// Its sidecars' inbounds (`ip:port`).
    pub endpoints: Vec<String>,
}

/// Another zone, as the gateway reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteZone {
    /// The zone.
    pub zone: String,
    /// Its gateways' ingress addresses (`ip:port`).
    pub ingress_addresses: Vec<String>,
    /// The services it hosts, as `<service>.<mesh>`.
    pub services: Vec<String>,
}

/// The zone identity the gateways of a zone present to each other.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ZoneIdentity {
    /// Certificate of `spiffe://strait.system/zone/<zone>`, PEM.
    pub cert_pem: String,
    /// Its key, PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for ZoneIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneIdentity").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// The system trust bundle (`SystemTrust`, synced): the system CA, the fingerprints of zone
/// identities revoked with their zone, and the zones disabled for now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemTrust {
    /// Root certificates, PEM.
    #[serde(default)]
    pub roots: Vec<String>,
    /// Hex SHA-256 fingerprints of revoked zone identity certificates.
    #[serde(default)]
    pub revoked: BTreeSet<String>,
    /// Zones disabled on the global (`enabled: false`): their identities are refused, and every
    /// tunnel to or from them is closed, until they are enabled again.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub disabled_zones: BTreeSet<String>,
}

/// A gateway's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayConfig {
    /// The gateway's zone.
    pub zone: String,
    /// Services of this zone that other zones may reach through its ingress.
    pub services: Vec<LocalService>,
    /// The other zones.
    pub zones: Vec<RemoteZone>,
    /// The zone identity; absent until the global has issued it.
    pub identity: Option<ZoneIdentity>,
    /// Whom the tunnel trusts.
    pub trust: SystemTrust,
}

/// The SNI a sidecar sends for `service` of `mesh`: `<service>.<mesh>.strait`, or, through a
/// gateway to one zone, `<service>.<mesh>.<zone>.strait`.
pub fn sni(service: &str, mesh: &str, zone: Option<&str>) -> String {
    match zone {
        Some(z) => format!("{service}.{mesh}.{z}.strait"),
        None => format!("{service}.{mesh}.strait"),
    }
}

/// The SNI a sidecar sends for one endpoint (by [`instance_id`]) of `service` in another zone,
/// through the gateways: `<instance>.<service>.<mesh>.<zone>.strait`.
pub fn instance_sni(instance: &str, service: &str, mesh: &str, zone: &str) -> String {
    format!("{instance}.{service}.{mesh}.{zone}.strait")
}

/// What an SNI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SniTarget<'a> {
    /// The service.
    pub service: &'a str,
    /// The mesh.
    pub mesh: &'a str,
    /// The zone, when the caller chose one.
    pub zone: Option<&'a str>,
    /// The endpoint of the service in that zone, when the caller chose one.
    pub instance: Option<&'a str>,
}

/// Parses an SNI made by [`sni`] or [`instance_sni`].
pub fn parse_sni(name: &str) -> Option<SniTarget<'_>> {
    let rest = name.strip_suffix(".strait")?;
    let parts: Vec<&str> = rest.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts[..] {
        [service, mesh] => Some(SniTarget { service, mesh, zone: None, instance: None }),
        [service, mesh, zone] => Some(SniTarget { service, mesh, zone: Some(zone), instance: None }),
        [instance, service, mesh, zone] => Some(SniTarget { service, mesh, zone: Some(zone), instance: Some(instance) }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_round_trips_with_and_without_a_zone() {
        let local = sni("backend", "default", None);
        assert_eq!(local, "backend.default.strait");
        assert_eq!(parse_sni(&local), Some(SniTarget { service: "backend", mesh: "default", zone: None, instance: None }));
        let remote = sni("backend", "default", Some("zone-2"));
        assert_eq!(parse_sni(&remote), Some(SniTarget { service: "backend", mesh: "default", zone: Some("zone-2"), instance: None }));
        let id = instance_id("default", "backend", &"10.0.0.1:8080".parse().unwrap());
        assert!(id.len() == 17 && id.starts_with('e'), "{id}");
        assert_ne!(id, instance_id("default", "backend", &"10.0.0.2:8080".parse().unwrap()));
        let one = instance_sni(&id, "backend", "default", "zone-2");
        assert_eq!(
            parse_sni(&one),
            Some(SniTarget { service: "backend", mesh: "default", zone: Some("zone-2"), instance: Some(id.as_str()) })
        );
        for bad in ["backend.default", "strait", ".default.strait", "a.b.c.d.e.strait", "a..strait", "a.b..strait", "example.com"] {
            assert_eq!(parse_sni(bad), None, "{bad}");
        }
    }

    #[test]
    fn inventories_from_older_zones_default_to_tcp() {
        let inv: ZoneInventory = serde_json::from_value(serde_json::json!({
            "zone": "zone-2",
            "services": [{"mesh": "default", "name": "db", "endpoints": 2, "healthy": 2}],
        }))
        .unwrap();
        assert_eq!(inv.services[0].protocol, "tcp");
        assert!(inv.ingress_addresses.is_empty());
    }
}
