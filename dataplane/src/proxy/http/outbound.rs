//! The outbound side of HTTP: the application's connection is served as HTTP (HTTP/1.1, or
//! HTTP/2 without TLS for gRPC and h2c clients, detected from the first bytes), and each
//! request goes to an endpoint of the destination, picked per request, over a pooled mTLS
//! connection to that endpoint's sidecar: an idle HTTP/1.1 one for an HTTP/1.x request to an
//! `http` destination, else the endpoint's HTTP/2 one. A destination with MeshCircuitBreaker
//! connection limits (`maxConnections`, `maxPendingRequests`) stays on HTTP/2, whose
//! multiplexed connections those limits count.
//!
//! In: an accepted application connection and the destination's service name. Out: responses
//! from the peer, or the sidecar's own 502/503 that names the destination and the reason.
//! Requests that never reached a peer (no connection could be made, or the pooled connection
//! closed just before) are tried again, on a fresh pick. A request that was sent is replayed
//! only when it is safe (GET, HEAD, OPTIONS, TRACE) and has no body, and only when its
//! connection failed before any response, as when the peer's sidecar died with it in flight;
//! that endpoint is then ejected for a while. Beyond that, MeshRetry decides (see
//! [`super::retry`]).

use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{header, Request, Response, StatusCode, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use strait_api::proxy_config::Protocol;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::body::{local_response, Counted, Upstream, GRPC_STATUS};
use super::h1_server;
use super::pool::{Connector, Sender};
use super::retry::{Cause, RetryPolicy, MAX_KEPT_BODY};
use super::sniff::sniff;
use super::timer::Spare;
use super::{absolute, serve_until_drained, strip_hop_by_hop, InSpan};
use crate::proxy::access_log::{self, Pending as Logged};
use crate::proxy::data_path::DataPath;
use crate::proxy::destinations::Destination;
use crate::proxy::endpoint::{Endpoint, Health, InFlight, Outcome};
use crate::proxy::inbound_policies::Injected;
use crate::proxy::trace::{Side, Span};

/// What the application receives: a peer's response body, holding its endpoint's in-flight
/// count until it ends, or the sidecar's own answer.
type Body = super::body::Body<(InFlight, Option<Box<Logged>>, Option<Box<Span>>)>;

/// How many endpoints a request may be tried on when it could not be sent (or could be replayed).
const ATTEMPTS: usize = 3;

/// What rebuilds a safe, bodiless request after its connection failed with it in flight.
struct Replay {
    method: http::Method,
    uri: http::Uri,
    version: Version,
    headers: http::HeaderMap,
}

impl Replay {
    /// Whether `request` may be sent again after its connection failed with it in flight: a
    /// safe method and no body.
    fn safe(request: &Request<Counted>) -> bool {
        use http::Method;
        use http_body::Body as _;
        matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE) && request.body().is_end_stream()
    }

    /// A copy of `request` (the caller knows it has no body).
    fn copy(request: &Request<Counted>) -> Replay {
        Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        }
    }

    fn request(&self, destination: &Destination) -> Request<Counted> {
        self.request_with(destination, Bytes::new())
    }

    /// The request again, with `body` (kept from the first attempt).
    fn request_with(&self, destination: &Destination, body: Bytes) -> Request<Counted> {
        let mut request = Request::new(Counted::full(body, destination.metrics.request_bytes.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        *request.version_mut() = self.version;
        request
    }
}

/// How long an application may take to send a request's head (and, on a new connection, its
/// first bytes).
const HEADER_READ: Duration = Duration::from_secs(60);

/// Serves the application connection `app`, sending its requests to `service`, until the
/// application closes it or the drain ends it (after the request in progress).
pub async fn serve(app: TcpStream, service: Arc<str>, path: Arc<DataPath>) {
    let _ = app.set_nodelay(true);
    let watcher = path.drain.clone();
    let client = app.peer_addr().ok().map(|a| a.ip());
    // A drain closes a connection that has not sent its first request yet.
    let sniffed = tokio::select! {
        sniffed = tokio::time::timeout(HEADER_READ, sniff(app)) => sniffed,
        () = watcher.signaled() => return,
    };
    let (app, http2) = match sniffed {
        Ok(Ok(sniffed)) => sniffed,
        Ok(Err(error)) => {
            tracing::debug!(%error, "application connection failed before its first request");
            return;
        }
        Err(_) => {
            tracing::debug!("application connection sent nothing within {HEADER_READ:?}: closed");
            return;
        }
    };
    let ctx = Arc::new((service, path, client, Arc::<Spare>::default()));
    let handle = move |request: Request<Upstream>| {
        let ctx = ctx.clone();
        // Off under the default `info` filter: then neither built nor formatted.
        let span = tracing::debug_span!("request", method = %request.method(), path = %request.uri().path());
        // Boxed: a server keeps room for a request's future for as long as its connection
        // lives, and this one is about 5 KB, 5 MB per thousand idle keep-alive connections.
        async move { super::boxed(|| forward(request, &ctx.0, &ctx.1, ctx.2, &ctx.3)).await }.instrument(span)
    };
    if http2 {
        // Boxed: an HTTP/2 session's state would otherwise be room in every HTTP/1.1
        // connection's task. Its streams (gRPC, h2c) run in tasks of their own: `InSpan` keeps
        // the connection's span on them.
        let serving = async {
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = handle(request.map(Upstream::Hyper));
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let mut builder = http2::Builder::new(InSpan);
            builder.timer(TokioTimer::new()).max_concurrent_streams(1024);
            let connection = builder.serve_connection(TokioIo::new(app), service);
            serve_until_drained(connection, |c| c.graceful_shutdown(), &watcher, None, "application HTTP/2 connection").await;
        };
        return Box::pin(serving).await;
    }
    let connection = h1_server::serve(app, handle, HEADER_READ);
    serve_until_drained(connection, |c| c.graceful_shutdown(), &watcher, None, "application connection").await;
}

/// Sends one request to `service` and answers with the peer's response or the reason there is none.
/// `timers` is the connection's deadline timer, lent to each of its requests in turn.
async fn forward(
    request: Request<Upstream>,
    service: &str,
    path: &Arc<DataPath>,
    client: Option<IpAddr>,
    timers: &Arc<Spare>,
) -> Response<Body> {
    let started = Instant::now();
    let table = path.table.load_full();
    let Some(mut destination) = table.service(service) else {
        return local_response(StatusCode::SERVICE_UNAVAILABLE, format!("strait: {service} is not a destination of this sidecar\n"));
    };
    let mut request = to_mesh(request, destination);
    // MeshHTTPRoute: the first rule the request matches edits it, and may answer a redirect
    // or send it to another backend.
    let rule = table.routes(service).and_then(|routes| routes.find(&request));
    if let Some((rule, prefix)) = rule {
        if let Some((status, location)) = rule.redirect(&request) {
            let mut response = local_response(status, String::new());
            response.headers_mut().insert(header::LOCATION, location);
            rule.edit_response(response.headers_mut());
            destination.metrics.record(response.status(), started.elapsed());
            return response;
        }
        rule.edit_request(&mut request, prefix);
        if let Some(names) = rule.names() {
            request.headers_mut().insert(super::routes::ROUTE_HEADER, names.clone());
        }
        for to in rule.mirrors() {
            request = mirror(request, to, path);
        }
        if let Some(backend) = rule.backend() {
            destination = backend;
        }
    }
    let destination: &Destination = destination;
    // MeshTrace: this hop's span (the request's headers now name it as the next hop's parent).
    // Boxed, as the entry below: each is large, and moved with the request's future and its body.
    let mut span = table.tracer.as_ref().and_then(|t| t.start(Side::Outbound, request.headers_mut(), &destination.service)).map(Box::new);
    if let Some(s) = &mut span {
        s.request(request.method(), request.uri());
    }
    // MeshAccessLog `to`: the request's entry, logged once its response has ended.
    let mut pending = destination.access_log.as_ref().map(|log| Box::new(pending_entry(log, &table.local, destination, &request, started)));
    // (A request without a body has no count to share with it.)
    if let Some(p) = pending.as_mut().filter(|_| !http_body::Body::is_end_stream(request.body())) {
        let received = p.received();
        request = request.map(|body| body.tallied(Some(received)));
    }
    // MeshFaultInjection `to`: a delay, an abort answered here, or a slow response.
    let injected = destination.faults.as_ref().map(|f| f.draw()).unwrap_or_default();
    if injected != Injected::default() {
        destination.metrics.faults.inc();
        if let Some(delay) = injected.delay {
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = injected.abort {
            let response = local_response(status, format!("strait: fault injected for {service} (MeshFaultInjection abort)\n"));
            destination.metrics.record(response.status(), started.elapsed());
            answered(&mut pending, &response, started, true);
            return response;
        }
    }
    // RingHash, Maglev: the request's key, kept across its attempts.
    let key = destination.request_key(request.headers(), request.uri(), client);
    // MeshCircuitBreaker `maxRequests`: beyond it, 503 at once.
    let (_active, in_progress) = destination.budget.start();
    if destination.limits.max_requests.is_some_and(|max| in_progress > max) {
        destination.metrics.overflows.inc();
        let response = local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "strait: {}: {} requests are in progress, the most MeshCircuitBreaker connectionLimits.maxRequests allows\n",
                destination.service,
                in_progress - 1
            ),
        );
        destination.metrics.record(response.status(), started.elapsed());
        answered(&mut pending, &response, started, true);
        return response;
    }
    // MeshTimeout (the route's, over the destination's): the response headers within the
    // deadline (or the stream idle limit), the whole exchange within the deadline, and no
    // stream idle for longer than its limit.
    let timeouts = rule.map_or(destination.timeouts, |(rule, _)| rule.timeouts(destination));
    // The clock is read once per request where it can be.
    let now = tokio::time::Instant::from_std(started);
    if timeouts.stream_idle.is_some() {
        request.body_mut().set_idle(timeouts.stream_idle);
    }
    // The timer of the response headers' limit; when that is the exchange's deadline (no
    // shorter stream idle limit), the response body keeps it: one timer per request, not two.
    let mut deadline_timer = None;
    let sent = match timeouts.headers_limit() {
        Some(limit) => {
            let mut timer = timers.lend(started + limit.after);
            // Pinned where it is made: moved into the `select!`, the future would be copied whole.
            let sending = pin!(send(&mut request, destination, key, Some(now + limit.after), path));
            let sent = tokio::select! {
                biased;
                sent = sending => sent,
                () = &mut timer => Err((StatusCode::GATEWAY_TIMEOUT, format!("no response within {limit}"), Cause::Timeout)),
            };
            if timeouts.deadline() == Some(limit) {
                deadline_timer = Some(timer);
            }
            sent
        }
        None => send(&mut request, destination, key, None, path).await,
    };
    let mut recorded = &destination.metrics;
    let mut response = match sent {
        Ok((response, in_flight)) => {
            recorded = destination.metrics_in(&in_flight.endpoint().zone);
            answered(&mut pending, &response, started, false);
            if let Some(s) = &mut span {
                s.answered(response.status().as_u16());
                s.upstream(in_flight.endpoint().address, &in_flight.endpoint().zone);
            }
            if let Some(p) = &mut pending {
                p.entry.upstream = Some(in_flight.endpoint().address);
                p.entry.destination_zone = Some(in_flight.endpoint().zone.clone());
            }
            let held = (in_flight, pending.take(), span.take());
            // gRPC: the call's status, in the headers of a trailers-only answer, else in its trailers.
            let grpc = match response.headers().get(GRPC_STATUS) {
                Some(status) if destination.protocol == Protocol::Grpc => {
                    recorded.record_grpc(status.as_bytes());
                    None
                }
                _ => (destination.protocol == Protocol::Grpc).then(|| recorded.clone()),
            };
            response.map(|body| {
                let mut body =
                    Counted::new(body, recorded.response_bytes.clone()).grpc_status_to(grpc).holding(held).with_idle(timeouts.stream_idle);
                if let Some(rate) = injected.bytes_per_second {
                    body = body.throttled(rate);
                }
                Either::Left(match (timeouts.deadline(), deadline_timer) {
                    (Some(limit), Some(timer)) => body.with_deadline_timer(timer, limit),
                    (Some(limit), None) => body.with_deadline_timer(timers.lend(started + limit.after), limit),
                    (None, _) => body,
                })
            })
        }
        Err(failure) => {
            tracing::debug!(status = failure.0.as_u16(), reason = %failure.1, "outbound request failed");
            let response = local_response(failure.0, format!("strait: {service}: {}\n", failure.1));
            answered(&mut pending, &response, started, true);
            response
        }
    };
    if let Some((rule, _)) = rule {
        rule.edit_response(response.headers_mut());
    }
    // This sidecar answers in its own version, whatever the peer's or its application's.
    *response.version_mut() = Version::HTTP_11;
    if let Some(s) = &mut span {
        s.answered(response.status().as_u16());
    }
    recorded.record(response.status(), started.elapsed());
    response
}

