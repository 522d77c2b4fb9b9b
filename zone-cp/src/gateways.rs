//! The gateways registered in this zone, and what each is told over DPS.
//!
//! In: gateway registrations (a `ZoneGateway` record per connected gateway, zone only), the
//! zone's Dataplanes, the other zones' inventories, the zone identity and the system trust.
//! Out: the ingress addresses reported upstream, the egress addresses sidecars reach other zones
//! through ([`Remote`]), and each gateway's [`GatewayConfig`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strait_api::gateway_config::{GatewayConfig, LocalService, RemoteZone, ZoneInventory};
use strait_api::proxy_config::Remote;
use strait_api::{ResourceType, Spec};
use strait_cp_core::kinds::{SYSTEM_TRUST, ZONE_GATEWAY, ZONE_IDENTITY, ZONE_INVENTORY};
use strait_cp_core::resources::{Resources, ServiceError};
use strait_store::{Key, Precondition, Store, StoreError};

/// A connected gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// Its name.
    pub name: String,
    /// Where other zones reach its ingress.
    pub ingress_address: String,
    /// Where this zone's sidecars reach its egress.
    pub egress_address: String,
    /// Where Prometheus scrapes its metrics, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_address: Option<String>,
}

/// Records a gateway.
pub async fn register(store: &dyn Store, gateway: &Registration) -> Result<(), StoreError> {
    let data = serde_json::to_value(gateway).unwrap_or_default();
    store.put(Key::new(ZONE_GATEWAY, "", &gateway.name), data, Precondition::None).await.map(|_| ())
}

/// Forgets a gateway.
pub async fn unregister(store: &dyn Store, name: &str) -> Result<(), StoreError> {
    match store.delete(Key::new(ZONE_GATEWAY, "", name), Precondition::None).await {
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The connected gateways, by name.
pub async fn list(store: &dyn Store) -> Result<Vec<Registration>, StoreError> {
    Ok(store.list(ZONE_GATEWAY, Some("")).await?.into_iter().filter_map(|o| serde_json::from_value(o.data).ok()).collect())
}

/// Every zone's inventory, as synced from the global.
pub async fn inventories(store: &dyn Store) -> Result<Vec<ZoneInventory>, StoreError> {
    Ok(store.list(ZONE_INVENTORY, Some("")).await?.into_iter().filter_map(|o| serde_json::from_value(o.data).ok()).collect())
}

/// What a sidecar of this zone needs to reach the others: their inventories and the egresses.
pub async fn remote(store: &dyn Store) -> Result<Remote, StoreError> {
    let egresses = list(store).await?.into_iter().map(|g| g.egress_address).collect();
    Ok(Remote { inventories: inventories(store).await?, egresses })
}

/// Whether a change of `key` can change a gateway's configuration.
pub fn affects_gateways(key: &Key) -> bool {
    matches!(key.kind.as_str(), "Dataplane" | ZONE_INVENTORY | ZONE_IDENTITY | SYSTEM_TRUST)
}

/// Whether a change of `key` can change what sidecars know of other zones.
pub fn affects_remote(key: &Key) -> bool {
    key.kind == ZONE_INVENTORY || key.kind == ZONE_GATEWAY
}

/// The configuration of a gateway of `zone`.
pub async fn config(resources: &Resources, zone: &str) -> Result<GatewayConfig, ServiceError> {
    let store = resources.store().as_ref();
    let mut services: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for dp in resources.list(ResourceType::Dataplane, None).await? {
        let (Some(mesh), Spec::Dataplane(spec)) = (dp.mesh.as_deref(), &dp.spec) else { continue };
        let Ok(ip) = spec.networking.address.parse::<std::net::IpAddr>() else { continue };
        for inbound in &spec.networking.inbound {
            let endpoint = std::net::SocketAddr::new(ip, inbound.port).to_string();
            services.entry((mesh.to_string(), inbound.service().to_string())).or_default().push(endpoint);
        }
    }
    let services = services
        .into_iter()
        .map(|((mesh, service), mut endpoints)| {
            endpoints.sort();
            LocalService { mesh, service, endpoints }
        })
        .collect();
    let zones = inventories(store)
        .await?
        .into_iter()
        .filter(|i| i.zone != zone)
        .map(|i| RemoteZone {
            services: i.services.iter().filter(|s| s.healthy > 0).map(|s| format!("{}.{}", s.name, s.mesh)).collect(),
            zone: i.zone,
            ingress_addresses: i.ingress_addresses,
        })
        .collect();
    Ok(GatewayConfig {
        zone: zone.to_string(),
        services,
        zones,
        identity: crate::zone_identity::get(store).await?,
        trust: crate::zone_identity::system_trust(store).await?,
    })
}
