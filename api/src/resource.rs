//! The resource envelope shared by REST, the CLI, KDS and CRDs: `type`, `name`, `mesh`,
//! `labels`, `spec`, and the server-set `version`, `creationTime` and `modificationTime`.
//!
//! In: JSON or YAML (one or many documents). Out: a validated [`Resource`] whose spec is typed,
//! or [`ValidationErrors`] naming every bad field; and back to JSON/YAML with the same names.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::dataplane::DataplaneSpec;
use crate::mesh::{MeshSpec, ZoneSpec};
use crate::names;
use crate::policies::*;
use crate::target_ref::validate_tags;
use crate::validate::{FieldError, Validate, ValidationErrors, Validator};

macro_rules! resource_types {
    ($( $variant:ident { spec: $spec:ty, plural: $plural:literal, short: $short:literal, mesh_scoped: $scoped:literal } )*) => {
        /// Every kind of resource.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum ResourceType { $( #[doc = concat!("`", stringify!($variant), "`")] $variant, )* }

        /// A typed spec, one variant per [`ResourceType`].
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Spec { $( #[doc = concat!("Spec of `", stringify!($variant), "`")] $variant($spec), )* }

        impl ResourceType {
            /// All types, meshes and zones first.
            pub const ALL: &'static [ResourceType] = &[ $( ResourceType::$variant, )* ];

            /// The name used in `type:` fields.
            pub fn name(self) -> &'static str {
                match self { $( ResourceType::$variant => stringify!($variant), )* }
            }

            /// The lowercase plural used in REST paths, such as `meshtrafficpermissions`.
            pub fn plural(self) -> &'static str {
                match self { $( ResourceType::$variant => $plural, )* }
            }

            /// A short alias for the CLI, such as `mtp`.
            pub fn short(self) -> &'static str {
                match self { $( ResourceType::$variant => $short, )* }
            }

            /// Whether resources of this type belong to a mesh.
            pub fn is_mesh_scoped(self) -> bool {
                match self { $( ResourceType::$variant => $scoped, )* }
            }

            /// For a from/to policy, whether it takes `from` and `to` items; `None` otherwise.
            pub fn policy_sections(self) -> Option<(bool, bool)> {
                match self { $( ResourceType::$variant => <$spec as SpecSections>::SECTIONS, )* }
            }

            fn parse_spec(self, value: Value) -> Result<Spec, FieldError> {
                match self { $( ResourceType::$variant => typed::<$spec>(value).map(Spec::$variant), )* }
            }
        }

        impl Spec {
            /// The type of this spec.
            pub fn resource_type(&self) -> ResourceType {
                match self { $( Spec::$variant(_) => ResourceType::$variant, )* }
            }

            fn validate_spec(&self, v: &mut Validator) {
                match self { $( Spec::$variant(s) => s.validate(v), )* }
            }
        }

        /// Registers the schema of every spec type for the OpenAPI document.
        pub fn spec_schemas() -> Vec<(&'static str, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)> {
            vec![ $( (stringify!($variant), <$spec as utoipa::PartialSchema>::schema()), )* ]
        }

        /// Nested schemas referenced by the spec schemas.
        pub fn nested_schemas(out: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
            $( <$spec as utoipa::ToSchema>::schemas(out); )*
            // A generic spec refers to its conf by name without registering it.
            proxy_conf_schema::<crate::policies::trace::TraceConf>(out);
            proxy_conf_schema::<crate::policies::metric::MetricConf>(out);
        }
    };
}

