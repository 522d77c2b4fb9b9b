//! Policy matching and merging: the effective configuration of one proxy.
//!
//! In: a Dataplane and the policies of its mesh. Out: for each inbound, per policy type, an
//! ordered list of rules by caller (`from`); for each outbound service, per policy type, one
//! merged conf (`to`) and the ordered HTTP/TCP routes; and the proxy-wide confs (MeshTrace,
//! MeshMetric).
//!
//! Order, as Kuma users know it: policies are sorted by the specificity of their top-level
//! targetRef (Mesh < MeshSubset < MeshService < Dataplane, then by tag count), then the
//! defaults a new Mesh gets (label [`ORIGIN_LABEL`]: [`ORIGIN_DEFAULT`]) before the others, so a
//! default never overrides a policy of the user, then by name;
//! within a policy, items by the specificity of their own targetRef, then position. Confs are
//! merged in that order, later ones overriding field by field (objects merge, lists and scalars
//! replace), so the most specific policy wins each field it sets.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::dataplane::DataplaneSpec;
use crate::policies::http_route::{match_specificity, HttpMatch};
use crate::resource::{Resource, ResourceType};
use crate::target_ref::{TargetKind, TargetRef};

/// The label that marks the policies a new Mesh starts with.
pub const ORIGIN_LABEL: &str = "strait.io/origin";
/// Its value on those policies.
pub const ORIGIN_DEFAULT: &str = "default";

/// Whether `policy` is one of the defaults a new Mesh starts with (merged before the others).
fn is_default(policy: &Resource) -> bool {
    policy.labels.get(ORIGIN_LABEL).is_some_and(|v| v == ORIGIN_DEFAULT)
}

/// Tags a caller must carry, as a sorted map (`{}` selects every caller).
pub type Selector = BTreeMap<String, String>;

/// One inbound rule: callers carrying `matches` get `conf`. Rules are ordered most specific
/// first; the first whose selector the caller satisfies applies, and it already contains every
/// less specific conf that also applies to that caller.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct FromRule {
    /// Tags the caller must carry.
    pub matches: Selector,
    /// The merged conf.
    pub conf: Value,
    /// The policies that contributed, in merge order.
    pub origin: Vec<String>,
    /// With [`explained`]: for each effective field (a JSON pointer into `conf`), the policy
    /// that set it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// A merged conf for one destination.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ToConf {
    /// The merged conf.
    pub conf: Value,
    /// The policies that contributed, in merge order.
    pub origin: Vec<String>,
    /// With [`explained`]: for each effective field (a JSON pointer into `conf`), the policy
    /// that set it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

/// One HTTP route rule of an outbound, in the order rules are tried.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct RouteRule {
    /// Alternatives; empty matches everything.
    pub matches: Vec<HttpMatch>,
    /// The merged rule `default`.
    pub conf: Value,
    /// The policies that contributed.
    pub origin: Vec<String>,
    /// With [`explained`]: for each effective field, the policy that set it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// The merged MeshTimeout of the requests this rule routes (top-level `targetRef` of kind
    /// MeshHTTPRoute naming one of its routes), over the destination's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<ToConf>,
}

/// The policies of one inbound.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundPolicies {
    /// The inbound port.
    pub port: u16,
    /// Its service.
    pub service: String,
    /// Per policy type, rules by caller.
    pub from: BTreeMap<ResourceType, Vec<FromRule>>,
    /// MeshRateLimits on the requests of a MeshHTTPRoute to this inbound's service: per route
    /// (by name), rules by caller.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub route_rate_limits: BTreeMap<String, Vec<FromRule>>,
}

/// The policies of traffic to one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboundPolicies {
    /// The destination service.
    pub service: String,
    /// Per policy type, the merged conf.
    pub to: BTreeMap<ResourceType, ToConf>,
    /// HTTP routes, most specific first.
    pub http_routes: Vec<RouteRule>,
    /// The TCP route, if any.
    pub tcp_route: Option<ToConf>,
}