/// The access-log entry of an outbound `request` to `destination`, not yet answered.
fn pending_entry(
    log: &Arc<access_log::AccessLog>,
    local: &access_log::Local,
    destination: &Destination,
    request: &Request<Counted>,
    started: Instant,
) -> Logged {
    let entry = access_log::Entry {
        start: Some(std::time::SystemTime::now()),
        direction: "outbound",
        mesh: Some(local.mesh.clone()),
        source_service: Some(local.service.clone()),
        source_zone: Some(local.zone.clone()),
        destination_service: Some(destination.service.clone()),
        protocol: destination.protocol.as_str(),
        method: Some(request.method().clone()),
        path: request.uri().path_and_query().map_or_else(access_log::Text::default, |p| access_log::Text::new(p.as_str())),
        authority: request.uri().authority().cloned(),
        trace_id: access_log::trace_id(request.headers()),
        ..Default::default()
    };
    Logged::new(log.clone(), entry, started)
}

/// Notes the answer in the access-log entry, if there is one (`local`: the sidecar's own).
fn answered<B>(pending: &mut Option<Box<Logged>>, response: &Response<B>, started: Instant, local: bool) {
    if let Some(p) = pending {
        p.entry.status = response.status().as_u16();
        p.entry.response_time = Some(started.elapsed());
        p.entry.local = local;
    }
}

