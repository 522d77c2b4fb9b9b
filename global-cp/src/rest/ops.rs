//! Operational endpoints: index, health, readiness, metrics, OpenAPI, and the 404 fallback.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use strait_cp_core::rest::errors::ApiError;

/// Product and version.
pub async fn index() -> Json<serde_json::Value> {
    Json(json!({"product": "Strait", "component": "global", "version": env!("CARGO_PKG_VERSION")}))
}

/// Liveness: the process answers.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the store answers.
pub async fn readyz(State(state): State<AppState>) -> Response {
    match state.resources.store().stats().await {
        Ok(_) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store not ready: {e}\n")).into_response(),
    }
}

/// Prometheus text exposition; store figures are read at scrape time.
pub async fn metrics(State(state): State<AppState>) -> Response {
    match state.resources.store().stats().await {
        Ok(stats) => {
            for t in strait_api::ResourceType::ALL {
                let n = stats.objects_by_kind.get(t.name()).copied().unwrap_or(0);
                let label = crate::metrics::TypeName { r#type: t.name().to_string() };
                state.metrics.resources.get_or_create(&label).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            state.metrics.store_bytes.set(stats.size_on_disk);
            state.metrics.store_revision.set(stats.revision);
            state.metrics.store_skipped.set(stats.corrupt_skipped + strait_cp_core::resources::invalid_skipped());
        }
        Err(e) => tracing::warn!(error = %e, "store statistics unavailable for /metrics"),
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return ApiError::internal(format!("encoding metrics: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// The OpenAPI document.
pub async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], super::openapi::document_json()).into_response()
}

/// Anything unrouted.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such path {}: see /openapi.json", uri.path()))
}

/// Prometheus HTTP service discovery of the control planes: this global (at the address the
/// request reached it at) and every zone that said where its API is, each with
/// `__meta_strait_discovery_url`, the zone's own discovery endpoint of its sidecars and
/// gateways (one `http_sd_configs` entry each).
pub async fn prometheus_targets(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut groups = Vec::new();
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        groups.push(json!({"targets": [host], "labels": {"__scheme__": state.api_scheme, "component": "global-control-plane"}}));
    }
    for zone in state.resources.list(strait_api::ResourceType::Zone, None).await? {
        let status = state.zones.board().status(&zone.name).await;
        let Some(url) = status.api_url.as_deref() else { continue };
        let Some((scheme, address)) = url.split_once("://") else { continue };
        groups.push(json!({"targets": [address], "labels": {
            "__scheme__": scheme,
            "component": "zone-control-plane",
            "zone": zone.name,
            "__meta_strait_discovery_url": format!("{url}/prometheus/targets"),
        }}));
    }
    Ok(Json(serde_json::Value::Array(groups)))
}
