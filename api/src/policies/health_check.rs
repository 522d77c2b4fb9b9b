//! MeshHealthCheck: active health checks of destination endpoints (`to` only).

use serde::{Deserialize, Serialize};

use super::{check_min, check_positive, PolicyConf};
use crate::validate::{Validate, Validator};
use crate::Duration;

/// The `default` of a MeshHealthCheck item.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheckConf {
    /// Time between checks of one endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time to wait for a check's answer; it may exceed the interval, and the next check waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Failed checks in a row before an endpoint is unhealthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Passed checks in a row before an endpoint is healthy again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
    /// HTTP check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// TCP check (connect, optionally send and expect bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// gRPC check (`grpc.health.v1.Health/Check`), for destinations that speak grpc.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcHealthCheck>,
}

/// A gRPC health check: the standard `grpc.health.v1.Health/Check` call, healthy when it
/// answers `SERVING`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcHealthCheck {
    /// Turns this check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// The service asked about (default: empty, the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// The host name the call is addressed to (`:authority`; default: the destination's service name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

/// An HTTP health check.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// Turns this check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Path to request (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Statuses that count as healthy (default 200-399).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<u16>>,
}

/// A TCP health check.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpHealthCheck {
    /// Turns this check off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Text to send after connecting (as is, not base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// Texts the answer must contain, in any order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Vec<String>>,
}

impl Validate for HealthCheckConf {
    fn validate(&self, v: &mut Validator) {
        check_positive(v, "interval", self.interval);
        check_positive(v, "timeout", self.timeout);
        check_min(v, "unhealthyThreshold", self.unhealthy_threshold, 1);
        check_min(v, "healthyThreshold", self.healthy_threshold, 1);
        self.check_grpc(v);
        if let Some(http) = &self.http {
            v.field("http", |v| {
                if let Some(path) = &http.path {
                    if !path.starts_with('/') {
                        v.error_at("path", format!("{path:?} must start with '/'"));
                    }
                }
                if let Some(statuses) = &http.expected_statuses {
                    v.each("expectedStatuses", statuses, |v, s| {
                        if !(100..=599).contains(s) {
                            v.error(format!("{s} is not an HTTP status code (100-599)"));
                        }
                    });
                }
            });
        }
    }
}

impl HealthCheckConf {
    fn check_grpc(&self, v: &mut Validator) {
        let Some(authority) = self.grpc.as_ref().and_then(|g| g.authority.as_ref()) else { return };
        if authority.is_empty() || !authority.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
            v.field("grpc", |v| v.error_at("authority", format!("{authority:?} is not a host name (letters, digits, '.', '-')")));
        }
    }
}

impl PolicyConf for HealthCheckConf {
    const FROM: bool = false;
    const TO: bool = true;
}
