//! Outbound: open an mTLS connection to a peer sidecar and check that it is who we expect.
//!
//! In: the peer's address, a client config for the SPIFFE ID expected there (from
//! [`TlsIdentity::client_config`](crate::identity::TlsIdentity::client_config)), and the SNI to
//! send (a routing label for east-west gateways, not checked against the certificate). Out: a
//! TLS stream to the peer, or an [`OutboundError`] that tells an unreachable peer from an
//! untrusted or unexpected one. [`forward`] then proxies a local application connection
//! through it.
//!
//! In TLS 1.3 the client finishes its handshake before the server has checked the client's
//! certificate: a server that refuses us (untrusted chain, not authorized) shows up as an
//! error or an end of stream on the first read, not as a failed [`connect`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{CertificateError, ClientConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::{Active, TunnelMetrics};
use crate::copy::{copy_bidirectional, Copied, CopyError, CopyOptions};
use crate::tls::IdentityMismatch;

/// Why an outbound mTLS connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The TCP connection failed.
    #[error("connecting to {target}: {source}")]
    Connect {
        /// The peer's address.
        target: SocketAddr,
        /// The socket error.
        source: io::Error,
    },
    /// TCP connect plus TLS handshake took longer than the timeout.
    #[error("connecting to {target}: no mTLS session within {timeout:?}")]
    Timeout {
        /// The peer's address.
        target: SocketAddr,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The server's certificate is valid but names another identity.
    #[error("connecting to {target}: {mismatch}")]
    IdentityMismatch {
        /// The peer's address.
        target: SocketAddr,
        /// What was expected and what was presented.
        mismatch: IdentityMismatch,
    },
    /// The TLS handshake failed otherwise (untrusted or revoked chain, protocol error, alert).
    #[error("TLS handshake with {target}: {source}")]
    Handshake {
        /// The peer's address.
        target: SocketAddr,
        /// The handshake error (wrapping a `rustls::Error` when it came from TLS).
        source: io::Error,
    },
}

/// Connects to `target` and completes an mTLS handshake with `config`, sending `sni`.
pub async fn connect(
    target: SocketAddr,
    config: Arc<ClientConfig>,
    sni: ServerName<'static>,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, OutboundError> {
    let attempt = async {
        let stream = TcpStream::connect(target).await.map_err(|source| OutboundError::Connect { target, source })?;
        let _ = stream.set_nodelay(true);
        TlsConnector::from(config).connect(sni, stream).await.map_err(|source| handshake_error(target, source))
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(Err(OutboundError::Timeout { target, timeout }))
}

/// Proxies `app` (a local application connection) through an mTLS connection to `target` and
/// counts it in `metrics` (`bytes_out` is what the application sent).
pub async fn forward(
    app: TcpStream,
    target: SocketAddr,
    config: Arc<ClientConfig>,
    sni: ServerName<'static>,
    options: &ForwardOptions,
    metrics: &TunnelMetrics,
) -> Result<Copied, ForwardError> {
    metrics.connections.inc();
    let upstream = match connect(target, config, sni, options.connect_timeout).await {
        Ok(upstream) => upstream,
        Err(error) => {
            if matches!(error, OutboundError::IdentityMismatch { .. } | OutboundError::Handshake { .. }) {
                metrics.handshake_errors.inc();
            }
            return Err(ForwardError::Connect(error));
        }
    };
    forward_connected(app, upstream, options, metrics).await
}

/// Proxies `app` through `upstream`, an mTLS connection the caller opened with [`connect`]
/// (counting it in `metrics.connections` itself, failed attempts included).
pub async fn forward_connected(
    mut app: TcpStream,
    mut upstream: TlsStream<TcpStream>,
    options: &ForwardOptions,
    metrics: &TunnelMetrics,
) -> Result<Copied, ForwardError> {
    let _active = Active::new(&metrics.active);
    let _ = app.set_nodelay(true);
    let result = copy_bidirectional(&mut app, &mut upstream, &options.copy).await;
    let copied = result.as_ref().map_or_else(CopyError::copied, |copied| *copied);
    metrics.bytes_out.inc_by(copied.a_to_b);
    metrics.bytes_in.inc_by(copied.b_to_a);
    result.map_err(ForwardError::Copy)
}

/// How [`forward`] connects and copies.
#[derive(Clone, Debug)]
pub struct ForwardOptions {
    /// Longest TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Buffer size and idle timeout of the copy.
    pub copy: CopyOptions,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions { connect_timeout: Duration::from_secs(5), copy: CopyOptions::default() }
    }
}

/// Why [`forward`] ended early.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The mTLS connection to the peer could not be opened.
    #[error(transparent)]
    Connect(OutboundError),
    /// The copy failed after the connection was up (bytes moved are in the error).
    #[error(transparent)]
    Copy(CopyError),
}

fn handshake_error(target: SocketAddr, source: io::Error) -> OutboundError {
    let mismatch = source.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).and_then(|error| match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other.0.downcast_ref::<IdentityMismatch>().cloned(),
        _ => None,
    });
    match mismatch {
        Some(mismatch) => OutboundError::IdentityMismatch { target, mismatch },
        None => OutboundError::Handshake { target, source },
    }
}
