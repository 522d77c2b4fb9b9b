//! Zone ingress: other zones' gateways connect here over QUIC (one connection per zone, one
//! stream per tunnelled connection) or, where UDP is blocked, over TCP+TLS (one connection per
//! tunnelled connection). Only gateways presenting a zone identity under the system CA that is
//! not revoked are accepted; a stream is accepted only for a service this zone hosts, and goes
//! to the endpoint its SNI names (callers balance over this zone's endpoints themselves) or,
//! when it names none, to one of them (round robin, the next one if a connect fails). The
//! bytes, the sidecars' end-to-end mTLS, pass unchanged.
//!
//! In: the QUIC endpoint and the TCP listener. Out: connections to local sidecars' inbounds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use strait_api::gateway_config::parse_sni;
use strait_proxy_core::copy::copy_bidirectional;
use strait_proxy_core::DrainWatcher;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::field::Empty;
use tracing::{Instrument, Span};

use crate::header::{self, Status};
use crate::metrics::StreamLabels;
use crate::quic::Io;
use crate::Gateway;

const DIRECTION: &str = "ingress";
/// How long a peer may take to send a stream's header, or to finish a TLS handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to one local endpoint may take before the next is tried.
const ENDPOINT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// QUIC connections accepted from other zones (each with its span), so those of a zone
/// revoked later are closed.
#[derive(Default)]
pub struct Peers {
    list: Mutex<Vec<(CertificateDer<'static>, quinn::Connection, Span)>>,
}

impl Peers {
    fn add(&self, leaf: CertificateDer<'static>, conn: quinn::Connection) {
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|(_, c, _)| c.close_reason().is_none());
        list.push((leaf, conn, Span::current()));
    }

    /// Closes the connections of peers the current routes revoke.
    pub fn close_revoked(&self, gw: &Gateway) {
        let routes = gw.routes.load();
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|(leaf, conn, span)| {
            if let Some(refusal) = routes.refusal(leaf) {
                span.in_scope(|| tracing::warn!(reason = refusal.reason(), "closing the tunnel of a revoked or disabled zone"));
                conn.close(2u32.into(), refusal.reason().as_bytes());
                gw.metrics.refuse(DIRECTION, refusal.reason());
                false
            } else {
                conn.close_reason().is_none()
            }
        });
    }
}

/// Accepts QUIC connections until the drain starts.
pub async fn serve_quic(gw: Arc<Gateway>, drain: DrainWatcher) {
    loop {
        let incoming = tokio::select! {
            () = drain.signaled() => return,
            i = gw.endpoint.accept() => i,
        };
        let Some(incoming) = incoming else { return };
        let span = connection_span(&gw, incoming.remote_address(), "quic");
        let (task, drain) = (gw.clone(), drain.clone());
        gw.tasks.spawn(async move { quic_connection(task, incoming, drain).await }.instrument(span));
    }
}

/// The span of a connection from another zone's gateway: this zone, where it comes from, and
/// (once its identity is checked) its zone; for TCP, also the service it asks for.
fn connection_span(gw: &Gateway, remote: std::net::SocketAddr, transport: &'static str) -> Span {
    let zone = gw.routes.load().zone.clone();
    match transport {
        "quic" => tracing::info_span!("ingress", zone, %remote, transport, peer_zone = Empty),
        _ => tracing::info_span!("ingress", zone, %remote, transport, peer_zone = Empty, service = Empty),
    }
}

