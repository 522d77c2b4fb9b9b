//! The sidecar's data path: once the first configuration and certificate are in, it accepts
//! on the listeners bound at start ([`listeners`]): the inbound ones (mTLS from other
//! sidecars, authorised by MeshTrafficPermission, forwarded to the application), the explicit
//! outbound ones and the redirected one (the application's connections, sent over mTLS to an
//! endpoint of the destination service); and it keeps the destination table and the TLS
//! identity current as configuration changes, certificates rotate and trust bundles change.
//!
//! TCP destinations are tunnelled connection by connection; HTTP, HTTP/2 and gRPC ones are
//! proxied request by request over pooled HTTP/2 connections between sidecars ([`http`]).
//!
//! In: [`ProxyState`] (configuration and identity, read lock-free) and the bound
//! [`Listeners`]. Out: proxied connections and requests, `strait_dp_*` metrics, and each
//! listener's readiness guard released once it accepts.
//!
//! One concept per file, and imports that run one way, from the leaves up (a module uses
//! only modules above it in this list; this file, the data path's lifecycle, uses them all
//! and none uses it):
//!
//! 1. [`metrics`], [`balance`] (how to pick among candidates), [`authorization`]
//!    (MeshTrafficPermission), [`http::body`] (the counted body, the sidecar's own answers)
//!    and [`http`] itself (serving until drained, header fixes): leaves.
//! 2. [`http::pool`]: one pooled HTTP/2 connection per peer endpoint (uses `http::body`,
//!    `metrics`); it reports connect outcomes through a trait, not to an endpoint.
//! 3. [`endpoint`]: an endpoint with its in-flight count, passive health and pool slot (uses
//!    `http::pool`).
//! 4. [`locality`]: which endpoints a pick may use (uses `endpoint`).
//! 5. [`destinations`]: the table of destinations (uses `endpoint`, `locality`, `balance`,
//!    `metrics`).
//! 6. [`data_path`]: what every listener and connection shares (uses `destinations`,
//!    `metrics`); [`listeners`]: the Dataplane's sockets, bound at start (uses the protocol
//!    of `destinations`).
//! 7. [`http::inbound`] and [`http::outbound`]: the two sides of HTTP proxying (use the
//!    above).
//! 8. [`inbound`] and [`outbound`]: the accept loops of inbound and explicit outbound ports
//!    (use the above, `http::inbound` and `http::outbound`).
//! 9. [`redirected`]: the accept loop of the redirect port (uses `outbound` for TCP tunnels).
//!
//! Nothing of `crate::transparent` (the iptables rules) is used here: it only decides which
//! connections reach [`redirected`].

pub mod access_log;
pub mod authorization;
pub mod balance;
pub mod data_path;
pub mod destinations;
pub mod endpoint;
pub mod hashing;
pub mod health_check;
pub mod http;
pub mod inbound;
pub mod inbound_policies;
pub mod listeners;
pub mod locality;
pub mod metrics;
pub mod outbound;
pub mod redirected;
pub mod timeouts;
pub mod trace;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use arc_swap::ArcSwap;
use strait_api::proxy_config::{MeshTrust, ProxyConfig};
use strait_pki::TrustBundle;
use strait_proxy_core::drain::DrainWatcher;
use strait_proxy_core::identity::{IdentityStore, TlsIdentity};
use strait_proxy_core::tls::{ALPN_H2, ALPN_HTTP1, ALPN_TCP};
use tokio_util::task::TaskTracker;

use self::data_path::DataPath;
use self::destinations::Table;
use self::listeners::Listeners;
use self::metrics::ProxyMetrics;
use crate::dps_client::{ProxyState, WorkloadIdentity};

/// The certificate and trust bundle an identity was built from, to tell when to rebuild it.
struct IdentitySource {
    certificate: Arc<WorkloadIdentity>,
    bundle: MeshTrust,
}

/// The mesh's trust bundle in the form the TLS verifier takes.
pub fn trust_bundle(trust: &MeshTrust) -> TrustBundle {
    TrustBundle { roots: trust.roots.clone(), revoked: trust.revoked.clone() }
}

/// What in `config` this sidecar cannot apply, if anything (the reason names it): the DPS
/// client refuses such a configuration (NACK) and keeps the one in force.
pub fn check(config: &ProxyConfig) -> Result<(), String> {
    strait_proxy_core::tls::PeerVerifier::new(&trust_bundle(&config.trust_bundle)).map_err(|e| format!("trustBundle: {e}"))?;
    for inbound in &config.inbounds {
        if let Some((policy, matches)) = inbound.policies.caller_tags_beyond_service() {
            return Err(format!(
                "inbound {}: a {policy} rule selects callers by {matches:?}; {}",
                inbound.port,
                strait_api::support::CALLER_TAGS
            ));
        }
        if let Some(rule) = inbound.policies.timeout.iter().find(|r| !r.matches.is_empty()) {
            return Err(format!(
                "inbound {}: a MeshTimeout rule selects callers by {:?}; {}",
                inbound.port,
                rule.matches,
                strait_api::support::INBOUND_TIMEOUTS
            ));
        }
    }
    Table::check(config)
}

