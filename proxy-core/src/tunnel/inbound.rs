//! Inbound: terminate mTLS from another sidecar, authorize its identity, forward to the app.
//!
//! In: a bound listener (port 15006 or an explicit inbound port), the proxy's
//! [`IdentityStore`], where the application listens, an authorization callback on the peer's
//! SPIFFE ID, metrics and a drain watcher. Out: one task per connection, owned by the accept
//! loop, that completes the TLS handshake with the server config current at accept time (so a
//! rotation affects new connections only), closes the connection of a peer that is not
//! authorized (counted in [`TunnelMetrics::denied`]), and otherwise copies bytes both ways
//! between the peer and a new connection to the application.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use strait_pki::Identity;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::{Active, TunnelMetrics};
use crate::copy::{copy_bidirectional, CopyOptions};
use crate::drain::DrainWatcher;
use crate::identity::IdentityStore;
use crate::tls;

/// How inbound connections are handled.
#[derive(Clone, Debug)]
pub struct InboundConfig {
    /// Where the application listens (usually `127.0.0.1:<port>`).
    pub forward_to: SocketAddr,
    /// Longest a peer may take to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Longest the application may take to accept the forwarded connection.
    pub connect_timeout: Duration,
    /// Buffer size and idle timeout of the copy.
    pub copy: CopyOptions,
    /// The application speaks HTTP/1.1: answer an unauthorized peer's request with a 403
    /// naming the reason, instead of closing the connection without a word.
    pub deny_with_http_403: bool,
    /// Takes over sessions that negotiated ALPN `h2` or `http/1.1` (HTTP between sidecars); authorization
    /// is then the handler's, per request, so that a permission change applies to pooled
    /// connections too. Without it every session is a TCP tunnel.
    pub http: Option<HttpHandler>,
    /// The connect and idle timeouts of each new tunnel, read when it is authorised (they may
    /// change with the configuration); without it, `connect_timeout` and `copy.idle_timeout`.
    pub timeouts: Option<TunnelTimeouts>,
    /// Told of each tunnel once it has closed (an access log).
    pub on_closed: Option<TunnelClosed>,
}

/// What a closed tunnel was.
#[derive(Debug)]
pub struct Closed<'a> {
    /// The peer's SPIFFE ID.
    pub peer: &'a Identity,
    /// The zone whose CA issued the peer's certificate, when it says.
    pub peer_zone: Option<&'a str>,
    /// When it started.
    pub begun: std::time::SystemTime,
    /// How long it lasted.
    pub duration: Duration,
    /// The bytes moved: `a_to_b` from the peer, `b_to_a` to it.
    pub copied: crate::copy::Copied,
}

/// Told of each tunnel once it has closed.
#[derive(Clone)]
#[allow(clippy::type_complexity)]
pub struct TunnelClosed(pub Arc<dyn Fn(&Closed<'_>) + Send + Sync>);

impl std::fmt::Debug for TunnelClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelClosed")
    }
}

/// Gives the current (connect timeout, idle timeout) of a new tunnel.
#[derive(Clone)]
pub struct TunnelTimeouts(pub Arc<dyn Fn() -> (Duration, Option<Duration>) + Send + Sync>);

impl std::fmt::Debug for TunnelTimeouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelTimeouts")
    }
}

/// Serves one inbound HTTP session (ALPN `h2` or `http/1.1`: the handler reads which from the
/// stream), given the TLS stream and the peer's verified identity.
#[derive(Clone)]
pub struct HttpHandler(pub Arc<dyn Fn(TlsStream<TcpStream>, Identity) -> BoxFuture + Send + Sync>);

/// The future of an [`HttpHandler`].
pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl std::fmt::Debug for HttpHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpHandler")
    }
}

impl InboundConfig {
    /// Defaults for forwarding to `forward_to`: 10 s handshake, 5 s connect, no idle timeout.
    pub fn new(forward_to: SocketAddr) -> Self {
        InboundConfig {
            forward_to,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            copy: CopyOptions::default(),
            deny_with_http_403: false,
            http: None,
            timeouts: None,
            on_closed: None,
        }
    }
}

/// Reads the request head (best effort, bounded in size and time), then answers 403.
async fn answer_403<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S, peer: &Identity) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), read_head).await;
    let body = format!("strait: {peer} is not allowed to reach this service (MeshTrafficPermission)\n");
    let response =
        format!("HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.flush().await;
}

/// Accepts mTLS connections on `listener` until the drain is signaled, then waits for the
/// open connections to finish (they are cut if the drain is forced).
pub async fn serve<A>(
    listener: TcpListener,
    identities: Arc<IdentityStore>,
    config: InboundConfig,
    authorize: A,
    metrics: TunnelMetrics,
    drain: DrainWatcher,
) where
    A: Fn(&Identity) -> bool + Send + Sync + 'static,
{
    serve_with(listener, identities, Arc::new(Handler::new(config, authorize, metrics)), drain).await
}