/// RequestMirror: a copy of `request` goes to `to` once its body has passed whole (up to
/// [`MAX_KEPT_BODY`]; a larger one is not copied), in a task of its own; its answer is
/// dropped. The request goes on unchanged and never waits for the copy.
fn mirror(request: Request<Counted>, to: &Arc<Destination>, path: &Arc<DataPath>) -> Request<Counted> {
    use http_body::Body as _;
    // Copies in progress beyond this are not made: a slow mirror must not pile them up.
    const MAX_MIRRORED: usize = 1024;
    let mut copy = Replay::copy(&request);
    copy.headers.insert(http::HeaderName::from_static("x-strait-mirror"), http::HeaderValue::from_static("1"));
    let (request, body) = if request.body().is_end_stream() {
        (request, None)
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (request.map(|body| body.teed(MAX_KEPT_BODY, tx)), Some(rx))
    };
    let (to, task_path) = (to.clone(), path.clone());
    path.tasks.spawn(async move {
        let body = match body {
            None => Bytes::new(),
            Some(rx) => match tokio::time::timeout(Duration::from_secs(60), rx).await {
                Ok(Ok(body)) => body,
                _ => return tracing::debug!(mirror = &*to.service, "not mirrored: the body was too large to copy, or did not end"),
            },
        };
        let (_active, in_progress) = to.budget.start();
        if in_progress > MAX_MIRRORED {
            return tracing::debug!(mirror = &*to.service, "not mirrored: {MAX_MIRRORED} copies are in progress");
        }
        let started = Instant::now();
        let mut request = copy.request_with(&to, body);
        let limit = to.timeouts.headers_limit().map(|l| tokio::time::Instant::now() + l.after);
        let sent = match limit {
            Some(at) => tokio::time::timeout_at(at, attempt(&mut request, &to, None, Some(at), &task_path, None)).await.ok(),
            None => Some(attempt(&mut request, &to, None, None, &task_path, None).await),
        };
        let status = match sent {
            Some(Ok((response, _in_flight))) => response.status(),
            Some(Err(failure)) => failure.0,
            None => StatusCode::GATEWAY_TIMEOUT,
        };
        to.metrics.record(status, started.elapsed());
    });
    request
}

