//! The policies of one sidecar, typed: what the zone merged for each inbound (by caller), each
//! destination and the whole proxy, as the same conf types the API validates. A sidecar reads
//! fields, never JSON; a conf that does not fit its type is refused where it is built (the
//! zone) or where it arrives (the sidecar's NACK), never replaced by a default in silence.
//!
//! In: merged confs (`serde_json::Value`, from [`crate::merge`]). Out: [`InboundPolicies`],
//! [`DestinationPolicies`], [`ProxyPolicies`], [`HttpRoute`]; on the wire they keep the shape
//! of a map keyed by policy type (`{"MeshTimeout": {...}}`).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::merge::{FromRule, RouteRule, Selector};
use crate::policies::access_log::AccessLogConf;
use crate::policies::circuit_breaker::CircuitBreakerConf;
use crate::policies::fault_injection::FaultInjectionConf;
use crate::policies::health_check::HealthCheckConf;
use crate::policies::http_route::{HttpMatch, HttpRouteConf};
use crate::policies::load_balancing::LoadBalancingConf;
use crate::policies::metric::MetricConf;
use crate::policies::rate_limit::RateLimitConf;
use crate::policies::retry::RetryConf;
use crate::policies::tcp_route::TcpRouteConf;
use crate::policies::timeout::TimeoutConf;
use crate::policies::trace::TraceConf;
use crate::policies::traffic_permission::TrafficPermissionConf;
use crate::ResourceType;

/// A merged conf that does not fit its type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{policy_type} from {origin:?}: {message}")]
pub struct PolicyError {
    /// The policy type.
    pub policy_type: ResourceType,
    /// The policies merged into the conf.
    pub origin: Vec<String>,
    /// What did not fit.
    pub message: String,
}

fn typed<C: DeserializeOwned>(policy_type: ResourceType, conf: &Value, origin: &[String]) -> Result<C, PolicyError> {
    serde_json::from_value(conf.clone()).map_err(|e| PolicyError { policy_type, origin: origin.to_vec(), message: e.to_string() })
}

fn unexpected(policy_type: ResourceType, origin: &[String], place: &str) -> PolicyError {
    PolicyError { policy_type, origin: origin.to_vec(), message: format!("does not apply to {place}") }
}

/// A merged conf with the policies that contributed, in merge order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Merged<C> {
    /// The merged conf.
    pub conf: C,
    /// The policies that contributed.
    pub origin: Vec<String>,
}

/// One inbound rule: callers carrying `matches` get `conf` (most specific rules first; the
/// first that selects a caller applies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerRule<C> {
    /// Tags the caller must carry.
    pub matches: Selector,
    /// The merged conf.
    pub conf: C,
    /// The policies that contributed, in merge order.
    pub origin: Vec<String>,
}

impl<C> CallerRule<C> {
    /// Whether a caller with `tags` is selected.
    pub fn applies_to(&self, tags: &BTreeMap<String, String>) -> bool {
        self.matches.iter().all(|(k, v)| tags.get(k) == Some(v))
    }
}

/// The first rule of `rules` that selects a caller with `tags`.
pub fn rule_for<'a, C>(rules: &'a [CallerRule<C>], tags: &BTreeMap<String, String>) -> Option<&'a CallerRule<C>> {
    rules.iter().find(|r| r.applies_to(tags))
}

impl InboundPolicies {
    /// The first caller selector, of any policy type, on a tag other than the caller's service:
    /// nothing but the service is known of a caller, so such a rule could never apply.
    pub fn caller_tags_beyond_service(&self) -> Option<(&'static str, &Selector)> {
        fn first<'a, C>(name: &'static str, rules: &'a [CallerRule<C>]) -> Option<(&'static str, &'a Selector)> {
            rules.iter().find(|r| r.matches.keys().any(|k| k != crate::names::SERVICE_TAG)).map(|r| (name, &r.matches))
        }
        first("MeshTrafficPermission", &self.traffic_permission)
            .or_else(|| first("MeshTimeout", &self.timeout))
            .or_else(|| first("MeshRateLimit", &self.rate_limit))
            .or_else(|| first("MeshFaultInjection", &self.fault_injection))
            .or_else(|| first("MeshCircuitBreaker", &self.circuit_breaker))
            .or_else(|| first("MeshAccessLog", &self.access_log))
    }
}

