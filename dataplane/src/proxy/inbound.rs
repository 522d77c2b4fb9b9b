//! Inbound: the listener of an inbound port. mTLS from other sidecars, the caller's SPIFFE
//! ID checked by [`super::authorization`], then the bytes (TCP) or the requests (HTTP, see
//! [`super::http::inbound`]) forwarded to the application. The transparent inbound port
//! ([`super::redirected::serve_inbound`]) hands each connection to the same handler, chosen
//! by the connection's original destination port.
//!
//! In: a bound inbound listener (see [`super::listeners`]) and the shared [`DataPath`]. Out:
//! an accept loop, owned by the data path's task tracker, that serves the port until drained.

use std::sync::Arc;

use strait_pki::Identity;
use strait_proxy_core::tunnel::inbound;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::authorization;
use super::data_path::DataPath;
use super::destinations::Protocol;
use super::listeners::Inbound;
use super::metrics::{Direction, Pair, Peer};

/// The authorization check of one inbound port.
pub type Authorize = Box<dyn Fn(&Identity) -> bool + Send + Sync>;

/// What serves the connections of one inbound.
pub type Handler = inbound::Handler<Authorize>;

/// The handler of inbound `config`, and the span its lines go to.
pub fn handler(config: &Inbound, path: &Arc<DataPath>) -> (Arc<Handler>, tracing::Span) {
    let Inbound { port, service, protocol, forward_to } = config.clone();
    // The parent of every connection's span: each line of the port names its service.
    let span = tracing::info_span!("inbound", %service, port);
    span.in_scope(|| tracing::info!(app = %forward_to, ?protocol, "inbound accepting"));
    let permission = authorization::for_port(path.state.clone(), port);
    // MeshRateLimit `tcp.connectionRate`: a TCP caller over its limit sees the connection
    // closed (HTTP requests are limited one by one, see `http::inbound`).
    let authorize: Authorize = if protocol.is_http() {
        Box::new(permission)
    } else {
        let (limited_path, service) = (path.clone(), service.clone());
        Box::new(move |caller: &Identity| permission(caller) && connection_allowed(&limited_path, port, &service, caller))
    };
    let mut inbound_config = inbound::InboundConfig::new(forward_to);
    // HTTP/1.1 callers over a TCP tunnel get a 403 that says why; TCP callers see the
    // connection closed. HTTP/2 sessions between sidecars are authorised per request.
    inbound_config.deny_with_http_403 = protocol == Protocol::Http;
    // MeshTimeout `from`: each tunnel connects to the application and idles within the limits
    // in force when it is accepted.
    let state = path.state.clone();
    inbound_config.timeouts = Some(inbound::TunnelTimeouts(Arc::new(move || {
        let timeouts = super::timeouts::of_inbound(&state, port);
        (timeouts.connect, timeouts.idle)
    })));
    // Metrics and MeshAccessLog `from`: a line per TCP connection, once it has closed.
    let (closed_path, closed_service, app) = (path.clone(), service.clone(), forward_to);
    inbound_config.on_closed = Some(inbound::TunnelClosed(Arc::new(move |closed| {
        let caller = closed.peer.path().trim_start_matches('/');
        let caller_zone = closed.peer_zone.unwrap_or_default();
        let table = closed_path.table.load();
        closed_path.metrics.tcp_closed(
            Pair {
                direction: Direction::Inbound,
                mesh: &table.local.mesh,
                source: Peer { service: caller, zone: caller_zone },
                destination: Peer { service: &closed_service, zone: &table.local.zone },
                protocol: "tcp",
            },
            closed.copied.a_to_b,
            closed.copied.b_to_a,
        );
        let Some(log) = table.inbound(port).and_then(|rules| rules.access_log(caller)) else { return };
        log.log(super::access_log::Entry {
            start: Some(closed.begun),
            direction: "inbound",
            mesh: Some(table.local.mesh.clone()),
            source_service: Some(caller.into()),
            source_zone: Some(caller_zone.into()),
            destination_service: Some(closed_service.as_str().into()),
            destination_zone: Some(table.local.zone.clone()),
            protocol: "tcp",
            duration: closed.duration,
            bytes_received: closed.copied.a_to_b,
            bytes_sent: closed.copied.b_to_a,
            upstream: Some(app),
            ..Default::default()
        });
    })));
    if protocol.is_http() {
        inbound_config.http = Some(super::http::inbound::handler(path.clone(), port, service, forward_to, protocol));
    }
    (Arc::new(inbound::Handler::new(inbound_config, authorize, path.metrics.inbound.clone())), span)
}

/// Whether a MeshRateLimit of inbound `port` lets `caller` open one more connection.
fn connection_allowed(path: &DataPath, port: u16, service: &str, caller: &Identity) -> bool {
    let caller = caller.path().trim_start_matches('/');
    let table = path.table.load();
    let Some(limit) = table.inbound(port).and_then(|rules| rules.rate_limit(caller)) else { return true };
    match limit.connections.as_ref().map(|l| l.acquire()) {
        Some(Err(_)) => {
            let pair = Pair {
                direction: Direction::Inbound,
                mesh: &table.local.mesh,
                source: Peer { service: caller, zone: "" },
                destination: Peer { service, zone: &table.local.zone },
                protocol: "tcp",
            };
            path.metrics.pair(pair).rate_limited.inc();
            tracing::debug!(caller, limit = limit.describe_connections(), "connection over the rate limit (MeshRateLimit): closed");
            false
        }
        _ => true,
    }
}

/// Serves the inbound `listener` with `handler` until drained.
pub fn serve(listener: TcpListener, handler: Arc<Handler>, span: tracing::Span, path: &Arc<DataPath>) {
    let (identities, drain) = (path.identities.clone(), path.drain.clone());
    path.tasks.spawn(inbound::serve_with(listener, identities, handler, drain).instrument(span));
}