resource_types! {
    Mesh { spec: MeshSpec, plural: "meshes", short: "mesh", mesh_scoped: false }
    Zone { spec: ZoneSpec, plural: "zones", short: "zone", mesh_scoped: false }
    Dataplane { spec: DataplaneSpec, plural: "dataplanes", short: "dp", mesh_scoped: true }
    MeshTrafficPermission { spec: PolicySpec<traffic_permission::TrafficPermissionConf>, plural: "meshtrafficpermissions", short: "mtp", mesh_scoped: true }
    MeshHTTPRoute { spec: RouteSpec<http_route::HttpRouteRule>, plural: "meshhttproutes", short: "mhr", mesh_scoped: true }
    MeshTCPRoute { spec: RouteSpec<tcp_route::TcpRouteRule>, plural: "meshtcproutes", short: "mtcpr", mesh_scoped: true }
    MeshTimeout { spec: PolicySpec<timeout::TimeoutConf>, plural: "meshtimeouts", short: "mt", mesh_scoped: true }
    MeshRetry { spec: PolicySpec<retry::RetryConf>, plural: "meshretries", short: "mr", mesh_scoped: true }
    MeshCircuitBreaker { spec: PolicySpec<circuit_breaker::CircuitBreakerConf>, plural: "meshcircuitbreakers", short: "mcb", mesh_scoped: true }
    MeshHealthCheck { spec: PolicySpec<health_check::HealthCheckConf>, plural: "meshhealthchecks", short: "mhc", mesh_scoped: true }
    MeshLoadBalancingStrategy { spec: PolicySpec<load_balancing::LoadBalancingConf>, plural: "meshloadbalancingstrategies", short: "mlbs", mesh_scoped: true }
    MeshRateLimit { spec: PolicySpec<rate_limit::RateLimitConf>, plural: "meshratelimits", short: "mrl", mesh_scoped: true }
    MeshFaultInjection { spec: PolicySpec<fault_injection::FaultInjectionConf>, plural: "meshfaultinjections", short: "mfi", mesh_scoped: true }
    MeshAccessLog { spec: PolicySpec<access_log::AccessLogConf>, plural: "meshaccesslogs", short: "mal", mesh_scoped: true }
    MeshTrace { spec: ProxySpec<trace::TraceConf>, plural: "meshtraces", short: "mtr", mesh_scoped: true }
    MeshMetric { spec: ProxySpec<metric::MetricConf>, plural: "meshmetrics", short: "mm", mesh_scoped: true }
}

/// The sections a spec type has: `Some((from, to))` for a from/to policy.
pub trait SpecSections {
    /// Whether `from` and `to` items are taken; `None` for specs that are not from/to policies.
    const SECTIONS: Option<(bool, bool)> = None;
}

impl<C: PolicyConf> SpecSections for PolicySpec<C> {
    const SECTIONS: Option<(bool, bool)> = Some((C::FROM, C::TO));
}
impl SpecSections for MeshSpec {}
impl SpecSections for ZoneSpec {}
impl SpecSections for DataplaneSpec {}
impl<R> SpecSections for RouteSpec<R> {}
impl<C> SpecSections for ProxySpec<C> {}

/// Registers the conf `C` of a `ProxySpec<C>` (and what it refers to) by its name.
fn proxy_conf_schema<C: utoipa::ToSchema>(out: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>) {
    out.push((C::name().into_owned(), C::schema()));
    C::schemas(out);
}

/// JSON does not tell `2` from `2.0`, and neither does JSON Schema: a count sent as `2.0` is
/// read as the integer it is. Fractions and numbers beyond 64 bits stay as they are.
fn integral_numbers_as_integers(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 {
                *n = (f as u64).into();
            } else if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 {
                *n = (f as i64).into();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_numbers_as_integers),
        Value::Object(map) => map.values_mut().for_each(integral_numbers_as_integers),
        _ => {}
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "spec".to_string() } else { format!("spec.{path}") };
        FieldError { field, message: e.into_inner().to_string() }
    })
}

impl ResourceType {
    /// Finds a type by its name, plural or short alias, ignoring case.
    pub fn lookup(s: &str) -> Option<ResourceType> {
        let lower = s.to_ascii_lowercase();
        Self::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(&lower) || t.plural() == lower || t.short() == lower)
    }

    /// Whether this is a policy (mesh-scoped and not a Dataplane).
    pub fn is_policy(self) -> bool {
        self.is_mesh_scoped() && self != ResourceType::Dataplane
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One resource: envelope and typed spec. Written as [`Envelope`] says.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource type.
    pub kind: ResourceType,
    /// DNS-1123 name, unique per type and mesh.
    pub name: String,
    /// The mesh (absent for Mesh and Zone).
    pub mesh: Option<String>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Server-set: the store revision of the last change; send it back to update safely.
    pub version: Option<u64>,
    /// Server-set.
    pub creation_time: Option<OffsetDateTime>,
    /// Server-set.
    pub modification_time: Option<OffsetDateTime>,
    /// Type-specific content.
    pub spec: Spec,
    /// Server-set, read-only state (such as a Zone's connection status); ignored on input.
    pub status: Option<Value>,
}

/// How a resource is written, around a spec of type `S`: a [`Spec`] for any resource, or one
/// type's spec (see [`Resource::to_json_with_spec`]).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a, S> {
    #[serde(rename = "type")]
    kind: ResourceType,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<&'a str>,
    #[serde(skip_serializing_if = "no_labels")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    creation_time: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    modification_time: Option<OffsetDateTime>,
    spec: &'a S,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a Value>,
}

