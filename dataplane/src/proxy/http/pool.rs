//! The HTTP connection pool between sidecars: one HTTP/2 mTLS connection per peer endpoint,
//! shared by every request to it (HTTP/2 multiplexes them), and idle HTTP/1.1 mTLS connections,
//! each lent to one request at a time (an application's HTTP/1.1 requests go over HTTP/1.1:
//! no framing, header compression, flow control or task per stream on either side, where
//! nothing needs multiplexing).
//!
//! In: a request for an endpoint, the current [`IdentityStore`], the identity the peer must
//! present, the SNI to send, and where to report each connect's outcome ([`ConnectOutcome`]:
//! the endpoint's passive health). Out: a [`Sender`]: the handle on the endpoint's live HTTP/2
//! connection, or an HTTP/1.1 connection lent to the request (written and read by the
//! request's own task, see [`super::h1`]). The HTTP/2 handle is read lock-free on every request; only opening a connection takes the endpoint's
//! connect lock, so concurrent requests to a new endpoint open one connection, not many. The
//! pool knows connections, not endpoints: an endpoint owns its [`Slot`].
//!
//! A connection opened with an older workload certificate is replaced on next use after a
//! rotation: new requests go over a connection with the new certificate while the requests
//! still on the old one finish there.
//!
//! HTTP/1.1 offers ALPN `http/1.1` then `h2`: a peer sidecar that does not speak HTTP/1.1 between
//! sidecars (an older version) picks `h2`, and the connection becomes the endpoint's HTTP/2 one.
//! An idle HTTP/1.1 connection is closed after [`HTTP1_IDLE`] (the peer waits longer, so it
//! never closes one under a request being sent); idle ones are taken most recent first.
//!
//! At most [`MAX_LENT_HTTP1`] HTTP/1.1 connections are lent at once per endpoint; further
//! requests at the same time share the endpoint's HTTP/2 connection. A burst of a thousand
//! requests at once then costs one more TLS handshake, not a thousand (and their memory on
//! both sidecars), and a steady load above the cap does not open and close connections as
//! they come back beyond the idle ones kept.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::{Request, Response, Version};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use strait_pki::Identity;
use strait_proxy_core::drain::DrainWatcher;
use strait_proxy_core::identity::{IdentityStore, TlsIdentity};
use strait_proxy_core::tls::{ALPN_H2, ALPN_HTTP1};
use strait_proxy_core::tunnel::outbound::{self, OutboundError};
use strait_proxy_core::tunnel::TunnelMetrics;
use strait_runtime::clock::coarse_now;
use tokio_util::task::TaskTracker;

use super::body::{BoxError, Counted, Upstream};
use super::h1::{self, Conn, Io};
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
    /// The peer picked neither HTTP/1.1 nor HTTP/2 (it is not a sidecar that serves HTTP on this port).
    #[error("{target} did not accept HTTP over mTLS")]
    NoHttp {
        /// The peer's address.
        target: SocketAddr,
    },
}

struct Pooled {
    sender: SendRequest<Counted>,
    identity: Arc<TlsIdentity>,
    opened: Instant,
    /// Requests handed this connection so far.
    used: AtomicU32,
}

/// How long an HTTP/1.1 connection may stay idle in the pool; the peer's sidecar waits 120 s
/// before it closes one.
pub const HTTP1_IDLE: Duration = Duration::from_secs(20);
/// Idle HTTP/1.1 connections kept per endpoint (as nginx's `keepalive 64`); one returned
/// beyond this is closed, so that a burst's connections do not outlive it.
const MAX_IDLE_HTTP1: usize = 64;
/// HTTP/1.1 connections lent at once per endpoint; requests beyond go over HTTP/2. As many as
/// are kept idle, so that every connection a steady load needs stays pooled.
pub const MAX_LENT_HTTP1: usize = MAX_IDLE_HTTP1;