/// What the application sent, made into a request for the mesh: an absolute URI (its
/// authority from `Host`, else the service), no hop-by-hop headers; its version stays the
/// application's until it is sent (see [`speaks_http1`]).
fn to_mesh(request: Request<Upstream>, destination: &Destination) -> Request<Counted> {
    let (mut parts, body) = request.into_parts();
    let host = parts.headers.get(header::HOST);
    absolute(&mut parts.uri, || {
        host.and_then(|h| Authority::try_from(h.as_bytes()).ok()).or_else(|| Authority::try_from(&*destination.service).ok())
    });
    parts.headers.remove(header::HOST);
    // Only this sidecar names the route a request matched.
    parts.headers.remove(super::routes::ROUTE_HEADER);
    strip_hop_by_hop(&mut parts.headers);
    Request::from_parts(parts, Counted::new(body, destination.metrics.request_bytes.clone()))
}

/// Whether `request` goes to `destination` over HTTP/1.1 between the sidecars: an HTTP/1.x
/// request to an `http` destination without connection limits (which count HTTP/2's
/// multiplexed connections). Everything else (gRPC, HTTP/2 clients) goes over HTTP/2.
fn speaks_http1(request: &Request<Counted>, destination: &Destination) -> bool {
    request.version() <= Version::HTTP_11
        && destination.protocol == Protocol::Http
        && destination.limits.max_connections.is_none()
        && destination.limits.max_pending.is_none()
}

