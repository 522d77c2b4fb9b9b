//! Redirected traffic. Outbound: the listener on the Dataplane's `redirectPortOutbound` (15001), where
//! iptables sends the application's connections (the rules are `crate::transparent`'s,
//! installed by `strait-dp transparent-proxy install`). Each is sent on by its original
//! destination. A destination that is an endpoint of a mesh service goes over mTLS to the
//! service, whose endpoints must present its SPIFFE ID: a TCP connection to that very
//! endpoint, HTTP requests to any endpoint of the service, picked per request by its load
//! balancer. Anything else passes through unchanged. Inbound: the listener on
//! `redirectPortInbound` (15006), where iptables sends every TCP connection arriving from other
//! hosts: each goes to the inbound whose port is its original destination port, which requires
//! mTLS and enforces permissions as on that port itself; a connection to any other port (the
//! application's own port, in plain text) is closed.
//!
//! In: the bound redirect listener (see [`super::listeners`]), the connections redirected to
//! it, and the destination table's by-address index. Out: an accept loop owned by the data
//! path's task tracker.

use std::net::SocketAddr;
use std::sync::Arc;

use strait_proxy_core::orig_dst::original_dst;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use super::data_path::DataPath;

/// Sends on the connections redirected to `listener` until drained.
pub fn serve(listener: TcpListener, path: &Arc<DataPath>) {
    tracing::info!(address = ?listener.local_addr().ok(), "redirected outbound accepting");
    let path = path.clone();
    path.clone().tasks.spawn(async move {
        loop {
            let Some((app, client)) = path.accept(&listener).await else { return };
            let dst = match original_dst(&app) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%client, error = %e, "a connection reached the transparent port without an original destination; closing it");
                    continue;
                }
            };
            // A connection made straight to this port, not redirected, has the port itself as
            // its original destination: passing it through would connect the sidecar to itself,
            // again and again, until it runs out of descriptors.
            if app.local_addr().is_ok_and(|local| local == dst) {
                tracing::warn!(%client, %dst, "refused a connection made straight to the transparent outbound port (its original destination is this proxy)");
                continue;
            }
            let table = path.table.load();
            match table.by_address(dst).cloned() {
                Some(d) if d.protocol.is_http() => super::http::outbound::spawn(app, client, (*d.service).into(), &path),
                Some(d) => {
                    // A MeshTCPRoute sends the connection to a backend it picks; without one,
                    // to the endpoint the application dialled.
                    let backend = table.tcp_backend(d.clone());
                    let target = Arc::ptr_eq(&backend, &d).then_some(dst);
                    super::outbound::spawn_tcp(app, client, backend, target, &path)
                }
                None => passthrough(app, client, dst, &path),
            }
        }
    });
}

/// Not a mesh endpoint: passes the connection through as it was (the sidecar's own
/// connection is not redirected again).
fn passthrough(mut app: TcpStream, client: SocketAddr, dst: SocketAddr, path: &Arc<DataPath>) {
    let span = tracing::info_span!("passthrough", %client, %dst);
    let drain = path.drain.clone();
    let connection = async move {
        let copy = async {
            match TcpStream::connect(dst).await {
                Ok(mut upstream) => {
                    let _ = strait_proxy_core::copy::copy_bidirectional(&mut app, &mut upstream, &Default::default()).await;
                }
                Err(e) => tracing::debug!(error = %e, "passthrough connection failed"),
            }
        };
        drain.unless_forced(copy).await;
    };
    path.tasks.spawn(connection.instrument(span));
}

/// Inbound handlers by port.
pub type InboundPorts = std::collections::HashMap<u16, (Arc<super::inbound::Handler>, tracing::Span)>;

/// Hands each connection redirected to `listener` to the inbound of its original destination
/// port: one of the Dataplane's listeners (`by_port`), else one the configuration brings
/// (`configured`, current at each connection), until drained; connections to a port no
/// inbound serves are refused.
pub fn serve_inbound(listener: TcpListener, by_port: InboundPorts, configured: Arc<arc_swap::ArcSwap<InboundPorts>>, path: &Arc<DataPath>) {
    tracing::info!(address = ?listener.local_addr().ok(), ports = ?by_port.keys().collect::<Vec<_>>(), "redirected inbound accepting");
    let path = path.clone();
    path.clone().tasks.spawn(async move {
        loop {
            let Some((stream, client)) = path.accept(&listener).await else { return };
            let dst = match original_dst(&stream) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%client, error = %e, "a connection reached the transparent inbound port without an original destination; closing it");
                    continue;
                }
            };
            let handler = by_port.get(&dst.port()).cloned().or_else(|| configured.load().get(&dst.port()).cloned());
            let Some((handler, span)) = handler.filter(|_| stream.local_addr().ok() != Some(dst)) else {
                // The application's own port (in plain text, bypassing mTLS), or this port itself.
                path.metrics.inbound.denied.inc();
                tracing::info!(%client, %dst, "refused an inbound connection: no inbound serves its destination port, and the application is reached only through mTLS");
                continue;
            };
            let (identities, drain) = (path.identities.clone(), path.drain.clone());
            path.tasks.spawn(async move { handler.connection(stream, client, &identities, &drain).await }.instrument(span));
        }
    });
}
