//! MeshRetry: how outbound requests and connections are retried (`to` only).

use serde::{Deserialize, Serialize};

use super::{check_min, check_positive, PolicyConf};
use crate::validate::{Validate, Validator};
use crate::Duration;

/// The `default` of a MeshRetry item.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryConf {
    /// Retries of TCP connection attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpRetry>,
    /// Retries of HTTP requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<RequestRetry>,
    /// Retries of gRPC calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<RequestRetry>,
}

/// TCP retries.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpRetry {
    /// Connection attempts before giving up (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connect_attempt: Option<u32>,
}

/// Exponential back-off between attempts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackOff {
    /// First interval (default 25ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_interval: Option<Duration>,
    /// Longest interval (default 10 × base); below baseInterval, every wait is maxInterval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

/// Retries of HTTP requests or gRPC calls.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRetry {
    /// Retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// Timeout of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Back-off between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    /// Conditions. HTTP: 5xx, GatewayError, Reset, ConnectFailure, Retriable4xx, RefusedStream,
    /// or a status code. gRPC: Canceled, DeadlineExceeded, Internal, ResourceExhausted, Unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
    /// How many retries may run at once, so that retries cannot multiply an outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,
}

/// A retry budget: retries in progress to a destination stay under `percent` of the requests
/// in progress to it, or `minRetryConcurrency`, whichever is more.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RetryBudget {
    /// Share of the requests in progress that may be retries (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Retries that may always run at once (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retry_concurrency: Option<u32>,
}

const HTTP_CONDITIONS: &[&str] =
    &["5xx", "GatewayError", "Reset", "ConnectFailure", "Retriable4xx", "RefusedStream", "Http3PostConnectFailure"];
const GRPC_CONDITIONS: &[&str] = &["Canceled", "DeadlineExceeded", "Internal", "ResourceExhausted", "Unavailable"];

fn check_back_off(v: &mut Validator, b: &Option<BackOff>) {
    if let Some(b) = b {
        v.field("backOff", |v| {
            check_positive(v, "baseInterval", b.base_interval);
            check_positive(v, "maxInterval", b.max_interval);
        });
    }
}

fn check_conditions(v: &mut Validator, conditions: &Option<Vec<String>>, known: &[&str], allow_codes: bool) {
    let Some(conditions) = conditions else { return };
    v.each("retryOn", conditions, |v, c| {
        let is_code = allow_codes && c.len() == 3 && c.parse::<u16>().is_ok_and(|n| (100..=599).contains(&n));
        if !is_code && !known.contains(&c.as_str()) {
            let codes = if allow_codes { " or an HTTP status code" } else { "" };
            v.error(format!("unknown condition {c:?}: expected one of {}{codes}", known.join(", ")));
        }
    });
}

impl Validate for RetryConf {
    fn validate(&self, v: &mut Validator) {
        if self.tcp.is_none() && self.http.is_none() && self.grpc.is_none() {
            v.error("needs at least one of tcp, http, grpc");
        }
        if let Some(tcp) = &self.tcp {
            v.field("tcp", |v| check_min(v, "maxConnectAttempt", tcp.max_connect_attempt, 1));
        }
        for (field, retry, known, codes) in [("http", &self.http, HTTP_CONDITIONS, true), ("grpc", &self.grpc, GRPC_CONDITIONS, false)] {
            if let Some(r) = retry {
                v.field(field, |v| {
                    if let Some(b) = &r.budget {
                        v.field("budget", |v| super::check_percentage(v, "percent", b.percent));
                    }
                    check_positive(v, "perTryTimeout", r.per_try_timeout);
                    check_back_off(v, &r.back_off);
                    check_conditions(v, &r.retry_on, known, codes);
                });
            }
        }
    }
}

impl PolicyConf for RetryConf {
    const FROM: bool = false;
    const TO: bool = true;
}
