//! Kubernetes CustomResourceDefinitions of every resource type, generated from the same types
//! and rules as the REST API's OpenAPI document (one source of truth).
//!
//! In: the spec schemas of [`crate::openapi`], refined with the validators' rules by
//! [`crate::schema_rules::refine`]. Out: one `apiextensions.k8s.io/v1` CRD per type whose
//! writes the API accepts, with a *structural* schema as the API server requires: every node
//! typed, no `$ref`, the shape of each field outside logical junctors. What a structural schema
//! cannot say (a choice between fields, `not`, `contains`) is left to the validator that checks
//! every resource before it is stored, as it does for REST.
//!
//! A mesh-scoped resource is namespaced (it lives in the control plane's namespace) and names
//! its mesh with the label [`MESH_LABEL`]; meshes and zones are cluster-scoped.

use serde_json::{json, Map, Value};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{ComponentsBuilder, ContentBuilder, OpenApiBuilder, PathsBuilder};

use crate::openapi::{put_body_schema, ResourceSchema};
use crate::resource::ResourceType;

/// The API group of Strait's custom resources.
pub const GROUP: &str = "strait.io";
/// Their version.
pub const VERSION: &str = "v1alpha1";
/// The label that names a namespaced resource's mesh (`default` when absent).
pub const MESH_LABEL: &str = "strait.io/mesh";

/// The types that have a CRD: every type whose writes the API accepts.
pub fn kinds() -> Vec<ResourceType> {
    ResourceType::ALL.iter().copied().filter(|k| crate::support::type_not_enforced(*k).is_none()).collect()
}

/// The CRD of every type in [`kinds`], in that order.
pub fn definitions() -> Vec<Value> {
    let doc = refined_document();
    let schemas = doc.pointer("/components/schemas").and_then(Value::as_object).cloned().unwrap_or_default();
    kinds()
        .into_iter()
        .map(|kind| {
            let body = doc.pointer(&format!("/paths/~1{}/put/requestBody/content/application~1json/schema", kind.plural()));
            let spec = body.and_then(|b| b.pointer("/properties/spec")).cloned().unwrap_or_else(|| json!({ "type": "object" }));
            let spec_required =
                body.and_then(|b| b.get("required")).and_then(Value::as_array).is_some_and(|r| r.iter().any(|n| n == "spec"));
            definition(kind, structural(&spec, &schemas, 0), spec_required)
        })
        .collect()
}

/// Every CRD as one multi-document YAML stream (what `straitctl install crds` prints).
pub fn yaml() -> String {
    files().into_iter().map(|(_, text)| text).collect::<Vec<_>>().join("")
}

/// What a cluster needs, as files: one per CRD ([`file_name`]), and [`READ_ONLY_FILE`] with the
/// admission policy that keeps Strait's objects read-only.
pub fn files() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        kinds().into_iter().zip(definitions()).map(|(kind, crd)| (file_name(kind), document_yaml(&crd))).collect();
    out.push((READ_ONLY_FILE.to_string(), read_only_policy().iter().map(document_yaml).collect()));
    out
}

/// The file of the read-only admission policy.
pub const READ_ONLY_FILE: &str = "read-only.strait.io.yaml";

/// The service account (in any namespace) of the zone control plane, which alone writes
/// Strait's objects in a cluster (its read-only copies of what the global holds).
pub const WRITER_SERVICE_ACCOUNT: &str = "strait-zone";

