//! The sidecar's metrics: tunnel counters per direction, HTTP requests by source and
//! destination service and status class with latency histograms and body bytes, and the
//! workload certificate's expiry.
//!
//! In: a `prometheus-client` registry. Out: [`ProxyMetrics`], from which each listener or
//! connection takes a [`PairMetrics`] once (a label lookup), so that a request only adds to
//! atomics it already holds; and [`ActiveGuard`], which counts a connection in a gauge while
//! it lives.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use strait_proxy_core::metrics::LatencyHistogram;
use strait_proxy_core::tunnel::TunnelMetrics;

/// Counts a connection in a gauge for as long as it lives.
pub struct ActiveGuard(Gauge);

impl ActiveGuard {
    /// Adds one to `gauge` until dropped.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        ActiveGuard(gauge.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Which way a request went through this sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From another sidecar to our application.
    Inbound,
    /// From our application to another service.
    Outbound,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PairLabels {
    direction: &'static str,
    source: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    direction: &'static str,
    source: String,
    destination: String,
    status: &'static str,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every metric of the sidecar.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// Inbound tunnel counters (connections, bytes, TLS errors, denials).
    pub inbound: TunnelMetrics,
    /// Outbound tunnel counters.
    pub outbound: TunnelMetrics,
    requests: Family<RequestLabels, Counter>,
    duration: Family<PairLabels, LatencyHistogram>,
    request_bytes: Family<PairLabels, Counter>,
    response_bytes: Family<PairLabels, Counter>,
    /// Requests refused by MeshTrafficPermission, by source and destination.
    denied: Family<PairLabels, Counter>,
    /// Retries of requests (MeshRetry), by source and destination.
    retries: Family<PairLabels, Counter>,
    /// Retries MeshRetry allowed but its budget did not.
    retries_over_budget: Family<PairLabels, Counter>,
    /// Endpoints ejected by outlier detection.
    ejections: Family<PairLabels, Counter>,
    /// Requests answered 503 at once by a circuit breaker limit.
    overflows: Family<PairLabels, Counter>,
    /// Requests and connections refused by MeshRateLimit.
    rate_limited: Family<PairLabels, Counter>,
    /// Requests given a fault by MeshFaultInjection.
    faults: Family<PairLabels, Counter>,
    /// When the workload certificate in use expires (Unix seconds).
    pub certificate_expiry: Gauge,
    /// Workload certificates put in use since start.
    pub certificate_rotations: Counter,
    /// Streams registered with the zone control plane (one per (re)connection).
    pub control_plane_streams: Counter,
    /// Configurations refused (NACKed); the previous one stayed in force.
    pub config_nacks: Counter,
    /// Access log lines dropped.
    pub access_log_dropped: Counter,
    /// Spans dropped.
    pub spans_dropped: Counter,
}

impl ProxyMetrics {
    /// Registers everything under `strait_dp_`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ProxyMetrics {
            inbound: TunnelMetrics::register(registry.sub_registry_with_prefix("strait_dp_inbound")),
            outbound: TunnelMetrics::register(registry.sub_registry_with_prefix("strait_dp_outbound")),
            requests: Family::default(),
            duration: Family::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            denied: Family::default(),
            retries: Family::default(),
            retries_over_budget: Family::default(),
            ejections: Family::default(),
            overflows: Family::default(),
            rate_limited: Family::default(),
            faults: Family::default(),
            access_log_dropped: Counter::default(),
            spans_dropped: Counter::default(),
            certificate_expiry: Gauge::default(),
            certificate_rotations: Counter::default(),
            control_plane_streams: Counter::default(),
            config_nacks: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("strait_dp");
        r.register(
            "http_requests",
            "HTTP requests by direction, source and destination service, and status class",
            metrics.requests.clone(),
        );
        r.register("http_request_duration_seconds", "time from a request's arrival to its response headers", metrics.duration.clone());
        r.register("http_request_body_bytes", "request body bytes", metrics.request_bytes.clone());
        r.register("http_response_body_bytes", "response body bytes", metrics.response_bytes.clone());
        r.register("http_denied_requests", "requests refused by MeshTrafficPermission", metrics.denied.clone());
        r.register("http_retries", "requests sent again by MeshRetry", metrics.retries.clone());
        r.register(
            "http_retries_over_budget",
            "retries MeshRetry allowed that its budget refused (the failure was answered)",
            metrics.retries_over_budget.clone(),
        );
        r.register("outlier_ejections", "endpoints ejected by outlier detection (MeshCircuitBreaker)", metrics.ejections.clone());
        r.register(
            "overflows",
            "HTTP requests answered 503, and TCP connections closed, at once by a MeshCircuitBreaker limit",
            metrics.overflows.clone(),
        );
        r.register("rate_limited", "HTTP requests answered and TCP connections closed by a MeshRateLimit", metrics.rate_limited.clone());
        r.register(
            "spans_dropped",
            "spans dropped: the collector's queue was full, or it could not be reached (MeshTrace)",
            metrics.spans_dropped.clone(),
        );
        r.register(
            "access_log_dropped",
            "access log lines dropped: a backend's queue was full, or it could not be written (MeshAccessLog)",
            metrics.access_log_dropped.clone(),
        );
        r.register(
            "faults_injected",
            "HTTP requests given a fault (abort, delay or bandwidth) by MeshFaultInjection",
            metrics.faults.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "when the workload certificate in use expires",
            metrics.certificate_expiry.clone(),
        );
        r.register("certificate_rotations", "workload certificates put in use", metrics.certificate_rotations.clone());
        r.register("config_nacks", "configurations refused (NACK); the previous one stayed in force", metrics.config_nacks.clone());
        r.register(
            "control_plane_streams",
            "streams registered with the zone control plane, one per (re)connection",
            metrics.control_plane_streams.clone(),
        );
        metrics
    }

