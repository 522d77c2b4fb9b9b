//! The OpenAPI document, generated from the handlers' annotations and the resource types.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme("admin_token", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Strait global control plane", description = "Meshes, zones and policies of a Strait service mesh."),
    paths(
        handlers::list_meshes, handlers::get_mesh, handlers::put_mesh, handlers::delete_mesh,
        handlers::list_services, handlers::list_in_mesh, handlers::get_in_mesh, handlers::put_in_mesh, handlers::delete_in_mesh,
        handlers::list_zones, handlers::get_zone, handlers::put_zone, handlers::delete_zone, handlers::issue_zone_token, handlers::revoke_zone_token, handlers::issue_zone_proxy_token, handlers::issue_dataplane_token, handlers::revoke_dataplane_tokens,
    ),
    components(schemas(strait_api::openapi::ResourceSchema, strait_cp_core::rest::errors::ErrorBody, strait_api::FieldError)),
    modifiers(&AdminToken)
)]
struct ApiDoc;

/// The document as JSON, built once.
pub fn document_json() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))).clone()
}
