//! The transparent outbound listener: connections that iptables redirected here (see
//! `strait-dp transparent-proxy install`) are sent on by their original destination. A
//! destination that is an endpoint of a mesh service goes over mTLS to that endpoint, which must
//! present the service's SPIFFE ID; anything else passes through unchanged.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use strait_pki::Identity;
use strait_proxy_core::drain::DrainWatcher;
use strait_proxy_core::identity::IdentityStore;
use strait_proxy_core::orig_dst::original_dst;
use strait_proxy_core::tls::ALPN_TCP;
use strait_proxy_core::tunnel::{outbound, TunnelMetrics};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::dps_client::ProxyState;

/// The mesh service whose endpoint is `dst`, if any.
pub fn service_of(state: &ProxyState, dst: SocketAddr) -> Option<(String, String)> {
    let config = state.config.load();
    let config = &config.as_ref()?.1;
    config
        .outbounds
        .iter()
        .find(|o| o.endpoints.iter().any(|e| e.port == dst.port() && e.address.parse::<std::net::IpAddr>().ok() == Some(dst.ip())))
        .map(|o| (config.mesh.clone(), o.service.clone()))
}

/// Listens on 127.0.0.1:`port` until drained.
pub async fn start(
    port: u16,
    state: Arc<ProxyState>,
    identities: Arc<IdentityStore>,
    metrics: TunnelMetrics,
    drain: DrainWatcher,
    tasks: &TaskTracker,
) {
    let bind = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = match tokio::net::TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%bind, error = %e, "cannot listen on the transparent outbound port");
            return;
        }
    };
    tracing::info!(%bind, "transparent outbound listening");
    let tracker = tasks.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = drain.signaled() => return,
                a = listener.accept() => a,
            };
            let Ok((app, _)) = accepted else { continue };
            let dst = match original_dst(&app) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "a connection reached the transparent port without an original destination; closing it");
                    continue;
                }
            };
            let (state, identities, metrics, drain) = (state.clone(), identities.clone(), metrics.clone(), drain.clone());
            tracker.spawn(async move {
                drain.unless_forced(proxy(app, dst, &state, &identities, &metrics)).await;
            });
        }
    });
}

async fn proxy(mut app: TcpStream, dst: SocketAddr, state: &ProxyState, identities: &IdentityStore, metrics: &TunnelMetrics) {
    match service_of(state, dst) {
        Some((mesh, service)) => {
            let (Ok(expected), Ok(sni)) =
                (Identity::parse(&strait_pki::spiffe_id(&mesh, &service)), ServerName::try_from(format!("{service}.{mesh}.strait")))
            else {
                return;
            };
            let client = identities.current().client_config(&expected, ALPN_TCP);
            if let Err(e) = outbound::forward(app, dst, client, sni, &outbound::ForwardOptions::default(), metrics).await {
                tracing::debug!(service, %dst, error = %e, "transparent outbound connection failed");
            }
        }
        None => {
            // Not a mesh endpoint: pass it through as it was (our own connection is not redirected).
            match TcpStream::connect(dst).await {
                Ok(mut upstream) => {
                    let _ = strait_proxy_core::copy::copy_bidirectional(&mut app, &mut upstream, &Default::default()).await;
                }
                Err(e) => tracing::debug!(%dst, error = %e, "passthrough connection failed"),
            }
        }
    }
}