fn no_labels(labels: &&BTreeMap<String, String>) -> bool {
    labels.is_empty()
}

impl Serialize for Resource {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        self.envelope(&self.spec).serialize(serializer)
    }
}

const ENVELOPE_FIELDS: &[&str] = &["type", "name", "mesh", "labels", "spec", "version", "creationTime", "modificationTime", "status"];

impl Resource {
    /// Builds a resource without server-set fields.
    pub fn new(name: &str, mesh: Option<&str>, spec: Spec) -> Self {
        Resource {
            kind: spec.resource_type(),
            name: name.to_string(),
            mesh: mesh.map(str::to_string),
            labels: BTreeMap::new(),
            version: None,
            creation_time: None,
            modification_time: None,
            spec,
            status: None,
        }
    }

    fn envelope<'a, S>(&'a self, spec: &'a S) -> Envelope<'a, S> {
        Envelope {
            kind: self.kind,
            name: &self.name,
            mesh: self.mesh.as_deref(),
            labels: &self.labels,
            version: self.version,
            creation_time: self.creation_time,
            modification_time: self.modification_time,
            spec,
            status: self.status.as_ref(),
        }
    }

    /// The JSON of this resource with `spec` in its place, written by that spec type's
    /// serializer alone: what a sidecar sends of its Dataplane, without the serializers of every
    /// other type in its binary (serializing a [`Spec`] takes them all).
    pub fn to_json_with_spec<S: Serialize>(&self, spec: &S) -> serde_json::Result<Vec<u8>> {
        serde_json::to_vec(&self.envelope(spec))
    }

    /// Parses and validates one resource from a JSON value, reporting every bad field.
    pub fn from_value(value: Value) -> Result<Resource, ValidationErrors> {
        Resource::parse_with(value, ResourceType::parse_spec, Spec::validate_spec)
    }

    /// Parses and validates a Dataplane from JSON or YAML text, as [`Resource::from_str_any`]
    /// does, refusing any other type. What a sidecar reads: only the Dataplane's spec parser is
    /// in its binary, not those of every policy.
    pub fn dataplane_from_str(text: &str) -> Result<Resource, ValidationErrors> {
        let value: Value = serde_yaml::from_str(text).map_err(|e| ValidationErrors::single("", format!("not valid YAML or JSON: {e}")))?;
        let parse = |kind, spec| match kind {
            ResourceType::Dataplane => typed::<DataplaneSpec>(spec).map(Spec::Dataplane),
            other => Err(FieldError { field: "type".into(), message: format!("expected Dataplane, got {other}") }),
        };
        Resource::parse_with(value, parse, |spec, v| {
            if let Spec::Dataplane(spec) = spec {
                spec.validate(v);
            }
        })
    }

