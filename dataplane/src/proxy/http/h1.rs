//! HTTP/1.1 on a pooled connection, driven by the request that holds it: the request's own
//! task writes the request, reads the response head, and (through the response body) reads
//! the body, with no task, channel or wake-up between the request and its connection.
//!
//! In: a connection lent to one request ([`Lease`]), the request (origin-form or absolute
//! URI, as it goes on the wire). Out: the response, its body holding the lease until the body
//! has ended; the connection goes back to its pool then, if the exchange ended cleanly and
//! the peer keeps it open. A response head and the body bytes that came with it are read
//! together, so a small response costs one read.
//!
//! An idle connection is checked before it is lent ([`Conn::closed_while_idle`]): its socket
//! is asked for readiness without a system call, and read only if the peer sent something
//! (its close, or a TLS session ticket).
//!
//! The request body is sent while the response is awaited: a peer that answers before it has
//! read the whole body (a 413) is heard, and the connection is then not reused.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::{BoxError, Counted};
use super::pool::Lease;

/// Most headers a response (or its trailers) may have.
pub(super) const MAX_HEADERS: usize = 100;
/// Longest response head, and longest chunk-size line.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// What a read asks for at least.
pub(super) const READ_SIZE: usize = 8 * 1024;
/// What a read of a large body asks for at most: fewer reads, larger frames, fewer TLS
/// records downstream. A connection that goes back idle keeps no more than [`KEPT_BUFFER`].
const BODY_READ_SIZE: usize = 256 * 1024;
/// Buffer capacity an idle connection keeps; a larger one is given back when its exchange ends.
pub(super) const KEPT_BUFFER: usize = 16 * 1024;
/// Request body data up to this size is copied behind its head, to go in one write.
pub(super) const COALESCE: usize = 16 * 1024;

/// A connection's byte stream: plain TCP (to the local application) or mTLS (to a peer sidecar).
pub enum Io {
    /// To the local application.
    Plain(TcpStream),
    /// To a peer sidecar.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 connection: its stream and buffers, kept between its requests.
pub struct Conn {
    io: Io,
    read: BytesMut,
    write: Vec<u8>,
}

impl Conn {
    /// A connection just opened.
    pub fn new(io: Io) -> Self {
        Conn { io, read: BytesMut::new(), write: Vec::new() }
    }

    /// Whether the peer closed this idle connection (or sent on it unasked, which makes it
    /// unusable too). Costs a read only when the socket has something to read.
    pub fn closed_while_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let tcp = match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        };
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => return false,
            Poll::Ready(Err(_)) => return true,
            Poll::Ready(Ok(())) => {}
        }
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        // Pending: nothing but TLS housekeeping (a session ticket) came.
        !matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut buf), Poll::Pending)
    }
}

/// Why a request failed on its connection.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// Writing the request failed.
    #[error("writing the request: {0}")]
    Write(io::Error),
    /// Reading the response failed.
    #[error("reading the response: {0}")]
    Read(io::Error),
    /// The peer closed the connection before the whole response head came.
    #[error("the connection closed before the response")]
    Closed,
    /// The peer closed the connection before the whole response body came.
    #[error("the connection closed before the end of the response body")]
    BodyCut,
    /// The request body failed, or did not match its length.
    #[error("the request body: {0}")]
    RequestBody(BoxError),
    /// The response is not HTTP/1.1.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// A request that failed.
pub struct Failed {
    /// Whether it may go on another connection as it is: nothing of it reached the peer, or
    /// the peer closed a reused connection before answering an idempotent request whose body
    /// went whole. Otherwise the peer may have acted on it.
    pub again: bool,
    /// What went wrong.
    pub error: H1Error,
}

impl std::fmt::Debug for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failed").field("again", &self.again).field("error", &self.error).finish()
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// `content-length`: this many bytes to go.
    Length(u64),
    /// `transfer-encoding: chunked`.
    Chunked(Chunk),
    /// Until the peer closes (a response with neither).
    UntilClose,
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes to go.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers, up to an empty line.
    Trailers,
}

