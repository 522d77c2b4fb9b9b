//! The traffic map: a read-only page served by the global (`/map`) and its data
//! (`/map/data`): zones with their services and gateways, and the request rates, error ratios
//! and latency between services, which the page fetches again every two seconds.
//!
//! In: the Zone resources with their live status and inventories, and the rates of
//! [`crate::traffic::TrafficMap`]. Out: HTML (one file, no external resource) and JSON.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use strait_api::gateway_config::ZoneInventory;
use strait_api::ResourceType;
use strait_cp_core::kinds::ZONE_INVENTORY;
use strait_cp_core::rest::errors::ApiError;
use strait_store::Key;

use super::AppState;

const PAGE: &str = include_str!("map.html");

/// `/map`: the page.
pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], PAGE)
}

/// A zone on the map.
#[derive(Debug, Serialize)]
pub struct MapZone {
    name: String,
    connected: bool,
    /// Where other zones reach its gateways.
    gateways: Vec<String>,
    services: Vec<MapService>,
}

/// A service of a zone on the map.
#[derive(Debug, Serialize)]
pub struct MapService {
    mesh: String,
    name: String,
    protocol: String,
    endpoints: u32,
    healthy: u32,
}

/// What the page draws.
#[derive(Debug, Serialize)]
pub struct MapData {
    zones: Vec<MapZone>,
    edges: Vec<crate::traffic::Edge>,
}

/// `/map/data`: zones, services, gateways and the traffic between services.
pub async fn data(State(state): State<AppState>) -> Result<Json<MapData>, ApiError> {
    let mut zones = Vec::new();
    for zone in state.resources.list(ResourceType::Zone, None).await? {
        let connected = state.zones.board().is_connected(&zone.name).await;
        let inventory = state
            .resources
            .store()
            .get(&Key::new(ZONE_INVENTORY, "", &zone.name))
            .await?
            .and_then(|o| serde_json::from_value::<ZoneInventory>(o.data).ok())
            .unwrap_or_default();
        let mut services: Vec<MapService> = inventory
            .services
            .into_iter()
            .map(|s| MapService { mesh: s.mesh, name: s.name, protocol: s.protocol, endpoints: s.endpoints, healthy: s.healthy })
            .collect();
        services.sort_by(|a, b| (&a.mesh, &a.name).cmp(&(&b.mesh, &b.name)));
        zones.push(MapZone { name: zone.name, connected, gateways: inventory.ingress_addresses, services });
    }
    zones.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(MapData { zones, edges: state.traffic.edges() }))
}
