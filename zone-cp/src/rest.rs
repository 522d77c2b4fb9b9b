//! The zone's REST API: what the global synced (meshes, policies, read-only), this zone's
//! Dataplanes (read-write, with the zone's admin token), the zones' inventories, health,
//! readiness and metrics.
//!
//! In: HTTP GETs. Out: the same JSON shapes as the global's API; writes are refused with a
//! message that points at the global.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use strait_api::{Resource, ResourceType};
use strait_cp_core::kinds::ZONE_INVENTORY;
use strait_cp_core::resources::{PutOutcome, Resources, ServiceError};
use strait_cp_core::rest::errors::ApiError;
use tokio::sync::watch;

/// What the handlers reach.
#[derive(Clone)]
pub struct ZoneApi {
    /// Publishes the inventory after Dataplane changes.
    pub inventory: crate::inventory::Publisher,
    /// The zone's store, typed.
    pub resources: Resources,
    /// True once a snapshot is on disk.
    pub ready: watch::Receiver<bool>,
    /// Metrics registry.
    pub registry: Arc<Registry>,
    /// This zone's name.
    pub zone: Arc<String>,
    /// The connected sidecars' Prometheus targets.
    pub targets: crate::discovery::Targets,
    /// On Kubernetes: whether this replica leads. A standby is ready (so that a rolling
    /// update, which waits for the new Pod to be ready before stopping the old one, goes on);
    /// it refuses sidecars until it leads.
    pub leading: Option<watch::Receiver<bool>>,
}

/// Builds the router; writes (Dataplanes only) need the zone's admin token.
pub fn router(api: ZoneApi, admin_token: strait_cp_core::auth::SharedToken) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/prometheus/targets", get(prometheus_targets))
        .route("/meshes", get(list_meshes))
        .route("/meshes/{mesh}", get(get_mesh))
        .route("/meshes/{mesh}/{rtype}", get(list_in_mesh))
        .route("/meshes/{mesh}/{rtype}/{name}", get(get_in_mesh).put(put_dataplane).delete(delete_dataplane))
        .route("/zones", get(list_zones))
        .route("/intermediates", get(list_intermediates))
        .fallback(fallback)
        .method_not_allowed_fallback(fallback)
        .layer(axum::middleware::from_fn_with_state(admin_token, strait_cp_core::auth::require_token_for_writes))
        .with_state(api)
}

async fn index(State(api): State<ZoneApi>) -> Json<Value> {
    Json(json!({"product": "Strait", "component": "zone", "zone": *api.zone, "version": env!("CARGO_PKG_VERSION")}))
}

async fn readyz(State(api): State<ZoneApi>) -> Response {
    if api.leading.as_ref().is_some_and(|leading| !*leading.borrow()) {
        return (StatusCode::OK, "standing by: another replica leads the zone\n").into_response();
    }
    if *api.ready.borrow() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the first snapshot from the global control plane\n").into_response()
    }
}

