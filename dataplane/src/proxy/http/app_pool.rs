//! The connections from the inbound side to the local application: idle HTTP/1.1 connections,
//! each lent to one request at a time and back when its response has ended, or (for `http2`
//! and `grpc` inbounds) one HTTP/2 connection without TLS shared by every request.
//!
//! In: a request from a peer sidecar, its URI absolute (the authority the caller used).
//! Out: the application's response; over HTTP/1.1 its body holds the connection and gives it
//! back when it ends. Taking a connection is a lock held for a few comparisons; an HTTP/1.1
//! request is written and its response read by the request's own task ([`super::h1`]): it
//! spawns no task and waits for no other, and only opening a connection costs more.
//!
//! A request is sent again, on another connection, when the pooled one it was given closed
//! before the request went out, or (a safe request without a body) before any answer (the
//! application closed an idle connection as the request came); a new connection's failure
//! is final.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri, Version};
use hyper::client::conn::{http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::{BoxError, Counted, Upstream};
use super::h1::{self, Conn, Io};
use super::pool::{Http1, Idle, Lease};

/// How long a connection to the application may stay idle.
const IDLE: Duration = Duration::from_secs(60);

/// Why the application did not answer a request.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No connection could be opened.
    #[error("connecting to {app}: {source}")]
    Connect {
        /// The application's address.
        app: SocketAddr,
        /// What the connect said.
        source: std::io::Error,
    },
    /// No connection was opened within MeshTimeout `connectionTimeout`.
    #[error("connecting to {app} took longer than {limit:?} (MeshTimeout connectionTimeout)")]
    ConnectTimeout {
        /// The application's address.
        app: SocketAddr,
        /// The inbound's connect timeout.
        limit: Duration,
    },
    /// The connection was opened, but not its HTTP session.
    #[error("HTTP handshake with {app}: {source}")]
    Handshake {
        /// The application's address.
        app: SocketAddr,
        /// What hyper said.
        source: hyper::Error,
    },
    /// The request failed on its connection.
    #[error(transparent)]
    Request(BoxError),
}

/// The connections of one inbound to its application.
pub struct AppPool {
    app: SocketAddr,
    /// HTTP/2 (prior knowledge) rather than HTTP/1.1.
    http2: bool,
    idle: Arc<Idle>,
    shared: ArcSwapOption<http2::SendRequest<Counted>>,
    connecting: tokio::sync::Mutex<()>,
}

impl AppPool {
    /// No connections yet to the application at `app`, which speaks HTTP/2 if `http2`.
    pub fn new(app: SocketAddr, http2: bool) -> Self {
        AppPool::with_idle_limit(app, http2, IDLE)
    }

    fn with_idle_limit(app: SocketAddr, http2: bool, limit: Duration) -> Self {
        AppPool { app, http2, idle: Arc::new(Idle::new(limit)), shared: ArcSwapOption::empty(), connecting: tokio::sync::Mutex::new(()) }
    }

    /// Sends `request` to the application over a pooled connection, opening one (within
    /// `connect_timeout`) if none can take it. Over HTTP/1.1 the response body holds its
    /// connection until it ends. The request stays the caller's over HTTP/1.1 (moved into
    /// each level's future, it would be copied at each); HTTP/2 takes it.
    pub async fn send(&self, request: &mut Request<Counted>, connect_timeout: Duration) -> Result<Response<Upstream>, AppError> {
        if self.http2 {
            *request.version_mut() = Version::HTTP_2;
            let owned = super::body::take(request);
            return Ok(self.send_http2(owned, connect_timeout).await?.map(Upstream::Hyper));
        }
        *request.version_mut() = Version::HTTP_11;
        origin_form(request);
        loop {
            let (lease, pooled) = match self.idle.take(|_, _| true) {
                Some(connection) => (Lease::new(connection, &self.idle), true),
                // Boxed: opening a connection is rare, and its state would be room in every request's future.
                None => (Box::pin(self.open_http1(connect_timeout)).await?, false),
            };
            match h1::send(lease, request, pooled).await {
                Ok(response) => return Ok(response.map(Upstream::Http1)),
                Err(h1::Failed { again: true, error }) if pooled => {
                    tracing::debug!(%error, "a pooled connection to the application closed before it answered: sending the request on another");
                }
                Err(failed) => return Err(AppError::Request(failed.error.into())),
            }
        }
    }

    async fn send_http2(
        &self,
        mut request: Request<Counted>,
        connect_timeout: Duration,
    ) -> Result<Response<hyper::body::Incoming>, AppError> {
        loop {
            let (mut sender, pooled) = match self.shared.load().as_deref().filter(|s| !s.is_closed()).cloned() {
                Some(sender) => (sender, true),
                None => (Box::pin(self.open_http2(connect_timeout)).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                // A closed connection is replaced by the next request that finds it closed.
                Err(error) => request = unsent(error, pooled)?,
            }
        }
    }

    async fn connect(&self, limit: Duration) -> Result<TcpStream, AppError> {
        let app = self.app;
        let stream = tokio::time::timeout(limit, TcpStream::connect(app))
            .await
            .map_err(|_| AppError::ConnectTimeout { app, limit })?
            .map_err(|source| AppError::Connect { app, source })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn open_http1(&self, connect_timeout: Duration) -> Result<Lease, AppError> {
        let stream = self.connect(connect_timeout).await?;
        tracing::debug!(app = %self.app, "opened a pooled HTTP/1.1 connection to the application");
        Ok(Lease::new(Http1::new(Conn::new(Io::Plain(stream)), None, None), &self.idle))
    }

    /// The shared HTTP/2 connection, opened unless another request opened it meanwhile.
    async fn open_http2(&self, connect_timeout: Duration) -> Result<http2::SendRequest<Counted>, AppError> {
        let _connecting = self.connecting.lock().await;
        if let Some(sender) = self.shared.load().as_deref().filter(|s| !s.is_closed()).cloned() {
            return Ok(sender);
        }
        let io = TokioIo::new(self.connect(connect_timeout).await?);
        let app = self.app;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        let (sender, connection) = builder.handshake(io).await.map_err(|source| AppError::Handshake { app, source })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%app, %error, "the HTTP/2 connection to the application ended");
            }
        });
        tracing::debug!(%app, "opened the HTTP/2 connection to the application");
        self.shared.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }
}

/// The request back if it was not sent and may go on another connection: only when the one
/// it was given was `pooled` (a new connection's failure would repeat).
fn unsent(mut error: TrySendError<Request<Counted>>, pooled: bool) -> Result<Request<Counted>, AppError> {
    match error.take_message() {
        Some(request) if pooled => {
            tracing::debug!(error = %error.error(), "a pooled connection to the application closed before the request went out: sending it on another");
            Ok(request)
        }
        _ => Err(AppError::Request(error.into_error().into())),
    }
}

/// Makes the request's URI origin-form (`/path?query`), as HTTP/1.1 sends it to a server, with
/// the authority the caller used in `Host` (unless it has one).
fn origin_form(request: &mut Request<Counted>) {
    if let Some(authority) = request.uri().authority() {
        if !request.headers().contains_key(HOST) {
            // Without user information, which `Host` does not carry.
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            if let Ok(host) = HeaderValue::from_str(host) {
                request.headers_mut().insert(HOST, host);
            }
        }
    }
    if request.uri().scheme().is_some() || request.uri().authority().is_some() {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = None;
        parts.authority = None;
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
    }
}

#[cfg(test)]
#[path = "app_pool_tests.rs"]
mod tests;