/// Inbound policies of one inbound, by caller. No MeshTrafficPermission rule for a caller
/// means it is denied.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundPolicies {
    /// MeshTrafficPermission.
    #[serde(rename = "MeshTrafficPermission", default, skip_serializing_if = "Vec::is_empty")]
    pub traffic_permission: Vec<CallerRule<TrafficPermissionConf>>,
    /// MeshTimeout.
    #[serde(rename = "MeshTimeout", default, skip_serializing_if = "Vec::is_empty")]
    pub timeout: Vec<CallerRule<TimeoutConf>>,
    /// MeshRateLimit.
    #[serde(rename = "MeshRateLimit", default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limit: Vec<CallerRule<RateLimitConf>>,
    /// MeshFaultInjection.
    #[serde(rename = "MeshFaultInjection", default, skip_serializing_if = "Vec::is_empty")]
    pub fault_injection: Vec<CallerRule<FaultInjectionConf>>,
    /// MeshCircuitBreaker.
    #[serde(rename = "MeshCircuitBreaker", default, skip_serializing_if = "Vec::is_empty")]
    pub circuit_breaker: Vec<CallerRule<CircuitBreakerConf>>,
    /// MeshAccessLog.
    #[serde(rename = "MeshAccessLog", default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<CallerRule<AccessLogConf>>,
    /// MeshRateLimits on the requests of a MeshHTTPRoute, by route name.
    #[serde(rename = "MeshRateLimitByRoute", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub route_rate_limit: BTreeMap<String, Vec<CallerRule<RateLimitConf>>>,
}

fn caller_rules<C: DeserializeOwned>(ty: ResourceType, rules: &[FromRule]) -> Result<Vec<CallerRule<C>>, PolicyError> {
    rules
        .iter()
        .map(|r| Ok(CallerRule { matches: r.matches.clone(), conf: typed(ty, &r.conf, &r.origin)?, origin: r.origin.clone() }))
        .collect()
}

impl InboundPolicies {
    /// Types the merged rate limits of routes (`merge::InboundPolicies::route_rate_limits`).
    pub fn with_route_rate_limits(mut self, merged: &BTreeMap<String, Vec<FromRule>>) -> Result<Self, PolicyError> {
        for (route, rules) in merged {
            self.route_rate_limit.insert(route.clone(), caller_rules(ResourceType::MeshRateLimit, rules)?);
        }
        Ok(self)
    }

    /// Types the merged inbound rules.
    pub fn from_merged(merged: &BTreeMap<ResourceType, Vec<FromRule>>) -> Result<Self, PolicyError> {
        let mut out = InboundPolicies::default();
        for (&ty, rules) in merged {
            match ty {
                ResourceType::MeshTrafficPermission => out.traffic_permission = caller_rules(ty, rules)?,
                ResourceType::MeshTimeout => out.timeout = caller_rules(ty, rules)?,
                ResourceType::MeshRateLimit => out.rate_limit = caller_rules(ty, rules)?,
                ResourceType::MeshFaultInjection => out.fault_injection = caller_rules(ty, rules)?,
                ResourceType::MeshCircuitBreaker => out.circuit_breaker = caller_rules(ty, rules)?,
                ResourceType::MeshAccessLog => out.access_log = caller_rules(ty, rules)?,
                _ => return Err(unexpected(ty, &rules.first().map(|r| r.origin.clone()).unwrap_or_default(), "inbound traffic")),
            }
        }
        Ok(out)
    }
}

