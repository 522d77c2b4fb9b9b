//! The rules of the validators, written as JSON Schema for the OpenAPI document.
//!
//! In: the document generated from the Rust types, which knows shapes but not rules (a port is
//! a `u16`, not 1-65535; a MeshRetry needs one of `tcp`, `http`, `grpc`). Out: the same document
//! with the rules of [`crate::validate`] and the `Validate` impls added, so that a client or a
//! contract tester that sends what the schema allows gets `200`, and what it forbids gets `400`.
//!
//! Each rule below names the validator it mirrors. A rule that JSON Schema cannot state exactly
//! is written as the largest part of it that it can: the schema may be stricter than the
//! validator (`certificateLifetime` allows whole seconds, minutes or hours in the schema, any
//! duration from 10s to 8760h in the API), never looser.

use serde_json::{json, Map, Value};

use crate::names::{PROTOCOL_TAG, SERVICE_TAG};
use crate::resource::ResourceType;

/// A DNS-1123 label: mesh and zone names.
pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// A DNS-1123 subdomain: resource and service names.
pub const DNS_SUBDOMAIN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$";
/// A label or tag key ([`crate::names::check_label_key`]).
const LABEL_KEY: &str =
    "^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label or tag value ([`crate::names::check_label_value`]).
const LABEL_VALUE: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";
/// An HTTP header name ([`crate::policies::check_header_name`]).
const HEADER_NAME: &str = "^[-!#$%&'*+.^_`|~0-9A-Za-z]+$";
/// The grammar [`crate::Duration`] parses.
pub const DURATION: &str = "^(0|([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$";
/// Durations above zero (`check_positive`), as terms that each start with a non-zero digit.
const POSITIVE_DURATION: &str = "^([1-9][0-9]*(ns|us|µs|ms|s|m|h))+$";
/// A mesh's certificate lifetime, 10s to 8760h, in the canonical form the API answers with
/// (hours, minutes and seconds, each term below the next unit).
const CERTIFICATE_LIFETIME: &str = "^(8760h|([1-9][0-9]{0,2}|[1-7][0-9]{3}|8[0-6][0-9]{2}|87[0-5][0-9])h([1-9]m|[1-5][0-9]m)?([1-9]s|[1-5][0-9]s)?|([1-9]|[1-5][0-9])m([1-9]s|[1-5][0-9]s)?|[1-5][0-9]s)$";
/// HTTP retry conditions (`retry::HTTP_CONDITIONS`); status codes are allowed besides.
const HTTP_RETRY_ON: &[&str] = &["5xx", "GatewayError", "Reset", "ConnectFailure", "Retriable4xx", "RefusedStream"];
/// gRPC retry conditions (`retry::GRPC_CONDITIONS`).
const GRPC_RETRY_ON: &[&str] = &["Canceled", "DeadlineExceeded", "Internal", "ResourceExhausted", "Unavailable"];

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// An optional field of the named schema.
fn opt_ref(name: &str) -> Value {
    json!({ "oneOf": [{ "type": "null" }, schema_ref(name)] })
}

/// An optional string matching `pattern`.
fn opt_pattern(pattern: &str) -> Value {
    json!({ "type": ["string", "null"], "pattern": pattern })
}

fn range(min: i64, max: i64) -> Value {
    json!({ "minimum": min, "maximum": max })
}

fn port() -> Value {
    range(1, 65535)
}

fn status() -> Value {
    range(100, 599)
}

fn percentage() -> Value {
    json!({ "minimum": 0, "maximum": 100 })
}

/// Set and not null.
fn present() -> Value {
    json!({ "not": { "type": "null" } })
}

/// Exactly one of `fields` is set (the others absent or null).
fn exactly_one(fields: &[&str]) -> Value {
    let branches: Vec<Value> = fields
        .iter()
        .map(|chosen| {
            let mut properties = Map::new();
            for f in fields {
                properties.insert(f.to_string(), if f == chosen { present() } else { json!({ "type": "null" }) });
            }
            json!({ "required": [chosen], "properties": properties })
        })
        .collect();
    json!({ "oneOf": branches })
}

/// At least one of `fields` is set.
fn at_least_one(fields: &[&str]) -> Value {
    let branches: Vec<Value> = fields.iter().map(|f| json!({ "required": [f], "properties": { f.to_string(): present() } })).collect();
    json!({ "anyOf": branches })
}

