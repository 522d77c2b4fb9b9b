//! The sidecar's own HTTP/1.1 server, handing the connection to hyper's server for what it
//! does not take.
//!
//! In: a connection's byte stream and the service that answers each request. Out: a future
//! that serves the connection until the peer closes it, it has been idle past its header-read
//! limit, or it is shut down gracefully (after the request in progress, at once when idle).
//!
//! One loop in the connection's task reads and parses the head, calls the service, and writes
//! the response head and body, in as few writes as the body allows (a small response: one),
//! with no per-request timer or extension map, and `date` from the coarse clock. A request body
//! (`content-length`, or `transfer-encoding: chunked`) is read by the same loop while the
//! service runs, and handed over a frame at a time ([`super::request_body`]); the rest of a
//! body the service answered without is read and dropped (up to 256 KiB, else the connection
//! is closed), so that the connection carries the next request. A connection's state is smaller than hyper's: with 1,000 idle
//! client connections the client sidecar went from 34.3 to 28.0 MB (the sidecar benchmark).
//!
//! Anything else goes to hyper, with the bytes read so far: `expect`, `upgrade`, CONNECT,
//! `OPTIONS *`, HTTP/1.0, a transfer coding other than `chunked` alone, more than one
//! `content-length` or one with `transfer-encoding`, a head this parser does not take, or one
//! larger than [`super::h1::MAX_HEAD`]. hyper then serves the rest of the connection, with the
//! same service and the same header-read timeout, and answers malformed requests as it always
//! has.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io::{self, Write as _};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::body::{BoxError, Upstream};
use super::h1::{keeps_open, Chunk, Framing, COALESCE, MAX_HEAD, MAX_HEADERS, READ_SIZE};
use super::request_body::{self, Feeder};
use super::timer::{HeaderReads, Lent};

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The response body failed, or did not match its length: the connection was cut.
    #[error("the response body: {0}")]
    Body(BoxError),
    /// The service answered 101, which is not forwarded.
    #[error("a 101 response is not forwarded")]
    Switching,
    /// hyper, serving the rest of the connection.
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// A connection being served; shut it down gracefully with [`Connection::graceful_shutdown`].
pub struct Connection<R> {
    run: Pin<Box<R>>,
    shutdown: Arc<AtomicBool>,
}

impl<R: Future<Output = Result<(), ServeError>>> Future for Connection<R> {
    type Output = Result<(), ServeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.run.as_mut().poll(cx)
    }
}

impl<R> Connection<R> {
    /// Ends the connection once the request in progress has its response (at once if none is).
    /// Takes effect when the connection is next polled.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        self.shutdown.store(true, Ordering::Relaxed);
    }
}

/// Serves HTTP/1.1 on `io` with `service`; `header_read` is how long a request head may take
/// to come, counted from the end of the previous response (or the connection's start).
pub fn serve<S, F, Fut, B>(io: S, service: F, header_read: Duration) -> Connection<impl Future<Output = Result<(), ServeError>>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Upstream>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let shutdown = Arc::new(AtomicBool::new(false));
    let run = Box::pin(run(io, service, header_read, shutdown.clone()));
    Connection { run, shutdown }
}

/// What came in while waiting for a request head.
#[expect(clippy::large_enum_variant, reason = "returned once per request and moved on at once: a box would cost an allocation per request")]
enum Came {
    /// A request this server answers, and its body's framing if it has one.
    Request(Request<Upstream>, Asked, Option<Framing>),
    /// Something for hyper: the connection goes to it.
    ForHyper,
    /// The peer closed the connection, it was idle past its limit, or it is shut down.
    End,
}

/// What the response must honour of its request.
#[derive(Clone, Copy)]
struct Asked {
    head: bool,
    keep: bool,
    trailers: bool,
}