/// A ValidatingAdmissionPolicy and its binding: the API server refuses every write of a
/// `strait.io` object but the zone control plane's (its service account [`WRITER_SERVICE_ACCOUNT`]),
/// saying how to change a policy instead ([`READ_ONLY`]).
pub fn read_only_policy() -> Vec<Value> {
    let labels = json!({ "app.kubernetes.io/name": "strait", "app.kubernetes.io/part-of": "strait" });
    let writer = format!(
        "request.userInfo.username.startsWith('system:serviceaccount:') && request.userInfo.username.endsWith(':{WRITER_SERVICE_ACCOUNT}')"
    );
    vec![
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": "strait-read-only", "labels": labels },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": { "resourceRules": [{
                    "apiGroups": [GROUP], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE", "DELETE"], "resources": ["*"],
                }] },
                "validations": [{ "expression": writer, "message": READ_ONLY, "reason": "Forbidden" }],
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": "strait-read-only", "labels": labels },
            "spec": { "policyName": "strait-read-only", "validationActions": ["Deny"] },
        }),
    ]
}

/// The file name of `kind`'s CRD in a chart's `crds/` directory, such as
/// `meshtimeouts.strait.io.yaml`.
pub fn file_name(kind: ResourceType) -> String {
    format!("{}.{GROUP}.yaml", kind.plural())
}

/// One CRD as a YAML document, with its `---` separator.
pub fn document_yaml(crd: &Value) -> String {
    format!("---\n{}", serde_yaml::to_string(crd).unwrap_or_default())
}

fn singular(kind: ResourceType) -> String {
    kind.name().to_ascii_lowercase()
}

fn definition(kind: ResourceType, spec: Value, spec_required: bool) -> Value {
    let scoped = kind.is_mesh_scoped();
    let mut columns = Vec::new();
    if scoped {
        columns.push(json!({
            "name": "Mesh",
            "type": "string",
            "description": format!("The mesh (label {MESH_LABEL}; default when absent)"),
            "jsonPath": format!(".metadata.labels.{}", MESH_LABEL.replace('.', "\\.")),
        }));
    }
    if kind.policy_sections().is_some() || kind.is_policy() {
        columns.push(json!({ "name": "Target", "type": "string", "jsonPath": ".spec.targetRef.kind" }));
    }
    columns.push(json!({ "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp" }));
    let description = if scoped {
        format!(
            "A Strait {name}, as the REST API takes it (`spec` is the same). Its mesh is the label {MESH_LABEL} (default when absent). Written on the global control plane; zones hold read-only copies.",
            name = kind.name()
        )
    } else {
        format!("A Strait {}, as the REST API takes it (`spec` is the same).", kind.name())
    };
    let mut root = json!({
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": { "type": "string" },
            "kind": { "type": "string" },
            "metadata": { "type": "object" },
            "spec": spec,
        },
    });
    if spec_required {
        root["required"] = json!(["spec"]);
    }
    let mut names = json!({
        "kind": kind.name(),
        "listKind": format!("{}List", kind.name()),
        "plural": kind.plural(),
        "singular": singular(kind),
        "categories": ["strait"],
    });
    if kind.short() != singular(kind) {
        names["shortNames"] = json!([kind.short()]);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{GROUP}", kind.plural()),
            "labels": { "app.kubernetes.io/name": "strait", "app.kubernetes.io/part-of": "strait" },
        },
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": if scoped { "Namespaced" } else { "Cluster" },
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": root },
                "additionalPrinterColumns": columns,
            }],
        },
    })
}

/// `resource` as a custom resource (in `namespace` when it is mesh-scoped): its spec as the
/// API has it, its mesh as the [`MESH_LABEL`] label.
pub fn to_custom_resource(resource: &crate::Resource, namespace: &str) -> Value {
    let mut labels: Map<String, Value> = resource.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut metadata = json!({ "name": resource.name });
    if resource.kind.is_mesh_scoped() {
        labels.insert(MESH_LABEL.into(), json!(resource.mesh.as_deref().unwrap_or("default")));
        metadata["namespace"] = json!(namespace);
    }
    if !labels.is_empty() {
        metadata["labels"] = Value::Object(labels);
    }
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": resource.kind.name(),
        "metadata": metadata,
        "spec": resource.spec_value(),
    })
}

