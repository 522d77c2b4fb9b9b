//! Tells an application's HTTP/2 connection (prior knowledge: gRPC, h2c) from an HTTP/1.x one by
//! its first bytes, and gives the connection back with those bytes still to be read.
//!
//! In: an accepted application connection. Out: [`Sniffed`], whose reads start with the bytes
//! read here, and whether it opened with HTTP/2's client preface. Knowing the protocol before
//! building the connection lets each connection task hold only its own protocol's state:
//! HTTP/1.1 connections, the many idle keep-alive ones included, do not carry room for an
//! HTTP/2 session's (as a connection that may turn out to be either must).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What every HTTP/2 connection opens with (RFC 9113, section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An application connection whose first bytes were read to tell its protocol.
pub struct Sniffed {
    head: [u8; PREFACE.len()],
    /// The part of `head` not yet read again.
    start: usize,
    end: usize,
    io: TcpStream,
}

/// Reads `io` until its first bytes differ from HTTP/2's preface or match it whole (or the
/// application closes): the connection, and whether it speaks HTTP/2. An HTTP/1.x request
/// differs at its first byte or within its method (`PUT`, `POST`, `PATCH`), one read.
pub async fn sniff(mut io: TcpStream) -> io::Result<(Sniffed, bool)> {
    let mut head = [0; PREFACE.len()];
    let mut end = 0;
    while end < PREFACE.len() {
        let n = io.read(&mut head[end..]).await?;
        if n == 0 {
            break;
        }
        end += n;
        if head[..end] != PREFACE[..end] {
            break;
        }
    }
    Ok((Sniffed { head, start: 0, end, io }, &head == PREFACE))
}

impl AsyncRead for Sniffed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            let rest = &this.head[this.start..this.end];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Sniffed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// Sends `pieces` (one write each, apart) from a client, sniffs the accepted side and reads
    /// it to the end: whether it was taken for HTTP/2, and every byte it read.
    async fn sniffed(pieces: &[&'static [u8]]) -> (bool, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let pieces = pieces.to_vec();
        let writer = tokio::spawn(async move {
            for piece in pieces {
                client.write_all(piece).await.expect("write");
                client.flush().await.expect("flush");
                tokio::task::yield_now().await;
            }
            client.shutdown().await.expect("shutdown");
        });
        let (mut io, http2) = sniff(accepted).await.expect("sniff");
        let mut read = Vec::new();
        io.read_to_end(&mut read).await.expect("read");
        writer.await.expect("writer");
        (http2, read)
    }

    #[tokio::test]
    async fn http1_requests_and_http2_prefaces_are_told_apart_and_read_whole() {
        let get = b"GET /1k.bin HTTP/1.1\r\nHost: backend\r\n\r\n";
        assert_eq!(sniffed(&[get]).await, (false, get.to_vec()));
        // Methods that start like the preface.
        let put = b"PUT / HTTP/1.1\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(sniffed(&[put]).await, (false, put.to_vec()));
        assert_eq!(sniffed(&[b"PR", b"OPFIND / HTTP/1.1\r\n\r\n"]).await, (false, b"PROPFIND / HTTP/1.1\r\n\r\n".to_vec()));
        // The preface in pieces, then a frame.
        let (http2, read) = sniffed(&[&PREFACE[..3], &PREFACE[3..20], &PREFACE[20..], b"\0\0\0\x04\0\0\0\0\0"]).await;
        assert!(http2);
        assert_eq!(read, [&PREFACE[..], b"\0\0\0\x04\0\0\0\0\0"].concat());
        // Closed within the preface: not HTTP/2, and what came is still read.
        assert_eq!(sniffed(&[b"PRI * HT"]).await, (false, b"PRI * HT".to_vec()));
        assert_eq!(sniffed(&[]).await, (false, Vec::new()));
    }
}
