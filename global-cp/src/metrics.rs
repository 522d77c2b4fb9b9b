//! Prometheus metrics of the global control plane (`strait_global_*`).
//!
//! In: every HTTP request (route template, method, status, duration) and store statistics read
//! at scrape time. Out: the text exposition served on `/metrics`. Label values come from
//! bounded sets: route templates, not request paths.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::rest::AppState;

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Route template such as `/meshes/{mesh}/{type}/{name}`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Status code.
    pub status: u16,
}

/// Labels of a route's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
}

/// A resource type name as a label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeName {
    /// Resource type.
    pub r#type: String,
}

/// The metrics, registered in a registry owned by the app.
pub struct Metrics {
    /// Requests by route, method and status.
    pub requests: Family<RequestLabels, prometheus_client::metrics::counter::Counter>,
    /// Request latency by route.
    pub latency: Family<RouteLabels, Histogram>,
    /// Stored resources by type.
    pub resources: Family<TypeName, Gauge>,
    /// Store size on disk.
    pub store_bytes: Gauge<u64, AtomicU64>,
    /// Current store revision.
    pub store_revision: Gauge<u64, AtomicU64>,
    /// Stored records skipped since start because they do not decode or no longer validate.
    pub store_skipped: Gauge<u64, AtomicU64>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry` under `strait_global`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
            }),
            resources: Family::default(),
            store_bytes: Gauge::default(),
            store_revision: Gauge::default(),
            store_skipped: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("strait_global");
        r.register("http_requests", "REST requests by route, method and status", m.requests.clone());
        r.register("http_request_duration_seconds", "REST request latency by route", m.latency.clone());
        r.register("store_resources", "Stored resources by type", m.resources.clone());
        r.register("store_size_bytes", "Size of the store on disk", m.store_bytes.clone());
        r.register("store_revision", "Current store revision", m.store_revision.clone());
        r.register(
            "store_skipped_records",
            "Stored records skipped since start because they do not decode or no longer validate (the log names each key)",
            m.store_skipped.clone(),
        );
        m
    }
}

/// The label of a request method: the standard ones by name, anything else `other`, so that
/// requests (counted before authentication) cannot grow the label set.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const KNOWN: [(Method, &str); 8] = [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::PATCH, "PATCH"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN.iter().find(|(m, _)| m == method).map_or("other", |(_, name)| name)
}

/// Counts and times every request under its route template.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = method_label(req.method()).to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let m = &state.metrics;
    m.latency.get_or_create(&RouteLabels { route: route.clone() }).observe(start.elapsed().as_secs_f64());
    m.requests.get_or_create(&RequestLabels { route, method, status: response.status().as_u16() }).inc();
    response
}