/// The merged policies of traffic to one destination service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationPolicies {
    /// MeshTimeout.
    #[serde(rename = "MeshTimeout", default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<TimeoutConf>,
    /// MeshRetry.
    #[serde(rename = "MeshRetry", default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConf>,
    /// MeshCircuitBreaker.
    #[serde(rename = "MeshCircuitBreaker", default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerConf>,
    /// MeshHealthCheck.
    #[serde(rename = "MeshHealthCheck", default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConf>,
    /// MeshLoadBalancingStrategy.
    #[serde(rename = "MeshLoadBalancingStrategy", default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancingConf>,
    /// MeshFaultInjection.
    #[serde(rename = "MeshFaultInjection", default, skip_serializing_if = "Option::is_none")]
    pub fault_injection: Option<FaultInjectionConf>,
    /// MeshAccessLog.
    #[serde(rename = "MeshAccessLog", default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConf>,
}

impl DestinationPolicies {
    /// Types the merged confs of a destination (`(conf, origin)` per policy type).
    pub fn from_merged<'a>(merged: impl IntoIterator<Item = (ResourceType, &'a Value, &'a [String])>) -> Result<Self, PolicyError> {
        let mut out = DestinationPolicies::default();
        for (ty, conf, origin) in merged {
            match ty {
                ResourceType::MeshTimeout => out.timeout = Some(typed(ty, conf, origin)?),
                ResourceType::MeshRetry => out.retry = Some(typed(ty, conf, origin)?),
                ResourceType::MeshCircuitBreaker => out.circuit_breaker = Some(typed(ty, conf, origin)?),
                ResourceType::MeshHealthCheck => out.health_check = Some(typed(ty, conf, origin)?),
                ResourceType::MeshLoadBalancingStrategy => out.load_balancing = Some(typed(ty, conf, origin)?),
                ResourceType::MeshFaultInjection => out.fault_injection = Some(typed(ty, conf, origin)?),
                ResourceType::MeshAccessLog => out.access_log = Some(typed(ty, conf, origin)?),
                _ => return Err(unexpected(ty, origin, "outbound traffic")),
            }
        }
        Ok(out)
    }
}

/// Proxy-wide policies.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyPolicies {
    /// MeshTrace.
    #[serde(rename = "MeshTrace", default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceConf>,
    /// MeshMetric.
    #[serde(rename = "MeshMetric", default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricConf>,
}

impl ProxyPolicies {
    /// Types the merged proxy-wide confs.
    pub fn from_merged<'a>(merged: impl IntoIterator<Item = (ResourceType, &'a Value, &'a [String])>) -> Result<Self, PolicyError> {
        let mut out = ProxyPolicies::default();
        for (ty, conf, origin) in merged {
            match ty {
                ResourceType::MeshTrace => out.trace = Some(typed(ty, conf, origin)?),
                ResourceType::MeshMetric => out.metric = Some(typed(ty, conf, origin)?),
                _ => return Err(unexpected(ty, origin, "the whole proxy")),
            }
        }
        Ok(out)
    }
}

/// An HTTP route rule of a destination: requests matching one of `matches` (or every request,
/// when empty) get `conf`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// Alternatives; empty matches everything.
    pub matches: Vec<HttpMatch>,
    /// The merged rule.
    pub conf: HttpRouteConf,
    /// The policies that contributed.
    pub origin: Vec<String>,
    /// MeshTimeout of the requests this rule routes, over the destination's own; with the
    /// MeshTimeouts that contributed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Merged<TimeoutConf>>,
}

impl HttpRoute {
    /// Types a merged route rule.
    pub fn from_merged(rule: &RouteRule) -> Result<Self, PolicyError> {
        let timeout = match &rule.timeout {
            Some(t) => Some(Merged { conf: typed(ResourceType::MeshTimeout, &t.conf, &t.origin)?, origin: t.origin.clone() }),
            None => None,
        };
        Ok(HttpRoute {
            matches: rule.matches.clone(),
            conf: typed(ResourceType::MeshHTTPRoute, &rule.conf, &rule.origin)?,
            origin: rule.origin.clone(),
            timeout,
        })
    }
}

/// Types a merged TCP route.
pub fn tcp_route(conf: &Value, origin: &[String]) -> Result<TcpRouteConf, PolicyError> {
    typed(ResourceType::MeshTCPRoute, conf, origin)
}