/// [`serve`] with a handler built beforehand (and maybe shared with the transparent inbound
/// port).
pub async fn serve_with<A>(listener: TcpListener, identities: Arc<IdentityStore>, shared: Arc<Handler<A>>, drain: DrainWatcher)
where
    A: Fn(&Identity) -> bool + Send + Sync + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = drain.signaled() => break,
            Some(joined) = connections.join_next() => {
                if let Err(error) = joined {
                    tracing::error!(%error, "inbound connection task failed");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer_addr)) => {
                    let (shared, identities, drain) = (shared.clone(), identities.clone(), drain.clone());
                    // In the listener's span, so that each connection's span is its child.
                    connections.spawn(async move { shared.connection(stream, peer_addr, &identities, &drain).await }.in_current_span());
                }
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning on the error.
                    tracing::warn!(%error, "inbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    while let Some(joined) = connections.join_next().await {
        if let Err(error) = joined {
            tracing::error!(%error, "inbound connection task failed");
        }
    }
}

/// Serves the connections of one inbound: the accept loop of its own port ([`serve`]) and the
/// transparent inbound port, which hands each connection to the inbound of its original
/// destination, both use it.
pub struct Handler<A> {
    config: InboundConfig,
    authorize: A,
    metrics: TunnelMetrics,
}

impl<A: Fn(&Identity) -> bool> Handler<A> {
    /// A handler forwarding as `config` says to peers `authorize` accepts.
    pub fn new(config: InboundConfig, authorize: A, metrics: TunnelMetrics) -> Self {
        Handler { config, authorize, metrics }
    }

    /// Serves one accepted connection to its end (cut when the drain is forced), counted and
    /// in a span that names the peer.
    pub async fn connection(&self, stream: TcpStream, peer_addr: SocketAddr, identities: &IdentityStore, drain: &DrainWatcher) {
        self.metrics.connections.inc();
        // Read the current identity once, at accept: a rotation later on does not touch this
        // connection.
        let server_config = identities.current().server_config();
        // A child of the caller's span (the listener's, naming the service): every line of the
        // connection names its address and, once the handshake is done, the caller's SPIFFE ID.
        let span = tracing::info_span!("connection", %peer_addr, peer = tracing::field::Empty);
        async {
            let _active = Active::new(&self.metrics.active);
            if drain.unless_forced(self.handle(stream, server_config)).await.is_none() {
                tracing::debug!("connection cut: drain deadline passed");
            }
        }
        .instrument(span)
        .await
    }

    async fn handle(&self, stream: TcpStream, server_config: Arc<ServerConfig>) {
        let _ = stream.set_nodelay(true);
        let accept = TlsAcceptor::from(server_config).accept(stream);
        let mut tls = match tokio::time::timeout(self.config.handshake_timeout, accept).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(error)) => {
                self.metrics.handshake_errors.inc();
                tracing::debug!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                self.metrics.handshake_errors.inc();
                tracing::debug!(timeout = ?self.config.handshake_timeout, "TLS handshake timed out");
                return;
            }
        };
        let peer = match tls::peer_identity(tls.get_ref().1) {
            Ok(peer) => peer,
            Err(error) => {
                self.metrics.handshake_errors.inc();
                tracing::debug!(%error, "no peer identity after the handshake");
                return;
            }
        };
        tracing::Span::current().record("peer", tracing::field::display(&peer));
        if let Some(http) = &self.config.http {
            if matches!(tls.get_ref().1.alpn_protocol(), Some(tls::ALPN_H2 | tls::ALPN_HTTP1)) {
                (http.0)(tls, peer).await;
                return;
            }
        }
        if !(self.authorize)(&peer) {
            self.metrics.denied.inc();
            tracing::debug!("peer not authorized: closing");
            if self.config.deny_with_http_403 {
                answer_403(&mut tls, &peer).await;
            }
            // Best effort close_notify, so the peer reads a clean end of stream.
            let _ = tokio::time::timeout(Duration::from_secs(1), tls.shutdown()).await;
            return;
        }
        let mut copy = self.config.copy.clone();
        let connect_timeout = match &self.config.timeouts {
            Some(TunnelTimeouts(current)) => {
                let (connect, idle) = current();
                copy.idle_timeout = idle;
                connect
            }
            None => self.config.connect_timeout,
        };
        let app = match tokio::time::timeout(connect_timeout, TcpStream::connect(self.config.forward_to)).await {
            Ok(Ok(app)) => app,
            Ok(Err(error)) => {
                tracing::warn!(%error, app = %self.config.forward_to, "cannot connect to the application");
                return;
            }
            Err(_) => {
                tracing::warn!(app = %self.config.forward_to, "connecting to the application timed out");
                return;
            }
        };
        let _ = app.set_nodelay(true);
        let mut app = app;
        let (begun, started) = (std::time::SystemTime::now(), std::time::Instant::now());
        let (copied, error) = match copy_bidirectional(&mut tls, &mut app, &copy).await {
            Ok(copied) => (copied, None),
            Err(error) => (error.copied(), Some(error)),
        };
        self.metrics.bytes_in.inc_by(copied.a_to_b);
        self.metrics.bytes_out.inc_by(copied.b_to_a);
        if let Some(TunnelClosed(closed)) = &self.config.on_closed {
            let peer_zone = tls::peer_zone(tls.get_ref().1);
            closed(&Closed { peer: &peer, peer_zone: peer_zone.as_deref(), begun, duration: started.elapsed(), copied });
        }
        match error {
            Some(error) => tracing::debug!(%error, received = copied.a_to_b, sent = copied.b_to_a, "connection ended with an error"),
            None => tracing::debug!(received = copied.a_to_b, sent = copied.b_to_a, "connection closed"),
        }
    }
}