/// Everything the policies say about one proxy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EffectiveConfig {
    /// Per inbound.
    pub inbounds: Vec<InboundPolicies>,
    /// Per destination service.
    pub outbounds: Vec<OutboundPolicies>,
    /// Proxy-wide confs (MeshTrace, MeshMetric).
    pub proxy: BTreeMap<ResourceType, ToConf>,
}

impl FromRule {
    /// Whether a caller with `tags` is selected.
    pub fn applies_to(&self, tags: &BTreeMap<String, String>) -> bool {
        self.matches.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

impl InboundPolicies {
    /// The conf of `ty` for a caller with `tags`, typed.
    pub fn conf_for<T: DeserializeOwned>(&self, ty: ResourceType, tags: &BTreeMap<String, String>) -> Option<T> {
        let rule = self.from.get(&ty)?.iter().find(|r| r.applies_to(tags))?;
        serde_json::from_value(rule.conf.clone()).ok()
    }
}

impl OutboundPolicies {
    /// The conf of `ty` for this destination, typed.
    pub fn conf<T: DeserializeOwned>(&self, ty: ResourceType) -> Option<T> {
        serde_json::from_value(self.to.get(&ty)?.conf.clone()).ok()
    }
}

/// The part of a policy that matters for merging, with its sort key.
struct Item<'a> {
    key: (u8, usize, bool, &'a str, u8, usize, usize),
    policy: &'a str,
    target: TargetRef,
    payload: &'a Value,
}

/// Computes the effective configuration of the Dataplane `dp_name` with spec `dp`, from the
/// `policies` of its mesh. `destinations` adds services reachable without an explicit outbound
/// (transparent proxying); explicit outbounds are always included.
pub fn effective_config(dp_name: &str, dp: &DataplaneSpec, policies: &[Resource], destinations: &[&str]) -> EffectiveConfig {
    Policies::new(policies).effective(dp_name, dp, destinations)
}

/// The policies of a mesh, read once for every Dataplane computed from them: each one's spec
/// as JSON, so that computing a Dataplane's configuration does not convert every policy again.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    specs: Vec<(Resource, Value)>,
}

impl Policies {
    /// The policies among `resources` (anything else is left out).
    pub fn new<R: std::borrow::Borrow<Resource>>(resources: &[R]) -> Policies {
        let policies = resources.iter().map(R::borrow).filter(|p| p.kind.is_policy());
        Policies { specs: policies.map(|p| (p.clone(), p.spec_value())).collect() }
    }

    /// Each policy with its spec as JSON.
    pub fn specs(&self) -> impl Iterator<Item = (&Resource, &Value)> {
        self.specs.iter().map(|(p, s)| (p, s))
    }

    /// As [`effective_config`].
    pub fn effective(&self, dp_name: &str, dp: &DataplaneSpec, destinations: &[&str]) -> EffectiveConfig {
        effective(&self.specs, dp_name, dp, destinations)
    }