async fn run<S, F, Fut, B>(mut io: S, service: F, header_read: Duration, shutdown: Arc<AtomicBool>) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Upstream>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut read = BytesMut::new();
    let mut write = Vec::new();
    // One timer for every wait for a head: moved later each time, it stays filed in the wheel.
    let mut timer = Lent::until(strait_runtime::clock::coarse_now() + header_read);
    loop {
        timer.reset(strait_runtime::clock::coarse_now() + header_read);
        let came = poll_fn(|cx| poll_request(&mut io, &mut read, &shutdown, &mut timer, cx)).await?;
        let (mut request, asked, framing) = match came {
            Came::Request(request, asked, framing) => (request, asked, framing),
            Came::End => return Ok(()),
            // Boxed: hyper's connection would otherwise be room in every connection's future.
            Came::ForHyper => return Box::pin(to_hyper(io, read, service, header_read, &shutdown)).await,
        };
        let mut feeder = framing.map(|framing| {
            let (body, feeder) = request_body::pair(framing);
            *request.body_mut() = Upstream::Own(body);
            feeder
        });
        // The service runs while its body is read (its first frame before the service first
        // looks, so that a small body goes on with its head) and, after it, the peer is
        // watched: if it closes, the request is dropped.
        let mut answer = pin!(service(request));
        let response = poll_fn(|cx| {
            if let Some(feeder) = feeder.as_mut() {
                let _ = feeder.poll(&mut io, &mut read, cx);
            }
            match answer.as_mut().poll(cx) {
                Poll::Ready(response) => Poll::Ready(Ok(Some(response))),
                Poll::Pending => {
                    if let Some(feeder) = feeder.as_mut() {
                        std::task::ready!(feeder.poll(&mut io, &mut read, cx));
                        if !feeder.whole() {
                            // The body failed: the service answers.
                            return Poll::Pending;
                        }
                    }
                    poll_gone(&mut io, &mut read, cx).map(|gone| gone.map(|()| None))
                }
            }
        })
        .await;
        let response = match response {
            Ok(Some(response)) => response,
            Ok(None) | Err(_) => return Ok(()),
        };
        let mut keep = respond(&mut io, &mut write, response, asked, &mut read, feeder.as_mut()).await?;
        if let Some(feeder) = feeder.as_mut().filter(|_| keep) {
            // The rest of a body the service did not want is read and dropped (up to a bound,
            // and for no longer than a head may take) before the next request.
            timer.reset(strait_runtime::clock::coarse_now() + header_read);
            poll_fn(|cx| match feeder.poll(&mut io, &mut read, cx) {
                Poll::Ready(()) => Poll::Ready(()),
                Poll::Pending => Pin::new(&mut timer).poll(cx).map(|_| ()),
            })
            .await;
            keep = feeder.whole();
        }
        if write.capacity() > super::h1::KEPT_BUFFER {
            write = Vec::new();
        }
        if read.is_empty() && read.capacity() > super::h1::KEPT_BUFFER {
            read = BytesMut::new();
        }
        if !keep || shutdown.load(Ordering::Relaxed) {
            let _ = io.shutdown().await;
            return Ok(());
        }
    }
}

/// Reads until a request head has come (or the connection ends).
fn poll_request<S: AsyncRead + Unpin>(
    io: &mut S,
    read: &mut BytesMut,
    shutdown: &AtomicBool,
    timer: &mut Lent,
    cx: &mut Context<'_>,
) -> Poll<Result<Came, ServeError>> {
    loop {
        if !read.is_empty() {
            match parse_request(read) {
                Parsed::Request(request, asked, framing) => return Poll::Ready(Ok(Came::Request(request, asked, framing))),
                Parsed::ForHyper => return Poll::Ready(Ok(Came::ForHyper)),
                Parsed::Partial if read.len() >= MAX_HEAD => return Poll::Ready(Ok(Came::ForHyper)),
                Parsed::Partial => {}
            }
        } else if shutdown.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(Came::End));
        }
        match poll_read(io, read, cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(Came::End)),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => {
                if Pin::new(timer).poll(cx).is_ready() {
                    tracing::debug!("no whole request head within the header-read limit: closing the connection");
                    return Poll::Ready(Ok(Came::End));
                }
                return Poll::Pending;
            }
        }
    }
}

