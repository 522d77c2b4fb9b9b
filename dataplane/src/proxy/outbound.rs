//! Explicit outbounds: a local port per destination service. HTTP destinations are proxied
//! request by request (see [`super::http::outbound`]); TCP ones connection by connection, over
//! mTLS to an endpoint picked by the destination's load balancer, which must present the
//! service's SPIFFE ID.
//!
//! In: a bound outbound listener (see [`super::listeners`]), and the application's
//! connections to it. Out: an accept loop owned by the data path's task tracker, and
//! [`spawn_tcp`], the TCP tunnel that the redirected listener ([`super::redirected`]) uses too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_proxy_core::tls::ALPN_TCP;
use strait_proxy_core::tunnel::outbound::{self, OutboundError};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::access_log;
use super::data_path::DataPath;
use super::destinations::{Destination, Table};
use super::endpoint::Outcome;
use super::listeners::Outbound;
use super::metrics::{Direction, Pair, Peer};

/// Proxies the connections of the outbound `listener` until drained.
pub fn serve(listener: TcpListener, config: Outbound, path: &Arc<DataPath>) {
    let service: Arc<str> = config.service.as_str().into();
    tracing::info!(address = ?listener.local_addr().ok(), %service, "outbound accepting");
    let path = path.clone();
    path.clone().tasks.spawn(async move {
        loop {
            let Some((app, client)) = path.accept(&listener).await else { return };
            let table = path.table.load();
            if table.can_serve(&service) {
                dispatch(&table, app, client, &service, &path);
                continue;
            }
            // Nowhere to go yet (the zone has not sent an endpoint of it: no instance is
            // registered yet, or the configuration is on its way): the connection waits for
            // one rather than being closed, so an application that calls as soon as it starts
            // is answered.
            let (service, waiting) = (service.clone(), path.clone());
            path.tasks.spawn(async move {
                if !servable_within(&waiting, &service, WAIT_FOR_DESTINATION).await {
                    tracing::warn!(%service, %client, wait = ?WAIT_FOR_DESTINATION,
                        "still no endpoint of the destination in the configuration; a TCP connection is closed, a request answered 503");
                }
                dispatch(&waiting.table.load(), app, client, &service, &waiting);
            });
        }
    });
}

/// Proxies an accepted connection to `service` as its destination's protocol in `table` says;
/// closes it if the configuration no longer names it.
fn dispatch(table: &Table, app: TcpStream, client: SocketAddr, service: &Arc<str>, path: &Arc<DataPath>) {
    match table.service(service) {
        Some(destination) if destination.protocol.is_http() => super::http::outbound::spawn(app, client, service.clone(), path),
        Some(destination) => spawn_tcp(app, client, table.tcp_backend(destination.clone()), None, path),
        None => tracing::warn!(%service, %client, "the destination is gone from the configuration; closing the connection"),
    }
}

/// How long a connection to an outbound with nowhere to go waits for an endpoint before it is
/// proxied anyway (a TCP connection then closes; an HTTP request is answered 503).
pub const WAIT_FOR_DESTINATION: Duration = Duration::from_secs(5);

