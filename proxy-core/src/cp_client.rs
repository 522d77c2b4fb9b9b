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
    let host = uri.host().ok_or_else(|| std::io::Error::other("the control plane address has no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    let target = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await?
        .find(|a| a.is_ipv4() == source.is_ipv4())
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address of the family of {source}")))?;
    let socket = if target.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    if let Err(error) = socket.bind(std::net::SocketAddr::new(source, 0)) {
        // Not an address of this host (behind NAT, say): the system picks the source.
        tracing::debug!(%source, %error, "connecting to the control plane from the address the system picks");
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}

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