/// Ready if the peer closed the connection (or it failed) while its request is served; what
/// it sends meanwhile (a pipelined request) is kept, up to a head's size.
fn poll_gone<S: AsyncRead + Unpin>(io: &mut S, read: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        if read.len() >= MAX_HEAD {
            return Poll::Pending;
        }
        match poll_read(io, read, cx) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

fn poll_read<S: AsyncRead + Unpin>(io: &mut S, read: &mut BytesMut, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < READ_SIZE / 4 {
        read.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read)
}

/// What a parse of the read buffer found.
#[expect(clippy::large_enum_variant, reason = "returned once per request and moved on at once: a box would cost an allocation per request")]
enum Parsed {
    Request(Request<Upstream>, Asked, Option<Framing>),
    ForHyper,
    Partial,
}

/// A complete HTTP/1.1 request head at the start of `buf`, taken from it, with its body's
/// framing; anything else is left in `buf` for hyper.
fn parse_request(buf: &mut BytesMut) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut places = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::ForHyper,
    };
    let (Some(method), Some(path), Some(1)) = (parsed.method, parsed.path, parsed.version) else { return Parsed::ForHyper };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Parsed::ForHyper };
    if method == Method::CONNECT || path == "*" {
        return Parsed::ForHyper;
    }
    let start = buf.as_ptr() as usize;
    let path_at = path.as_ptr() as usize - start;
    let path_end = path_at + path.len();
    let count = parsed.headers.len();
    let (mut length, mut chunked) = (None, false);
    for (place, h) in places.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // One length, in digits: anything else is hyper's to answer (400).
            if length.is_some() || h.value.is_empty() || h.value.len() > 18 || !h.value.iter().all(u8::is_ascii_digit) {
                return Parsed::ForHyper;
            }
            length = std::str::from_utf8(h.value).ok().and_then(|v| v.parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Parsed::ForHyper;
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"expect") || name.eq_ignore_ascii_case(b"upgrade") {
            return Parsed::ForHyper;
        }
        let name_at = h.name.as_ptr() as usize - start;
        let value_at = h.value.as_ptr() as usize - start;
        *place = (name_at, name_at + name.len(), value_at, value_at + h.value.len());
    }
    let framing = match (length, chunked) {
        (Some(_), true) => return Parsed::ForHyper,
        (_, true) => Some(Framing::Chunked(Chunk::Size)),
        (Some(0) | None, false) => None,
        (Some(n), false) => Some(Framing::Length(n)),
    };
    let head = buf.split_to(len).freeze();
    match build_request(&head, method, path_at..path_end, &places[..count], framing) {
        Some(parsed) => parsed,
        None => {
            // Not a head hyper would take either: it answers 400, as before.
            let mut back = BytesMut::with_capacity(head.len() + buf.len());
            back.extend_from_slice(&head);
            back.extend_from_slice(buf);
            *buf = back;
            Parsed::ForHyper
        }
    }
}

/// The request of a parsed head (its URI and header values are slices of `head`).
fn build_request(
    head: &Bytes,
    method: Method,
    path: std::ops::Range<usize>,
    places: &[(usize, usize, usize, usize)],
    framing: Option<Framing>,
) -> Option<Parsed> {
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    // Room for a header the sidecar adds (`host` for the application, from an absolute URI):
    // a full map grows by reallocating both its tables.
    let mut map = HeaderMap::with_capacity(places.len() + 1);
    for &(name_at, name_end, value_at, value_end) in places {
        let name = HeaderName::from_bytes(&head[name_at..name_end]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_end)).ok()?;
        map.append(name, value);
    }
    let trailers = map
        .get_all(header::TE)
        .iter()
        .any(|v| v.as_bytes().split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers")));
    let asked = Asked { head: method == Method::HEAD, keep: keeps_open(Version::HTTP_11, &map), trailers };
    let mut request = Request::new(Upstream::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = map;
    Some(Parsed::Request(request, asked, framing))
}

/// How the response body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (HEAD, 204, 304).
    None,
    /// `content-length`: this many bytes to go.
    Length(u64),
    Chunked,
}