/// Sends `request` on the connection `lease` holds (`reused`: it carried requests before),
/// and returns the response once its head has come. The request stays the caller's (its body
/// read as far as it went), to be sent again elsewhere if that is safe: a request moved into
/// each level of the exchange's futures is copied at each.
pub async fn send(mut lease: Lease, request: &mut Request<Counted>, reused: bool) -> Result<Response<Body>, Failed> {
    let framing = request_framing(request);
    let conn = lease.conn();
    conn.write.clear();
    encode_head(&mut conn.write, request);
    let mut out = Outgoing {
        written: 0,
        sent: false,
        framing,
        body_done: framing == Framing::Length(0),
        body_polled: false,
        flushed: false,
        started: false,
    };
    let head = poll_fn(|cx| poll_exchange(conn, request.body_mut(), &mut out, cx)).await;
    let (head, keep) = match head {
        Ok(head) => head,
        Err(error) => {
            drop(lease);
            // Nothing of it went out, or the peer closed a reused connection as it came.
            let unsent = !out.sent && !out.body_polled && matches!(error, H1Error::Write(_));
            let closed = reused && matches!(error, H1Error::Closed | H1Error::Read(_)) && !out.body_polled && out.body_done;
            let again = unsent || (closed && idempotent(request.method()));
            return Err(Failed { again, error });
        }
    };
    let framing = match response_framing(request.method(), &head) {
        Ok(framing) => framing,
        Err(error) => {
            drop(lease);
            return Err(Failed { again: false, error });
        }
    };
    // The connection is reused only if the request went out whole and the peer keeps it.
    let reusable = keep && out.body_done && out.flushed && framing != Some(Framing::UntilClose);
    let mut body = Body { lease: Some(lease), framing: framing.unwrap_or(Framing::Length(0)), reusable };
    if body.is_end_stream() {
        body.finish();
    }
    Ok(head.map(|()| body))
}

/// Methods whose request may be repeated (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// How the request's body goes, its framing headers set to say so.
fn request_framing(request: &mut Request<Counted>) -> Framing {
    let empty = request.body().is_end_stream();
    let exact = request.body().size_hint().exact();
    let headers = request.headers_mut();
    headers.remove(header::TRANSFER_ENCODING);
    if empty {
        if headers.get(header::CONTENT_LENGTH).is_some_and(|v| v != "0") {
            headers.remove(header::CONTENT_LENGTH);
        }
        return Framing::Length(0);
    }
    if let Some(exact) = exact {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(exact));
        return Framing::Length(exact);
    }
    if let Some(length) = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
        return Framing::Length(length);
    }
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    Framing::Chunked(Chunk::Size)
}

/// The request line and headers, as HTTP/1.1 writes them.
fn encode_head(out: &mut Vec<u8>, request: &Request<Counted>) {
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let uri = request.uri();
    if let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) {
        out.extend_from_slice(scheme.as_str().as_bytes());
        out.extend_from_slice(b"://");
        out.extend_from_slice(authority.as_str().as_bytes());
    }
    out.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The request's side of an exchange.
struct Outgoing {
    /// Bytes of the connection's write buffer written so far.
    written: usize,
    /// Some of the request reached the stream.
    sent: bool,
    framing: Framing,
    body_done: bool,
    /// A frame was taken from the request body (it cannot be sent again).
    body_polled: bool,
    /// Everything handed to the stream was flushed.
    flushed: bool,
    /// The exchange was polled before.
    started: bool,
}