/// The resource a custom resource holds, validated as the REST API validates it; errors name
/// the field (`spec.to[0].default.idleTimeout: ...`).
pub fn from_custom_resource(object: &Value) -> Result<crate::Resource, crate::ValidationErrors> {
    use crate::ValidationErrors;
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if api_version != format!("{GROUP}/{VERSION}") {
        return Err(ValidationErrors::single("apiVersion", format!("expected {GROUP}/{VERSION}, not {api_version:?}")));
    }
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    let Some(kind) = ResourceType::ALL.iter().copied().find(|k| k.name() == kind) else {
        return Err(ValidationErrors::single("kind", format!("not a Strait resource type: {kind:?}")));
    };
    let metadata = object.get("metadata").cloned().unwrap_or_default();
    let mut labels = metadata.get("labels").and_then(Value::as_object).cloned().unwrap_or_default();
    let mesh = labels.remove(MESH_LABEL);
    let mut value = json!({ "type": kind.name(), "name": metadata.get("name").cloned().unwrap_or_default() });
    if kind.is_mesh_scoped() {
        value["mesh"] = mesh.unwrap_or_else(|| json!("default"));
    }
    if !labels.is_empty() {
        value["labels"] = Value::Object(labels);
    }
    if let Some(spec) = object.get("spec") {
        value["spec"] = spec.clone();
    }
    crate::Resource::from_value(value)
}

/// Why the API server refuses a write of a Strait object (see [`read_only_policy`]).
pub const READ_ONLY: &str = "Strait's objects in Kubernetes are read-only copies of what the global control plane holds, written by the zone control plane: change them with `straitctl apply` or the REST API of the global control plane";

/// The OpenAPI document of the PUT bodies of every type, refined with the validators' rules
/// as the REST API's is.
fn refined_document() -> Value {
    let mut nested = Vec::new();
    <ResourceSchema as utoipa::ToSchema>::schemas(&mut nested);
    let mut components = ComponentsBuilder::new();
    for (name, schema) in nested {
        components = components.schema(name, schema);
    }
    let mut paths = PathsBuilder::new();
    for kind in ResourceType::ALL {
        if let Some(body) = put_body_schema(*kind) {
            let operation = OperationBuilder::new()
                .request_body(Some(
                    RequestBodyBuilder::new().content("application/json", ContentBuilder::new().schema(Some(body)).build()).build(),
                ))
                .build();
            paths = paths.path(format!("/{}", kind.plural()), PathItem::new(HttpMethod::Put, operation));
        }
    }
    let doc = OpenApiBuilder::new().components(Some(components.build())).paths(paths.build()).build();
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    crate::schema_rules::refine(&mut doc);
    doc
}

/// Formats the API server knows; others are left out (it would only warn and ignore them).
const FORMATS: &[&str] = &["int32", "int64", "float", "double", "date-time", "byte"];

/// Deeper than any of our types: a guard against a reference cycle.
const MAX_DEPTH: usize = 40;

