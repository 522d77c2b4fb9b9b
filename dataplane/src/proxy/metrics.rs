//! The sidecar's metrics: tunnel counters per direction, HTTP requests by source and
//! destination service and status class with latency histograms and body bytes, and the
//! workload certificate's expiry.
//!
//! In: a `prometheus-client` registry. Out: [`ProxyMetrics`], from which each listener or
//! connection takes a [`PairMetrics`] once (a label lookup), so that a request only adds to
//! atomics it already holds; and [`ActiveGuard`], which counts a connection in a gauge while
//! it lives.

use std::sync::{Arc, OnceLock};
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

/// The labels every request, connection and policy series carries: who called whom, from
/// which zone to which, over which protocol, in which mesh and seen from which side.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PairLabels {
    direction: &'static str,
    mesh: String,
    source_service: String,
    source_zone: String,
    destination_service: String,
    destination_zone: String,
    protocol: &'static str,
}

/// One side of a pair: the service and its zone (empty when unknown, such as the
/// destination zone of a request answered before it reached an endpoint).
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    /// The service.
    pub service: &'a str,
    /// Its zone.
    pub zone: &'a str,
}

/// Which traffic a pair of series counts.
#[derive(Clone, Copy, Debug)]
pub struct Pair<'a> {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The mesh.
    pub mesh: &'a str,
    /// The caller.
    pub source: Peer<'a>,
    /// The called.
    pub destination: Peer<'a>,
    /// `http`, `http2`, `grpc` or `tcp`.
    pub protocol: &'static str,
}

impl Pair<'_> {
    fn labels(&self) -> PairLabels {
        PairLabels {
            direction: self.direction.label(),
            mesh: self.mesh.to_string(),
            source_service: self.source.service.to_string(),
            source_zone: self.source.zone.to_string(),
            destination_service: self.destination.service.to_string(),
            destination_zone: self.destination.zone.to_string(),
            protocol: self.protocol,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    status: u16,
    #[prometheus(flatten)]
    pair: PairLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    grpc_status: u8,
    #[prometheus(flatten)]
    pair: PairLabels,
}

/// The statuses whose counters a pair keeps at hand (made on first use, so that a status never
/// answered has no series); others are looked up in the family.
const COMMON_STATUSES: [u16; 24] =
    [200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 408, 409, 413, 429, 500, 501, 502, 503, 504];

/// gRPC status codes: 0 (OK) to 16 (UNAUTHENTICATED).
const GRPC_STATUSES: usize = 17;

/// Every metric of the sidecar.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// Inbound tunnel counters (connections, bytes, TLS errors, denials).
    pub inbound: TunnelMetrics,
    /// Outbound tunnel counters.
    pub outbound: TunnelMetrics,
    requests: Family<RequestLabels, Counter>,
    grpc: Family<GrpcLabels, Counter>,
    tcp_connections: Family<PairLabels, Counter>,
    tcp_received: Family<PairLabels, Counter>,
    tcp_sent: Family<PairLabels, Counter>,
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
            grpc: Family::default(),
            tcp_connections: Family::default(),
            tcp_received: Family::default(),
            tcp_sent: Family::default(),
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
            "HTTP requests by direction, mesh, source and destination service and zone, protocol and status",
            metrics.requests.clone(),
        );
        r.register("grpc_requests", "gRPC calls by their grpc-status (from the response headers or trailers)", metrics.grpc.clone());
        r.register("tcp_connections", "TCP connections proxied (protocol tcp), counted when they close", metrics.tcp_connections.clone());
        r.register("tcp_received_bytes", "bytes of closed TCP connections from the side that opened them", metrics.tcp_received.clone());
        r.register("tcp_sent_bytes", "bytes of closed TCP connections to the side that opened them", metrics.tcp_sent.clone());
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

    /// The handles of one pair, looked up once per listener, destination or connection.
    pub fn pair(&self, pair: Pair<'_>) -> PairMetrics {
        let labels = pair.labels();
        PairMetrics {
            requests: self.requests.clone(),
            common: Arc::new(Default::default()),
            grpc: self.grpc.clone(),
            grpc_common: Arc::new(Default::default()),
            duration: self.duration.get_or_create(&labels).clone(),
            request_bytes: self.request_bytes.get_or_create(&labels).clone(),
            response_bytes: self.response_bytes.get_or_create(&labels).clone(),
            denied: self.denied.get_or_create(&labels).clone(),
            retries: self.retries.get_or_create(&labels).clone(),
            retries_over_budget: self.retries_over_budget.get_or_create(&labels).clone(),
            ejections: self.ejections.get_or_create(&labels).clone(),
            overflows: self.overflows.get_or_create(&labels).clone(),
            rate_limited: self.rate_limited.get_or_create(&labels).clone(),
            faults: self.faults.get_or_create(&labels).clone(),
            labels: Arc::new(labels),
        }
    }

    /// Counts a closed TCP connection of `pair` that carried `received` bytes from the side
    /// that opened it and `sent` back.
    pub fn tcp_closed(&self, pair: Pair<'_>, received: u64, sent: u64) {
        let labels = pair.labels();
        self.tcp_connections.get_or_create(&labels).inc();
        self.tcp_received.get_or_create(&labels).inc_by(received);
        self.tcp_sent.get_or_create(&labels).inc_by(sent);
    }
}

/// Pre-built metric handles of one pair; cheap to clone. A request adds to atomics only: the
/// counter of a common status is made once and kept.
#[derive(Clone, Debug)]
pub struct PairMetrics {
    labels: Arc<PairLabels>,
    requests: Family<RequestLabels, Counter>,
    common: Arc<[OnceLock<Counter>; COMMON_STATUSES.len()]>,
    grpc: Family<GrpcLabels, Counter>,
    grpc_common: Arc<[OnceLock<Counter>; GRPC_STATUSES]>,
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
        let code = status.as_u16();
        match COMMON_STATUSES.iter().position(|c| *c == code) {
            Some(i) => self.common[i].get_or_init(|| self.status_counter(code)).inc(),
            None => self.status_counter(code).inc(),
        };
        self.duration.observe(elapsed);
    }

    fn status_counter(&self, status: u16) -> Counter {
        self.requests.get_or_create(&RequestLabels { pair: (*self.labels).clone(), status }).clone()
    }

    /// Counts a gRPC call that ended with `grpc-status: value` (ignored unless a valid code).
    pub fn record_grpc(&self, value: &[u8]) {
        let Some(code) = std::str::from_utf8(value).ok().and_then(|v| v.trim().parse::<u8>().ok()) else { return };
        let Some(slot) = self.grpc_common.get(usize::from(code)) else { return };
        slot.get_or_init(|| self.grpc.get_or_create(&GrpcLabels { pair: (*self.labels).clone(), grpc_status: code }).clone()).inc();
    }
}
