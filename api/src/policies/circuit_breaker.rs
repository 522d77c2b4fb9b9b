//! MeshCircuitBreaker: connection limits and outlier detection (`from` and `to`).

use serde::{Deserialize, Serialize};

use super::{check_min, check_positive, PolicyConf};
use crate::validate::{Validate, Validator};
use crate::Duration;

/// The `default` of a MeshCircuitBreaker item.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CircuitBreakerConf {
    /// Limits on concurrent connections and requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_limits: Option<ConnectionLimits>,
    /// Ejection of misbehaving endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Limits on concurrency towards a destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionLimits {
    /// Open connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Retries in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// HTTP requests one pooled connection carries before it is replaced (those on it finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
}

/// Outlier detection: endpoints that fail are ejected for a while.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Turns detection off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// How often endpoints are evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Ejection time, multiplied by the number of times an endpoint was ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<Duration>,
    /// At most this share of endpoints is ejected at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// What counts as failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detectors: Option<Detectors>,
}

/// Failure detectors.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Detectors {
    /// Consecutive failures of any kind (5xx, resets, timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_failures: Option<Consecutive>,
    /// Consecutive gateway failures (502, 503, 504, connection errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_failures: Option<Consecutive>,
    /// Consecutive locally originated failures (connect errors, timeouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_origin_failures: Option<Consecutive>,
    /// Share of failed requests over an interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage: Option<FailurePercentage>,
    /// Success rate over an interval, against the other endpoints'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate: Option<SuccessRate>,
}

/// A success-rate detector: every interval, an endpoint whose success rate falls below the
/// mean of the endpoints' by more than `standardDeviationFactor` standard deviations is
/// ejected.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SuccessRate {
    /// Requests an endpoint needs in the interval to be judged (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    /// Endpoints with that volume a destination needs for this detector to run (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
    /// How many standard deviations below the mean ejects (default 1.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_deviation_factor: Option<f64>,
}

/// A consecutive-failures threshold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Consecutive {
    /// Failures in a row before ejection (at least 1).
    pub consecutive: u32,
}

/// A failure-share threshold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailurePercentage {
    /// Failure share (0-100) above which an endpoint is ejected.
    pub threshold: u32,
    /// Requests an endpoint needs in the interval to be judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_volume: Option<u32>,
    /// Endpoints a destination needs for this detector to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_hosts: Option<u32>,
}

impl Validate for CircuitBreakerConf {
    fn validate(&self, v: &mut Validator) {
        if let Some(l) = &self.connection_limits {
            v.field("connectionLimits", |v| {
                check_min(v, "maxConnections", l.max_connections, 1);
                check_min(v, "maxPendingRequests", l.max_pending_requests, 1);
                check_min(v, "maxRequests", l.max_requests, 1);
                check_min(v, "maxRetries", l.max_retries, 0);
                check_min(v, "maxRequestsPerConnection", l.max_requests_per_connection, 1);
            });
        }
        if let Some(o) = &self.outlier_detection {
            v.field("outlierDetection", |v| o.validate(v));
        }
    }
}

impl Validate for OutlierDetection {
    fn validate(&self, v: &mut Validator) {
        check_positive(v, "interval", self.interval);
        check_positive(v, "baseEjectionTime", self.base_ejection_time);
        if let Some(p) = self.max_ejection_percent {
            if p > 100 {
                v.error_at("maxEjectionPercent", format!("{p} is out of range: expected 0 to 100"));
            }
        }
        if let Some(d) = &self.detectors {
            v.field("detectors", |v| {
                for (name, c) in [
                    ("totalFailures", &d.total_failures),
                    ("gatewayFailures", &d.gateway_failures),
                    ("localOriginFailures", &d.local_origin_failures),
                ] {
                    if let Some(c) = c {
                        v.field(name, |v| check_min(v, "consecutive", Some(c.consecutive), 1));
                    }
                }
                if let Some(sr) = &d.success_rate {
                    if let Some(f) = sr.standard_deviation_factor {
                        if !(0.0..=100.0).contains(&f) {
                            v.field("successRate", |v| {
                                v.error_at("standardDeviationFactor", format!("{f} is out of range: expected 0 to 100"))
                            });
                        }
                    }
                }
                if let Some(fp) = &d.failure_percentage {
                    v.field("failurePercentage", |v| {
                        if fp.threshold > 100 {
                            v.error_at("threshold", format!("{} is out of range: expected 0 to 100", fp.threshold));
                        }
                    });
                }
            });
        }
    }
}

impl PolicyConf for CircuitBreakerConf {
    const FROM: bool = true;
    const TO: bool = true;
}
