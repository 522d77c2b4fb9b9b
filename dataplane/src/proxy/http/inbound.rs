//! The inbound side of HTTP: an HTTP/2 session (mTLS, ALPN `h2`) or an HTTP/1.1 connection
//! (ALPN `http/1.1`, the applications' HTTP/1.1 requests one at a time) from a peer sidecar, each
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
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use strait_pki::Identity;
use strait_proxy_core::tls::ALPN_HTTP1;
use strait_proxy_core::tunnel::inbound::HttpHandler;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::Instrument;

use super::app_pool::AppPool;
use super::body::{local_response, Counted, Upstream, GRPC_STATUS};
use crate::proxy::access_log::{self, Pending as Logged};
use crate::proxy::trace::{Side, Span};

/// What the peer receives: the application's response body (holding its access-log entry and
/// its span until it ends; its HTTP/1.1 connection goes back to the pool at its end) or the
/// sidecar's own answer.
type Body = super::body::Body<(Option<Box<Logged>>, Option<Box<Span>>)>;
/// The application's response, before its entry is attached.
type AppBody = super::body::Body;
use super::h1_server;
use super::routes::ROUTE_HEADER;
use super::timer::Spare;
use super::{absolute, serve_until_drained, strip_hop_by_hop, InSpan};
use crate::proxy::authorization::SessionDecision;
use crate::proxy::data_path::DataPath;
use crate::proxy::destinations::Protocol;
use crate::proxy::inbound_policies::Injected;
use crate::proxy::metrics::{Direction, Pair, PairMetrics, Peer};
use crate::proxy::timeouts::of_inbound;

/// One inbound port that serves HTTP.
pub struct Inbound {
    path: Arc<DataPath>,
    port: u16,
    service: Arc<str>,
    app: SocketAddr,
    protocol: Protocol,
    app_pool: AppPool,
}

/// The handler the tunnel's accept loop gives HTTP sessions of inbound `port` to.
pub fn handler(path: Arc<DataPath>, port: u16, service: String, app: SocketAddr, protocol: Protocol) -> HttpHandler {
    let app_pool = AppPool::new(app, protocol != Protocol::Http);
    let inbound = Arc::new(Inbound { path, port, service: service.into(), app, protocol, app_pool });
    HttpHandler(Arc::new(move |tls, peer| Box::pin(inbound.clone().serve(tls, peer))))
}

impl Inbound {
    async fn serve(self: Arc<Self>, tls: TlsStream<TcpStream>, peer: Identity) {
        let caller: Arc<str> = peer.path().trim_start_matches('/').into();
        let caller_zone: Arc<str> = strait_proxy_core::tls::peer_zone(tls.get_ref().1).unwrap_or_default().into();
        let metrics = {
            let table = self.path.table.load();
            self.path.metrics.pair(Pair {
                direction: Direction::Inbound,
                mesh: &table.local.mesh,
                source: Peer { service: &caller, zone: &caller_zone },
                destination: Peer { service: &self.service, zone: &table.local.zone },
                protocol: self.protocol.as_str(),
            })
        };
        let watcher = self.path.drain.clone();
        let lifetime = of_inbound(&self.path.state, self.port).max_connection;
        let http1 = tls.get_ref().1.alpn_protocol() == Some(ALPN_HTTP1);
        let session = Arc::new(Session {
            inbound: self,
            peer,
            caller,
            caller_zone,
            metrics,
            decision: SessionDecision::default(),
            timers: Arc::default(),
        });
        let handle = move |request: Request<Upstream>| {
            let session = session.clone();
            // Off under the default `info` filter: then neither built nor formatted.
            let span = tracing::debug_span!("request", method = %request.method(), path = %request.uri().path());
            async move { session.handle(request).await }.instrument(span)
        };
        if http1 {
            // The caller's sidecar pools the connection and closes it first (after 20 s idle):
            // a longer wait here never closes one under a request it is sending.
            let connection = h1_server::serve(tls, handle, Duration::from_secs(120));
            serve_until_drained(connection, |c| c.graceful_shutdown(), &watcher, lifetime, "inbound HTTP/1.1 connection").await;
            return;
        }
        let service = service_fn(move |request: Request<Incoming>| {
            let answer = handle(request.map(Upstream::Hyper));
            async move { Ok::<_, Infallible>(answer.await) }
        });
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
        let connection = builder.serve_connection(TokioIo::new(tls), service);
        serve_until_drained(connection, |c| c.graceful_shutdown(), &watcher, lifetime, "inbound HTTP/2 session").await;
    }
}