/// An HTTP/1.1 connection, idle in a pool or lent to a request.
pub(super) struct Http1 {
    conn: Conn,
    /// The workload certificate it was opened with (none to the local application).
    identity: Option<Arc<TlsIdentity>>,
    opened: Instant,
    idle_since: Instant,
    /// Requests it carried, this one included.
    used: u32,
    /// Counts it among the open connections (between sidecars).
    _active: Option<ActiveGuard>,
}

impl Http1 {
    /// A connection just opened, for its first request (boxed: it moves between the idle
    /// list, its lease and its response body).
    pub(super) fn new(conn: Conn, identity: Option<Arc<TlsIdentity>>, active: Option<ActiveGuard>) -> Box<Self> {
        let now = coarse_now();
        Box::new(Http1 { conn, identity, opened: now, idle_since: now, used: 1, _active: active })
    }
}

/// Idle HTTP/1.1 connections to one place (a peer endpoint, or the local application), most
/// recently used last: each was put back when its request's response ended, so they are in
/// the order they went idle.
pub(super) struct Idle {
    #[expect(clippy::vec_box, reason = "a connection moves between this list, a lease and a response body: as one pointer")]
    connections: Mutex<Vec<Box<Http1>>>,
    /// How long a connection may stay idle.
    limit: Duration,
    /// Set when the sidecar drains: connections are closed instead of coming back.
    closed: AtomicBool,
    /// Connections lent to requests now.
    lent: AtomicUsize,
    /// Ends the task that closes these connections when the sidecar drains, when dropped.
    watched: std::sync::OnceLock<tokio::sync::oneshot::Sender<()>>,
}

impl Default for Idle {
    fn default() -> Self {
        Idle::new(HTTP1_IDLE)
    }
}

impl Idle {
    /// No connections yet; each may stay idle for `limit`.
    pub(super) fn new(limit: Duration) -> Self {
        Idle {
            connections: Mutex::default(),
            limit,
            closed: AtomicBool::new(false),
            lent: AtomicUsize::new(0),
            watched: std::sync::OnceLock::new(),
        }
    }

