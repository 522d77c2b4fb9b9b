//! The proxies' side of their zone control plane's gRPC streams (DPS): the TLS channel, the
//! split between a refusal (the control plane said no: wait longer) and a broken stream, and
//! the reconnect loop with exponential back-off and full jitter. The proxy keeps serving its
//! last configuration meanwhile.
//!
//! In: the control plane's address, its CA and server name, and a session closure that runs
//! one stream to its end. Out: a connected [`Channel`], and [`run`], which calls the session
//! again until cancelled.

use std::future::Future;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// The control plane refused us (token, registration): retrying soon will not help.
    Refused(tonic::Status),
    /// The stream broke or could not be opened.
    Broken(String),
}

/// Sorts a gRPC status into a refusal or a broken stream.
pub fn classify(status: tonic::Status) -> End {
    use tonic::Code;
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::AlreadyExists | Code::FailedPrecondition => {
            End::Refused(status)
        }
        _ => End::Broken(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// Connects to the control plane at `address` (`https://host:port`) over TLS, verifying its
/// certificate for `server_name` against `ca_pem`. With `source`, the connection leaves from
/// that address when this host has it (the zone checks that a sidecar registers the address it
/// connects from); otherwise the system picks, as without.
pub async fn connect(address: &str, ca_pem: &str, server_name: &str, source: Option<IpAddr>) -> Result<Channel, String> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)).domain_name(server_name);
    let endpoint = Endpoint::from_shared(address.to_string())
        .and_then(|e| e.tls_config(tls))
        .map_err(|e| format!("invalid control plane address {address:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10));
    let connected = match source {
        None => endpoint.connect().await,
        Some(source) => {
            endpoint.connect_with_connector(tower::service_fn(move |uri: tonic::transport::Uri| connect_from(uri, source))).await
        }
    };
    connected.map_err(|e| format!("cannot connect to the zone control plane at {address}: {}", strait_runtime::telemetry::error_chain(&e)))
}

/// A TCP connection to `uri`'s host and port from `source` (if this host has that address).
async fn connect_from(uri: tonic::transport::Uri, source: IpAddr) -> std::io::Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>> {
    tcp_to(&uri, Some(source), None).await.map(hyper_util::rt::TokioIo::new)
}

/// A TCP connection to `uri`'s host and port, from `source` when given (if this host has that
/// address; otherwise the system picks, as without).
async fn tcp_to(
    uri: &tonic::transport::Uri,
    source: Option<IpAddr>,
    receive_buffer: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let host = uri.host().ok_or_else(|| std::io::Error::other("the control plane address has no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let target = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await?
        .find(|a| source.is_none_or(|s| a.is_ipv4() == s.is_ipv4()))
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address of the family of {source:?}")))?;
    let socket = if target.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if let Some(bytes) = receive_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    if let Some(source) = source {
        if let Err(error) = socket.bind(std::net::SocketAddr::new(source, 0)) {
            // Not an address of this host (behind NAT, say): the system picks the source.
            tracing::debug!(%source, %error, "connecting to the control plane from the address the system picks");
        }
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A DPS stream over the framed transport ([`strait_runtime::framed`]): what the sidecar
/// reads from the zone and a writer of what it sends.
pub struct Framed {
    /// The read half of the connection (see [`strait_runtime::framed::messages`]).
    pub read: tokio::io::ReadHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    /// The write half, the Open frame already sent.
    pub write: tokio::io::WriteHalf<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
}

/// How a proxy finds a zone whose host vanished: probes after 15 to 24 s of silence, then 3
/// more 5 s apart, so within 39 s (the gRPC transport pinged every 10 s). Spread and out of
/// step, since the proxies of a node (or a simulator's thousands) may go idle together and a
/// probe lost in a burst is not sent again (see [`strait_runtime::sockets::KeepAlive`]).
const FRAMED_KEEP_ALIVE: strait_runtime::sockets::KeepAlive = strait_runtime::sockets::KeepAlive {
    idle: Duration::from_secs(15),
    spread: Duration::from_secs(9),
    interval: Duration::from_secs(5),
    count: 3,
};

/// Opens a DPS stream over the framed transport to `address` (`https://host:port`), verifying
/// the zone's certificate for `server_name` against `ca_pem`, leaving from `source` as
/// [`connect`] does, and presents `token`. A zone that refuses the token says so in the
/// stream's first item.
pub async fn connect_framed(address: &str, ca_pem: &str, server_name: &str, source: Option<IpAddr>, token: &str) -> Result<Framed, String> {
    let cannot = |e: &dyn std::fmt::Display| format!("cannot connect to the zone control plane at {address}: {e}");
    let uri: tonic::transport::Uri = address.parse().map_err(|e| format!("invalid control plane address {address:?}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("the control plane CA does not parse: {e}"))?;
        roots.add(cert).map_err(|e| format!("the control plane CA is not usable: {e}"))?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| cannot(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![strait_runtime::framed::ALPN.to_vec()];
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("invalid control plane server name {server_name:?}: {e}"))?;
    let tcp = tokio::time::timeout(Duration::from_secs(5), tcp_to(&uri, source, Some(FRAMED_RECEIVE_BUFFER)))
        .await
        .map_err(|_| cannot(&"no TCP connection within 5s"))?
        .map_err(|e| cannot(&e))?;
    let open = async {
        if let Err(error) = strait_runtime::sockets::keep_alive(&tcp, &FRAMED_KEEP_ALIVE) {
            tracing::debug!(%error, "no TCP keep-alive on the control plane connection");
        }
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.map_err(|e| {
            if e.to_string().contains("NoApplicationProtocol") {
                cannot(&"it does not offer the framed DPS transport (TLS ALPN strait-dps/1): the zone control plane is older than this proxy; upgrade it first")
            } else {
                cannot(&e)
            }
        })?;
        if tls.get_ref().1.alpn_protocol() != Some(strait_runtime::framed::ALPN) {
            return Err(cannot(&"it did not take the framed DPS transport (TLS ALPN strait-dps/1): the zone control plane is older than this proxy; upgrade it first"));
        }
        let (read, mut write) = tokio::io::split(tls);
        strait_runtime::framed::write_frame(&mut write, strait_runtime::framed::Kind::Open, token.as_bytes())
            .await
            .map_err(|e| cannot(&e))?;
        Ok(Framed { read, write })
    };
    // The zone takes a bounded number of handshakes at a time: when thousands of proxies
    // reconnect together, a handshake may wait its turn for a while (the zone gives up on one
    // after 30 s).
    tokio::time::timeout(FRAMED_HANDSHAKE_WITHIN, open)
        .await
        .map_err(|_| cannot(&format!("no TLS session within {FRAMED_HANDSHAKE_WITHIN:?}")))?
}

/// The kernel's receive buffer of a proxy's framed stream (set before connecting, so the window
/// it offers the zone stays this small): what the zone sends and the proxy has not read yet
/// stays bounded (see the zone's send buffer, `strait_zone_cp::dps::framed`).
const FRAMED_RECEIVE_BUFFER: u32 = 64 * 1024;

/// How long a proxy waits for its TLS session with the zone once connected.
const FRAMED_HANDSHAKE_WITHIN: Duration = Duration::from_secs(60);

/// The wait before reconnection number `attempt` (from 0): 250 ms doubling up to `max`, of
/// which a random half to all, so proxies cut off together do not come back together.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let cap = Duration::from_millis(250).saturating_mul(1 << attempt.min(10)).min(max);
    cap.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Runs `session` until `cancel`, again after each end, waiting with exponential back-off
/// (250 ms doubling up to `max_backoff`, full jitter; a refusal starts long). A session that
/// lasted 30 s resets the back-off. `who` ("sidecar", "gateway") names the proxy in logs.
pub async fn run<F, Fut>(cancel: CancellationToken, who: &str, address: &str, max_backoff: Duration, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = End>,
{
    let mut attempt: u32 = 0;
    loop {
        let started = Instant::now();
        let end = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            end = session() => end,
        };
        match &end {
            End::Refused(s) => tracing::error!(code = ?s.code(), reason = s.message(), "the zone control plane refused this {who}"),
            End::Broken(reason) => tracing::warn!(reason, "control plane stream ended; keeping the last configuration"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            attempt = 0;
        }
        if matches!(end, End::Refused(_)) {
            attempt = attempt.max(6);
        }
        let wait = backoff(attempt, max_backoff);
        attempt += 1;
        tracing::info!(retry_in = ?wait, cp = %address, "reconnecting to the zone control plane");
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Attaches `Bearer <token>` to a request.
#[allow(clippy::result_large_err)]
pub fn with_bearer<T>(message: T, token: &str) -> Result<tonic::Request<T>, End> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| End::Refused(tonic::Status::unauthenticated("the token file holds characters not allowed in a header")))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS server for "strait-zone" offering `alpn`, on a free port: its address, its CA,
    /// and what it read from the one connection it takes (the first frame, or the handshake's
    /// error).
    async fn zone_offering(
        alpn: &[u8],
    ) -> (String, String, tokio::task::JoinHandle<Result<(strait_runtime::framed::Kind, Vec<u8>), String>>) {
        let ca = strait_pki::CertificateAuthority::new_root(strait_pki::SYSTEM_TRUST_DOMAIN, "test CA", Duration::from_secs(3600)).unwrap();
        let key = strait_pki::csr::KeyAndCsr::generate("strait-zone").unwrap();
        let chain = ca.sign_server(&key.csr_pem, &["strait-zone".to_string()], Duration::from_secs(3600)).unwrap();
        let certs = rustls_pemfile::certs(&mut chain.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let private = rustls_pemfile::private_key(&mut key.key_pem.as_bytes()).unwrap().unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("https://{}", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)).accept(tcp).await.map_err(|e| e.to_string())?;
            strait_runtime::framed::read_frame(&mut tls, 1024).await.map_err(|e| e.to_string())?.ok_or_else(|| "closed".to_string())
        });
        (address, ca.cert_pem().to_string(), served)
    }

    #[tokio::test]
    async fn a_framed_stream_opens_with_the_token_and_an_older_zone_is_named() {
        let (address, ca, served) = zone_offering(strait_runtime::framed::ALPN).await;
        let opened = connect_framed(&address, &ca, "strait-zone", None, "the-token").await;
        assert!(opened.is_ok(), "{:?}", opened.err());
        let (kind, token) = served.await.unwrap().unwrap();
        assert_eq!((kind, token.as_slice()), (strait_runtime::framed::Kind::Open, &b"the-token"[..]));

        // A zone control plane that speaks only gRPC (HTTP/2).
        let (address, ca, served) = zone_offering(b"h2").await;
        let error = connect_framed(&address, &ca, "strait-zone", None, "the-token").await.err().expect("refused");
        assert!(error.contains("older than this proxy; upgrade it first"), "{error}");
        assert!(served.await.unwrap().is_err(), "the handshake failed on the zone's side too");
    }

    #[test]
    fn refusals_are_told_from_broken_streams() {
        assert!(matches!(classify(tonic::Status::unauthenticated("x")), End::Refused(_)));
        assert!(matches!(classify(tonic::Status::already_exists("x")), End::Refused(_)));
        assert!(matches!(classify(tonic::Status::unavailable("down")), End::Broken(m) if m.contains("down")));
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_are_retried_with_growing_waits_until_cancelled() {
        let cancel = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let mut at = Vec::new();
        let stop = cancel.clone();
        run(cancel, "sidecar", "https://cp:1", Duration::from_secs(4), || {
            at.push(started.elapsed());
            if at.len() == 6 {
                stop.cancel();
            }
            async { End::Broken("no".into()) }
        })
        .await;
        assert_eq!(at.len(), 6);
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= Duration::from_millis(125) && gaps[0] <= Duration::from_millis(250), "{gaps:?}");
        assert!(gaps[4] >= Duration::from_secs(2) && gaps[4] <= Duration::from_secs(4), "capped at the maximum: {gaps:?}");
    }
}