/// No response: the status and reason the application gets, and the cause (for MeshRetry).
type Failure = (StatusCode, String, Cause);

/// Sends `request` to `destination`, trying again as its MeshRetry says (when the request can
/// be sent again and the retry budget allows); on success also returns the endpoint's in-flight
/// guard, to be held until the response body ends. `deadline`: when the sidecar gives up on the
/// response headers.
async fn send(
    request: &mut Request<Counted>,
    destination: &Destination,
    key: Option<u64>,
    deadline: Option<tokio::time::Instant>,
    path: &DataPath,
) -> Result<(Response<Upstream>, InFlight), Failure> {
    match &destination.retry {
        None => attempt(request, destination, key, deadline, path, None).await,
        // Not boxed: the request's future is boxed once, where the connection's server calls
        // it, and never moved; a box of its own cost an allocation (beyond glibc's per-thread
        // cache, 1.5 KB) per request under the mesh's default MeshRetry.
        Some(policy) => retried(request, policy, destination, key, deadline, path).await,
    }
}

/// [`send`] under a MeshRetry `policy`.
async fn retried(
    request: &mut Request<Counted>,
    policy: &RetryPolicy,
    destination: &Destination,
    key: Option<u64>,
    deadline: Option<tokio::time::Instant>,
    path: &DataPath,
) -> Result<(Response<Upstream>, InFlight), Failure> {
    use http_body::Body as _;
    let replayable = policy.replayable(request.method());
    // The request's head for the retries: HTTP/1.1 leaves the request in place, so only an
    // attempt over HTTP/2 (which takes it) copies it first. A copy made before every request
    // cost a header map's allocations per request.
    let mut replay: Option<Replay> = None;
    // A body goes to the first endpoint as it comes; a copy is kept for the retries.
    let mut kept = Kept::None;
    if replayable && !request.body().is_end_stream() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        request.body_mut().tee(MAX_KEPT_BODY, tx);
        kept = Kept::Coming(rx);
    }
    let mut retries = 0;
    let mut _slot = None;
    loop {
        let result = match policy.per_try {
            Some(limit) => {
                let until = tokio::time::Instant::now() + limit;
                let until = deadline.map_or(until, |d| d.min(until));
                match tokio::time::timeout(limit, attempt(request, destination, key, Some(until), path, replayable.then_some(&mut replay)))
                    .await
                {
                    Ok(result) => result,
                    Err(_) => Err((
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("no response within the per-try timeout of {limit:?} (MeshRetry http.perTryTimeout)"),
                        Cause::Timeout,
                    )),
                }
            }
            None => attempt(request, destination, key, deadline, path, replayable.then_some(&mut replay)).await,
        };
        let retriable = match &result {
            Ok((response, _)) => policy.retries_response(response.status(), response.headers()),
            Err((_, _, cause)) => policy.retries_failure(*cause),
        };
        if !(replayable && retriable && retries < policy.retries) {
            return result;
        }
        // The body, if it passed whole and small enough to keep; else this is the answer.
        let Some(body) = kept.body() else {
            tracing::debug!("not retried: its body was larger than {MAX_KEPT_BODY} bytes, or had not ended");
            return result;
        };
        let Some(slot) = destination.budget.retry(policy, destination.limits.max_retries) else {
            destination.metrics.retries_over_budget.inc();
            return result;
        };
        _slot = Some(slot);
        retries += 1;
        destination.metrics.retries.inc();
        drop(result);
        tokio::time::sleep(policy.back_off(retries)).await;
        match &replay {
            Some(copy) => *request = copy.request_with(destination, body),
            // Sent over HTTP/1.1 only: the request is in place but for its body (its framing
            // headers are set again when it is sent).
            None => *request.body_mut() = Counted::full(body, destination.metrics.request_bytes.clone()),
        }
    }
}

