//! TLS of the control planes' gRPC servers (zone sync on the global, DPS on the zone), with a
//! server certificate the process's certificate manager keeps current: every handshake takes
//! the certificate in force, so a renewal reaches new connections at once and streams already
//! open keep theirs. rustls does the handshakes here (tonic then serves the TLS streams), which
//! is what lets the certificate change without restarting the server.
//!
//! In: the certificate manager's channel for the server certificate, a bound listener. Out: a
//! rustls [`ServerConfig`] (HTTP/2 ALPN) and a stream of handshaken connections for
//! `tonic::transport::Server::serve_with_incoming_shutdown`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use strait_pki::Issued;
use strait_runtime::certs::Current;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a client may take to finish its TLS handshake (from when it starts).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; later connections wait for their turn. A handshake is
/// mostly CPU (signing, key exchange): when thousands of proxies reconnect at once, running
/// them all together makes every one slow, and those past the timeout are work thrown away
/// (measured: 3,247 of 10,000 simulated sidecars cut off against three zones on two cores).
const CONCURRENT_HANDSHAKES: usize = 64;

/// Why a certificate could not be turned into a TLS server key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The chain or key did not load.
    #[error("server certificate: {0}")]
    Certificate(String),
}

/// Issues a control plane's server certificate from a CA it holds itself (the global's system
/// CA, the zone's DPS CA), off the async workers.
pub struct LocalServerIssuer {
    /// What the certificate is for, in logs.
    pub name: &'static str,
    /// The signing CA.
    pub ca: Arc<strait_pki::CertificateAuthority>,
    /// DNS names the certificate carries (the first is also its common name).
    pub dns_names: Vec<String>,
    /// Requested lifetime.
    pub lifetime: Duration,
}

impl strait_runtime::certs::Issuer for LocalServerIssuer {
    fn name(&self) -> &str {
        self.name
    }

    async fn issue(&self) -> Result<Issued, String> {
        let (ca, names, lifetime) = (self.ca.clone(), self.dns_names.clone(), self.lifetime);
        tokio::task::spawn_blocking(move || {
            let cn = names.first().cloned().unwrap_or_default();
            let kc = strait_pki::KeyAndCsr::generate(&cn).map_err(|e| e.to_string())?;
            let chain = ca.sign_server(&kc.csr_pem, &names, lifetime).map_err(|e| e.to_string())?;
            Issued::check(chain, kc.key_pem, std::time::SystemTime::now()).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("signing task: {e}"))?
    }
}

/// Picks the certificate in force at each handshake.
#[derive(Debug, Default)]
struct Resolver {
    current: ArcSwapOption<CertifiedKey>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

fn certified_key(cert: &Issued) -> Result<CertifiedKey, TlsError> {
    certified_key_from_pem(&cert.chain_pem, &cert.key_pem)
}

fn certified_key_from_pem(chain_pem: &str, key_pem: &str) -> Result<CertifiedKey, TlsError> {
    let bad = |e: String| TlsError::Certificate(e);
    let chain = rustls_pemfile::certs(&mut chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| bad(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("no certificate in the PEM".into()));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("no private key in the PEM".into()))?;
    let key = rustls::crypto::ring::default_provider().key_provider.load_private_key(key).map_err(|e| bad(e.to_string()))?;
    Ok(CertifiedKey::new(chain, key))
}

/// A server config with a fixed certificate chain and key (PEM), such as one an operator
/// provides for the REST API; an unusable chain or key is an error naming what is wrong.
pub fn fixed_server_config(chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = Resolver::default();
    resolver.current.store(Some(Arc::new(certified_key_from_pem(chain_pem, key_pem)?)));
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    Ok(Arc::new(config))
}

/// A server config whose certificate follows `current`; the follower task is tracked by
/// `tasks` and ends with `cancel` (or when the manager stops publishing).
pub fn server_config(mut current: Current, tasks: &TaskTracker, cancel: CancellationToken) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = Arc::new(Resolver::default());
    if let Some(cert) = current.borrow_and_update().as_deref() {
        resolver.current.store(Some(Arc::new(certified_key(cert)?)));
    }
    let follower = resolver.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                changed = current.changed() => if changed.is_err() { return },
            }
            let next = current.borrow_and_update().clone();
            if let Some(cert) = next {
                match certified_key(&cert) {
                    Ok(key) => follower.current.store(Some(Arc::new(key))),
                    Err(e) => tracing::error!(error = %e, "a renewed server certificate does not load; keeping the current one"),
                }
            }
        }
    });
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts on `listener` and handshakes each connection in a task of its own (a slow client
/// holds up nobody), yielding the connections that completed, until `cancel`.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(64);
    let handshakes = tasks.clone();
    let turns = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of descriptors and the like: do not spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // gRPC messages are small and latency-bound.
            let _ = stream.set_nodelay(true);
            let (config, tx, turns) = (config.clone(), tx.clone(), turns.clone());
            handshakes.spawn(async move {
                // The client's hello is waited for without a turn (a silent client holds up
                // nobody); the rest of the handshake, where the CPU goes, takes one.
                let hello = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
                let start = match tokio::time::timeout(HANDSHAKE_TIMEOUT, hello).await {
                    Ok(Ok(start)) => start,
                    Ok(Err(error)) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out waiting for the client's hello"),
                };
                let Ok(turn) = turns.acquire().await else { return };
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await;
                drop(turn);
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
