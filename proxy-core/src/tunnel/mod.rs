//! The mTLS TCP tunnel between sidecars, as plain async functions.
//!
//! In: sockets, the proxy's [`IdentityStore`](crate::identity::IdentityStore) or a client
//! config for the expected peer, an authorization callback, pre-built metrics and a drain
//! watcher. Out: [`inbound::serve`] terminates mTLS from other sidecars, checks the peer's
//! SPIFFE ID and forwards the bytes to the local application; [`outbound::connect`] opens an
//! mTLS connection to a peer sidecar that must present the expected SPIFFE ID, and
//! [`outbound::forward`] proxies a local application connection through it.
//!
//! Metrics are counters built (and labelled) once by the caller and passed in as a
//! [`TunnelMetrics`]: nothing here formats a label per connection.

pub mod inbound;
pub mod outbound;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters of one tunnel direction; clones share the same underlying values. Bytes are
/// added when a connection ends.
#[derive(Clone, Debug, Default)]
pub struct TunnelMetrics {
    /// Connections accepted (inbound) or opened (outbound).
    pub connections: Counter,
    /// Connections currently open.
    pub active: Gauge,
    /// Bytes received from the remote sidecar.
    pub bytes_in: Counter,
    /// Bytes sent to the remote sidecar.
    pub bytes_out: Counter,
    /// TLS handshakes that failed (bad or untrusted peer certificate, timeout, garbage).
    pub handshake_errors: Counter,
    /// Connections closed because the peer identity was not authorized.
    pub denied: Counter,
}

impl TunnelMetrics {
    /// New counters registered in `registry` as `tunnel_connections`, `tunnel_active_connections`,
    /// `tunnel_received_bytes`, `tunnel_sent_bytes`, `tunnel_handshake_errors` and
    /// `tunnel_denied_connections`. Give it a sub-registry carrying the component prefix
    /// (`strait_dp`) and a fixed label set (`direction="inbound"`).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = TunnelMetrics::default();
        registry.register("tunnel_connections", "mTLS tunnel connections", metrics.connections.clone());
        registry.register("tunnel_active_connections", "mTLS tunnel connections open now", metrics.active.clone());
        registry.register("tunnel_received_bytes", "bytes received from the remote sidecar", metrics.bytes_in.clone());
        registry.register("tunnel_sent_bytes", "bytes sent to the remote sidecar", metrics.bytes_out.clone());
        registry.register("tunnel_handshake_errors", "failed mTLS handshakes", metrics.handshake_errors.clone());
        registry.register("tunnel_denied_connections", "connections refused by authorization", metrics.denied.clone());
        metrics
    }
}

/// Counts a connection as active for as long as it lives.
struct Active(Gauge);

impl Active {
    fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Active(gauge.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}
