//! Sidecars' DPS streams over the framed transport ([`strait_runtime::framed`]): the same
//! sessions as over gRPC, on the same port, told apart by the TLS ALPN the sidecar asks for.
//! A zone holds one such connection per sidecar, with no buffer of its own between messages,
//! where an HTTP/2 connection holds about 30 KB.
//!
//! In: handshaken TLS connections. Out: the framed ones served here (the Open frame's token
//! authenticated, the session started, its messages written, a refusal or the session's end
//! written as a Close frame); the others passed on to the gRPC server.

use std::time::Duration;

use futures::{Stream, StreamExt};
use strait_runtime::framed::{self, Kind};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tonic::Status;

use super::{DpsService, Inbound};

/// Longest a client may take to send its Open frame after the handshake.
const OPEN_WITHIN: Duration = Duration::from_secs(10);
/// The largest Open frame (a token).
const MAX_OPEN: usize = 64 * 1024;
/// The largest message from a sidecar (gRPC's default limit).
const MAX_INBOUND: usize = 4 * 1024 * 1024;
/// How the zone finds a sidecar whose host vanished: probes after 10 to 19 s of silence, then
/// 3 more 4 s apart, so within 31 s (the gRPC transport pinged every 5 s). Spread and out of
/// step, since the zone's thousands of connections go idle together and a probe lost in a
/// burst is not sent again (see [`strait_runtime::sockets::KeepAlive`]).
const KEEP_ALIVE: strait_runtime::sockets::KeepAlive = strait_runtime::sockets::KeepAlive {
    idle: Duration::from_secs(10),
    spread: Duration::from_secs(9),
    interval: Duration::from_secs(4),
    count: 3,
};
/// The kernel's send buffer for a sidecar's connection (it counts twice this).
const SEND_BUFFER: usize = 32 * 1024;

/// Serves the connections of `incoming` that asked for the framed transport (each in a task of
/// `service`'s) and yields the others, for the gRPC server.
pub fn divert<S>(incoming: S, service: DpsService) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>>
where
    S: Stream<Item = std::io::Result<TlsStream<TcpStream>>>,
{
    incoming.filter_map(move |connection| {
        let passed = match connection {
            Ok(tls) if tls.get_ref().1.alpn_protocol() == Some(framed::ALPN) => {
                service.tasks.spawn(serve(service.clone(), tls));
                None
            }
            other => Some(other),
        };
        std::future::ready(passed)
    })
}

/// One framed connection, to its end.
async fn serve(service: DpsService, tls: TlsStream<TcpStream>) {
    let peer = tls.get_ref().0.peer_addr().ok();
    if let Err(error) = strait_runtime::sockets::keep_alive(tls.get_ref().0, &KEEP_ALIVE) {
        tracing::debug!(?peer, %error, "no TCP keep-alive on a sidecar's connection");
    }
    // What waits in the kernel for a sidecar that does not read stays small: thousands of
    // stalled sidecars each holding megabytes put the host's TCP under memory pressure, where it
    // drops segments, keep-alive probes too, and cut off live streams (measured: a fifth of
    // 10,000 simulated sidecars). The session then waits to send, as HTTP/2's flow control
    // made it wait.
    if let Err(error) = strait_runtime::sockets::cap_send_buffer(tls.get_ref().0, SEND_BUFFER) {
        tracing::debug!(?peer, %error, "the send buffer of a sidecar's connection is not capped");
    }
    let (mut read, mut write) = tokio::io::split(tls);
    let token = match tokio::time::timeout(OPEN_WITHIN, framed::read_frame(&mut read, MAX_OPEN)).await {
        Ok(Ok(Some((Kind::Open, token)))) => String::from_utf8(token).map_err(|_| Status::unauthenticated("the token is not UTF-8")),
        Ok(Ok(Some(_))) => Err(Status::invalid_argument("the first frame must be Open, with the dataplane token")),
        Ok(Ok(None)) => return,
        Ok(Err(error)) => return tracing::debug!(?peer, %error, "a sidecar's connection broke before its Open frame"),
        Err(_) => Err(Status::deadline_exceeded("no Open frame within 10s")),
    };
    let inbound: Inbound = Box::pin(framed::messages(read, MAX_INBOUND));
    let opened = match token {
        Ok(token) => Box::pin(service.open_stream(&token, peer, inbound)).await,
        Err(status) => Err(status),
    };
    let mut outbound = match opened {
        Ok(outbound) => outbound,
        Err(status) => {
            let _ = framed::write_close(&mut write, &status).await;
            return;
        }
    };
    while let Some(item) = outbound.next().await {
        let written = match item {
            Ok(message) => framed::write_message(&mut write, &message).await,
            Err(status) => return drop(framed::write_close(&mut write, &status).await),
        };
        if let Err(error) = written {
            // The session hears it too: its stream's reads fail, its sends find no one.
            return tracing::debug!(?peer, %error, "writing to a sidecar failed");
        }
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
}
