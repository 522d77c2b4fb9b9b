//! MeshFaultInjection: injected aborts, delays and bandwidth limits (`from` and `to`).

use serde::{Deserialize, Serialize};

use super::{check_percentage, check_status, PolicyConf};
use crate::validate::{Validate, Validator};
use crate::Duration;

/// The `default` of a MeshFaultInjection item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultInjectionConf {
    /// Faults applied to HTTP requests, each independently.
    pub http: Vec<Fault>,
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    /// Answer a share of requests with a status instead of forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    /// Delay a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
    /// Limit the response bandwidth of a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_bandwidth: Option<ResponseBandwidth>,
}

/// An abort.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Abort {
    /// The status answered.
    pub http_status: u16,
    /// Share of requests (0-100).
    pub percentage: f64,
}

/// A delay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Delay {
    /// How long.
    pub value: Duration,
    /// Share of requests (0-100).
    pub percentage: f64,
}

/// A bandwidth limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResponseBandwidth {
    /// Limit such as `50kbps`, `1mbps` or `1gbps`.
    pub limit: String,
    /// Share of requests (0-100).
    pub percentage: f64,
}

/// Parses a bandwidth such as `50kbps` into bits per second.
pub fn parse_bandwidth(s: &str) -> Option<u64> {
    let (num, scale) = [("gbps", 1_000_000_000u64), ("mbps", 1_000_000), ("kbps", 1_000), ("bps", 1)]
        .iter()
        .find_map(|(unit, scale)| s.strip_suffix(unit).map(|n| (n, *scale)))?;
    num.parse::<u64>().ok().filter(|n| *n > 0)?.checked_mul(scale)
}

impl Validate for FaultInjectionConf {
    fn validate(&self, v: &mut Validator) {
        if self.http.is_empty() {
            v.error_at("http", "needs at least one fault");
        }
        v.each("http", &self.http, |v, fault| {
            if fault.abort.is_none() && fault.delay.is_none() && fault.response_bandwidth.is_none() {
                v.error("needs abort, delay or responseBandwidth");
            }
            if let Some(a) = &fault.abort {
                v.field("abort", |v| {
                    check_status(v, "httpStatus", Some(a.http_status));
                    check_percentage(v, "percentage", Some(a.percentage));
                });
            }
            if let Some(d) = &fault.delay {
                v.field("delay", |v| check_percentage(v, "percentage", Some(d.percentage)));
            }
            if let Some(b) = &fault.response_bandwidth {
                v.field("responseBandwidth", |v| {
                    if parse_bandwidth(&b.limit).is_none() {
                        v.error_at("limit", format!("invalid bandwidth {:?}: expected a number with bps, kbps, mbps or gbps", b.limit));
                    }
                    check_percentage(v, "percentage", Some(b.percentage));
                });
            }
        });
    }
}

impl PolicyConf for FaultInjectionConf {
    const FROM: bool = true;
    const TO: bool = true;
}

#[cfg(test)]
mod tests {
    #[test]
    fn bandwidths() {
        assert_eq!(super::parse_bandwidth("50kbps"), Some(50_000));
        assert_eq!(super::parse_bandwidth("2mbps"), Some(2_000_000));
        assert_eq!(super::parse_bandwidth("0kbps"), None);
        assert_eq!(super::parse_bandwidth("fast"), None);
    }
}