/// One HTTP session (HTTP/2 or HTTP/1.1) from a peer sidecar.
struct Session {
    inbound: Arc<Inbound>,
    peer: Identity,
    /// The peer's service.
    caller: Arc<str>,
    /// The peer's zone (empty if its certificate does not say).
    caller_zone: Arc<str>,
    metrics: PairMetrics,
    /// MeshTrafficPermission's answer for this peer, per configuration version.
    decision: SessionDecision,
    /// The session's deadline timer, lent to each request in turn.
    timers: Arc<Spare>,
}

impl Session {
    async fn handle(&self, mut request: Request<Upstream>) -> Response<Body> {
        let started = Instant::now();
        let inbound = &self.inbound;
        // MeshTrace: this hop's span, the caller's its parent, and the application's spans
        // its children.
        // Boxed, as the entry below: each is large, and moved with the request's future and its body.
        let mut span = inbound
            .path
            .table
            .load()
            .tracer
            .as_ref()
            .and_then(|t| t.start(Side::Inbound, request.headers_mut(), &self.caller))
            .map(Box::new);
        if let Some(s) = &mut span {
            s.request(request.method(), request.uri());
        }
        let mut logged = self.access_log(&request, started).map(Box::new);
        let received = logged.as_mut().filter(|_| !request.body().is_end_stream()).map(|l| l.received());
        let response = if self.decision.allowed(&inbound.path.state, inbound.port, &self.peer) {
            match self.policies(request.headers()) {
                Ok(injected) => self.with_faults(request, injected, received).await,
                Err(refusal) => refusal,
            }
        } else {
            self.metrics.denied.inc();
            tracing::debug!("request denied by MeshTrafficPermission");
            local_response(
                StatusCode::FORBIDDEN,
                format!("strait: {} is not allowed to reach {} (MeshTrafficPermission)\n", self.peer, inbound.service),
            )
        };
        self.metrics.record(response.status(), started.elapsed());
        if let Some(l) = &mut logged {
            l.entry.status = response.status().as_u16();
            l.entry.response_time = Some(started.elapsed());
            l.entry.local = matches!(response.body(), Either::Right(_));
        }
        if let Some(s) = &mut span {
            s.answered(response.status().as_u16());
        }
        response.map(|body| match body {
            // The response body counts the bytes sent into the entry it holds.
            Either::Left(body) => Either::Left(body.holding((logged, span))),
            Either::Right(own) => Either::Right(own),
        })
    }

    /// MeshAccessLog `from`: the request's entry, if a rule selects its caller.
    fn access_log(&self, request: &Request<Upstream>, started: Instant) -> Option<Logged> {
        let inbound = &self.inbound;
        let table = inbound.path.table.load();
        let log = table.inbound(inbound.port)?.access_log(&self.caller)?.clone();
        let entry = access_log::Entry {
            start: Some(std::time::SystemTime::now()),
            direction: "inbound",
            mesh: Some(table.local.mesh.clone()),
            source_service: Some(self.caller.clone()),
            source_zone: Some(self.caller_zone.clone()),
            destination_service: Some(inbound.service.clone()),
            destination_zone: Some(table.local.zone.clone()),
            protocol: inbound.protocol.as_str(),
            method: Some(request.method().clone()),
            path: request.uri().path_and_query().map_or_else(access_log::Text::default, |p| access_log::Text::new(p.as_str())),
            authority: request.uri().authority().cloned(),
            upstream: Some(inbound.app),
            trace_id: access_log::trace_id(request.headers()),
            ..Default::default()
        };
        Some(Logged::new(log, entry, started))
    }

