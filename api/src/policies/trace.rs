//! MeshTrace: distributed tracing of requests through the proxies (a single `default`).

use serde::{Deserialize, Serialize};

use super::check_percentage;
use crate::validate::{Validate, Validator};

/// The `default` of a MeshTrace.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceConf {
    /// Where spans are sent (at most one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<TraceBackend>,
    /// Which requests are traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Tags added to every span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<TraceTag>,
}

/// A span collector: exactly one of `zipkin`, `openTelemetry`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceBackend {
    /// A Zipkin collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zipkin: Option<Zipkin>,
    /// An OpenTelemetry collector (OTLP/gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_telemetry: Option<OpenTelemetry>,
}

/// Zipkin settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Zipkin {
    /// Collector URL such as `http://zipkin:9411/api/v2/spans`.
    pub url: String,
    /// Use 128-bit trace ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id128bit: Option<bool>,
}

/// OpenTelemetry settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpenTelemetry {
    /// Collector `host:port`.
    pub endpoint: String,
}

/// Sampling percentages.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sampling {
    /// Share of all requests traced (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overall: Option<f64>,
    /// Share of requests traced when the client asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<f64>,
    /// Share of requests traced at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random: Option<f64>,
}

/// A span tag: a literal or a request header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceTag {
    /// Tag name.
    pub name: String,
    /// A fixed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub literal: Option<String>,
    /// The value of this request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

impl Validate for TraceConf {
    fn validate(&self, v: &mut Validator) {
        if self.backends.len() > 1 {
            v.error_at("backends", "at most one backend is supported");
        }
        v.each("backends", &self.backends, |v, b| {
            if b.zipkin.is_some() == b.open_telemetry.is_some() {
                v.error("needs exactly one of zipkin, openTelemetry");
            }
            if let Some(z) = &b.zipkin {
                if !(z.url.starts_with("http://") || z.url.starts_with("https://")) {
                    v.field("zipkin", |v| v.error_at("url", format!("{:?} is not an http(s) URL", z.url)));
                }
            }
        });
        if let Some(s) = &self.sampling {
            v.field("sampling", |v| {
                check_percentage(v, "overall", s.overall);
                check_percentage(v, "client", s.client);
                check_percentage(v, "random", s.random);
            });
        }
        v.each("tags", &self.tags, |v, t| {
            if t.literal.is_some() == t.header.is_some() {
                v.error("needs exactly one of literal, header");
            }
            if let Some(header) = &t.header {
                let ok = !header.is_empty() && header.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                if !ok {
                    v.error_at("header", format!("{header:?} is not a valid HTTP header name"));
                }
            }
        });
    }
}