/// Builds the TLS identity from the current certificate and trust bundle.
fn tls_identity(state: &ProxyState) -> Option<(TlsIdentity, IdentitySource)> {
    let identity = state.identity.load_full()?;
    let config = state.config.load_full()?;
    let bundle = trust_bundle(&config.1.trust_bundle);
    let source = IdentitySource { certificate: identity.clone(), bundle: config.1.trust_bundle.clone() };
    match TlsIdentity::from_pem(&identity.cert_chain_pem, &identity.key_pem, &bundle, &[ALPN_HTTP1, ALPN_H2, ALPN_TCP]) {
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

/// Runs the data path on the listeners bound at start: waits for a first identity, accepts
/// on every listener (each then releases its readiness guard), then follows changes.
pub async fn run(state: Arc<ProxyState>, metrics: ProxyMetrics, listeners: Listeners, drain: DrainWatcher, tasks: TaskTracker) {
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
    let configured = accept(listeners, &path);
    configured.follow(&config.1, &path);
    state.applied.store(config.0, Ordering::Release);
    health_check::spawn(&path);
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
                    configured.follow(&config.1, &path);
                    state.applied.store(version, Ordering::Release);
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

/// The inbounds that the configuration brings and no listener of the Dataplane serves (on
/// Kubernetes, all of them: the zone computes them from the Pod's Services, which may change
/// while the sidecar runs). They are served only through the transparent inbound port, by
/// original destination port; their handlers are rebuilt when an inbound changes.
#[derive(Default)]
struct ConfiguredInbounds {
    /// The ports of the bound inbound listeners (those serve themselves).
    bound: std::collections::HashSet<u16>,
    /// The handlers, with what each was built from.
    ports: Arc<ArcSwap<redirected::InboundPorts>>,
    built: std::sync::Mutex<std::collections::HashMap<u16, listeners::Inbound>>,
}

impl ConfiguredInbounds {
    /// Serves the inbounds of `config` that no listener serves, reusing unchanged handlers.
    fn follow(&self, config: &ProxyConfig, path: &Arc<DataPath>) {
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.ports.load();
        let mut ports = redirected::InboundPorts::new();
        let mut wanted = std::collections::HashMap::new();
        for i in config.inbounds.iter().filter(|i| !self.bound.contains(&i.port)) {
            let Ok(ip) = i.service_address.parse::<std::net::IpAddr>() else { continue };
            let serves = listeners::Inbound {
                port: i.port,
                service: i.service.clone(),
                protocol: i.protocol,
                forward_to: std::net::SocketAddr::new(ip, i.service_port),
            };
            let reuse = built
                .get(&i.port)
                .is_some_and(|b| b.service == serves.service && b.protocol == serves.protocol && b.forward_to == serves.forward_to);
            let handler = match previous.get(&i.port).filter(|_| reuse) {
                Some(existing) => existing.clone(),
                None => inbound::handler(&serves, path),
            };
            ports.insert(i.port, handler);
            wanted.insert(i.port, serves);
        }
        *built = wanted;
        self.ports.store(Arc::new(ports));
    }
}

/// Starts accepting on every listener (each releases its readiness guard once it does).
fn accept(listeners: Listeners, path: &Arc<DataPath>) -> ConfiguredInbounds {
    // Each inbound's handler serves its own port and, by original destination port, the
    // transparent inbound port.
    let mut by_port = std::collections::HashMap::new();
    let mut configured = ConfiguredInbounds::default();
    for bound in listeners.inbound {
        let (handler, span) = inbound::handler(&bound.serves, path);
        by_port.insert(bound.serves.port, (handler.clone(), span.clone()));
        configured.bound.insert(bound.serves.port);
        bound.serve(|listener, _| inbound::serve(listener, handler, span, path));
    }
    for bound in listeners.outbound {
        bound.serve(|listener, serves| outbound::serve(listener, serves, path));
    }
    if let Some(bound) = listeners.redirected {
        bound.serve(|listener, ()| redirected::serve(listener, path));
    }
    if let Some(bound) = listeners.redirected_inbound {
        let configured_ports = configured.ports.clone();
        bound.serve(|listener, ()| redirected::serve_inbound(listener, by_port, configured_ports, path));
    }
    configured
}