async fn metrics(State(api): State<ZoneApi>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &api.registry) {
        return ApiError::internal(format!("encoding metrics: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

fn list(items: Vec<Resource>) -> Json<Value> {
    Json(json!({"total": items.len(), "items": items}))
}

fn mesh_scoped(segment: &str) -> Result<ResourceType, ApiError> {
    ResourceType::ALL
        .iter()
        .copied()
        .find(|t| t.is_mesh_scoped() && t.plural() == segment)
        .ok_or_else(|| ApiError::not_found(format!("unknown resource type {segment:?} in path")))
}

async fn one(api: &ZoneApi, kind: ResourceType, mesh: Option<&str>, name: &str) -> Result<Json<Resource>, ApiError> {
    match api.resources.get(kind, mesh, name).await? {
        Some(r) => Ok(Json(r)),
        None => Err(ApiError::not_found(format!("{} {name:?} not found in this zone", kind.name()))),
    }
}

async fn list_meshes(State(api): State<ZoneApi>) -> Result<Json<Value>, ApiError> {
    Ok(list(api.resources.list(ResourceType::Mesh, None).await?))
}

async fn get_mesh(State(api): State<ZoneApi>, Path(mesh): Path<String>) -> Result<Json<Resource>, ApiError> {
    one(&api, ResourceType::Mesh, None, &mesh).await
}

async fn list_in_mesh(State(api): State<ZoneApi>, Path((mesh, rtype)): Path<(String, String)>) -> Result<Json<Value>, ApiError> {
    let kind = mesh_scoped(&rtype)?;
    Ok(list(api.resources.list(kind, Some(&mesh)).await?))
}

async fn get_in_mesh(
    State(api): State<ZoneApi>,
    Path((mesh, rtype, name)): Path<(String, String, String)>,
) -> Result<Json<Resource>, ApiError> {
    one(&api, mesh_scoped(&rtype)?, Some(&mesh), &name).await
}

/// Largest Dataplane body accepted.
const MAX_BODY: usize = 256 * 1024;

fn dataplanes_only(rtype: &str) -> Result<(), ApiError> {
    if rtype == ResourceType::Dataplane.plural() {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{rtype} are managed on the global control plane; a zone accepts only dataplanes")))
    }
}

/// Registers or replaces a Dataplane of this zone.
async fn put_dataplane(
    State(api): State<ZoneApi>,
    Path((mesh, rtype, name)): Path<(String, String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    dataplanes_only(&rtype)?;
    let mut value = strait_cp_core::rest::body::read_value(&headers, body, MAX_BODY).await?;
    for (field, want) in [("type", "Dataplane"), ("mesh", mesh.as_str()), ("name", name.as_str())] {
        if value.get(field).is_none() {
            value[field] = Value::String(want.to_string());
        } else if value[field] != want {
            return Err(ApiError::bad_request(format!("{field} {} does not match {want:?} in the request path", value[field])));
        }
    }
    let what = format!("dataplane/{name}");
    let resource = Resource::from_value(value).map_err(|e| ApiError::invalid(&what, e))?;
    let (outcome, stored) = api.resources.put(&resource).await?;
    crate::inventory::refresh(&api.inventory).await;
    tracing::info!(mesh, name, result = ?outcome, "dataplane written");
    let status = if outcome == PutOutcome::Created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(stored)).into_response())
}

/// Removes a Dataplane of this zone.
async fn delete_dataplane(
    State(api): State<ZoneApi>,
    Path((mesh, rtype, name)): Path<(String, String, String)>,
) -> Result<Json<Resource>, ApiError> {
    dataplanes_only(&rtype)?;
    let deleted = api.resources.delete(ResourceType::Dataplane, Some(&mesh), &name, None).await.map_err(|e| match e {
        ServiceError::Store(strait_store::StoreError::NotFound { .. }) => {
            ApiError::not_found(format!("dataplane {name:?} not found in mesh {mesh:?}"))
        }
        other => other.into(),
    })?;
    crate::inventory::refresh(&api.inventory).await;
    Ok(Json(deleted))
}

/// The fingerprints of this zone's intermediate CAs, by mesh (certificates only, never keys).
async fn list_intermediates(State(api): State<ZoneApi>) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = crate::zone_ca::fingerprints(api.resources.store().as_ref())
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .map(|(mesh, fingerprint)| json!({"mesh": mesh, "fingerprint": fingerprint}))
        .collect();
    Ok(Json(json!({"total": items.len(), "items": items})))
}

/// The zones this zone knows of, with their services (from the global's inventories).
async fn list_zones(State(api): State<ZoneApi>) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> =
        api.resources.store().list(ZONE_INVENTORY, Some("")).await.map_err(ApiError::from)?.into_iter().map(|o| o.data).collect();
    Ok(Json(json!({"total": items.len(), "items": items})))
}

async fn fallback(method: Method, uri: axum::http::Uri) -> ApiError {
    if method == Method::GET || method == Method::HEAD {
        ApiError::not_found(format!("no such path {}", uri.path()))
    } else {
        ApiError::bad_request(format!(
            "the zone control plane accepts only Dataplanes: {method} {} must go to the global control plane",
            uri.path()
        ))
    }
}

/// Prometheus HTTP service discovery: every sidecar with a MeshMetric and every gateway of
/// the zone (see [`crate::discovery`]).
async fn prometheus_targets(State(api): State<ZoneApi>) -> Result<Json<Value>, ApiError> {
    let gateways = crate::gateways::list(api.resources.store().as_ref()).await.map_err(ApiError::from)?;
    Ok(Json(crate::discovery::document(&api.zone, api.targets.sidecars(), &gateways)))
}