    #[expect(clippy::vec_box, reason = "as the list it locks")]
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<Http1>>> {
        self.connections.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The most recently used idle connection that is `usable`; those the peer closed, idle
    /// too long or not `usable` are closed on the way.
    pub(super) fn take(&self, usable: impl Fn(&Http1, Instant) -> bool) -> Option<Box<Http1>> {
        let now = coarse_now();
        let mut idle = self.lock();
        while let Some(mut connection) = idle.pop() {
            if now.duration_since(connection.idle_since) < self.limit && usable(&connection, now) && !connection.conn.closed_while_idle() {
                connection.used += 1;
                return Some(connection);
            }
        }
        None
    }

    /// Closes these connections when the sidecar drains (once for each set, by a task that
    /// ends when the set is dropped).
    fn close_on_drain<H>(self: &Arc<Self>, c: &Connector<'_, H>) {
        if self.watched.get().is_some() {
            return;
        }
        let (gone, dropped) = tokio::sync::oneshot::channel::<()>();
        if self.watched.set(gone).is_err() {
            return;
        }
        let idle = Arc::downgrade(self);
        let watcher = c.drain.clone();
        c.tasks.spawn(async move {
            tokio::select! {
                () = watcher.signaled() => {
                    if let Some(idle) = idle.upgrade() {
                        idle.close(true);
                    }
                }
                _ = dropped => {}
            }
        });
    }

    /// Closes the idle connections (dropping their handles ends them) and, if `for_good`,
    /// every connection that comes back.
    pub(super) fn close(&self, for_good: bool) {
        if for_good {
            self.closed.store(true, Ordering::Relaxed);
        }
        // Taken under the lock, dropped after it.
        let _closing = std::mem::take(&mut *self.lock());
    }
}

/// The pooled connections of one endpoint.
#[derive(Default)]
pub struct Slot {
    current: Arc<ArcSwapOption<Pooled>>,
    connecting: tokio::sync::Mutex<()>,
    /// Requests waiting for a connection to be opened.
    waiting: AtomicUsize,
    http1: Arc<Idle>,
}

/// Counts a request waiting for a connection while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a request goes: the endpoint's HTTP/2 connection, or an HTTP/1.1 one lent to it.
pub enum Sender {
    /// The shared HTTP/2 connection.
    Http2(SendRequest<Counted>),
    /// An HTTP/1.1 connection for this request alone.
    Http1(Lease),
}

/// A request that failed on its connection.
pub struct SendError {
    /// Whether the request may go on another connection as it is (it is the caller's again):
    /// none of it was sent, or the peer closed a reused HTTP/1.1 connection before answering
    /// an idempotent request. Otherwise an HTTP/2 exchange kept it.
    pub again: bool,
    /// What went wrong.
    pub error: BoxError,
}

impl From<h1::Failed> for SendError {
    fn from(failed: h1::Failed) -> Self {
        SendError { again: failed.again, error: failed.error.into() }
    }
}

impl Sender {
    /// Sends `request` (its version set to the connection's). An HTTP/1.1 connection goes
    /// with the response body, back to the pool when it ends. HTTP/1.1 leaves the request in
    /// place; HTTP/2 takes it (an empty request is left), and puts it back if none of it went.
    pub async fn send(self, request: &mut Request<Counted>) -> Result<Response<Upstream>, SendError> {
        match self {
            Sender::Http2(mut sender) => {
                *request.version_mut() = Version::HTTP_2;
                let owned = super::body::take(request);
                // Boxed: hyper's future is twice an HTTP/1.1 exchange's, and would be room in
                // every request's future (moved with it) where most go over HTTP/1.1.
                match Box::pin(sender.try_send_request(owned)).await {
                    Ok(response) => Ok(response.map(Upstream::Hyper)),
                    Err(mut error) => {
                        let unsent = error.take_message();
                        let again = unsent.is_some();
                        if let Some(unsent) = unsent {
                            *request = unsent;
                        }
                        Err(SendError { again, error: error.into_error().into() })
                    }
                }
            }
            Sender::Http1(lease) => {
                *request.version_mut() = Version::HTTP_11;
                let reused = lease.reused();
                Ok(h1::send(lease, request, reused).await?.map(Upstream::Http1))
            }
        }
    }
}

/// An HTTP/1.1 connection lent to one request; back among the endpoint's idle connections
/// when released at the clean end of its exchange (unless the sidecar drains), else closed
/// when dropped.
pub struct Lease {
    connection: Option<Box<Http1>>,
    idle: Arc<Idle>,
    /// Its exchange ended cleanly: the connection may take another request.
    clean: bool,
}

impl Lease {
    pub(super) fn new(connection: Box<Http1>, idle: &Arc<Idle>) -> Lease {
        idle.lent.fetch_add(1, Ordering::Relaxed);
        Lease { connection: Some(connection), idle: idle.clone(), clean: false }
    }

    /// The connection.
    pub(super) fn conn(&mut self) -> &mut Conn {
        &mut self.connection.as_mut().expect("a lease holds its connection until dropped").conn
    }

    /// Whether the connection carried requests before this one.
    pub(super) fn reused(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.used > 1)
    }

    /// Its exchange ended cleanly: the connection goes back among the idle ones. A lease
    /// dropped without this (a failed exchange, or one abandoned half way) closes it.
    pub(super) fn release(mut self) {
        self.clean = true;
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.idle.lent.fetch_sub(1, Ordering::Relaxed);
        let Some(mut connection) = self.connection.take() else { return };
        if !self.clean || self.idle.closed.load(Ordering::Relaxed) {
            return;
        }
        let now = coarse_now();
        connection.idle_since = now;
        let mut idle = self.idle.lock();
        // The oldest first: those idle too long are closed here, not only when met by a request.
        let stale = idle.iter().take_while(|c| now.duration_since(c.idle_since) >= self.idle.limit).count();
        idle.drain(..stale);
        if idle.len() < MAX_IDLE_HTTP1 {
            idle.push(connection);
        }
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
        // Boxed: opening a connection (TLS and HTTP/2 handshakes) is rare, and its state
        // would otherwise be room, about 8 KB, in the future of every request.
        Box::pin(self.open_http2(target, identity, connector)).await
    }