    /// As [`explained`].
    pub fn explained(&self, dp_name: &str, dp: &DataplaneSpec, destinations: &[&str]) -> EffectiveConfig {
        explaining(|| self.effective(dp_name, dp, destinations))
    }
}

fn effective(specs: &[(Resource, Value)], dp_name: &str, dp: &DataplaneSpec, destinations: &[&str]) -> EffectiveConfig {
    let inbounds = dp
        .networking
        .inbound
        .iter()
        .map(|inbound| {
            let mut from = BTreeMap::new();
            for ty in ResourceType::ALL.iter().copied().filter(|t| shape(*t) == Shape::FromTo) {
                let items = collect(specs, ty, "from", |top| top.selects(Some(dp_name), &inbound.tags));
                if !items.is_empty() {
                    from.insert(ty, from_rules(&items));
                }
            }
            let route_rate_limits = route_rate_limits(specs, inbound.service());
            InboundPolicies { port: inbound.port, service: inbound.service().to_string(), from, route_rate_limits }
        })
        .collect();

    let selects_dp = |top: &TargetRef| dp.networking.inbound.iter().any(|i| top.selects(Some(dp_name), &i.tags));
    let mut services: BTreeSet<&str> = dp.networking.outbound.iter().map(|o| o.service()).collect();
    services.extend(destinations.iter().copied());

    let outbounds = services
        .into_iter()
        .map(|service| {
            let dest_tags: BTreeMap<String, String> = [(crate::names::SERVICE_TAG.to_string(), service.to_string())].into();
            let mut to = BTreeMap::new();
            for ty in ResourceType::ALL.iter().copied().filter(|t| shape(*t) == Shape::FromTo) {
                let mut items = collect(specs, ty, "to", selects_dp);
                items.retain(|i| i.target.selects(None, &dest_tags));
                if let Some(conf) = merge_items(items.iter().map(|i| (i.policy, i.payload.get("default")))) {
                    to.insert(ty, conf);
                }
            }
            let http_routes = http_routes(specs, service, selects_dp);
            let tcp_route = route_items(specs, ResourceType::MeshTCPRoute, service, selects_dp)
                .into_iter()
                .filter_map(|(policy, rule)| {
                    rule.get("default").map(|d| ToConf {
                        fields: explain_fields(d, policy),
                        conf: d.clone(),
                        origin: vec![policy.to_string()],
                    })
                })
                .next_back();
            OutboundPolicies { service: service.to_string(), to, http_routes, tcp_route }
        })
        .collect();

    let mut proxy = BTreeMap::new();
    for ty in [ResourceType::MeshTrace, ResourceType::MeshMetric] {
        let mut matching: Vec<(&Resource, &Value)> =
            specs.iter().filter(|(p, s)| p.kind == ty && selects_dp(&top_ref(s))).map(|(p, s)| (p, s)).collect();
        matching.sort_by_key(|(p, s)| (top_ref(s).specificity(), !is_default(p), p.name.as_str()));
        if let Some(conf) = merge_items(matching.iter().map(|(p, s)| (p.name.as_str(), s.get("default")))) {
            proxy.insert(ty, conf);
        }
    }
    EffectiveConfig { inbounds, outbounds, proxy }
}

/// The MeshRateLimits on routes to `service`: per route that sends to it, its rules by caller.
fn route_rate_limits(specs: &[(Resource, Value)], service: &str) -> BTreeMap<String, Vec<FromRule>> {
    let routes: BTreeSet<&str> = specs
        .iter()
        .filter(|(p, _)| p.kind == ResourceType::MeshHTTPRoute)
        .filter(|(_, spec)| {
            spec.get("to").and_then(Value::as_array).into_iter().flatten().any(|item| {
                let target = item.get("targetRef").and_then(|t| serde_json::from_value::<TargetRef>(t.clone()).ok());
                target.is_some_and(|t| t.kind == TargetKind::MeshService && t.name.as_deref() == Some(service))
            })
        })
        .map(|(p, _)| p.name.as_str())
        .collect();
    let mut out = BTreeMap::new();
    for route in routes {
        let on_route = |top: &TargetRef| top.kind == TargetKind::MeshHTTPRoute && top.name.as_deref() == Some(route);
        let items = collect(specs, ResourceType::MeshRateLimit, "from", on_route);
        if !items.is_empty() {
            out.insert(route.to_string(), from_rules(&items));
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Shape {
    FromTo,
    Route,
    Proxy,
    NotAPolicy,
}

fn shape(ty: ResourceType) -> Shape {
    match ty {
        ResourceType::Mesh | ResourceType::Zone | ResourceType::Dataplane => Shape::NotAPolicy,
        ResourceType::MeshHTTPRoute | ResourceType::MeshTCPRoute => Shape::Route,
        ResourceType::MeshTrace | ResourceType::MeshMetric => Shape::Proxy,
        _ => Shape::FromTo,
    }
}

fn top_ref(spec: &Value) -> TargetRef {
    spec.get("targetRef").and_then(|t| serde_json::from_value(t.clone()).ok()).unwrap_or_default()
}

/// The `section` items of policies of type `ty` whose top-level targetRef passes `selects`, sorted for merging.
fn collect<'a>(specs: &'a [(Resource, Value)], ty: ResourceType, section: &str, selects: impl Fn(&TargetRef) -> bool) -> Vec<Item<'a>> {
    let mut items = Vec::new();
    for (policy, spec) in specs.iter().filter(|(p, _)| p.kind == ty) {
        let top = top_ref(spec);
        if !selects(&top) {
            continue;
        }
        let (top_rank, top_tags) = top.specificity();
        for (idx, item) in spec.get(section).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let Some(target) = item.get("targetRef").and_then(|t| serde_json::from_value::<TargetRef>(t.clone()).ok()) else { continue };
            let (rank, tags) = target.specificity();
            items.push(Item {
                key: (top_rank, top_tags, !is_default(policy), policy.name.as_str(), rank, tags, idx),
                policy: &policy.name,
                target,
                payload: item,
            });
        }
    }
    items.sort_by(|a, b| a.key.cmp(&b.key));
    items
}

/// Builds the inbound rules: one per selector and per consistent union of selectors, so the
/// first rule a caller matches holds everything that applies to it.
fn from_rules(items: &[Item<'_>]) -> Vec<FromRule> {
    const MAX_SELECTORS: usize = 256;
    let selectors: Vec<Selector> = items.iter().map(|i| owned(i.target.required_tags())).collect();
    let mut closure: BTreeSet<Selector> = selectors.iter().cloned().collect();
    loop {
        let current: Vec<Selector> = closure.iter().cloned().collect();
        let mut added = false;
        for (i, a) in current.iter().enumerate() {
            for b in &current[i + 1..] {
                if let Some(u) = union(a, b) {
                    if closure.len() < MAX_SELECTORS && closure.insert(u) {
                        added = true;
                    }
                }
            }
        }
        if !added {
            break;
        }
    }
    let mut rules: Vec<FromRule> = closure
        .into_iter()
        .filter_map(|sel| {
            let applying = items.iter().zip(&selectors).filter(|(_, s)| s.iter().all(|(k, v)| sel.get(k) == Some(v)));
            let merged = merge_items(applying.map(|(i, _)| (i.policy, i.payload.get("default"))))?;
            Some(FromRule { matches: sel, conf: merged.conf, origin: merged.origin, fields: merged.fields })
        })
        .collect();
    rules.sort_by(|a, b| b.matches.len().cmp(&a.matches.len()).then_with(|| a.matches.cmp(&b.matches)));
    rules
}

fn owned(tags: BTreeMap<&str, &str>) -> Selector {
    tags.into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn union(a: &Selector, b: &Selector) -> Option<Selector> {
    let mut out = a.clone();
    for (k, v) in b {
        match out.get(k) {
            Some(existing) if existing != v => return None,
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    Some(out)
}

/// Merges confs in order; `None` when there is none.
fn merge_items<'a>(confs: impl Iterator<Item = (&'a str, Option<&'a Value>)>) -> Option<ToConf> {
    let mut result: Option<ToConf> = None;
    for (policy, conf) in confs {
        let Some(conf) = conf else { continue };
        let entry =
            result.get_or_insert_with(|| ToConf { conf: Value::Object(Default::default()), origin: Vec::new(), fields: BTreeMap::new() });
        deep_merge(&mut entry.conf, conf);
        if EXPLAIN.get() {
            record_fields(&mut entry.fields, String::new(), conf, policy);
        }
        if !entry.origin.iter().any(|o| o == policy) {
            entry.origin.push(policy.to_string());
        }
    }
    result
}

thread_local! {
    /// Set while [`explained`] runs: merges then record which policy set each field.
    static EXPLAIN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// As [`effective_config`], with each merged conf's `fields`: for every effective field (a
/// JSON pointer), the policy that set it (`straitctl inspect dataplane --policies`).
pub fn explained(dp_name: &str, dp: &DataplaneSpec, policies: &[Resource], destinations: &[&str]) -> EffectiveConfig {
    Policies::new(policies).explained(dp_name, dp, destinations)
}

/// Runs `compute` with [`EXPLAIN`] set.
fn explaining<T>(compute: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            EXPLAIN.set(false);
        }
    }
    EXPLAIN.set(true);
    let _reset = Reset;
    compute()
}

/// The fields `conf` sets, all by `policy` (empty unless explaining).
fn explain_fields(conf: &Value, policy: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    if EXPLAIN.get() {
        record_fields(&mut fields, String::new(), conf, policy);
    }
    fields
}

/// Records `policy` as the setter of every leaf of `overlay` under `prefix`: objects are
/// merged key by key, so their leaves count; lists and scalars replace whole. A replaced
/// object's leaves that `overlay` no longer has are forgotten.
fn record_fields(fields: &mut BTreeMap<String, String>, prefix: String, overlay: &Value, policy: &str) {
    match overlay {
        Value::Object(o) if !o.is_empty() => {
            for (k, v) in o {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                record_fields(fields, format!("{prefix}/{escaped}"), v, policy);
            }
        }
        _ => {
            // What this replaces: the fields below it, and a field above it that was not an object.
            let below = format!("{prefix}/");
            fields.retain(|path, _| !path.starts_with(&below));
            for (i, _) in prefix.match_indices('/').skip(1) {
                fields.remove(&prefix[..i]);
            }
            fields.insert(if prefix.is_empty() { "/".to_string() } else { prefix }, policy.to_string());
        }
    }
}

/// Merges `overlay` into `base`: objects key by key, everything else replaced.
pub fn deep_merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The rules of route policies of type `ty` for traffic to `service`, in merge order.
fn route_items<'a>(
    specs: &'a [(Resource, Value)],
    ty: ResourceType,
    service: &str,
    selects: impl Fn(&TargetRef) -> bool,
) -> Vec<(&'a str, &'a Value)> {
    collect(specs, ty, "to", selects)
        .into_iter()
        .filter(|i| i.target.kind == TargetKind::MeshService && i.target.name.as_deref() == Some(service))
        .flat_map(|i| i.payload.get("rules").and_then(Value::as_array).into_iter().flatten().map(move |r| (i.policy, r)))
        .collect()
}

fn http_routes(specs: &[(Resource, Value)], service: &str, selects: impl Fn(&TargetRef) -> bool) -> Vec<RouteRule> {
    let mut rules: Vec<RouteRule> = Vec::new();
    for (policy, rule) in route_items(specs, ResourceType::MeshHTTPRoute, service, selects) {
        let matches: Vec<HttpMatch> = rule.get("matches").and_then(|m| serde_json::from_value(m.clone()).ok()).unwrap_or_default();
        let conf = rule.get("default").cloned().unwrap_or(Value::Null);
        match rules.iter_mut().find(|r| r.matches == matches) {
            Some(existing) => {
                deep_merge(&mut existing.conf, &conf);
                if EXPLAIN.get() {
                    record_fields(&mut existing.fields, String::new(), &conf, policy);
                }
                existing.origin.push(policy.to_string());
            }
            None => rules.push(RouteRule {
                fields: explain_fields(&conf, policy),
                matches,
                conf,
                origin: vec![policy.to_string()],
                timeout: None,
            }),
        }
    }
    for rule in &mut rules {
        let on_route =
            |top: &TargetRef| top.kind == TargetKind::MeshHTTPRoute && top.name.as_ref().is_some_and(|n| rule.origin.contains(n));
        let items = collect(specs, ResourceType::MeshTimeout, "to", on_route);
        rule.timeout = merge_items(items.iter().map(|i| (i.policy, i.payload.get("default"))));
    }
    let best = |r: &RouteRule| r.matches.iter().map(match_specificity).max();
    // Stable: among equally specific rules the earlier-merged stays first.
    rules.sort_by_key(|r| std::cmp::Reverse(best(r)));
    rules
}