/// The structural form of `schema`: references inlined, `[T, "null"]` as `nullable`, one
/// shape for alternatives, junctors and keywords the API server does not take left out.
fn structural(schema: &Value, schemas: &Map<String, Value>, depth: usize) -> Value {
    if depth > MAX_DEPTH {
        return json!({ "x-kubernetes-preserve-unknown-fields": true });
    }
    let Some(node) = schema.as_object() else {
        // `true`: anything.
        return json!({ "x-kubernetes-preserve-unknown-fields": true });
    };
    if let Some(target) = node.get("$ref").and_then(Value::as_str) {
        let name = target.rsplit('/').next().unwrap_or_default();
        let mut out = match schemas.get(name) {
            Some(s) => structural(s, schemas, depth + 1),
            None => json!({ "x-kubernetes-preserve-unknown-fields": true }),
        };
        // A description next to a reference describes this use of it.
        if let (Some(d), Some(o)) = (node.get("description"), out.as_object_mut()) {
            o.insert("description".into(), d.clone());
        }
        return out;
    }
    let (types, nullable) = types_of(node);
    let mut out = Map::new();
    match types.as_slice() {
        [] => {
            // No type of its own: a shape from its alternatives (or from `allOf`'s parts).
            let mut parts: Vec<&Value> = Vec::new();
            for junctor in ["oneOf", "anyOf", "allOf"] {
                parts.extend(node.get(junctor).and_then(Value::as_array).into_iter().flatten());
            }
            let null_alternative = parts.iter().any(|p| p.get("type") == Some(&json!("null")));
            let shaped: Vec<Value> = parts
                .into_iter()
                .filter(|p| has_shape(p))
                .map(|p| structural(p, schemas, depth + 1))
                .filter(|p| p.get("type").is_some() || p.get("x-kubernetes-int-or-string").is_some())
                .collect();
            out = merge_alternatives(shaped);
            if null_alternative {
                out.insert("nullable".into(), json!(true));
            }
            if node.get("properties").is_some() {
                object_keywords(node, schemas, depth, &mut out);
                out.insert("type".into(), json!("object"));
            }
        }
        [one] => {
            out.insert("type".into(), json!(one));
            match one.as_str() {
                "object" => object_keywords(node, schemas, depth, &mut out),
                "array" => {
                    let items = node
                        .get("items")
                        .map_or_else(|| json!({ "x-kubernetes-preserve-unknown-fields": true }), |i| structural(i, schemas, depth + 1));
                    out.insert("items".into(), items);
                    copy(node, &mut out, &["minItems", "maxItems", "uniqueItems"]);
                }
                _ => scalar_keywords(node, &mut out),
            }
        }
        [..] if types.iter().all(|t| t == "integer" || t == "string") => {
            out.insert("x-kubernetes-int-or-string".into(), json!(true));
        }
        [..] => {
            out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
        }
    }
    if nullable {
        out.insert("nullable".into(), json!(true));
    }
    if let Some(d) = node.get("description") {
        out.insert("description".into(), d.clone());
    }
    if out.get("type").is_none() && out.get("x-kubernetes-int-or-string").is_none() {
        out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
    }
    Value::Object(out)
}

/// Whether a junctor's part describes a shape (rather than only a constraint between fields).
fn has_shape(part: &Value) -> bool {
    part.get("$ref").is_some() || part.get("type").is_some() || part.get("oneOf").is_some() || part.get("anyOf").is_some()
}

/// The node's types other than `null`, and whether `null` is one of them.
fn types_of(node: &Map<String, Value>) -> (Vec<String>, bool) {
    let mut types: Vec<String> = match node.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let nullable = types.iter().any(|t| t == "null") || node.get("nullable") == Some(&json!(true));
    types.retain(|t| t != "null");
    (types, nullable)
}

fn copy(node: &Map<String, Value>, out: &mut Map<String, Value>, keys: &[&str]) {
    for key in keys {
        if let Some(v) = node.get(*key) {
            out.insert((*key).into(), v.clone());
        }
    }
}

fn object_keywords(node: &Map<String, Value>, schemas: &Map<String, Value>, depth: usize, out: &mut Map<String, Value>) {
    let properties: Map<String, Value> = node
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, p)| (name.clone(), structural(p, schemas, depth + 1)))
        .collect();
    if !properties.is_empty() {
        let required: Vec<Value> = node
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| r.as_str().is_some_and(|r| properties.contains_key(r)))
            .cloned()
            .collect();
        out.insert("properties".into(), Value::Object(properties));
        if !required.is_empty() {
            out.insert("required".into(), Value::Array(required));
        }
    } else {
        match node.get("additionalProperties") {
            Some(Value::Object(_)) => {
                let values = structural(&node["additionalProperties"], schemas, depth + 1);
                out.insert("additionalProperties".into(), values);
            }
            Some(Value::Bool(false)) => {}
            _ => {
                out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
            }
        }
    }
    copy(node, out, &["minProperties", "maxProperties"]);
}