/// Whether `service` has somewhere to go within `limit` (see
/// [`super::destinations::Table::can_serve`]; false also once the data path drains). The
/// table is rebuilt a moment after the zone's configuration arrives, so it is looked at again
/// after each change of the state and at least every 50 ms.
async fn servable_within(path: &DataPath, service: &str, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut changed = path.state.changed.subscribe();
    loop {
        if path.table.load().can_serve(service) {
            return true;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::select! {
            () = path.drain.signaled() => return false,
            changed = changed.changed() => {
                // The state is gone (the sidecar stops): only the deadline or the drain is left.
                if changed.is_err() {
                    tokio::time::sleep(deadline - now).await;
                }
            }
            () = tokio::time::sleep((deadline - now).min(Duration::from_millis(50))) => {}
        }
    }
}

/// Tunnels `app` (connected from `client`) over mTLS to an endpoint of `destination` (or to
/// `target`, when the application addressed one directly through transparent interception).
pub fn spawn_tcp(app: TcpStream, client: SocketAddr, destination: Arc<Destination>, target: Option<SocketAddr>, path: &Arc<DataPath>) {
    // Every line of the connection names the destination and the application's socket; the
    // endpoint once connected.
    let span = tracing::info_span!("outbound", service = %destination.service, %client, endpoint = tracing::field::Empty);
    let task_path = path.clone();
    let connection = async move {
        let path = task_path;
        let copy = strait_proxy_core::copy::CopyOptions { idle_timeout: destination.timeouts.idle, ..Default::default() };
        let options = outbound::ForwardOptions { connect_timeout: destination.timeouts.connect, copy };
        let metrics = &path.metrics.outbound;
        // MeshCircuitBreaker `maxConnections`: beyond it, the connection is closed at once.
        if let Some(max) = destination.limits.max_connections {
            let open: usize = destination.endpoints().map(|e| e.in_flight()).sum();
            if open >= max {
                destination.metrics.overflows.inc();
                tracing::warn!(open, max, "closing the connection: MeshCircuitBreaker connectionLimits.maxConnections reached");
                return;
            }
        }
        // Open connections finish during a drain, and are cut when it is forced.
        path.drain
            .unless_forced(async {
                for attempt in 1..=destination.connect_attempts {
                    let endpoint = match target {
                        Some(t) => destination.endpoints().find(|e| e.address == t).cloned(),
                        None => destination.pick_for(destination.connection_key(client.ip())).cloned(),
                    };
                    let Some(endpoint) = endpoint else {
                        tracing::warn!("no endpoint for the destination; closing the connection");
                        return;
                    };
                    let _in_flight = endpoint.start();
                    let config = path.identities.current().client_config(&destination.expected, ALPN_TCP);
                    metrics.connections.inc();
                    let started = std::time::Instant::now();
                    let upstream = match outbound::connect(endpoint.address, config, endpoint.sni.clone(), options.connect_timeout).await {
                        Ok(u) => u,
                        Err(e) => {
                            endpoint.health.failed();
                            destination.record(&endpoint, Outcome::LocalOrigin);
                            if matches!(e, OutboundError::IdentityMismatch { .. } | OutboundError::Handshake { .. }) {
                                metrics.handshake_errors.inc();
                            }
                            tracing::debug!(target = %endpoint.address, attempt, error = %e, "outbound connect failed");
                            if target.is_some() {
                                return;
                            }
                            continue;
                        }
                    };
                    endpoint.health.connected(started.elapsed());
                    destination.record(&endpoint, Outcome::Connected);
                    tracing::Span::current().record("endpoint", tracing::field::display(endpoint.address));
                    let begun = std::time::SystemTime::now();
                    let copied = match outbound::forward_connected(app, upstream, &options, metrics).await {
                        Ok(copied) => copied,
                        Err(e) => {
                            tracing::debug!(error = %e, "outbound connection failed");
                            match e {
                                outbound::ForwardError::Copy(copy) => copy.copied(),
                                outbound::ForwardError::Connect(_) => Default::default(),
                            }
                        }
                    };
                    let table = path.table.load();
                    let local = &table.local;
                    path.metrics.tcp_closed(
                        Pair {
                            direction: Direction::Outbound,
                            mesh: &local.mesh,
                            source: Peer { service: &local.service, zone: &local.zone },
                            destination: Peer { service: &destination.service, zone: &endpoint.zone },
                            protocol: "tcp",
                        },
                        copied.a_to_b,
                        copied.b_to_a,
                    );
                    // MeshAccessLog `to`: a line per connection, once it has closed.
                    if let Some(log) = &destination.access_log {
                        log.log(access_log::Entry {
                            start: Some(begun),
                            direction: "outbound",
                            mesh: Some(local.mesh.clone()),
                            source_service: Some(local.service.clone()),
                            source_zone: Some(local.zone.clone()),
                            destination_service: Some(destination.service.clone()),
                            destination_zone: Some(endpoint.zone.clone()),
                            protocol: "tcp",
                            duration: started.elapsed(),
                            bytes_received: copied.a_to_b,
                            bytes_sent: copied.b_to_a,
                            upstream: Some(endpoint.address),
                            ..Default::default()
                        });
                    }
                    return;
                }
            })
            .await;
    };
    path.tasks.spawn(connection.instrument(span));
}
