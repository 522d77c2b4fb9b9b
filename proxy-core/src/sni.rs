//! Reading the server name (SNI) and ALPN protocols of a TLS ClientHello without consuming it.
//!
//! In: an accepted `TcpStream` whose peer is about to start (or not) a TLS handshake. Out: a
//! [`ClientHello`] with the SNI and ALPN list, while every byte stays in the socket for whoever
//! handles the connection next: the gateway forwards the untouched handshake to the sidecar
//! named by the SNI, the sidecar hands it to rustls. Non-TLS traffic is recognised from its
//! first bytes ([`SniError::NotTls`]) so a caller can fall back to plain TCP.
//!
//! [`parse_client_hello`] is pure (table-driven tests); [`peek_client_hello`] wraps it with
//! `MSG_PEEK` reads. A peek that returns data leaves the socket readable, so waiting for the
//! rest of a ClientHello split over several segments cannot use readiness: it polls with a
//! short backoff instead. That path is rare (a ClientHello nearly always comes in one segment)
//! and bounded by the caller's timeout.

use std::borrow::Cow;
use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// Largest ClientHello accepted (handshake message plus record headers).
pub const MAX_CLIENT_HELLO: usize = 32 * 1024;

const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = 16 * 1024;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// What a ClientHello says about where the connection is going.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the server_name extension, if any.
    pub server_name: Option<String>,
    /// The ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

/// Why no ClientHello could be read.
#[derive(Debug, thiserror::Error)]
pub enum SniError {
    /// The bytes so far are the start of a ClientHello; more are needed.
    #[error("incomplete ClientHello")]
    Incomplete,
    /// The first bytes are not a TLS handshake record.
    #[error("not a TLS handshake")]
    NotTls,
    /// A TLS handshake record that is not a well-formed ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// The ClientHello is larger than [`MAX_CLIENT_HELLO`].
    #[error("ClientHello larger than {MAX_CLIENT_HELLO} bytes")]
    TooLarge,
    /// The peer closed the connection before a whole ClientHello arrived.
    #[error("connection closed before a complete ClientHello")]
    Closed,
    /// No complete ClientHello arrived in time.
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    /// The socket failed.
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

/// Peeks at `stream` until a whole ClientHello is buffered and parses it, leaving the bytes
/// unread. Fails fast on non-TLS data; gives up after `timeout`.
pub async fn peek_client_hello(stream: &TcpStream, timeout: Duration) -> Result<ClientHello, SniError> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    let mut seen = 0;
    let mut backoff = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(result) => result?,
            Err(_) => return Err(SniError::Timeout(timeout)),
        };
        if n == 0 {
            return Err(SniError::Closed);
        }
        match parse_client_hello(&buf[..n]) {
            Err(SniError::Incomplete) if n == buf.len() => {
                if buf.len() >= MAX_CLIENT_HELLO {
                    return Err(SniError::TooLarge);
                }
                buf.resize((buf.len() * 2).min(MAX_CLIENT_HELLO), 0);
            }
            Err(SniError::Incomplete) => {
                if n == seen {
                    if Instant::now() + backoff > deadline {
                        return Err(SniError::Timeout(timeout));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
                seen = n;
            }
            result => return result,
        }
    }
}

/// Parses a ClientHello from the first bytes of a connection (one or more handshake records).
pub fn parse_client_hello(bytes: &[u8]) -> Result<ClientHello, SniError> {
    let message = handshake_message(bytes)?;
    let mut r = Reader(&message);
    if r.u8()? != HANDSHAKE_CLIENT_HELLO {
        return Err(SniError::Malformed("the first handshake message is not a ClientHello"));
    }
    let len = r.u24()?;
    let mut body = Reader(r.take(len)?);
    body.take(2)?; // legacy_version
    body.take(32)?; // random
    let session_id = body.u8()? as usize;
    body.take(session_id)?;
    let suites = body.u16()? as usize;
    body.take(suites)?;
    let compression = body.u8()? as usize;
    body.take(compression)?;
    let mut hello = ClientHello::default();
    if body.is_empty() {
        return Ok(hello); // no extensions at all
    }
    let extensions_len = body.u16()? as usize;
    let mut extensions = Reader(body.take(extensions_len)?);
    let (mut seen_sni, mut seen_alpn) = (false, false);
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()? as usize;
        let mut data = Reader(extensions.take(len)?);
        match kind {
            EXT_SERVER_NAME if seen_sni => return Err(SniError::Malformed("duplicate server_name extension")),
            EXT_SERVER_NAME => {
                seen_sni = true;
                hello.server_name = server_name(&mut data)?;
            }
            EXT_ALPN if seen_alpn => return Err(SniError::Malformed("duplicate ALPN extension")),
            EXT_ALPN => {
                seen_alpn = true;
                hello.alpn = alpn(&mut data)?;
            }
            _ => {}
        }
    }
    Ok(hello)
}

