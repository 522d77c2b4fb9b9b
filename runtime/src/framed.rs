//! A stream of protobuf messages each way over one TLS connection, without HTTP/2: the
//! transport of a sidecar's DPS stream (TLS ALPN [`ALPN`]), beside the same stream over gRPC.
//!
//! Why: a zone holds one stream per sidecar for the sidecar's whole life, and an HTTP/2
//! connection costs about 30 KB of fixed buffers on each side whatever it carries (h2's 16 KB
//! write buffer, 8 KB read buffer and 4 KB HPACK buffer, none configurable), plus its own task:
//! a third of the zone's memory per sidecar. Here a connection holds no buffer of its own
//! between messages: each frame is read into a vector of its exact size, decoded and freed, and
//! each message written from one vector freed once TLS has taken it.
//!
//! A frame is a kind (one byte), a length (four bytes, big-endian) and that many bytes:
//! - [`Kind::Open`], the client's first frame: the bearer token, in UTF-8;
//! - [`Kind::Message`]: one protobuf message (the client's `DataplaneMessage`s, the server's
//!   `ZoneMessage`s);
//! - [`Kind::Close`]: the stream ends with this status, a gRPC code (four bytes, big-endian)
//!   and its message in UTF-8; sent by the server, which then closes the connection.
//!
//! A connection that breaks or ends mid-frame ends the stream with `unavailable`; one that
//! ends cleanly between frames just ends it (the client left; a client takes a server's end
//! without a Close for a broken stream). The connection's TCP keep-alive (see [`crate::sockets::keep_alive`])
//! finds a peer that vanished without closing it.

use std::io;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::{Code, Status};

/// The ALPN protocol name of the framed DPS stream.
pub const ALPN: &[u8] = b"strait-dps/1";

/// Bytes before a frame's payload.
const HEADER: usize = 5;

/// A frame's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The client's credential (its first frame).
    Open,
    /// A protobuf message.
    Message,
    /// The stream's end, with a status.
    Close,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Open => 1,
            Kind::Message => 2,
            Kind::Close => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Open),
            2 => Some(Kind::Message),
            3 => Some(Kind::Close),
            _ => None,
        }
    }
}

/// Writes one frame and flushes it (the stream's messages are latency-bound, each is sent on
/// its own). The frame is built in one vector, freed when written.
pub async fn write_frame<W: AsyncWrite + Unpin>(writer: &mut W, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a frame over 4 GiB"))?;
    let mut frame = Vec::with_capacity(HEADER + payload.len());
    frame.push(kind.byte());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Writes `message` as a [`Kind::Message`] frame, encoded straight after the header.
pub async fn write_message<W: AsyncWrite + Unpin, M: prost::Message>(writer: &mut W, message: &M) -> io::Result<()> {
    let len = message.encoded_len();
    let len32 = u32::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a message over 4 GiB"))?;
    let mut frame = Vec::with_capacity(HEADER + len);
    frame.push(Kind::Message.byte());
    frame.extend_from_slice(&len32.to_be_bytes());
    message.encode(&mut frame).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    writer.write_all(&frame).await?;
    writer.flush().await
}

/// Writes each message `queue` yields as a frame, in a task of its own, until the queue's
/// senders are gone (`Ok`) or a write fails (its error). A stream's own side sends on the
/// queue and never waits on the connection itself: when the peer is slow to read, the queue
/// fills and a sender waits for room, while this task goes on draining it.
pub fn spawn_writer<W, M>(mut writer: W, mut queue: tokio::sync::mpsc::Receiver<M>) -> tokio::task::JoinHandle<io::Result<()>>
where
    W: AsyncWrite + Unpin + Send + 'static,
    M: prost::Message + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            write_message(&mut writer, &message).await?;
        }
        Ok(())
    })
}

/// Writes the [`Kind::Close`] frame of `status` and shuts the connection down.
pub async fn write_close<W: AsyncWrite + Unpin>(writer: &mut W, status: &Status) -> io::Result<()> {
    let mut payload = (status.code() as i32).to_be_bytes().to_vec();
    payload.extend_from_slice(status.message().as_bytes());
    write_frame(writer, Kind::Close, &payload).await?;
    writer.shutdown().await
}

/// The status a [`Kind::Close`] frame carries.
pub fn close_status(payload: &[u8]) -> Status {
    match payload.split_first_chunk::<4>() {
        Some((code, message)) => Status::new(Code::from_i32(i32::from_be_bytes(*code)), String::from_utf8_lossy(message)),
        None => Status::internal("a malformed close frame"),
    }
}

/// Reads the next frame, of at most `limit` bytes: `None` at a clean end of the connection
/// (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R, limit: usize) -> io::Result<Option<(Kind, Vec<u8>)>> {
    let mut header = [0u8; HEADER];
    // A connection that ends before a frame's first byte ended cleanly.
    match reader.read(&mut header[..1]).await? {
        0 => return Ok(None),
        _ => reader.read_exact(&mut header[1..]).await?,
    };
    let kind = Kind::from_byte(header[0])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unknown frame kind {}", header[0])))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > limit {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a frame of {len} bytes, over the limit of {limit}")));
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    Ok(Some((kind, payload)))
}

