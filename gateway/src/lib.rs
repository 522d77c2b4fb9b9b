//! The east-west gateway (`strait-gateway`): zone ingress and zone egress in one process.
//!
//! In: its zone control plane's configuration over DPS ([`cp`]), end-to-end mTLS connections
//! from this zone's sidecars ([`egress`]) and tunnels from other zones' gateways
//! ([`ingress`]). Out: those bytes, routed by the SNI of the sidecars' TLS sessions and never
//! decrypted, over one QUIC connection per pair of zones ([`links`], [`quic`]) with a small
//! header per stream ([`header`]), or TCP+TLS where UDP is blocked; metrics and readiness on
//! the admin endpoint. [`app`] wires it together.
#![forbid(unsafe_code)]
// tonic::Status (176 bytes) is the error of every gRPC call; boxing it everywhere buys nothing.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod config;
pub mod cp;
pub mod egress;
pub mod header;
pub mod ingress;
pub mod links;
pub mod metrics;
pub mod quic;
pub mod routes;

use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use app::Running;

/// What every part of the gateway shares.
pub struct Gateway {
    /// The current routing state.
    pub routes: ArcSwap<routes::Routes>,
    /// Which endpoints the ingress may forward to and which clients the egress serves.
    pub addresses: routes::AddressPolicy,
    /// Signalled after each new routing state is in force.
    pub routes_changed: tokio::sync::watch::Sender<()>,
    /// Metrics.
    pub metrics: metrics::GatewayMetrics,
    /// Ends background tasks (links, reports).
    pub shutdown: CancellationToken,
    /// Every task, to wait for at shutdown.
    pub tasks: TaskTracker,
    /// QUIC idle timeout (and handshake timeout).
    pub idle_timeout: Duration,
    /// How each tunnelled connection is copied (its idle timeout: `--tcp-idle-timeout`).
    pub copy: strait_proxy_core::copy::CopyOptions,
    /// The QUIC endpoint: server for the ingress, client for the egress.
    pub endpoint: quinn::Endpoint,
    /// QUIC connections to other zones.
    pub links: links::Links,
    /// QUIC connections from other zones.
    pub peers: ingress::Peers,
    /// Round robin over a zone's ingresses for TCP fallback connections.
    pub next_fallback: std::sync::atomic::AtomicUsize,
}

impl Gateway {
    /// Resolves, with its reason, once `cut` says the routes in force end a tunnel (a zone
    /// disabled or withdrawn, an identity revoked): checked now and after every change.
    pub async fn cut_when(&self, cut: impl Fn(&routes::Routes) -> Option<&'static str>) -> &'static str {
        let mut changes = self.routes_changed.subscribe();
        loop {
            if let Some(reason) = cut(&self.routes.load()) {
                return reason;
            }
            if changes.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }
}
