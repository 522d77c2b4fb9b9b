//! Inspection from the global: one sidecar of any zone (asked through its zone's sync
//! stream, see [`crate::inspect`]) and one service across zones (from the zones' inventories).
//!
//! In: `GET /meshes/{mesh}/dataplanes/{name}/inspect?what=config|policies|stats[&zone=Z]` and
//! `GET /meshes/{mesh}/services/{service}`. Out: JSON; 404 when no zone has the sidecar or
//! the service, 503/504 when the zone that may have it is not connected or does not answer.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use strait_api::gateway_config::ZoneInventory;
use strait_api::ResourceType;
use strait_cp_core::rest::errors::ApiError;

use super::handlers::get_one;
use super::AppState;

/// What an inspection shows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// What the sidecar runs, as it reports it: its configuration, version and certificate chain.
    Config,
    /// For each inbound, outbound and route: the policies that matched, in merge order, and the
    /// policy that set each effective field (computed by its zone).
    Policies,
    /// The sidecar's metrics, in the Prometheus text format.
    Stats,
}

/// The query of an inspection.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InspectQuery {
    /// What to show (default `config`).
    #[param(required = false, value_type = What)]
    pub what: Option<String>,
    /// The sidecar's zone; by default every connected zone is asked.
    #[param(required = false, value_type = String, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length = 63)]
    pub zone: Option<String>,
}

impl InspectQuery {
    /// The query from its pairs: each parameter at most once (others are ignored).
    fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut query = InspectQuery { what: None, zone: None };
        for (key, value) in pairs {
            let slot = match key.as_str() {
                "what" => &mut query.what,
                "zone" => &mut query.zone,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(ApiError::bad_request(format!("{key}: given more than once")));
            }
        }
        Ok(query)
    }
}

/// A sidecar's inspection.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Inspection {
    /// The mesh.
    pub mesh: String,
    /// The Dataplane.
    pub dataplane: String,
    /// The zone that answered.
    pub zone: String,
    /// What was asked.
    pub what: What,
    /// The answer.
    #[schema(value_type = Object)]
    pub result: Value,
}

/// Inspects one sidecar, in whichever zone it runs, through that zone's sync stream (the
/// replica that holds the stream answers: another replica forwards the question to it).
#[utoipa::path(
    get,
    path = "/meshes/{mesh}/dataplanes/{name}/inspect",
    tag = "inspect",
    params(InspectQuery),
    responses(
        (status = 200, body = Inspection),
        (status = 404, description = "No such mesh or zone, the zone named is not connected, or no connected zone has the sidecar", body = strait_cp_core::rest::errors::ErrorBody),
        (status = 502, description = "The zone or the sidecar answered something unusable", body = strait_cp_core::rest::errors::ErrorBody),
        (status = 504, description = "The zone or the sidecar did not answer in time", body = strait_cp_core::rest::errors::ErrorBody),
    )
)]
pub async fn inspect_dataplane(
    State(state): State<AppState>,
    Path((mesh, name)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Inspection>, ApiError> {
    let query = InspectQuery::from_pairs(pairs)?;
    let what = match query.what.as_deref().unwrap_or("config") {
        "config" => What::Config,
        "policies" => What::Policies,
        "stats" => What::Stats,
        other => return Err(ApiError::bad_request(format!("what: {other:?} is not one of config, policies, stats"))),
    };
    get_one(&state, ResourceType::Mesh, None, &mesh).await.map(drop)?;
    if let Some(zone) = &query.zone {
        get_one(&state, ResourceType::Zone, None, zone).await.map(drop)?;
    }
    let asked = serde_json::to_value(what).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let here = state.inspections.ask(query.zone.as_deref(), &mesh, &name, &asked).await;
    let failure = match here {
        Ok(answer) => return Ok(Json(Inspection { mesh, dataplane: name, zone: answer.zone, what, result: answer.json })),
        Err(failure) => failure,
    };
    // Not found among the zones this replica holds: the replicas that hold the others answer.
    if failure.0 != 404 || headers.contains_key(crate::peers::FORWARDED_BY) {
        return Err(ApiError::upstream(failure.0, failure.1));
    }
    let holders = state.zones.board().held_elsewhere(query.zone.as_deref()).await?;
    let mut by_replica: Vec<&crate::kds::board::Holder> = Vec::new();
    for holder in &holders {
        if !by_replica.iter().any(|h| h.replica == holder.replica) {
            by_replica.push(holder);
        }
    }
    let asked_zone = query.zone.as_deref();
    let forwarded = by_replica.iter().map(|holder| state.peers.inspect(holder, &mesh, &name, &asked, asked_zone));
    let mut failures = vec![failure];
    for answer in futures::future::join_all(forwarded).await {
        match answer.and_then(|json| {
            serde_json::from_value::<Inspection>(json).map_err(|e| (502, format!("another replica answered an unusable inspection: {e}")))
        }) {
            Ok(inspection) => return Ok(Json(inspection)),
            Err(failure) => failures.push(failure),
        }
    }
    // A replica whose zone may have the sidecar but failed says more than a "not found".
    let (status, why) = failures.iter().rev().find(|(status, _)| *status != 404).or(failures.last()).cloned().unwrap_or_default();
    Err(ApiError::upstream(status, why))
}

/// A service across zones.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceDetail {
    /// The service.
    pub name: String,
    /// Its mesh.
    pub mesh: String,
    /// `tcp`, `http`, `http2` or `grpc`, as its endpoints declare it.
    pub protocol: String,
    /// Endpoints in every zone.
    pub endpoints: u64,
    /// Of which pass their health checks.
    pub healthy: u64,
    /// Per zone that reports the service.
    pub zones: Vec<ServiceInZone>,
}

/// A service in one zone.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServiceInZone {
    /// The zone.
    pub zone: String,
    /// Whether the zone is connected now (its figures are as of its last report otherwise).
    pub connected: bool,
    /// Endpoints registered.
    pub endpoints: u64,
    /// Of which healthy.
    pub healthy: u64,
    /// The endpoints one by one (their id, and their inbound's tags), when the zone reports them.
    pub instances: Vec<Instance>,
}