/// The shared schemas the rules refer to.
fn shared() -> Vec<(&'static str, Value)> {
    vec![
        (
            "Labels",
            json!({
                "type": "object",
                "description": "Labels or tags: keys are an optional DNS subdomain and '/', then 1-63 letters, digits, '-', '_' or '.'; values are empty or 1-63 of the same",
                "propertyNames": { "type": "string", "pattern": LABEL_KEY, "maxLength": 253 },
                "additionalProperties": { "type": "string", "pattern": LABEL_VALUE },
            }),
        ),
        ("ServiceName", json!({ "type": "string", "pattern": DNS_SUBDOMAIN, "maxLength": 253, "description": "A DNS-1123 subdomain" })),
        (
            "PositiveDuration",
            json!({ "type": "string", "pattern": POSITIVE_DURATION, "description": "A duration above zero, such as 250ms or 1m30s" }),
        ),
        ("IpAddress", json!({ "type": "string", "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }] })),
        ("HeaderName", json!({ "type": "string", "pattern": HEADER_NAME })),
        // An inbound's or outbound's tags: the service is required, the protocol one of four.
        (
            "ServiceTags",
            json!({
                "type": "object",
                "propertyNames": { "type": "string", "pattern": LABEL_KEY, "maxLength": 253 },
                "properties": {
                    SERVICE_TAG: { "type": "string", "pattern": DNS_LABEL },
                    PROTOCOL_TAG: { "type": "string", "enum": crate::dataplane::PROTOCOLS },
                },
                "required": [SERVICE_TAG],
                "additionalProperties": { "type": "string", "pattern": LABEL_VALUE },
            }),
        ),
    ]
}

/// The targetRef of each position, as a choice by kind (`TargetRef::validate_allowing`).
fn target_refs() -> Vec<(&'static str, Value)> {
    let variant = |kind: &str, name: Value, tags: Value, required: &[&str]| {
        let mut required: Vec<&str> = required.to_vec();
        required.insert(0, "kind");
        json!({
            "type": "object",
            "properties": { "kind": { "type": "string", "const": kind }, "name": name, "tags": tags },
            "required": required,
            "additionalProperties": false,
        })
    };
    let no_name = json!({ "type": "null" });
    let no_tags = json!({ "type": "object", "maxProperties": 0 });
    let mesh = variant("Mesh", no_name.clone(), no_tags.clone(), &[]);
    let subset = variant("MeshSubset", no_name.clone(), json!({ "allOf": [schema_ref("Labels"), { "minProperties": 1 }] }), &["tags"]);
    let service = variant("MeshService", schema_ref("ServiceName"), schema_ref("Labels"), &["name"]);
    let dataplane = variant("Dataplane", schema_ref("ServiceName"), no_tags.clone(), &["name"]);
    let route = variant("MeshHTTPRoute", schema_ref("ServiceName"), no_tags, &["name"]);
    // Callers are known by their service only (`support::caller_tags`).
    let caller_tags = json!({
        "type": "object",
        "properties": { SERVICE_TAG: { "type": "string", "pattern": LABEL_VALUE } },
        "additionalProperties": false,
    });
    let caller_subset = variant("MeshSubset", no_name, json!({ "allOf": [caller_tags.clone(), { "minProperties": 1 }] }), &["tags"]);
    let caller_service = variant("MeshService", schema_ref("ServiceName"), caller_tags, &["name"]);
    vec![
        (
            "TargetRef",
            json!({ "description": "The proxies a policy configures", "oneOf": [mesh, subset, service.clone(), dataplane.clone()] }),
        ),
        // A MeshTimeout or a MeshRateLimit may also apply to the requests of a route (`PolicyConf::PER_ROUTE`).
        (
            "PerRouteTargetRef",
            json!({ "description": "The proxies a policy configures, or the requests of a MeshHTTPRoute", "oneOf": [mesh, subset, service.clone(), dataplane, route] }),
        ),
        (
            "CallerRef",
            json!({ "description": "The callers an inbound item applies to", "oneOf": [mesh.clone(), caller_subset, caller_service] }),
        ),
        (
            "DestinationRef",
            json!({ "description": "The destinations an outbound item applies to", "oneOf": [mesh.clone(), service.clone()] }),
        ),
        // MeshTimeout's inbound timeouts apply to every caller of an inbound (`support::not_enforced`).
        ("EveryCallerRef", json!({ "description": "Every caller of an inbound", "oneOf": [mesh] })),
        ("RouteDestinationRef", json!({ "description": "The service a route applies to", "oneOf": [service] })),
    ]
}

/// Rules merged into one property, `Schema.property`.
fn property_rules() -> Vec<(&'static str, Value)> {
    vec![
        // Mesh (`MeshSpec::validate`).
        ("Mtls.certificateLifetime", opt_pattern(CERTIFICATE_LIFETIME)),
        // Dataplane (`DataplaneSpec::validate`).
        ("Networking.address", schema_ref("IpAddress")),
        ("Networking.inbound", json!({ "minItems": 1 })),
        ("Inbound.port", port()),
        ("Inbound.servicePort", port()),
        ("Inbound.serviceAddress", opt_ref("IpAddress")),
        ("Inbound.tags", schema_ref("ServiceTags")),
        ("ServiceProbe.interval", opt_ref("PositiveDuration")),
        ("ServiceProbe.timeout", opt_ref("PositiveDuration")),
        ("ServiceProbe.unhealthyThreshold", json!({ "minimum": 1 })),
        ("ServiceProbe.healthyThreshold", json!({ "minimum": 1 })),
        ("HttpProbe.path", json!({ "pattern": "^/" })),
        ("Outbound.port", port()),
        ("Outbound.address", opt_ref("IpAddress")),
        ("Outbound.tags", schema_ref("ServiceTags")),
        ("TransparentProxying.redirectPortOutbound", port()),
        ("TransparentProxying.redirectPortInbound", port()),
        // Shared shapes (`policies::{HeaderValue, BackendRef}`).
        ("HeaderValue.name", schema_ref("HeaderName")),
        ("HeaderValue.value", json!({ "pattern": "^[^\\r\\n]*$" })),
        ("BackendRef.kind", json!({ "type": "string", "const": "MeshService" })),
        ("BackendRef.name", schema_ref("ServiceName")),
        ("BackendRef.tags", schema_ref("Labels")),
        // MeshTimeout.
        ("TimeoutConf.connectionTimeout", opt_ref("PositiveDuration")),
        // Not enforced yet (`support::not_enforced`): absent or null only.
        ("HttpTimeouts.maxConnectionDuration", opt_ref("PositiveDuration")),
        ("HttpTimeouts.requestHeadersTimeout", json!({ "type": "null" })),
        // MeshRetry.
        ("TcpRetry.maxConnectAttempt", json!({ "minimum": 1 })),
        ("RequestRetry.perTryTimeout", opt_ref("PositiveDuration")),
        ("BackOff.baseInterval", opt_ref("PositiveDuration")),
        ("BackOff.maxInterval", opt_ref("PositiveDuration")),
        (
            "RequestRetry.retryOn",
            json!({ "items": { "anyOf": [{ "type": "string", "enum": HTTP_RETRY_ON }, { "type": "string", "pattern": "^[1-5][0-9]{2}$" }] } }),
        ),
        ("RetryBudget.percent", percentage()),
        // MeshCircuitBreaker.
        ("ConnectionLimits.maxConnections", json!({ "minimum": 1 })),
        ("ConnectionLimits.maxPendingRequests", json!({ "minimum": 1 })),
        ("OutlierDetection.interval", opt_ref("PositiveDuration")),
        ("ConnectionLimits.maxRequests", json!({ "minimum": 1 })),
        ("ConnectionLimits.maxRequestsPerConnection", json!({ "minimum": 1 })),
        ("OutlierDetection.baseEjectionTime", opt_ref("PositiveDuration")),
        ("OutlierDetection.maxEjectionPercent", percentage()),
        ("Consecutive.consecutive", json!({ "minimum": 1 })),
        ("FailurePercentage.threshold", percentage()),
        ("SuccessRate.standardDeviationFactor", percentage()),
        // MeshHealthCheck.
        ("HealthCheckConf.interval", opt_ref("PositiveDuration")),
        ("HealthCheckConf.timeout", opt_ref("PositiveDuration")),
        ("HealthCheckConf.unhealthyThreshold", json!({ "minimum": 1 })),
        ("HealthCheckConf.healthyThreshold", json!({ "minimum": 1 })),
        ("HttpHealthCheck.path", opt_pattern("^/")),
        ("HttpHealthCheck.expectedStatuses", json!({ "items": status() })),
        ("GrpcHealthCheck.authority", opt_pattern("^[A-Za-z0-9.-]+$")),
        // MeshLoadBalancingStrategy.
        ("LeastRequest.choiceCount", json!({ "minimum": 2 })),
        ("RingHash.hashPolicies", json!({ "minItems": 1 })),
        ("Maglev.hashPolicies", json!({ "minItems": 1 })),
        ("CrossZone.failoverThreshold", percentage()),
        ("ZoneList.zones", json!({ "items": { "pattern": DNS_LABEL } })),
        ("FailoverTarget.zones", json!({ "items": { "pattern": DNS_LABEL } })),
        // MeshRateLimit.
        ("Rate.num", json!({ "minimum": 1 })),
        ("Rate.interval", schema_ref("PositiveDuration")),
        ("OnRateLimit.status", status()),
        // MeshFaultInjection.
        ("FaultInjectionConf.http", json!({ "minItems": 1 })),
        ("Abort.httpStatus", status()),
        ("Abort.percentage", percentage()),
        ("Delay.percentage", percentage()),
        ("ResponseBandwidth.percentage", percentage()),
        ("ResponseBandwidth.limit", json!({ "pattern": "^0{0,9}[1-9][0-9]{0,8}(bps|kbps|mbps|gbps)$" })),
        // MeshAccessLog.
        ("AccessLogConf.backends", json!({ "minItems": 1 })),
        ("FileBackend.path", json!({ "pattern": "^/" })),
        ("TcpBackend.address", json!({ "pattern": "^[^:]*[^:]:0{0,4}[1-9][0-9]{0,3}$" })),
        ("LogFormat.plain", opt_pattern(&crate::policies::access_log::template_pattern())),
        ("JsonField.value", json!({ "pattern": crate::policies::access_log::template_pattern() })),
        // MeshTrace.
        ("TraceConf.backends", json!({ "maxItems": 1 })),
        ("Zipkin.url", json!({ "pattern": "^https?://" })),
        // Not enforced: spans go over OTLP only (`support::not_enforced`).
        ("TraceBackend.zipkin", json!({ "type": "null" })),
        ("TraceTag.header", opt_ref("HeaderName")),
        ("Sampling.overall", percentage()),
        ("Sampling.client", percentage()),
        ("Sampling.random", percentage()),
        // MeshMetric.
        ("SidecarMetrics.regex", json!({ "format": "regex" })),
        ("ApplicationMetrics.path", opt_pattern("^/")),
        ("ApplicationMetrics.port", port()),
        ("PrometheusBackend.port", port()),
        ("PrometheusBackend.path", opt_pattern("^/")),
        // MeshHTTPRoute (`HttpMatch::validate`, `HttpFilter::validate`).
        ("HttpMatch.method", json!({ "enum": [null, "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"] })),
        ("HeaderMatch.name", schema_ref("HeaderName")),
        ("QueryMatch.type", json!({ "type": "string", "enum": ["Exact", "RegularExpression"] })),
        ("QueryMatch.name", json!({ "minLength": 1 })),
        ("HeaderModifier.remove", json!({ "items": schema_ref("HeaderName") })),
        ("RequestRedirect.scheme", json!({ "enum": [null, "http", "https"] })),
        ("RequestRedirect.statusCode", json!({ "enum": [null, 301, 302, 303, 307, 308] })),
        ("RequestRedirect.path", opt_pattern("^/")),
        ("RequestRedirect.port", range(0, 65535)),
        ("RequestMirror.percentage", percentage()),
        ("HttpRouteConf.backendRefs", weighted_backends(false)),
        ("TcpRouteConf.backendRefs", weighted_backends(true)),
    ]
}

/// A list of route backends: when any is given, one has a weight above 0 (`check_backends`).
fn weighted_backends(required: bool) -> Value {
    let live =
        json!({ "contains": { "anyOf": [{ "not": { "required": ["weight"] } }, { "properties": { "weight": { "minimum": 1 } } }] } });
    if required {
        json!({ "minItems": 1, "allOf": [live] })
    } else {
        json!({ "anyOf": [{ "maxItems": 0 }, live] })
    }
}

/// Rules on a whole object: which fields go together.
fn object_rules() -> Vec<(&'static str, Value)> {
    let header_value =
        |kind: &str| json!({ "properties": { "type": { "const": kind }, "value": { "type": "string" } }, "required": ["type", "value"] });
    let regex_value = |kind: &str| json!({ "properties": { "type": { "const": kind }, "value": { "type": "string", "format": "regex" } }, "required": ["type", "value"] });
    let filter = |kind: &str, field: &str| {
        let mut properties = Map::new();
        properties.insert("type".into(), json!({ "const": kind }));
        for f in ["requestHeaderModifier", "responseHeaderModifier", "requestRedirect", "urlRewrite", "requestMirror"] {
            properties.insert(f.into(), if f == field { present() } else { json!({ "type": "null" }) });
        }
        json!({ "properties": properties, "required": ["type", field] })
    };
    vec![
        ("RetryConf", at_least_one(&["tcp", "http"])),
        ("LocalRateLimit", at_least_one(&["http", "tcp"])),
        ("Fault", at_least_one(&["abort", "delay", "responseBandwidth"])),
        (
            "HeaderModifier",
            json!({ "anyOf": [
            { "required": ["set"], "properties": { "set": { "minItems": 1 } } },
            { "required": ["add"], "properties": { "add": { "minItems": 1 } } },
            { "required": ["remove"], "properties": { "remove": { "minItems": 1 } } },
        ] }),
        ),
        ("AccessLogBackend", exactly_one(&["file", "tcp"])),
        ("LogFormat", exactly_one(&["plain", "json"])),
        ("TraceBackend", exactly_one(&["zipkin", "openTelemetry"])),
        ("TraceTag", exactly_one(&["literal", "header"])),
        (
            "UrlRewrite",
            json!({ "oneOf": [
            { "properties": { "hostname": present(), "replaceFullPath": { "type": "null" }, "replacePrefixMatch": { "type": "null" } }, "required": ["hostname"] },
            { "properties": { "replaceFullPath": present(), "replacePrefixMatch": { "type": "null" } }, "required": ["replaceFullPath"] },
            { "properties": { "replacePrefixMatch": present(), "replaceFullPath": { "type": "null" } }, "required": ["replacePrefixMatch"] },
        ] }),
        ),
        (
            "HttpFilter",
            json!({ "oneOf": [
            filter("RequestHeaderModifier", "requestHeaderModifier"),
            filter("ResponseHeaderModifier", "responseHeaderModifier"),
            filter("RequestRedirect", "requestRedirect"),
            filter("URLRewrite", "urlRewrite"),
            filter("RequestMirror", "requestMirror"),
        ] }),
        ),
        (
            "PathMatch",
            json!({ "oneOf": [
            { "properties": { "type": { "enum": ["Exact", "PathPrefix"] }, "value": { "pattern": "^/" } } },
            regex_value("RegularExpression"),
        ] }),
        ),
        (
            "HeaderMatch",
            json!({ "oneOf": [
            header_value("Exact"),
            header_value("Prefix"),
            regex_value("RegularExpression"),
            { "properties": { "type": { "enum": ["Present", "Absent"] }, "value": { "type": "null" } }, "required": ["type"] },
        ] }),
        ),
        (
            "QueryMatch",
            json!({ "oneOf": [
            { "properties": { "type": { "const": "Exact" } } },
            regex_value("RegularExpression"),
        ] }),
        ),
        (
            "LoadBalancer",
            json!({ "oneOf": [
            { "properties": { "type": { "enum": ["RoundRobin", "Random"] }, "leastRequest": { "type": "null" }, "ringHash": { "type": "null" }, "maglev": { "type": "null" } } },
            { "properties": { "type": { "const": "LeastRequest" }, "ringHash": { "type": "null" }, "maglev": { "type": "null" } } },
            { "properties": { "type": { "const": "RingHash" }, "ringHash": present(), "leastRequest": { "type": "null" }, "maglev": { "type": "null" } }, "required": ["type", "ringHash"] },
            { "properties": { "type": { "const": "Maglev" }, "maglev": present(), "leastRequest": { "type": "null" }, "ringHash": { "type": "null" } }, "required": ["type", "maglev"] },
        ] }),
        ),
        (
            "HashPolicy",
            json!({ "oneOf": [
            { "properties": { "type": { "const": "SourceIP" }, "name": { "type": "null" } } },
            { "properties": { "type": { "enum": ["Header", "Cookie", "QueryParameter"] }, "name": { "type": "string" } }, "required": ["type", "name"] },
        ] }),
        ),
        // `HttpRouteRule::validate`: a prefix rewrite needs every match to be a path prefix.
        (
            "HttpRouteRule",
            json!({ "anyOf": [
            { "properties": { "default": { "properties": { "filters": { "not": { "contains": {
                "required": ["urlRewrite"],
                "properties": { "urlRewrite": { "type": "object", "required": ["replacePrefixMatch"], "properties": { "replacePrefixMatch": { "type": "string" } } } },
            } } } } } } },
            { "required": ["matches"], "properties": { "matches": { "minItems": 1, "items": {
                "required": ["path"],
                "properties": { "path": { "type": "object", "required": ["type"], "properties": { "type": { "const": "PathPrefix" } } } },
            } } } },
        ] }),
        ),
        (
            "FailoverTarget",
            json!({ "oneOf": [
            { "properties": { "type": { "enum": ["Only", "AnyExcept"] }, "zones": { "minItems": 1 } }, "required": ["zones"] },
            { "properties": { "type": { "enum": ["Any", "None"] }, "zones": { "maxItems": 0 } } },
        ] }),
        ),
    ]
}

/// Adds the rules to an OpenAPI document's schemas and request bodies. Returns the names of
/// schemas or properties a rule refers to that the document does not have, and properties
/// with two rules (none, unless the types changed without their rules).
pub fn refine(doc: &mut Value) -> Vec<String> {
    let mut missing = Vec::new();
    let Some(schemas) = doc.pointer_mut("/components/schemas").and_then(Value::as_object_mut) else {
        return vec!["components.schemas".into()];
    };
    name_generic_confs(schemas);
    for (name, schema) in shared().into_iter().chain(target_refs()) {
        schemas.insert(name.into(), schema);
    }
    let mut seen = std::collections::BTreeSet::new();
    for (path, rule) in property_rules() {
        if !seen.insert(path) {
            missing.push(format!("{path} has two rules; the second would replace the first"));
        }
        let (name, property) = path.split_once('.').unwrap_or((path, ""));
        match schemas.get_mut(name).and_then(|s| s.pointer_mut(&format!("/properties/{property}"))) {
            Some(target) => merge_property(target, rule),
            None => missing.push(path.to_string()),
        }
    }
    for (name, rule) in object_rules() {
        match schemas.get_mut(name).and_then(Value::as_object_mut) {
            Some(target) => add_all_of(target, rule),
            None => missing.push(name.to_string()),
        }
    }
    // gRPC retries take other conditions than HTTP ones: give them a schema of their own.
    if let Some(mut grpc) = schemas.get("RequestRetry").cloned() {
        grpc["properties"]["retryOn"]["items"] = json!({ "type": "string", "enum": GRPC_RETRY_ON });
        schemas.insert("GrpcRequestRetry".into(), grpc);
    }
    retarget(schemas, "RetryConf", "grpc", "RequestRetry", "GrpcRequestRetry", &mut missing);
    for (name, schema) in schemas.iter_mut() {
        // Types that also apply per route (`PolicyConf::PER_ROUTE`), as stored and read back.
        if name == "Resource" {
            let specs = schema.pointer_mut("/properties/spec/anyOf").and_then(Value::as_array_mut).into_iter().flatten();
            for spec in specs {
                let conf = ["/properties/from/items/$ref", "/properties/to/items/$ref"]
                    .iter()
                    .find_map(|p| spec.pointer(p).and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_default();
                if conf.ends_with("_TimeoutConf") || conf.ends_with("_RateLimitConf") {
                    replace_ref(spec, "TargetRef", "PerRouteTargetRef");
                }
            }
        }
        if name == "FromItem_TimeoutConf" {
            replace_ref(schema, "TargetRef", "EveryCallerRef");
        } else if name.starts_with("FromItem_") {
            replace_ref(schema, "TargetRef", "CallerRef");
        } else if name.starts_with("ToItem_") {
            replace_ref(schema, "TargetRef", "DestinationRef");
        } else if name.starts_with("RouteTo_") {
            replace_ref(schema, "TargetRef", "RouteDestinationRef");
            if let Some(rules) = schema.pointer_mut("/properties/rules").and_then(Value::as_object_mut) {
                rules.insert("minItems".into(), json!(1));
            }
        }
    }
    // Counts are u32 unless a rule above says otherwise: the generated schema has no maximum.
    for schema in schemas.values_mut() {
        cap_unsigned(schema);
    }
    if let Some(resource) = schemas.get_mut("Resource").and_then(|r| r.pointer_mut("/properties/labels")) {
        *resource = schema_ref("Labels");
    }
    refine_put_bodies(doc, &mut missing);
    missing
}

/// Gives the confs of generic items (`FromItem_TimeoutConf.default`, `RouteTo_TcpRouteRule.rules`
/// items), which the generator writes inline, a schema of their own under the conf's name, so
/// that rules name them once.
fn name_generic_confs(schemas: &mut Map<String, Value>) {
    let mut named = Vec::new();
    for (name, schema) in schemas.iter_mut() {
        let (conf, pointer) = if let Some(conf) = name.strip_prefix("FromItem_").or_else(|| name.strip_prefix("ToItem_")) {
            (conf, "/properties/default")
        } else if let Some(rule) = name.strip_prefix("RouteTo_") {
            (rule, "/properties/rules/items")
        } else {
            continue;
        };
        if let Some(inline) = schema.pointer_mut(pointer) {
            if inline.get("$ref").is_none() {
                let description = inline.get("description").cloned();
                let mut reference = schema_ref(conf);
                if let Some(d) = description {
                    reference["description"] = d;
                }
                named.push((conf.to_string(), std::mem::replace(inline, reference)));
            }
        }
    }
    for (conf, schema) in named {
        schemas.entry(conf).or_insert(schema);
    }
}

/// Merges `rule` into a property's schema. A rule that is a whole schema (a `$ref`, or one with
/// a `type` of its own) replaces it, keeping the description; an optional property stays
/// nullable unless the rule says otherwise.
fn merge_property(property: &mut Value, rule: Value) {
    let Value::Object(rule) = rule else { return };
    let replaces = rule.contains_key("$ref") || rule.contains_key("type") || rule.contains_key("oneOf");
    if replaces {
        let description = property.get("description").cloned();
        let nullable = accepts_null(property);
        let mut replacement = Value::Object(rule);
        if nullable && !accepts_null(&replacement) && replacement.get("$ref").is_some() {
            replacement = json!({ "oneOf": [{ "type": "null" }, replacement] });
        }
        *property = replacement;
        if let (Some(d), Some(t)) = (description, property.as_object_mut()) {
            t.entry("description").or_insert(d);
        }
    } else {
        let Some(target) = property.as_object_mut() else { return };
        // Constraints of an item, a number or a string: add them where they apply.
        let nested = target
            .get_mut("oneOf")
            .and_then(Value::as_array_mut)
            .and_then(|o| o.iter_mut().find(|s| s.get("$ref").is_none() && s != &&json!({ "type": "null" })));
        let target = match nested {
            Some(Value::Object(inner)) => inner,
            _ => target,
        };
        for (k, v) in rule {
            match (target.get_mut(&k), v) {
                (Some(Value::Object(existing)), Value::Object(add)) => existing.extend(add),
                (_, v) => {
                    target.insert(k, v);
                }
            }
        }
    }
}

fn accepts_null(schema: &Value) -> bool {
    schema.get("type").is_some_and(|t| t == "null" || t.as_array().is_some_and(|a| a.contains(&json!("null"))))
        || schema.get("oneOf").and_then(Value::as_array).is_some_and(|o| o.iter().any(accepts_null))
        || schema.get("enum").and_then(Value::as_array).is_some_and(|e| e.contains(&Value::Null))
}

/// Adds a rule on the whole object beside the others (`allOf`), so that several can hold.
fn add_all_of(target: &mut Map<String, Value>, rule: Value) {
    match target.get_mut("allOf").and_then(Value::as_array_mut) {
        Some(all) => all.push(rule),
        None => {
            target.insert("allOf".into(), json!([rule]));
        }
    }
}

fn retarget(schemas: &mut Map<String, Value>, name: &str, property: &str, from: &str, to: &str, missing: &mut Vec<String>) {
    match schemas.get_mut(name).and_then(|s| s.pointer_mut(&format!("/properties/{property}"))) {
        Some(p) => replace_ref(p, from, to),
        None => missing.push(format!("{name}.{property}")),
    }
}

fn replace_ref(schema: &mut Value, from: &str, to: &str) {
    let (from, to) = (format!("#/components/schemas/{from}"), json!(format!("#/components/schemas/{to}")));
    replace_ref_value(schema, &from, &to);
}

fn replace_ref_value(schema: &mut Value, from: &str, to: &Value) {
    match schema {
        Value::Object(map) => {
            if map.get("$ref").and_then(Value::as_str) == Some(from) {
                map.insert("$ref".into(), to.clone());
            }
            map.values_mut().for_each(|v| replace_ref_value(v, from, to));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| replace_ref_value(v, from, to)),
        _ => {}
    }
}

fn cap_unsigned(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            // Unsigned: a minimum of 0, or the higher one a rule set.
            let is_u32 = map.get("format") == Some(&json!("int32")) && map.get("minimum").and_then(Value::as_u64).is_some();
            if is_u32 {
                // Up to u32::MAX, which int32 cannot hold: checkers take `int32` as a bound.
                map.insert("format".into(), json!("int64"));
                if !map.contains_key("maximum") {
                    map.insert("maximum".into(), json!(u32::MAX));
                }
            }
            map.values_mut().for_each(cap_unsigned);
        }
        Value::Array(items) => items.iter_mut().for_each(cap_unsigned),
        _ => {}
    }
}

/// The PUT body of each type: labels as labels, and the spec's section rules
/// (`PolicySpec::validate`, `RouteSpec::validate`).
fn refine_put_bodies(doc: &mut Value, missing: &mut Vec<String>) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else { return };
    for item in paths.values_mut() {
        let Some(body) = item.pointer_mut("/put/requestBody/content/application~1json/schema") else { continue };
        let kind = body.pointer("/properties/type/enum/0").and_then(Value::as_str).and_then(ResourceType::lookup);
        let Some(kind) = kind else { continue };
        if let Some(labels) = body.pointer_mut("/properties/labels") {
            *labels = schema_ref("Labels");
        }
        if let Some(version) = body.pointer_mut("/properties/version").and_then(Value::as_object_mut) {
            version.insert("maximum".into(), json!(i64::MAX));
        }
        // A spec that may be left out (a Mesh's, a Zone's) is not required.
        let mut bare = json!({ "type": kind.name(), "name": "x" });
        if kind.is_mesh_scoped() {
            bare["mesh"] = json!("x");
        }
        if crate::Resource::from_value(bare).is_ok() {
            if let Some(required) = body.get_mut("required").and_then(Value::as_array_mut) {
                required.retain(|r| r != "spec");
            }
        }
        let Some(spec) = body.pointer_mut("/properties/spec").and_then(Value::as_object_mut) else {
            missing.push(format!("{kind} PUT body spec"));
            continue;
        };
        if let Some(target) = spec.get_mut("properties").and_then(|p| p.get_mut("targetRef")) {
            let per_route = matches!(kind, ResourceType::MeshTimeout | ResourceType::MeshRateLimit);
            *target = schema_ref(if per_route { "PerRouteTargetRef" } else { "TargetRef" });
        }
        if kind == ResourceType::MeshTimeout {
            // On a route's requests: `to` only, to kind Mesh, no limit of connections
            // (`PolicySpec::validate`, `TimeoutConf::validate_per_route`).
            let on_route = json!({ "properties": { "targetRef": { "properties": { "kind": { "const": "MeshHTTPRoute" } }, "required": ["kind"] } }, "required": ["targetRef"] });
            let shared = json!({ "type": "null" });
            let item = json!({ "properties": {
                "targetRef": { "properties": { "kind": { "const": "Mesh" } } },
                "default": { "properties": {
                    "connectionTimeout": shared, "idleTimeout": shared,
                    "http": { "properties": { "maxConnectionDuration": shared } },
                } },
            } });
            let then = json!({ "properties": { "from": { "maxItems": 0 }, "to": { "minItems": 1, "items": item } } });
            add_all_of(spec, json!({ "if": on_route, "then": then }));
        }
        if kind == ResourceType::MeshRateLimit {
            // On a route's requests: HTTP limits only (`RateLimitConf::validate_per_route`).
            let on_route = json!({ "properties": { "targetRef": { "properties": { "kind": { "const": "MeshHTTPRoute" } }, "required": ["kind"] } }, "required": ["targetRef"] });
            let item =
                json!({ "properties": { "default": { "properties": { "local": { "properties": { "tcp": { "type": "null" } } } } } } });
            add_all_of(spec, json!({ "if": on_route, "then": { "properties": { "from": { "items": item } } } }));
        }
        if let Some((from, to)) = kind.policy_sections() {
            // Inbound circuit breaking is not enforced yet (`support::not_enforced`).
            let from = from && kind != ResourceType::MeshCircuitBreaker;
            let section = |name: &str| json!({ "required": [name], "properties": { name.to_string(): { "minItems": 1 } } });
            let rule = match (from, to) {
                (true, true) => json!({ "anyOf": [section("from"), section("to")] }),
                (true, false) => json!({ "allOf": [section("from"), { "properties": { "to": { "maxItems": 0 } } }] }),
                _ => json!({ "allOf": [section("to"), { "properties": { "from": { "maxItems": 0 } } }] }),
            };
            add_all_of(spec, rule);
        } else if matches!(kind, ResourceType::MeshHTTPRoute | ResourceType::MeshTCPRoute) {
            add_all_of(spec, json!({ "properties": { "to": { "minItems": 1 } } }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patterns_agree_with_the_validators() {
        let matches = |pattern: &str, s: &str| regex::Regex::new(pattern).unwrap().is_match(s);
        for s in ["app", "strait.io/service", "k8s.io/app_name", "a.b-c_d", "Bad", "x/", "/x", "a/b/c", "-x", "UP/x"] {
            assert_eq!(matches(LABEL_KEY, s), crate::names::check_label_key(s).is_ok(), "{s}");
        }
        for s in ["", "v1", "web_1.x", "-v", "v ", "é"] {
            assert_eq!(matches(LABEL_VALUE, s), crate::names::check_label_value(s).is_ok(), "{s}");
        }
        for s in [
            "0",
            "0s",
            "5s",
            "1m30s",
            "1.5h",
            "250ms",
            "1.s",
            ".5s",
            "5",
            "s",
            "5x",
            "12345678901234567890123h",
            "1.1234567890123456789012s",
            "5µs",
        ] {
            assert_eq!(matches(DURATION, s), s.parse::<crate::Duration>().is_ok(), "{s}");
        }
        for s in ["1ns", "5s", "1m30s", "0s1ms"] {
            let d: crate::Duration = s.parse().unwrap();
            assert!(!matches(POSITIVE_DURATION, s) || !d.is_zero(), "{s}");
        }
        // Every lifetime in whole seconds that the API accepts is in the pattern in its
        // canonical form, and nothing else is.
        for secs in (0..200).chain((3500..3800).step_by(7)).chain([8759 * 3600 + 3599, 8760 * 3600, 8760 * 3600 + 1]) {
            let canonical = crate::Duration::from_secs(secs).to_string();
            let accepted = (10..=8760 * 3600).contains(&secs);
            assert_eq!(matches(CERTIFICATE_LIFETIME, &canonical), accepted, "{canonical}");
        }
        assert!(!matches(CERTIFICATE_LIFETIME, "90s") && !matches(CERTIFICATE_LIFETIME, "1h60m"));
    }
}
