//! Inbound: the listener of an inbound port. mTLS from other sidecars, the caller's SPIFFE
//! ID checked by [`super::authorization`], then the bytes (TCP) or the requests (HTTP, see
//! [`super::http::inbound`]) forwarded to the application.
//!
//! In: a bound inbound listener (see [`super::listeners`]) and the shared [`DataPath`]. Out:
//! an accept loop, owned by the data path's task tracker, that serves the port until drained.

use std::sync::Arc;

use strait_proxy_core::tunnel::inbound;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::authorization;
use super::data_path::DataPath;
use super::destinations::Protocol;
use super::listeners::Inbound;

/// Serves the inbound `listener` until drained.
pub fn serve(listener: TcpListener, config: Inbound, path: &Arc<DataPath>) {
    let Inbound { port, service, protocol, forward_to } = config;
    // The parent of every connection's span: each line of the port names its service.
    let span = tracing::info_span!("inbound", %service, port);
    span.in_scope(|| tracing::info!(app = %forward_to, ?protocol, "inbound accepting"));
    let authorize = authorization::for_port(path.state.clone(), port);
    let mut inbound_config = inbound::InboundConfig::new(forward_to);
    // HTTP/1.1 callers over a TCP tunnel get a 403 that says why; TCP callers see the
    // connection closed. HTTP/2 sessions between sidecars are authorised per request.
    inbound_config.deny_with_http_403 = protocol == Protocol::Http;
    if protocol.is_http() {
        inbound_config.h2 = Some(super::http::inbound::handler(path.clone(), port, service, forward_to, protocol));
    }
    let (identities, metrics, drain) = (path.identities.clone(), path.metrics.inbound.clone(), path.drain.clone());
    path.tasks.spawn(inbound::serve(listener, identities, inbound_config, authorize, metrics, drain).instrument(span));
}