/// A request body kept for its retries.
enum Kept {
    /// None: the request has no body.
    None,
    /// Copied as it passes to the first endpoint.
    Coming(tokio::sync::oneshot::Receiver<Bytes>),
    /// Kept whole.
    Whole(Bytes),
}

impl Kept {
    /// The whole body (empty for none), or `None` if it is not kept: larger than the limit,
    /// with trailers, or not over yet.
    fn body(&mut self) -> Option<Bytes> {
        if let Kept::Coming(rx) = self {
            *self = Kept::Whole(rx.try_recv().ok()?);
        }
        match self {
            Kept::None => Some(Bytes::new()),
            Kept::Whole(body) => Some(body.clone()),
            Kept::Coming(_) => None,
        }
    }
}

/// One attempt: sends `request` to an endpoint of `destination`, on a fresh pick when it could
/// not be sent (and, for a safe bodiless request, when its connection failed with it in flight).
/// `copy`: where the caller keeps the request for after this attempt (its retries), if it needs
/// it: an HTTP/2 connection takes the request, so a copy is made there before one does.
async fn attempt(
    request: &mut Request<Counted>,
    destination: &Destination,
    key: Option<u64>,
    until: Option<tokio::time::Instant>,
    path: &DataPath,
    copy: Option<&mut Option<Replay>>,
) -> Result<(Response<Upstream>, InFlight), Failure> {
    let mut last: Option<Failure> = None;
    // A safe bodiless request is sent again elsewhere if its connection fails with it in
    // flight. HTTP/1.1 gives the request back then; HTTP/2 does not, so a copy is kept.
    let replayable = Replay::safe(request);
    let wanted = copy.is_some();
    let mut own = None;
    let replay = copy.unwrap_or(&mut own);
    let http1 = speaks_http1(request, destination);
    for _ in 0..ATTEMPTS {
        let Some(endpoint) = destination.pick_for(key).cloned() else {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "no endpoint available".into(), Cause::Connect));
        };
        let connector = connector(path, destination, &endpoint);
        if !endpoint.pool.connected() {
            if let Some(refusal) = connection_limits(destination) {
                destination.metrics.overflows.inc();
                return Err((StatusCode::SERVICE_UNAVAILABLE, refusal, Cause::Overflow));
            }
        }
        let in_flight = endpoint.start();
        let opened = if http1 {
            endpoint.pool.sender_http1(endpoint.address, &connector).await
        } else {
            endpoint.pool.sender(endpoint.address, &connector).await.map(Sender::Http2)
        };
        let sender = match opened {
            Ok(sender) => sender,
            Err(error) => {
                destination.record(&endpoint, Outcome::LocalOrigin);
                last = Some((StatusCode::SERVICE_UNAVAILABLE, format!("cannot reach an endpoint: {error}"), Cause::Connect));
                continue;
            }
        };
        // HTTP/2 keeps the request unless none of it went: then a copy sends it again.
        let kept = matches!(sender, Sender::Http2(_));
        if kept && (replayable || wanted) && replay.is_none() {
            *replay = Some(Replay::copy(request));
        }
        // Until the answer comes: an attempt the sidecar abandons on the way (its timeout) is a
        // failure of local origin for outlier detection; one the application cancels is not.
        let mut pending = Pending { destination, endpoint: &endpoint, until, armed: true };
        let sent = sender.send(request).await;
        pending.armed = false;
        drop(pending);
        match sent {
            Ok(response) => {
                destination.record(&endpoint, Outcome::Status(response.status().as_u16()));
                return Ok((response, in_flight));
            }
            // The pooled connection closed before our request went out: safe to retry.
            Err(error) if error.again => {
                endpoint.pool.clear();
                last = Some((StatusCode::SERVICE_UNAVAILABLE, format!("the connection to {} closed", endpoint.address), Cause::Connect));
            }
            Err(error) => {
                destination.record(&endpoint, Outcome::LocalOrigin);
                let failure = (StatusCode::BAD_GATEWAY, format!("{} failed the request: {}", endpoint.address, error.error), Cause::Reset);
                // The connection failed with the request in flight and before any response:
                // a safe request without a body is tried elsewhere.
                if !replayable {
                    return Err(failure);
                }
                if kept {
                    let Some(replay) = replay.as_ref() else { return Err(failure) };
                    *request = replay.request(destination);
                }
                endpoint.pool.clear();
                endpoint.health.failed();
                last = Some(failure);
            }
        }
    }
    Err(last.unwrap_or_else(|| (StatusCode::SERVICE_UNAVAILABLE, "no endpoint available".into(), Cause::Connect)))
}