/// The messages of the frames `reader` brings, each at most `limit` bytes, until a
/// [`Kind::Close`] (its status is the stream's last item), the connection's clean end between
/// frames (the stream just ends: the peer closed its side) or an error (`unavailable`).
/// Cancel-safe: a frame half read when the caller stops waiting is finished at the next poll.
pub fn messages<R, M>(reader: R, limit: usize) -> impl Stream<Item = Result<M, Status>> + Send
where
    R: AsyncRead + Unpin + Send,
    M: prost::Message + Default,
{
    futures::stream::unfold(Some(reader), move |reader| async move {
        let mut reader = reader?;
        let item = match read_frame(&mut reader, limit).await {
            Ok(Some((Kind::Message, payload))) => {
                return Some((
                    M::decode(payload.as_slice()).map_err(|e| Status::invalid_argument(format!("a message that does not decode: {e}"))),
                    Some(reader),
                ));
            }
            Ok(Some((Kind::Close, payload))) => close_status(&payload),
            Ok(Some((Kind::Open, _))) => Status::invalid_argument("an open frame in the middle of the stream"),
            // The peer closed its side between frames: the end of its messages.
            Ok(None) => return None,
            Err(e) => Status::unavailable(format!("the connection broke: {e}")),
        };
        // The stream ends after its status.
        Some((Err(item), None))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Note {
        #[prost(string, tag = "1")]
        text: String,
    }

    #[tokio::test]
    async fn messages_go_both_ways_until_a_close_whose_status_ends_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        let (read, mut write) = tokio::io::split(server);
        write_message(&mut write, &Note { text: "to the client".into() }).await.unwrap();
        let writer = tokio::spawn(async move {
            write_frame(&mut client, Kind::Open, b"token").await.unwrap();
            for text in ["one", "two"] {
                write_message(&mut client, &Note { text: text.repeat(40) }).await.unwrap();
            }
            write_close(&mut client, &Status::permission_denied("not yours")).await.unwrap();
            client
        });
        let mut read = read;
        let (kind, token) = read_frame(&mut read, 1024).await.unwrap().unwrap();
        assert_eq!((kind, token.as_slice()), (Kind::Open, &b"token"[..]));
        let items: Vec<Result<Note, Status>> = messages(read, 1024).collect().await;
        assert_eq!(items.len(), 3, "{items:?}");
        assert_eq!(items[0].as_ref().unwrap().text, "one".repeat(40));
        assert_eq!(items[1].as_ref().unwrap().text, "two".repeat(40));
        let status = items[2].as_ref().unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::PermissionDenied, "not yours"));
        let mut client = writer.await.unwrap();
        let back: Vec<Result<Note, Status>> = messages(&mut client, 1024).take(1).collect().await;
        assert_eq!(back[0].as_ref().unwrap().text, "to the client");
    }

    #[tokio::test]
    async fn a_writer_task_writes_what_is_queued_in_order_and_names_a_broken_connection() {
        let (client, server) = tokio::io::duplex(64);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let writer = spawn_writer(client, rx);
        // More than the queue and the pipe hold: the writer drains while the reader reads.
        let reader = tokio::spawn(messages::<_, Note>(server, 1024).collect::<Vec<_>>());
        for n in 0..20 {
            tx.send(Note { text: format!("note {n}") }).await.unwrap();
        }
        drop(tx);
        writer.await.unwrap().unwrap();
        let texts: Vec<String> = reader.await.unwrap().into_iter().map(|m| m.unwrap().text).collect();
        assert_eq!(texts, (0..20).map(|n| format!("note {n}")).collect::<Vec<_>>());

        let (client, server) = tokio::io::duplex(64);
        drop(server);
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let writer = spawn_writer(client, rx);
        tx.send(Note { text: "to no one".into() }).await.unwrap();
        assert_eq!(writer.await.unwrap().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_or_a_cut_connection_ends_the_stream_unavailable() {
        let (mut client, server) = tokio::io::duplex(4096);
        write_message(&mut client, &Note { text: "x".repeat(2000) }).await.unwrap();
        let items: Vec<Result<Note, Status>> = messages(server, 1000).collect().await;
        let status = items.last().unwrap().as_ref().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("over the limit of 1000"), "{status:?}");

        let (mut client, server) = tokio::io::duplex(4096);
        write_message(&mut client, &Note { text: "kept".into() }).await.unwrap();
        // Half a frame, then the connection ends.
        client.write_all(&[2, 0, 0, 0, 9, 1]).await.unwrap();
        drop(client);
        let items: Vec<Result<Note, Status>> = messages(server, 1000).collect().await;
        assert_eq!(items[0].as_ref().unwrap().text, "kept");
        assert_eq!(items[1].as_ref().unwrap_err().code(), Code::Unavailable, "{items:?}");
        assert_eq!(items.len(), 2);

        // A clean end between frames ends the stream without a status.
        let (mut client, server) = tokio::io::duplex(4096);
        write_message(&mut client, &Note { text: "last".into() }).await.unwrap();
        drop(client);
        let items: Vec<Result<Note, Status>> = messages(server, 1000).collect().await;
        assert_eq!(items.len(), 1, "{items:?}");
        assert_eq!(items[0].as_ref().unwrap().text, "last");
    }
}
