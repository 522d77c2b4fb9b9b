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
    pub http: Option<HttpRetry>,
    /// Retries of gRPC calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcRetry>,
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
    /// Longest interval (default 10 × base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

/// HTTP retries.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRetry {
    /// Retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// Timeout of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Back-off between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    /// Conditions: 5xx, GatewayError, Reset, ConnectFailure, Retriable4xx, RefusedStream, or a status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
}

/// gRPC retries.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRetry {
    /// Retries after the first attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_retries: Option<u32>,
    /// Timeout of each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Back-off between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub back_off: Option<BackOff>,
    /// Conditions: Canceled, DeadlineExceeded, Internal, ResourceExhausted, Unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<String>>,
}

const HTTP_CONDITIONS: &[&str] =
    &["5xx", "GatewayError", "Reset", "ConnectFailure", "Retriable4xx", "RefusedStream", "Http3PostConnectFailure"];
const GRPC_CONDITIONS: &[&str] = &["Canceled", "DeadlineExceeded", "Internal", "ResourceExhausted", "Unavailable"];

fn check_back_off(v: &mut Validator, b: &Option<BackOff>) {
    if let Some(b) = b {
        v.field("backOff", |v| {
            check_positive(v, "baseInterval", b.base_interval);
            check_positive(v, "maxInterval", b.max_interval);
            if let (Some(base), Some(max)) = (b.base_interval, b.max_interval) {
                if max < base {
                    v.error_at("maxInterval", format!("{max} is shorter than baseInterval {base}"));
                }
            }
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
        if let Some(http) = &self.http {
            v.field("http", |v| {
                check_positive(v, "perTryTimeout", http.per_try_timeout);
                check_back_off(v, &http.back_off);
                check_conditions(v, &http.retry_on, HTTP_CONDITIONS, true);
            });
        }
        if let Some(grpc) = &self.grpc {
            v.field("grpc", |v| {
                check_positive(v, "perTryTimeout", grpc.per_try_timeout);
                check_back_off(v, &grpc.back_off);
                check_conditions(v, &grpc.retry_on, GRPC_CONDITIONS, false);
            });
        }
    }
}

impl PolicyConf for RetryConf {
    const FROM: bool = false;
    const TO: bool = true;
}
