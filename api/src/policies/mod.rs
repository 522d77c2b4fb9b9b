//! The policy types and the shapes they share.
//!
//! In: a policy's `spec` as YAML/JSON. Out: typed specs that validate themselves. Most
//! policies are a [`PolicySpec`]: a top-level `targetRef` choosing the proxies it configures,
//! then `from` items (inbound traffic, by caller) and/or `to` items (outbound traffic, by
//! destination), each with a `default` conf. Routes ([`RouteSpec`]) have `to[].rules`; MeshTrace
//! and MeshMetric ([`ProxySpec`]) have a single `default` for the proxy.

pub mod access_log;
pub mod circuit_breaker;
pub mod fault_injection;
pub mod health_check;
pub mod http_route;
pub mod load_balancing;
pub mod metric;
pub mod rate_limit;
pub mod retry;
pub mod tcp_route;
pub mod timeout;
pub mod trace;
pub mod traffic_permission;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::target_ref::{TargetKind, TargetRef};
use crate::validate::{Validate, Validator};

/// Kinds a top-level `targetRef` may name.
pub const TOP_KINDS: &[TargetKind] = &[TargetKind::Mesh, TargetKind::MeshSubset, TargetKind::MeshService, TargetKind::Dataplane];
/// Kinds a `from[].targetRef` may name (callers).
pub const FROM_KINDS: &[TargetKind] = &[TargetKind::Mesh, TargetKind::MeshSubset, TargetKind::MeshService];
/// Kinds a `to[].targetRef` may name (destinations).
pub const TO_KINDS: &[TargetKind] = &[TargetKind::Mesh, TargetKind::MeshService];

/// A conf that can sit in `from[].default` and/or `to[].default`.
pub trait PolicyConf: Validate + Serialize + DeserializeOwned + Clone + PartialEq + std::fmt::Debug {
    /// Whether the policy type accepts `from` items.
    const FROM: bool;
    /// Whether the policy type accepts `to` items.
    const TO: bool;
    /// Whether its top-level `targetRef` may name a MeshHTTPRoute (the route's requests).
    const PER_ROUTE: bool = false;
    /// On a route: whether the items are `from` (enforced by the called sidecar, by caller)
    /// rather than `to` (enforced by the caller's sidecar).
    const PER_ROUTE_FROM: bool = false;

    /// Checks what a policy on a route's requests may set (`PER_ROUTE` types only).
    fn validate_per_route(&self, _v: &mut Validator) {}
}

/// Kinds a top-level `targetRef` may name in a type that applies per route.
pub const TOP_KINDS_PER_ROUTE: &[TargetKind] =
    &[TargetKind::Mesh, TargetKind::MeshSubset, TargetKind::MeshService, TargetKind::Dataplane, TargetKind::MeshHTTPRoute];

/// Inbound traffic from callers selected by `targetRef` gets `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", bound(deserialize = "C: DeserializeOwned", serialize = "C: Serialize"))]
pub struct FromItem<C> {
    /// The callers this item applies to.
    pub target_ref: TargetRef,
    /// The configuration for them.
    pub default: C,
}

/// Outbound traffic to destinations selected by `targetRef` gets `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", bound(deserialize = "C: DeserializeOwned", serialize = "C: Serialize"))]
pub struct ToItem<C> {
    /// The destinations this item applies to.
    pub target_ref: TargetRef,
    /// The configuration for them.
    pub default: C,
}

/// The spec of a from/to policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", bound(deserialize = "C: DeserializeOwned", serialize = "C: Serialize"))]
pub struct PolicySpec<C> {
    /// The proxies this policy configures (default: the whole mesh).
    #[serde(default)]
    pub target_ref: TargetRef,
    /// Inbound items, by caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<FromItem<C>>,
    /// Outbound items, by destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<ToItem<C>>,
}

impl<C: PolicyConf> Validate for PolicySpec<C> {
    fn validate(&self, v: &mut Validator) {
        let top = if C::PER_ROUTE { TOP_KINDS_PER_ROUTE } else { TOP_KINDS };
        v.field("targetRef", |v| self.target_ref.validate_allowing(v, top));
        if self.target_ref.kind == TargetKind::MeshHTTPRoute && C::PER_ROUTE_FROM {
            v.each("from", &self.from, |v, item| v.field("default", |v| item.default.validate_per_route(v)));
        } else if self.target_ref.kind == TargetKind::MeshHTTPRoute {
            if !self.from.is_empty() {
                v.error_at("from", "a policy on a route applies to the requests the route sends: use `to`");
            }
            v.each("to", &self.to, |v, item| {
                if item.target_ref.kind != TargetKind::Mesh {
                    v.field("targetRef", |v| v.error_at("kind", "must be Mesh: the route names its destinations"));
                }
                v.field("default", |v| item.default.validate_per_route(v));
            });
        }
        if !C::FROM && !self.from.is_empty() {
            v.error_at("from", "this policy type has no `from` section; use `to`");
        }
        if !C::TO && !self.to.is_empty() {
            v.error_at("to", "this policy type has no `to` section; use `from`");
        }
        if self.from.is_empty() && self.to.is_empty() {
            let which = match (C::FROM, C::TO) {
                (true, true) => "`from` or `to`",
                (true, false) => "`from`",
                _ => "`to`",
            };
            v.error(format!("needs at least one item in {which}"));
        }
        v.each("from", &self.from, |v, item| {
            v.field("targetRef", |v| item.target_ref.validate_allowing(v, FROM_KINDS));
            v.field("default", |v| item.default.validate(v));
        });
        v.each("to", &self.to, |v, item| {
            v.field("targetRef", |v| item.target_ref.validate_allowing(v, TO_KINDS));
            v.field("default", |v| item.default.validate(v));
        });
    }
}

