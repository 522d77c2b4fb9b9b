//! The bodies the sidecar's HTTP proxying sends and answers with: a proxied body that counts
//! its bytes and fails past its request's deadline or after too long without a frame
//! (MeshTimeout), or a one-line answer of the sidecar's own (403, 502, 503, 504) that says why.
//!
//! In: a hyper [`Incoming`] body, the byte counter of its (direction, source, destination),
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
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::proxy::timeouts::Limit;

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

/// Errors of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A proxied body that counts its bytes, holds `H` until it ends (dropped with the body), and
/// fails if it is not complete by its request's deadline, or if no frame comes for its idle
/// limit.
pub struct Counted<H = ()> {
    /// `None`: an empty body (a request replayed without one).
    inner: Option<Incoming>,
    bytes: Counter,
    _held: H,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Limit)>,
    idle: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
}

impl Counted {
    /// Wraps `inner`, adding its data bytes to `bytes`.
    pub fn new(inner: Incoming, bytes: Counter) -> Self {
        Counted { inner: Some(inner), bytes, _held: (), deadline: None, idle: None }
    }

    /// An empty body.
    pub fn empty(bytes: Counter) -> Self {
        Counted { inner: None, bytes, _held: (), deadline: None, idle: None }
    }
}

impl<H> Counted<H> {
    /// The same body, holding `held` until it ends.
    pub fn holding<G>(self, held: G) -> Counted<G> {
        Counted { inner: self.inner, bytes: self.bytes, _held: held, deadline: self.deadline, idle: self.idle }
    }

    /// Fails the body if it has not ended by `at` (`limit` after its request arrived).
    pub fn with_deadline(mut self, at: tokio::time::Instant, limit: Limit) -> Self {
        self.deadline = Some((Box::pin(tokio::time::sleep_until(at)), limit));
        self
    }

    /// Fails the body when no frame comes for `idle` (MeshTimeout `http.streamIdleTimeout`).
    pub fn with_idle(mut self, idle: Option<Duration>) -> Self {
        self.idle = idle.map(|d| (Box::pin(tokio::time::sleep(d)), d));
        self
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

impl<H: Unpin> HttpBody for Counted<H> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.inc_by(data.len() as u64);
                }
                if let Some((sleep, idle)) = &mut self.idle {
                    let idle = *idle;
                    sleep.as_mut().reset(tokio::time::Instant::now() + idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Some((sleep, limit)) = &mut self.deadline {
                    if sleep.as_mut().poll(cx).is_ready() {
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
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}
