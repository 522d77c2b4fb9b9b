//! Inbound: the listener of an inbound port. mTLS from other sidecars, the caller's SPIFFE
//! ID checked by [`super::authorization`], then the bytes (TCP) or the requests (HTTP, see
//! [`super::http::inbound`]) forwarded to the application.
//!
//! In: an inbound of the configuration and the shared [`DataPath`]. Out: an accept loop, owned
//! by the data path's task tracker, that serves the port until drained.

use std::sync::Arc;

use strait_api::proxy_config::InboundConfig;
use strait_proxy_core::tunnel::inbound;

use super::authorization;
use super::data_path::DataPath;
use super::destinations::Protocol;

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
    let authorize = authorization::for_port(path.state.clone(), port);
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
