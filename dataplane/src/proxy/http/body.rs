//! The bodies the sidecar's HTTP proxying sends and answers with: a proxied body that counts
//! its bytes and fails past its request's deadline or after too long without a frame
//! (MeshTimeout), or a one-line answer of the sidecar's own (403, 502, 503, 504) that says why.
//!
//! In: a peer's body ([`Upstream`]: hyper's, or one read from a pooled HTTP/1.1 connection), the byte counter of its (direction, source, destination),
//! and whatever must live as long as the body (on the outbound side, the endpoint's in-flight
//! count, so that least-request balancing sees a streaming response as load). Out: [`Counted`]
//! and [`Body`]. Nothing here knows endpoints or connections: what a body holds is a type
//! parameter, so a body costs no allocation beyond hyper's own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::proxy::access_log::Received;
use crate::proxy::metrics::PairMetrics;
use crate::proxy::timeouts::Limit;

use super::timer::Lent;

/// The body of everything the sidecar answers: a proxied body, counted (holding `H` until it
/// ends), or its own.
pub type Body<H = ()> = Either<Counted<H>, Full<Bytes>>;

/// A response the sidecar makes itself, with a one-line text body that says why.
pub fn local_response<H>(status: StatusCode, reason: String) -> Response<Body<H>> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(reason))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(HeaderName::from_static("x-strait-local-reply"), HeaderValue::from_static("1"));
    response
}

/// The status of a gRPC call, in its trailers (or the headers of a trailers-only answer).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Errors of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body coming from a peer: as hyper reads it (a request from an application or a peer
/// sidecar, an HTTP/2 response), or from a pooled HTTP/1.1 connection ([`super::h1`]).
#[derive(Debug)]
pub enum Upstream {
    /// Read by hyper.
    Hyper(Incoming),
    /// Read from a pooled HTTP/1.1 connection by whoever polls it.
    Http1(super::h1::Body),
    /// A request's body, read from its connection by the sidecar's own HTTP/1.1 server.
    Own(super::request_body::RequestBody),
    /// None: a request without a body, read by the sidecar's own HTTP/1.1 server.
    Empty,
}

impl From<Incoming> for Upstream {
    fn from(body: Incoming) -> Self {
        Upstream::Hyper(body)
    }
}

impl HttpBody for Upstream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Upstream::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Upstream::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Upstream::Own(body) => Pin::new(body).poll_frame(cx),
            Upstream::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Upstream::Hyper(body) => body.is_end_stream(),
            Upstream::Http1(body) => body.is_end_stream(),
            Upstream::Own(body) => body.is_end_stream(),
            Upstream::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Upstream::Hyper(body) => body.size_hint(),
            Upstream::Http1(body) => body.size_hint(),
            Upstream::Own(body) => body.size_hint(),
            Upstream::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Takes `request` out of its place for a sender that keeps it (HTTP/2), leaving an empty
/// request that counts into the same bytes.
pub fn take(request: &mut Request<Counted>) -> Request<Counted> {
    let empty = Request::new(Counted::empty(request.body().bytes.clone()));
    std::mem::replace(request, empty)
}

/// A proxied body that counts its bytes, holds `H` until it ends (dropped with the body), and
/// fails if it is not complete by its request's deadline, or if no frame comes for its idle
/// limit.
pub struct Counted<H = ()> {
    /// `None`: nothing (more) to read from a peer.
    inner: Option<Upstream>,
    /// A body held in memory (a replayed request's, a mirrored copy's, a check's), sent whole.
    kept: Option<Bytes>,
    /// Keeps a copy of what passes, for a retry or a mirror (see [`Counted::teed`]).
    tee: Option<Box<Tee>>,
    /// Paces the data (MeshFaultInjection `responseBandwidth`, see [`Counted::throttled`]).
    throttle: Option<Box<Throttle>>,
    /// A request body's own byte count (MeshAccessLog).
    tally: Option<Received>,
    /// Where the `grpc-status` of its trailers is counted.
    grpc: Option<Box<PairMetrics>>,
    bytes: Counter,
    held: H,
    deadline: Option<(Lent, Limit)>,
    idle: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
}

