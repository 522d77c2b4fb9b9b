//! The REST API of the global control plane (axum).
//!
//! In: HTTP requests. Out: JSON resources and lists, JSON errors, Prometheus metrics and the
//! OpenAPI document. Reads are open; writes need the admin token (see `auth`).

pub mod handlers;
pub mod inspect;
pub mod map;
pub mod openapi;
pub mod ops;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;

use crate::metrics::Metrics;
use strait_cp_core::resources::Resources;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// Typed resource access.
    pub resources: Resources,
    /// Request and store metrics.
    pub metrics: Arc<Metrics>,
    /// The registry behind `/metrics`.
    pub registry: Arc<Registry>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Zone tokens and status.
    pub zones: crate::zones::Zones,
    /// Port of zone sync, told to registering zones.
    pub kds_port: u16,
    /// `https`, or `http` with `--api-plaintext`.
    pub api_scheme: &'static str,
    /// Questions about the zones' sidecars.
    pub inspections: crate::inspect::Inspections,
    /// The other replicas, for inspections of the zones they hold.
    pub peers: crate::peers::Peers,
    /// What the zones' sidecars served (the traffic map).
    pub traffic: crate::traffic::TrafficMap,
    /// Validity of new zone tokens.
    pub zone_token_validity: std::time::Duration,
    /// Issues dataplane tokens.
    pub dataplane_tokens: crate::dataplane_tokens::DataplaneTokens,
}

/// Builds the router with auth and metrics middleware.
pub fn router(state: AppState, admin_token: strait_cp_core::auth::SharedToken) -> Router {
    Router::new()
        .route("/", get(ops::index))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/prometheus/targets", get(ops::prometheus_targets))
        .route("/map", get(map::page))
        .route("/map/data", get(map::data))
        .route("/openapi.json", get(ops::openapi_json))
        .route("/meshes", get(handlers::list_meshes))
        .route("/meshes/{mesh}", get(handlers::get_mesh).put(handlers::put_mesh).delete(handlers::delete_mesh))
        .route("/meshes/{mesh}/services", get(handlers::list_services))
        .route("/meshes/{mesh}/services/{service}", get(inspect::get_service))
        .route("/meshes/{mesh}/dataplanes/{name}/inspect", get(inspect::inspect_dataplane))
        .route("/meshes/{mesh}/dataplane-tokens", axum::routing::post(handlers::issue_dataplane_token))
        .route("/meshes/{mesh}/dataplane-tokens/{id}", axum::routing::delete(handlers::revoke_dataplane_token))
        .route("/meshes/{mesh}/services/{service}/dataplane-tokens", axum::routing::delete(handlers::revoke_service_dataplane_tokens))
        .route("/meshes/{mesh}/dataplanes/{name}", get(handlers::get_dataplane).fallback(handlers::dataplanes_are_read_only))
        .route("/meshes/{mesh}/{rtype}", get(handlers::list_in_mesh))
        .route(
            "/meshes/{mesh}/{rtype}/{name}",
            get(handlers::get_in_mesh).put(handlers::put_in_mesh).delete(handlers::delete_in_mesh).fallback(handlers::other_method_in_mesh),
        )
        .route("/zones", get(handlers::list_zones))
        .route("/zones/{name}", get(handlers::get_zone).put(handlers::put_zone).delete(handlers::delete_zone))
        .route("/zones/{name}/proxy-token", axum::routing::post(handlers::issue_zone_proxy_token))
        .route("/zones/{name}/token", axum::routing::post(handlers::issue_zone_token).delete(handlers::revoke_zone_token))
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn_with_state(admin_token, strait_cp_core::auth::require_token_for_writes))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::metrics::track))
        .with_state(state)
}
