//! HTTP between sidecars: the application's requests (HTTP/1.1, or HTTP/2 and gRPC without
//! TLS) are proxied one by one over pooled HTTP/2 mTLS connections to a peer sidecar, which
//! checks each against MeshTrafficPermission and hands it to its application.
//!
//! In: accepted connections (from the application on the outbound side, from peer sidecars
//! on the inbound side). Out: [`outbound::serve`] and [`inbound::handler`]. The pieces, one
//! concept each: [`body`] (the counted body and the sidecar's own answers), [`pool`] (one
//! HTTP/2 connection per peer endpoint), [`inbound`] and [`outbound`]. This file holds the
//! little that both sides share besides the body: serving a connection until drained, and
//! the URI and hop-by-hop header fixes a request needs when it changes HTTP version, and the
//! executor that keeps a connection's span on the tasks hyper spawns for its HTTP/2 streams.

mod app_pool;
pub mod body;
mod h1;
mod h1_server;
pub mod inbound;
pub mod outbound;
pub mod pool;
mod request_body;
pub mod retry;
pub mod routes;
mod sniff;
mod spare_maps;
pub mod timer;

use std::future::Future;
use std::pin::Pin;

use http::header::{self, HeaderMap, HeaderName};
use strait_proxy_core::drain::DrainWatcher;
use tracing::Instrument;

/// Spawns hyper's tasks (one per HTTP/2 stream) on tokio inside the span current when hyper
/// spawns them, the connection's: what a request logs names its connection even when the
/// per-request span is off. Costs a reference count per stream, no allocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct InSpan;

impl<F> hyper::rt::Executor<F> for InSpan
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future.in_current_span());
    }
}

/// Serves an HTTP `connection` until it ends; when draining starts, or once it has lived
/// `lifetime` (MeshTimeout `http.maxConnectionDuration`), `graceful` tells it to finish the
/// requests in progress and take no more, and it is cut if the drain is forced.
pub async fn serve_until_drained<C, E>(
    connection: C,
    graceful: impl FnOnce(Pin<&mut C>),
    watcher: &DrainWatcher,
    lifetime: Option<std::time::Duration>,
    what: &str,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(connection);
    let expired = async {
        match lifetime {
            Some(lifetime) => tokio::time::sleep(lifetime).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(error) = served {
                tracing::debug!(%error, "{what} ended with an error");
            }
            return;
        }
        () = watcher.signaled() => graceful(connection.as_mut()),
        () = expired => {
            tracing::debug!(?lifetime, "{what} reached its maximum duration: closing it once its requests are done");
            graceful(connection.as_mut());
        }
    }
    let _ = watcher.unless_forced(connection).await;
}

/// The future `make` returns, built in the heap where it stays. `Box::pin(f())` builds it on
/// the stack and then copies the whole of it into the heap: a request's future is several KB,
/// copied once per request.
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
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

/// The headers that describe one connection (RFC 9110 §7.6.1) besides those `Connection`
/// names, and `te` (of which `trailers` alone is kept).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TE,
];

/// Removes the headers that describe one connection (RFC 9110 §7.6.1), which must not be
/// forwarded and are forbidden in HTTP/2; `te: trailers` (gRPC) is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names (compared, not hashed or
    // parsed) settles it.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if let Some(connection) = headers.remove(header::CONNECTION) {
        // Headers named in `Connection` are hop-by-hop too.
        if let Ok(names) = connection.to_str() {
            for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                // Looked up by the text (a `HeaderName` made from it would be allocated).
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP[1..5] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use http::header::{HeaderName, HeaderValue};

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

        // Each one found alone (the first pass must see it).
        for (k, v) in [("keep-alive", "timeout=5"), ("proxy-connection", "close"), ("upgrade", "h2c"), ("te", "gzip")] {
            let mut one = HeaderMap::new();
            one.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
            one.insert(header::HOST, HeaderValue::from_static("backend"));
            strip_hop_by_hop(&mut one);
            assert_eq!(one.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"], "{k}");
        }
    }
}
