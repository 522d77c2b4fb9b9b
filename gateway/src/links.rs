//! The egress's QUIC connections to other zones: one per zone, kept up by a task per zone that
//! reconnects with back-off. While a zone's QUIC connection is down (UDP blocked, the zone's
//! gateway restarting), new connections to it go over TCP+TLS instead; the task keeps trying
//! QUIC and new connections use it again as soon as it is back.
//!
//! In: the routing state (which zones, their ingress addresses, the zone identity). Out: the
//! current connection of each zone ([`Link::connection`]), and the QUIC metrics of each.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::metrics::ZoneLabel;
use crate::Gateway;

/// The link to one other zone.
pub struct Link {
    /// The zone.
    pub zone: String,
    conn: ArcSwapOption<quinn::Connection>,
    stop: CancellationToken,
    /// This zone and the other, on every line about the link.
    span: Span,
}

impl Link {
    /// The QUIC connection, if it is up.
    pub fn connection(&self) -> Option<Arc<quinn::Connection>> {
        self.conn.load_full().filter(|c| c.close_reason().is_none())
    }
}

/// Every link, by zone.
#[derive(Default)]
pub struct Links {
    map: ArcSwap<HashMap<String, Arc<Link>>>,
}

impl Links {
    /// The link to `zone`.
    pub fn get(&self, zone: &str) -> Option<Arc<Link>> {
        self.map.load().get(zone).cloned()
    }

    /// Starts a link for every zone of the current routes that has none, and stops the links
    /// of zones that are gone.
    pub fn update(&self, gw: &Arc<Gateway>) {
        let routes = gw.routes.load();
        let current = self.map.load_full();
        let mut next: HashMap<String, Arc<Link>> = HashMap::new();
        for zone in routes.zones() {
            let link = current.get(zone).cloned().unwrap_or_else(|| {
                let span = tracing::info_span!("link", zone = %routes.zone, peer_zone = zone);
                let link = Arc::new(Link { zone: zone.to_string(), conn: ArcSwapOption::empty(), stop: gw.shutdown.child_token(), span });
                gw.tasks.spawn(maintain(gw.clone(), link.clone()).instrument(link.span.clone()));
                link
            });
            next.insert(zone.to_string(), link);
        }
        for (zone, link) in current.iter() {
            if !next.contains_key(zone) {
                link.span.in_scope(|| tracing::info!("zone gone from the configuration; closing its tunnel"));
                link.stop.cancel();
            }
        }
        self.map.store(Arc::new(next));
    }

    /// Closes the QUIC connections to gateways whose identity the current routes revoke, or
    /// whose zone is disabled; their links then fail to reconnect until that changes.
    pub fn close_revoked(&self, gw: &Gateway) {
        let routes = gw.routes.load();
        for link in self.map.load().values() {
            let Some(conn) = link.connection() else { continue };
            let certs = conn.peer_identity().and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok());
            if let Some(refusal) = certs.as_ref().and_then(|c| c.first()).and_then(|leaf| routes.refusal(leaf)) {
                link.span.in_scope(|| tracing::warn!(reason = refusal.reason(), "closing the tunnel to a revoked or disabled zone"));
                conn.close(2u32.into(), refusal.reason().as_bytes());
                gw.metrics.refuse("egress", refusal.reason());
            }
        }
    }

    /// Every link.
    pub fn all(&self) -> Vec<Arc<Link>> {
        self.map.load().values().cloned().collect()
    }
}

/// Keeps `link`'s QUIC connection up until the link is stopped.
async fn maintain(gw: Arc<Gateway>, link: Arc<Link>) {
    let label = ZoneLabel { zone: link.zone.clone() };
    let mut backoff = Duration::from_millis(250);
    let mut attempt = 0usize;
    let mut was_up = true;
    loop {
        if link.stop.is_cancelled() {
            break;
        }
        let connected = tokio::select! {
            () = link.stop.cancelled() => break,
            c = connect(&gw, &link.zone, attempt) => c,
        };
        match connected {
            Ok(conn) => {
                tracing::info!(peer = %conn.remote_address(), rtt = ?conn.rtt(), "QUIC tunnel to the zone is up");
                link.conn.store(Some(Arc::new(conn.clone())));
                gw.metrics.quic_up.get_or_create(&label).set(1);
                backoff = Duration::from_millis(250);
                was_up = true;
                let reason = tokio::select! {
                    () = link.stop.cancelled() => {
                        // Streams still open keep the connection until they end; then it
                        // closes by itself, as the last handle goes.
                        break;
                    }
                    reason = conn.closed() => reason,
                };
                link.conn.store(None);
                gw.metrics.quic_up.get_or_create(&label).set(0);
                tracing::warn!(%reason, "QUIC tunnel to the zone closed; new connections use TCP until it is back");
            }
            Err(e) => {
                if was_up {
                    tracing::warn!(error = e, "cannot open a QUIC tunnel to the zone; new connections use TCP meanwhile");
                } else {
                    tracing::debug!(error = e, "QUIC tunnel to the zone still down");
                }
                was_up = false;
                attempt += 1;
                tokio::select! {
                    () = link.stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    link.conn.store(None);
    gw.metrics.quic_up.get_or_create(&label).set(0);
}

/// One QUIC handshake with `zone`'s ingress (the `attempt`-th address, round robin), whose
/// identity must be the zone's and not revoked.
async fn connect(gw: &Gateway, zone: &str, attempt: usize) -> Result<quinn::Connection, String> {
    let routes = gw.routes.load_full();
    let tls = routes.tls.clone().ok_or("no zone identity yet")?;
    let addresses = routes.ingress(zone);
    let address: SocketAddr = *addresses.get(attempt % addresses.len().max(1)).ok_or("the zone has no ingress address")?;
    let config = crate::quic::client(&tls, zone, gw.idle_timeout)?;
    let connecting =
        gw.endpoint.connect_with(config, address, &crate::quic::server_name(zone)).map_err(|e| format!("connecting to {address}: {e}"))?;
    let conn = tokio::time::timeout(gw.idle_timeout, connecting)
        .await
        .map_err(|_| format!("no QUIC handshake with {address} within {:?}", gw.idle_timeout))?
        .map_err(|e| format!("QUIC handshake with {address}: {e}"))?;
    let certs = conn.peer_identity().and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok());
    if let Err(refusal) = routes.check_peer(certs.as_deref().map(Vec::as_slice)) {
        conn.close(1u32.into(), refusal.reason().as_bytes());
        return Err(format!("{address} is not an acceptable zone gateway: {}", refusal.reason()));
    }
    Ok(conn)
}

/// Publishes each link's QUIC round-trip time and packet counts every second.
pub async fn report(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = gw.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for link in gw.links.all() {
            let Some(conn) = link.connection() else { continue };
            let label = ZoneLabel { zone: link.zone.clone() };
            let stats = conn.stats();
            gw.metrics.quic_rtt.get_or_create(&label).set(conn.rtt().as_secs_f64());
            gw.metrics.quic_lost.get_or_create(&label).set(stats.path.lost_packets as i64);
            gw.metrics.quic_sent.get_or_create(&label).set(stats.path.sent_packets as i64);
        }
    }
}
