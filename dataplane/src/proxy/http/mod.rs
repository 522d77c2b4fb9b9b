//! HTTP between sidecars: the application's requests (HTTP/1.1, or HTTP/2 and gRPC without
//! TLS) are proxied one by one over pooled HTTP/2 mTLS connections to a peer sidecar, which
//! checks each against MeshTrafficPermission and hands it to its application.
//!
//! In: accepted connections (from the application on the outbound side, from peer sidecars
//! on the inbound side). Out: [`outbound::serve`] and [`inbound::handler`]. This module holds
//! what both sides share: the body type, the answers the sidecar makes itself (403, 502, 503)
//! and the removal of hop-by-hop headers that must not cross between HTTP versions.

pub mod inbound;
pub mod outbound;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use strait_proxy_core::drain::DrainWatcher;

use super::destinations::InFlight;

/// The body of everything the sidecar answers: a proxied body, counted, or its own.
pub type Body = Either<Counted, Full<Bytes>>;

/// A response the sidecar makes itself, with a one-line text body that says why.
pub fn local_response(status: StatusCode, reason: String) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(reason))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response.headers_mut().insert(HeaderName::from_static("x-strait-local-reply"), HeaderValue::from_static("1"));
    response
}

/// Serves an HTTP `connection` until it ends; when draining starts, `graceful` tells it to
/// finish the requests in progress and take no more, and it is cut if the drain is forced.
pub async fn serve_until_drained<C, E>(connection: C, graceful: impl FnOnce(Pin<&mut C>), watcher: &DrainWatcher, what: &str)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(error) = served {
                tracing::debug!(%error, "{what} ended with an error");
            }
            return;
        }
        () = watcher.signaled() => graceful(connection.as_mut()),
    }
    let _ = watcher.unless_forced(connection).await;
}

/// Makes `uri` absolute (`http://<authority><path>`) when it has no authority, as HTTP/2 and
/// the application-side client need; `authority` is only computed then.
pub fn absolute(uri: &mut http::Uri, authority: impl FnOnce() -> Option<http::uri::Authority>) {
    if uri.authority().is_some() {
        return;
    }
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = authority();
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *uri = http::Uri::from_parts(parts).unwrap_or_default();
}

/// Removes the headers that describe one connection (RFC 9110 §7.6.1), which must not be
/// forwarded and are forbidden in HTTP/2; `te: trailers` (gRPC) is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.remove(header::CONNECTION) {
        // Headers named in `Connection` are hop-by-hop too.
        if let Ok(names) = connection.to_str() {
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in ["keep-alive", "proxy-connection", "transfer-encoding", "upgrade"] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}

/// Errors of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A proxied body that counts its bytes, keeps its endpoint's request counted in flight until
/// it ends, and fails if it is not complete by its request's deadline.
pub struct Counted {
    /// `None`: an empty body (a request replayed without one).
    inner: Option<Incoming>,
    bytes: Counter,
    _in_flight: Option<InFlight>,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
}

impl Counted {
    /// Wraps `inner`, adding its data bytes to `bytes`.
    pub fn new(inner: Incoming, bytes: Counter, in_flight: Option<InFlight>) -> Self {
        Counted { inner: Some(inner), bytes, _in_flight: in_flight, deadline: None }
    }

    /// An empty body.
    pub fn empty(bytes: Counter) -> Self {
        Counted { inner: None, bytes, _in_flight: None, deadline: None }
    }

    /// Fails the body if it has not ended by `at` (the request's `timeout` after it arrived).
    pub fn with_deadline(mut self, at: tokio::time::Instant, timeout: Duration) -> Self {
        self.deadline = Some((Box::pin(tokio::time::sleep_until(at)), timeout));
        self
    }
}

/// A body that did not complete within its request timeout.
#[derive(Debug, thiserror::Error)]
#[error("the response was not complete within the request timeout of {0:?} (MeshTimeout http.requestTimeout)")]
pub struct BodyTimeout(pub Duration);

impl HttpBody for Counted {
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
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Some((sleep, timeout)) = &mut self.deadline {
                    if sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Some(Err(BodyTimeout(*timeout).into())));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-session"),
            ("keep-alive", "timeout=5"),
            ("x-session", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-request-id", "abc"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-request-id"]);

        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut grpc);
        assert_eq!(grpc[header::TE], "trailers", "gRPC needs te: trailers");
    }
}