/// Writes the request while reading the response; ready with the response head (and whether
/// the peer keeps the connection open) once it has come.
fn poll_exchange(
    conn: &mut Conn,
    body: &mut Counted,
    out: &mut Outgoing,
    cx: &mut Context<'_>,
) -> Poll<Result<(Response<()>, bool), H1Error>> {
    if !out.started {
        out.started = true;
        // Body data that is ready already goes in the head's write.
        if !out.body_done {
            if let Poll::Ready(Err(e)) = poll_body(conn, body, out, cx) {
                return Poll::Ready(Err(e));
            }
        }
    }
    loop {
        while out.written < conn.write.len() {
            match Pin::new(&mut conn.io).poll_write(cx, &conn.write[out.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(H1Error::Write(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => {
                    out.written += n;
                    out.sent = true;
                    out.flushed = false;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(H1Error::Write(e))),
                Poll::Pending => break,
            }
        }
        let all_written = out.written == conn.write.len();
        if all_written && !out.flushed {
            match Pin::new(&mut conn.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => out.flushed = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(H1Error::Write(e))),
                Poll::Pending => {}
            }
        }
        if all_written && out.flushed && !out.body_done {
            match poll_body(conn, body, out, cx) {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        return poll_head(conn, cx);
    }
}

/// Takes the request body's next frame into the write buffer (emptied first if all of it was
/// written); ready when there is something new to write.
fn poll_body(conn: &mut Conn, body: &mut Counted, out: &mut Outgoing, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
    if out.written == conn.write.len() {
        conn.write.clear();
        out.written = 0;
    }
    loop {
        let frame = match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(H1Error::RequestBody(e))),
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(None) => {
                out.body_done = true;
                match out.framing {
                    Framing::Chunked(_) => conn.write.extend_from_slice(b"0\r\n\r\n"),
                    Framing::Length(0) => {}
                    Framing::Length(_) => return Poll::Ready(Err(H1Error::RequestBody("it ended before its content-length".into()))),
                    Framing::UntilClose => {}
                }
                return Poll::Ready(Ok(()));
            }
        };
        out.body_polled = true;
        // Trailers do not go over HTTP/1.1 here: they are dropped.
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        match &mut out.framing {
            Framing::Length(rest) => {
                let len = data.len() as u64;
                if len > *rest {
                    return Poll::Ready(Err(H1Error::RequestBody("it is longer than its content-length".into())));
                }
                *rest -= len;
                conn.write.extend_from_slice(&data);
                if *rest == 0 {
                    out.body_done = true;
                }
            }
            Framing::Chunked(_) | Framing::UntilClose => {
                let _ = write!(conn.write, "{:x}\r\n", data.len());
                conn.write.extend_from_slice(&data);
                conn.write.extend_from_slice(b"\r\n");
            }
        }
        if out.body_done || conn.write.len() >= COALESCE {
            return Poll::Ready(Ok(()));
        }
        // More data may be ready already: it joins this write.
        if body.is_end_stream() {
            continue;
        }
        return Poll::Ready(Ok(()));
    }
}

/// Reads until a final response head has come (informational ones are skipped).
fn poll_head(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(Response<()>, bool), H1Error>> {
    loop {
        if !conn.read.is_empty() {
            if let Some((head, keep)) = parse_head(&mut conn.read)? {
                // 1xx: a final answer follows (101 would switch protocols, which is not forwarded).
                if head.status().is_informational() {
                    if head.status() == StatusCode::SWITCHING_PROTOCOLS {
                        return Poll::Ready(Err(H1Error::Malformed("101 Switching Protocols is not forwarded")));
                    }
                    continue;
                }
                return Poll::Ready(Ok((head, keep)));
            }
            if conn.read.len() >= MAX_HEAD {
                return Poll::Ready(Err(H1Error::Malformed("the response head is too large")));
            }
        }
        match poll_read(conn, cx, READ_SIZE) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(H1Error::Closed)),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(H1Error::Read(e))),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Reads what the peer sent into the connection's read buffer, with room for `want` bytes:
/// how much (0 at its end).
fn poll_read(conn: &mut Conn, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
    if conn.read.capacity() - conn.read.len() < want / 4 {
        conn.read.reserve(want);
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.read)
}

/// A complete response head at the start of `buf`, taken from it, with whether the peer keeps
/// the connection open after this response; `None` if more must be read.
fn parse_head(buf: &mut BytesMut) -> Result<Option<(Response<()>, bool)>, H1Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut places = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::Malformed("more than 100 headers")),
        Err(_) => return Err(H1Error::Malformed("not an HTTP/1.x response head")),
    };
    let status = parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(H1Error::Malformed("bad status code"))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let start = buf.as_ptr() as usize;
    let count = parsed.headers.len();
    for (place, h) in places.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_ptr() as usize - start;
        let value = h.value.as_ptr() as usize - start;
        *place = (name, name + h.name.len(), value, value + h.value.len());
    }
    let head = buf.split_to(len).freeze();
    let mut map = super::spare_maps::take(count);
    for &(name_at, name_end, value_at, value_end) in &places[..count] {
        let name = HeaderName::from_bytes(&head[name_at..name_end]).map_err(|_| H1Error::Malformed("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_end)).map_err(|_| H1Error::Malformed("bad header value"))?;
        map.append(name, value);
    }
    let keep = keeps_open(version, &map);
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = map;
    Ok(Some((response, keep)))
}

/// Whether the peer keeps the connection open after a message with these headers.
pub(super) fn keeps_open(version: Version, headers: &HeaderMap) -> bool {
    let mut tokens = headers.get_all(header::CONNECTION).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
    if version == Version::HTTP_10 {
        tokens.any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
    } else {
        !tokens.any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
}

/// How the response to a `method` request with `head` delimits its body (RFC 9112 §6.3);
/// `None`: it has none.
fn response_framing(method: &Method, head: &Response<()>) -> Result<Option<Framing>, H1Error> {
    let status = head.status();
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    let headers = head.headers();
    if let Some(te) = headers.get_all(header::TRANSFER_ENCODING).iter().next_back() {
        let chunked = te.to_str().ok().and_then(|v| v.rsplit(',').next()).is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(Some(if chunked { Framing::Chunked(Chunk::Size) } else { Framing::UntilClose }));
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let parsed = value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).ok_or(H1Error::Malformed("bad content-length"))?;
        if length.is_some_and(|l| l != parsed) {
            return Err(H1Error::Malformed("conflicting content-length headers"));
        }
        length = Some(parsed);
    }
    Ok(Some(length.map_or(Framing::UntilClose, Framing::Length)))
}

/// A response body read from its connection by whoever polls it; the connection goes back to
/// its pool when the body has ended cleanly, and is closed if the body fails or is dropped
/// before its end.
pub struct Body {
    lease: Option<Lease>,
    framing: Framing,
    /// The connection may take another request once this body has ended.
    reusable: bool,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Body").field("framing", &self.framing).finish()
    }
}

