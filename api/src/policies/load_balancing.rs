//! MeshLoadBalancingStrategy: endpoint picking and zone locality (`to` only).

use serde::{Deserialize, Serialize};

use super::{check_min, check_percentage, PolicyConf};
use crate::names;
use crate::validate::{Validate, Validator};

/// The `default` of a MeshLoadBalancingStrategy item.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancingConf {
    /// How an endpoint is picked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Which zones are preferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_awareness: Option<LocalityAwareness>,
}

/// Endpoint picking algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum LoadBalancerType {
    /// Each endpoint in turn.
    RoundRobin,
    /// The less loaded of `choiceCount` random endpoints.
    LeastRequest,
    /// Consistent hashing on a request attribute.
    RingHash,
    /// A random endpoint.
    Random,
    /// Consistent hashing on a request attribute through a Maglev lookup table.
    Maglev,
}

/// The load balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    /// The algorithm.
    #[serde(rename = "type")]
    pub kind: LoadBalancerType,
    /// Settings of LeastRequest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub least_request: Option<LeastRequest>,
    /// Settings of RingHash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_hash: Option<RingHash>,
    /// Settings of Maglev.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<Maglev>,
}

impl LoadBalancer {
    /// The hash policies of RingHash or Maglev (empty for the others).
    pub fn hash_policies(&self) -> &[HashPolicy] {
        match self.kind {
            LoadBalancerType::RingHash => self.ring_hash.as_ref().map_or(&[], |r| &r.hash_policies),
            LoadBalancerType::Maglev => self.maglev.as_ref().map_or(&[], |m| &m.hash_policies),
            _ => &[],
        }
    }
}

/// LeastRequest settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LeastRequest {
    /// Random endpoints compared per pick (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub choice_count: Option<u32>,
}

/// RingHash settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RingHash {
    /// What the hash is computed from, tried in order.
    pub hash_policies: Vec<HashPolicy>,
}

/// Maglev settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Maglev {
    /// What the hash is computed from, tried in order.
    pub hash_policies: Vec<HashPolicy>,
}

/// A request attribute to hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum HashPolicyType {
    /// A request header.
    Header,
    /// A cookie.
    Cookie,
    /// A query parameter.
    QueryParameter,
    /// The caller's address.
    SourceIP,
}

/// One hash input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HashPolicy {
    /// What to hash.
    #[serde(rename = "type")]
    pub kind: HashPolicyType,
    /// Header, cookie or parameter name (not for SourceIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Zone locality.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalityAwareness {
    /// Ignore zones: spread over every endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Where traffic goes when the own zone has no healthy endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_zone: Option<CrossZone>,
}

/// Cross-zone failover.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CrossZone {
    /// Ordered failover steps; the first with a healthy endpoint wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Failover>,
    /// Fail over once the own zone's healthy share falls below this percentage (default: only when none is healthy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_threshold: Option<f64>,
}

/// One failover step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Failover {
    /// Which zones this step is for (callers in these zones); absent means every zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ZoneList>,
    /// Where to send traffic.
    pub to: FailoverTarget,
}

/// A list of zones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ZoneList {
    /// Zone names.
    pub zones: Vec<String>,
}

/// How a failover step picks zones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum FailoverType {
    /// Any other zone.
    Any,
    /// Only the listed zones.
    Only,
    /// Any zone but the listed ones.
    AnyExcept,
    /// No other zone: fail instead.
    None,
}

/// The zones of a failover step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverTarget {
    /// How zones are picked.
    #[serde(rename = "type")]
    pub kind: FailoverType,
    /// Zones for Only and AnyExcept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
}

fn check_zones(v: &mut Validator, zones: &[String]) {
    v.each("zones", zones, |v, z| {
        if let Err(e) = names::check_dns_label(z) {
            v.error(e);
        }
    });
}

fn check_hash_policies(v: &mut Validator, policies: &[HashPolicy]) {
    if policies.is_empty() {
        v.error_at("hashPolicies", "needs at least one hash policy");
    }
    v.each("hashPolicies", policies, |v, hp| {
        let needs_name = hp.kind != HashPolicyType::SourceIP;
        match (&hp.name, needs_name) {
            (None, true) => v.error_at("name", format!("required when type is {:?}", hp.kind)),
            (Some(_), false) => v.error_at("name", "not allowed when type is SourceIP"),
            _ => {}
        }
    });
}

impl Validate for LoadBalancingConf {
    fn validate(&self, v: &mut Validator) {
        if let Some(lb) = &self.load_balancer {
            v.field("loadBalancer", |v| {
                // `leastRequest` is optional for LeastRequest (two choices by default, as in Kuma).
                if lb.least_request.is_some() && lb.kind != LoadBalancerType::LeastRequest {
                    v.error_at("leastRequest", "only allowed when type is LeastRequest");
                }
                if let Some(lr) = &lb.least_request {
                    v.field("leastRequest", |v| check_min(v, "choiceCount", lr.choice_count, 2));
                }
                let settings = [
                    ("ringHash", LoadBalancerType::RingHash, lb.ring_hash.as_ref().map(|r| &r.hash_policies)),
                    ("maglev", LoadBalancerType::Maglev, lb.maglev.as_ref().map(|m| &m.hash_policies)),
                ];
                for (name, kind, policies) in settings {
                    match policies {
                        Some(_) if lb.kind != kind => v.error_at(name, format!("only allowed when type is {kind:?}")),
                        None if lb.kind == kind => {
                            v.error_at(name, format!("required when type is {kind:?}: its hashPolicies say what a request is hashed on"))
                        }
                        Some(policies) => v.field(name, |v| check_hash_policies(v, policies)),
                        None => {}
                    }
                }
            });
        }
        if let Some(la) = &self.locality_awareness {
            v.field("localityAwareness", |v| {
                if let Some(cz) = &la.cross_zone {
                    v.field("crossZone", |v| {
                        check_percentage(v, "failoverThreshold", cz.failover_threshold);
                        v.each("failover", &cz.failover, |v, f| {
                            if let Some(from) = &f.from {
                                v.field("from", |v| check_zones(v, &from.zones));
                            }
                            v.field("to", |v| {
                                let needs = matches!(f.to.kind, FailoverType::Only | FailoverType::AnyExcept);
                                if needs && f.to.zones.is_empty() {
                                    v.error_at("zones", format!("required when type is {:?}", f.to.kind));
                                }
                                if !needs && !f.to.zones.is_empty() {
                                    v.error_at("zones", format!("not allowed when type is {:?}", f.to.kind));
                                }
                                check_zones(v, &f.to.zones);
                            });
                        });
                    });
                }
            });
        }
    }
}

impl PolicyConf for LoadBalancingConf {
    const FROM: bool = false;
    const TO: bool = true;
}
