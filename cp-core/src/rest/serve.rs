//! Serving a REST router until shutdown, then draining it: stop accepting, let requests in
//! flight finish until a deadline, then cut what is left. A client gets
//! [`ServeOptions::header_read_timeout`] to send each request head, so connections that trickle
//! bytes (slowloris) cannot pile up; a failed accept (out of descriptors) is retried after a
//! pause, never in a loop.
//!
//! In: a bound listener, a router, the shutdown token, the drain deadline and the options.
//! Out: how the server ended ([`Served`]), logged here so every control plane says the same at
//! 3 a.m.

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

/// How long a client has, by default, to send a request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How a REST server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Shutdown was asked and every request in flight finished in time.
    Drained,
    /// Shutdown was asked and the deadline passed; the server stopped waiting for the
    /// connections still open (they end with the process).
    Cut,
}

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A connection that does not send a whole request head within this long is closed.
    pub header_read_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT }
    }
}

/// Serves `router` on `listener` until `shutdown`, then drains for up to `deadline`.
///
/// Once shutdown is asked no connection is accepted any more; the ones open finish the
/// requests they carry (HTTP/1.1 connections close after them, HTTP/2 ones get GOAWAY).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
    deadline: Duration,
    options: ServeOptions,
) -> Served {
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "REST accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router.clone())).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "REST connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(deadline = ?deadline, "shutting down: no new connections, draining requests in flight");
    match tokio::time::timeout(deadline, graceful.shutdown()).await {
        Ok(()) => {
            tracing::info!("drained");
            Served::Drained
        }
        Err(_) => {
            tracing::warn!("drain deadline passed; no longer waiting for the requests still open");
            Served::Cut
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::AsyncWriteExt;

    async fn listener() -> tokio::net::TcpListener {
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    /// Shutdown asked before the server is even polled: the server finishes at once, and both
    /// it and the signal are ready together. Many rounds on several threads make the race
    /// that a plain `select!` loses show up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_asked_shutdown_always_counts_as_drained() {
        for round in 0..200 {
            let shutdown = CancellationToken::new();
            shutdown.cancel();
            let outcome = serve(listener().await, axum::Router::new(), shutdown, Duration::from_secs(5), ServeOptions::default()).await;
            assert_eq!(outcome, Served::Drained, "round {round}");
        }
    }

    #[tokio::test]
    async fn a_request_in_flight_past_the_deadline_is_cut() {
        let l = listener().await;
        let addr = l.local_addr().unwrap();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let entered = std::sync::Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let router = axum::Router::new().route(
            "/slow",
            get(move || {
                if let Some(tx) = entered.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                std::future::pending::<&'static str>()
            }),
        );
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(l, router, shutdown.clone(), Duration::from_millis(200), ServeOptions::default()));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        entered_rx.await.unwrap();
        shutdown.cancel();
        assert_eq!(server.await.unwrap(), Served::Cut);
    }

    /// A client that trickles a request head, a byte at a time, is cut at the header read
    /// timeout instead of holding its connection (and a task) forever.
    #[tokio::test]
    async fn a_slow_request_head_is_cut_at_the_header_read_timeout() {
        use tokio::io::AsyncReadExt;
        let l = listener().await;
        let addr = l.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let options = ServeOptions { header_read_timeout: Duration::from_millis(300) };
        let router = axum::Router::new().route("/", get(|| async { "ok" }));
        tokio::spawn(serve(l, router.clone(), shutdown.clone(), Duration::from_secs(1), options));
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let trickle = async {
            for byte in b"GET / HTTP/1.1\r\nhost: x\r\nx-slow: ".iter().cycle() {
                if slow.write_all(&[*byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), trickle).await;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(1), slow.read_to_end(&mut rest)).await;
        assert!(started.elapsed() < Duration::from_secs(3), "the slow client was not cut: {:?}", started.elapsed());
        assert!(closed.is_ok(), "the connection is closed");
        // A normal client is served meanwhile.
        let mut ok = tokio::net::TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        ok.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        shutdown.cancel();
    }
}