fn scalar_keywords(node: &Map<String, Value>, out: &mut Map<String, Value>) {
    copy(node, out, &["pattern", "minLength", "maxLength", "multipleOf"]);
    if let Some(format) = node.get("format").and_then(Value::as_str) {
        if FORMATS.contains(&format) {
            out.insert("format".into(), json!(format));
        }
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        let values: Vec<Value> = values.iter().filter(|v| !v.is_null()).cloned().collect();
        if !values.is_empty() {
            out.insert("enum".into(), Value::Array(values));
        }
    } else if let Some(value) = node.get("const") {
        out.insert("enum".into(), json!([value]));
    }
    // OpenAPI 3.1 writes exclusive bounds as numbers, the API server's schema as flags.
    for (exclusive, bound) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
        match node.get(exclusive) {
            Some(Value::Number(n)) => {
                out.insert(bound.into(), Value::Number(n.clone()));
                out.insert(exclusive.into(), json!(true));
            }
            _ => copy(node, out, &[bound]),
        }
    }
}

/// One shape for alternatives: objects merge their properties (each still optional), scalars
/// of one type keep it (enums joined), integer-or-string is said so, anything else is left
/// unchecked here (the validator checks it).
fn merge_alternatives(parts: Vec<Value>) -> Map<String, Value> {
    let mut out = Map::new();
    let types: Vec<&str> = parts.iter().filter_map(|p| p.get("type").and_then(Value::as_str)).collect();
    let int_or_string = parts.iter().any(|p| p.get("x-kubernetes-int-or-string").is_some());
    match parts.as_slice() {
        [] => return out,
        // One shape (the other alternative being `null`), or the same one several times.
        [first, rest @ ..] if rest.iter().all(|p| p == first) => return first.as_object().cloned().unwrap_or_default(),
        _ => {}
    }
    if !int_or_string && types.len() == parts.len() && types.iter().all(|t| *t == types[0]) {
        let kind = types[0];
        out.insert("type".into(), json!(kind));
        match kind {
            "object" => {
                let mut properties = Map::new();
                let mut open = false;
                for part in &parts {
                    match part.get("properties").and_then(Value::as_object) {
                        Some(ps) => {
                            for (name, p) in ps {
                                // A field in several alternatives takes what any of them allows.
                                let merged = match properties.remove(name) {
                                    Some(before) => Value::Object(merge_alternatives(vec![before, p.clone()])),
                                    None => p.clone(),
                                };
                                properties.insert(name.clone(), merged);
                            }
                        }
                        None => {
                            open |= part.get("x-kubernetes-preserve-unknown-fields").is_some() || part.get("additionalProperties").is_some()
                        }
                    }
                }
                if open && properties.is_empty() {
                    out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
                } else {
                    out.insert("properties".into(), Value::Object(properties));
                }
            }
            "array" => {
                let items =
                    parts.iter().find_map(|p| p.get("items")).cloned().unwrap_or(json!({ "x-kubernetes-preserve-unknown-fields": true }));
                out.insert("items".into(), items);
            }
            _ => {
                let enums: Option<Vec<Value>> =
                    parts.iter().map(|p| p.get("enum").and_then(Value::as_array).cloned()).collect::<Option<Vec<_>>>().map(|all| {
                        let mut joined: Vec<Value> = Vec::new();
                        for v in all.into_iter().flatten() {
                            if !joined.contains(&v) {
                                joined.push(v);
                            }
                        }
                        joined
                    });
                if let Some(values) = enums {
                    out.insert("enum".into(), Value::Array(values));
                }
            }
        }
    } else if !types.contains(&"object") && !types.contains(&"array") && types.iter().all(|t| *t == "integer" || *t == "string") {
        out.insert("x-kubernetes-int-or-string".into(), json!(true));
    } else {
        out.insert("x-kubernetes-preserve-unknown-fields".into(), json!(true));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules of a structural schema (Kubernetes' apiextensions `v1`): every node has a
    /// type (or says it is int-or-string or keeps unknown fields), no reference, no keyword
    /// the API server refuses, no properties and additionalProperties together.
    fn check_structural(node: &Value, path: &str, problems: &mut Vec<String>) {
        let Some(o) = node.as_object() else {
            problems.push(format!("{path}: not an object"));
            return;
        };
        const ALLOWED: &[&str] = &[
            "type",
            "description",
            "format",
            "properties",
            "required",
            "items",
            "additionalProperties",
            "enum",
            "pattern",
            "minLength",
            "maxLength",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "multipleOf",
            "minItems",
            "maxItems",
            "uniqueItems",
            "minProperties",
            "maxProperties",
            "nullable",
            "x-kubernetes-int-or-string",
            "x-kubernetes-preserve-unknown-fields",
            "x-kubernetes-validations",
        ];
        for key in o.keys() {
            if !ALLOWED.contains(&key.as_str()) {
                problems.push(format!("{path}: keyword {key}"));
            }
        }
        let typed = o.get("type").and_then(Value::as_str).is_some()
            || o.get("x-kubernetes-int-or-string") == Some(&json!(true))
            || o.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        if o.get("properties").is_some() && o.get("additionalProperties").is_some() {
            problems.push(format!("{path}: properties and additionalProperties"));
        }
        for flag in ["exclusiveMinimum", "exclusiveMaximum", "nullable", "uniqueItems"] {
            if o.get(flag).is_some_and(|v| !v.is_boolean()) {
                problems.push(format!("{path}: {flag} is not a boolean"));
            }
        }
        if let Some(ps) = o.get("properties").and_then(Value::as_object) {
            for (name, p) in ps {
                check_structural(p, &format!("{path}.{name}"), problems);
            }
            for r in o.get("required").and_then(Value::as_array).into_iter().flatten() {
                if !r.as_str().is_some_and(|r| ps.contains_key(r)) {
                    problems.push(format!("{path}: required {r} is not a property"));
                }
            }
        }
        if let Some(items) = o.get("items") {
            check_structural(items, &format!("{path}[]"), problems);
        }
        if let Some(values) = o.get("additionalProperties").filter(|v| v.is_object()) {
            check_structural(values, &format!("{path}{{}}"), problems);
        }
    }

    #[test]
    fn every_accepted_type_has_a_structural_crd() {
        let crds = definitions();
        assert_eq!(crds.len(), kinds().len());
        assert!(kinds().contains(&ResourceType::MeshTimeout) && kinds().contains(&ResourceType::Mesh));
        let mut problems = Vec::new();
        for crd in &crds {
            let name = crd["metadata"]["name"].as_str().unwrap().to_string();
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            check_structural(schema, &name, &mut problems);
            assert!(!serde_json::to_string(crd).unwrap().contains("$ref"), "{name} still refers to a schema");
        }
        // The API server refuses every write but the zone's, saying how to change a policy.
        let policy = read_only_policy();
        assert_eq!(policy[0]["spec"]["matchConstraints"]["resourceRules"][0]["apiGroups"], json!([GROUP]));
        let check = &policy[0]["spec"]["validations"][0];
        assert!(check["expression"].as_str().is_some_and(|e| e.contains("':strait-zone'")), "{check}");
        assert!(check["message"].as_str().is_some_and(|m| m.contains("straitctl apply")), "{check}");
        assert_eq!(policy[1]["spec"], json!({"policyName": "strait-read-only", "validationActions": ["Deny"]}));
        assert!(problems.is_empty(), "not structural:\n{}", problems.join("\n"));
    }

    #[test]
    fn crds_carry_the_api_rules_and_shapes() {
        let crds = definitions();
        let crd = |plural: &str| crds.iter().find(|c| c["spec"]["names"]["plural"] == plural).unwrap().clone();
        let timeout = crd("meshtimeouts");
        assert_eq!(timeout["spec"]["scope"], "Namespaced");
        assert_eq!(timeout["spec"]["names"]["shortNames"], json!(["mt"]));
        let spec = &timeout["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        // The duration grammar and the targetRef kinds come from the API's rules.
        let idle = &spec["properties"]["to"]["items"]["properties"]["default"]["properties"]["idleTimeout"];
        assert_eq!(idle["type"], "string", "{idle}");
        assert!(idle["pattern"].as_str().is_some_and(|p| p.contains("ms|s|m|h")), "{idle}");
        let kinds = &spec["properties"]["targetRef"]["properties"]["kind"]["enum"];
        assert!(kinds.as_array().is_some_and(|k| k.contains(&json!("MeshService"))), "{kinds}");
        let mesh = crd("meshes");
        assert_eq!(mesh["spec"]["scope"], "Cluster");
        assert!(mesh["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["required"].is_null(), "a Mesh's spec may be left out");
        // Every field of a spec that the API takes is in the CRD's schema.
        let route = crd("meshhttproutes");
        let rule = &route["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["to"]["items"]
            ["properties"]["rules"]["items"]["properties"];
        assert!(rule["matches"]["items"]["properties"]["path"].is_object(), "{rule}");
        assert!(rule["default"]["properties"]["backendRefs"].is_object(), "{rule}");
    }

    #[test]
    fn the_yaml_stream_parses_back_to_the_definitions() {
        let text = yaml();
        let parsed: Vec<Value> = serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).collect();
        let mut expected = definitions();
        expected.extend(read_only_policy());
        assert_eq!(parsed, expected);
    }

    use serde::Deserialize;

    #[test]
    fn resources_go_to_custom_resources_and_back_unchanged() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples/all-types.yaml")).unwrap();
        let mut seen = 0;
        for resource in crate::parse_documents(&text).into_iter().filter_map(Result::ok) {
            let object = to_custom_resource(&resource, "strait-system");
            assert_eq!(object["kind"], resource.kind.name());
            let back = from_custom_resource(&object).unwrap();
            assert_eq!(back.to_value(), resource.to_value());
            seen += 1;
        }
        assert!(seen >= 3, "the examples hold resources ({seen})");
        let bad = json!({
            "apiVersion": "strait.io/v1alpha1", "kind": "MeshTimeout",
            "metadata": { "name": "t", "labels": { "strait.io/mesh": "default" } },
            "spec": { "targetRef": { "kind": "Mesh" }, "to": [{ "targetRef": { "kind": "Mesh" }, "default": { "idleTimeout": "5 parsecs" } }] },
        });
        let errors = from_custom_resource(&bad).unwrap_err().to_string();
        assert!(errors.contains("spec.to[0].default.idleTimeout"), "{errors}");
        let wrong = json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": "p" } });
        assert!(from_custom_resource(&wrong).unwrap_err().to_string().contains("apiVersion"));
    }

    #[test]
    fn the_charts_crds_are_what_the_types_generate() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/strait/crds");
        let mut expected: std::collections::BTreeMap<String, String> = files().into_iter().collect();
        let policy = expected.remove(READ_ONLY_FILE);
        let template = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/strait/templates/", "read-only.strait.io.yaml");
        let policy_stale = std::fs::read_to_string(template).ok() != policy;
        let found: std::collections::BTreeMap<String, String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let stale: Vec<&String> = expected
            .keys()
            .filter(|k| found.get(*k) != expected.get(*k))
            .chain(found.keys().filter(|k| !expected.contains_key(*k)))
            .collect();
        assert!(
            stale.is_empty() && !policy_stale,
            "deploy/k8s/strait/crds ({stale:?}) or templates/{READ_ONLY_FILE} (stale: {policy_stale}) differ from what the API types generate; regenerate them with\n  cargo run -q -p straitctl -- install crds --output-dir deploy/k8s/strait/crds --policy-dir deploy/k8s/strait/templates"
        );
    }
}
