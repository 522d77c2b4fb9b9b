//! Zone egress: this zone's sidecars send their end-to-end mTLS connections for other zones
//! here. The egress reads the SNI from the ClientHello without consuming or terminating it,
//! picks the zone (named in the SNI by the sidecar, or any zone hosting the service, QUIC ones
//! first), opens a stream on that zone's QUIC connection (TCP+TLS when QUIC is down), sends
//! the header and then the bytes, unchanged, both ways.
//!
//! In: accepted TCP connections. Out: tunnelled connections, counted per zone and service.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use strait_api::gateway_config::parse_sni;
use strait_pki::Identity;
use strait_proxy_core::copy::copy_bidirectional;
use strait_proxy_core::sni::peek_client_hello;
use strait_proxy_core::tls::ALPN_ZONE_TUNNEL;
use strait_proxy_core::DrainWatcher;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::header::{self, Answered};
use crate::metrics::StreamLabels;
use crate::quic::Io;
use crate::routes::Routes;
use crate::Gateway;

const DIRECTION: &str = "egress";
/// How long a sidecar may take to send its ClientHello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP connect plus TLS handshake of the fallback.
const FALLBACK_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts sidecars' connections until the drain starts.
pub async fn serve(gw: Arc<Gateway>, listener: TcpListener, drain: DrainWatcher) {
    loop {
        let accepted = tokio::select! {
            () = drain.signaled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((client, address)) => {
                let _ = client.set_nodelay(true);
                // This zone, the sidecar, and what it asks for once its ClientHello is read.
                let zone = gw.routes.load().zone.clone();
                let span = tracing::info_span!("egress", zone, client = %address, sni = Empty, peer_zone = Empty, transport = Empty);
                let (task, drain) = (gw.clone(), drain.clone());
                gw.tasks.spawn(
                    async move {
                        drain.unless_forced(handle(task, client)).await;
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "egress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(gw: Arc<Gateway>, mut client: TcpStream) {
    let span = Span::current();
    // Only this zone's sidecars, by the addresses they registered, may send through the egress
    // (and processes of the gateway's own host, which holds the zone identity anyway: there a
    // connection's source is the address it reached).
    let allowed = match (client.peer_addr(), client.local_addr()) {
        (Ok(peer), Ok(local)) => gw.routes.load().is_sidecar(peer.ip()) || peer.ip() == local.ip(),
        _ => false,
    };
    if !allowed {
        tracing::info!("egress: refused a client that is not a sidecar of this zone");
        gw.metrics.refuse(DIRECTION, "not_a_sidecar");
        return;
    }
    let sni = match peek_client_hello(&client, HELLO_TIMEOUT).await {
        Ok(hello) => hello.server_name,
        Err(e) => {
            tracing::debug!(error = %e, "egress: no ClientHello");
            gw.metrics.refuse(DIRECTION, "no_client_hello");
            return;
        }
    };
    let Some(sni) = sni else {
        tracing::debug!("egress: no SNI");
        gw.metrics.refuse(DIRECTION, "no_sni");
        return;
    };
    span.record("sni", sni.as_str());
    let Some(target) = parse_sni(&sni) else {
        tracing::debug!("egress: not a mesh SNI");
        gw.metrics.refuse(DIRECTION, "bad_sni");
        return;
    };
    let routes = gw.routes.load_full();
    let key = format!("{}.{}", target.service, target.mesh);
    let Some(zone) = pick_zone(&gw, &routes, &key, target.zone) else {
        tracing::debug!("egress: no other zone hosts this service");
        gw.metrics.refuse(DIRECTION, "no_zone");
        return;
    };
    span.record("peer_zone", zone.as_str());
    let (tunnel, transport, peer_leaf) = match open(&gw, &routes, &zone, &sni).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "egress: cannot reach the zone");
            gw.metrics.refuse(DIRECTION, "zone_unreachable");
            return;
        }
    };
    span.record("transport", transport);
    // A zone-qualified SNI may name any service: only those the zone is known to host are
    // labels, the rest are `other`, so clients cannot grow the label set.
    let service = if routes.zones_hosting(&key).contains(&zone) { key.clone() } else { "other".to_string() };
    let labels = StreamLabels::new(DIRECTION, &routes.zone, &zone, &service, transport);
    gw.metrics.streams.get_or_create(&labels).inc();
    let active = crate::metrics::ActiveTunnel::open(&gw.metrics, DIRECTION);
    let mut tunnel = Answered::new(tunnel);
    // A zone disabled on the global, or whose identity is revoked, loses its tunnels at once
    // (a zone whose gateway drains keeps them: they finish on their own).
    let withdrawn = gw.cut_when(|routes| {
        if routes.is_disabled(&zone) {
            return Some("disabled_zone");
        }
        peer_leaf.as_ref().and_then(|leaf| routes.refusal(leaf)).map(|r| r.reason())
    });
    let copied = tokio::select! {
        copied = copy_bidirectional(&mut client, &mut tunnel, &gw.copy) => copied,
        reason = withdrawn => {
            drop(active);
            tracing::warn!(reason, "closing a tunnel to a disabled or revoked zone");
            gw.metrics.refuse(DIRECTION, reason);
            return;
        }
    };
    drop(active);
    let moved = match &copied {
        Ok(c) => *c,
        Err(e) => {
            tracing::debug!(error = %e, "egress connection ended with an error");
            e.copied()
        }
    };
    gw.metrics.count_bytes(&labels, moved.a_to_b, moved.b_to_a);
}

/// The zone a connection goes to: the one the sidecar named, else any zone hosting the
/// service, those with QUIC up first.
fn pick_zone(gw: &Gateway, routes: &Routes, key: &str, named: Option<&str>) -> Option<String> {
    if let Some(zone) = named {
        return (zone != routes.zone && !routes.ingress(zone).is_empty()).then(|| zone.to_string());
    }
    let hosting = routes.zones_hosting(key);
    hosting.iter().find(|z| gw.links.get(z).is_some_and(|l| l.connection().is_some())).or_else(|| hosting.first()).cloned()
}

/// Opens a tunnelled connection to `zone` and sends its header: a stream of the zone's QUIC
/// connection, or a TCP+TLS connection when that is down.
/// Also returns the peer ingress's certificate for a TCP fallback (a QUIC stream ends with its
/// link, which is closed when the peer is refused).
async fn open(
    gw: &Gateway,
    routes: &Routes,
    zone: &str,
    sni: &str,
) -> io::Result<(Box<dyn Io>, &'static str, Option<rustls::pki_types::CertificateDer<'static>>)> {
    let head = header::request(sni)?;
    if let Some(conn) = gw.links.get(zone).and_then(|l| l.connection()) {
        match conn.open_bi().await {
            Ok((mut send, recv)) => {
                send.write_all(&head).await?;
                return Ok((Box::new(tokio::io::join(recv, send)), "quic", None));
            }
            Err(e) => tracing::debug!(error = %e, "opening a QUIC stream failed; using TCP"),
        }
    }
    gw.metrics.fallbacks.get_or_create(&crate::metrics::ZoneLabel { zone: zone.to_string() }).inc();
    let tls = routes.tls.clone().ok_or_else(|| io::Error::other("no zone identity yet"))?;
    // Spread over the zone's ingresses: a dead one costs a connection, not the zone.
    let ingresses = routes.ingress(zone);
    let address = *ingresses
        .get(gw.next_fallback.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % ingresses.len().max(1))
        .ok_or_else(|| io::Error::other("the zone has no ingress address"))?;
    let expected = Identity::zone(zone).map_err(io::Error::other)?;
    let connector = TlsConnector::from(tls.client_config(&expected, ALPN_ZONE_TUNNEL));
    let name = ServerName::try_from(crate::quic::server_name(zone)).map_err(io::Error::other)?;
    let attempt = async {
        let tcp = TcpStream::connect(address).await?;
        let _ = tcp.set_nodelay(true);
        connector.connect(name, tcp).await
    };
    let mut stream = tokio::time::timeout(FALLBACK_CONNECT_TIMEOUT, attempt).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, format!("no TLS session with {address} within {FALLBACK_CONNECT_TIMEOUT:?}"))
    })??;
    if routes.check_peer(stream.get_ref().1.peer_certificates()).is_err() {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{address} is not an acceptable gateway of zone {zone}")));
    }
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
    stream.write_all(&head).await?;
    Ok((Box::new(stream), "tcp", leaf))
}
