//! The HTTP/2 connection pool between sidecars: one mTLS connection per peer endpoint, shared
//! by every request to it (HTTP/2 multiplexes them).
//!
//! In: a request for an endpoint, the current [`IdentityStore`], the identity the peer must
//! present, the SNI to send, and where to report each connect's outcome ([`ConnectOutcome`]:
//! the endpoint's passive health). Out: a `SendRequest` handle on a live connection. The
//! handle is read lock-free on every request; only opening a connection takes the endpoint's
//! connect lock, so concurrent requests to a new endpoint open one connection, not many. The
//! pool knows connections, not endpoints: an endpoint owns its [`Slot`].
//!
//! A connection opened with an older workload certificate is replaced on next use after a
//! rotation: new requests go over a connection with the new certificate while the requests
//! still on the old one finish there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use strait_pki::Identity;
use strait_proxy_core::drain::DrainWatcher;
use strait_proxy_core::identity::{IdentityStore, TlsIdentity};
use strait_proxy_core::tls::ALPN_H2;
use strait_proxy_core::tunnel::outbound::{self, OutboundError};
use strait_proxy_core::tunnel::TunnelMetrics;
use tokio_util::task::TaskTracker;

use super::body::Counted;
use crate::proxy::metrics::ActiveGuard;

/// Why no connection to a peer could be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The mTLS connection failed (refused, unreachable, wrong identity, bad chain).
    #[error(transparent)]
    Connect(#[from] OutboundError),
    /// The peer accepted TLS but not HTTP/2.
    #[error("HTTP/2 handshake with {target}: {source}")]
    Handshake {
        /// The peer's address.
        target: SocketAddr,
        /// What hyper said.
        source: hyper::Error,
    },
    /// The peer did not pick HTTP/2 (it is not a sidecar that serves HTTP on this port).
    #[error("{target} did not accept HTTP/2 over mTLS")]
    NoH2 {
        /// The peer's address.
        target: SocketAddr,
    },
}

struct Pooled {
    sender: SendRequest<Counted>,
    identity: Arc<TlsIdentity>,
    opened: std::time::Instant,
    /// Requests handed this connection so far.
    used: std::sync::atomic::AtomicU32,
}

/// The pooled connection of one endpoint.
#[derive(Default)]
pub struct Slot {
    current: Arc<ArcSwapOption<Pooled>>,
    connecting: tokio::sync::Mutex<()>,
    /// Requests waiting for a connection to be opened.
    waiting: std::sync::atomic::AtomicUsize,
}

/// Counts a request waiting for a connection while it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("connected", &self.current.load().is_some()).finish()
    }
}

/// Told of the outcome of each connection the pool tries to open.
pub trait ConnectOutcome {
    /// A connection was opened in `took` (TCP connect plus TLS handshake).
    fn connected(&self, took: Duration);
    /// A connection could not be opened.
    fn failed(&self);
}

/// What opening a connection needs besides the endpoint.
pub struct Connector<'a, H> {
    /// The workload certificate in use.
    pub identities: &'a IdentityStore,
    /// The identity the peer must present.
    pub expected: &'a Identity,
    /// The SNI to send.
    pub sni: &'a ServerName<'static>,
    /// The endpoint's passive health: told of each connect's outcome.
    pub health: &'a H,
    /// Longest TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// A connection this old is replaced on next use (MeshTimeout `http.maxConnectionDuration`):
    /// new requests open another, those on it finish there.
    pub max_age: Option<Duration>,
    /// A connection that carried this many requests is replaced on next use (MeshCircuitBreaker
    /// `maxRequestsPerConnection`).
    pub max_requests: Option<u32>,
    /// Outbound tunnel counters (connections opened, handshake errors).
    pub metrics: &'a TunnelMetrics,
    /// Connection tasks hold a watcher so that a drain waits for their last requests.
    pub drain: &'a DrainWatcher,
    /// Owns the connection tasks.
    pub tasks: &'a TaskTracker,
}

impl Slot {
    /// A handle on a live connection to `target` made with the current certificate, opening
    /// one if needed.
    pub async fn sender<H: ConnectOutcome>(
        &self,
        target: SocketAddr,
        connector: &Connector<'_, H>,
    ) -> Result<SendRequest<Counted>, PoolError> {
        let identity = connector.identities.current();
        if let Some(sender) = self.usable(&identity, connector) {
            return Ok(sender);
        }
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let _connecting = self.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(sender) = self.usable(&identity, connector) {
            return Ok(sender);
        }
        let sender = self.connect(target, identity, connector).await?;
        Ok(sender)
    }

    /// Whether a live connection is pooled (a request would not have to open one).
    pub fn connected(&self) -> bool {
        self.current.load().as_ref().is_some_and(|p| !p.sender.is_closed())
    }

    /// Requests waiting for a connection to be opened.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets the pooled connection (its requests finish; new ones open another).
    pub fn clear(&self) {
        self.current.store(None);
    }

    fn usable<H>(&self, identity: &Arc<TlsIdentity>, c: &Connector<'_, H>) -> Option<SendRequest<Counted>> {
        let guard = self.current.load();
        let pooled = guard.as_ref()?;
        let young = c.max_age.is_none_or(|max| pooled.opened.elapsed() < max);
        if !young || pooled.sender.is_closed() || !Arc::ptr_eq(&pooled.identity, identity) {
            return None;
        }
        let fresh = c.max_requests.is_none_or(|max| pooled.used.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < max);
        fresh.then(|| pooled.sender.clone())
    }

    async fn connect<H: ConnectOutcome>(
        &self,
        target: SocketAddr,
        identity: Arc<TlsIdentity>,
        c: &Connector<'_, H>,
    ) -> Result<SendRequest<Counted>, PoolError> {
        c.metrics.connections.inc();
        let config = identity.client_config(c.expected, ALPN_H2);
        let started = std::time::Instant::now();
        let tls = match outbound::connect(target, config, c.sni.clone(), c.connect_timeout).await {
            Ok(tls) => {
                c.health.connected(started.elapsed());
                tls
            }
            Err(error) => {
                c.health.failed();
                if matches!(error, OutboundError::IdentityMismatch { .. } | OutboundError::Handshake { .. }) {
                    c.metrics.handshake_errors.inc();
                }
                return Err(error.into());
            }
        };
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(PoolError::NoH2 { target });
        }
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20);
        let (sender, connection) = builder.handshake(TokioIo::new(tls)).await.map_err(|source| PoolError::Handshake { target, source })?;
        let slot = Arc::downgrade(&self.current);
        let watcher = c.drain.clone();
        let active = ActiveGuard::new(&c.metrics.active);
        c.tasks.spawn(async move {
            let _active = active;
            tokio::pin!(connection);
            tokio::select! {
                ended = &mut connection => {
                    if let Err(error) = ended {
                        tracing::debug!(%target, %error, "pooled HTTP/2 connection ended");
                    }
                    return;
                }
                () = watcher.signaled() => {}
            }
            // Draining: no new requests here; the ones in flight finish unless forced.
            if let Some(slot) = slot.upgrade() {
                slot.store(None);
            }
            let _ = watcher.unless_forced(connection).await;
        });
        tracing::debug!(%target, peer = %c.expected, "opened a pooled HTTP/2 connection");
        // The request that opened it is its first.
        let used = std::sync::atomic::AtomicU32::new(1);
        self.current.store(Some(Arc::new(Pooled { sender: sender.clone(), identity, opened: std::time::Instant::now(), used })));
        Ok(sender)
    }
}
