//! MeshTimeout: connection and request timeouts, inbound (`from`) and outbound (`to`).

use serde::{Deserialize, Serialize};

use super::{check_positive, PolicyConf};
use crate::validate::{Validate, Validator};
use crate::Duration;

/// The `default` of a MeshTimeout item.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimeoutConf {
    /// Time to establish a connection to the destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_timeout: Option<Duration>,
    /// A connection with no traffic for this long is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// HTTP-specific timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTimeouts>,
}

/// HTTP timeouts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpTimeouts {
    /// The whole request, until the response is complete; 0 disables it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<Duration>,
    /// A stream with no activity for this long is reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_idle_timeout: Option<Duration>,
    /// The longest a stream may live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stream_duration: Option<Duration>,
    /// The longest an HTTP connection may live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_duration: Option<Duration>,
    /// Time to receive the request headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers_timeout: Option<Duration>,
}

impl Validate for TimeoutConf {
    fn validate(&self, v: &mut Validator) {
        check_positive(v, "connectionTimeout", self.connection_timeout);
        if let Some(http) = &self.http {
            v.field("http", |v| {
                check_positive(v, "maxConnectionDuration", http.max_connection_duration);
            });
        }
    }
}

impl PolicyConf for TimeoutConf {
    const FROM: bool = true;
    const TO: bool = true;
    const PER_ROUTE: bool = true;

    fn validate_per_route(&self, v: &mut Validator) {
        const SHARED: &str = "is a limit of connections, which the routes of a destination share: set it for the destination";
        if self.connection_timeout.is_some() {
            v.error_at("connectionTimeout", SHARED);
        }
        if self.idle_timeout.is_some() {
            v.error_at("idleTimeout", SHARED);
        }
        if self.http.as_ref().is_some_and(|h| h.max_connection_duration.is_some()) {
            v.field("http", |v| v.error_at("maxConnectionDuration", SHARED));
        }
    }
}