/// One endpoint as other zones know it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Instance {
    /// Its opaque id (its address stays in its zone).
    pub id: String,
    /// Its inbound's tags.
    pub tags: BTreeMap<String, String>,
}

/// Reads one service of a mesh across the zones that report it: endpoints and health per zone.
#[utoipa::path(
    get,
    path = "/meshes/{mesh}/services/{service}",
    tag = "inspect",
    responses((status = 200, body = ServiceDetail), (status = 404, body = strait_cp_core::rest::errors::ErrorBody))
)]
pub async fn get_service(
    State(state): State<AppState>,
    Path((mesh, service)): Path<(String, String)>,
) -> Result<Json<ServiceDetail>, ApiError> {
    get_one(&state, ResourceType::Mesh, None, &mesh).await.map(drop)?;
    let mut detail =
        ServiceDetail { name: service.clone(), mesh: mesh.clone(), protocol: String::new(), endpoints: 0, healthy: 0, zones: Vec::new() };
    for record in state.resources.store().list(strait_cp_core::kinds::ZONE_INVENTORY, Some("")).await? {
        let Ok(inventory) = serde_json::from_value::<ZoneInventory>(record.data) else { continue };
        for s in inventory.services.iter().filter(|s| s.mesh == mesh && s.name == service) {
            if detail.protocol.is_empty() {
                detail.protocol = s.protocol.clone();
            }
            detail.endpoints += u64::from(s.endpoints);
            detail.healthy += u64::from(s.healthy);
            detail.zones.push(ServiceInZone {
                zone: inventory.zone.clone(),
                connected: state.zones.board().is_connected(&inventory.zone).await,
                endpoints: u64::from(s.endpoints),
                healthy: u64::from(s.healthy),
                instances: s.instances.iter().map(|i| Instance { id: i.id.clone(), tags: i.tags.clone() }).collect(),
            });
        }
    }
    if detail.zones.is_empty() {
        return Err(ApiError::not_found(format!("no zone reports service {service:?} in mesh {mesh:?}")));
    }
    detail.zones.sort_by(|a, b| a.zone.cmp(&b.zone));
    Ok(Json(detail))
}