    /// The handles of one (direction, source, destination), looked up once per listener or connection.
    pub fn pair(&self, direction: Direction, source: &str, destination: &str) -> PairMetrics {
        let pair = PairLabels { direction: direction.label(), source: source.to_string(), destination: destination.to_string() };
        let status = STATUS_CLASSES.map(|status| {
            self.requests
                .get_or_create(&RequestLabels {
                    direction: pair.direction,
                    source: pair.source.clone(),
                    destination: pair.destination.clone(),
                    status,
                })
                .clone()
        });
        PairMetrics {
            status,
            duration: self.duration.get_or_create(&pair).clone(),
            request_bytes: self.request_bytes.get_or_create(&pair).clone(),
            response_bytes: self.response_bytes.get_or_create(&pair).clone(),
            denied: self.denied.get_or_create(&pair).clone(),
            retries: self.retries.get_or_create(&pair).clone(),
            retries_over_budget: self.retries_over_budget.get_or_create(&pair).clone(),
            ejections: self.ejections.get_or_create(&pair).clone(),
            overflows: self.overflows.get_or_create(&pair).clone(),
            rate_limited: self.rate_limited.get_or_create(&pair).clone(),
            faults: self.faults.get_or_create(&pair).clone(),
        }
    }
}

/// Pre-built metric handles of one (direction, source, destination); cheap to clone.
#[derive(Clone, Debug)]
pub struct PairMetrics {
    status: [Counter; 5],
    duration: LatencyHistogram,
    /// Request body bytes.
    pub request_bytes: Counter,
    /// Response body bytes.
    pub response_bytes: Counter,
    /// Requests refused by MeshTrafficPermission.
    pub denied: Counter,
    /// Requests sent again by MeshRetry.
    pub retries: Counter,
    /// Retries the budget refused.
    pub retries_over_budget: Counter,
    /// Endpoints ejected by outlier detection.
    pub ejections: Counter,
    /// Requests answered 503 at once by a circuit breaker limit.
    pub overflows: Counter,
    /// Requests and connections refused by a MeshRateLimit.
    pub rate_limited: Counter,
    /// Requests given a fault by MeshFaultInjection.
    pub faults: Counter,
}

impl PairMetrics {
    /// Counts a response with `status` whose headers came `elapsed` after the request arrived.
    pub fn record(&self, status: http::StatusCode, elapsed: Duration) {
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
        self.status[class].inc();
        self.duration.observe(elapsed);
    }
}