/// The spec of a route policy: `to[].rules[]`, each with matches and a `default`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", bound(deserialize = "R: DeserializeOwned", serialize = "R: Serialize"))]
pub struct RouteSpec<R> {
    /// The proxies whose outbound traffic is routed (default: the whole mesh).
    #[serde(default)]
    pub target_ref: TargetRef,
    /// Destinations and their rules.
    pub to: Vec<RouteTo<R>>,
}

/// The rules for traffic to one destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", bound(deserialize = "R: DeserializeOwned", serialize = "R: Serialize"))]
pub struct RouteTo<R> {
    /// The destination service.
    pub target_ref: TargetRef,
    /// Rules, tried in order of match specificity.
    pub rules: Vec<R>,
}

impl<R: Validate> Validate for RouteSpec<R> {
    fn validate(&self, v: &mut Validator) {
        v.field("targetRef", |v| self.target_ref.validate_allowing(v, TOP_KINDS));
        if self.to.is_empty() {
            v.error_at("to", "needs at least one destination");
        }
        v.each("to", &self.to, |v, item| {
            v.field("targetRef", |v| item.target_ref.validate_allowing(v, &[TargetKind::MeshService]));
            if item.rules.is_empty() {
                v.error_at("rules", "needs at least one rule");
            }
            v.each("rules", &item.rules, |v, rule| rule.validate(v));
        });
    }
}

/// The spec of a policy that configures the proxy as a whole (MeshTrace, MeshMetric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase", bound(deserialize = "C: DeserializeOwned", serialize = "C: Serialize"))]
pub struct ProxySpec<C> {
    /// The proxies this policy configures (default: the whole mesh).
    #[serde(default)]
    pub target_ref: TargetRef,
    /// The configuration.
    pub default: C,
}

impl<C: Validate> Validate for ProxySpec<C> {
    fn validate(&self, v: &mut Validator) {
        v.field("targetRef", |v| self.target_ref.validate_allowing(v, TOP_KINDS));
        v.field("default", |v| self.default.validate(v));
    }
}

/// A percentage from 0 to 100, as in `percentage: 50` or `percentage: 12.5`.
pub fn check_percentage(v: &mut Validator, field: &'static str, p: Option<f64>) {
    if let Some(p) = p {
        if !(0.0..=100.0).contains(&p) || p.is_nan() {
            v.error_at(field, format!("{p} is out of range: expected a percentage from 0 to 100"));
        }
    }
}

/// A count that must be at least `min` when set.
pub fn check_min(v: &mut Validator, field: &'static str, n: Option<u32>, min: u32) {
    if let Some(n) = n {
        if n < min {
            v.error_at(field, format!("{n} is too small: expected at least {min}"));
        }
    }
}

/// A duration that must be greater than zero when set.
pub fn check_positive(v: &mut Validator, field: &'static str, d: Option<crate::Duration>) {
    if let Some(d) = d {
        if d.is_zero() {
            v.error_at(field, "must be greater than zero");
        }
    }
}

/// An HTTP status code (100-599).
pub fn check_status(v: &mut Validator, field: &'static str, code: Option<u16>) {
    if let Some(code) = code {
        if !(100..=599).contains(&code) {
            v.error_at(field, format!("{code} is not an HTTP status code (100-599)"));
        }
    }
}

/// Checks that the sub-object for a `type` is present exactly when that type is chosen.
pub fn check_variant<T>(v: &mut Validator, field: &'static str, present: &Option<T>, chosen: bool, ty: &str) {
    match (present.is_some(), chosen) {
        (true, false) => v.error_at(field, format!("only allowed when type is {ty}")),
        (false, true) => v.error_at(field, format!("required when type is {ty}")),
        _ => {}
    }
}

/// A header name and value, for header modifiers and rate-limit responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderValue {
    /// Header name.
    pub name: String,
    /// Header value.
    pub value: String,
}

impl Validate for HeaderValue {
    fn validate(&self, v: &mut Validator) {
        check_header_name(v, &self.name);
        if self.value.chars().any(|c| c == '\r' || c == '\n') {
            v.error_at("value", "must not contain line breaks");
        }
    }
}

/// A header name: visible ASCII token characters.
pub fn check_header_name(v: &mut Validator, name: &str) {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        v.error_at("name", format!("{name:?} is not a valid HTTP header name"));
    }
}

/// A service reference with a weight, for route backends and mirrors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// Always MeshService.
    pub kind: TargetKind,
    /// The service.
    pub name: String,
    /// Only endpoints with these tags (for example a version).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Relative weight among the rule's backends (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl Validate for BackendRef {
    fn validate(&self, v: &mut Validator) {
        if self.kind != TargetKind::MeshService {
            v.error_at("kind", format!("{:?} is not allowed here; expected MeshService", self.kind));
        }
        if let Err(e) = crate::names::check_dns_subdomain(&self.name) {
            v.error_at("name", e);
        }
        crate::target_ref::validate_tags(v, "tags", &self.tags);
    }
}

/// Checks a list of weighted backends: not empty, and not all weights zero.
pub fn check_backends(v: &mut Validator, backends: &[BackendRef]) {
    if backends.is_empty() {
        v.error_at("backendRefs", "needs at least one backend");
    } else if backends.iter().all(|b| b.weight == 0) {
        v.error_at("backendRefs", "at least one backend needs a weight above 0");
    }
    v.each("backendRefs", backends, |v, b| b.validate(v));
}
