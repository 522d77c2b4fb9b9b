//! Explicit outbounds: a local port per destination service; each connection goes over mTLS
//! to an endpoint of the service, picked round robin from the current configuration, and the
//! peer must present the service's SPIFFE ID.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use strait_api::proxy_config::OutboundConfig;
use strait_pki::Identity;
use strait_proxy_core::drain::DrainWatcher;
use strait_proxy_core::identity::IdentityStore;
use strait_proxy_core::tls::ALPN_TCP;
use strait_proxy_core::tunnel::{outbound, TunnelMetrics};
use tokio_util::task::TaskTracker;

use crate::dps_client::ProxyState;

/// Binds the outbound's local port and proxies its connections until drained.
pub async fn start(
    config: &OutboundConfig,
    state: Arc<ProxyState>,
    identities: Arc<IdentityStore>,
    metrics: TunnelMetrics,
    drain: DrainWatcher,
    tasks: &TaskTracker,
) {
    let (Some(port), Some(address)) = (config.port, config.address.as_deref()) else { return };
    let Ok(bind) = format!("{address}:{port}").parse::<std::net::SocketAddr>() else {
        tracing::error!(address, port, "the outbound address is not an IP address");
        return;
    };
    let listener = match tokio::net::TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%bind, error = %e, "cannot listen on the outbound port");
            return;
        }
    };
    let mesh = state.config.load().as_ref().map(|c| c.1.mesh.clone()).unwrap_or_default();
    let service = config.service.clone();
    let Ok(expected) = Identity::parse(&strait_pki::spiffe_id(&mesh, &service)) else { return };
    let Ok(sni) = ServerName::try_from(format!("{service}.{mesh}.strait")) else { return };
    tracing::info!(%bind, service, "outbound listening");
    let next = Arc::new(AtomicUsize::new(0));
    let tracker = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => return,
                a = listener.accept() => a,
            };
            let Ok((app, _)) = accepted else { continue };
            let Some(target) = pick(&state, &service, &next) else {
                tracing::warn!(service, "no endpoint for the destination; closing the connection");
                continue;
            };
            let client = identities.current().client_config(&expected, ALPN_TCP);
            let (sni, metrics, drain) = (sni.clone(), metrics.clone(), drain.clone());
            let service = service.clone();
            tracker.spawn(async move {
                // Open connections finish during a drain, and are cut when it is forced.
                let forwarded =
                    drain.unless_forced(outbound::forward(app, target, client, sni, &outbound::ForwardOptions::default(), &metrics)).await;
                if let Some(Err(e)) = forwarded {
                    tracing::debug!(service, %target, error = %e, "outbound connection failed");
                }
            });
        }
    });
}

/// The next endpoint of `service`, round robin over the current configuration.
fn pick(state: &ProxyState, service: &str, next: &AtomicUsize) -> Option<std::net::SocketAddr> {
    let config = state.config.load();
    let endpoints = &config.as_ref()?.1.outbounds.iter().find(|o| o.service == service)?.endpoints;
    if endpoints.is_empty() {
        return None;
    }
    let e = &endpoints[next.fetch_add(1, Ordering::Relaxed) % endpoints.len()];
    format!("{}:{}", e.address, e.port).parse().ok()
}