/// What opening a pooled connection to `endpoint` of `destination` needs.
pub fn connector<'a>(path: &'a DataPath, destination: &'a Destination, endpoint: &'a Endpoint) -> Connector<'a, Health> {
    Connector {
        identities: &path.identities,
        expected: &destination.expected,
        sni: &endpoint.sni,
        health: &endpoint.health,
        connect_timeout: destination.timeouts.connect,
        max_age: destination.timeouts.max_connection,
        max_requests: destination.limits.max_requests_per_connection,
        metrics: &path.metrics.outbound,
        drain: &path.drain,
        tasks: &path.tasks,
    }
}

/// Why a request that needs a new connection to an endpoint of `destination` must not open
/// one (MeshCircuitBreaker `maxConnections`, `maxPendingRequests`), if it must not.
fn connection_limits(destination: &Destination) -> Option<String> {
    let limits = destination.limits;
    if let Some(max) = limits.max_connections {
        let open = destination.endpoints().filter(|e| e.pool.connected()).count();
        if open >= max {
            return Some(format!(
                "{open} connections are open, the most MeshCircuitBreaker connectionLimits.maxConnections allows, and this request needs another"
            ));
        }
    }
    if let Some(max) = limits.max_pending {
        let waiting: usize = destination.endpoints().map(|e| e.pool.waiting()).sum();
        if waiting >= max {
            return Some(format!(
                "{waiting} requests are waiting for a connection, the most MeshCircuitBreaker connectionLimits.maxPendingRequests allows"
            ));
        }
    }
    None
}

/// An attempt on its way to `endpoint`; dropped while armed once its time is up (`until`:
/// the sidecar abandoned it at its timeout), it counts a failure of local origin. Dropped
/// earlier, the application cancelled the request: that says nothing of the endpoint.
struct Pending<'a> {
    destination: &'a Destination,
    endpoint: &'a Endpoint,
    until: Option<tokio::time::Instant>,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        // The clock is read only for an attempt abandoned on the way (rarely).
        if self.armed && self.until.is_some_and(|until| tokio::time::Instant::now() + Duration::from_millis(5) >= until) {
            self.destination.record(self.endpoint, Outcome::LocalOrigin);
        }
    }
}

/// Serves `app` (connected from `client`) as HTTP to `service` (for the listeners), every
/// line of it naming the destination and the application's socket.
pub fn spawn(app: TcpStream, client: std::net::SocketAddr, service: Arc<str>, path: &Arc<DataPath>) {
    let span = tracing::info_span!("outbound", service = %service, %client);
    let task_path = path.clone();
    path.tasks.spawn(serve(app, service, task_path).instrument(span));
}
