//! Inbound: mTLS from other sidecars on the inbound port, the caller's SPIFFE ID checked
//! against the MeshTrafficPermission rules of the current configuration, then the bytes (TCP)
//! or the requests (HTTP, see [`super::http::inbound`]) forwarded to the application.

use std::collections::BTreeMap;
use std::sync::Arc;

use strait_api::proxy_config::InboundConfig;
use strait_api::ResourceType;
use strait_pki::Identity;
use strait_proxy_core::tunnel::inbound;

use super::destinations::Protocol;
use super::DataPath;
use crate::dps_client::ProxyState;

/// Whether the current configuration lets `caller` reach inbound `port`. No matching rule
/// means deny (a new Mesh has an allow-all permission that users may delete).
pub fn allowed(state: &ProxyState, port: u16, caller: &Identity) -> bool {
    let config = state.config.load();
    let Some(config) = config.as_ref() else { return false };
    let Some(inbound) = config.1.inbounds.iter().find(|i| i.port == port) else { return false };
    let Some(rules) = inbound.policies.get(&ResourceType::MeshTrafficPermission) else { return false };
    // The caller's identity is spiffe://<mesh>/<service>; callers from another mesh never match.
    if caller.trust_domain() != config.1.mesh {
        return false;
    }
    let tags: BTreeMap<String, String> =
        [(strait_api::names::SERVICE_TAG.to_string(), caller.path().trim_start_matches('/').to_string())].into();
    match rules.iter().find(|r| r.applies_to(&tags)).and_then(|r| r.conf.get("action")).and_then(|a| a.as_str()) {
        Some("Allow") => true,
        Some("AllowWithShadowDeny") => {
            tracing::info!(caller = %caller, port, "shadow deny: allowed, but a Deny would have refused it");
            true
        }
        _ => false,
    }
}

/// Binds the inbound port and serves it until drained.
pub async fn start(config: &InboundConfig, path: &Arc<DataPath>) {
    let bind = std::net::SocketAddr::from(([0, 0, 0, 0], config.port));
    let app = format!("{}:{}", config.service_address, config.service_port);
    let Ok(forward_to) = app.parse() else {
        tracing::error!(app, "the application address is not an IP address and port");
        return;
    };
    let listener = match tokio::net::TcpListener::bind(bind).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(port = config.port, error = %e, "cannot listen on the inbound port");
            return;
        }
    };
    let protocol = Protocol::from_tag(&config.protocol);
    tracing::info!(port = config.port, service = %config.service, app = %forward_to, ?protocol, "inbound listening");
    let port = config.port;
    let state = path.state.clone();
    let authorize = move |caller: &Identity| {
        let ok = allowed(&state, port, caller);
        if !ok {
            tracing::debug!(caller = %caller, port, "denied by MeshTrafficPermission");
        }
        ok
    };
    let mut inbound_config = inbound::InboundConfig::new(forward_to);
    // HTTP/1.1 callers over a TCP tunnel get a 403 that says why; TCP callers see the
    // connection closed. HTTP/2 sessions between sidecars are authorised per request.
    inbound_config.deny_with_http_403 = protocol == Protocol::Http;
    if protocol.is_http() {
        inbound_config.h2 = Some(super::http::inbound::handler(path.clone(), port, config.service.clone(), forward_to, protocol));
    }
    let (identities, metrics, drain) = (path.identities.clone(), path.metrics.inbound.clone(), path.drain.clone());
    path.tasks.spawn(inbound::serve(listener, identities, inbound_config, authorize, metrics, drain));
}
