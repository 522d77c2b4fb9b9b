//! The inbound side of HTTP: an HTTP/2 session from a peer sidecar (mTLS, ALPN `h2`), each
//! request checked against MeshTrafficPermission for the peer's SPIFFE identity, then sent to
//! the application over a local connection pool (HTTP/1.1, or HTTP/2 without TLS for `http2`
//! and `grpc` inbounds).
//!
//! In: the TLS stream and the verified peer identity, handed over by the tunnel's inbound
//! accept loop. Out: the application's responses, or a 403 that names the caller and the
//! reason. The decision is [`SessionDecision`]'s: cached per session and recomputed when the
//! configuration version changes, so a permission change applies to the next request on a
//! pooled connection.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use strait_pki::Identity;
use strait_proxy_core::tunnel::inbound::H2Handler;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

use super::body::{local_response, Body, Counted};
use super::{absolute, serve_until_drained, strip_hop_by_hop, InSpan};
use crate::proxy::authorization::SessionDecision;
use crate::proxy::data_path::DataPath;
use crate::proxy::destinations::Protocol;
use crate::proxy::metrics::{Direction, PairMetrics};
use crate::proxy::timeouts::of_inbound;

/// One inbound port that serves HTTP.
pub struct Inbound {
    path: Arc<DataPath>,
    port: u16,
    service: String,
    app: SocketAddr,
    version: Version,
    client: Client<AppConnector, Counted>,
}

/// The handler the tunnel's accept loop gives HTTP/2 sessions of inbound `port` to.
pub fn handler(path: Arc<DataPath>, port: u16, service: String, app: SocketAddr, protocol: Protocol) -> H2Handler {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_timer(TokioTimer::new()).pool_idle_timeout(Duration::from_secs(60)).timer(TokioTimer::new());
    let version = if protocol == Protocol::Http {
        Version::HTTP_11
    } else {
        builder.http2_only(true);
        Version::HTTP_2
    };
    let client = builder.build(AppConnector { app, path: path.clone(), port });
    let inbound = Arc::new(Inbound { path, port, service, app, version, client });
    H2Handler(Arc::new(move |tls, peer| Box::pin(inbound.clone().serve(tls, peer))))
}

impl Inbound {
    async fn serve(self: Arc<Self>, tls: TlsStream<TcpStream>, peer: Identity) {
        let caller = peer.path().trim_start_matches('/').to_string();
        let metrics = self.path.metrics.pair(Direction::Inbound, &caller, &self.service);
        let watcher = self.path.drain.clone();
        let lifetime = of_inbound(&self.path.state, self.port).max_connection;
        let session = Arc::new(Session { inbound: self, peer, metrics, decision: SessionDecision::default() });
        // Runs in the connection's span (the tunnel's accept loop made it, with the peer): so
        // do the streams hyper spawns, through `InSpan`.
        let mut builder = hyper::server::conn::http2::Builder::new(InSpan);
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(1024)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10));
        let service = service_fn(move |request: Request<Incoming>| {
            let session = session.clone();
            // Off under the default `info` filter: then neither built nor formatted.
            let span = tracing::debug_span!("request", method = %request.method(), path = %request.uri().path());
            async move { Ok::<_, Infallible>(session.handle(request).await) }.instrument(span)
        });
        let connection = builder.serve_connection(TokioIo::new(tls), service);
        serve_until_drained(connection, |c| c.graceful_shutdown(), &watcher, lifetime, "inbound HTTP/2 session").await;
    }
}

/// One HTTP/2 session from a peer sidecar.
struct Session {
    inbound: Arc<Inbound>,
    peer: Identity,
    metrics: PairMetrics,
    /// MeshTrafficPermission's answer for this peer, per configuration version.
    decision: SessionDecision,
}

impl Session {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let inbound = &self.inbound;
        let response = if self.decision.allowed(&inbound.path.state, inbound.port, &self.peer) {
            self.to_application(request).await
        } else {
            self.metrics.denied.inc();
            tracing::debug!("request denied by MeshTrafficPermission");
            local_response(
                StatusCode::FORBIDDEN,
                format!("strait: {} is not allowed to reach {} (MeshTrafficPermission)\n", self.peer, inbound.service),
            )
        };
        self.metrics.record(response.status(), started.elapsed());
        response
    }

    async fn to_application(&self, request: Request<Incoming>) -> Response<Body> {
        let inbound = &self.inbound;
        // MeshTimeout `from`: the application answers within the inbound's limits.
        let timeouts = of_inbound(&inbound.path.state, inbound.port);
        let started = tokio::time::Instant::now();
        let (mut parts, body) = request.into_parts();
        absolute(&mut parts.uri, || Authority::try_from(inbound.service.as_str()).ok());
        strip_hop_by_hop(&mut parts.headers);
        parts.version = inbound.version;
        let request = Request::from_parts(parts, Counted::new(body, self.metrics.request_bytes.clone()).with_idle(timeouts.stream_idle));
        let sent = inbound.client.request(request);
        let answered = match timeouts.headers_limit() {
            Some(limit) => match tokio::time::timeout_at(started + limit.after, sent).await {
                Ok(answered) => answered,
                Err(_) => {
                    tracing::info!(app = %inbound.app, %limit, "the application did not answer in time");
                    return local_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "strait: the application of {} at {} did not answer within {limit}, inbound\n",
                            inbound.service, inbound.app
                        ),
                    );
                }
            },
            None => sent.await,
        };
        match answered {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let body = Counted::new(body, self.metrics.response_bytes.clone()).with_idle(timeouts.stream_idle);
                let body = match timeouts.deadline() {
                    Some(limit) => body.with_deadline(started + limit.after, limit),
                    None => body,
                };
                Response::from_parts(parts, Either::Left(body))
            }
            Err(error) => {
                let reason = strait_runtime::telemetry::error_chain(&error);
                tracing::warn!(app = %inbound.app, error = reason, "the application did not answer");
                local_response(
                    StatusCode::BAD_GATEWAY,
                    format!("strait: the application of {} at {} did not answer: {reason}\n", inbound.service, inbound.app),
                )
            }
        }
    }
}

/// Connects to the application, whatever the request's URI says, within the inbound's
/// MeshTimeout `connectionTimeout` (5 s by default).
#[derive(Clone)]
pub struct AppConnector {
    app: SocketAddr,
    path: Arc<DataPath>,
    port: u16,
}

impl tower::Service<Uri> for AppConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let app = self.app;
        let limit = of_inbound(&self.path.state, self.port).connect;
        Box::pin(async move {
            let stream = tokio::time::timeout(limit, TcpStream::connect(app))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting to the application timed out"))??;
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        })
    }
}