impl Counted {
    /// Wraps `inner`, adding its data bytes to `bytes`.
    pub fn new(inner: impl Into<Upstream>, bytes: Counter) -> Self {
        Counted {
            inner: Some(inner.into()),
            kept: None,
            tee: None,
            throttle: None,
            tally: None,
            grpc: None,
            bytes,
            held: (),
            deadline: None,
            idle: None,
        }
    }

    /// An empty body.
    pub fn empty(bytes: Counter) -> Self {
        Counted { inner: None, kept: None, tee: None, throttle: None, tally: None, grpc: None, bytes, held: (), deadline: None, idle: None }
    }

    /// A body of `data`, held in memory.
    pub fn full(data: Bytes, bytes: Counter) -> Self {
        Counted {
            inner: None,
            kept: (!data.is_empty()).then_some(data),
            tee: None,
            throttle: None,
            tally: None,
            grpc: None,
            bytes,
            held: (),
            deadline: None,
            idle: None,
        }
    }

    /// The same body, of which a copy goes to `copy` once it has passed whole, if it is no
    /// larger than `limit` bytes and has no trailers; else `copy` is dropped unanswered.
    pub fn teed(mut self, limit: usize, copy: tokio::sync::oneshot::Sender<Bytes>) -> Self {
        self.tee(limit, copy);
        self
    }

    /// [`Counted::teed`], in place.
    pub fn tee(&mut self, limit: usize, copy: tokio::sync::oneshot::Sender<Bytes>) {
        match &mut self.tee {
            Some(tee) => tee.copies.push(copy),
            None => self.tee = Some(Box::new(Tee { chunks: Vec::new(), size: 0, limit, copies: vec![copy] })),
        }
    }
}

/// The pace of a throttled body: the next data waits for `sleep`.
struct Throttle {
    bytes_per_second: u64,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Throttle {
    /// Cuts `data` to what may go at once, returning the rest, and sets the wait it costs.
    fn pace(&mut self, data: &mut Bytes) -> Option<Bytes> {
        let piece = (self.bytes_per_second / 20).max(1) as usize;
        let rest = (data.len() > piece).then(|| data.split_off(piece));
        let cost = Duration::from_secs_f64(data.len() as f64 / self.bytes_per_second as f64);
        self.sleep.as_mut().reset(tokio::time::Instant::now() + cost);
        rest
    }
}

/// The copy a [`Counted`] body keeps of what passes.
struct Tee {
    chunks: Vec<Bytes>,
    size: usize,
    limit: usize,
    copies: Vec<tokio::sync::oneshot::Sender<Bytes>>,
}

impl Tee {
    /// Keeps `data`; `false` once the body is over the limit.
    fn keep(&mut self, data: &Bytes) -> bool {
        self.size += data.len();
        if self.size > self.limit {
            return false;
        }
        if !data.is_empty() {
            self.chunks.push(data.clone());
        }
        true
    }

    /// The body has passed whole: every waiting copy gets it.
    fn finish(self) {
        let whole = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks[0].clone(),
            _ => Bytes::from(self.chunks.concat()),
        };
        for copy in self.copies {
            let _ = copy.send(whole.clone());
        }
    }
}

impl<H> Counted<H> {
    /// The same body, holding `held` until it ends.
    pub fn holding<G>(self, held: G) -> Counted<G> {
        self.map_held(|_| held)
    }

    /// The same body, holding what `f` makes of what it holds.
    pub fn map_held<G>(self, f: impl FnOnce(H) -> G) -> Counted<G> {
        Counted {
            inner: self.inner,
            kept: self.kept,
            tee: self.tee,
            throttle: self.throttle,
            tally: self.tally,
            grpc: self.grpc,
            bytes: self.bytes,
            held: f(self.held),
            deadline: self.deadline,
            idle: self.idle,
        }
    }

    /// The same body, counting the `grpc-status` of its trailers (if any) in `metrics`.
    pub fn grpc_status_to(mut self, metrics: Option<PairMetrics>) -> Self {
        self.grpc = metrics.map(Box::new);
        self
    }

    /// The same body, also counting its data bytes into `tally`.
    pub fn tallied(mut self, tally: Option<Received>) -> Self {
        self.tally = tally;
        self
    }

