//! QUIC and TLS settings of the tunnel between gateways: transport (keep-alive, idle timeout,
//! stream limits), and quinn configs made from the zone identity's rustls configs, so QUIC and
//! the TCP+TLS fallback present and check exactly the same identities.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use strait_pki::Identity;
use strait_proxy_core::tls::ALPN_ZONE_TUNNEL;
use strait_proxy_core::TlsIdentity;
use tokio::io::{AsyncRead, AsyncWrite};

/// A tunnelled connection's byte stream: a QUIC stream or a TLS-over-TCP connection.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Streams one peer may have open at once: every proxied connection between two zones is one.
const MAX_STREAMS: u32 = 20_000;

/// Keep-alives at a third of `idle_timeout`, so a dead path is noticed within it.
pub fn transport(idle_timeout: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(idle_timeout / 3));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle_timeout).ok());
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(0u32.into());
    // Room for fast connections at WAN round-trip times: one stream may have 16 MB in flight
    // (160 MB/s at 100 ms), all of them together 32 MB. 4 MB capped one connection at 69 MB/s
    // at 50 ms, where a direct TCP connection with as much send buffer made 160 MB/s.
    t.stream_receive_window((16u32 * 1024 * 1024).into());
    t.receive_window((32u32 * 1024 * 1024).into());
    t.send_window(32 * 1024 * 1024);
    Arc::new(t)
}

/// The ingress's QUIC server config: mandatory client certificate under the system trust.
pub fn server(tls: &TlsIdentity, idle_timeout: Duration) -> Result<quinn::ServerConfig, String> {
    let crypto = QuicServerConfig::try_from(tls.server_config()).map_err(|e| format!("QUIC server TLS: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(idle_timeout));
    Ok(config)
}

/// A QUIC client config that accepts only `zone`'s identity.
pub fn client(tls: &TlsIdentity, zone: &str, idle_timeout: Duration) -> Result<quinn::ClientConfig, String> {
    let expected = Identity::zone(zone).map_err(|e| e.to_string())?;
    let crypto = QuicClientConfig::try_from(tls.client_config(&expected, ALPN_ZONE_TUNNEL)).map_err(|e| format!("QUIC client TLS: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(idle_timeout));
    Ok(config)
}

/// The TLS server name sent to `zone`'s gateway (identities are checked by SPIFFE ID, not by it).
pub fn server_name(zone: &str) -> String {
    format!("{zone}.zone.strait")
}
