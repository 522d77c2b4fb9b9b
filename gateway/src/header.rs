//! The header that opens each tunnelled connection between gateways, and the ingress's answer.
//!
//! Request (egress → ingress), then the connection's raw bytes:
//! `[version = 1][length: u8][SNI: length bytes]`, the SNI of the sidecar's inner TLS session
//! (`<service>.<mesh>[.<zone>].strait`). Answer (ingress → egress), then the raw bytes back:
//! `[version = 1][status: u8]`. The egress sends the connection's first bytes right after the
//! header without waiting for the answer, so the tunnel adds no round trip; the answer is read
//! (and stripped) in front of the first bytes that come back ([`Answered`]).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The header's version.
pub const VERSION: u8 = 1;

/// The ingress's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    /// Connected to an endpoint; bytes follow.
    Ok = 0,
    /// This zone hosts no such service.
    UnknownService = 1,
    /// The service has no endpoint that accepted a connection.
    Unreachable = 2,
    /// The header was malformed or of an unknown version.
    BadHeader = 3,
    /// The gateway is shutting down.
    Draining = 4,
}

impl Status {
    fn from_u8(b: u8) -> Option<Status> {
        [Status::Ok, Status::UnknownService, Status::Unreachable, Status::BadHeader, Status::Draining].into_iter().find(|s| *s as u8 == b)
    }

    /// A short reason, for logs and metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::UnknownService => "unknown_service",
            Status::Unreachable => "unreachable",
            Status::BadHeader => "bad_header",
            Status::Draining => "draining",
        }
    }
}

/// Encodes the request header for `sni`.
pub fn request(sni: &str) -> Result<Vec<u8>, io::Error> {
    let len = u8::try_from(sni.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "SNI longer than 255 bytes"))?;
    let mut out = Vec::with_capacity(2 + sni.len());
    out.extend_from_slice(&[VERSION, len]);
    out.extend_from_slice(sni.as_bytes());
    Ok(out)
}

/// Reads a request header; `Err(Status::BadHeader)` when it is not one.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, Status> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.map_err(|_| Status::BadHeader)?;
    if head[0] != VERSION {
        return Err(Status::BadHeader);
    }
    let mut sni = vec![0u8; usize::from(head[1])];
    r.read_exact(&mut sni).await.map_err(|_| Status::BadHeader)?;
    String::from_utf8(sni).map_err(|_| Status::BadHeader)
}

/// Encodes an answer.
pub fn answer(status: Status) -> [u8; 2] {
    [VERSION, status as u8]
}

/// A stream from the ingress whose first two bytes are its answer: reads fail with the refusal
/// when the answer is not [`Status::Ok`], and the answer is never passed on. Writes go straight
/// through.
pub struct Answered<S> {
    inner: S,
    head: [u8; 2],
    got: usize,
}

impl<S> Answered<S> {
    /// Wraps a freshly opened tunnel stream.
    pub fn new(inner: S) -> Self {
        Answered { inner, head: [0; 2], got: 0 }
    }
}

/// Why the ingress refused, as an I/O error.
fn refused(status: Option<Status>) -> io::Error {
    let reason = status.map_or("an unknown answer", Status::reason);
    io::Error::new(io::ErrorKind::ConnectionRefused, format!("the remote zone's gateway refused the connection: {reason}"))
}

impl<S: AsyncRead + Unpin> AsyncRead for Answered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.got < 2 {
            let mut head = ReadBuf::new(&mut this.head[this.got..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut head))?;
            let n = head.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the tunnel closed before the remote gateway answered",
                )));
            }
            this.got += n;
            if this.got == 2 && (this.head[0] != VERSION || this.head[1] != Status::Ok as u8) {
                return Poll::Ready(Err(refused(if this.head[0] == VERSION { Status::from_u8(this.head[1]) } else { None })));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Answered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_request_round_trips_and_garbage_is_refused() {
        let mut bytes = request("backend.default.zone-2.strait").unwrap();
        bytes.extend_from_slice(b"\x16\x03\x01rest");
        let mut r = &bytes[..];
        assert_eq!(read_request(&mut r).await.unwrap(), "backend.default.zone-2.strait");
        assert_eq!(r, b"\x16\x03\x01rest", "the connection's bytes are left unread");
        for bad in [&b"\x02\x01a"[..], b"\x01\x05ab", b"\x01\x02\xff\xfe", b""] {
            assert_eq!(read_request(&mut &bad[..]).await, Err(Status::BadHeader), "{bad:?}");
        }
        assert!(request(&"a".repeat(256)).is_err());
    }

    #[tokio::test]
    async fn the_answer_is_stripped_or_turned_into_the_refusal() {
        let (mut ingress, egress) = tokio::io::duplex(64);
        let mut answered = Answered::new(egress);
        ingress.write_all(&answer(Status::Ok)).await.unwrap();
        ingress.write_all(b"hello").await.unwrap();
        drop(ingress);
        let mut got = Vec::new();
        answered.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");

        let (mut ingress, egress) = tokio::io::duplex(64);
        ingress.write_all(&answer(Status::UnknownService)).await.unwrap();
        let err = Answered::new(egress).read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(err.to_string().contains("unknown_service"), "{err}");

        let (ingress, egress) = tokio::io::duplex(64);
        drop(ingress);
        let err = Answered::new(egress).read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
