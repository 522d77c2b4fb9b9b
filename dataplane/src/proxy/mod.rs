//! The sidecar's data path: once the first configuration and certificate are in, it starts the
//! inbound listeners (mTLS from other sidecars, authorised by MeshTrafficPermission, forwarded
//! to the application), the explicit outbound listeners and the transparent one (the
//! application's connections, sent over mTLS to an endpoint of the destination service), and
//! keeps the destination table and the TLS identity current as configuration changes,
//! certificates rotate and trust bundles change.
//!
//! TCP destinations are tunnelled connection by connection; HTTP, HTTP/2 and gRPC ones are
//! proxied request by request over pooled HTTP/2 connections between sidecars ([`http`]).
//!
//! In: [`ProxyState`] (configuration and identity, read lock-free). Out: proxied connections
//! and requests, and `strait_dp_*` metrics.

pub mod balance;
pub mod destinations;
pub mod http;
pub mod inbound;
pub mod locality;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod transparent;

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arc_swap::ArcSwap;
use prometheus_client::metrics::gauge::Gauge;
use strait_pki::TrustBundle;
use strait_proxy_core::drain::DrainWatcher;
use strait_proxy_core::identity::{IdentityStore, TlsIdentity};
use strait_proxy_core::tls::{ALPN_H2, ALPN_TCP};
use tokio_util::task::TaskTracker;

use crate::dps_client::{ProxyState, WorkloadIdentity};
pub use destinations::Table;
pub use metrics::ProxyMetrics;

/// What every listener and connection of the data path shares.
pub struct DataPath {
    /// Configuration and workload certificate from the zone.
    pub state: Arc<ProxyState>,
    /// The TLS identity new connections use.
    pub identities: Arc<IdentityStore>,
    /// Destinations by service and endpoint address, swapped whole on configuration changes.
    pub table: ArcSwap<Table>,
    /// Every metric.
    pub metrics: ProxyMetrics,
    /// Held by every task of the data path: the drain waits for them.
    pub drain: DrainWatcher,
    /// Owns every task of the data path.
    pub tasks: TaskTracker,
}

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

/// The certificate and trust bundle an identity was built from, to tell when to rebuild it.
struct IdentitySource {
    certificate: Arc<WorkloadIdentity>,
    bundle: serde_json::Value,
}

/// Builds the TLS identity from the current certificate and trust bundle.
fn tls_identity(state: &ProxyState) -> Option<(TlsIdentity, IdentitySource)> {
    let identity = state.identity.load_full()?;
    let config = state.config.load_full()?;
    let bundle: TrustBundle = match serde_json::from_value(config.1.trust_bundle.clone()) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "the trust bundle from the zone does not parse");
            return None;
        }
    };
    let source = IdentitySource { certificate: identity.clone(), bundle: config.1.trust_bundle.clone() };
    match TlsIdentity::from_pem(&identity.cert_chain_pem, &identity.key_pem, &bundle, &[ALPN_H2, ALPN_TCP]) {
        Ok(t) => Some((t, source)),
        Err(e) => {
            tracing::error!(error = %e, "the workload certificate is unusable; keeping the previous one");
            None
        }
    }
}

fn note_certificate(metrics: &ProxyMetrics, identity: &TlsIdentity) {
    let expiry = identity.not_after().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    metrics.certificate_expiry.set(i64::try_from(expiry).unwrap_or(i64::MAX));
    metrics.certificate_rotations.inc();
}

/// Runs the data path: waits for a first identity, starts the listeners, then follows changes.
pub async fn run(state: Arc<ProxyState>, metrics: ProxyMetrics, drain: DrainWatcher, tasks: TaskTracker) {
    let mut changed = state.changed.subscribe();
    let (first, mut source) = loop {
        if let Some(built) = tls_identity(&state) {
            break built;
        }
        tokio::select! {
            () = drain.signaled() => return,
            r = changed.changed() => if r.is_err() { return },
        }
    };
    note_certificate(&metrics, &first);
    let Some(config) = state.config.load_full() else { return };
    let table = Table::build(&config.1, &Table::default(), &metrics);
    let path = Arc::new(DataPath {
        state: state.clone(),
        identities: Arc::new(IdentityStore::new(first)),
        table: ArcSwap::from_pointee(table),
        metrics,
        drain,
        tasks,
    });
    for inbound in &config.1.inbounds {
        inbound::start(inbound, &path).await;
    }
    for outbound in config.1.outbounds.iter().filter(|o| o.port.is_some()) {
        outbound::start(outbound, &path).await;
    }
    if let Some(port) = config.1.transparent_outbound_port {
        transparent::start(port, &path).await;
    }
    let mut version = config.0;
    loop {
        tokio::select! {
            () = path.drain.signaled() => return,
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                if let Some(config) = state.config.load_full().filter(|c| c.0 != version) {
                    version = config.0;
                    path.table.store(Arc::new(Table::build(&config.1, &path.table.load(), &path.metrics)));
                }
                // Certificates rotate and bundles change (revocations): new connections use
                // the new identity, open ones keep theirs.
                let renewed = state.identity.load().as_ref().is_some_and(|i| !Arc::ptr_eq(i, &source.certificate));
                let bundle_changed = state.config.load().as_ref().is_some_and(|c| c.1.trust_bundle != source.bundle);
                if renewed || bundle_changed {
                    if let Some((identity, built_from)) = tls_identity(&state) {
                        note_certificate(&path.metrics, &identity);
                        path.identities.replace(identity);
                        source = built_from;
                    }
                }
            }
        }
    }
}
