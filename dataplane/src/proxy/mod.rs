//! The sidecar's data path: once the first configuration and certificate are in, it starts the
//! inbound listeners (mTLS from other sidecars, authorised by MeshTrafficPermission, forwarded
//! to the application) and the explicit outbound listeners (the application's connections,
//! sent over mTLS to an endpoint of the destination service), and keeps the TLS identity
//! current as certificates rotate and trust bundles change.
//!
//! In: [`ProxyState`] (configuration and identity, read lock-free). Out: proxied connections
//! and `strait_dp_*` metrics.

pub mod inbound;
pub mod outbound;
pub mod transparent;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use strait_pki::TrustBundle;
use strait_proxy_core::drain::DrainWatcher;
use strait_proxy_core::identity::{IdentityStore, TlsIdentity};
use strait_proxy_core::tls::ALPN_TCP;
use strait_proxy_core::tunnel::TunnelMetrics;
use tokio_util::task::TaskTracker;

use crate::dps_client::ProxyState;

/// Metrics of both directions.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// Inbound tunnel counters.
    pub inbound: TunnelMetrics,
    /// Outbound tunnel counters.
    pub outbound: TunnelMetrics,
}

impl ProxyMetrics {
    /// Registers `strait_dp_inbound_*` and `strait_dp_outbound_*`.
    pub fn register(registry: &mut Registry) -> Self {
        ProxyMetrics {
            inbound: TunnelMetrics::register(registry.sub_registry_with_prefix("strait_dp_inbound")),
            outbound: TunnelMetrics::register(registry.sub_registry_with_prefix("strait_dp_outbound")),
        }
    }
}

/// Builds the TLS identity from the current certificate and trust bundle.
fn tls_identity(state: &ProxyState) -> Option<TlsIdentity> {
    let identity = state.identity.load_full()?;
    let config = state.config.load_full()?;
    let bundle: TrustBundle = match serde_json::from_value(config.1.trust_bundle.clone()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "the trust bundle from the zone does not parse");
            return None;
        }
    };
    match TlsIdentity::from_pem(&identity.cert_chain_pem, &identity.key_pem, &bundle, &[ALPN_TCP]) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(error = %e, "the workload certificate is unusable; keeping the previous one");
            None
        }
    }
}

/// Runs the data path: waits for a first identity, starts the listeners, then follows changes.
pub async fn run(state: Arc<ProxyState>, metrics: ProxyMetrics, drain: DrainWatcher, tasks: TaskTracker) {
    let mut changed = state.changed.subscribe();
    let first = loop {
        if let Some(t) = tls_identity(&state) {
            break t;
        }
        tokio::select! {
            () = drain.signaled() => return,
            r = changed.changed() => if r.is_err() { return },
        }
    };
    let identities = Arc::new(IdentityStore::new(first));
    if let Some(config) = state.config.load_full() {
        for inbound in &config.1.inbounds {
            inbound::start(inbound, state.clone(), identities.clone(), metrics.inbound.clone(), drain.clone(), &tasks).await;
        }
        for outbound in config.1.outbounds.iter().filter(|o| o.port.is_some()) {
            outbound::start(outbound, state.clone(), identities.clone(), metrics.outbound.clone(), drain.clone(), &tasks).await;
        }
        if let Some(port) = config.1.transparent_outbound_port {
            transparent::start(port, state.clone(), identities.clone(), metrics.outbound.clone(), drain.clone(), &tasks).await;
        }
    }
    loop {
        tokio::select! {
            () = drain.signaled() => return,
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                // Certificates rotate and bundles change (revocations): new connections use
                // the new identity, open ones keep theirs.
                if let Some(t) = tls_identity(&state) {
                    identities.replace(t);
                }
            }
        }
    }
}
