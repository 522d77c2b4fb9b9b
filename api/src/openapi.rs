//! OpenAPI schemas of the resource envelope, generated from the spec types.
//!
//! In: the Rust types of every spec. Out: a `Resource` schema whose `spec` is one of the spec
//! schemas, for the global control plane's `/openapi.json`.

use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

use crate::resource::{nested_schemas, spec_schemas, ResourceType};

/// The schema of a resource of any type.
pub struct ResourceSchema;

impl utoipa::PartialSchema for ResourceSchema {
    fn schema() -> RefOr<Schema> {
        // anyOf: an empty spec is valid for several types (a Mesh, a Zone).
        let mut specs = AnyOfBuilder::new();
        for (_, schema) in spec_schemas() {
            specs = specs.item(schema);
        }
        let types: Vec<&str> = ResourceType::ALL.iter().map(|t| t.name()).collect();
        ObjectBuilder::new()
            .property("type", ObjectBuilder::new().schema_type(Type::String).enum_values(Some(types)))
            .required("type")
            .property("name", ObjectBuilder::new().schema_type(Type::String).description(Some("DNS-1123 name")))
            .required("name")
            .property("mesh", ObjectBuilder::new().schema_type(Type::String).description(Some("Mesh; absent for Mesh and Zone")))
            .property(
                "labels",
                ObjectBuilder::new().schema_type(Type::Object).additional_properties(Some(ObjectBuilder::new().schema_type(Type::String))),
            )
            .property(
                "version",
                ObjectBuilder::new().schema_type(Type::Integer).description(Some("Server-set; send back for optimistic concurrency")),
            )
            .property(
                "creationTime",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime))),
            )
            .property(
                "modificationTime",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::DateTime))),
            )
            .property("spec", specs)
            .into()
    }
}

impl utoipa::ToSchema for ResourceSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "Resource".into()
    }

    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        nested_schemas(out);
    }
}

/// The schema of a list of resources.
pub struct ResourceListSchema;

impl utoipa::PartialSchema for ResourceListSchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("items", ArrayBuilder::new().items(utoipa::openapi::Ref::from_schema_name("Resource")))
            .required("items")
            .property("total", ObjectBuilder::new().schema_type(Type::Integer))
            .required("total")
            .into()
    }
}

impl utoipa::ToSchema for ResourceListSchema {
    fn name() -> std::borrow::Cow<'static, str> {
        "ResourceList".into()
    }

    fn schemas(out: &mut Vec<(String, RefOr<Schema>)>) {
        out.push(("Resource".into(), <ResourceSchema as utoipa::PartialSchema>::schema()));
        nested_schemas(out);
    }
}

/// The body of a PUT of one type of resource: its spec, labels and the version to replace.
/// `type`, `name` and `mesh` come from the path (a body may repeat them, but only as they are
/// in the path), so the schema leaves them out.
pub fn put_body_schema(kind: ResourceType) -> Option<RefOr<Schema>> {
    let spec = spec_schemas().into_iter().find(|(name, _)| *name == kind.name())?.1;
    let body = ObjectBuilder::new()
        .property("type", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([kind.name()])))
        .property(
            "labels",
            ObjectBuilder::new().schema_type(Type::Object).additional_properties(Some(ObjectBuilder::new().schema_type(Type::String))),
        )
        .property(
            "version",
            ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::Integer, Type::Null]))
                .minimum(Some(0))
                .description(Some("Replace only this version (409 otherwise); absent or null: any")),
        )
        .property("spec", spec)
        .required("spec")
        .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)));
    Some(body.into())
}
