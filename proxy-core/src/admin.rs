//! The admin HTTP server of a proxy: `/ready`, `/metrics` and `/config_dump`.
//!
//! In: the address to bind (localhost for the sidecar), the process's [`Ready`] latch, its
//! prometheus-client [`Registry`], a closure rendering the current config as JSON, and a
//! [`DrainWatcher`]. Out: an [`AdminServer`] whose bound address is known before serving
//! (tests bind port 0), and HTTP/1.1 answers: `/ready` is 200 when every readiness guard is
//! dropped and 503 naming what is pending otherwise; `/metrics` is the OpenMetrics text of the
//! registry; `/config_dump` is the closure's output. It is plain hyper 1 over tokio, with a
//! small safe adapter between tokio's and hyper's I/O traits (see [`HyperIo`]).

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::drain::DrainWatcher;
use crate::readiness::Ready;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin server serves.
#[derive(Clone)]
pub struct AdminState {
    /// Readiness latch answered on `/ready`.
    pub ready: Ready,
    /// Metrics rendered on `/metrics`.
    pub registry: Arc<Registry>,
    /// Renders the current configuration as JSON for `/config_dump`.
    pub config_dump: Arc<dyn Fn() -> String + Send + Sync>,
}

impl fmt::Debug for AdminState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminState").field("ready", &self.ready).finish_non_exhaustive()
    }
}

/// A bound, not yet serving, admin server.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<AdminState>,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, state: AdminState) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(AdminServer { listener, local_addr, state: Arc::new(state) })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the drain is signaled, then lets open requests finish (until forced).
    pub async fn serve(self, drain: DrainWatcher) {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = drain.signaled() => break,
                Some(_) = connections.join_next() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(serve_connection(stream, self.state.clone(), drain.clone()));
                    }
                    Err(error) => tracing::warn!(%error, "admin accept failed"),
                },
            }
        }
        drop(self.listener);
        while connections.join_next().await.is_some() {}
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<AdminState>, drain: DrainWatcher) {
    let service = hyper::service::service_fn(move |request| {
        let response = handle(&state, &request);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(HyperIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            match drain.unless_forced(conn).await {
                Some(result) => result,
                None => return,
            }
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "admin connection failed");
    }
}

fn handle(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n".into());
    }
    match request.uri().path() {
        "/ready" if state.ready.is_ready() => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: waiting for {}\n", state.ready.pending().join(", "))),
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
                Ok(()) => respond(StatusCode::OK, OPENMETRICS, body),
                Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {error}\n")),
            }
        }
        "/config_dump" => respond(StatusCode::OK, "application/json", (state.config_dump)()),
        _ => text(StatusCode::NOT_FOUND, "not found; try /ready, /metrics or /config_dump\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

/// Adapts a tokio stream to hyper's I/O traits without `unsafe`: reads go through a small
/// scratch buffer and are copied into hyper's (an extra copy is irrelevant for admin traffic).
/// hyper-util's `TokioIo` does the same without the copy, using `unsafe`.
pub struct HyperIo<T> {
    io: T,
    scratch: Box<[u8]>,
}

impl<T> HyperIo<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        HyperIo { io, scratch: vec![0; 8 * 1024].into_boxed_slice() }
    }
}

impl<T: AsyncRead + Unpin> hyper::rt::Read for HyperIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, mut buf: hyper::rt::ReadBufCursor<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = buf.remaining().min(this.scratch.len());
        let mut scratch = ReadBuf::new(&mut this.scratch[..n]);
        ready!(Pin::new(&mut this.io).poll_read(cx, &mut scratch))?;
        buf.put_slice(scratch.filled());
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