impl Body {
    /// The body has ended: its connection goes back, or is closed.
    fn finish(&mut self) {
        let Some(mut lease) = self.lease.take() else { return };
        // Bytes after the end of the response were not asked for: the peer is not speaking HTTP/1.1.
        let conn = lease.conn();
        if self.reusable && conn.read.is_empty() {
            // A large body's buffers are not kept idle.
            if conn.read.capacity() > KEPT_BUFFER {
                conn.read = BytesMut::new();
            }
            if conn.write.capacity() > KEPT_BUFFER {
                conn.write = Vec::new();
            }
            lease.release();
        }
    }

    /// The body failed: its connection is closed.
    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.lease = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            let Some(lease) = this.lease.as_mut() else { return Poll::Ready(None) };
            let read = &mut lease.conn().read;
            let step = match next_step(&mut this.framing, read) {
                Ok(step) => step,
                Err(e) => return this.fail(e),
            };
            match step {
                Step::Data(data) => {
                    if this.framing == Framing::Length(0) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::End(trailers) => {
                    this.framing = Framing::Length(0);
                    this.finish();
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                Step::Read => {}
            }
            // Room for what is left of the body, up to a bound.
            let want = match this.framing {
                Framing::Length(rest) => usize::try_from(rest).unwrap_or(usize::MAX).clamp(READ_SIZE, BODY_READ_SIZE),
                _ => BODY_READ_SIZE,
            };
            let conn = this.lease.as_mut().map(Lease::conn).expect("a body being read holds its connection");
            match poll_read(conn, cx, want) {
                Poll::Ready(Ok(0)) => {
                    if this.framing == Framing::UntilClose {
                        this.framing = Framing::Length(0);
                        this.finish();
                        return Poll::Ready(None);
                    }
                    return this.fail(H1Error::BodyCut);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(H1Error::Read(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.lease.is_none() || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ if self.lease.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// What a body's next step is, from what was read.
pub(super) enum Step {
    /// Gives data.
    Data(Bytes),
    /// Ends, with trailers if any.
    End(Option<HeaderMap>),
    /// Reads more.
    Read,
}

/// The next step of a body delimited by `framing` (moved on past it), from `read`.
pub(super) fn next_step(framing: &mut Framing, read: &mut BytesMut) -> Result<Step, H1Error> {
    loop {
        return Ok(match *framing {
            Framing::Length(0) => Step::End(None),
            Framing::Length(rest) if !read.is_empty() => {
                let n = read.len().min(usize::try_from(rest).unwrap_or(usize::MAX));
                *framing = Framing::Length(rest - n as u64);
                Step::Data(read.split_to(n).freeze())
            }
            Framing::UntilClose if !read.is_empty() => Step::Data(read.split().freeze()),
            Framing::Chunked(state) if !read.is_empty() => {
                let (next, decoded) = decode_chunked(state, read)?;
                *framing = Framing::Chunked(next);
                match decoded {
                    Decoded::Data(data) => Step::Data(data),
                    Decoded::End(trailers) => Step::End(trailers),
                    Decoded::Progress => continue,
                    Decoded::More => Step::Read,
                }
            }
            _ => Step::Read,
        });
    }
}

/// What a step of chunked decoding gave.
enum Decoded {
    /// Data of a chunk.
    Data(Bytes),
    /// The body ended, with these trailers if it had any.
    End(Option<HeaderMap>),
    /// A size line or delimiter was taken: decode on.
    Progress,
    /// More must be read first.
    More,
}

/// One step of decoding a chunked body from `buf` in `state`.
fn decode_chunked(state: Chunk, buf: &mut BytesMut) -> Result<(Chunk, Decoded), H1Error> {
    match state {
        Chunk::Size => {
            let Some(end) = find_crlf(buf) else {
                return if buf.len() > MAX_HEAD { Err(H1Error::Malformed("chunk size line too long")) } else { Ok((state, Decoded::More)) };
            };
            let line = &buf[..end];
            let digits = line.split(|&b| b == b';').next().unwrap_or_default();
            let digits = std::str::from_utf8(digits).map_err(|_| H1Error::Malformed("bad chunk size"))?.trim();
            let size = u64::from_str_radix(digits, 16).map_err(|_| H1Error::Malformed("bad chunk size"))?;
            buf.advance(end + 2);
            Ok((if size == 0 { Chunk::Trailers } else { Chunk::Data(size) }, Decoded::Progress))
        }
        Chunk::Data(rest) => {
            let n = buf.len().min(usize::try_from(rest).unwrap_or(usize::MAX));
            let data = buf.split_to(n).freeze();
            let left = rest - n as u64;
            Ok((if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) }, Decoded::Data(data)))
        }
        Chunk::DataEnd => {
            if buf.len() < 2 {
                return Ok((state, Decoded::More));
            }
            if &buf[..2] != b"\r\n" {
                return Err(H1Error::Malformed("chunk data not followed by CRLF"));
            }
            buf.advance(2);
            Ok((Chunk::Size, Decoded::Progress))
        }
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok((state, Decoded::End(None)));
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::parse_headers(buf, &mut headers) {
                Ok(httparse::Status::Complete((len, parsed))) => {
                    let mut trailers = HeaderMap::with_capacity(parsed.len());
                    for h in parsed {
                        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value)) {
                            trailers.append(name, value);
                        }
                    }
                    buf.advance(len);
                    Ok((state, Decoded::End(Some(trailers))))
                }
                Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => Ok((state, Decoded::More)),
                _ => Err(H1Error::Malformed("bad trailers")),
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
#[path = "h1_tests.rs"]
mod tests;
