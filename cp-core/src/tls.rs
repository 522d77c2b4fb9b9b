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

/// Longest a client may take to send its hello, and to finish its TLS handshake once its turn
/// came (clients wait 60 s for theirs).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a handshake keeps its turn. The server's part is a few milliseconds of CPU; past
/// this, the handshake waits for the client (a client starved of CPU, or a slow network) and
/// lets the next one have the turn. Keeping it until the end, a slow client held one of the
/// turns for up to the timeout and then lost its connection anyway: in a storm of 10,000
/// simulated sidecars, 257 of them reconnected so, and 101 others gave up waiting for a turn.
const TURN_HELD: Duration = Duration::from_secs(2);
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
                let mut handshake = std::pin::pin!(tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)));
                let finished = tokio::select! {
                    finished = &mut handshake => Some(finished),
                    () = tokio::time::sleep(TURN_HELD) => None,
                };
                drop(turn);
                let handshake = match finished {
                    Some(finished) => finished,
                    None => handshake.await,
                };
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

#[cfg(test)]
mod tests {
    use super::*;
    use strait_runtime::certs::Issuer as _;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_that_stall_mid_handshake_do_not_keep_the_others_waiting() {
        let ca = strait_pki::CertificateAuthority::new_root(strait_pki::SYSTEM_TRUST_DOMAIN, "test CA", Duration::from_secs(3600)).unwrap();
        let ca_pem = ca.cert_pem().to_string();
        let issuer =
            LocalServerIssuer { name: "test", ca: Arc::new(ca), dns_names: vec!["server.test".into()], lifetime: Duration::from_secs(600) };
        let issued = issuer.issue().await.unwrap();
        let config = fixed_server_config(&issued.chain_pem, &issued.key_pem).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (tasks, cancel) = (TaskTracker::new(), CancellationToken::new());
        let mut accepted = incoming(listener, config, &tasks, cancel.clone());
        tokio::spawn(async move { while tokio_stream::StreamExt::next(&mut accepted).await.is_some() {} });

        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_pemfile::certs(&mut ca_pem.as_bytes()).flatten());
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        // As many clients as there are turns send their hello, read the server's flight and
        // never answer it: each has taken a turn and holds its handshake open.
        let mut stalled = Vec::new();
        for _ in 0..CONCURRENT_HANDSHAKES {
            let mut tcp = std::net::TcpStream::connect(address).unwrap();
            let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
            let mut tls = rustls::ClientConnection::new(client.clone(), name).unwrap();
            tls.write_tls(&mut tcp).unwrap();
            // The server's answer is here: it took a turn for this handshake.
            tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).unwrap();
            assert!(tls.read_tls(&mut tcp).unwrap() > 0, "the server answers the hello");
            stalled.push((tcp, tls));
        }
        // One more client, well-behaved, gets its session once the stalled ones give up their
        // turns, long before their handshakes time out.
        let began = std::time::Instant::now();
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("server.test").unwrap();
        tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, tokio_rustls::TlsConnector::from(client).connect(name, tcp))
            .await
            .expect("a session before the stalled handshakes time out")
            .unwrap();
        assert!(began.elapsed() < TURN_HELD + HANDSHAKE_TIMEOUT / 10, "the session took {:?}", began.elapsed());
        cancel.cancel();
        drop(stalled);
    }
}
