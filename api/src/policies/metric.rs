//! MeshMetric: which metrics proxies expose and where (a single `default`).

use serde::{Deserialize, Serialize};

use crate::validate::{Validate, Validator};

/// The `default` of a MeshMetric.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricConf {
    /// Metrics of the proxy itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarMetrics>,
    /// Application endpoints the proxy scrapes and re-exposes with its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<ApplicationMetrics>,
    /// Where metrics are exposed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<MetricBackend>,
}

/// Proxy metric selection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarMetrics {
    /// Only metric names matching this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Include metrics that were never updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_unused: Option<bool>,
}

/// An application's metrics endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplicationMetrics {
    /// Prefix for its metric names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Path (default `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Port on the workload.
    pub port: u16,
}

/// Backend kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum MetricBackendType {
    /// A Prometheus scrape endpoint on the proxy.
    Prometheus,
}

/// A metrics backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricBackend {
    /// The kind of backend.
    #[serde(rename = "type")]
    pub kind: MetricBackendType,
    /// Prometheus settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusBackend>,
}

/// Prometheus scrape endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusBackend {
    /// Port (default 5670).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Path (default `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn check_path(v: &mut Validator, path: &Option<String>) {
    if let Some(p) = path {
        if !p.starts_with('/') {
            v.error_at("path", format!("{p:?} must start with '/'"));
        }
    }
}

impl Validate for MetricConf {
    fn validate(&self, v: &mut Validator) {
        if let Some(s) = &self.sidecar {
            if let Some(re) = &s.regex {
                if let Err(e) = regex::Regex::new(re) {
                    v.field("sidecar", |v| v.error_at("regex", format!("invalid regular expression: {e}")));
                }
            }
        }
        v.each("applications", &self.applications, |v, a| {
            check_path(v, &a.path);
            if a.port == 0 {
                v.error_at("port", "must be between 1 and 65535");
            }
        });
        v.each("backends", &self.backends, |v, b| {
            if let Some(p) = &b.prometheus {
                v.field("prometheus", |v| {
                    check_path(v, &p.path);
                    if p.port == Some(0) {
                        v.error_at("port", "must be between 1 and 65535");
                    }
                });
            }
        });
    }
}
