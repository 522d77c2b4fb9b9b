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

use strait_api::schema_rules::{DNS_LABEL, DNS_SUBDOMAIN};

/// A token id.
const TOKEN_ID: &str = "^[0-9a-f]{32}$";

/// Splits the generic `/meshes/{mesh}/{rtype}...` paths into one path per resource type, and
/// gives each PUT the exact body of its type, so that generators and contract testers send
/// what the API accepts.
struct PerType;

impl Modify for PerType {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use strait_api::ResourceType;
        let paths = &mut doc.paths.paths;
        for generic in ["/meshes/{mesh}/{rtype}", "/meshes/{mesh}/{rtype}/{name}"] {
            let Some(item) = paths.remove(generic) else { continue };
            for kind in ResourceType::ALL.iter().copied().filter(|t| t.is_mesh_scoped()) {
                let mut item = item.clone();
                if kind == ResourceType::Dataplane {
                    // Registered in their zones; the global only reads them.
                    item.put = None;
                    item.delete = None;
                }
                if strait_api::support::type_not_enforced(kind).is_some() {
                    // Refused until the sidecars enforce it; one stored earlier may be deleted.
                    item.put = None;
                }
                for operation in [item.get.as_mut(), item.put.as_mut(), item.delete.as_mut()].into_iter().flatten() {
                    if let Some(parameters) = operation.parameters.as_mut() {
                        parameters.retain(|p| p.name != "rtype");
                    }
                    operation.operation_id = operation.operation_id.as_ref().map(|id| format!("{id}_{}", kind.plural()));
                }
                if let (Some(put), Some(body)) = (item.put.as_mut(), strait_api::openapi::put_body_schema(kind)) {
                    put.request_body = Some(
                        utoipa::openapi::request_body::RequestBodyBuilder::new()
                            .content("application/json", utoipa::openapi::ContentBuilder::new().schema(Some(body)).build())
                            .required(Some(utoipa::openapi::Required::True))
                            .build(),
                    );
                }
                paths.insert(generic.replace("{rtype}", kind.plural()), item);
            }
        }
        for (path, kind) in [("/meshes/{mesh}", ResourceType::Mesh), ("/zones/{name}", ResourceType::Zone)] {
            if let (Some(put), Some(body)) = (paths.get_mut(path).and_then(|i| i.put.as_mut()), strait_api::openapi::put_body_schema(kind))
            {
                put.request_body = Some(
                    utoipa::openapi::request_body::RequestBodyBuilder::new()
                        .content("application/json", utoipa::openapi::ContentBuilder::new().schema(Some(body)).build())
                        .required(Some(utoipa::openapi::Required::True))
                        .build(),
                );
            }
        }
    }
}

/// Describes what every operation shares, so that no status the API returns is undocumented:
/// each path parameter with its name rule, 400 for a bad path or query, 401/403 for writes
/// (the admin token), 413/415 for bodies, 503 when the store is unavailable.
struct Shared;

impl Modify for Shared {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::{HttpMethod, ParameterBuilder, ParameterIn};
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
                .build()
        };
        let plurals: Vec<&str> = strait_api::ResourceType::ALL
            .iter()
            .filter(|t| t.is_mesh_scoped() && **t != strait_api::ResourceType::Dataplane)
            .map(|t| t.plural())
            .collect();
        let mut all_plurals = plurals.clone();
        all_plurals.push(strait_api::ResourceType::Dataplane.plural());
        for (path, item) in doc.paths.paths.iter_mut() {
            let names: Vec<String> =
                path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}').map(str::to_string)).collect();
            for (method, operation) in [
                (HttpMethod::Get, item.get.as_mut()),
                (HttpMethod::Put, item.put.as_mut()),
                (HttpMethod::Post, item.post.as_mut()),
                (HttpMethod::Delete, item.delete.as_mut()),
            ] {
                let Some(operation) = operation else { continue };
                let parameters = operation.parameters.get_or_insert_with(Vec::new);
                for name in &names {
                    if parameters.iter().any(|p| &p.name == name && p.parameter_in == ParameterIn::Path) {
                        continue;
                    }
                    let schema = match name.as_str() {
                        "mesh" => ObjectBuilder::new().schema_type(Type::String).pattern(Some(DNS_LABEL)).max_length(Some(63)),
                        "name" if path.starts_with("/zones") => {
                            ObjectBuilder::new().schema_type(Type::String).pattern(Some(DNS_LABEL)).max_length(Some(63))
                        }
                        "rtype" => ObjectBuilder::new().schema_type(Type::String).enum_values(Some(if method == HttpMethod::Get {
                            all_plurals.clone()
                        } else {
                            plurals.clone()
                        })),
                        "id" => ObjectBuilder::new().schema_type(Type::String).pattern(Some(TOKEN_ID)),
                        _ => ObjectBuilder::new().schema_type(Type::String).pattern(Some(DNS_SUBDOMAIN)).max_length(Some(253)),
                    };
                    parameters.push(
                        ParameterBuilder::new()
                            .name(name)
                            .parameter_in(ParameterIn::Path)
                            .required(utoipa::openapi::Required::True)
                            .schema(Some(schema))
                            .build(),
                    );
                }
                let responses = &mut operation.responses.responses;
                let mut add = |code: &str, what: &str| {
                    responses.entry(code.to_string()).or_insert_with(|| error(what).into());
                };
                add("400", "A path or query parameter, or the body, is invalid; `details` names each field");
                add("503", "The store is unavailable");
                if operation.security.is_some() {
                    add("401", "No admin token");
                    add("403", "Not the admin token");
                }
                if method == HttpMethod::Delete {
                    add("404", "Not found");
                    add("409", "The version does not match");
                }
                if method == HttpMethod::Put {
                    add("404", "The mesh does not exist");
                    add("409", "The version does not match");
                    add("413", "The body is larger than --max-body-bytes");
                    add("415", "The body is neither JSON nor YAML");
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Strait global control plane", description = "Meshes, zones and policies of a Strait service mesh."),
    paths(
        handlers::list_meshes, handlers::get_mesh, handlers::put_mesh, handlers::delete_mesh,
        handlers::list_services, super::inspect::get_service, super::inspect::inspect_dataplane, handlers::list_in_mesh, handlers::get_in_mesh, handlers::put_in_mesh, handlers::delete_in_mesh,
        handlers::list_zones, handlers::get_zone, handlers::put_zone, handlers::delete_zone, handlers::issue_zone_token, handlers::revoke_zone_token, handlers::issue_zone_proxy_token, handlers::issue_dataplane_token, handlers::revoke_dataplane_token, handlers::revoke_service_dataplane_tokens,
    ),
    components(schemas(strait_api::openapi::ResourceSchema, strait_cp_core::rest::errors::ErrorBody, strait_api::FieldError)),
    modifiers(&AdminToken, &PerType, &Shared)
)]
struct ApiDoc;

/// The document as a JSON value, with the validators' rules added to its schemas, and the
/// names of any rule targets it lacks (none unless a type changed without its rule).
pub fn document() -> (serde_json::Value, Vec<String>) {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let missing = strait_api::schema_rules::refine(&mut doc);
    (doc, missing)
}

/// The document as JSON, built once.
pub fn document_json() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let (doc, missing) = document();
        if !missing.is_empty() {
            tracing::warn!(?missing, "the OpenAPI document lacks schemas that validation rules refer to");
        }
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    })
    .clone()
}