    /// [`Resource::from_value`] with the spec read by `parse_spec` and checked by `validate_spec`.
    fn parse_with(
        mut value: Value,
        parse_spec: impl FnOnce(ResourceType, Value) -> Result<Spec, FieldError>,
        validate_spec: impl FnOnce(&Spec, &mut Validator),
    ) -> Result<Resource, ValidationErrors> {
        integral_numbers_as_integers(&mut value);
        let Value::Object(mut obj) = value else {
            return Err(ValidationErrors::single("", "a resource must be an object with type, name and spec"));
        };
        let mut errors = Vec::new();
        for key in obj.keys() {
            if !ENVELOPE_FIELDS.contains(&key.as_str()) {
                errors.push(FieldError {
                    field: key.clone(),
                    message: format!("unknown field; expected one of {}", ENVELOPE_FIELDS.join(", ")),
                });
            }
        }
        let kind = match obj.remove("type") {
            None => return Err(ValidationErrors::single("type", "required")),
            Some(Value::String(s)) => match ResourceType::ALL.iter().find(|t| t.name() == s) {
                Some(t) => *t,
                None => {
                    let known: Vec<&str> = ResourceType::ALL.iter().map(|t| t.name()).collect();
                    return Err(ValidationErrors::single(
                        "type",
                        format!("unknown resource type {s:?}; expected one of {}", known.join(", ")),
                    ));
                }
            },
            Some(other) => return Err(ValidationErrors::single("type", format!("expected a string, got {other}"))),
        };
        let name = take_string(&mut obj, "name", &mut errors).unwrap_or_default();
        let mesh = take_string(&mut obj, "mesh", &mut errors);
        let labels = match obj.remove("labels") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(v) => serde_json::from_value(v).unwrap_or_else(|_| {
                errors.push(FieldError { field: "labels".into(), message: "expected a map of strings to strings".into() });
                BTreeMap::new()
            }),
        };
        let version = match obj.remove("version") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64(),
            // JSON does not tell 7 from 7.0: a whole number is a whole number.
            Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64) => {
                n.as_f64().map(|f| f as u64)
            }
            Some(Value::String(s)) if s.parse::<u64>().is_ok() => s.parse().ok(),
            Some(other) => {
                errors.push(FieldError { field: "version".into(), message: format!("expected a non-negative integer, got {other}") });
                None
            }
        };
        let spec_value = match obj.remove("spec") {
            None | Some(Value::Null) if matches!(kind, ResourceType::Mesh | ResourceType::Zone) => Value::Object(Map::new()),
            None | Some(Value::Null) => return Err(with_errors(errors, FieldError { field: "spec".into(), message: "required".into() })),
            Some(v) => v,
        };
        let spec = match parse_spec(kind, spec_value) {
            Ok(spec) => spec,
            Err(e) => return Err(with_errors(errors, e)),
        };
        let resource = Resource { kind, name, mesh, labels, version, creation_time: None, modification_time: None, spec, status: None };
        let mut v = Validator::default();
        resource.validate_envelope(&mut v);
        v.field("spec", |v| validate_spec(&resource.spec, v));
        let mut all = errors;
        if let Err(e) = v.finish() {
            all.extend(e.0);
        }
        ValidationErrors(all).into_result().map(|()| resource)
    }

    fn validate_envelope(&self, v: &mut Validator) {
        v.field("name", |v| {
            let check =
                if self.kind.is_mesh_scoped() { names::check_dns_subdomain(&self.name) } else { names::check_dns_label(&self.name) };
            if self.name.is_empty() {
                v.error("required");
            } else if let Err(e) = check {
                v.error(e);
            }
        });
        match (&self.mesh, self.kind.is_mesh_scoped()) {
            (None, true) => v.error_at("mesh", format!("required for {}", self.kind)),
            (Some(_), false) => v.error_at("mesh", format!("not allowed for {}: it is not inside a mesh", self.kind)),
            (Some(m), true) => {
                if let Err(e) = names::check_dns_label(m) {
                    v.error_at("mesh", e);
                }
            }
            (None, false) => {}
        }
        validate_tags(v, "labels", &self.labels);
    }

    /// Parses and validates one resource from JSON or YAML text.
    pub fn from_str_any(text: &str) -> Result<Resource, ValidationErrors> {
        let value: Value = serde_yaml::from_str(text).map_err(|e| ValidationErrors::single("", format!("not valid YAML or JSON: {e}")))?;
        Resource::from_value(value)
    }

    /// The JSON form.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The spec alone, as JSON.
    pub fn spec_value(&self) -> Value {
        serde_json::to_value(&self.spec).unwrap_or(Value::Null)
    }

    /// `type/name` or `type/name` in `mesh`, for messages.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.kind.name().to_ascii_lowercase(), self.name)
    }
}

fn take_string(obj: &mut Map<String, Value>, field: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    match obj.remove(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            errors.push(FieldError { field: field.into(), message: format!("expected a string, got {other}") });
            None
        }
    }
}

fn with_errors(mut errors: Vec<FieldError>, last: FieldError) -> ValidationErrors {
    errors.push(last);
    ValidationErrors(errors)
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Resource::from_value(value).map_err(serde::de::Error::custom)
    }
}

/// One document of a multi-document file that did not validate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("document {index}{}: {errors}", .name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default())]
pub struct DocumentError {
    /// 1-based position of the document in the file.
    pub index: usize,
    /// `type/name` when they could be read.
    pub name: Option<String>,
    /// What is wrong.
    pub errors: ValidationErrors,
}

/// Parses every document of a YAML (or JSON) stream; empty documents are skipped.
pub fn parse_documents(text: &str) -> Vec<Result<Resource, DocumentError>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match Value::deserialize(doc) {
            Ok(Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                out.push(Err(DocumentError { index, name: None, errors: ValidationErrors::single("", format!("not valid YAML: {e}")) }));
                // A syntax error leaves the stream unusable past this point.
                break;
            }
        };
        let name = match (value.get("type").and_then(Value::as_str), value.get("name").and_then(Value::as_str)) {
            (Some(t), Some(n)) => Some(format!("{}/{n}", t.to_ascii_lowercase())),
            _ => None,
        };
        out.push(Resource::from_value(value).map_err(|errors| DocumentError { index, name, errors }));
    }
    out
}