/// Reassembles the first handshake message from the records at the start of `bytes`.
fn handshake_message(bytes: &[u8]) -> Result<Cow<'_, [u8]>, SniError> {
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    let mut rest = bytes;
    loop {
        if let Some(needed) = message_len(&message) {
            if needed > MAX_CLIENT_HELLO {
                return Err(SniError::TooLarge);
            }
            if message.len() >= needed {
                return Ok(match message {
                    Cow::Borrowed(m) => Cow::Borrowed(&m[..needed]),
                    Cow::Owned(mut m) => {
                        m.truncate(needed);
                        Cow::Owned(m)
                    }
                });
            }
        }
        let fragment = record(rest, message.is_empty())?;
        rest = &rest[RECORD_HEADER + fragment.len()..];
        message = match message {
            Cow::Borrowed([]) => Cow::Borrowed(fragment),
            other => {
                let mut owned = other.into_owned();
                owned.extend_from_slice(fragment);
                Cow::Owned(owned)
            }
        };
    }
}

/// The handshake message's total length, once its 4-byte header is known.
fn message_len(message: &[u8]) -> Option<usize> {
    match message {
        [_, a, b, c, ..] => Some(4 + (usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c))),
        _ => None,
    }
}

/// The fragment of the handshake record at the start of `bytes`.
fn record(bytes: &[u8], first: bool) -> Result<&[u8], SniError> {
    if let Some(&content_type) = bytes.first() {
        if content_type != CONTENT_HANDSHAKE {
            return Err(if first { SniError::NotTls } else { SniError::Malformed("a non-handshake record inside the ClientHello") });
        }
    }
    if let Some(&major) = bytes.get(1) {
        if major != 3 {
            return Err(SniError::NotTls);
        }
    }
    if let Some(&minor) = bytes.get(2) {
        if minor > 4 {
            return Err(SniError::NotTls);
        }
    }
    let [_, _, _, hi, lo, ..] = bytes else {
        return Err(SniError::Incomplete);
    };
    let len = usize::from(*hi) << 8 | usize::from(*lo);
    if len == 0 || len > MAX_RECORD {
        return Err(SniError::Malformed("bad handshake record length"));
    }
    bytes.get(RECORD_HEADER..RECORD_HEADER + len).ok_or(SniError::Incomplete)
}

fn server_name(data: &mut Reader<'_>) -> Result<Option<String>, SniError> {
    let list_len = data.u16()? as usize;
    let mut list = Reader(data.take(list_len)?);
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let len = list.u16()? as usize;
        let name = list.take(len)?;
        if name_type == 0 && host.is_none() {
            if name.is_empty() || !name.iter().all(|b| b.is_ascii_graphic()) {
                return Err(SniError::Malformed("server name is not a printable ASCII host name"));
            }
            host = Some(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(host)
}

fn alpn(data: &mut Reader<'_>) -> Result<Vec<Vec<u8>>, SniError> {
    let list_len = data.u16()? as usize;
    let mut list = Reader(data.take(list_len)?);
    let mut protocols = Vec::new();
    while !list.is_empty() {
        let len = list.u8()? as usize;
        if len == 0 {
            return Err(SniError::Malformed("empty ALPN protocol name"));
        }
        protocols.push(list.take(len)?.to_vec());
    }
    Ok(protocols)
}

/// A cursor over a complete handshake message: running out of bytes means a length field lied.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SniError> {
        if n > self.0.len() {
            return Err(SniError::Malformed("a length field overruns the ClientHello"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, SniError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, SniError> {
        let b = self.take(2)?;
        Ok(u16::from(b[0]) << 8 | u16::from(b[1]))
    }

    fn u24(&mut self) -> Result<usize, SniError> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
#[path = "sni_tests.rs"]
mod tests;