    /// The same body, its data paced to at most `bytes_per_second` (in pieces of a twentieth
    /// of a second's worth).
    pub fn throttled(mut self, bytes_per_second: u64) -> Self {
        let bytes_per_second = bytes_per_second.max(1);
        let sleep = Box::pin(tokio::time::sleep(Duration::ZERO));
        self.throttle = Some(Box::new(Throttle { bytes_per_second, sleep }));
        self
    }

    /// Fails the body when `timer` (set to its request's deadline, `limit`) fires.
    pub fn with_deadline_timer(mut self, timer: Lent, limit: Limit) -> Self {
        self.deadline = Some((timer, limit));
        self
    }

    /// Fails the body when no frame comes for `idle` (MeshTimeout `http.streamIdleTimeout`).
    pub fn with_idle(mut self, idle: Option<Duration>) -> Self {
        self.set_idle(idle);
        self
    }

    /// [`Counted::with_idle`], in place.
    pub fn set_idle(&mut self, idle: Option<Duration>) {
        self.idle = idle.map(|d| (Box::pin(tokio::time::sleep(d)), d));
    }
}

/// A body that did not complete within its limit.
#[derive(Debug, thiserror::Error)]
#[error("the body was not complete within {0}")]
pub struct BodyTimeout(pub Limit);

/// A body with no frame for too long.
#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?} (MeshTimeout http.streamIdleTimeout)")]
pub struct BodyIdle(pub Duration);

/// What a body holds until it ends, told of the data bytes that pass through it (a response
/// body holds its request's access-log entry, which counts them without an allocation shared
/// between the two).
pub trait Held: Unpin {
    /// `n` more data bytes passed.
    fn passed(&mut self, _n: u64) {}
}

impl Held for () {}

impl<H: Held> Counted<H> {
    fn count(&mut self, n: usize) {
        self.bytes.inc_by(n as u64);
        if let Some(tally) = &self.tally {
            tally.add(n as u64);
        }
        self.held.passed(n as u64);
    }
}

impl<H: Held> HttpBody for Counted<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(throttle) = &mut self.throttle {
            if throttle.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        if let Some(mut kept) = self.kept.take() {
            let this = &mut *self;
            if let Some(throttle) = &mut this.throttle {
                this.kept = throttle.pace(&mut kept);
            }
            self.count(kept.len());
            return Poll::Ready(Some(Ok(Frame::data(kept))));
        }
        let Some(inner) = self.inner.as_mut() else {
            if let Some(tee) = self.tee.take() {
                tee.finish();
            }
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(mut frame))) => {
                let this = &mut *self;
                if let (Some(throttle), Some(data)) = (&mut this.throttle, frame.data_mut()) {
                    this.kept = throttle.pace(data);
                }
                if let Some(data) = frame.data_ref() {
                    self.count(data.len());
                } else if let (Some(metrics), Some(trailers)) = (&self.grpc, frame.trailers_ref()) {
                    if let Some(status) = trailers.get(GRPC_STATUS) {
                        metrics.record_grpc(status.as_bytes());
                    }
                }
                if let Some(tee) = &mut self.tee {
                    // Trailers cannot be kept: no copy then.
                    if !frame.data_ref().is_some_and(|data| tee.keep(data)) {
                        self.tee = None;
                    }
                }
                // The peer's connection may not ask for the end once it knows the body ended.
                if self.tee.is_some() && self.kept.is_none() && self.inner.as_ref().is_none_or(Upstream::is_end_stream) {
                    if let Some(tee) = self.tee.take() {
                        tee.finish();
                    }
                }
                if let Some((sleep, idle)) = &mut self.idle {
                    let idle = *idle;
                    sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.tee = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(tee) = self.tee.take() {
                    tee.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some((timer, limit)) = &mut self.deadline {
                    if Pin::new(timer).poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(BodyTimeout(*limit).into())));
                    }
                }
                if let Some((sleep, idle)) = &mut self.idle {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(BodyIdle(*idle).into())));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.kept.is_none() && self.inner.as_ref().is_none_or(Upstream::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.kept, &self.inner) {
            (Some(kept), _) => SizeHint::with_exact(kept.len() as u64),
            (None, Some(inner)) => inner.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
