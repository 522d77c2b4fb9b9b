//! Gateway metrics (`strait_gateway_*`): tunnelled connections and bytes per remote zone and
//! service, QUIC round-trip time and loss per remote zone, TCP fallbacks and refusals.
//!
//! Label values come from the configuration (zones, services) and from a fixed set (reasons),
//! never from what a peer sends, so the series stay bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A tunnelled connection's labels: the same names as the sidecars' series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `ingress` (from another zone) or `egress` (to another zone).
    pub direction: &'static str,
    /// The mesh (empty when the service is `other`).
    pub mesh: String,
    /// The service reached, or `other` for a service the zone is not known to host.
    pub destination_service: String,
    /// Where the connection comes from: the other zone on ingress, this one on egress.
    pub source_zone: String,
    /// Where it goes: this zone on ingress, the other one on egress.
    pub destination_zone: String,
    /// `quic` or `tcp` (the fallback).
    pub transport: &'static str,
}

impl StreamLabels {
    /// The labels of a connection through `direction` between this zone `local` and zone
    /// `remote`, to `key` (`<service>.<mesh>`, or `other`).
    pub fn new(direction: &'static str, local: &str, remote: &str, key: &str, transport: &'static str) -> Self {
        let (service, mesh) = key.rsplit_once('.').unwrap_or((key, ""));
        let (source_zone, destination_zone) = if direction == "ingress" { (remote, local) } else { (local, remote) };
        StreamLabels {
            direction,
            mesh: mesh.to_string(),
            destination_service: service.to_string(),
            source_zone: source_zone.to_string(),
            destination_zone: destination_zone.to_string(),
            transport,
        }
    }
}

/// A byte counter's labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    /// `to_zone` (sent towards the other zone) or `from_zone`.
    pub flow: &'static str,
    /// The connection's labels.
    #[prometheus(flatten)]
    pub stream: StreamLabels,
}

/// A remote zone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    /// The zone.
    pub zone: String,
}

/// A direction.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `ingress` or `egress`.
    pub direction: &'static str,
}

/// Why a connection or stream was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// A fixed reason (`untrusted_zone`, `revoked_zone`, `unknown_service`, ...).
    pub reason: &'static str,
}

/// Every gateway metric; clones share the values.
#[derive(Clone, Default)]
pub struct GatewayMetrics {
    /// Tunnelled connections opened.
    pub streams: Family<StreamLabels, Counter>,
    /// Tunnelled connections open now, by direction.
    pub active: Family<DirectionLabel, Gauge>,
    /// Bytes carried.
    pub bytes: Family<ByteLabels, Counter>,
    /// Connections that went over TCP because QUIC to the zone was down.
    pub fallbacks: Family<ZoneLabel, Counter>,
    /// Connections and streams refused.
    pub refused: Family<RefusedLabels, Counter>,
    /// Whether the QUIC connection to the zone is up (1) or not (0).
    pub quic_up: Family<ZoneLabel, Gauge>,
    /// Smoothed QUIC round-trip time to the zone.
    pub quic_rtt: Family<ZoneLabel, Gauge<f64, AtomicU64>>,
    /// QUIC packets lost on the current connection to the zone.
    pub quic_lost: Family<ZoneLabel, Gauge>,
    /// QUIC packets sent on the current connection to the zone.
    pub quic_sent: Family<ZoneLabel, Gauge>,
}

impl GatewayMetrics {
    /// Registers everything under `strait_gateway`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = GatewayMetrics::default();
        let r = registry.sub_registry_with_prefix("strait_gateway");
        r.register("streams", "Tunnelled connections opened, by direction, mesh, service, zones and transport", m.streams.clone());
        r.register("active_streams", "Tunnelled connections open now", m.active.clone());
        r.register("bytes", "Bytes carried between zones", m.bytes.clone());
        r.register("fallbacks", "Connections carried over TCP+TLS because QUIC to the zone was down", m.fallbacks.clone());
        r.register("refused", "Connections and streams refused, by reason", m.refused.clone());
        r.register("quic_up", "Whether the QUIC connection to the zone is up", m.quic_up.clone());
        r.register("quic_rtt_seconds", "Smoothed QUIC round-trip time to the zone", m.quic_rtt.clone());
        r.register("quic_lost_packets", "Packets lost on the current QUIC connection to the zone", m.quic_lost.clone());
        r.register("quic_sent_packets", "Packets sent on the current QUIC connection to the zone", m.quic_sent.clone());
        m
    }

    /// Counts a refusal.
    pub fn refuse(&self, direction: &'static str, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { direction, reason }).inc();
    }

    /// Counts a tunnelled connection's bytes when it ends.
    pub fn count_bytes(&self, stream: &StreamLabels, to_zone: u64, from_zone: u64) {
        for (flow, n) in [("to_zone", to_zone), ("from_zone", from_zone)] {
            self.bytes.get_or_create(&ByteLabels { flow, stream: stream.clone() }).inc_by(n);
        }
    }
}

/// Counts one open tunnel in `strait_gateway_active_tunnels` while it lives, however its task
/// ends (cut, drained or finished).
pub struct ActiveTunnel(Gauge);

impl ActiveTunnel {
    /// Counts a tunnel of `direction` as open.
    pub fn open(metrics: &GatewayMetrics, direction: &'static str) -> ActiveTunnel {
        let gauge = metrics.active.get_or_create(&DirectionLabel { direction }).clone();
        gauge.inc();
        ActiveTunnel(gauge)
    }
}

impl Drop for ActiveTunnel {
    fn drop(&mut self) {
        self.0.dec();
    }
}
