//! Resource handlers: list, get, put (create or replace) and delete, for meshes, resources in
//! a mesh, and zones.
//!
//! In: path parameters, an optional `version` (body field for PUT, query for DELETE) and a JSON
//! or YAML body. Out: the resource as JSON, with the `strait-result` header saying whether a
//! PUT created, configured or left it unchanged; errors as `ApiError`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use strait_api::{FieldError, Resource, ResourceType, ValidationErrors};
use strait_cp_core::rest::extract::{Path, Query};

use super::AppState;
use strait_cp_core::resources::{PutOutcome, ServiceError};
use strait_cp_core::rest::body::read_value;
use strait_cp_core::rest::errors::ApiError;

/// Header telling what a PUT did.
pub const RESULT_HEADER: &str = "strait-result";

/// Query of DELETE: the expected version.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete only if the resource is still at this version (409 otherwise).
    pub version: Option<u64>,
}

fn mesh_scoped_type(segment: &str) -> Result<ResourceType, ApiError> {
    ResourceType::ALL.iter().copied().find(|t| t.is_mesh_scoped() && t.plural() == segment).ok_or_else(|| {
        let known: Vec<&str> = ResourceType::ALL.iter().filter(|t| t.is_mesh_scoped()).map(|t| t.plural()).collect();
        ApiError::not_found(format!("unknown resource type {segment:?} in path; expected one of {}", known.join(", ")))
    })
}

/// A list response: `{"total": N, "items": [...]}`, items in their own field order.
#[derive(serde::Serialize)]
pub struct ListBody<T> {
    total: usize,
    items: Vec<T>,
}

/// The services of a mesh.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ServiceList {
    /// How many.
    total: usize,
    /// The services, by name.
    items: Vec<strait_cp_core::resources::ServiceSummary>,
}

fn list_body<T>(items: Vec<T>) -> Json<ListBody<T>> {
    Json(ListBody { total: items.len(), items })
}

pub(super) async fn get_one(state: &AppState, kind: ResourceType, mesh: Option<&str>, name: &str) -> Result<Json<Resource>, ApiError> {
    match state.resources.get(kind, mesh, name).await? {
        Some(r) => Ok(Json(r)),
        None if mesh.is_some() && state.resources.get(ResourceType::Mesh, None, mesh.unwrap_or_default()).await?.is_none() => {
            Err(ApiError::not_found(format!("mesh {:?} not found", mesh.unwrap_or_default())))
        }
        None => Err(ApiError::not_found(match mesh {
            Some(m) => format!("{} {name:?} not found in mesh {m:?}", kind.name()),
            None => format!("{} {name:?} not found", kind.name()),
        })),
    }
}

/// Parses a PUT body, fills `type`, `name` and `mesh` from the path when absent, and refuses
/// a body that names a different resource than its path.
async fn parse_put(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    kind: ResourceType,
    mesh: Option<&str>,
    name: &str,
) -> Result<Resource, ApiError> {
    let mut value = read_value(headers, body, state.max_body_bytes).await?;
    let what = format!("{}/{name}", kind.name().to_ascii_lowercase());
    let Some(obj) = value.as_object_mut() else {
        return Err(ApiError::invalid(&what, ValidationErrors::single("", "a resource must be a JSON or YAML object")));
    };
    let mut mismatches = Vec::new();
    let expected: [(&str, Option<&str>); 3] = [("type", Some(kind.name())), ("name", Some(name)), ("mesh", mesh)];
    for (field, want) in expected {
        let Some(want) = want else { continue };
        match obj.get(field) {
            None | Some(Value::Null) => {
                obj.insert(field.to_string(), Value::String(want.to_string()));
            }
            Some(Value::String(got)) if got == want => {}
            Some(got) => {
                mismatches.push(FieldError { field: field.into(), message: format!("{got} does not match {want:?} in the request path") })
            }
        }
    }
    if !mismatches.is_empty() {
        return Err(ApiError::invalid(&what, ValidationErrors(mismatches)));
    }
    Resource::from_value(value).map_err(|e| ApiError::invalid(&what, e))
}