/// Writes `response`, reading on the request's body meanwhile (`feeder`) if it is still
/// coming; whether the connection may stay open after it: not if that body failed, or was
/// not wanted and was longer than the connection reads to drop it.
async fn respond<S, B>(
    io: &mut S,
    write: &mut Vec<u8>,
    response: Response<B>,
    asked: Asked,
    read: &mut BytesMut,
    mut feeder: Option<&mut Feeder>,
) -> Result<bool, ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    let status = parts.status;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ServeError::Switching);
    }
    let headers = &mut parts.headers;
    // The framing header is written with the head, not made a header value.
    let out = if status.is_informational() || status == StatusCode::NO_CONTENT {
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        Out::None
    } else if asked.head || status == StatusCode::NOT_MODIFIED {
        // A HEAD answer says the length its GET answer would have, as hyper's server did.
        if asked.head && !headers.contains_key(header::CONTENT_LENGTH) && !headers.contains_key(header::TRANSFER_ENCODING) {
            if let Some(length) = body.size_hint().exact() {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
        }
        Out::None
    } else {
        headers.remove(header::TRANSFER_ENCODING);
        let exact = if body.is_end_stream() { Some(0) } else { body.size_hint().exact() };
        let declared = headers.remove(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
        exact.or(declared).map_or(Out::Chunked, Out::Length)
    };
    let keep = asked.keep && keeps_open(Version::HTTP_11, headers) && feeder.as_ref().is_none_or(|f| f.may_keep());
    write.clear();
    encode_head(write, status, headers, out, keep);
    super::spare_maps::give_back(std::mem::take(&mut parts.headers));
    let mut body = pin!(body);
    let mut out = out;
    let mut written = 0;
    let mut done = out == Out::None || out == Out::Length(0);
    let mut trailers = None;
    // A body that fails ends the connection, once what it gave before is written.
    let mut failed = None;
    poll_fn(|cx| {
        // A response may stream while its request's body still comes (both ways at once).
        if let Some(feeder) = feeder.as_mut() {
            let _ = feeder.poll(&mut *io, read, cx);
        }
        loop {
            // What the body has ready joins what is to be written, up to a bound.
            while !done && write.len() - written < COALESCE {
                match body.as_mut().poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            if let Err(e) = add_data(write, &mut out, &data) {
                                failed = Some(e);
                                done = true;
                            }
                        }
                        Err(frame) => {
                            if let Ok(t) = frame.into_trailers() {
                                trailers = Some(t);
                            }
                        }
                    },
                    Poll::Ready(Some(Err(e))) => {
                        failed = Some(ServeError::Body(e.into()));
                        done = true;
                    }
                    Poll::Ready(None) => {
                        match out {
                            Out::Length(0) | Out::None => {}
                            Out::Length(_) => failed = Some(ServeError::Body("it ended before its content-length".into())),
                            Out::Chunked => {
                                write.extend_from_slice(b"0\r\n");
                                if let (Some(t), true) = (trailers.take(), asked.trailers) {
                                    encode_fields(write, &t);
                                }
                                write.extend_from_slice(b"\r\n");
                            }
                        }
                        done = true;
                    }
                    Poll::Pending => break,
                }
                if out == Out::Length(0) {
                    done = true;
                }
            }
            if written == write.len() {
                if done {
                    std::task::ready!(Pin::new(&mut *io).poll_flush(cx))?;
                    return Poll::Ready(failed.take().map_or(Ok(()), Err));
                }
                // Everything so far is out: the body's next frame is awaited.
                match Pin::new(&mut *io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                    Poll::Pending => return Poll::Pending,
                }
                write.clear();
                written = 0;
                return Poll::Pending;
            }
            match Pin::new(&mut *io).poll_write(cx, &write[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::Error::from(io::ErrorKind::WriteZero).into())),
                Poll::Ready(Ok(n)) => {
                    written += n;
                    if written == write.len() && !done {
                        write.clear();
                        written = 0;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await?;
    Ok(keep)
}

/// Appends a data frame in the response's framing.
fn add_data(write: &mut Vec<u8>, out: &mut Out, data: &Bytes) -> Result<(), ServeError> {
    if data.is_empty() {
        return Ok(());
    }
    match out {
        Out::None => {}
        Out::Length(rest) => {
            let len = data.len() as u64;
            if len > *rest {
                return Err(ServeError::Body("it is longer than its content-length".into()));
            }
            *rest -= len;
            write.extend_from_slice(data);
        }
        Out::Chunked => {
            let _ = write!(write, "{:x}\r\n", data.len());
            write.extend_from_slice(data);
            write.extend_from_slice(b"\r\n");
        }
    }
    Ok(())
}

/// The status line and headers, with the body's framing header, `date` if the response has
/// none and `connection: close` if the connection ends after it.
fn encode_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, framing: Out, keep: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    encode_fields(out, headers);
    match framing {
        Out::None => {}
        Out::Length(length) => {
            let _ = write!(out, "content-length: {length}\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        date::append(out);
        out.extend_from_slice(b"\r\n");
    }
    if !keep && !headers.contains_key(header::CONNECTION) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn encode_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// The `date` header's value, rendered once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};

    thread_local! {
        static RENDERED: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub fn append(out: &mut Vec<u8>) {
        let now = strait_runtime::clock::coarse_unix_seconds();
        RENDERED.with_borrow_mut(|(second, text)| {
            if *second != now || text.is_empty() {
                *second = now;
                *text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(now));
            }
            out.extend_from_slice(text.as_bytes());
        });
    }
}

/// The rest of the connection goes to hyper, the bytes read so far first.
async fn to_hyper<S, F, Fut, B>(io: S, read: BytesMut, service: F, header_read: Duration, shutdown: &AtomicBool) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Upstream>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(HeaderReads::default()).header_read_timeout(header_read);
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let answer = service(request.map(Upstream::Hyper));
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let connection = builder.serve_connection(TokioIo::new(Rewind { read: read.freeze(), io }), service);
    let mut connection = pin!(connection);
    let mut shut = false;
    poll_fn(|cx| {
        if !shut && shutdown.load(Ordering::Relaxed) {
            shut = true;
            connection.as_mut().graceful_shutdown();
        }
        connection.as_mut().poll(cx)
    })
    .await?;
    Ok(())
}

/// A stream that gives `read` before what it reads from `io`.
struct Rewind<S> {
    read: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "h1_server_tests.rs"]
mod tests;