async fn quic_connection(gw: Arc<Gateway>, incoming: quinn::Incoming, drain: DrainWatcher) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::info!(error = %e, "QUIC handshake from another zone failed");
            gw.metrics.refuse(DIRECTION, "handshake");
            return;
        }
    };
    let certs = conn.peer_identity().and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok());
    let zone = match gw.routes.load().check_peer(certs.as_deref().map(Vec::as_slice)) {
        Ok(zone) => zone,
        Err(refusal) => {
            tracing::warn!(reason = refusal.reason(), "refused a gateway");
            gw.metrics.refuse(DIRECTION, refusal.reason());
            conn.close(1u32.into(), refusal.reason().as_bytes());
            return;
        }
    };
    Span::current().record("peer_zone", zone.as_str());
    if let Some(leaf) = certs.as_ref().and_then(|c| c.first()) {
        gw.peers.add(leaf.clone(), conn.clone());
    }
    tracing::info!("QUIC tunnel from a zone accepted");
    // While draining, streams keep being accepted, to be answered `Draining` at once; the
    // connection itself stays up for the streams already open, until the endpoint closes.
    let mut drain = Some(drain);
    loop {
        let stream = match &drain {
            Some(watcher) => tokio::select! {
                () = watcher.signaled() => {
                    drain = None;
                    continue;
                }
                s = conn.accept_bi() => s,
            },
            None => conn.accept_bi().await,
        };
        match stream {
            Ok((mut send, recv)) => {
                let Some(watcher) = &drain else {
                    gw.metrics.refuse(DIRECTION, Status::Draining.reason());
                    let _ = send.write_all(&header::answer(Status::Draining)).await;
                    let _ = send.finish();
                    drop(recv);
                    continue;
                };
                // A child of the connection's span: each stream names the service it carries.
                let span = tracing::info_span!("stream", id = send.id().index(), service = Empty);
                let (task, zone, watcher) = (gw.clone(), zone.clone(), watcher.clone());
                gw.tasks.spawn(
                    async move {
                        let io = tokio::io::join(recv, send);
                        watcher.unless_forced(tunnelled(task, watcher.clone(), zone, io, "quic")).await;
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                tracing::info!(reason = %e, "QUIC tunnel from a zone closed");
                break;
            }
        }
    }
}

/// Accepts TCP+TLS fallback connections until the drain starts.
pub async fn serve_tcp(gw: Arc<Gateway>, listener: TcpListener, drain: DrainWatcher) {
    loop {
        let accepted = tokio::select! {
            () = drain.signaled() => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, remote)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let span = connection_span(&gw, remote, "tcp");
        let (task, drain) = (gw.clone(), drain.clone());
        let connection = async move {
            let Some(tls) = task.routes.load().tls.clone() else {
                task.metrics.refuse(DIRECTION, "no_identity");
                return;
            };
            let accepted = tokio::time::timeout(HEADER_TIMEOUT, TlsAcceptor::from(tls.server_config()).accept(tcp)).await;
            let stream = match accepted {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::info!("TLS handshake from another zone failed");
                    task.metrics.refuse(DIRECTION, "handshake");
                    return;
                }
            };
            let zone = match task.routes.load().check_peer(stream.get_ref().1.peer_certificates()) {
                Ok(zone) => zone,
                Err(refusal) => {
                    tracing::warn!(reason = refusal.reason(), "refused a gateway");
                    task.metrics.refuse(DIRECTION, refusal.reason());
                    return;
                }
            };
            Span::current().record("peer_zone", zone.as_str());
            let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
            let watcher = task.clone();
            // A tunnel over TCP has no QUIC connection to close: it watches the routes itself.
            let cut = async move {
                match leaf {
                    Some(leaf) => watcher.cut_when(|routes| routes.refusal(&leaf).map(|r| r.reason())).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = drain.unless_forced(tunnelled(task.clone(), drain.clone(), zone, stream, "tcp")) => {}
                reason = cut => {
                    tracing::warn!(reason, "closing the tunnel of a revoked or disabled zone");
                    task.metrics.refuse(DIRECTION, reason);
                }
            }
        };
        gw.tasks.spawn(connection.instrument(span));
    }
}

/// Serves one tunnelled connection from `zone`: header, endpoint, answer, bytes.
async fn tunnelled(gw: Arc<Gateway>, drain: DrainWatcher, zone: String, mut io: impl Io, transport: &'static str) {
    let (key, endpoint) = match route(&gw, &drain, &mut io).await {
        Ok(routed) => routed,
        Err(status) => {
            tracing::debug!(reason = status.reason(), "stream refused");
            gw.metrics.refuse(DIRECTION, status.reason());
            let _ = io.write_all(&header::answer(status)).await;
            let _ = io.shutdown().await;
            return;
        }
    };
    let mut endpoint = endpoint;
    if io.write_all(&header::answer(Status::Ok)).await.is_err() {
        return;
    }
    let labels = StreamLabels::new(DIRECTION, &gw.routes.load().zone, &zone, &key, transport);
    gw.metrics.streams.get_or_create(&labels).inc();
    let active = crate::metrics::ActiveTunnel::open(&gw.metrics, DIRECTION);
    let copied = copy_bidirectional(&mut io, &mut endpoint, &gw.copy).await;
    drop(active);
    let moved = match &copied {
        Ok(c) => *c,
        Err(e) => {
            tracing::debug!(error = %e, "ingress connection ended with an error");
            e.copied()
        }
    };
    gw.metrics.count_bytes(&labels, moved.b_to_a, moved.a_to_b);
}

/// Reads the header and connects to an endpoint of the service it names.
async fn route(gw: &Gateway, drain: &DrainWatcher, io: &mut impl Io) -> Result<(String, TcpStream), Status> {
    let sni = tokio::time::timeout(HEADER_TIMEOUT, header::read_request(io)).await.map_err(|_| Status::BadHeader)??;
    let target = parse_sni(&sni).ok_or(Status::BadHeader)?;
    let key = format!("{}.{}", target.service, target.mesh);
    Span::current().record("service", key.as_str());
    if drain.is_signaled() {
        return Err(Status::Draining);
    }
    let routes = gw.routes.load_full();
    if target.zone.is_some_and(|z| z != routes.zone) {
        return Err(Status::UnknownService);
    }
    let service = routes.local(&key).ok_or(Status::UnknownService)?;
    // The endpoint the caller chose (it balances over this zone's endpoints itself); any, when
    // it named none, or one this zone no longer has (its view of the inventory is older).
    let chosen = target.instance.and_then(|id| service.instance(id));
    let candidates: Box<dyn Iterator<Item = std::net::SocketAddr> + Send + '_> = match chosen {
        Some(address) => Box::new(std::iter::once(address)),
        None => Box::new(service.endpoints()),
    };
    for address in candidates {
        match tokio::time::timeout(ENDPOINT_CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok((key, tcp));
            }
            Ok(Err(e)) => tracing::debug!(%address, error = %e, "endpoint refused; trying the next"),
            Err(_) => tracing::debug!(%address, "endpoint connect timed out; trying the next"),
        }
    }
    Err(Status::Unreachable)
}