async fn put_one(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    kind: ResourceType,
    mesh: Option<&str>,
    name: &str,
) -> Result<Response, ApiError> {
    let resource = parse_put(state, headers, body, kind, mesh, name).await?;
    let unenforced = strait_api::support::not_enforced(&resource);
    if !unenforced.0.is_empty() {
        return Err(ApiError::invalid(&format!("{} {name}", kind.name()), unenforced));
    }
    let (outcome, stored) = state.resources.put(&resource).await?;
    let status = if outcome == PutOutcome::Created { StatusCode::CREATED } else { StatusCode::OK };
    let label = match outcome {
        PutOutcome::Created => "created",
        PutOutcome::Configured => "configured",
        PutOutcome::Unchanged => "unchanged",
    };
    tracing::info!(r#type = kind.name(), mesh = mesh.unwrap_or(""), name, version = stored.version, result = label, "resource written");
    let mut response = (status, Json(stored)).into_response();
    response.headers_mut().insert(RESULT_HEADER, HeaderValue::from_static(label));
    Ok(response)
}

async fn delete_one(
    state: &AppState,
    kind: ResourceType,
    mesh: Option<&str>,
    name: &str,
    version: Option<u64>,
) -> Result<Json<Resource>, ApiError> {
    let deleted = state.resources.delete(kind, mesh, name, version).await.map_err(|e| match e {
        ServiceError::Store(strait_store::StoreError::NotFound { .. }) => {
            ApiError::not_found(format!("{} {name:?} not found", kind.name()))
        }
        other => other.into(),
    })?;
    tracing::info!(r#type = kind.name(), mesh = mesh.unwrap_or(""), name, "resource deleted");
    Ok(Json(deleted))
}

/// Lists every mesh.
#[utoipa::path(get, path = "/meshes", tag = "meshes", responses((status = 200, body = strait_api::openapi::ResourceListSchema)))]
pub async fn list_meshes(State(state): State<AppState>) -> Result<Json<ListBody<Resource>>, ApiError> {
    Ok(list_body(state.resources.list(ResourceType::Mesh, None).await?))
}

/// Reads one mesh.
#[utoipa::path(get, path = "/meshes/{mesh}", tag = "meshes", responses((status = 200, body = strait_api::openapi::ResourceSchema), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)))]
pub async fn get_mesh(State(state): State<AppState>, Path(mesh): Path<String>) -> Result<Json<Resource>, ApiError> {
    get_one(&state, ResourceType::Mesh, None, &mesh).await
}

/// Creates or replaces a mesh; a new mesh gets an allow-all MeshTrafficPermission unless `spec.skipDefaultPolicies`.
#[utoipa::path(put, path = "/meshes/{mesh}", tag = "meshes", request_body(content = strait_api::openapi::ResourceSchema, content_type = "application/json"),
    responses((status = 201, body = strait_api::openapi::ResourceSchema), (status = 200, body = strait_api::openapi::ResourceSchema), (status = 400, body = strait_cp_core::rest::errors::ErrorBody),
        (status = 401, body = strait_cp_core::rest::errors::ErrorBody), (status = 403, body = strait_cp_core::rest::errors::ErrorBody), (status = 409, body = strait_cp_core::rest::errors::ErrorBody),
        (status = 413, body = strait_cp_core::rest::errors::ErrorBody), (status = 415, body = strait_cp_core::rest::errors::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn put_mesh(
    State(state): State<AppState>,
    Path(mesh): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    put_one(&state, &headers, body, ResourceType::Mesh, None, &mesh).await
}

/// Deletes a mesh and every resource in it.
#[utoipa::path(delete, path = "/meshes/{mesh}", tag = "meshes", params(DeleteQuery), responses((status = 200, body = strait_api::openapi::ResourceSchema), (status = 404, body = strait_cp_core::rest::errors::ErrorBody), (status = 409, body = strait_cp_core::rest::errors::ErrorBody)), security(("admin_token" = [])))]
pub async fn delete_mesh(
    State(state): State<AppState>,
    Path(mesh): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Resource>, ApiError> {
    delete_one(&state, ResourceType::Mesh, None, &mesh, q.version).await
}

/// Lists the services of a mesh, from the inventories of the connected zones: `dataplanes`
/// counts the endpoints every zone registers for the service.
#[utoipa::path(get, path = "/meshes/{mesh}/services", tag = "resources", responses((status = 200, body = ServiceList), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)))]
pub async fn list_services(
    State(state): State<AppState>,
    Path(mesh): Path<String>,
) -> Result<Json<ListBody<strait_cp_core::resources::ServiceSummary>>, ApiError> {
    get_one(&state, ResourceType::Mesh, None, &mesh).await.map(drop)?;
    let mut counts: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for record in state.resources.store().list(strait_cp_core::kinds::ZONE_INVENTORY, Some("")).await? {
        let Ok(inventory) = serde_json::from_value::<strait_api::gateway_config::ZoneInventory>(record.data) else {
            tracing::warn!(key = %record.key, "a zone inventory in the store does not decode; its services are not listed");
            continue;
        };
        for service in inventory.services.into_iter().filter(|s| s.mesh == mesh) {
            *counts.entry(service.name).or_default() += u64::from(service.endpoints);
        }
    }
    let services = counts.into_iter().map(|(name, dataplanes)| strait_cp_core::resources::ServiceSummary { name, dataplanes });
    Ok(list_body(services.collect()))
}

/// Lists resources of a type in a mesh; `rtype` is the lowercase plural, such as `meshtrafficpermissions`.
#[utoipa::path(get, path = "/meshes/{mesh}/{rtype}", tag = "resources", responses((status = 200, body = strait_api::openapi::ResourceListSchema), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)))]
pub async fn list_in_mesh(
    State(state): State<AppState>,
    Path((mesh, rtype)): Path<(String, String)>,
) -> Result<Json<ListBody<Resource>>, ApiError> {
    let kind = mesh_scoped_type(&rtype)?;
    get_one(&state, ResourceType::Mesh, None, &mesh).await.map(drop)?;
    Ok(list_body(state.resources.list(kind, Some(&mesh)).await?))
}

/// Reads one resource of a mesh.
#[utoipa::path(get, path = "/meshes/{mesh}/{rtype}/{name}", tag = "resources", responses((status = 200, body = strait_api::openapi::ResourceSchema), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)))]
pub async fn get_in_mesh(
    State(state): State<AppState>,
    Path((mesh, rtype, name)): Path<(String, String, String)>,
) -> Result<Json<Resource>, ApiError> {
    let kind = mesh_scoped_type(&rtype)?;
    get_one(&state, kind, Some(&mesh), &name).await
}

/// Creates or replaces a resource of a mesh. Send `version` to replace only that version (409 otherwise).
#[utoipa::path(put, path = "/meshes/{mesh}/{rtype}/{name}", tag = "resources", request_body(content = strait_api::openapi::ResourceSchema, content_type = "application/json"),
    responses((status = 201, body = strait_api::openapi::ResourceSchema), (status = 200, body = strait_api::openapi::ResourceSchema), (status = 400, body = strait_cp_core::rest::errors::ErrorBody),
        (status = 401, body = strait_cp_core::rest::errors::ErrorBody), (status = 403, body = strait_cp_core::rest::errors::ErrorBody), (status = 404, body = strait_cp_core::rest::errors::ErrorBody),
        (status = 409, body = strait_cp_core::rest::errors::ErrorBody), (status = 413, body = strait_cp_core::rest::errors::ErrorBody), (status = 415, body = strait_cp_core::rest::errors::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn put_in_mesh(
    State(state): State<AppState>,
    Path((mesh, rtype, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let kind = mesh_scoped_type(&rtype)?;
    if let Some(why) = strait_api::support::type_not_enforced(kind) {
        // Deleting one stored earlier stays possible.
        return Err(ApiError::method_not_allowed(why, "GET, HEAD, DELETE"));
    }
    put_one(&state, &headers, body, kind, Some(&mesh), &name).await
}

/// Deletes a resource of a mesh.
#[utoipa::path(delete, path = "/meshes/{mesh}/{rtype}/{name}", tag = "resources", params(DeleteQuery), responses((status = 200, body = strait_api::openapi::ResourceSchema), (status = 404, body = strait_cp_core::rest::errors::ErrorBody), (status = 409, body = strait_cp_core::rest::errors::ErrorBody)), security(("admin_token" = [])))]
pub async fn delete_in_mesh(
    State(state): State<AppState>,
    Path((mesh, rtype, name)): Path<(String, String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Resource>, ApiError> {
    let kind = mesh_scoped_type(&rtype)?;
    delete_one(&state, kind, Some(&mesh), &name, q.version).await
}

/// Reads one Dataplane of a mesh. Dataplanes register with the control plane of their own zone,
/// so the global offers no write (a Dataplane stored here would reach no sidecar).
pub async fn get_dataplane(State(state): State<AppState>, Path((mesh, name)): Path<(String, String)>) -> Result<Json<Resource>, ApiError> {
    get_one(&state, ResourceType::Dataplane, Some(&mesh), &name).await
}

/// Any method but a read on a Dataplane: 405, saying where Dataplanes are registered.
pub async fn dataplanes_are_read_only() -> ApiError {
    ApiError::method_not_allowed(
        "Dataplanes are registered with the control plane of their zone (by `strait-dp` or the Kubernetes controller), not written to the global; the global lists the services zones report at /meshes/{mesh}/services",
        "GET, HEAD",
    )
}

/// Any other method on a resource of a mesh: 405, with the methods its type offers.
pub async fn other_method_in_mesh(Path((_mesh, rtype, _name)): Path<(String, String, String)>) -> ApiError {
    let writable = mesh_scoped_type(&rtype).is_ok_and(|kind| strait_api::support::type_not_enforced(kind).is_none());
    let allow = if writable { "GET, HEAD, PUT, DELETE" } else { "GET, HEAD, DELETE" };
    ApiError::method_not_allowed(format!("the methods on {rtype} are {allow}"), allow)
}

/// Lists zones, each with its live `status`.
#[utoipa::path(get, path = "/zones", tag = "zones", responses((status = 200, body = strait_api::openapi::ResourceListSchema)))]
pub async fn list_zones(State(state): State<AppState>) -> Result<Json<ListBody<Resource>>, ApiError> {
    let mut zones = Vec::new();
    for zone in state.resources.list(ResourceType::Zone, None).await? {
        zones.push(state.zones.decorate(zone).await);
    }
    Ok(list_body(zones))
}

/// Reads a zone, with its live `status`.
#[utoipa::path(get, path = "/zones/{name}", tag = "zones", responses((status = 200, body = strait_api::openapi::ResourceSchema), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)))]
pub async fn get_zone(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Resource>, ApiError> {
    let Json(zone) = get_one(&state, ResourceType::Zone, None, &name).await?;
    Ok(Json(state.zones.decorate(zone).await))
}

/// Creates or replaces a zone; `spec.enabled: false` refuses its connections, closes every tunnel
/// to and from it and withdraws its services from the other zones.
#[utoipa::path(put, path = "/zones/{name}", tag = "zones", request_body(content = strait_api::openapi::ResourceSchema, content_type = "application/json"),
    responses((status = 201, body = strait_api::openapi::ResourceSchema), (status = 200, body = strait_api::openapi::ResourceSchema), (status = 400, body = strait_cp_core::rest::errors::ErrorBody), (status = 409, body = strait_cp_core::rest::errors::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn put_zone(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let response = put_one(&state, &headers, body, ResourceType::Zone, None, &name).await?;
    // A disabled zone keeps neither its stream nor its tunnels, and its services leave at once.
    if let Some(Resource { spec: strait_api::Spec::Zone(spec), .. }) = state.resources.get(ResourceType::Zone, None, &name).await? {
        state.zones.apply_enabled(&name, spec.enabled).await?;
    }
    Ok(response)
}

/// Deletes a zone: its token stops working at once and its stream is closed.
#[utoipa::path(delete, path = "/zones/{name}", tag = "zones", params(DeleteQuery), responses((status = 200, body = strait_api::openapi::ResourceSchema), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)), security(("admin_token" = [])))]
pub async fn delete_zone(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Json<Resource>, ApiError> {
    let deleted = delete_one(&state, ResourceType::Zone, None, &name, q.version).await?;
    state.zones.forget(&name).await?;
    Ok(deleted)
}

/// A token's `validFor` (`default` when absent); an unreadable one, or one under a second
/// (tokens count whole seconds), names the field.
fn validity(valid_for: Option<&str>, default: std::time::Duration, what: &str) -> Result<std::time::Duration, ApiError> {
    let bad = |message: String| ApiError::invalid(what, ValidationErrors::single("validFor", message));
    match valid_for {
        None => Ok(default),
        Some(v) => {
            let d = v.parse::<strait_api::Duration>().map_err(|e| bad(e.to_string()))?.get();
            if d < std::time::Duration::from_secs(1) {
                return Err(bad(format!("{v} is too short: expected at least 1s")));
            }
            Ok(d)
        }
    }
}

/// Query of token issuing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct TokenQuery {
    /// Validity such as `720h` (default: the global's --zone-token-validity).
    #[param(pattern = r"^([1-9][0-9]{0,8}(s|m|h))+$")]
    pub valid_for: Option<String>,
}

/// What a registering zone needs.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneRegistration {
    /// The token, CA bundle and expiry.
    #[serde(flatten)]
    pub issued: crate::zones::IssuedToken,
    /// Port of zone sync on the global; its host is the one the REST API was reached at.
    pub kds_port: u16,
}

/// Registers a zone (creating it if needed) and issues its token; earlier tokens of the zone stop working.
#[utoipa::path(post, path = "/zones/{name}/token", tag = "zones", params(TokenQuery), responses((status = 200, body = ZoneRegistration), (status = 400, body = strait_cp_core::rest::errors::ErrorBody)), security(("admin_token" = [])))]
pub async fn issue_zone_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Result<Json<ZoneRegistration>, ApiError> {
    if let Err(e) = strait_api::names::check_dns_label(&name) {
        return Err(ApiError::invalid("zone", ValidationErrors::single("name", e)));
    }
    let validity = validity(q.valid_for.as_deref(), state.zone_token_validity, "zone token")?;
    let issued = state.zones.register(&name, validity).await?;
    Ok(Json(ZoneRegistration { issued, kds_port: state.kds_port }))
}

/// Issues a new zone-proxy token (what the zone's gateways register with) and revokes the
/// previous one; the zone token and the zone's sync stream are untouched.
#[utoipa::path(post, path = "/zones/{name}/proxy-token", tag = "zones", params(TokenQuery), responses((status = 200, body = crate::zones::ProxyToken), (status = 400, body = strait_cp_core::rest::errors::ErrorBody), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)), security(("admin_token" = [])))]
pub async fn issue_zone_proxy_token(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<TokenQuery>,
) -> Result<Json<crate::zones::ProxyToken>, ApiError> {
    let validity = validity(q.valid_for.as_deref(), state.zone_token_validity, "zone-proxy token")?;
    match state.zones.rotate_proxy_token(&name, validity).await? {
        Some(token) => Ok(Json(token)),
        None => Err(ApiError::not_found(format!("zone {name:?} has no token: register it first (straitctl zone register {name})"))),
    }
}

/// Revokes a zone's token and closes its stream.
#[utoipa::path(delete, path = "/zones/{name}/token", tag = "zones", responses((status = 200), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)), security(("admin_token" = [])))]
pub async fn revoke_zone_token(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    if state.zones.revoke(&name).await? {
        Ok(Json(serde_json::json!({"zone": name, "revoked": true})))
    } else {
        Err(ApiError::not_found(format!("zone {name:?} has no token")))
    }
}

/// Query of dataplane token issuing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
pub struct DataplaneTokenQuery {
    /// The service the sidecar will serve (`strait.io/service` of its inbounds).
    #[param(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$", max_length = 253)]
    pub service: String,
    /// Validity such as `720h` (default 720h).
    #[param(pattern = r"^([1-9][0-9]{0,8}(s|m|h))+$")]
    pub valid_for: Option<String>,
}

/// Issues a token with which a sidecar registers as `service` in `mesh` with its zone.
#[utoipa::path(post, path = "/meshes/{mesh}/dataplane-tokens", tag = "resources", params(DataplaneTokenQuery),
    responses((status = 200, body = crate::dataplane_tokens::DataplaneToken), (status = 400, body = strait_cp_core::rest::errors::ErrorBody), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn issue_dataplane_token(
    State(state): State<AppState>,
    Path(mesh): Path<String>,
    Query(q): Query<DataplaneTokenQuery>,
) -> Result<Json<crate::dataplane_tokens::DataplaneToken>, ApiError> {
    if let Err(e) = strait_api::names::check_dns_subdomain(&q.service) {
        return Err(ApiError::invalid("dataplane token", ValidationErrors::single("service", e)));
    }
    let validity = validity(q.valid_for.as_deref(), std::time::Duration::from_secs(720 * 3600), "dataplane token")?;
    Ok(Json(state.dataplane_tokens.issue(&mesh, &q.service, validity).await?))
}

/// Revokes one dataplane token by its id (printed when it was issued): zones refuse it and close
/// the stream of a sidecar using it.
#[utoipa::path(delete, path = "/meshes/{mesh}/dataplane-tokens/{id}", tag = "resources",
    responses((status = 200, body = crate::dataplane_tokens::Revoked), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn revoke_dataplane_token(
    State(state): State<AppState>,
    Path((mesh, id)): Path<(String, String)>,
) -> Result<Json<crate::dataplane_tokens::Revoked>, ApiError> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        let message = format!("{id:?} is not a token id (32 hexadecimal digits, printed when the token was issued)");
        return Err(ApiError::invalid("dataplane token revocation", ValidationErrors::single("id", message)));
    }
    Ok(Json(state.dataplane_tokens.revoke_id(&mesh, &id.to_ascii_lowercase()).await?))
}

/// Revokes every dataplane token of a service issued up to now (tokens issued afterwards
/// work): zones refuse them and close the streams of sidecars using them.
#[utoipa::path(delete, path = "/meshes/{mesh}/services/{service}/dataplane-tokens", tag = "resources",
    responses((status = 200, body = crate::dataplane_tokens::Revoked), (status = 404, body = strait_cp_core::rest::errors::ErrorBody)),
    security(("admin_token" = [])))]
pub async fn revoke_service_dataplane_tokens(
    State(state): State<AppState>,
    Path((mesh, service)): Path<(String, String)>,
) -> Result<Json<crate::dataplane_tokens::Revoked>, ApiError> {
    if let Err(e) = strait_api::names::check_dns_subdomain(&service) {
        return Err(ApiError::invalid("dataplane token revocation", ValidationErrors::single("service", e)));
    }
    Ok(Json(state.dataplane_tokens.revoke_service(&mesh, &service).await?))
}