    /// MeshRateLimit and MeshFaultInjection for this request: the faults it gets, or the
    /// answer of a rate limit it is over.
    fn policies(&self, headers: &http::HeaderMap) -> Result<Injected, Response<AppBody>> {
        let inbound = &self.inbound;
        let table = inbound.path.table.load();
        let Some(rules) = table.inbound(inbound.port) else { return Ok(Injected::default()) };
        // The limits of the routes the caller's sidecar says the request matched, then the service's.
        let routes = headers.get(ROUTE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let on_routes = routes.split(',').filter(|r| !r.is_empty()).filter_map(|route| rules.route_rate_limit(route, &self.caller));
        for limit in on_routes.chain(rules.rate_limit(&self.caller)) {
            if let Some(Err(wait)) = limit.requests.as_ref().map(|l| l.acquire()) {
                self.metrics.rate_limited.inc();
                tracing::debug!(caller = &*self.caller, routes, "request over the rate limit (MeshRateLimit)");
                return Err(limit.refusal(&inbound.service, &self.caller, wait));
            }
        }
        Ok(rules.faults(&self.caller).map(|f| f.draw()).unwrap_or_default())
    }

    /// Sends `request` to the application with the faults `injected` says.
    async fn with_faults(
        &self,
        request: Request<Upstream>,
        injected: Injected,
        received: Option<access_log::Received>,
    ) -> Response<AppBody> {
        if injected == Injected::default() {
            return self.to_application(request, received).await;
        }
        self.metrics.faults.inc();
        if let Some(delay) = injected.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = injected.abort {
            return local_response(status, format!("strait: fault injected for {} (MeshFaultInjection abort)\n", self.caller));
        }
        let mut response = self.to_application(request, received).await;
        if let Some(rate) = injected.bytes_per_second {
            response = response.map(|body| match body {
                Either::Left(body) => Either::Left(body.throttled(rate)),
                local => local,
            });
        }
        response
    }

    async fn to_application(&self, request: Request<Upstream>, received: Option<access_log::Received>) -> Response<AppBody> {
        let inbound = &self.inbound;
        // MeshTimeout `from`: the application answers within the inbound's limits.
        let timeouts = of_inbound(&inbound.path.state, inbound.port);
        let started = tokio::time::Instant::now();
        let (mut parts, body) = request.into_parts();
        absolute(&mut parts.uri, || Authority::try_from(&*inbound.service).ok());
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(ROUTE_HEADER);
        let body = Counted::new(body, self.metrics.request_bytes.clone()).with_idle(timeouts.stream_idle).tallied(received);
        let mut request = Request::from_parts(parts, body);
        // Pinned where it is made: moved into the `select!`, the future would be copied whole.
        let mut sent = pin!(inbound.app_pool.send(&mut request, timeouts.connect));
        // The timer of the response headers' limit; when that is the exchange's deadline (no
        // shorter stream idle limit), the response body keeps it: one timer per request, not two.
        let mut deadline_timer = None;
        let answered = match timeouts.headers_limit() {
            Some(limit) => {
                let mut timer = self.timers.lend(started + limit.after);
                let answered = tokio::select! {
                    biased;
                    answered = &mut sent => Some(answered),
                    () = &mut timer => None,
                };
                if timeouts.deadline() == Some(limit) {
                    deadline_timer = Some(timer);
                }
                match answered {
                    Some(answered) => answered,
                    None => {
                        tracing::info!(app = %inbound.app, %limit, "the application did not answer in time");
                        return local_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            format!(
                                "strait: the application of {} at {} did not answer within {limit}, inbound\n",
                                inbound.service, inbound.app
                            ),
                        );
                    }
                }
            }
            None => sent.await,
        };
        match answered {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                // The application's version (an HTTP/1.0 server's) is not the mesh hop's.
                parts.version = Version::HTTP_11;
                // gRPC: the call's status, in the headers of a trailers-only answer, else in its trailers.
                let grpc = match parts.headers.get(GRPC_STATUS) {
                    Some(status) if inbound.protocol == Protocol::Grpc => {
                        self.metrics.record_grpc(status.as_bytes());
                        None
                    }
                    _ => (inbound.protocol == Protocol::Grpc).then(|| self.metrics.clone()),
                };
                let body = Counted::new(body, self.metrics.response_bytes.clone()).with_idle(timeouts.stream_idle).grpc_status_to(grpc);
                let body = match (timeouts.deadline(), deadline_timer) {
                    (Some(limit), Some(timer)) => body.with_deadline_timer(timer, limit),
                    (Some(limit), None) => body.with_deadline_timer(self.timers.lend(started + limit.after), limit),
                    (None, _) => body,
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