    /// [`Slot::sender`] when no connection can take the request: waits for any other
    /// connection being opened, then opens one unless that one can.
    async fn open_http2<H: ConnectOutcome>(
        &self,
        target: SocketAddr,
        identity: Arc<TlsIdentity>,
        connector: &Connector<'_, H>,
    ) -> Result<SendRequest<Counted>, PoolError> {
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

    /// An HTTP/1.1 connection to `target` for one request, made with the current certificate:
    /// an idle one, else a new one (or, if the peer only speaks HTTP/2 between sidecars or
    /// [`MAX_LENT_HTTP1`] are lent already, its HTTP/2 connection).
    pub async fn sender_http1<H: ConnectOutcome>(&self, target: SocketAddr, connector: &Connector<'_, H>) -> Result<Sender, PoolError> {
        let identity = connector.identities.current();
        if let Some(connection) = self.idle_http1(&identity, connector) {
            return Ok(Sender::Http1(Lease::new(connection, &self.http1)));
        }
        if let Some(sender) = self.usable(&identity, connector) {
            return Ok(Sender::Http2(sender));
        }
        if self.http1.lent.load(Ordering::Relaxed) >= MAX_LENT_HTTP1 {
            return Box::pin(self.open_http2(target, identity, connector)).await.map(Sender::Http2);
        }
        // Boxed, as in [`Slot::sender`]: most requests take a pooled connection.
        Box::pin(self.open_http1(target, identity, connector)).await
    }

    /// [`Slot::sender_http1`] when no idle connection can take the request: opens one.
    async fn open_http1<H: ConnectOutcome>(
        &self,
        target: SocketAddr,
        identity: Arc<TlsIdentity>,
        connector: &Connector<'_, H>,
    ) -> Result<Sender, PoolError> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        let tls = self.tls(target, &identity, connector, &[ALPN_HTTP1, ALPN_H2]).await?;
        if tls.get_ref().1.alpn_protocol() == Some(ALPN_H2) {
            return Ok(Sender::Http2(self.http2(target, tls, identity, connector).await?));
        }
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_HTTP1) {
            return Err(PoolError::NoHttp { target });
        }
        // Draining: idle connections close, busy ones once their response has ended.
        self.http1.close_on_drain(connector);
        tracing::debug!(%target, peer = %connector.expected, "opened a pooled HTTP/1.1 connection");
        let active = ActiveGuard::new(&connector.metrics.active);
        let conn = Conn::new(Io::Tls(Box::new(tls)));
        Ok(Sender::Http1(Lease::new(Http1::new(conn, Some(identity), Some(active)), &self.http1)))
    }

    /// The most recently used idle HTTP/1.1 connection that may take a request; the stale
    /// ones met on the way are closed.
    fn idle_http1<H>(&self, identity: &Arc<TlsIdentity>, c: &Connector<'_, H>) -> Option<Box<Http1>> {
        self.http1.take(|connection, now| {
            connection.identity.as_ref().is_some_and(|i| Arc::ptr_eq(i, identity))
                && c.max_age.is_none_or(|max| now.duration_since(connection.opened) < max)
                && c.max_requests.is_none_or(|max| connection.used < max)
        })
    }

    /// Whether a live connection is pooled (a request would not have to open one).
    pub fn connected(&self) -> bool {
        self.current.load().as_ref().is_some_and(|p| !p.sender.is_closed())
    }

    /// Requests waiting for a connection to be opened.
    pub fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets the pooled connections (their requests finish; new ones open others).
    pub fn clear(&self) {
        self.current.store(None);
        self.http1.close(false);
    }

    fn usable<H>(&self, identity: &Arc<TlsIdentity>, c: &Connector<'_, H>) -> Option<SendRequest<Counted>> {
        let guard = self.current.load();
        let pooled = guard.as_ref()?;
        let young = c.max_age.is_none_or(|max| coarse_now().duration_since(pooled.opened) < max);
        if !young || pooled.sender.is_closed() || !Arc::ptr_eq(&pooled.identity, identity) {
            return None;
        }
        let fresh = c.max_requests.is_none_or(|max| pooled.used.fetch_add(1, Ordering::Relaxed) < max);
        fresh.then(|| pooled.sender.clone())
    }

    async fn connect<H: ConnectOutcome>(
        &self,
        target: SocketAddr,
        identity: Arc<TlsIdentity>,
        c: &Connector<'_, H>,
    ) -> Result<SendRequest<Counted>, PoolError> {
        let tls = self.tls(target, &identity, c, &[ALPN_H2]).await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err(PoolError::NoHttp { target });
        }
        self.http2(target, tls, identity, c).await
    }

    /// A new mTLS connection to `target` offering `alpn`, its outcome told to the endpoint's health.
    async fn tls<H: ConnectOutcome>(
        &self,
        target: SocketAddr,
        identity: &TlsIdentity,
        c: &Connector<'_, H>,
        alpn: &[&[u8]],
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, PoolError> {
        c.metrics.connections.inc();
        let config = identity.client_config_offering(c.expected, alpn);
        let started = Instant::now();
        match outbound::connect(target, config, c.sni.clone(), c.connect_timeout).await {
            Ok(tls) => {
                c.health.connected(started.elapsed());
                Ok(tls)
            }
            Err(error) => {
                c.health.failed();
                if matches!(error, OutboundError::IdentityMismatch { .. } | OutboundError::Handshake { .. }) {
                    c.metrics.handshake_errors.inc();
                }
                Err(error.into())
            }
        }
    }

    /// The endpoint's HTTP/2 connection over `tls`, pooled for every request.
    async fn http2<H>(
        &self,
        target: SocketAddr,
        tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        identity: Arc<TlsIdentity>,
        c: &Connector<'_, H>,
    ) -> Result<SendRequest<Counted>, PoolError> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20);
        let (sender, connection) = builder.handshake(TokioIo::new(tls)).await.map_err(|source| PoolError::Handshake { target, source })?;
        let slot = Arc::downgrade(&self.current);
        // Draining: no new requests here; the ones in flight finish unless forced.
        drive(c, target, "HTTP/2", connection, move || {
            if let Some(slot) = slot.upgrade() {
                slot.store(None);
            }
        });
        tracing::debug!(%target, peer = %c.expected, "opened a pooled HTTP/2 connection");
        // The request that opened it is its first.
        let used = AtomicU32::new(1);
        self.current.store(Some(Arc::new(Pooled { sender: sender.clone(), identity, opened: coarse_now(), used })));
        Ok(sender)
    }
}

/// Drives a pooled `connection` to `target` in a task of its own until it ends, counted as
/// active; when the sidecar drains, `on_drain` takes it out of the pool, and it is cut if the
/// drain is forced.
fn drive<H, F, E>(c: &Connector<'_, H>, target: SocketAddr, what: &'static str, connection: F, on_drain: impl FnOnce() + Send + 'static)
where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let watcher = c.drain.clone();
    let active = ActiveGuard::new(&c.metrics.active);
    c.tasks.spawn(async move {
        let _active = active;
        tokio::pin!(connection);
        tokio::select! {
            ended = &mut connection => {
                if let Err(error) = ended {
                    tracing::debug!(%target, %error, "pooled {what} connection ended");
                }
                return;
            }
            () = watcher.signaled() => {}
        }
        on_drain();
        let _ = watcher.unless_forced(connection).await;
    });
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
