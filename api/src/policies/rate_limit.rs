//! MeshRateLimit: local rate limits on inbound traffic (`from` only), for a service's callers
//! or for the requests of one MeshHTTPRoute.

use serde::{Deserialize, Serialize};

use super::{check_min, check_positive, check_status, HeaderValue, PolicyConf};
use crate::validate::{Validate, Validator};
use crate::Duration;

/// The `default` of a MeshRateLimit item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitConf {
    /// Limits enforced by each proxy on its own.
    pub local: LocalRateLimit,
}

/// Per-proxy limits.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalRateLimit {
    /// HTTP request rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpRateLimit>,
    /// TCP connection rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRateLimit>,
}

/// `num` events per `interval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rate {
    /// Events allowed per interval.
    pub num: u32,
    /// The interval.
    pub interval: Duration,
}

/// HTTP rate limit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRateLimit {
    /// Turns the limit off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Requests per interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_rate: Option<Rate>,
    /// The answer to limited requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_rate_limit: Option<OnRateLimit>,
}

/// What a limited request gets.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OnRateLimit {
    /// Status code (default 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Headers added to the answer (they may replace its `content-type` and `retry-after`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderValue>,
    /// Body of the answer (default: a line that names the caller and the limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// TCP rate limit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRateLimit {
    /// Turns the limit off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Connections per interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_rate: Option<Rate>,
}

fn check_rate(v: &mut Validator, field: &'static str, rate: &Option<Rate>) {
    if let Some(r) = rate {
        v.field(field, |v| {
            check_min(v, "num", Some(r.num), 1);
            check_positive(v, "interval", Some(r.interval));
        });
    }
}

impl Validate for RateLimitConf {
    fn validate(&self, v: &mut Validator) {
        v.field("local", |v| {
            if self.local.http.is_none() && self.local.tcp.is_none() {
                v.error("needs http or tcp");
            }
            if let Some(http) = &self.local.http {
                v.field("http", |v| {
                    check_rate(v, "requestRate", &http.request_rate);
                    if let Some(on) = &http.on_rate_limit {
                        v.field("onRateLimit", |v| {
                            check_status(v, "status", on.status);
                            v.each("headers", &on.headers, |v, h| h.validate(v));
                        });
                    }
                });
            }
            if let Some(tcp) = &self.local.tcp {
                v.field("tcp", |v| check_rate(v, "connectionRate", &tcp.connection_rate));
            }
        });
    }
}

impl PolicyConf for RateLimitConf {
    const FROM: bool = true;
    const TO: bool = false;
    // On a route (`targetRef: {kind: MeshHTTPRoute, name}`): the requests that route sends,
    // limited by the called sidecar, by caller.
    const PER_ROUTE: bool = true;
    const PER_ROUTE_FROM: bool = true;

    fn validate_per_route(&self, v: &mut Validator) {
        if self.local.tcp.is_some() {
            v.field("local", |v| {
                v.error_at("tcp", "a route's requests are HTTP: limit connections with a MeshRateLimit on the service, not on a route")
            });
        }
    }
}
