//! Serving a REST router until shutdown, then draining it: stop accepting, let requests in
//! flight finish until a deadline, then cut what is left. A client gets
//! [`ServeOptions::header_read_timeout`] to send each request head, so connections that trickle
//! bytes (slowloris) cannot pile up; a failed accept (out of descriptors) is retried after a
//! pause, never in a loop.
//!
//! In: a bound listener, a router, the shutdown token, the drain deadline and the options.
//! Out: how the server ended ([`Served`]), logged here so every control plane says the same at
//! 3 a.m.

use std::sync::Arc;
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
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// A connection that does not send a whole request head (after its TLS handshake, which
    /// gets as long) within this long is closed; zero means the default.
    pub header_read_timeout: Duration,
    /// Serve HTTPS with this configuration; `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions").field("header_read_timeout", &self.header_read_timeout).field("tls", &self.tls.is_some()).finish()
    }
}

/// What a plain-HTTP client gets from an HTTPS port, so that the mistake names its fix.
const PLAIN_HTTP_TO_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: 58\r\n\r\nthis port speaks HTTPS: use an https:// URL for this server\n";

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
    let header_read_timeout = if options.header_read_timeout.is_zero() { DEFAULT_HEADER_READ_TIMEOUT } else { options.header_read_timeout };
    // HTTP/1.1 only: its header read timeout bounds every request head, which HTTP/2 (streams
    // kept open on a connection) would not.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
    let acceptor = options.tls.map(|config| {
        let mut config = (*config).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
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
        let (builder, router, watcher, acceptor) = (builder.clone(), router.clone(), graceful.watcher(), acceptor.clone());
        tokio::spawn(async move {
            let service = TowerToHyperService::new(router);
            let served = match acceptor {
                None => watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned()).await,
                Some(acceptor) => {
                    let Some(tls) = handshake(&acceptor, stream, peer, header_read_timeout).await else { return };
                    watcher.watch(builder.serve_connection(TokioIo::new(tls), service).into_owned()).await
                }
            };
            if let Err(error) = served {
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

/// The TLS handshake of one connection, within `timeout`; a client that speaks plain HTTP is
/// told to use https:// instead.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    mut stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    timeout: Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] != 0x16 => {
            // Not a TLS handshake record: most likely http:// against this HTTPS port.
            let _ = stream.write_all(PLAIN_HTTP_TO_TLS).await;
            let _ = stream.shutdown().await;
            // Read what the client sent, so closing does not reset the connection before it
            // reads the answer.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(1), tokio::io::AsyncReadExt::read(&mut stream, &mut sink)).await;
            tracing::debug!(%peer, "plain HTTP on the HTTPS port; told the client to use https://");
            return None;
        }
        Ok(Ok(_)) => {}
        _ => return None,
    }
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "REST TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "REST TLS handshake timed out");
            None
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
        let options = ServeOptions { header_read_timeout: Duration::from_millis(300), tls: None };
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

    /// HTTPS: a TLS client is served; a plain-HTTP client is told to use https:// and closed.
    #[tokio::test]
    async fn https_serves_tls_clients_and_tells_plain_clients_to_use_https() {
        use tokio::io::AsyncReadExt;
        let ca = strait_pki::CertificateAuthority::new_root(strait_pki::SYSTEM_TRUST_DOMAIN, "test CA", Duration::from_secs(3600)).unwrap();
        let kc = strait_pki::KeyAndCsr::generate("strait-global").unwrap();
        let chain = ca.sign_server(&kc.csr_pem, &["strait-global".into(), "127.0.0.1".into()], Duration::from_secs(600)).unwrap();
        let tls = crate::tls::fixed_server_config(&chain, &kc.key_pem).unwrap();
        let l = listener().await;
        let addr = l.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let router = axum::Router::new().route("/", get(|| async { "secret" }));
        let options = ServeOptions { tls: Some(tls), ..Default::default() };
        tokio::spawn(serve(l, router, shutdown.clone(), Duration::from_secs(1), options));

        let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        plain.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("https://"), "{answer}");
        assert!(!answer.contains("secret"));

        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca.cert_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("strait-global").unwrap();
        let mut tls = connector.connect(name, tcp).await.expect("the handshake verifies under the CA");
        tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        let _ = tls.read_to_string(&mut answer).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("secret"), "{answer}");
        shutdown.cancel();
    }
}
