//! Serving a REST router until shutdown, then draining it: stop accepting, let requests in
//! flight finish until a deadline, then cut what is left.
//!
//! In: a bound listener, a router, the shutdown token and the drain deadline. Out: how the
//! server ended ([`Served`]), logged here so every control plane says the same at 3 a.m.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How a REST server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Shutdown was asked and every request in flight finished in time.
    Drained,
    /// Shutdown was asked and the deadline passed; the server stopped waiting for the
    /// connections still open (they end with the process).
    Cut,
    /// The server stopped by itself, before any shutdown was asked.
    Failed,
}

/// Serves `router` on `listener` until `shutdown`, then drains for up to `deadline`.
///
/// The outcome depends only on whether shutdown was asked, never on which of the server and
/// the shutdown signal a scheduler happens to look at first: once shutdown is asked, a server
/// that already finished counts as drained.
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router, shutdown: CancellationToken, deadline: Duration) -> Served {
    let stop = shutdown.clone();
    let graceful = axum::serve(listener, router).with_graceful_shutdown(async move { stop.cancelled().await });
    let mut task = tokio::spawn(async move { graceful.await });
    let ended_early = tokio::select! {
        biased;
        () = shutdown.cancelled() => None,
        result = &mut task => Some(result),
    };
    if let Some(result) = ended_early {
        match result {
            Ok(Err(e)) => tracing::error!(error = %e, "REST server stopped with an error"),
            Ok(Ok(())) => tracing::error!("REST server stopped without being asked to"),
            Err(e) => tracing::error!(error = %e, "REST server task failed"),
        }
        return Served::Failed;
    }
    tracing::info!(deadline = ?deadline, "shutting down: no new connections, draining requests in flight");
    match tokio::time::timeout(deadline, &mut task).await {
        Ok(_) => {
            tracing::info!("drained");
            Served::Drained
        }
        Err(_) => {
            tracing::warn!("drain deadline passed; no longer waiting for the requests still open");
            task.abort();
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
            let outcome = serve(listener().await, axum::Router::new(), shutdown, Duration::from_secs(5)).await;
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
        let server = tokio::spawn(serve(l, router, shutdown.clone(), Duration::from_millis(200)));
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        entered_rx.await.unwrap();
        shutdown.cancel();
        assert_eq!(server.await.unwrap(), Served::Cut);
    }
}
